"""Query encoding in-process: ONNX int8 (served) vs ONNX fp32 vs sentence-transformers PyTorch.

Each variant runs in this process, one caller, at each batch size and thread count; thread
pools are pinned per measurement (ONNX Runtime intra-op threads, torch.set_num_threads).
Variants are measured in interleaved rounds, so a change in machine load hits all alike.
`onnx-int8` is the served int8 graph (fused by default), `onnx-int8-plain` the plain int8 graph
built beside it (int8-plain/): the two are timed side by side.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence
from typing import Any

from neuralir.benchmarks import torch_baselines
from neuralir.benchmarks.context import BenchContext, ScenarioOutput, drop_missing_plain
from neuralir.benchmarks.int8_gemm import Int8Gemm, encoder_work
from neuralir.benchmarks.loadgen import CallReport, LoadResult, closed_loop_sync, merge_round
from neuralir.benchmarks.records import make_run
from neuralir.benchmarks.scenario import Scenario
from neuralir.models.encoder import Encoder
from neuralir.models.manifest import read_manifest
from neuralir.models.session import RuntimeSettings
from neuralir.models.sources import default_bi_encoder_source

# variant -> (results path, model directory)
VARIANTS = {
    "onnx-int8": ("in_process", "int8"),
    # The plain int8 graph beside a fused int8/ (absent when int8/ is itself plain).
    "onnx-int8-plain": ("in_process", "int8-plain"),
    # The same model fed batches of similar-length queries: how much padding costs a batch.
    "onnx-int8-bucketed": ("in_process", "int8"),
    "onnx-fp32": ("baseline:onnx-fp32", "fp32"),
    "pytorch-fp32": ("baseline:sentence-transformers-pytorch-fp32", "fp32"),
}


def query_batches(queries: Sequence[str], size: int, count: int = 64) -> list[list[str]]:
    """`count` distinct batches of `size` queries, cycled through by a timed loop."""
    return [[queries[(i * size + j) % len(queries)] for j in range(size)] for i in range(count)]


class _Variant:
    def __init__(self, ctx: BenchContext, name: str, threads: int) -> None:
        self.name = name
        self.threads = threads
        self.path, directory = VARIANTS[name]
        self.precision = "int8" if directory.startswith("int8") else directory
        self.graph = ""
        self.bucketed = name.endswith("-bucketed")
        if name == "pytorch-fp32":
            torch_baselines.set_threads(threads)
            manifest = read_manifest(ctx.model_dir("bi-encoder", "fp32"))
            model = torch_baselines.TorchBiEncoder(default_bi_encoder_source(), manifest.max_length)
            self.encode: Callable[[list[str]], Any] = model.encode
            self.pinned = {"torch_intra_op": threads}
            self.runtime = f"torch {torch_baselines.torch_version()}"
        else:
            settings = RuntimeSettings(intra_op_threads=threads)
            encoder = Encoder(ctx.model_dir("bi-encoder", directory), settings)
            self.graph = encoder.manifest.graph_name
            self.encode = lambda texts: encoder.encode(texts, "query")
            self.pinned = {"ort_intra_op": threads}
            self.runtime = "onnxruntime"

    def pin(self) -> None:
        if self.name == "pytorch-fp32":  # torch's pool is process-wide: set before each run
            torch_baselines.set_threads(self.threads)


def _model_work(ctx: BenchContext, queries: Sequence[str]) -> dict[str, Any]:
    """What one real query costs the served model in multiply-accumulates, counted from its
    graph and the queries' own token counts (the same for the fused and the plain graph)."""
    model_dir = ctx.model_dir("bi-encoder", "int8")
    work = encoder_work(model_dir / read_manifest(model_dir).onnx_file)
    tokens = Encoder(model_dir).encode_detailed(list(queries), "query").token_counts
    return {
        "linear_macs_per_token": work.linear_macs_per_token,
        "attention_layers": work.attention_layers,
        "hidden": work.hidden,
        "queries": len(tokens),
        "mean_query_tokens": round(sum(tokens) / len(tokens), 2),
        "mean_macs_per_query": round(sum(work.macs(t) for t in tokens) / len(tokens)),
    }


