"""`neuralir models build` and `neuralir models adapt`: the model layer's subcommands."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

DEFAULT_MODELS_DIR = Path("artifacts/models")
ROLES = ("bi-encoder", "cross-encoder", "cross-encoder-small")


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
    build.add_argument(
        "--only",
        action="append",
        choices=ROLES,
        help="build only this role (repeatable), e.g. an adapted bi-encoder into its own --out",
    )
    build.add_argument("--force", action="store_true", help="rebuild even when current")
    build.add_argument("--offline", action=argparse.BooleanOptionalAction, default=True)
    build.set_defaults(func=build_command)
    _register_adapt(models)


def _register_adapt(models: Any) -> None:
    adapt = models.add_parser(
        "adapt",
        help="fine-tune the bi-encoder on a corpus (labelled with --qrels, else label-free)",
        description="Fine-tunes the bi-encoder with sentence-transformers' trainer and "
        "MultipleNegativesRankingLoss: judged pairs with --qrels, else title -> text, inverse "
        "cloze and cropping pairs from the corpus; hard negatives from BM25 and the int8 "
        "encoder. Writes a checkpoint (fp16), recipe.json and a model card. Needs the train "
        "extra (torch, sentence-transformers, datasets).",
    )
    add = adapt.add_argument
    add("--corpus", type=Path, required=True, help="BEIR-layout directory (corpus.jsonl)")
    add("--out", type=Path, required=True, help="checkpoint directory to write (replaced)")
    add("--qrels", type=Path, help="judgments to train on (qrels TSV); label-free without")
    add("--queries", type=Path, help="queries.jsonl of --qrels (default: CORPUS/queries.jsonl)")
    add("--eval-qrels", type=Path, help="judgments only measured: dense nDCG@10 before/after")
    add("--eval-queries", type=Path, help="queries of --eval-qrels (default: CORPUS's)")
    add("--base-model", help="sentence-transformers directory (default: packaged MiniLM-L6)")
    add(
        "--base-encoder",
        type=Path,
        default=DEFAULT_MODELS_DIR / "bi-encoder" / "int8",
        help="the base model's built int8 directory (mining, the 'before' figure)",
    )
    add("--name", default="", help="model name in manifests (default: --out's name)")
    add(
        "--sources",
        default="title,ict,crop",
        help="label-free pair sources, comma-separated (default: title,ict,crop)",
    )
    add("--max-steps", type=int, default=200)
    add("--batch-size", type=int, default=32)
    add("--lr", type=float, default=2e-5)
    add("--warmup-ratio", type=float, default=0.1)
    add("--max-seq-length", type=int, default=192, help="training truncation in tokens")
    add("--pool-depth", type=int, default=30, help="first-stage depth negatives come from")
    add("--skip-top", type=int, default=2, help="label-free: ranks never used as negatives")
    add("--proxy-queries", type=int, default=150, help="label-free selection: held-out queries")
    add("--proxy-corpus", type=int, default=500, help="documents the proxy searches")
    add("--no-select", action="store_true", help="label-free: keep the final model")
    add("--merge-weight", type=float, default=0.5, help="WiSE-FT candidate's fine-tuned weight")
    add("--seed", type=int, default=13)
    add("--threads", type=int, default=2)
    add(
        "--max-minutes",
        type=float,
        default=0.0,
        help="training wall-clock budget: the LR follows it and training stops when it is spent "
        "(0 = --max-steps alone)",
    )
    add(
        "--cache-dir",
        type=Path,
        default=Path("artifacts/adapt-cache"),
        help="keeps the base encoder's corpus embeddings between runs",
    )
    adapt.set_defaults(func=adapt_command)


def adapt_command(args: argparse.Namespace) -> int:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from neuralir.models.sources import default_bi_encoder_source
    from neuralir.models.training.adapt import LABEL_FREE_SOURCES, AdaptSettings, adapt

    sources = tuple(s for s in args.sources.split(",") if s)
    unknown = sorted(set(sources) - set(LABEL_FREE_SOURCES))
    if unknown or not sources:
        print(f"error: --sources: choose from {', '.join(LABEL_FREE_SOURCES)}", file=sys.stderr)
        return 2
    if not (args.corpus / "corpus.jsonl").is_file():
        print(f"error: no corpus.jsonl in {args.corpus}", file=sys.stderr)
        return 2
    if args.max_steps < 1 or args.batch_size < 2 or not 0.0 < args.merge_weight <= 1.0:
        print(
            "error: --max-steps >= 1, --batch-size >= 2, --merge-weight in (0, 1]", file=sys.stderr
        )
        return 2
    settings = AdaptSettings(
        corpus=args.corpus,
        out=args.out,
        base_model=args.base_model or default_bi_encoder_source(),
        base_encoder=args.base_encoder,
        qrels=args.qrels,
        queries=args.queries,
        eval_qrels=args.eval_qrels,
        eval_queries=args.eval_queries,
        name=args.name,
        sources=sources,
        max_steps=args.max_steps,
        batch_size=args.batch_size,
        lr=args.lr,
        warmup_ratio=args.warmup_ratio,
        max_seq_length=args.max_seq_length,
        pool_depth=args.pool_depth,
        skip_top=args.skip_top,
        proxy_queries=args.proxy_queries,
        proxy_corpus=args.proxy_corpus,
        select=not args.no_select,
        merge_weight=args.merge_weight,
        seed=args.seed,
        threads=args.threads,
        cache_dir=args.cache_dir,
        max_minutes=args.max_minutes,
    )
    recipe = adapt(settings)
    keys = ("name", "mode", "pairs", "training", "selection", "wall_s")
    summary = {k: recipe[k] for k in keys}
    for key in ("dense_ndcg@10_before", "dense_ndcg@10_after"):
        if key in recipe:
            summary[key] = recipe[key]
    print(json.dumps(summary, indent=2))
    return 0


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
        only=tuple(args.only or ()),
    )
    for role, manifest in built.items():
        print(f"{role:20s} {manifest.model_id:40s} {json.dumps(manifest.verify)}")
    return 0
