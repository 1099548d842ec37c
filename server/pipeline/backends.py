"""What the search pipeline needs from each stage, and the per-search state it hands them."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Sequence
from typing import Protocol

import numpy as np

from neuralir.index.store import StoredDocument
from neuralir.server.stages.index import Retrieved
from neuralir.server.stages.rerank import Reranked, RerankPassage
from neuralir.server.stages.timing import StageTime


@dataclasses.dataclass(frozen=True, slots=True)
class Deadline:
    """When the caller stops waiting (time.monotonic() seconds)."""

    end: float

    @classmethod
    def after(cls, seconds: float) -> Deadline:
        return cls(time.monotonic() + seconds)

    def remaining(self) -> float:
        """Seconds left; TimeoutError (DEADLINE_EXCEEDED) when none are."""
        left = self.end - time.monotonic()
        if left <= 0:
            raise TimeoutError("deadline exceeded before the next stage")
        return left

    def capped(self, seconds: float) -> Deadline:
        """This deadline or `seconds` from now, whichever comes first."""
        return Deadline(min(self.end, time.monotonic() + seconds))


@dataclasses.dataclass(slots=True)
class ShardReport:
    """What one search learned from a sharded index: who did not answer, who holds what."""

    unavailable: set[str] = dataclasses.field(default_factory=set)
    origin: dict[str, int] = dataclasses.field(default_factory=dict)  # doc_id -> shard


@dataclasses.dataclass(slots=True)
class SearchCall:
    """One search's context, passed explicitly to every backend call."""

    deadline: Deadline
    # sent on to remote stages: request id and trace context (never the caller's token)
    metadata: tuple[tuple[str, str], ...] = ()
    shards: ShardReport = dataclasses.field(default_factory=ShardReport)

    def with_deadline(self, deadline: Deadline) -> SearchCall:
        """The same search (same shard report) under a tighter deadline."""
        return SearchCall(deadline, self.metadata, self.shards)


@dataclasses.dataclass(frozen=True, slots=True)
class EncodedQuery:
    vector: np.ndarray  # float32 [dimension], L2-normalised
    model_id: str
    timing: StageTime


class EncoderBackend(Protocol):
    async def encode_query(self, query: str, call: SearchCall) -> EncodedQuery: ...


class IndexBackend(Protocol):
    async def dense_search(
        self, vector: np.ndarray, k: int, ef: int, call: SearchCall
    ) -> Retrieved: ...

    async def lexical_search(self, query: str, k: int, call: SearchCall) -> Retrieved: ...

    async def get_documents(
        self, doc_ids: Sequence[str], with_text: bool, call: SearchCall
    ) -> dict[str, StoredDocument]: ...


class RerankBackend(Protocol):
    async def rerank(
        self,
        query: str,
        passages: Sequence[RerankPassage],
        model: str,
        blend_weight: float | None,
        call: SearchCall,
    ) -> Reranked: ...
