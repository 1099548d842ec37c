"""SearchService: query text -> retrieve (dense, BM25, or both fused) -> optional rerank."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import time
from collections.abc import Coroutine, Iterator
from typing import Any, TypeVar

import grpc
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from neuralir.server.errors import InvalidArgument, NotReady
from neuralir.server.fusion import reciprocal_rank_fusion
from neuralir.server.limits import (
    DEFAULT_SEARCH_DEADLINE_S,
    MAX_BATCH_SEARCHES,
    MAX_EF,
    MAX_K,
    MAX_PASSAGE_CHARS,
    MAX_QUERY_CHARS,
    MAX_RERANK_DEPTH,
    MAX_SNIPPET_CHARS,
    check_count,
    check_range,
    check_text,
    check_weight,
)
from neuralir.server.shard_fanout import begin_search
from neuralir.server.stages import Stages
from neuralir.v1 import (
    common_pb2,
    encoder_service_pb2,
    index_service_pb2,
    rerank_service_pb2,
    search_service_pb2,
    search_service_pb2_grpc,
)

T = TypeVar("T")

# Each first-stage list contributes this many candidates to fusion (RRF over top-100 is
# what the reference runs in FACTS.md use); deeper k or rerank depth raises it.
FUSION_DEPTH = 100

_MODES = {
    search_service_pb2.RETRIEVAL_MODE_UNSPECIFIED: search_service_pb2.RETRIEVAL_MODE_HYBRID,
    search_service_pb2.RETRIEVAL_MODE_DENSE: search_service_pb2.RETRIEVAL_MODE_DENSE,
    search_service_pb2.RETRIEVAL_MODE_LEXICAL: search_service_pb2.RETRIEVAL_MODE_LEXICAL,
    search_service_pb2.RETRIEVAL_MODE_HYBRID: search_service_pb2.RETRIEVAL_MODE_HYBRID,
}


def validate_search(request: search_service_pb2.SearchRequest, prefix: str = "") -> int:
    """Checks a request against the documented limits; returns the effective mode."""
    check_text(f"{prefix}query", request.query, MAX_QUERY_CHARS)
    check_range(f"{prefix}k", request.k, 1, MAX_K)
    if request.mode not in _MODES:
        raise InvalidArgument(f"{prefix}mode", f"unknown RetrievalMode value {request.mode}")
    check_range(f"{prefix}rerank_depth", request.rerank_depth, 0, MAX_RERANK_DEPTH)
    check_range(f"{prefix}snippet_chars", request.snippet_chars, 0, MAX_SNIPPET_CHARS)
    check_range(f"{prefix}ef", request.ef, 0, MAX_EF)
    if request.HasField("blend_weight"):
        check_weight(f"{prefix}blend_weight", request.blend_weight)
    return _MODES[request.mode]


@dataclasses.dataclass
class Candidate:
    doc_id: str
    first_stage_score: float
    dense_score: float | None = None
    bm25_score: float | None = None
    fused_score: float | None = None
    rerank_score: float | None = None
    final_score: float = 0.0


async def _all_or_nothing(*coros: Coroutine[Any, Any, Any]) -> list[Any]:
    """Runs coroutines concurrently; the first failure cancels the rest and is re-raised."""
    tasks = [asyncio.ensure_future(c) for c in coros]
    try:
        return list(await asyncio.gather(*tasks))
    except BaseException:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        raise


class _Deadline:
    """The caller's remaining time, handed to each downstream call.

    A caller without a deadline gets DEFAULT_SEARCH_DEADLINE_S from the start of its search.
    """

    def __init__(self, context: grpc.aio.ServicerContext) -> None:
        self._context = context
        self._default_end: float | None = None
        if context.time_remaining() is None:
            self._default_end = time.monotonic() + DEFAULT_SEARCH_DEADLINE_S

    def remaining(self) -> float:
        remaining = self._context.time_remaining()
        if remaining is None:
            remaining = (self._default_end or 0.0) - time.monotonic()
        if remaining <= 0:
            raise TimeoutError("deadline exceeded before the next stage")
        return float(remaining)


class SearchService(search_service_pb2_grpc.SearchServiceServicer):
    def __init__(self, stages: Stages) -> None:
        self.stages = stages
        self._in_flight = 0
        self._idle = asyncio.Event()
        self._idle.set()
        self._draining = False

    async def start(self) -> None:
        """Nothing to warm: channels connect on first use and health follows the stages."""

    async def drain(self, timeout_s: float) -> None:
        """Refuses new searches and waits up to timeout_s for those in flight to finish.

        Runs before the gRPC server stops: a search in flight still has calls to make to its
        stages, which in an all-in-one process the stopping server would refuse.
        """
        self._draining = True
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._idle.wait(), timeout_s)

    async def stop(self) -> None:
        await self.stages.close()

    @contextlib.contextmanager
    def _tracked(self) -> Iterator[None]:
        if self._draining:
            raise NotReady("the search service is shutting down; retry on another replica")
        self._in_flight += 1
        self._idle.clear()
        try:
            yield
        finally:
            self._in_flight -= 1
            if self._in_flight == 0:
                self._idle.set()

    async def Search(
        self, request: search_service_pb2.SearchRequest, context: grpc.aio.ServicerContext
    ) -> search_service_pb2.SearchResponse:
        mode = validate_search(request)
        with self._tracked():
            return await self._search(request, mode, _Deadline(context), _forwarded(context))

    async def BatchSearch(
        self, request: search_service_pb2.BatchSearchRequest, context: grpc.aio.ServicerContext
    ) -> search_service_pb2.BatchSearchResponse:
        check_count("requests", len(request.requests), MAX_BATCH_SEARCHES)
        modes = [validate_search(r, f"requests[{i}].") for i, r in enumerate(request.requests)]
        deadline, metadata = _Deadline(context), _forwarded(context)
        with self._tracked():
            responses = await _all_or_nothing(
                *(
                    self._search(r, m, deadline, metadata)
                    for r, m in zip(request.requests, modes, strict=True)
                )
            )
        return search_service_pb2.BatchSearchResponse(responses=responses)

    async def _search(
        self,
        request: search_service_pb2.SearchRequest,
        mode: int,
        deadline: _Deadline,
        metadata: tuple[tuple[str, str], ...],
    ) -> search_service_pb2.SearchResponse:
        started = time.perf_counter_ns()
        shards = begin_search()  # which index shards answered (when the index is sharded)
        timings: list[common_pb2.StageTiming] = []
        response = search_service_pb2.SearchResponse()
        depth = max(request.k, request.rerank_depth)
        candidates, encoder_model_id = await self._retrieve(
            request, mode, depth, deadline, metadata, timings
        )
        response.encoder_model_id = encoder_model_id
        shown = candidates[:depth]
        documents = await self._documents([c.doc_id for c in shown], deadline, metadata)
        if request.rerank_depth > 0 and shown:
            response.rerank_model_id = await self._rerank(
                request, shown, documents, deadline, metadata, timings
            )
        for rank, candidate in enumerate(shown[: request.k], start=1):
            document = documents.get(candidate.doc_id)
            hit = response.hits.add(
                doc_id=candidate.doc_id,
                rank=rank,
                score=candidate.final_score,
                title=document.title if document else "",
                snippet=document.text[: request.snippet_chars] if document else "",
            )
            for name in ("dense_score", "bm25_score", "fused_score", "rerank_score"):
                value = getattr(candidate, name)
                if value is not None:
                    setattr(hit, name, value)
        if shards.unavailable:
            response.partial = True
            response.unavailable_shards.extend(sorted(shards.unavailable))
        timings.append(
            common_pb2.StageTiming(stage="search", total_ns=time.perf_counter_ns() - started)
        )
        response.timings.extend(timings)
        return response

    async def _retrieve(
        self,
        request: search_service_pb2.SearchRequest,
        mode: int,
        depth: int,
        deadline: _Deadline,
        metadata: tuple[tuple[str, str], ...],
        timings: list[common_pb2.StageTiming],
    ) -> tuple[list[Candidate], str]:
        if mode == search_service_pb2.RETRIEVAL_MODE_DENSE:
            dense, model_id = await self._dense(request, depth, deadline, metadata, timings)
            return [Candidate(d, s, dense_score=s, final_score=s) for d, s in dense], model_id
        if mode == search_service_pb2.RETRIEVAL_MODE_LEXICAL:
            lexical = await self._lexical(request.query, depth, deadline, metadata, timings)
            return [Candidate(d, s, bm25_score=s, final_score=s) for d, s in lexical], ""
        list_depth = max(depth, FUSION_DEPTH)
        (dense, model_id), lexical = await _all_or_nothing(
            self._dense(request, list_depth, deadline, metadata, timings),
            self._lexical(request.query, list_depth, deadline, metadata, timings),
        )
        fuse_start = time.perf_counter_ns()
        dense_scores, bm25_scores = dict(dense), dict(lexical)
        fused = reciprocal_rank_fusion([[d for d, _ in dense], [d for d, _ in lexical]])
        candidates = [
            Candidate(
                doc_id,
                score,
                dense_score=dense_scores.get(doc_id),
                bm25_score=bm25_scores.get(doc_id),
                fused_score=score,
                final_score=score,
            )
            for doc_id, score in fused
        ]
        timings.append(
            common_pb2.StageTiming(stage="fuse", total_ns=time.perf_counter_ns() - fuse_start)
        )
        return candidates, model_id

    async def _dense(
        self,
        request: search_service_pb2.SearchRequest,
        k: int,
        deadline: _Deadline,
        metadata: tuple[tuple[str, str], ...],
        timings: list[common_pb2.StageTiming],
    ) -> tuple[list[tuple[str, float]], str]:
        encoder, index = self.stages.encoder, self.stages.index
        encoded = await encoder.call(
            encoder.stub.Encode,
            encoder_service_pb2.EncodeRequest(
                texts=[request.query], kind=encoder_service_pb2.TEXT_KIND_QUERY
            ),
            deadline.remaining(),
            metadata,
        )
        timings.append(encoded.timing)
        found = await index.call(
            index.stub.Search,
            index_service_pb2.IndexServiceSearchRequest(
                vector=encoded.embeddings, dimension=encoded.dimension, k=k, ef=request.ef
            ),
            deadline.remaining(),
            metadata,
        )
        timings.append(found.timing)
        return [(d.doc_id, d.score) for d in found.documents], encoded.model_id

    async def _lexical(
        self,
        query: str,
        k: int,
        deadline: _Deadline,
        metadata: tuple[tuple[str, str], ...],
        timings: list[common_pb2.StageTiming],
    ) -> list[tuple[str, float]]:
        index = self.stages.index
        found = await index.call(
            index.stub.LexicalSearch,
            index_service_pb2.LexicalSearchRequest(query=query, k=k),
            deadline.remaining(),
            metadata,
        )
        timings.append(found.timing)
        return [(d.doc_id, d.score) for d in found.documents]

    async def _documents(
        self, doc_ids: list[str], deadline: _Deadline, metadata: tuple[tuple[str, str], ...]
    ) -> dict[str, index_service_pb2.Document]:
        if not doc_ids:
            return {}
        index = self.stages.index
        found = await index.call(
            index.stub.GetDocuments,
            index_service_pb2.GetDocumentsRequest(doc_ids=doc_ids),
            deadline.remaining(),
            metadata,
        )
        return {d.doc_id: d for d in found.documents}

    async def _rerank(
        self,
        request: search_service_pb2.SearchRequest,
        candidates: list[Candidate],
        documents: dict[str, index_service_pb2.Document],
        deadline: _Deadline,
        metadata: tuple[tuple[str, str], ...],
        timings: list[common_pb2.StageTiming],
    ) -> str:
        """Reorders the top rerank_depth candidates in place; the rest keep their order."""
        head = [c for c in candidates[: request.rerank_depth] if c.doc_id in documents]
        passages = [
            rerank_service_pb2.Passage(
                id=c.doc_id,
                text=_passage_text(documents[c.doc_id]),
                first_stage_score=c.first_stage_score,
            )
            for c in head
        ]
        rerank_request = rerank_service_pb2.RerankRequest(
            query=request.query, passages=passages, model=request.rerank_model
        )
        if request.HasField("blend_weight"):
            rerank_request.blend_weight = request.blend_weight
        rerank = self.stages.rerank
        try:
            reranked = await rerank.call(
                rerank.stub.Rerank, rerank_request, deadline.remaining(), metadata
            )
        except grpc.aio.AioRpcError as exc:
            # The reranker refuses an unknown model as its field "model": name ours instead.
            violation = _field_violation(exc, "model")
            if violation is not None:
                raise InvalidArgument("rerank_model", violation) from exc
            raise
        timings.append(reranked.timing)
        by_id = {c.doc_id: c for c in head}
        ordered = []
        for passage in reranked.passages:
            candidate = by_id[passage.id]
            candidate.rerank_score = passage.cross_encoder_score
            candidate.final_score = passage.score
            ordered.append(candidate)
        tail = [c for c in candidates if c.doc_id not in by_id]
        candidates[:] = ordered + tail
        return str(reranked.model_id)


def _passage_text(document: index_service_pb2.Document) -> str:
    """The text the cross-encoder reads: title and body, as the passages were embedded."""
    text = f"{document.title} {document.text}".strip() or document.doc_id
    return text[:MAX_PASSAGE_CHARS]


def _field_violation(error: grpc.aio.AioRpcError, field: str) -> str | None:
    """The description of a downstream INVALID_ARGUMENT's BadRequest violation of `field`."""
    if error.code() != grpc.StatusCode.INVALID_ARGUMENT:
        return None
    status = rpc_status.from_call(error)
    for detail in status.details if status is not None else ():
        bad_request = error_details_pb2.BadRequest()
        if detail.Unpack(bad_request):
            for violation in bad_request.field_violations:
                if violation.field == field:
                    return str(violation.description)
    return None


def _forwarded(context: grpc.aio.ServicerContext) -> tuple[tuple[str, str], ...]:
    """Metadata passed on downstream: the request id and trace context (never the token)."""
    keep = ("x-request-id", "traceparent", "tracestate")
    return tuple((k, v) for k, v in (context.invocation_metadata() or ()) if k in keep)
