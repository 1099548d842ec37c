"""Clustered synthetic embeddings: a Gaussian mixture on the unit sphere, L2-normalised.

Uniform noise in 384 dimensions has no neighbourhood structure (every point is about equally
far from every other), which makes HNSW look far worse than on real embeddings. Real text
embeddings form topical clusters, so the data here are: `centroids` random directions on
the sphere, each point a centroid plus isotropic Gaussian noise, normalised. With noise 0.05
per dimension a point's cosine to its centroid is about 0.7 and to a point of its own
cluster about 0.5, the spread of related passages under MiniLM. Queries are fresh draws from
the same mixture (not points of the set). A cluster needs well over 10 members, or a query's
top 10 spills into unrelated clusters, i.e. into noise: the benchmarks keep ~250 per cluster.
"""

from __future__ import annotations

import dataclasses
import hashlib

import numpy as np

CHUNK = 65_536  # rows generated per step: fixed, so the data do not depend on memory


@dataclasses.dataclass(frozen=True)
class ClusteredSpec:
    size: int
    dimension: int = 384
    centroids: int = 4000
    noise: float = 0.05
    seed: int = 2026

    @property
    def key(self) -> str:
        text = f"{self.size}|{self.dimension}|{self.centroids}|{self.noise}|{self.seed}|{CHUNK}"
        return f"clustered-{self.size}-" + hashlib.sha256(text.encode()).hexdigest()[:10]

    @property
    def name(self) -> str:
        return f"synthetic {self.size:,} x {self.dimension}"


def _normalise(x: np.ndarray) -> np.ndarray:
    x /= np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
    return x


def _centroids(spec: ClusteredSpec) -> np.ndarray:
    rng = np.random.default_rng(spec.seed)
    return _normalise(rng.standard_normal((spec.centroids, spec.dimension), dtype=np.float32))


def _draw(spec: ClusteredSpec, count: int, rng: np.random.Generator) -> np.ndarray:
    centres = _centroids(spec)
    out = np.empty((count, spec.dimension), dtype=np.float32)
    for start in range(0, count, CHUNK):
        n = min(CHUNK, count - start)
        labels = rng.integers(0, spec.centroids, n)
        block = rng.standard_normal((n, spec.dimension), dtype=np.float32)
        block *= spec.noise
        block += centres[labels]
        out[start : start + n] = _normalise(block)
    return out


def clustered_vectors(spec: ClusteredSpec) -> np.ndarray:
    """The data set: [size, dimension] float32, deterministic for a spec."""
    return _draw(spec, spec.size, np.random.default_rng(spec.seed + 1))


def clustered_queries(spec: ClusteredSpec, count: int) -> np.ndarray:
    return _draw(spec, count, np.random.default_rng(spec.seed + 2))
