"""ANN: usearch (served) vs FAISS HNSW vs exact numpy: recall@10 against exact, and queries/s,
at several expansion (efSearch) settings, single queries and batched.

Data: the real document embeddings of the workload (encoded once by the index build, cached
under artifacts/bench-cache/) with the real queries, or clustered synthetic sets of growing
size (see synthetic.py) to show how search cost grows with the index. Synthetic indexes are
cached with their build time, since a 1M build takes many minutes on two cores.
"""

from __future__ import annotations

import datetime
import gc
import itertools
import json
from pathlib import Path
from typing import Any

import numpy as np

from neuralir.benchmarks.ann_engines import (
    Engine,
    ExactEngine,
    FaissEngine,
    blas_threads,
    exact_top_k,
    make_engine,
    recall_at_k,
    timed_build,
)
from neuralir.benchmarks.context import BenchContext, ScenarioOutput
from neuralir.benchmarks.loadgen import CallReport, LoadResult, closed_loop_sync
from neuralir.benchmarks.machine import load_average
from neuralir.benchmarks.records import make_run
from neuralir.benchmarks.scenario import Scenario
from neuralir.benchmarks.synthetic import ClusteredSpec, clustered_queries, clustered_vectors

K = 10
Row = dict[str, Any]


class _Dataset:
    def __init__(
        self, name: str, key: str | None, vectors: np.ndarray, queries: np.ndarray
    ) -> None:
        self.name = name
        self.key = key  # cache key; None = not cached (cheap to build)
        self.vectors = vectors
        self.queries = queries


