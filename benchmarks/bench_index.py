"""The index stage: ANN search (usearch HNSW) and BM25 (bm25s), in-process and over gRPC.

In-process calls go to the same IndexStore the index service serves (one usearch thread,
the built default ef); gRPC calls go to `serve all`, and to the index process of the
multi-process deployment when it is running.
"""

from __future__ import annotations

import functools
import itertools
from typing import Any

from neuralir.benchmarks.context import BenchContext, ScenarioOutput, run_async
from neuralir.benchmarks.grpc_calls import connect, dense_call, lexical_call
from neuralir.benchmarks.loadgen import AsyncCall, CallReport, LoadResult, closed_loop_sync
from neuralir.benchmarks.loadgen import closed_loop as closed_loop_async
from neuralir.benchmarks.records import make_run
from neuralir.benchmarks.scenario import Scenario


def run(scenario: Scenario, ctx: BenchContext) -> ScenarioOutput:
    out = ScenarioOutput()
    workload = ctx.workload
    store = workload.store
    vectors = workload.query_embeddings()
    queries = workload.queries
    k = int(scenario.param("k", 10))
    concurrency = [int(c) for c in scenario.param("concurrency", [1, 4])]
    info = store.info
    model = f"{info.dtype} HNSW M={info.connectivity} ef={info.expansion_search}, {info.size} docs"
    common: dict[str, Any] = {
        "scenario": scenario.name,
        "batch": 1,
        "model": model,
        "quantization": info.dtype,
        "dataset": workload.name,
        "k": k,
    }

    vector_cycle = itertools.cycle(vectors)
    query_cycle = itertools.cycle(queries)

    def dense() -> CallReport:
        store.dense_search(next(vector_cycle), k)
        return CallReport()

    def lexical() -> CallReport:
        store.lexical_search(next(query_cycle), k)
        return CallReport()

    for stage, fn in (("ann", dense), ("bm25", lexical)):
        ctx.progress(f"index: {stage} in-process")
        result = closed_loop_sync(fn, scenario.duration_s, scenario.warmup_s)
        out.runs.append(
            make_run(
                **common,
                stage=stage,
                path="in_process",
                result=result,
                threads={"usearch": 1} if stage == "ann" else {"bm25s": 1},
                variant="IndexStore in-process",
            )
        )

    deployments = [ctx.pool.get("all")]
    if scenario.param("multiprocess", False):
        deployments.append(ctx.pool.get("multiprocess"))

    async def over_grpc(address: str) -> list[tuple[str, int, LoadResult]]:
        client = await connect(address)
        found = []
        try:
            for stage, conc in itertools.product(("ann", "bm25"), concurrency):
                call: AsyncCall = (
                    dense_call(client, vectors, k)
                    if stage == "ann"
                    else lexical_call(client, queries, k)
                )
                result = await closed_loop_async(call, conc, scenario.duration_s, scenario.warmup_s)
                found.append((stage, conc, result))
        finally:
            await client.close()
        return found

    for deployment in deployments:
        ctx.progress(f"index: over gRPC ({deployment.path})")
        address = deployment.stage_addresses["index"]
        for stage, _conc, result in run_async(functools.partial(over_grpc, address)):
            out.runs.append(
                make_run(
                    **common,
                    stage=stage,
                    path=deployment.path,
                    result=result,
                    threads=deployment.settings.threads(),
                    variant=f"IndexService ({deployment.kind})",
                )
            )
    return out
