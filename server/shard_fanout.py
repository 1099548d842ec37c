"""The search service's index stage when the index is split into shards.

`ShardedIndex` stands where a single index `Stage` stands (`call(stub.X, request, timeout,
metadata)`), so the search pipeline does not change: each of Search, LexicalSearch and
GetDocuments goes to every shard in parallel, each call limited to the shard timeout and the
caller's remaining deadline, and the answers are merged into one response of the same type.

A shard that fails or does not answer in time is left out: the search goes on with the other
shards and its response is flagged partial (`SearchResponse.partial`, `unavailable_shards`).
Only when every shard fails does the search fail, with the status a single index would give.
Documents are fetched only from the shard that returned them (shards hold disjoint documents).

BM25 scores come from each shard's own statistics (document frequencies, mean length), as in
Elasticsearch's default query-then-fetch: merged lexical scores are close to, but not the
same as, those of one unsharded index. Dense scores are exact cosines and merge exactly.
"""

from __future__ import annotations

import asyncio
import contextvars
import dataclasses
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Any

from neuralir.server.errors import Overloaded, StageUnavailable
from neuralir.v1 import common_pb2, index_service_pb2

if TYPE_CHECKING:
    from neuralir.server.stages import Stage
    from neuralir.server.tracing import Tracing

log = logging.getLogger(__name__)

# A shard that fails with one of these is left out of the answer (a partial result); any
# other error (a bad request, a bug) fails the search as it would with one index.
_SHARD_DOWN = (StageUnavailable, Overloaded, TimeoutError)


@dataclasses.dataclass
class FanOutState:
    """What one search learned from its shards: who did not answer, who holds which document."""

    unavailable: set[str] = dataclasses.field(default_factory=set)
    origin: dict[str, int] = dataclasses.field(default_factory=dict)


# One state per search. A context variable, because the pipeline reaches the index through the
# one-stage interface; the tasks of a search copy the context, so they share its state object.
_state: contextvars.ContextVar[FanOutState | None] = contextvars.ContextVar(
    "neuralir_fan_out_state", default=None
)


def begin_search() -> FanOutState:
    """Starts the fan-out state of the search running in this context; returns it."""
    state = FanOutState()
    _state.set(state)
    return state


def _current() -> FanOutState:
    state = _state.get()
    if state is None:  # a caller outside a search: a state of its own
        state = begin_search()
    return state


def split_index_addresses(value: str) -> list[str]:
    """Shard targets from --index-address, one per shard, in shard order.

    Separated by ';' when present, else by ','. A comma inside a gRPC multi-address target
    (`ipv4:10.0.0.2:50051,10.0.0.3:50051`: replicas of ONE index) continues that target, as
    gRPC reads it: parts without a scheme after an `ipv4:`/`ipv6:` part belong to it.
    """
    if ";" in value:
        return [part.strip() for part in value.split(";") if part.strip()]
    targets: list[str] = []
    for part in (p.strip() for p in value.split(",")):
        if not part:
            continue
        if targets and targets[-1].startswith(_LIST_SCHEMES) and not part.startswith(_SCHEMES):
            targets[-1] = f"{targets[-1]},{part}"
        else:
            targets.append(part)
    return targets


# gRPC target schemes whose address part is a comma-separated list, and all known schemes.
_LIST_SCHEMES = ("ipv4:", "ipv6:")
_SCHEMES = (*_LIST_SCHEMES, "dns:", "unix:", "unix-abstract:", "vsock:", "xds:")


def shard_name(index: int) -> str:
    return f"shard-{index}"


class _FanOutStub:
    """The methods `Stage.call`-style callers name as `stub.Search` and so on."""

    def __init__(self, index: ShardedIndex) -> None:
        self.Search = index.search
        self.LexicalSearch = index.lexical_search
        self.GetDocuments = index.get_documents


