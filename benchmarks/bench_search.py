"""End-to-end search per mode, with and without rerank: the search pipeline in-process (the
floor) vs `serve all` vs `serve all` calling its own stages over loopback gRPC vs the stages
as separate processes (and, with --baseline-code, the same deployments of another build);
then the search service under closed and open load.

The in-process floor is the served `SearchPipeline` itself on in-process backends over the
stage engines, with the servers' thread and batching settings: no gRPC anywhere. Paths are
measured in interleaved rounds, one caller each, so a change in machine load hits them alike.
"""

from __future__ import annotations

import contextlib
import itertools
from collections.abc import AsyncIterator
from typing import Any

from neuralir.benchmarks.context import BenchContext, ScenarioOutput, run_async
from neuralir.benchmarks.grpc_calls import connect, search_call
from neuralir.benchmarks.loadgen import (
    AsyncCall,
    CallReport,
    LoadResult,
    closed_loop,
    merge_round,
    open_loop,
)
from neuralir.benchmarks.records import make_run
from neuralir.benchmarks.scenario import Scenario
from neuralir.benchmarks.servers import Deployment
from neuralir.index.store import IndexStore
from neuralir.models.cross_encoder import CrossEncoder
from neuralir.models.encoder import Encoder
from neuralir.models.manifest import read_manifest
from neuralir.models.session import RuntimeSettings
from neuralir.server.pipeline.backends import Deadline, SearchCall
from neuralir.server.pipeline.local import LocalEncoder, LocalIndex, LocalReranker
from neuralir.server.pipeline.search import Mode, SearchPipeline, SearchQuery
from neuralir.server.settings import ServerSettings
from neuralir.server.stages.encoder import EncoderStage
from neuralir.server.stages.index import IndexStage
from neuralir.server.stages.rerank import RerankStage

IN_PROCESS = "in_process"


@contextlib.asynccontextmanager
async def in_process_pipeline(ctx: BenchContext) -> AsyncIterator[SearchPipeline]:
    """The served pipeline on stage engines built here, as `serve all` builds them."""
    base, defaults = ctx.pool.base, ServerSettings()
    encoder = EncoderStage(
        Encoder(base.encoder_model, RuntimeSettings(intra_op_threads=base.encoder_threads)),
        defaults.encoder_batching,
    )
    reranker = RerankStage(
        {
            "default": CrossEncoder(
                base.rerank_model, RuntimeSettings(intra_op_threads=base.rerank_threads)
            )
        },
        "default",
        defaults.rerank_batching,
    )
    expected = read_manifest(base.encoder_model).model_id
    index = IndexStage(IndexStore.open(base.index_dir, expected, base.index_threads))
    stages = (encoder, index, reranker)
    for stage in stages:
        await stage.start()
    try:
        yield SearchPipeline(LocalEncoder(encoder), LocalIndex(index), LocalReranker(reranker))
    finally:
        for stage in stages:
            await stage.stop()


def pipeline_call(
    pipeline: SearchPipeline, queries: list[str], mode: Mode, rerank_depth: int
) -> AsyncCall:
    cycle = itertools.cycle(queries)

    async def call() -> CallReport:
        query = SearchQuery(next(cycle), k=10, mode=mode, rerank_depth=rerank_depth)
        await pipeline.search(query, SearchCall(Deadline.after(60.0)))
        return CallReport()

    return call


def _row(
    scenario: Scenario,
    ctx: BenchContext,
    result: LoadResult,
    path: str,
    mode: str,
    rerank: int,
    threads: dict[str, int],
    variant: str,
    **extra: Any,
) -> dict[str, Any]:
    model = ctx.model_name("bi-encoder")
    if rerank:
        model += f" + {ctx.model_name('cross-encoder')}"
    return make_run(
        scenario=scenario.name,
        stage=f"search:{mode}" + (f"+rerank{rerank}" if rerank else ""),
        path=path,
        result=result,
        batch=1,
        model=model,
        quantization="int8",
        threads=threads,
        variant=variant,
        mode=mode,
        rerank_depth=rerank,
        **extra,
    )


def _deployments(scenario: Scenario, ctx: BenchContext) -> list[Deployment]:
    deployments = []
    for kind in scenario.param("deployments", ["all", "loopback", "multiprocess"]):
        ctx.progress(f"search: deployment {kind}")
        deployments.append(ctx.pool.get(kind))
    if ctx.baseline_code is not None:
        for kind in scenario.param("baseline_deployments", ["all", "multiprocess"]):
            ctx.progress(f"search: deployment {kind} of {ctx.baseline_code}")
            deployments.append(ctx.pool.get(kind, {"code": str(ctx.baseline_code)}))
    return deployments


def _variant(deployment: Deployment) -> str:
    base = f", code {deployment.settings.code}" if deployment.settings.code else ""
    return f"SearchService ({deployment.kind}{base})"


