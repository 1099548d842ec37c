"""The index stage: ANN and BM25 search and document lookup on one served index, off the
event loop on one thread (usearch serves one call at a time per index)."""

from __future__ import annotations

import asyncio
import concurrent.futures
import dataclasses
import time
from collections.abc import Callable, Sequence
from typing import TypeVar

import numpy as np

from neuralir.index.format import IndexInfo
from neuralir.index.store import IndexStore, StoredDocument
from neuralir.server.stages.timing import StageTime

T = TypeVar("T")


@dataclasses.dataclass(frozen=True, slots=True)
class Retrieved:
    hits: list[tuple[str, float]]  # (doc_id, score), best first
    timing: StageTime


@dataclasses.dataclass(frozen=True, slots=True)
class Fetched:
    documents: list[StoredDocument]  # found, in the order asked
    missing: list[str]


class IndexStage:
    def __init__(self, store: IndexStore) -> None:
        self.store = store
        self._executor = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="index")

    @property
    def info(self) -> IndexInfo:
        return self.store.info

    async def start(self) -> None:
        warm = np.zeros(self.info.dimension, dtype=np.float32)
        warm[0] = 1.0
        await self.dense_search(warm, 10)
        await self.lexical_search("warm up", 10)

    async def stop(self) -> None:
        self._executor.shutdown(wait=True)
        self.store.close()

    async def dense_search(self, vector: np.ndarray, k: int, ef: int = 0) -> Retrieved:
        """Nearest documents by cosine; `vector` float32 of the index's dimension."""
        return await self._search("dense", lambda: self.store.dense_search(vector, k, ef))

    async def lexical_search(self, query: str, k: int) -> Retrieved:
        return await self._search("lexical", lambda: self.store.lexical_search(query, k))

    async def get_documents(self, doc_ids: Sequence[str], with_text: bool = True) -> Fetched:
        found, missing = await self._run(lambda: self.store.get_documents(doc_ids, with_text))
        return Fetched(found, missing)

    async def _search(self, stage: str, work: Callable[[], list[tuple[str, float]]]) -> Retrieved:
        started = time.perf_counter_ns()
        hits = await self._run(work)
        elapsed = time.perf_counter_ns() - started
        return Retrieved(hits, StageTime(stage=stage, inference_ns=elapsed, total_ns=elapsed))

    async def _run(self, work: Callable[[], T]) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._executor, work)
