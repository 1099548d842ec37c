"""Backends on the stages of this process: direct calls, no serialization, no loopback hop.

Each call is bounded by the search's deadline (asyncio.timeout): a search whose time runs out
while it waits in a batching queue leaves the queue unrun, as a cancelled RPC would.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import numpy as np

from neuralir.index.store import StoredDocument
from neuralir.server.pipeline.backends import EncodedQuery, SearchCall
from neuralir.server.stages.encoder import EncoderStage
from neuralir.server.stages.index import IndexStage, Retrieved
from neuralir.server.stages.rerank import Reranked, RerankPassage, RerankStage


class LocalEncoder:
    def __init__(self, stage: EncoderStage) -> None:
        self.stage = stage

    async def encode_query(self, query: str, call: SearchCall) -> EncodedQuery:
        async with asyncio.timeout(call.deadline.remaining()):
            encoded = await self.stage.encode([query], "query")
        return EncodedQuery(encoded.embeddings[0], self.stage.model_id, encoded.timing)


class LocalIndex:
    def __init__(self, stage: IndexStage) -> None:
        self.stage = stage

    async def dense_search(
        self, vector: np.ndarray, k: int, ef: int, call: SearchCall
    ) -> Retrieved:
        async with asyncio.timeout(call.deadline.remaining()):
            return await self.stage.dense_search(vector, k, ef)

    async def lexical_search(self, query: str, k: int, call: SearchCall) -> Retrieved:
        async with asyncio.timeout(call.deadline.remaining()):
            return await self.stage.lexical_search(query, k)

    async def get_documents(
        self, doc_ids: Sequence[str], with_text: bool, call: SearchCall
    ) -> dict[str, StoredDocument]:
        async with asyncio.timeout(call.deadline.remaining()):
            fetched = await self.stage.get_documents(doc_ids, with_text)
        return {d.doc_id: d for d in fetched.documents}


class LocalReranker:
    def __init__(self, stage: RerankStage) -> None:
        self.stage = stage

    async def rerank(
        self,
        query: str,
        passages: Sequence[RerankPassage],
        model: str,
        blend_weight: float | None,
        call: SearchCall,
    ) -> Reranked:
        async with asyncio.timeout(call.deadline.remaining()):
            return await self.stage.rerank(query, passages, model, blend_weight)
