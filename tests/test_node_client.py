"""A foreign client (issue 16): Node.js with @grpc/grpc-js and @grpc/proto-loader loads proto/,
sends a Rerank with a NaN first-stage score to a real server and reads the refusal's
google.rpc.BadRequest field violations from grpc-status-details-bin.

The npm packages (pinned by tests/node/package-lock.json) are installed from the npm registry
into artifacts/node-client, with npm's cache in artifacts/npm-cache. Skipped, saying why, where
node or npm is missing or the registry cannot be reached.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import google.rpc
import grpc
import grpc_tools
import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
NODE_SOURCES = REPO_ROOT / "tests" / "node"
NODE_DIR = REPO_ROOT / "artifacts" / "node-client"
NPM_CACHE = REPO_ROOT / "artifacts" / "npm-cache"
FILES = ("package.json", "package-lock.json", "bad_request.js")


@pytest.fixture(scope="module")
def node_client() -> Path:
    """artifacts/node-client with the script and its packages installed (npm ci)."""
    node, npm = shutil.which("node"), shutil.which("npm")
    if node is None or npm is None:
        pytest.skip("node and npm are not installed (apt-get install -y nodejs npm)")
    NODE_DIR.mkdir(parents=True, exist_ok=True)
    for name in FILES:
        shutil.copyfile(NODE_SOURCES / name, NODE_DIR / name)
    installed = NODE_DIR / "node_modules" / ".package-lock.json"
    lock = NODE_SOURCES / "package-lock.json"
    if not installed.is_file() or installed.stat().st_mtime < lock.stat().st_mtime:
        command = [npm, "ci", "--no-audit", "--no-fund", "--cache", str(NPM_CACHE)]
        done = subprocess.run(
            command, cwd=NODE_DIR, capture_output=True, text=True, timeout=600, check=False
        )
        if done.returncode != 0:
            pytest.skip(f"npm ci could not install the packages: {done.stderr.strip()[-500:]}")
    return NODE_DIR


def test_a_node_client_reads_the_bad_request_field_violations(
    node_client: Path, all_in_one: Any, client: Any
) -> None:
    google_rpc_include = Path(google.rpc.__path__[0]).parents[1]  # holds google/rpc/*.proto
    protobuf_include = Path(grpc_tools.__file__).parent / "_proto"  # google/protobuf/*.proto
    done = subprocess.run(
        [
            "node", "bad_request.js", all_in_one.address, str(REPO_ROOT / "proto"),
            str(google_rpc_include), str(protobuf_include),
        ],
        cwd=node_client, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    answer = json.loads(done.stdout.strip().splitlines()[-1])
    assert answer["code"] == grpc.StatusCode.INVALID_ARGUMENT.value[0], answer
    assert answer["status_details_bin"], answer
    assert [v["field"] for v in answer["violations"]] == ["passages[1].first_stage_score"]
    assert "finite" in answer["violations"][0]["description"]
    assert "passages[1].first_stage_score" in answer["details"]
