"""ANN engines behind one small interface: exact numpy search, FAISS HNSW and usearch HNSW.

Every engine pins its own thread pool on each call (BLAS via threadpoolctl, FAISS via
omp_set_num_threads, usearch via its `threads` argument), so rows state what really ran.
"""

from __future__ import annotations

import contextlib
import importlib.util
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

ENGINES = (
    "exact-numpy",
    "faiss-hnsw",
    "usearch-f32",
    "usearch-f16",
    "usearch-bf16",
    "usearch-i8",
)


# Without threadpoolctl numpy's BLAS pool cannot be limited: rows then say "blas_unpinned".
BLAS_PINNABLE = importlib.util.find_spec("threadpoolctl") is not None


@contextlib.contextmanager
def blas_threads(threads: int) -> Iterator[None]:
    """Limits numpy's BLAS pool; a no-op (noted in the report) without threadpoolctl."""
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        yield
        return
    with threadpool_limits(limits=threads, user_api="blas"):
        yield


def exact_top_k(
    vectors: np.ndarray, queries: np.ndarray, k: int, threads: int, block: int = 131_072
) -> np.ndarray:
    """Exact inner-product top-k ids [n_queries, k], best first, in blocks of the data set."""
    n = vectors.shape[0]
    k = min(k, n)
    best_ids = np.zeros((len(queries), 0), dtype=np.int64)
    best_scores = np.zeros((len(queries), 0), dtype=np.float32)
    with blas_threads(threads):
        for start in range(0, n, block):
            scores = queries @ vectors[start : start + block].T
            kk = min(k, scores.shape[1])
            part = np.argpartition(-scores, kk - 1, axis=1)[:, :kk]
            ids = np.concatenate([best_ids, part + start], axis=1)
            top = np.concatenate([best_scores, np.take_along_axis(scores, part, axis=1)], axis=1)
            keep = np.argsort(-top, axis=1, kind="stable")[:, :k]
            best_ids = np.take_along_axis(ids, keep, axis=1)
            best_scores = np.take_along_axis(top, keep, axis=1)
    return best_ids


def recall_at_k(found: np.ndarray, truth: np.ndarray, k: int = 10) -> float:
    hits = sum(
        len(set(f[:k].tolist()) & set(t[:k].tolist())) for f, t in zip(found, truth, strict=True)
    )
    return hits / (k * len(truth))


class Engine:
    name = ""
    path = ""  # results path: in_process for the served engine, baseline:NAME otherwise
    dtype = "f32"
    threads_key = ""
    has_ef = True
    suffix = ""

    def build(
        self, vectors: np.ndarray, connectivity: int, expansion_add: int, threads: int
    ) -> None:
        raise NotImplementedError

    def save(self, path: Path) -> None:
        raise NotImplementedError

    def load(self, path: Path) -> None:
        raise NotImplementedError

    def set_ef(self, ef: int) -> None:
        """Sets the search expansion (efSearch); engines without one ignore it."""

    def search_one(self, query: np.ndarray, k: int) -> np.ndarray:
        raise NotImplementedError

    def search_batch(self, queries: np.ndarray, k: int, threads: int) -> np.ndarray:
        raise NotImplementedError

    def distances_per_query(self, queries: np.ndarray, k: int) -> float:
        """Distance computations per query at the current ef (the graph's work, not its speed)."""
        return 0.0

    def memory_bytes(self) -> int:
        return 0

    def hardware(self) -> str:
        return ""

    def close(self) -> None:
        """Drops the index so the next engine has the memory."""


class ExactEngine(Engine):
    name = "exact-numpy"
    path = "baseline:exact-numpy"
    threads_key = "blas" if BLAS_PINNABLE else "blas_unpinned"
    has_ef = False

    def __init__(self) -> None:
        self.vectors = np.zeros((0, 0), dtype=np.float32)
        self._limit: Any = None

    def build(
        self, vectors: np.ndarray, connectivity: int, expansion_add: int, threads: int
    ) -> None:
        self.vectors = vectors

    def search_one(self, query: np.ndarray, k: int) -> np.ndarray:
        scores = self.vectors @ query
        part = np.argpartition(-scores, k - 1)[:k]
        return part[np.argsort(-scores[part])]

    def search_batch(self, queries: np.ndarray, k: int, threads: int) -> np.ndarray:
        return exact_top_k(self.vectors, queries, k, threads)

    def distances_per_query(self, queries: np.ndarray, k: int) -> float:
        return float(len(self.vectors))

    def memory_bytes(self) -> int:
        return int(self.vectors.nbytes)

    def close(self) -> None:
        self.vectors = np.zeros((0, 0), dtype=np.float32)


