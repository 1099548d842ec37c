"""`neuralir eval`: ranking quality and latency of each pipeline, through the real services.

    neuralir eval --dataset DIR --split SPLIT --pipeline P [--pipeline P ...] [--k 10] [--json]
                  [--target host:port]

Pipelines: see `neuralir.eval.pipelines`. Metrics: nDCG@k and MRR@k on the top k, Recall@100 on
the top 100, so the service is always asked for max(100, k) results. Output: a table (or
--markdown, or one JSON object with --json) on stdout; progress and logs on stderr. Exit status
2 for a bad dataset or bad options, 1 if a search fails.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

from neuralir.eval.datasets import DatasetError, load_dataset
from neuralir.eval.pipelines import DEFAULT_RERANK_DEPTH, parse_pipeline
from neuralir.eval.report import render_markdown, render_text
from neuralir.eval.run import EvalError, SearchFailed, evaluate
from neuralir.v1.limits import MAX_K


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="neuralir eval",
        description="Ranking quality (nDCG, MRR, recall) and latency of search pipelines.",
    )
    add = parser.add_argument
    add("--dataset", type=Path, required=True, help="BEIR-layout directory")
    add("--split", required=True, help="qrels/SPLIT.tsv (e.g. test, dev_sub)")
    add(
        "--pipeline",
        dest="pipelines",
        action="append",
        type=parse_pipeline,
        required=True,
        metavar="PIPELINE",
        help="bm25, dense, hybrid, hybrid-rrf, hybrid-convex[@W], each optionally "
        f"+rerank[@DEPTH] (default depth {DEFAULT_RERANK_DEPTH}) or +cascade@FIRST:DEPTH; "
        "repeatable (see neuralir.eval.pipelines)",
    )
    add("--k", type=int, default=10, help="cut-off of nDCG and MRR (default 10)")
    output = parser.add_mutually_exclusive_group()
    output.add_argument("--json", action="store_true", help="one JSON object on stdout")
    output.add_argument("--markdown", action="store_true", help="a Markdown table on stdout")
    add("--target", help="host:port of running services (default: start them in-process)")
    add("--token", default=os.environ.get("NEURALIR_TOKEN", ""), help="bearer token for --target")
    add("--models", type=Path, default=Path("artifacts/models"), help="built model tree")
    add("--precision", choices=("int8", "fp32"), default="int8", help="which built models")
    add(
        "--cross-encoder",
        type=Path,
        help="cross-encoder directory to serve in-process (default MODELS/cross-encoder/PRECISION)",
    )
    add(
        "--bi-encoder",
        type=Path,
        help="built bi-encoder directory to embed and serve with in-process, e.g. an adapted one "
        "(default MODELS/bi-encoder/PRECISION)",
    )
    add("--rerank-model", default="", help="name of the served reranker to use (default: first)")
    add("--blend-weight", type=float, help="cross-encoder weight in [0, 1] (default: the model's)")
    add(
        "--cascade-model",
        default="small",
        help="served reranker of a +cascade pipeline's first pass (default: small)",
    )
    add("--ef", type=int, default=0, help="HNSW expansion for dense search (0 = index default)")
    add("--max-queries", type=int, default=0, help="only the first N judged queries (0 = all)")
    add(
        "--concurrency",
        type=int,
        default=1,
        help="concurrent callers (default 1: queries are then never batched together, which "
        "keeps int8 results reproducible; more callers measure throughput under load)",
    )
    add("--warmup", type=int, default=3, help="untimed queries before each pipeline (default 3)")
    add("--timeout", type=float, default=120.0, help="deadline of one search in seconds")
    add(
        "--index-cache",
        type=Path,
        default=Path("artifacts/indexes/eval"),
        help="where in-process runs keep their indexes",
    )
    return parser


def main(argv: list[str]) -> int:
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exc:  # argparse has already said why
        return int(exc.code or 0)
    try:
        _check_options(args)
        dataset = load_dataset(args.dataset, args.split).limited(args.max_queries)
        report = evaluate(dataset, args)
    except (DatasetError, EvalError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except SearchFailed as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    if args.json:
        json.dump(report, sys.stdout, indent=2)
        sys.stdout.write("\n")
    else:
        sys.stdout.write(render_markdown(report) if args.markdown else render_text(report))
    sys.stdout.flush()
    return 0


def _check_options(args: argparse.Namespace) -> None:
    names = [p.name for p in args.pipelines]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise EvalError(f"pipeline given twice: {', '.join(duplicates)}")
    if not 1 <= args.k <= MAX_K:
        raise EvalError(f"--k must be between 1 and {MAX_K}")
    if args.concurrency < 1 or args.warmup < 0 or args.max_queries < 0 or args.ef < 0:
        raise EvalError("--concurrency must be 1 or more; --warmup, --max-queries, --ef 0 or more")
    if args.blend_weight is not None and not 0.0 <= args.blend_weight <= 1.0:
        raise EvalError("--blend-weight must be between 0 and 1")
    if args.target and (args.bi_encoder or args.cross_encoder):
        raise EvalError("--bi-encoder and --cross-encoder are for in-process runs, not --target")
    if args.timeout <= 0:
        raise EvalError("--timeout must be positive")


def register_data(actions: Any) -> None:
    """Adds `data download` to the `neuralir data` group."""
    download = actions.add_parser("download", help="fetch a BEIR dataset (needs internet)")
    download.add_argument("name")
    download.add_argument("--out", type=Path, default=Path("artifacts/data"))
    download.set_defaults(func=download_command)


def download_command(args: argparse.Namespace) -> int:
    from neuralir.eval.download import DownloadError, download_beir

    try:
        print(download_beir(args.name, args.out))
    except DownloadError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0
