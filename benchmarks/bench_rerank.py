"""Reranking real passages: ONNX int8 (served) vs ONNX fp32 vs sentence-transformers PyTorch,
in-process at each depth, then the rerank service over gRPC.

Passages are the dense top-`depth` documents (title + text) of real queries; each call scores
one query against its `depth` passages, so items_per_s is pairs/s. Every model is warmed up
on a full-depth call first (ONNX Runtime's arena grows on its first large batches).
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence
from typing import Any

from neuralir.benchmarks import torch_baselines
from neuralir.benchmarks.context import BenchContext, ScenarioOutput, run_async
from neuralir.benchmarks.grpc_calls import connect, rerank_call
from neuralir.benchmarks.loadgen import CallReport, LoadResult, closed_loop, closed_loop_sync
from neuralir.benchmarks.records import make_run
from neuralir.benchmarks.scenario import Scenario
from neuralir.models.cross_encoder import CrossEncoder
from neuralir.models.manifest import read_manifest
from neuralir.models.session import RuntimeSettings

VARIANTS = {
    "onnx-int8": ("in_process", "int8"),
    "onnx-fp32": ("baseline:onnx-fp32", "fp32"),
    "pytorch-fp32": ("baseline:sentence-transformers-pytorch-fp32", "fp32"),
}


def _scorer(
    ctx: BenchContext, variant: str, threads: int, chunk: int
) -> tuple[Callable[[str, Sequence[str]], Any], dict[str, int], str]:
    fp32 = read_manifest(ctx.model_dir("cross-encoder", "fp32"))
    if variant == "pytorch-fp32":
        torch_baselines.set_threads(threads)
        model = torch_baselines.TorchCrossEncoder(fp32.source, fp32.max_length, chunk)
        runtime = f"torch {torch_baselines.torch_version()}"
        return model.score, {"torch_intra_op": threads}, runtime
    precision = VARIANTS[variant][1]
    settings = RuntimeSettings(intra_op_threads=threads, max_batch_items=chunk)
    cross = CrossEncoder(ctx.model_dir("cross-encoder", precision), settings)
    return cross.score, {"ort_intra_op": threads}, "onnxruntime"


def run(scenario: Scenario, ctx: BenchContext) -> ScenarioOutput:
    out = ScenarioOutput()
    depths = [int(d) for d in scenario.param("depths", [20, 50, 100])]
    calls = int(scenario.param("calls_per_depth", 3))
    threads = int(scenario.param("threads", ctx.pool.base.rerank_threads))
    chunk = int(scenario.param("chunk", 64))  # pairs per model call (the runtime's default)
    names = list(scenario.param("variants", list(VARIANTS)))
    fp32_source = read_manifest(ctx.model_dir("cross-encoder", "fp32")).source
    missing = torch_baselines.unavailable_reason(fp32_source)
    if missing and "pytorch-fp32" in names:
        names.remove("pytorch-fp32")
        out.notes.append(f"PyTorch cross-encoder baseline absent: {missing}")
    out.notes.append(
        f"Cross-encoder: {ctx.model_name('cross-encoder')} (source {fp32_source}); passages are "
        f"truncated to the manifest's max length with the query; {chunk} pairs per model call. "
        "Scores of an untrained head cost the same as a trained one: speed does not depend on it."
    )
    # Untimed warm-up call per model and depth, at most `warmup_depth` passages deep.
    warmup_depth = int(scenario.param("warmup_depth", max(depths)))
    grpc_depths = [int(d) for d in scenario.param("grpc_depths", depths)]
    sets = {d: ctx.workload.rerank_sets(d, max(calls, 1) + 1) for d in {*depths, *grpc_depths}}
    model_name = ctx.model_name("cross-encoder")
    scorers = {}
    for name in names:
        ctx.progress(f"rerank: loading {name}")
        scorers[name] = _scorer(ctx, name, threads, chunk)
    results: dict[tuple[str, int], LoadResult] = {}
    # Interleaved: each variant in turn at each depth, so drifting load hits all alike.
    for depth in depths:
        for name, (score, _, _) in scorers.items():
            if name == "pytorch-fp32":
                torch_baselines.set_threads(threads)
            warm_query, warm_passages = sets[depth][-1]
            score(warm_query, warm_passages[:warmup_depth])
            cycle = itertools.cycle(sets[depth][:-1])

            def call(score: Any = score, cycle: Any = cycle, depth: int = depth) -> CallReport:
                query, passages = next(cycle)
                score(query, passages)
                return CallReport(items=depth)

            ctx.progress(f"rerank {name} depth={depth}")
            results[(name, depth)] = closed_loop_sync(
                call, scenario.duration_s, 0.0, max_requests=calls
            )
    for (name, depth), result in results.items():
        _, pinned, runtime = scorers[name]
        out.runs.append(
            make_run(
                scenario=scenario.name,
                stage="rerank",
                path=VARIANTS[name][0],
                result=result,
                batch=depth,
                model=model_name,
                quantization=VARIANTS[name][1],
                threads=pinned,
                variant=name,
                runtime=runtime,
                depth=depth,
                pairs_per_model_call=chunk,
            )
        )
    if scenario.param("grpc", True):
        deployment = ctx.pool.get("all")

        async def over_grpc() -> list[tuple[int, LoadResult]]:
            client = await connect(deployment.address)
            try:
                found = []
                for depth in grpc_depths:
                    query, passages = sets[depth][-1]
                    warm = rerank_call(client, [(query, passages[:warmup_depth])])
                    await warm()
                    call = rerank_call(client, sets[depth][:-1])
                    ctx.progress(f"rerank over gRPC depth={depth}")
                    result = await closed_loop(call, 1, scenario.duration_s, 0.0, calls)
                    found.append((depth, result))
                return found
            finally:
                await client.close()

        for depth, result in run_async(over_grpc):
            out.runs.append(
                make_run(
                    scenario=scenario.name,
                    stage="rerank",
                    path="grpc",
                    result=result,
                    batch=depth,
                    model=model_name,
                    quantization="int8",
                    threads=deployment.settings.threads(),
                    variant="RerankService (serve all)",
                    depth=depth,
                    batching=deployment.settings.label(),
                )
            )
    return out