def _datasets(scenario: Scenario, ctx: BenchContext, n_queries: int) -> list[Any]:
    """Lazily made (so only one large set is in memory at a time)."""
    if scenario.param("dataset", "workload") == "workload":

        def real() -> _Dataset:
            workload = ctx.workload
            vectors = workload.doc_embeddings()
            queries = workload.query_embeddings()[:n_queries]
            name = f"{workload.name} {len(vectors):,} x {vectors.shape[1]} (real)"
            return _Dataset(name, None, vectors, queries)

        return [real]
    # Centroids grow with the size so every set has the same cluster occupancy: the sizes
    # then differ in scale only, not in how hard their neighbourhoods are.
    per_centroid = int(scenario.param("points_per_centroid", 250))
    specs = [
        ClusteredSpec(
            size=int(size),
            centroids=max(16, int(size) // per_centroid),
            noise=float(scenario.param("noise", 0.05)),
        )
        for size in scenario.param("sizes", [100_000])
    ]
    return [
        (
            lambda s=spec: _Dataset(
                s.name, s.key, clustered_vectors(s), clustered_queries(s, n_queries)
            )
        )
        for spec in specs
    ]


def _ground_truth(dataset: _Dataset, cache: Path, threads: int) -> np.ndarray:
    path = cache / f"{dataset.key}-gt{len(dataset.queries)}.npy" if dataset.key else None
    if path is not None and path.is_file():
        return np.load(path)
    truth = exact_top_k(dataset.vectors, dataset.queries, K, threads)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        np.save(path, truth)
    return truth


def _prepare(
    engine: Engine, dataset: _Dataset, params: dict[str, int], cache: Path, ctx: BenchContext
) -> dict[str, Any]:
    """Builds the engine's index, or loads it from the cache; returns the build record."""
    m, efc, threads = params["connectivity"], params["expansion_add"], params["build_threads"]
    record: dict[str, Any] = {
        "dataset": dataset.name,
        "engine": engine.name,
        "n_vectors": len(dataset.vectors),
        "connectivity": m,
        "expansion_add": efc,
        "build_threads": threads,
    }
    stem = f"{dataset.key}-{engine.name}-M{m}-efc{efc}" if dataset.key else None
    index_path = cache / f"{stem}{engine.suffix}" if stem and engine.suffix else None
    meta_path = cache / f"{stem}.json" if stem else None
    if (
        index_path is not None
        and meta_path is not None
        and index_path.is_file()
        and meta_path.is_file()
    ):
        ctx.progress(f"ann: loading cached {engine.name} for {dataset.name}")
        engine.load(index_path)
        record.update(json.loads(meta_path.read_text()))
        record["cached"] = True
    else:
        ctx.progress(f"ann: building {engine.name} on {dataset.name} (M={m}, efc={efc})")
        before = load_average()
        seconds = timed_build(engine, dataset.vectors, m, efc, threads)
        meta = {
            "build_s": round(seconds, 2),
            "vectors_per_s": round(len(dataset.vectors) / max(seconds, 1e-9), 1),
            "built_at": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
            "load_average_at_build": [before, load_average()],
        }
        record.update(meta)
        record["cached"] = False
        if index_path is not None and meta_path is not None:
            index_path.parent.mkdir(parents=True, exist_ok=True)
            engine.save(index_path)
            meta_path.write_text(json.dumps(meta))
    record["memory_mb"] = round(engine.memory_bytes() / 2**20, 1)
    record["hardware"] = engine.hardware()[:120]
    return record


class _Cell:
    """One engine at one ef: quality measured once, speed merged over interleaved rounds."""

    def __init__(self, engine: Engine, ef: int, dataset: _Dataset, truth: np.ndarray, threads: int):
        self.engine = engine
        self.ef = ef
        engine.set_ef(ef)
        if isinstance(engine, ExactEngine):
            self.recall = 1.0  # the ground truth itself: no need for a (1M: slow) extra pass
        else:
            self.recall = recall_at_k(engine.search_batch(dataset.queries, K, threads), truth, K)
        self.distances = engine.distances_per_query(dataset.queries, K)
        self.single: LoadResult | None = None
        self.batched: LoadResult | None = None
        self.batch_size = (
            min(200, len(dataset.queries))
            if isinstance(engine, ExactEngine)
            else len(dataset.queries)
        )

    def measure(self, queries: np.ndarray, budget_s: float, batch_calls: int, threads: int) -> None:
        engine = self.engine
        engine.set_ef(self.ef)
        cycle = itertools.cycle(queries)

        def one() -> CallReport:
            engine.search_one(next(cycle), K)
            return CallReport()

        # Exact search over 1M vectors takes ~10 s per 1,000 queries: a slice shows its rate.
        batch_queries = queries[:200] if isinstance(engine, ExactEngine) else queries

        def batch() -> CallReport:
            engine.search_batch(batch_queries, K, threads)
            return CallReport(items=len(batch_queries))

        if isinstance(engine, FaissEngine):
            engine.pin_single()
        with blas_threads(1):
            for q in queries[:20]:  # warm-up: caches, lazily built tables
                engine.search_one(q, K)
            single = closed_loop_sync(one, budget_s, 0.0, max_requests=len(queries))
        batched = closed_loop_sync(batch, budget_s, 0.0, max_requests=batch_calls)
        for name, result in (("single", single), ("batched", batched)):
            merged = getattr(self, name)
            if merged is None:
                setattr(self, name, result)
            else:
                merged.merge(result)

    def rows(self, scenario: Scenario, dataset: _Dataset, params: dict[str, int]) -> list[Row]:
        engine = self.engine
        model = engine.name
        if not isinstance(engine, ExactEngine):
            model += f" M={params['connectivity']} efc={params['expansion_add']}"
        out = []
        for mode, result, threads, size in (
            ("single", self.single, 1, 1),
            ("batch", self.batched, params["batch_threads"], self.batch_size),
        ):
            assert result is not None
            # Single queries: the median call, which preemption on a shared machine hardly
            # moves (the mean-based items_per_s is kept beside it).
            extra: dict[str, Any] = {}
            p50_ms = result.latency.percentile_ms(50)
            if mode == "single" and p50_ms > 0:
                extra["qps_p50"] = round(1000.0 / p50_ms, 1)
                if self.distances:
                    extra["ns_per_distance"] = round(p50_ms * 1e6 / self.distances, 1)
            out.append(
                make_run(
                    scenario=scenario.name,
                    stage="ann",
                    path=engine.path,
                    result=result,
                    batch=size,
                    model=model,
                    quantization=engine.dtype,
                    threads={engine.threads_key: threads},
                    variant=engine.name,
                    engine=engine.name,
                    dataset=dataset.name,
                    n_vectors=len(dataset.vectors),
                    ef=self.ef if engine.has_ef else None,
                    query_mode=mode,
                    distances_per_query=round(self.distances, 1),
                    **extra,
                    **{"recall@10": round(self.recall, 4)},
                )
            )
        return out


def engine_from_spec(spec: str, params: dict[str, int]) -> tuple[Engine, dict[str, int]]:
    """ "usearch-bf16" or "usearch-bf16@efc128": an engine with its own expansion_add."""
    base, _, option = spec.partition("@")
    engine = make_engine(base)
    own = dict(params)
    if option:
        if not option.startswith("efc") or not option[3:].isdigit():
            raise ValueError(f"engine option {option!r} in {spec!r}: only efcN is known")
        own["expansion_add"] = int(option[3:])
        engine.name = spec
    return engine, own


def _call_overhead(vectors: np.ndarray, ctx: BenchContext) -> dict[str, float]:
    """Microseconds per single-query call on a tiny index (2,000 vectors, ef 16): the fixed
    cost of each library's Python binding, which dominates when the search itself is short."""
    tiny = np.ascontiguousarray(vectors[:2000])
    out = {}
    for name in ("faiss-hnsw", "usearch-f32", "usearch-i8"):
        engine = make_engine(name)
        engine.build(tiny, 16, 64, 1)
        engine.set_ef(16)
        if isinstance(engine, FaissEngine):
            engine.pin_single()
        cycle = itertools.cycle(tiny[:500])

        def one(e: Engine = engine, c: Any = cycle) -> CallReport:
            e.search_one(next(c), K)
            return CallReport()

        result: LoadResult = closed_loop_sync(one, 0.4, 0.1)
        out[name] = round(result.latency.percentile_ms(50) * 1000, 1)
        engine.close()
    ctx.progress(f"ann: per-call cost on a tiny index (us, p50): {out}")
    return out


def run(scenario: Scenario, ctx: BenchContext) -> ScenarioOutput:
    out = ScenarioOutput()
    engines = list(scenario.param("engines", ["exact-numpy", "faiss-hnsw", "usearch-f32"]))
    efs = [int(e) for e in scenario.param("efs", [16, 32, 64, 128, 256])]
    params = {
        "connectivity": int(scenario.param("connectivity", 16)),
        "expansion_add": int(scenario.param("expansion_add", 128)),
        "build_threads": int(scenario.param("build_threads", 2)),
        "batch_threads": int(scenario.param("batch_threads", 2)),
    }
    cache = ctx.repo / "artifacts" / "bench-cache" / "ann"
    builds: list[dict[str, Any]] = []
    overhead: dict[str, float] = {}
    for make in _datasets(scenario, ctx, int(scenario.param("queries", 1000))):
        dataset = make()
        ctx.progress(f"ann: {dataset.name}, {len(dataset.queries)} queries")
        truth = _ground_truth(dataset, cache, params["batch_threads"])
        if not overhead and scenario.param("call_overhead", True):
            overhead = _call_overhead(dataset.vectors, ctx)
        by_size = dict(scenario.param("engines_by_size", {}))
        engines_here = []
        engine_params: dict[str, dict[str, int]] = {}
        for spec in by_size.get(str(len(dataset.vectors)), engines):
            engine, engine_params[spec] = engine_from_spec(spec, params)
            engines_here.append(engine)
        for engine in engines_here:  # all built (or loaded) first, so rounds can interleave
            builds.append(_prepare(engine, dataset, engine_params[engine.name], cache, ctx))
        cells = [
            _Cell(engine, ef, dataset, truth, params["batch_threads"])
            for engine in engines_here
            for ef in (efs if engine.has_ef else [0])
        ]
        # Rounds: every engine in turn at each ef, so a change in machine load hits all alike.
        rounds = int(scenario.param("rounds", 1))
        for round_ in range(rounds):
            ctx.progress(f"ann: {dataset.name}: round {round_ + 1}/{rounds}, {len(cells)} cells")
            for cell in sorted(cells, key=lambda c: (c.ef, c.engine.name)):
                cell.measure(
                    dataset.queries,
                    scenario.duration_s / rounds,
                    int(scenario.param("batch_calls", 3)),
                    params["batch_threads"],
                )
        for cell in cells:
            out.runs.extend(cell.rows(scenario, dataset, engine_params[cell.engine.name]))
        for engine in engines_here:
            engine.close()
        del cells, engines_here
        gc.collect()
        del dataset
        gc.collect()
    out.extra["builds"] = builds
    if overhead:
        out.extra["call_overhead_us"] = overhead
    out.notes.append(
        "Index builds: size is the index in RAM when built here, the file when memory-mapped "
        "from the cache (usearch, as the server does); FAISS is read into RAM."
    )
    out.notes.append(
        "recall@10 is measured against exact inner-product search on the same vectors (from "
        "one batched call per setting); `single` rows time one query per call in a Python "
        f"loop with 1 thread (what the index service does), `batch` rows one call over all "
        f"queries with {params['batch_threads']} threads."
    )
    return out
