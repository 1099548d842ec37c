"""The reranker's quality/latency trade-off: nDCG@10 and rerank p50/p99 per depth, per model.

Each reranker build (a manifest directory: the 6-layer and the distilled model, int8 and fp32)
is served in-process by `neuralir eval`, which sends every judged query of the split through
the real search service: the first stage alone, then the first stage reranked at each depth.
The rerank latency is the rerank stage's own time (the search response's StageTiming), one
caller at a time, so it is the cost a single query pays.

    python -m neuralir.benchmarks.rerank_tradeoff \\
        --reranker 6-layer=artifacts/models/cross-encoder \\
        --reranker 3-layer=artifacts/models/cross-encoder-small \\
        --out benchmarks/results/rerank-tradeoff

writes OUT.json (every eval report) and OUT.md (the table). Reading a row: the gain is nDCG@10
against the same first stage without reranking; latency grows about linearly with depth.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

from neuralir.models.manifest import read_manifest

DEFAULT_DEPTHS = (10, 20, 50, 100)
PRECISIONS = ("int8", "fp32")


def run_eval(
    dataset: Path,
    split: str,
    model_dir: Path,
    first_stage: str,
    depths: list[int],
    models: Path,
    index_cache: Path,
    blend_weight: float | None = None,
    max_queries: int = 0,
) -> dict[str, Any]:
    """One `neuralir eval --json` run serving `model_dir` as the reranker (at its recipe's
    blend weight unless one is given)."""
    pipelines = [first_stage, *(f"{first_stage}+rerank@{d}" for d in depths)]
    command = [
        sys.executable,
        "-m",
        "neuralir.cli",
        "eval",
        "--dataset",
        str(dataset),
        "--split",
        split,
        "--json",
        "--models",
        str(models),
        "--cross-encoder",
        str(model_dir),
        "--index-cache",
        str(index_cache),
        "--warmup",
        "5",
        "--max-queries",
        str(max_queries),
    ]
    for pipeline in pipelines:
        command += ["--pipeline", pipeline]
    if blend_weight is not None:
        command += ["--blend-weight", str(blend_weight)]
    done = subprocess.run(command, check=True, capture_output=True, text=True)
    report: dict[str, Any] = json.loads(done.stdout)
    return report


def recipe_weight(model_dir: Path) -> float:
    """The blend weight the service uses when a request sets none (server/stages/rerank.py)."""
    return float(read_manifest(model_dir).recipe.get("blend_weight", 1.0))


def rows(
    label: str, precision: str, weight: float, report: dict[str, Any], first_stage: str
) -> list[dict[str, Any]]:
    pipelines = report["pipelines"]
    base = pipelines[first_stage]["ndcg@10"]
    out = []
    for result in pipelines.values():
        if not result["rerank_depth"]:
            continue
        out.append(
            {
                "model": label,
                "precision": precision,
                "model_id": report.get("rerank_model_id", ""),
                "dataset": report["dataset"],
                "split": report["split"],
                "first_stage": first_stage,
                "first_stage_ndcg@10": base,
                "depth": result["rerank_depth"],
                "blend_weight": weight,
                "ndcg@10": result["ndcg@10"],
                "gain": result["ndcg@10"] - base,
                "rerank_ms": result["rerank_ms"],
                "search_ms": result["latency_ms"],
            }
        )
    return out


def markdown(table: list[dict[str, Any]]) -> str:
    lines = [
        "| collection | model | precision | depth | blend w | nDCG@10 | vs first stage "
        "| rerank p50 ms | rerank p99 ms | search p50 ms |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in table:
        lines.append(
            f"| {row['dataset']} {row['split']} ({row['first_stage']} "
            f"{row['first_stage_ndcg@10']:.3f}) | {row['model']} | {row['precision']} "
            f"| {row['depth']} | {row['blend_weight']:.1f} | {row['ndcg@10']:.3f} "
            f"| {100 * row['gain']:+.1f} "
            f"| {row['rerank_ms']['p50']:.1f} | {row['rerank_ms']['p99']:.1f} "
            f"| {row['search_ms']['p50']:.1f} |"
        )
    return "\n".join(lines) + "\n"


def parse_reranker(text: str) -> tuple[str, Path]:
    label, sep, path = text.partition("=")
    if not sep or not label or not path:
        raise argparse.ArgumentTypeError(f"--reranker {text!r}: use LABEL=DIR")
    return label, Path(path)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument(
        "--reranker",
        type=parse_reranker,
        action="append",
        required=True,
        help="LABEL=DIR, DIR holding int8/ and fp32/ builds; repeatable",
    )
    p.add_argument("--dataset", type=Path, action="append", help="default: scifact")
    p.add_argument("--split", default="dev_sub", help="split of the first dataset (others: test)")
    p.add_argument("--first-stage", default="bm25", choices=["bm25", "dense", "hybrid"])
    p.add_argument("--depths", type=int, nargs="+", default=list(DEFAULT_DEPTHS))
    p.add_argument(
        "--blend-weights",
        type=float,
        nargs="+",
        default=[],
        help="cross-encoder weights to try (default: each model's recipe weight)",
    )
    p.add_argument("--precisions", nargs="+", default=list(PRECISIONS), choices=PRECISIONS)
    p.add_argument("--models", type=Path, default=Path("artifacts/models"))
    p.add_argument("--index-cache", type=Path, default=Path("artifacts/indexes/eval"))
    p.add_argument("--max-queries", type=int, default=0, help="first N judged queries (0 = all)")
    p.add_argument("--out", type=Path, required=True, help="writes OUT.json and OUT.md")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    datasets = args.dataset or [Path("../shared/data/scifact")]
    table: list[dict[str, Any]] = []
    reports = []
    for n, dataset in enumerate(datasets):
        split = args.split if n == 0 else "test"
        for label, root in args.reranker:
            for precision in args.precisions:
                model_dir = root / precision
                for weight in args.blend_weights or [recipe_weight(model_dir)]:
                    print(
                        f"{dataset.name}/{split}: {label} {precision} w={weight}",
                        file=sys.stderr,
                        flush=True,
                    )
                    report = run_eval(
                        dataset,
                        split,
                        model_dir,
                        args.first_stage,
                        args.depths,
                        args.models,
                        args.index_cache,
                        weight,
                        args.max_queries,
                    )
                    reports.append(report)
                    table += rows(label, precision, weight, report, args.first_stage)
                    print(markdown(table[-len(args.depths) :]), file=sys.stderr, flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(
        json.dumps({"rows": table, "reports": reports}, indent=2)
    )
    args.out.with_suffix(".md").write_text(markdown(table))
    print(markdown(table))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
