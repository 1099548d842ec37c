"""The `neuralir` command: serve, build models and indexes, search, evaluate, benchmark, demo.

The composition root: each layer owns its subcommands (`register` in its `cli` module) and this
module only gathers them, so no layer reaches into another to parse its arguments.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from pathlib import Path

from neuralir.client import cli as client_cli
from neuralir.eval import cli as eval_cli
from neuralir.index import cli as index_cli
from neuralir.models import cli as models_cli
from neuralir.models.cli import DEFAULT_MODELS_DIR
from neuralir.server import cli as server_cli

# Subcommands with a parser of their own, which reads everything after the name: argparse's
# REMAINDER alone rejects a first argument that starts with "--" (`neuralir eval --dataset`).
DELEGATED = {
    "eval": ("neuralir.eval.cli", "ranking quality of pipelines (nDCG, MRR, recall)"),
    "bench": ("neuralir.benchmarks.runner", "latency and throughput benchmarks"),
}


def _delegate(module: str, argv: list[str]) -> int:
    return int(importlib.import_module(module).main(argv) or 0)


def _demo(args: argparse.Namespace) -> int:
    from neuralir.cli.demo import run_demo

    return run_demo(args.models, args.work, args.port)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="neuralir", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    server_cli.register(commands)
    models_cli.register(commands)
    index_cli.register(commands)
    data = commands.add_parser("data", help="test collections").add_subparsers(
        dest="action", required=True
    )
    index_cli.register_data(data)
    eval_cli.register_data(data)
    client_cli.register(commands)

    demo = commands.add_parser("demo", help="build everything and run example queries")
    demo.add_argument("--models", type=Path, default=DEFAULT_MODELS_DIR)
    demo.add_argument("--work", type=Path, default=Path("artifacts"))
    demo.add_argument("--port", type=int, default=0)
    demo.set_defaults(func=_demo)

    for name, (module, text) in DELEGATED.items():
        delegated = commands.add_parser(name, help=text, add_help=False)
        delegated.add_argument("rest", nargs=argparse.REMAINDER)
        delegated.set_defaults(func=lambda args, module=module: _delegate(module, args.rest))
    return parser


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv and argv[0] in DELEGATED:
        return _delegate(DELEGATED[argv[0]][0], argv[1:])
    args = build_parser().parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
