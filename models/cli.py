"""`neuralir models build`: the model layer's subcommands."""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import Any

DEFAULT_MODELS_DIR = Path("artifacts/models")


def register(commands: Any) -> None:
    """Adds `models ...` to the `neuralir` command's subparsers."""
    models = commands.add_parser("models", help="build the ONNX models").add_subparsers(
        dest="action", required=True
    )
    build = models.add_parser("build", help="export, quantize, verify; skips what is current")
    build.add_argument("--out", type=Path, default=DEFAULT_MODELS_DIR)
    build.add_argument("--bi-encoder", help="local HF directory or hub id (default: MiniLM-L6)")
    build.add_argument("--cross-encoder", help="local HF directory or hub id (default: shipped)")
    build.add_argument(
        "--small-cross-encoder",
        help="a second, faster reranker, served as 'small' (default: the shipped distilled one)",
    )
    build.add_argument(
        "--no-small-cross-encoder", action="store_true", help="build no small reranker"
    )
    build.add_argument(
        "--graph",
        choices=("fused", "plain"),
        default="fused",
        help="served int8 graph: fused (transformer-optimized; plain if it fails verify, the "
        "plain one kept in int8-plain/) or plain (the export quantized as is)",
    )
    build.add_argument("--force", action="store_true", help="rebuild even when current")
    build.add_argument("--offline", action=argparse.BooleanOptionalAction, default=True)
    build.set_defaults(func=build_command)


def build_command(args: argparse.Namespace) -> int:
    if args.offline:  # the default sources are local; never wait on a hub here
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from neuralir.models.build import build_all
    from neuralir.models.sources import (
        default_bi_encoder_source,
        default_cross_encoder_source,
        default_small_cross_encoder_source,
    )

    built = build_all(
        args.out,
        args.bi_encoder or default_bi_encoder_source(),
        args.cross_encoder or default_cross_encoder_source(),
        force=args.force,
        small_cross_encoder_source=None
        if args.no_small_cross_encoder
        else args.small_cross_encoder or default_small_cross_encoder_source(),
        graph=args.graph,
    )
    for role, manifest in built.items():
        print(f"{role:20s} {manifest.model_id:40s} {json.dumps(manifest.verify)}")
    return 0
