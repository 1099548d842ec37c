"""`neuralir search QUERY`: one search through running services, as a readable table."""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any


def register(commands: Any) -> None:
    """Adds `search` to the `neuralir` command's subparsers."""
    search = commands.add_parser("search", help="search through running services")
    search.add_argument("query")
    search.add_argument("--k", type=int, default=10)
    search.add_argument("--mode", choices=("dense", "lexical", "hybrid"), default="hybrid")
    search.add_argument("--rerank", type=int, default=0, metavar="DEPTH")
    search.add_argument("--target", default=os.environ.get("NEURALIR_TARGET", "127.0.0.1:50051"))
    search.add_argument("--timeout", type=float, default=10.0)
    search.add_argument("--token", default=os.environ.get("NEURALIR_TOKEN"))
    search.set_defaults(func=search_command)


def search_command(args: argparse.Namespace) -> int:
    import grpc

    from neuralir.client import ClientSettings, NeuralIRClient
    from neuralir.client.render import render_search

    settings = ClientSettings(target=args.target, timeout_s=args.timeout, token=args.token or "")
    with NeuralIRClient(settings) as client:
        try:
            result = client.search(
                args.query, k=args.k, mode=args.mode, rerank_depth=args.rerank, snippet_chars=160
            )
        except grpc.RpcError as exc:  # a user-facing command: the status, not a traceback
            print(f"error: {exc.code().name} from {args.target}: {exc.details()}", file=sys.stderr)
            return 1
    print(render_search(args.query, result))
    return 0
