"""An index split into shards, behind the interface of one index backend.

Each of dense search, lexical search and document lookup goes to every shard in parallel,
each call limited to the shard timeout and the search's remaining deadline, and the answers
are merged. A shard that fails or does not answer in time is left out: the search goes on
with the other shards and records it in its `ShardReport` (the response is flagged partial).
Only when every shard fails does the search fail, with the status a single index would give.
Documents are fetched only from the shard that returned them (shards hold disjoint documents).

BM25 scores come from each shard's own statistics (document frequencies, mean length), as in
Elasticsearch's default query-then-fetch: merged lexical scores are close to, but not the
same as, those of one unsharded index. Dense scores are exact cosines and merge exactly.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar

import numpy as np

from neuralir.index.store import StoredDocument
from neuralir.server.errors import Overloaded, StageUnavailable
from neuralir.server.pipeline.backends import IndexBackend, SearchCall
from neuralir.server.pipeline.search import SpanFactory
from neuralir.server.stages.index import Retrieved
from neuralir.server.stages.timing import StageTime

log = logging.getLogger(__name__)

T = TypeVar("T")
Documents = dict[str, StoredDocument]

# A shard that fails with one of these is left out of the answer (a partial result); any
# other error (a bad request, a bug) fails the search as it would with one index.
_SHARD_DOWN = (StageUnavailable, Overloaded, TimeoutError)


def shard_name(index: int) -> str:
    return f"shard-{index}"


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


@dataclasses.dataclass(frozen=True)
class Shard:
    name: str  # shard-<i>: its position in the --index-address list
    address: str
    backend: IndexBackend


class ShardedIndex:
    def __init__(
        self, shards: Sequence[Shard], shard_timeout_s: float, span: SpanFactory | None = None
    ) -> None:
        if len(shards) < 2:
            raise ValueError("a sharded index needs at least two shards")
        self.shards = list(shards)
        self.shard_timeout_s = shard_timeout_s
        self._span = span

    async def dense_search(
        self, vector: np.ndarray, k: int, ef: int, call: SearchCall
    ) -> Retrieved:
        started = time.perf_counter_ns()
        answers = await self._fan_out(
            "dense search",
            {i: lambda b, c: b.dense_search(vector, k, ef, c) for i in self._asked(call)},
            call,
        )
        return self._merge(answers, k, "dense", started, call)

    async def lexical_search(self, query: str, k: int, call: SearchCall) -> Retrieved:
        started = time.perf_counter_ns()
        answers = await self._fan_out(
            "lexical search",
            {i: lambda b, c: b.lexical_search(query, k, c) for i in self._asked(call)},
            call,
        )
        return self._merge(answers, k, "lexical", started, call)

    async def get_documents(
        self, doc_ids: Sequence[str], with_text: bool, call: SearchCall
    ) -> dict[str, StoredDocument]:
        """Asks each shard only for the documents it returned; ids of unknown origin go to all."""
        wanted: dict[int, list[str]] = {}
        for doc_id in dict.fromkeys(doc_ids):
            owner = call.shards.origin.get(doc_id)
            for i in [owner] if owner is not None else self._asked(call):
                wanted.setdefault(i, []).append(doc_id)

        def lookup(ids: list[str]) -> Callable[[IndexBackend, SearchCall], Awaitable[Documents]]:
            return lambda backend, shard_call: backend.get_documents(ids, with_text, shard_call)

        answers = await self._fan_out(
            "document lookup", {i: lookup(ids) for i, ids in wanted.items()}, call
        )
        found: dict[str, StoredDocument] = {}
        for answer in answers.values():
            found.update(answer)
        return found

    def _asked(self, call: SearchCall) -> list[int]:
        """Shards still worth asking in this search (those that failed it are skipped)."""
        down = call.shards.unavailable
        return [i for i, shard in enumerate(self.shards) if shard.name not in down]

    async def _fan_out(
        self,
        what: str,
        work: dict[int, Callable[[IndexBackend, SearchCall], Awaitable[T]]],
        call: SearchCall,
    ) -> dict[int, T]:
        """Each shard's answer; shards that failed are recorded in the search's report."""
        if not work:
            raise StageUnavailable("no index shard is available for this search")
        shard_call = call
        if self.shard_timeout_s > 0:
            shard_call = call.with_deadline(call.deadline.capped(self.shard_timeout_s))
        tasks = {i: asyncio.ensure_future(self._ask(i, ask, shard_call)) for i, ask in work.items()}
        try:
            with self._fan_out_span(what, len(tasks)):
                await asyncio.gather(*tasks.values())
        except BaseException:
            for task in tasks.values():
                task.cancel()
            await asyncio.gather(*tasks.values(), return_exceptions=True)
            raise
        answers: dict[int, T] = {}
        failures: list[BaseException] = []
        for i, task in tasks.items():
            result = task.result()
            if isinstance(result, BaseException):
                failures.append(result)
                call.shards.unavailable.add(self.shards[i].name)
                log.warning(
                    "%s at %s left out of %s: %s",
                    self.shards[i].name,
                    self.shards[i].address,
                    what,
                    result,
                )
            else:
                answers[i] = result
        if not answers:
            # Every shard failed: the status a single unavailable or slow index would give.
            if all(isinstance(f, TimeoutError) for f in failures):
                raise TimeoutError(f"no index shard answered the {what} in time")
            raise StageUnavailable(f"no index shard answered the {what}: {failures[0]}")
        return answers

    async def _ask(
        self,
        i: int,
        ask: Callable[[IndexBackend, SearchCall], Awaitable[T]],
        call: SearchCall,
    ) -> T | BaseException:
        try:
            return await ask(self.shards[i].backend, call)
        except _SHARD_DOWN as exc:
            return exc

    def _merge(
        self, answers: dict[int, Retrieved], k: int, stage: str, started: int, call: SearchCall
    ) -> Retrieved:
        """The best k over all shards (score, then doc id, so ties are reproducible)."""
        scored: list[tuple[float, str]] = []
        for i, answer in answers.items():
            for doc_id, score in answer.hits:
                call.shards.origin[doc_id] = i
                scored.append((score, doc_id))
        scored.sort(key=lambda pair: (-pair[0], pair[1]))
        # The slowest shard bounds the stage: its inference time; the fan-out's wall time.
        timing = StageTime(
            stage=stage,
            inference_ns=max(a.timing.inference_ns for a in answers.values()),
            total_ns=time.perf_counter_ns() - started,
        )
        return Retrieved([(doc_id, score) for score, doc_id in scored[:k]], timing)

    def _fan_out_span(self, what: str, shards: int) -> contextlib.AbstractContextManager[Any]:
        if self._span is None:
            return contextlib.nullcontext()
        return self._span(f"index fan-out {what} ({shards} shards)")
