"""SearchService: a thin adapter from the Search and BatchSearch RPCs to the search pipeline."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Iterator

import grpc

from neuralir.server.errors import InvalidArgument, NotReady
from neuralir.server.limits import (
    DEFAULT_SEARCH_DEADLINE_S,
    check_count,
    check_range,
    check_text,
    check_weight,
)
from neuralir.server.pipeline.backends import Deadline, SearchCall
from neuralir.server.pipeline.search import (
    Cascade,
    FusionMethod,
    Mode,
    SearchOutcome,
    SearchPipeline,
    SearchQuery,
)
from neuralir.server.wire import timing_message
from neuralir.v1 import search_service_pb2, search_service_pb2_grpc
from neuralir.v1.limits import (
    MAX_BATCH_SEARCHES,
    MAX_EF,
    MAX_K,
    MAX_QUERY_CHARS,
    MAX_RERANK_DEPTH,
    MAX_RESULTS_PER_CALL,
    MAX_SNIPPET_CHARS,
    MAX_SNIPPET_CHARS_PER_CALL,
)

_MODES: dict[int, Mode] = {
    search_service_pb2.RETRIEVAL_MODE_UNSPECIFIED: "hybrid",
    search_service_pb2.RETRIEVAL_MODE_DENSE: "dense",
    search_service_pb2.RETRIEVAL_MODE_LEXICAL: "lexical",
    search_service_pb2.RETRIEVAL_MODE_HYBRID: "hybrid",
}
_FUSIONS: dict[int, FusionMethod | None] = {
    search_service_pb2.FUSION_UNSPECIFIED: None,
    search_service_pb2.FUSION_RRF: "rrf",
    search_service_pb2.FUSION_CONVEX: "convex",
}
_OPTIONAL_SCORES = ("dense_score", "bm25_score", "fused_score", "rerank_score")


def search_query(request: search_service_pb2.SearchRequest, prefix: str = "") -> SearchQuery:
    """The request checked against the documented limits, as the pipeline's query."""
    check_text(f"{prefix}query", request.query, MAX_QUERY_CHARS)
    check_range(f"{prefix}k", request.k, 1, MAX_K)
    if request.mode not in _MODES:
        raise InvalidArgument(f"{prefix}mode", f"unknown RetrievalMode value {request.mode}")
    check_range(f"{prefix}rerank_depth", request.rerank_depth, 0, MAX_RERANK_DEPTH)
    check_range(f"{prefix}snippet_chars", request.snippet_chars, 0, MAX_SNIPPET_CHARS)
    check_range(f"{prefix}ef", request.ef, 0, MAX_EF)
    blend_weight = fusion_weight = None
    if request.HasField("blend_weight"):
        check_weight(f"{prefix}blend_weight", request.blend_weight)
        blend_weight = request.blend_weight
    if request.fusion not in _FUSIONS:
        raise InvalidArgument(f"{prefix}fusion", f"unknown Fusion value {request.fusion}")
    if request.HasField("fusion_weight"):
        check_weight(f"{prefix}fusion_weight", request.fusion_weight)
        fusion_weight = request.fusion_weight
    cascade = None
    if request.HasField("cascade"):
        if request.rerank_depth == 0:
            raise InvalidArgument(
                f"{prefix}cascade", "needs rerank_depth > 0: the depth of the second pass"
            )
        check_range(
            f"{prefix}cascade.depth",
            request.cascade.depth,
            request.rerank_depth + 1,
            MAX_RERANK_DEPTH,
        )
        cascade = Cascade(request.cascade.model, request.cascade.depth)
    return SearchQuery(
        text=request.query,
        k=request.k,
        mode=_MODES[request.mode],
        rerank_depth=request.rerank_depth,
        rerank_model=request.rerank_model,
        blend_weight=blend_weight,
        snippet_chars=request.snippet_chars,
        ef=request.ef,
        fusion=_FUSIONS[request.fusion],
        fusion_weight=fusion_weight,
        cascade=cascade,
    )


