"""Reranked pipelines side by side: today's default rerank against the recommended ones.

Each pipeline is one or two rerank passes (`[[params.pipelines]]` in the scenario file): a
model (`cross-encoder` or `cross-encoder-small`), its graph (`int8` fused, `int8-plain`), the
depth it reranks and the pair length it reads. A cascade's second pass scores the top of the
first pass's order. Pipelines take turns query by query over the same real (query, dense
top-N passages) sets, so drifting load hits all alike; the row's latency is the whole rerank
work of one query (every pass), one caller, the cost a search pays for its rerank stage.
The first pipeline is the reference the targets divide by; their quality is measured apart
(python -m neuralir.eval.tune rerank and neuralir eval, docs/quality.md).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from neuralir.benchmarks.context import BenchContext, ScenarioOutput
from neuralir.benchmarks.loadgen import CallReport, LoadResult, closed_loop_sync, merge_round
from neuralir.benchmarks.records import make_run
from neuralir.benchmarks.scenario import Scenario
from neuralir.models.cross_encoder import CrossEncoder
from neuralir.models.session import RuntimeSettings


@dataclasses.dataclass(frozen=True)
class Pass:
    kind: str  # model directory: cross-encoder | cross-encoder-small
    graph: str  # int8 | int8-plain
    depth: int
    max_length: int


@dataclasses.dataclass(frozen=True)
class Pipeline:
    name: str
    passes: tuple[Pass, ...]

    @property
    def pairs(self) -> int:
        return sum(p.depth for p in self.passes)


def parse_pipelines(raw: list[dict[str, Any]]) -> list[Pipeline]:
    return [
        Pipeline(
            str(p["name"]),
            tuple(
                Pass(str(x["model"]), str(x["graph"]), int(x["depth"]), int(x["max_length"]))
                for x in p["passes"]
            ),
        )
        for p in raw
    ]


Models = dict[tuple[str, str, int], CrossEncoder]  # (kind, graph, max_length) -> model


def _rerank(models: Models, pipeline: Pipeline, query: str, docs: list[str]) -> None:
    order = list(range(len(docs)))
    for step in pipeline.passes:
        head = order[: step.depth]
        scores = models[(step.kind, step.graph, step.max_length)].score(
            query, [docs[i] for i in head]
        )
        order = [head[i] for i in np.argsort(-np.asarray(scores), kind="stable")] + order[
            step.depth :
        ]


def run(scenario: Scenario, ctx: BenchContext) -> ScenarioOutput:
    out = ScenarioOutput()
    pipelines = parse_pipelines(scenario.param("pipelines", []))
    threads = int(scenario.param("threads", ctx.pool.base.rerank_threads))
    calls = int(scenario.param("calls", 20))
    models: Models = {}
    for pipeline in pipelines:
        for step in pipeline.passes:
            key = (step.kind, step.graph, step.max_length)
            directory = ctx.model_dir(step.kind, step.graph)
            if key not in models and (directory / "manifest.json").is_file():
                settings = RuntimeSettings(intra_op_threads=threads)
                models[key] = CrossEncoder(directory, settings, max_length=step.max_length)
    runnable = [
        p for p in pipelines if all((s.kind, s.graph, s.max_length) in models for s in p.passes)
    ]
    for skipped in set(pipelines) - set(runnable):
        out.notes.append(f"rerank pipeline {skipped.name!r} not timed: a model is not built")
    depth = max((s.depth for p in runnable for s in p.passes), default=0)
    sets = ctx.workload.rerank_sets(depth, calls + 1) if runnable else []
    results: dict[tuple[str, int], LoadResult] = {}
    if sets:
        warm_query, warm_docs = sets[-1]
        for pipeline in runnable:
            _rerank(models, pipeline, warm_query, warm_docs)
    for query, docs in sets[:-1]:
        for pipeline in runnable:

            def call(p: Pipeline = pipeline, q: str = query, d: list[str] = docs) -> CallReport:
                _rerank(models, p, q, d)
                return CallReport(items=p.pairs)

            ctx.progress(f"rerank pipeline {pipeline.name}")
            result = closed_loop_sync(call, scenario.duration_s, 0.0, max_requests=1)
            merge_round(results, (pipeline.name, 0), result)
    for order, pipeline in enumerate(runnable):
        out.runs.append(
            make_run(
                scenario=scenario.name,
                stage="rerank",
                path="in_process",
                result=results[(pipeline.name, 0)],
                batch=pipeline.pairs,
                model="+".join(f"{s.kind}/{s.graph}" for s in pipeline.passes),
                quantization="int8",
                threads={"ort_intra_op": threads},
                variant=pipeline.name,
                reference=order == 0,
                passes=[dataclasses.asdict(s) for s in pipeline.passes],
            )
        )
    return out
