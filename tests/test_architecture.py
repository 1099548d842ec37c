"""The layering rules of docs/architecture.md, enforced by import-linter (`make check`): the
project's tree keeps every contract, and a forbidden import breaks the contract it names."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
LINT_IMPORTS = Path(sys.executable).parent / "lint-imports"


def _tree(tmp_path: Path) -> Path:
    """The `neuralir` link tree `make imports` checks, built the same way."""
    subprocess.run(
        [sys.executable, str(REPO / "tools" / "link_tree.py"), str(tmp_path / "tree")],
        check=True,
        timeout=60,
    )
    return tmp_path / "tree"


def _with_module(tree: Path, package: str, name: str, source: str) -> None:
    """Replaces the link of `package` by a copy of its folder that holds one more module."""
    link = tree / "neuralir" / package
    folder = link.resolve()
    link.unlink()
    shutil.copytree(folder, link, ignore=shutil.ignore_patterns("__pycache__"))
    (link / f"{name}.py").write_text(source)


def _lint(tree: Path) -> subprocess.CompletedProcess[str]:
    if not LINT_IMPORTS.is_file():
        pytest.skip("import-linter is not installed (the dev extra installs it)")
    return subprocess.run(
        [str(LINT_IMPORTS), "--config", str(REPO / "pyproject.toml"), "--no-cache", "--no-logo"],
        cwd=tree,
        env={"PYTHONPATH": str(tree), "PATH": str(LINT_IMPORTS.parent)},
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


def test_the_tree_keeps_every_contract(tmp_path: Path) -> None:
    done = _lint(_tree(tmp_path))
    assert done.returncode == 0, done.stdout + done.stderr
    assert "0 broken" in done.stdout


@pytest.mark.parametrize(
    ("package", "source", "contract", "chain"),
    [
        (
            "client",
            "from neuralir.server import settings\n",
            "The client knows only the API",
            "neuralir.client.intruder -> neuralir.server.settings",
        ),
        (
            "models",
            "import grpc\n",
            "Models and indexes run without gRPC",
            "neuralir.models.intruder -> grpc",
        ),
        (
            "index",
            "from neuralir.server import errors\n",
            "Each layer imports only the layers below it",
            "neuralir.index.intruder -> neuralir.server.errors",
        ),
        (
            "server",
            "from neuralir.eval import metrics\n",
            "Each layer imports only the layers below it",
            "neuralir.server.intruder -> neuralir.eval.metrics",
        ),
    ],
)
def test_a_forbidden_import_breaks_its_contract(
    tmp_path: Path, package: str, source: str, contract: str, chain: str
) -> None:
    tree = _tree(tmp_path)
    _with_module(tree, package, "intruder", source)
    done = _lint(tree)
    assert done.returncode != 0
    assert f"{contract}" in done.stdout
    assert "BROKEN" in done.stdout
    assert chain in done.stdout, done.stdout
