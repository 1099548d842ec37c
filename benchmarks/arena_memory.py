"""What one worst-case legal request costs a model in resident memory and time, per ONNX Runtime
arena setting and token budget, and what the setting costs a normal batch-1 query.

Each configuration runs in a fresh process (an arena never gives memory back to a later
configuration). Run: python -m neuralir.benchmarks.arena_memory --model DIR [--kind encoder]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

import psutil

# The Encode limits (neuralir.v1.limits): 256 texts of 8,192 characters; CJK characters are one
# token each, so every text is cut at the model's max length: the most tokens a call can hold.
WORST_TEXTS, WORST_CHARS = 256, 8192
RERANK_PASSAGES, RERANK_CHARS = 1000, 16384
CJK = "信息检索系统评价方法与实践研究"


def _rss_mib() -> float:
    return psutil.Process().memory_info().rss / (1 << 20)


def _measure(model: Path, kind: str, arena: str, budget: int, threads: int) -> dict[str, object]:
    from neuralir.models.cross_encoder import CrossEncoder
    from neuralir.models.encoder import Encoder
    from neuralir.models.session import RuntimeSettings

    settings = RuntimeSettings(intra_op_threads=threads, arena=arena, max_batch_tokens=budget)  # type: ignore[arg-type]
    text = (CJK * (WORST_CHARS // len(CJK) + 1))[:WORST_CHARS]
    if kind == "encoder":
        encoder = Encoder(model, settings)

        def query() -> None:
            encoder.encode(["how are library catalogues evaluated"])

        def worst() -> None:
            encoder.encode([text] * WORST_TEXTS, "passage")
    else:
        ce = CrossEncoder(model, settings)
        passage = (CJK * (RERANK_CHARS // len(CJK) + 1))[:RERANK_CHARS]

        def query() -> None:
            ce.score("how are library catalogues evaluated", ["a short passage about catalogues"])

        def worst() -> None:
            ce.score("how are library catalogues evaluated", [passage] * RERANK_PASSAGES)

    for _ in range(20):
        query()
    before = _rss_mib()
    start = time.perf_counter_ns()
    worst()
    worst_s = (time.perf_counter_ns() - start) / 1e9
    after = _rss_mib()
    times = []
    for _ in range(300):
        t = time.perf_counter_ns()
        query()
        times.append((time.perf_counter_ns() - t) / 1e6)
    return {
        "kind": kind, "arena": arena, "max_batch_tokens": budget, "threads": threads,
        "rss_before_mib": round(before), "rss_after_mib": round(after),
        "growth_mib": round(after - before), "worst_request_s": round(worst_s, 2),
        "query_p50_ms": round(statistics.median(times), 3),
        "query_p90_ms": round(statistics.quantiles(times, n=10)[-1], 3),
    }  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", type=Path, required=True)
    parser.add_argument("--kind", choices=("encoder", "cross-encoder"), default="encoder")
    parser.add_argument(
        "--arena", nargs="+", default=["default", "same-as-requested", "off", "shrink"]
    )
    parser.add_argument("--budget", type=int, nargs="+", default=[0, 4096])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--one", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(
            json.dumps(_measure(args.model, args.kind, args.arena[0], args.budget[0], args.threads))
        )
        return
    for budget in args.budget:
        for arena in args.arena:
            command = [
                sys.executable, "-m", "neuralir.benchmarks.arena_memory", "--one",
                "--model", str(args.model), "--kind", args.kind, "--arena", arena,
                "--budget", str(budget), "--threads", str(args.threads),
            ]  # fmt: skip
            out = subprocess.run(command, capture_output=True, text=True, check=True)
            print(out.stdout.strip(), flush=True)


if __name__ == "__main__":
    main()
