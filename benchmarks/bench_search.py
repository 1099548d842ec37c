"""End-to-end search per mode, with and without rerank: in-process floor vs `serve all` vs the
stages as separate processes; then the search service under closed and open load.

The in-process floor runs the same steps as the search service (encode, ANN and/or BM25, RRF
over each list's top 100, document lookup, cross-encoder over the top `rerank_depth`) by
calling the runtime directly, with the servers' thread settings.
"""

from __future__ import annotations

import functools
import itertools
from typing import Any

import numpy as np

from neuralir.benchmarks.context import BenchContext, ScenarioOutput, run_async
from neuralir.benchmarks.grpc_calls import connect, search_call
from neuralir.benchmarks.loadgen import (
    CallReport,
    LoadResult,
    closed_loop,
    closed_loop_sync,
    open_loop,
)
from neuralir.benchmarks.records import make_run
from neuralir.benchmarks.scenario import Scenario
from neuralir.benchmarks.servers import Deployment
from neuralir.models.cross_encoder import CrossEncoder
from neuralir.models.encoder import Encoder
from neuralir.models.session import RuntimeSettings
from neuralir.server.fusion import blend_scores, reciprocal_rank_fusion
from neuralir.server.index_store import IndexStore
from neuralir.server.limits import MAX_PASSAGE_CHARS
from neuralir.server.search_service import FUSION_DEPTH


class InProcessSearch:
    """The search pipeline without gRPC: the floor the services are compared with."""

    def __init__(self, ctx: BenchContext, store: IndexStore) -> None:
        base = ctx.pool.base
        self.encoder = Encoder(
            base.encoder_model, RuntimeSettings(intra_op_threads=base.encoder_threads)
        )
        self.cross = CrossEncoder(
            base.rerank_model, RuntimeSettings(intra_op_threads=base.rerank_threads)
        )
        self.blend_weight = float(self.cross.manifest.recipe.get("blend_weight", 1.0))
        self.store = store

    def search(self, query: str, mode: str, k: int, rerank_depth: int) -> list[str]:
        depth = max(k, rerank_depth)
        if mode == "dense":
            ranked = self.store.dense_search(self.encoder.encode([query])[0], depth)
        elif mode == "lexical":
            ranked = self.store.lexical_search(query, depth)
        else:
            list_depth = max(depth, FUSION_DEPTH)
            dense = self.store.dense_search(self.encoder.encode([query])[0], list_depth)
            lexical = self.store.lexical_search(query, list_depth)
            ranked = reciprocal_rank_fusion([[d for d, _ in dense], [d for d, _ in lexical]])
        shown = ranked[:depth]
        docs, _ = self.store.get_documents([d for d, _ in shown])
        if rerank_depth > 0 and docs:
            head = docs[:rerank_depth]
            texts = [(f"{d.title} {d.text}".strip() or d.doc_id)[:MAX_PASSAGE_CHARS] for d in head]
            scores = self.cross.score(query, texts)
            first = np.array([s for _, s in shown[: len(head)]], dtype=np.float64)
            final = blend_scores(scores, first, self.blend_weight)
            order = np.argsort(-final, kind="stable")
            return [head[i].doc_id for i in order][:k]
        return [d.doc_id for d in docs[:k]]


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


def run(scenario: Scenario, ctx: BenchContext) -> ScenarioOutput:
    out = ScenarioOutput()
    queries = ctx.workload.queries
    modes = list(scenario.param("modes", ["dense", "lexical", "hybrid"]))
    reranks = [int(d) for d in scenario.param("rerank_depths", [0, 20])]
    rerank_requests = int(scenario.param("rerank_max_requests", 0))
    cells = list(itertools.product(modes, reranks))
    base = ctx.pool.base
    inproc_threads = {
        "encoder_ort_intra_op": base.encoder_threads,
        "rerank_ort_intra_op": base.rerank_threads,
        "index_usearch": base.index_threads,
    }
    ctx.progress("search: in-process floor")
    pipeline = InProcessSearch(ctx, ctx.workload.store)
    pipeline.search(queries[0], "hybrid", 10, max(reranks))  # warm-up
    for mode, rerank in cells:
        cycle = itertools.cycle(queries)

        def call(mode: str = mode, rerank: int = rerank, cycle: Any = cycle) -> CallReport:
            pipeline.search(next(cycle), mode, 10, rerank)
            return CallReport()

        # Rerank cells are slow: warmed up above, capped in count, no time-based warm-up.
        limit, warmup = (rerank_requests, 0.0) if rerank else (0, scenario.warmup_s)
        result = closed_loop_sync(call, scenario.duration_s, warmup, limit)
        out.runs.append(
            _row(scenario, ctx, result, "in_process", mode, rerank, inproc_threads, "in-process")
        )

    deployments: list[Deployment] = []
    for kind in scenario.param("deployments", ["all", "multiprocess"]):
        ctx.progress(f"search: deployment {kind}")
        deployments.append(ctx.pool.get(kind))

    async def cells_over_grpc(deployment: Deployment) -> list[tuple[str, int, LoadResult]]:
        client = await connect(deployment.address)
        try:
            await search_call(client, queries, "hybrid", max(reranks))()  # warm-up
            found = []
            for mode, rerank in cells:
                call = search_call(client, queries, mode, rerank)
                limit, warmup = (rerank_requests, 0.0) if rerank else (0, scenario.warmup_s)
                result = await closed_loop(call, 1, scenario.duration_s, warmup, limit)
                found.append((mode, rerank, result))
            return found
        finally:
            await client.close()

    for deployment in deployments:
        ctx.progress(f"search: modes over {deployment.path}")
        for mode, rerank, result in run_async(functools.partial(cells_over_grpc, deployment)):
            variant = f"SearchService ({deployment.kind})"
            out.runs.append(
                _row(
                    scenario,
                    ctx,
                    result,
                    deployment.path,
                    mode,
                    rerank,
                    deployment.settings.threads(),
                    variant,
                )
            )

    # Load sweeps on one cell (hybrid, no rerank by default): closed, then open to saturation.
    load_mode = str(scenario.param("load_mode", "hybrid"))
    load_rerank = int(scenario.param("load_rerank", 0))
    concurrency = [int(c) for c in scenario.param("concurrency", [1, 4, 16])]
    fractions = [float(f) for f in scenario.param("open_fractions", [0.5, 0.9, 1.2])]

    async def sweep(deployment: Deployment) -> tuple[list[LoadResult], list[LoadResult]]:
        client = await connect(deployment.address)
        try:
            closed = []
            for conc in concurrency:
                call = search_call(client, queries, load_mode, load_rerank)
                closed.append(await closed_loop(call, conc, scenario.duration_s, scenario.warmup_s))
            peak = max(r.throughput_rps for r in closed)
            opened = []
            for n, fraction in enumerate(fractions):
                call = search_call(client, queries, load_mode, load_rerank)
                rate = round(max(peak * fraction, 0.5), 1)
                opened.append(
                    await open_loop(call, rate, scenario.duration_s, scenario.warmup_s, seed=n)
                )
            return closed, opened
        finally:
            await client.close()

    for deployment in deployments:
        ctx.progress(f"search: load sweep over {deployment.path}")
        closed, opened = run_async(functools.partial(sweep, deployment))
        variant = f"SearchService ({deployment.kind}) under load"
        for result in closed + opened:
            out.runs.append(
                _row(
                    scenario,
                    ctx,
                    result,
                    deployment.path,
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
        "StageTiming per stage (encode, dense, lexical, fuse, rerank, search); the client's "
        "latency minus the server's `search` total is the cost of the outer RPC."
    )
    return out