def check_response_budget(
    requests: list[search_service_pb2.SearchRequest], field: str, prefix: str
) -> None:
    """Refuses, before any work, a call whose answer could outgrow the message limit: the sum
    of k and of k * snippet_chars over its searches (field: where the error points; prefix:
    how its description names one search's fields)."""
    results = sum(r.k for r in requests)
    if results > MAX_RESULTS_PER_CALL:
        raise InvalidArgument(
            field,
            f"asks for {results:,} results (the sum of {prefix}k), the limit is "
            f"{MAX_RESULTS_PER_CALL:,} per call: ask for fewer or split the call",
        )
    chars = sum(r.k * r.snippet_chars for r in requests)
    if chars > MAX_SNIPPET_CHARS_PER_CALL:
        raise InvalidArgument(
            field,
            f"asks for up to {chars:,} snippet characters (the sum of {prefix}k * "
            f"{prefix}snippet_chars), the limit is {MAX_SNIPPET_CHARS_PER_CALL:,} per call: "
            "shorten the snippets, ask for fewer results or split the call",
        )


def search_response(outcome: SearchOutcome) -> search_service_pb2.SearchResponse:
    response = search_service_pb2.SearchResponse(
        encoder_model_id=outcome.encoder_model_id,
        rerank_model_id=outcome.rerank_model_id,
        cascade_model_id=outcome.cascade_model_id,
        timings=[timing_message(t) for t in outcome.timings],
    )
    for rank, candidate in enumerate(outcome.hits, start=1):
        hit = response.hits.add(
            doc_id=candidate.doc_id,
            rank=rank,
            score=candidate.final_score,
            title=candidate.title,
            snippet=candidate.snippet,
        )
        for name in _OPTIONAL_SCORES:
            value = getattr(candidate, name)
            if value is not None:
                setattr(hit, name, value)
    if outcome.unavailable_shards:
        response.partial = True
        response.unavailable_shards.extend(outcome.unavailable_shards)
    return response


class SearchService(search_service_pb2_grpc.SearchServiceServicer):
    def __init__(
        self,
        pipeline: SearchPipeline,
        close: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        self.pipeline = pipeline
        self._close = close  # closes the channels to remote stages, if any
        self._in_flight = 0
        self._idle = asyncio.Event()
        self._idle.set()
        self._draining = False

    async def drain(self, timeout_s: float) -> None:
        """Refuses new searches and waits up to timeout_s for those in flight to finish.

        Runs before the stages stop: a search in flight still has calls to make to them.
        """
        self._draining = True
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._idle.wait(), timeout_s)

    async def stop(self) -> None:
        if self._close is not None:
            await self._close()

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
        query = search_query(request)
        check_response_budget([request], "snippet_chars", "")
        with self._tracked():
            outcome = await self.pipeline.search(query, _search_call(context))
        return search_response(outcome)

    async def BatchSearch(
        self, request: search_service_pb2.BatchSearchRequest, context: grpc.aio.ServicerContext
    ) -> search_service_pb2.BatchSearchResponse:
        check_count("requests", len(request.requests), MAX_BATCH_SEARCHES)
        queries = [search_query(r, f"requests[{i}].") for i, r in enumerate(request.requests)]
        check_response_budget(list(request.requests), "requests", "requests[i].")
        call = _search_call(context)
        with self._tracked():
            # Each search keeps its own shard report; the deadline and metadata are shared.
            tasks = [
                asyncio.ensure_future(
                    self.pipeline.search(q, SearchCall(call.deadline, call.metadata))
                )
                for q in queries
            ]
            try:
                outcomes = await asyncio.gather(*tasks)
            except BaseException:
                for task in tasks:
                    task.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)
                raise
        return search_service_pb2.BatchSearchResponse(
            responses=[search_response(o) for o in outcomes]
        )


def _search_call(context: grpc.aio.ServicerContext) -> SearchCall:
    """The caller's deadline (or the default budget) and the metadata passed downstream."""
    remaining = context.time_remaining()
    deadline = Deadline.after(DEFAULT_SEARCH_DEADLINE_S if remaining is None else remaining)
    return SearchCall(deadline, _forwarded(context))


def _forwarded(context: grpc.aio.ServicerContext) -> tuple[tuple[str, str], ...]:
    """Metadata passed on downstream: the request id and trace context (never the token)."""
    keep = ("x-request-id", "traceparent", "tracestate")
    return tuple((k, v) for k, v in (context.invocation_metadata() or ()) if k in keep)