def _gemm_row(
    scenario: Scenario, result: LoadResult, gemm: Int8Gemm, rows: int, threads: int, queries: int
) -> dict[str, Any]:
    row = make_run(
        scenario=scenario.name,
        stage="int8_gemm",
        path="in_process",
        result=result,
        batch=rows,
        model=f"DynamicQuantizeLinear+MatMulInteger {gemm.k}x{gemm.n}",
        quantization="int8",
        threads={"ort_intra_op": threads},
        variant="int8-gemm",
        runtime="onnxruntime",
        rows_as_queries=queries,
    )
    row["gmac_per_s"] = round(result.throughput_rps * gemm.macs(rows) / 1e9, 1)
    return row


def run(scenario: Scenario, ctx: BenchContext) -> ScenarioOutput:
    out = ScenarioOutput()
    names = list(scenario.param("variants", list(VARIANTS)))
    batches = [int(b) for b in scenario.param("batches", [1, 8, 32])]
    rounds = int(scenario.param("rounds", 2))
    queries = ctx.workload.queries
    model_name = ctx.model_name("bi-encoder")
    # The int8 product alone at the rows of 1, 16, 64 queries: the ceiling of batching.
    gemm_queries = [int(q) for q in scenario.param("gemm_queries", [])]
    gemm_shape = [int(d) for d in scenario.param("gemm_shape", [384, 1536])]
    work = _model_work(ctx, queries) if gemm_queries else {}
    if work:
        out.extra["encoder_work"] = work
    mean_tokens = round(work.get("mean_query_tokens", 0))
    if note := drop_missing_plain(ctx, "bi-encoder", names, VARIANTS):
        out.notes.append(note)
    missing = torch_baselines.unavailable_reason(default_bi_encoder_source())
    if missing and "pytorch-fp32" in names:
        names.remove("pytorch-fp32")
        out.notes.append(f"PyTorch baseline absent: {missing}")
    for threads in [int(t) for t in scenario.param("threads", [1, 2])]:
        ctx.progress(f"encode: loading {', '.join(names)} with {threads} thread(s)")
        variants = [_Variant(ctx, name, threads) for name in names]
        merged: dict[tuple[str, int], LoadResult] = {}
        gemm = Int8Gemm(gemm_shape[0], gemm_shape[1], threads, ctx.work_dir)
        gemm_merged: dict[int, LoadResult] = {}
        for round_ in range(rounds):
            for n_queries in gemm_queries:
                rows = n_queries * mean_tokens

                def product(g: Int8Gemm = gemm, r: int = rows) -> CallReport:
                    g.run(r)
                    return CallReport(items=r)

                ctx.progress(f"encode int8-gemm threads={threads} rows={rows} r{round_}")
                result = closed_loop_sync(product, scenario.duration_s / rounds, scenario.warmup_s)
                merge_round(gemm_merged, n_queries, result)
            for variant, batch in itertools.product(variants, batches):
                if variant.bucketed and batch == 1:
                    continue  # a batch of one has no padding: the same as onnx-int8
                pool = sorted(queries, key=len) if variant.bucketed else queries
                cycle = itertools.cycle(query_batches(pool, batch))

                def call(v: _Variant = variant, c: Any = cycle, n: int = batch) -> CallReport:
                    v.encode(next(c))
                    return CallReport(items=n)

                variant.pin()
                ctx.progress(f"encode {variant.name} threads={threads} batch={batch} r{round_}")
                result = closed_loop_sync(call, scenario.duration_s / rounds, scenario.warmup_s)
                merge_round(merged, (variant.name, batch), result)
        for variant, batch in itertools.product(variants, batches):
            if (variant.name, batch) not in merged:
                continue
            out.runs.append(
                make_run(
                    scenario=scenario.name,
                    stage="encode",
                    path=variant.path,
                    result=merged[(variant.name, batch)],
                    batch=batch,
                    model=model_name,
                    quantization=variant.precision,
                    threads=variant.pinned,
                    variant=variant.name,
                    runtime=variant.runtime,
                    text_kind="query",
                    **({"graph": variant.graph} if variant.graph else {}),
                )
            )
        for n_queries, result in gemm_merged.items():
            rows = n_queries * mean_tokens
            out.runs.append(_gemm_row(scenario, result, gemm, rows, threads, n_queries))
    return out
