"""Request building and response conversion shared by the sync and asyncio clients."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from neuralir.client.types import (
    EncodeResult,
    IndexHit,
    Passage,
    RerankedPassage,
    RerankResult,
    SearchHit,
    SearchResult,
    StageTime,
)
from neuralir.v1 import (
    common_pb2,
    encoder_service_pb2,
    index_service_pb2,
    rerank_service_pb2,
    search_service_pb2,
)

MODES = {
    "dense": search_service_pb2.RETRIEVAL_MODE_DENSE,
    "lexical": search_service_pb2.RETRIEVAL_MODE_LEXICAL,
    "bm25": search_service_pb2.RETRIEVAL_MODE_LEXICAL,
    "hybrid": search_service_pb2.RETRIEVAL_MODE_HYBRID,
}
FUSIONS = {
    "": search_service_pb2.FUSION_UNSPECIFIED,
    "rrf": search_service_pb2.FUSION_RRF,
    "convex": search_service_pb2.FUSION_CONVEX,
}
KINDS = {
    "query": encoder_service_pb2.TEXT_KIND_QUERY,
    "passage": encoder_service_pb2.TEXT_KIND_PASSAGE,
}


def stage_time(timing: common_pb2.StageTiming) -> StageTime:
    return StageTime(
        stage=timing.stage,
        queue_ms=timing.queue_ns / 1e6,
        tokenize_ms=timing.tokenize_ns / 1e6,
        inference_ms=timing.inference_ns / 1e6,
        total_ms=timing.total_ns / 1e6,
        batch_size=timing.batch_size,
    )


def search_request(
    query: str,
    k: int = 10,
    mode: str = "hybrid",
    rerank_depth: int = 0,
    blend_weight: float | None = None,
    rerank_model: str = "",
    snippet_chars: int = 200,
    ef: int = 0,
    fusion: str = "",
    fusion_weight: float | None = None,
    cascade: tuple[str, int] | None = None,
) -> search_service_pb2.SearchRequest:
    """`fusion` "rrf" or "convex" ("" = the server's default) applies to hybrid mode;
    `cascade` = (first-pass reranker, its depth) reranks twice."""
    if mode not in MODES:
        raise ValueError(f"mode must be one of {sorted(MODES)}, not {mode!r}")
    if fusion not in FUSIONS:
        raise ValueError(f"fusion must be one of {sorted(FUSIONS)}, not {fusion!r}")
    request = search_service_pb2.SearchRequest(
        query=query,
        k=k,
        mode=MODES[mode],
        rerank_depth=rerank_depth,
        rerank_model=rerank_model,
        snippet_chars=snippet_chars,
        ef=ef,
        fusion=FUSIONS[fusion],
    )
    if blend_weight is not None:
        request.blend_weight = blend_weight
    if fusion_weight is not None:
        request.fusion_weight = fusion_weight
    if cascade is not None:
        request.cascade.model, request.cascade.depth = cascade
    return request


def _optional(message: search_service_pb2.SearchHit, name: str) -> float | None:
    return float(getattr(message, name)) if message.HasField(name) else None  # type: ignore[arg-type]


def search_result(response: search_service_pb2.SearchResponse) -> SearchResult:
    hits = [
        SearchHit(
            doc_id=h.doc_id,
            rank=h.rank,
            score=h.score,
            title=h.title,
            snippet=h.snippet,
            dense_score=_optional(h, "dense_score"),
            bm25_score=_optional(h, "bm25_score"),
            fused_score=_optional(h, "fused_score"),
            rerank_score=_optional(h, "rerank_score"),
        )
        for h in response.hits
    ]
    return SearchResult(
        hits,
        [stage_time(t) for t in response.timings],
        response.encoder_model_id,
        response.rerank_model_id,
        cascade_model_id=response.cascade_model_id,
        partial=response.partial,
        unavailable_shards=tuple(response.unavailable_shards),
    )


def encode_request(texts: Sequence[str], kind: str) -> encoder_service_pb2.EncodeRequest:
    return encoder_service_pb2.EncodeRequest(texts=list(texts), kind=KINDS[kind])


def encode_result(response: encoder_service_pb2.EncodeResponse) -> EncodeResult:
    vectors = np.frombuffer(response.embeddings, dtype="<f4").reshape(-1, response.dimension)
    return EncodeResult(
        vectors.astype(np.float32),
        response.model_id,
        list(response.token_counts),
        stage_time(response.timing),
    )


def rerank_request(
    query: str,
    passages: Sequence[tuple[str, str]] | Sequence[tuple[str, str, float]] | Sequence[Passage],
    top_n: int = 0,
    blend_weight: float | None = None,
    model: str = "",
) -> rerank_service_pb2.RerankRequest:
    """Passages as (id, text), (id, text, first_stage_score) or `Passage` (with signals)."""
    request = rerank_service_pb2.RerankRequest(query=query, top_n=top_n, model=model)
    for passage in passages:
        if isinstance(passage, Passage):
            item = request.passages.add(id=passage.id, text=passage.text)
            for name in ("first_stage_score", "bm25_score", "dense_score"):
                value = getattr(passage, name)
                if value is not None:
                    setattr(item, name, float(value))
            continue
        item = request.passages.add(id=passage[0], text=passage[1])
        if len(passage) > 2:
            item.first_stage_score = float(passage[2])
    if blend_weight is not None:
        request.blend_weight = blend_weight
    return request


def rerank_result(response: rerank_service_pb2.RerankResponse) -> RerankResult:
    return RerankResult(
        [RerankedPassage(p.id, p.rank, p.score, p.cross_encoder_score) for p in response.passages],
        response.model_id,
        response.blend_weight,
        stage_time(response.timing),
    )


def index_search_request(
    vector: np.ndarray, k: int, ef: int = 0
) -> index_service_pb2.IndexServiceSearchRequest:
    flat = np.ascontiguousarray(vector, dtype="<f4").reshape(-1)
    return index_service_pb2.IndexServiceSearchRequest(
        vector=flat.tobytes(), dimension=flat.shape[0], k=k, ef=ef
    )


def index_hits(documents: Sequence[common_pb2.ScoredDocument]) -> list[IndexHit]:
    return [IndexHit(d.doc_id, d.rank, d.score) for d in documents]
