"""The `neuralir` console script, run as a user runs it (a child process)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from neuralir.client import NeuralIRClient
from neuralir.models.manifest import load_manifest
from neuralir.models.sources import default_cross_encoder_source
from neuralir.server.embedded import EmbeddedServer

SCRIPT = Path(sys.executable).with_name("neuralir")
QUERY = "retrieval of documents, files and processes"


def neuralir(*args: str, timeout_s: float = 120) -> subprocess.CompletedProcess[str]:
    """Runs the installed console script (or the module, where the script is not installed)."""
    command = [str(SCRIPT)] if SCRIPT.is_file() else [sys.executable, "-m", "neuralir.cli"]
    return subprocess.run(
        [*command, *args],
        capture_output=True,
        text=True,
        timeout=timeout_s,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
        check=False,
    )


def test_help_lists_the_subcommands() -> None:
    result = neuralir("--help")
    assert result.returncode == 0, result.stderr
    for command in ("serve", "models", "index", "data", "search", "demo", "eval", "bench"):
        assert command in result.stdout


def test_serve_help_lists_the_settings() -> None:
    result = neuralir("serve", "--help")
    assert result.returncode == 0, result.stderr
    for flag in (
        "--port-file",
        "--encoder-model",
        "--rerank-model",
        "--index-dir",
        "--encoder-address",
        "--index-address",
        "--rerank-address",
        "--batching",
        "--grace-period",
    ):
        assert flag in result.stdout
    for stage in ("all", "encoder", "index", "rerank", "search"):
        assert stage in result.stdout


def test_bad_arguments_exit_2() -> None:
    result = neuralir("search", "q", "--mode", "fuzzy")
    assert result.returncode == 2
    assert "invalid choice" in result.stderr


def test_search_prints_a_ranked_table(all_in_one: EmbeddedServer, client: NeuralIRClient) -> None:
    result = neuralir(
        "search", QUERY, "--target", all_in_one.address, "--k", "3", "--mode", "hybrid",
        "--rerank", "5",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == f"query: {QUERY}"
    assert lines[1].split() == ["#", "doc", "final", "dense", "bm25", "fused", "rerank"]
    rows = [line.split() for line in lines if line[:3].strip().isdigit()]
    assert [row[0] for row in rows] == ["1", "2", "3"]
    expected = client.search(QUERY, k=3, mode="hybrid", rerank_depth=5)
    assert [row[1] for row in rows] == [doc_id[:28] for doc_id in expected.doc_ids]  # cut to fit
    assert all(row[-1] != "-" for row in rows)  # every hit was reranked
    stages = lines[-1]
    assert stages.startswith("stages (server-side):")
    for stage in ("encode", "dense", "lexical", "fuse", "rerank", "search"):
        assert f"{stage} " in stages


def test_search_lexical_mode_shows_only_bm25(all_in_one: EmbeddedServer) -> None:
    result = neuralir(
        "search", QUERY, "--target", all_in_one.address, "--k", "2", "--mode", "lexical"
    )
    assert result.returncode == 0, result.stderr
    rows = [line.split() for line in result.stdout.splitlines() if line[:3].strip().isdigit()]
    assert len(rows) == 2
    for row in rows:
        assert row[3] == "-"  # no dense score
        assert row[4] != "-"  # a BM25 score
        assert row[5:] == ["-", "-"]


def test_search_against_nothing_says_why() -> None:
    result = neuralir("search", QUERY, "--target", "127.0.0.1:1", "--timeout", "5")
    assert result.returncode == 1
    assert "error: UNAVAILABLE from 127.0.0.1:1" in result.stderr
    assert "Traceback" not in result.stderr


def _tree(root: Path) -> dict[str, tuple[int, int]]:
    return {
        str(p.relative_to(root)): (p.stat().st_ino, p.stat().st_mtime_ns)
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


@pytest.mark.slow
def test_models_build_is_idempotent(models_dir: Path, tmp_path: Path) -> None:
    """On a built tree (a hard-linked copy of the tests' models) the command verifies the
    checksums, rebuilds nothing and prints the model ids."""
    out = tmp_path / "models"
    try:
        shutil.copytree(models_dir, out, copy_function=os.link, ignore=shutil.ignore_patterns(".*"))
    except OSError:  # another file system: copy instead
        shutil.rmtree(out, ignore_errors=True)
        shutil.copytree(models_dir, out, ignore=shutil.ignore_patterns(".*"))
    before = _tree(out)
    cross_source = os.environ.get("NEURALIR_CROSS_ENCODER_SOURCE", default_cross_encoder_source())
    result = neuralir("models", "build", "--out", str(out), "--cross-encoder", cross_source)
    assert result.returncode == 0, result.stderr
    assert result.stderr.count("up to date") == 3, result.stderr  # the small reranker too
    assert "exporting" not in result.stderr
    assert _tree(out) == before
    printed = {line.split()[0]: line.split()[1] for line in result.stdout.splitlines()}
    kinds = ("bi-encoder", "cross-encoder", "cross-encoder-small")
    for role in (f"{kind}/{precision}" for kind in kinds for precision in ("fp32", "int8")):
        assert printed[role] == load_manifest(out / role).model_id
