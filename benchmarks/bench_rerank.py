"""Reranking real passages: ONNX int8 (served) vs ONNX fp32 vs sentence-transformers PyTorch,
in-process at each depth, then the rerank service over gRPC.

Passages are the dense top-`depth` documents (title + text) of real queries; each call scores
one query against its `depth` passages, so items_per_s is pairs/s. Every model is warmed up
on a full-depth call first (ONNX Runtime's arena grows on its first large batches). Variants
take turns call by call (one call each per round), so drifting load hits all alike.
`onnx-int8` is the served int8 graph (fused by default), `onnx-int8-plain` the plain one built
beside it; `small-*` are the same two graphs of the small reranker (cross-encoder-small/).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

from neuralir.benchmarks import torch_baselines
from neuralir.benchmarks.context import (
    BenchContext,
    ScenarioOutput,
    drop_missing_plain,
    run_async,
)
from neuralir.benchmarks.grpc_calls import connect, rerank_call
from neuralir.benchmarks.loadgen import (
    CallReport,
    LoadResult,
    closed_loop,
    closed_loop_sync,
    merge_round,
)
from neuralir.benchmarks.records import make_run
from neuralir.benchmarks.scenario import Scenario
from neuralir.models.cross_encoder import CrossEncoder
from neuralir.models.manifest import read_manifest
from neuralir.models.session import RuntimeSettings

SMALL = "cross-encoder-small"
# variant -> (results path, model kind directory, model directory)
VARIANTS = {
    "onnx-int8": ("in_process", "cross-encoder", "int8"),
    "onnx-int8-plain": ("in_process", "cross-encoder", "int8-plain"),
    "onnx-fp32": ("baseline:onnx-fp32", "cross-encoder", "fp32"),
    "pytorch-fp32": ("baseline:sentence-transformers-pytorch-fp32", "cross-encoder", "fp32"),
    "small-onnx-int8": ("in_process", SMALL, "int8"),
    "small-onnx-int8-plain": ("in_process", SMALL, "int8-plain"),
}


@dataclasses.dataclass
class _Scorer:
    score: Callable[[str, Sequence[str]], Any]
    pinned: dict[str, int]
    runtime: str
    model: str
    graph: str = ""


def _scorer(ctx: BenchContext, variant: str, threads: int, chunk: int) -> _Scorer:
    _, kind, directory = VARIANTS[variant]
    fp32 = read_manifest(ctx.model_dir(kind, "fp32"))
    if variant == "pytorch-fp32":
        torch_baselines.set_threads(threads)
        model = torch_baselines.TorchCrossEncoder(fp32.source, fp32.max_length, chunk)
        runtime = f"torch {torch_baselines.torch_version()}"
        return _Scorer(model.score, {"torch_intra_op": threads}, runtime, fp32.name)
    settings = RuntimeSettings(intra_op_threads=threads, max_batch_items=chunk)
    cross = CrossEncoder(ctx.model_dir(kind, directory), settings)
    pinned = {"ort_intra_op": threads}
    return _Scorer(cross.score, pinned, "onnxruntime", fp32.name, cross.manifest.graph_name)


def _variants(ctx: BenchContext, scenario: Scenario, notes: list[str]) -> list[str]:
    """The default model's variants, then the small model's (where it was built)."""
    names = list(scenario.param("variants", [v for v in VARIANTS if not v.startswith("small")]))
    small = list(scenario.param("small_variants", ["small-onnx-int8", "small-onnx-int8-plain"]))
    if small and not (ctx.model_dir(SMALL, "int8") / "manifest.json").is_file():
        notes.append(f"No {SMALL}/ built: the small reranker is not timed")
        small = []
    for kind, group in (("cross-encoder", names), (SMALL, small)):
        if note := drop_missing_plain(ctx, kind, group, {k: v[1:] for k, v in VARIANTS.items()}):
            notes.append(note)
    return names + small


def run(scenario: Scenario, ctx: BenchContext) -> ScenarioOutput:
    out = ScenarioOutput()
    depths = [int(d) for d in scenario.param("depths", [20, 50, 100])]
    calls = int(scenario.param("calls_per_depth", 3))
    threads = int(scenario.param("threads", ctx.pool.base.rerank_threads))
    chunk = int(scenario.param("chunk", 64))  # pairs per model call (the runtime's default)
    names = _variants(ctx, scenario, out.notes)
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
    small_depths = [int(d) for d in scenario.param("small_depths", [max(depths)])]
    grpc_depths = [int(d) for d in scenario.param("grpc_depths", depths)]
    all_depths = {*depths, *grpc_depths, *small_depths}
    sets = {d: ctx.workload.rerank_sets(d, max(calls, 1) + 1) for d in all_depths}
    model_name = ctx.model_name("cross-encoder")
    scorers = {}
    for name in names:
        ctx.progress(f"rerank: loading {name}")
        scorers[name] = _scorer(ctx, name, threads, chunk)
    results: dict[tuple[str, int], LoadResult] = {}
    for depth in sorted(all_depths):
        here = [n for n in names if depth in (small_depths if n.startswith("small") else depths)]
        warm_query, warm_passages = sets[depth][-1]
        for name in here:
            if name == "pytorch-fp32":
                torch_baselines.set_threads(threads)
            scorers[name].score(warm_query, warm_passages[:warmup_depth])
        # Interleaved call by call: each variant scores the same query in turn.
        for query, passages in sets[depth][:-1][:calls]:
            for name in here:
                if name == "pytorch-fp32":
                    torch_baselines.set_threads(threads)

                def call(
                    score: Any = scorers[name].score, q: str = query, p: Any = passages
                ) -> CallReport:
                    score(q, p)
                    return CallReport(items=len(p))

                ctx.progress(f"rerank {name} depth={depth}")
                result = closed_loop_sync(call, scenario.duration_s, 0.0, max_requests=1)
                merge_round(results, (name, depth), result)
    for (name, depth), result in results.items():
        scorer = scorers[name]
        out.runs.append(
            make_run(
                scenario=scenario.name,
                stage="rerank",
                path=VARIANTS[name][0],
                result=result,
                batch=depth,
                model=scorer.model,
                quantization="int8" if VARIANTS[name][2].startswith("int8") else "fp32",
                threads=scorer.pinned,
                variant=name,
                runtime=scorer.runtime,
                depth=depth,
                pairs_per_model_call=chunk,
                role=VARIANTS[name][1],
                **({"graph": scorer.graph} if scorer.graph else {}),
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
