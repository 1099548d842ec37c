"""Plain result types: callers never handle protobuf objects."""

from __future__ import annotations

import dataclasses

import numpy as np


@dataclasses.dataclass(frozen=True)
class StageTime:
    stage: str
    queue_ms: float
    tokenize_ms: float
    inference_ms: float
    total_ms: float
    batch_size: int


@dataclasses.dataclass(frozen=True)
class SearchHit:
    doc_id: str
    rank: int
    score: float
    title: str
    snippet: str
    dense_score: float | None
    bm25_score: float | None
    fused_score: float | None
    rerank_score: float | None


@dataclasses.dataclass(frozen=True)
class SearchResult:
    hits: list[SearchHit]
    timings: list[StageTime]
    encoder_model_id: str
    rerank_model_id: str
    cascade_model_id: str = ""  # the first-pass reranker, with a cascade
    # True when some index shard did not answer in time; those shards are named.
    partial: bool = False
    unavailable_shards: tuple[str, ...] = ()

    @property
    def doc_ids(self) -> list[str]:
        return [hit.doc_id for hit in self.hits]


@dataclasses.dataclass(frozen=True)
class Passage:
    """A passage to rerank, with the first stage's signals to blend with (all optional)."""

    id: str
    text: str
    first_stage_score: float | None = None
    bm25_score: float | None = None
    dense_score: float | None = None


@dataclasses.dataclass(frozen=True)
class EncodeResult:
    embeddings: np.ndarray  # float32 [n, dimension]
    model_id: str
    token_counts: list[int]
    timing: StageTime


@dataclasses.dataclass(frozen=True)
class RerankedPassage:
    id: str
    rank: int
    score: float
    cross_encoder_score: float


@dataclasses.dataclass(frozen=True)
class RerankResult:
    passages: list[RerankedPassage]
    model_id: str
    blend_weight: float
    timing: StageTime


@dataclasses.dataclass(frozen=True)
class IndexHit:
    doc_id: str
    rank: int
    score: float