def run(scenario: Scenario, ctx: BenchContext) -> ScenarioOutput:
    out = ScenarioOutput()
    queries = ctx.workload.queries
    modes: list[Mode] = list(scenario.param("modes", ["dense", "lexical", "hybrid"]))
    reranks = [int(d) for d in scenario.param("rerank_depths", [0, 20])]
    rerank_requests = int(scenario.param("rerank_max_requests", 0))
    rounds = int(scenario.param("rounds", 3))
    cells = list(itertools.product(modes, reranks))
    base = ctx.pool.base
    inproc_threads = {
        "encoder_ort_intra_op": base.encoder_threads,
        "rerank_ort_intra_op": base.rerank_threads,
        "index_usearch": base.index_threads,
    }
    deployments = _deployments(scenario, ctx)
    by_path = {d.path: d for d in deployments}

    async def cells_interleaved() -> dict[tuple[str, str, int], LoadResult]:
        results: dict[tuple[str, str, int], LoadResult] = {}
        clients = {d.path: await connect(d.address) for d in deployments}
        try:
            async with in_process_pipeline(ctx) as pipeline:
                paths: dict[str, Any] = {IN_PROCESS: None, **clients}

                def call_for(path: str, mode: Mode, rerank: int) -> AsyncCall:
                    if path == IN_PROCESS:
                        return pipeline_call(pipeline, queries, mode, rerank)
                    return search_call(clients[path], queries, mode, rerank)

                for path in paths:  # warm-up: every path once through every stage
                    await call_for(path, "hybrid", max(reranks))()
                for round_ in range(rounds):
                    ctx.progress(f"search: modes, round {round_ + 1}/{rounds}")
                    for mode, rerank in cells:
                        # Rerank cells are slow: capped in count, no time-based warm-up.
                        limit = -(-rerank_requests // rounds) if rerank else 0
                        warmup = 0.0 if rerank else scenario.warmup_s
                        for path in paths:
                            result = await closed_loop(
                                call_for(path, mode, rerank),
                                1,
                                scenario.duration_s / rounds,
                                warmup,
                                limit,
                            )
                            merge_round(results, (path, mode, rerank), result)
        finally:
            for client in clients.values():
                await client.close()
        return results

    for (path, mode, rerank), result in run_async(cells_interleaved).items():
        if path == IN_PROCESS:
            threads, variant = inproc_threads, "SearchPipeline in-process (no gRPC)"
        else:
            threads, variant = by_path[path].settings.threads(), _variant(by_path[path])
        out.runs.append(_row(scenario, ctx, result, path, mode, rerank, threads, variant))

    # Load sweeps on one cell (hybrid, no rerank by default): closed (interleaved across
    # deployments), then open to each deployment's own saturation.
    load_mode: Mode = scenario.param("load_mode", "hybrid")
    load_rerank = int(scenario.param("load_rerank", 0))
    concurrency = [int(c) for c in scenario.param("concurrency", [1, 4, 16])]
    fractions = [float(f) for f in scenario.param("open_fractions", [0.5, 0.9, 1.2])]

    async def sweep() -> tuple[dict[tuple[str, int], LoadResult], dict[str, list[LoadResult]]]:
        clients = {d.path: await connect(d.address) for d in deployments}
        closed: dict[tuple[str, int], LoadResult] = {}
        opened: dict[str, list[LoadResult]] = {}
        try:
            for round_ in range(rounds):
                ctx.progress(f"search: load sweep, round {round_ + 1}/{rounds}")
                for conc in concurrency:
                    for path, client in clients.items():
                        call = search_call(client, queries, load_mode, load_rerank)
                        result = await closed_loop(
                            call, conc, scenario.duration_s / rounds, scenario.warmup_s
                        )
                        merge_round(closed, (path, conc), result)
            for path, client in clients.items():
                ctx.progress(f"search: open loop over {path}")
                peak = max(r.throughput_rps for (p, _), r in closed.items() if p == path)
                opened[path] = []
                for n, fraction in enumerate(fractions):
                    call = search_call(client, queries, load_mode, load_rerank)
                    rate = round(max(peak * fraction, 0.5), 1)
                    opened[path].append(
                        await open_loop(call, rate, scenario.duration_s, scenario.warmup_s, seed=n)
                    )
        finally:
            for client in clients.values():
                await client.close()
        return closed, opened

    closed, opened = run_async(sweep)
    for path, deployment in by_path.items():
        variant = f"{_variant(deployment)} under load"
        results = [r for (p, _), r in closed.items() if p == path] + opened[path]
        for result in results:
            out.runs.append(
                _row(
                    scenario,
                    ctx,
                    result,
                    path,
                    load_mode,
                    load_rerank,
                    deployment.settings.threads(),
                    variant,
                    sweep=True,
                    batching=deployment.settings.label(),
                )
            )
    out.notes.append(
        "Server-side timings (`server_ms` in results.json) are the search service's own "
        "StageTiming per stage (encode, dense, lexical, fuse, documents, rerank, search); the "
        "client's latency minus the server's `search` total is the cost of the outer RPC. "
        "`grpc_loopback` is `serve all --local-stages grpc`: the search service calling its "
        "own stages over loopback gRPC, as every search did before the pipeline was split "
        "from its transport."
    )
    return out