class FaissEngine(Engine):
    name = "faiss-hnsw"
    path = "baseline:faiss-hnsw"
    threads_key = "faiss_omp"
    suffix = ".faiss"

    def __init__(self) -> None:
        import faiss

        self.faiss = faiss
        self.index: Any = None

    def build(
        self, vectors: np.ndarray, connectivity: int, expansion_add: int, threads: int
    ) -> None:
        self.index = self.faiss.IndexHNSWFlat(
            vectors.shape[1], connectivity, self.faiss.METRIC_INNER_PRODUCT
        )
        self.index.hnsw.efConstruction = expansion_add
        self.faiss.omp_set_num_threads(threads)
        self.index.add(vectors)

    def save(self, path: Path) -> None:
        self.faiss.write_index(self.index, str(path))

    def load(self, path: Path) -> None:
        self.index = self.faiss.read_index(str(path))

    def set_ef(self, ef: int) -> None:
        self.index.hnsw.efSearch = ef

    def search_one(self, query: np.ndarray, k: int) -> np.ndarray:
        _, ids = self.index.search(query.reshape(1, -1), k)
        return ids[0]

    def pin_single(self) -> None:
        self.faiss.omp_set_num_threads(1)

    def search_batch(self, queries: np.ndarray, k: int, threads: int) -> np.ndarray:
        self.faiss.omp_set_num_threads(threads)
        _, ids = self.index.search(queries, k)
        return ids

    def distances_per_query(self, queries: np.ndarray, k: int) -> float:
        self.faiss.omp_set_num_threads(1)
        stats = getattr(self.faiss.cvar, "hnsw_stats")  # noqa: B009 -- untyped SWIG global
        stats.reset()
        self.index.search(queries, k)
        return float(stats.ndis) / len(queries)

    def memory_bytes(self) -> int:
        # Flat vectors plus level-0 links (2M per node, int32) and the upper levels (~1/M).
        n, d = self.index.ntotal, self.index.d
        return int(n * (4 * d + 4 * 2 * self.index.hnsw.nb_neighbors(1) * 1.1))

    def hardware(self) -> str:
        try:
            return str(self.faiss.get_compile_options()).strip()
        except AttributeError:
            return ""

    def close(self) -> None:
        self.index = None


class UsearchEngine(Engine):
    path = "in_process"
    threads_key = "usearch"
    suffix = ".usearch"

    def __init__(self, dtype: str) -> None:
        self.dtype = dtype
        self.name = f"usearch-{dtype}"
        self.index: Any = None
        self.mapped_bytes = 0  # file size when memory-mapped from the cache

    @property
    def metric(self) -> str:
        # As the index build: usearch's i8 "ip" works on raw codes; its i8 cosine ranks
        # L2-normalised vectors as inner product does.
        return "cos" if self.dtype == "i8" else "ip"

    def build(
        self, vectors: np.ndarray, connectivity: int, expansion_add: int, threads: int
    ) -> None:
        from usearch.index import Index

        self.index = Index(
            ndim=vectors.shape[1],
            metric=self.metric,
            dtype=self.dtype,
            connectivity=connectivity,
            expansion_add=expansion_add,
        )
        self.index.add(np.arange(len(vectors), dtype=np.uint64), vectors, threads=threads)

    def save(self, path: Path) -> None:
        self.index.save(str(path))

    def load(self, path: Path) -> None:
        from usearch.index import Index

        # Memory-mapped, as the index service serves it; pages come hot after the warm-up.
        self.index = Index.restore(str(path), view=True)
        self.mapped_bytes = path.stat().st_size

    def set_ef(self, ef: int) -> None:
        self.index.expansion_search = ef

    def search_one(self, query: np.ndarray, k: int) -> np.ndarray:
        return np.asarray(self.index.search(query, k, threads=1).keys, dtype=np.int64)

    def search_batch(self, queries: np.ndarray, k: int, threads: int) -> np.ndarray:
        return np.asarray(self.index.search(queries, k, threads=threads).keys, dtype=np.int64)

    def distances_per_query(self, queries: np.ndarray, k: int) -> float:
        matches = self.index.search(queries, k, threads=1)
        return float(matches.computed_distances) / len(queries)

    def memory_bytes(self) -> int:
        return self.mapped_bytes or int(self.index.memory_usage)

    def hardware(self) -> str:
        return str(self.index.hardware_acceleration)

    def close(self) -> None:
        self.index = None


def make_engine(name: str) -> Engine:
    if name == "exact-numpy":
        return ExactEngine()
    if name == "faiss-hnsw":
        return FaissEngine()
    if name.startswith("usearch-"):
        return UsearchEngine(name.removeprefix("usearch-"))
    raise ValueError(f"unknown ANN engine {name!r}; known: {', '.join(ENGINES)}")


def timed_build(
    engine: Engine, vectors: np.ndarray, connectivity: int, expansion_add: int, threads: int
) -> float:
    start = time.perf_counter_ns()
    engine.build(vectors, connectivity, expansion_add, threads)
    return (time.perf_counter_ns() - start) / 1e9
