"""Builds DIR/neuralir/<pkg> -> <folder> symlinks from pyproject's package-dir: the installed
`neuralir` namespace as a plain directory tree, for tools that read source by package name
(mypy, import-linter) without an install.

    python tools/link_tree.py DIR [--root CHECKOUT]   (default: this checkout)
"""

from __future__ import annotations

import argparse
import shutil
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def package_dirs(root: Path = ROOT) -> dict[str, Path]:
    """Top-level subpackages of `neuralir` and their folders (nested mappings are skipped)."""
    config = tomllib.loads((root / "pyproject.toml").read_text())
    mapping: dict[str, str] = config["tool"]["setuptools"]["package-dir"]
    return {
        package.split(".")[1]: root / folder
        for package, folder in mapping.items()
        if package.count(".") == 1
    }


def build(target: Path, root: Path = ROOT) -> Path:
    namespace = target / "neuralir"
    shutil.rmtree(target, ignore_errors=True)
    namespace.mkdir(parents=True)
    for name, folder in package_dirs(root).items():
        (namespace / name).symlink_to(folder)
    return namespace


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("target", type=Path)
    parser.add_argument("--root", type=Path, default=ROOT, help="the checkout to link")
    args = parser.parse_args()
    build(args.target, args.root.resolve())