class ShardedIndex:
    """Several index shards behind the interface of one index stage."""

    name = "index"
    health_service = "neuralir.v1.IndexService"

    def __init__(
        self, shards: Sequence[Stage], shard_timeout_s: float, tracing: Tracing | None = None
    ) -> None:
        if len(shards) < 2:
            raise ValueError("a sharded index needs at least two shards")
        self.shards = list(shards)
        self.shard_timeout_s = shard_timeout_s
        self.address = ";".join(s.address for s in self.shards)
        self.stub = _FanOutStub(self)
        self._tracing = tracing

    async def call(
        self,
        rpc: Callable[..., Awaitable[Any]],
        request: Any,
        timeout: float | None,
        metadata: tuple[tuple[str, str], ...] = (),
    ) -> Any:
        return await rpc(request, timeout, metadata)

    # ---------------------------------------------------------------- the three fanned-out RPCs

    async def search(
        self,
        request: index_service_pb2.IndexServiceSearchRequest,
        timeout: float | None,
        metadata: tuple[tuple[str, str], ...],
    ) -> index_service_pb2.IndexServiceSearchResponse:
        started = time.perf_counter_ns()
        answers = await self._fan_out(
            "Search", dict.fromkeys(self._indices(), request), timeout, metadata
        )
        documents, timing = self._merge(answers, request.k, "dense", started)
        return index_service_pb2.IndexServiceSearchResponse(documents=documents, timing=timing)

    async def lexical_search(
        self,
        request: index_service_pb2.LexicalSearchRequest,
        timeout: float | None,
        metadata: tuple[tuple[str, str], ...],
    ) -> index_service_pb2.LexicalSearchResponse:
        started = time.perf_counter_ns()
        answers = await self._fan_out(
            "LexicalSearch", dict.fromkeys(self._indices(), request), timeout, metadata
        )
        documents, timing = self._merge(answers, request.k, "lexical", started)
        return index_service_pb2.LexicalSearchResponse(documents=documents, timing=timing)

    async def get_documents(
        self,
        request: index_service_pb2.GetDocumentsRequest,
        timeout: float | None,
        metadata: tuple[tuple[str, str], ...],
    ) -> index_service_pb2.GetDocumentsResponse:
        """Asks each shard only for the documents it returned; ids of unknown origin go to all."""
        state = _current()
        wanted: dict[int, list[str]] = {}
        for doc_id in dict.fromkeys(request.doc_ids):
            owner = state.origin.get(doc_id)
            for i in [owner] if owner is not None else self._indices():
                wanted.setdefault(i, []).append(doc_id)
        requests = {
            i: index_service_pb2.GetDocumentsRequest(doc_ids=ids) for i, ids in wanted.items()
        }
        answers = await self._fan_out("GetDocuments", requests, timeout, metadata)
        found: dict[str, index_service_pb2.Document] = {}
        for answer in answers.values():
            for document in answer.documents:
                found[document.doc_id] = document
        return index_service_pb2.GetDocumentsResponse(
            documents=[found[d] for d in request.doc_ids if d in found],
            missing_ids=[d for d in request.doc_ids if d not in found],
        )

    # ---------------------------------------------------------------- fan-out and merge

    def _indices(self) -> list[int]:
        """Shards still worth asking in this search (those that failed it are skipped)."""
        down = _current().unavailable
        return [i for i in range(len(self.shards)) if shard_name(i) not in down]

    async def _fan_out(
        self,
        method: str,
        requests: dict[int, Any],
        timeout: float | None,
        metadata: tuple[tuple[str, str], ...],
    ) -> dict[int, Any]:
        """Each shard's answer; shards that failed are recorded in the search's state."""
        if not requests:
            raise StageUnavailable("no index shard is available for this search")
        limit = timeout
        if self.shard_timeout_s > 0:
            limit = self.shard_timeout_s if timeout is None else min(timeout, self.shard_timeout_s)
        state = _current()
        with _span(self._tracing, f"index fan-out {method}", len(requests)) as span:
            tasks = {
                i: asyncio.ensure_future(self._ask(i, method, request, limit, metadata))
                for i, request in requests.items()
            }
            try:
                await asyncio.gather(*tasks.values())
            except BaseException:
                for task in tasks.values():
                    task.cancel()
                await asyncio.gather(*tasks.values(), return_exceptions=True)
                raise
            answers: dict[int, Any] = {}
            failures: list[BaseException] = []
            for i, task in tasks.items():
                result = task.result()
                if isinstance(result, BaseException):
                    failures.append(result)
                    state.unavailable.add(shard_name(i))
                    log.warning(
                        "%s at %s left out of %s: %s",
                        shard_name(i),
                        self.shards[i].address,
                        method,
                        result,
                    )
                else:
                    answers[i] = result
            if span is not None:
                span.set_attribute("neuralir.unavailable_shards", sorted(state.unavailable))
        if not answers:
            # Every shard failed: the status a single unavailable or slow index would give.
            timeouts = [f for f in failures if isinstance(f, TimeoutError)]
            if len(timeouts) == len(failures):
                raise TimeoutError(f"no index shard answered {method} in time")
            raise StageUnavailable(f"no index shard answered {method}: {failures[0]}")
        return answers

    async def _ask(
        self,
        i: int,
        method: str,
        request: Any,
        timeout: float | None,
        metadata: tuple[tuple[str, str], ...],
    ) -> Any:
        shard = self.shards[i]
        try:
            return await shard.call(getattr(shard.stub, method), request, timeout, metadata)
        except _SHARD_DOWN as exc:
            return exc

    def _merge(
        self, answers: dict[int, Any], k: int, stage: str, started: int
    ) -> tuple[list[common_pb2.ScoredDocument], common_pb2.StageTiming]:
        """The best k over all shards (score, then doc id, so ties are reproducible)."""
        origin = _current().origin
        scored: list[tuple[float, str]] = []
        for i, answer in answers.items():
            for document in answer.documents:
                origin[document.doc_id] = i
                scored.append((document.score, document.doc_id))
        scored.sort(key=lambda pair: (-pair[0], pair[1]))
        documents = [
            common_pb2.ScoredDocument(doc_id=doc_id, score=score, rank=rank)
            for rank, (score, doc_id) in enumerate(scored[:k], start=1)
        ]
        # The slowest shard bounds the stage: its inference time; the fan-out's wall time.
        timing = common_pb2.StageTiming(
            stage=stage,
            inference_ns=max(a.timing.inference_ns for a in answers.values()),
            total_ns=time.perf_counter_ns() - started,
        )
        return documents, timing


class _NoSpan:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        return None


def _span(tracing: Tracing | None, name: str, shards: int) -> Any:
    if tracing is None:
        return _NoSpan()
    return tracing.span(name, {"neuralir.shards": shards})
