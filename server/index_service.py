"""IndexService: ANN search (usearch), BM25 search and document lookup over one index directory."""

from __future__ import annotations

import asyncio
import concurrent.futures
import time
from collections.abc import Callable
from typing import TypeVar

import grpc
import numpy as np

from neuralir.server.errors import InvalidArgument
from neuralir.server.index_store import IndexStore
from neuralir.server.limits import (
    MAX_DOC_IDS,
    MAX_EF,
    MAX_K,
    MAX_QUERY_CHARS,
    check_count,
    check_range,
    check_text,
)
from neuralir.v1 import common_pb2, index_service_pb2, index_service_pb2_grpc

T = TypeVar("T")


def decode_vector(
    request: index_service_pb2.IndexServiceSearchRequest, dimension: int
) -> np.ndarray:
    if request.dimension != dimension:
        raise InvalidArgument(
            "dimension", f"is {request.dimension}, the index holds {dimension}-dimensional vectors"
        )
    if len(request.vector) != dimension * 4:
        raise InvalidArgument(
            "vector",
            f"is {len(request.vector)} bytes, expected {dimension * 4} "
            f"({dimension} little-endian float32 values)",
        )
    vector = np.frombuffer(request.vector, dtype="<f4")
    if not np.all(np.isfinite(vector)):
        raise InvalidArgument("vector", "holds NaN or infinite values")
    return vector.astype(np.float32)


def _documents(hits: list[tuple[str, float]]) -> list[common_pb2.ScoredDocument]:
    return [
        common_pb2.ScoredDocument(doc_id=doc_id, score=score, rank=rank)
        for rank, (doc_id, score) in enumerate(hits, start=1)
    ]


class IndexService(index_service_pb2_grpc.IndexServiceServicer):
    def __init__(self, store: IndexStore) -> None:
        self.store = store
        # usearch serves one call at a time per index; one thread keeps calls serial and
        # off the event loop.
        self._executor = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="index")

    async def start(self) -> None:
        warm = np.zeros(self.store.info.dimension, dtype=np.float32)
        warm[0] = 1.0
        await self._call(lambda: self.store.dense_search(warm, 10))
        await self._call(lambda: self.store.lexical_search("warm up", 10))

    async def stop(self) -> None:
        self._executor.shutdown(wait=True)
        self.store.close()

    async def _call(self, work: Callable[[], T]) -> tuple[T, int]:
        start = time.perf_counter_ns()
        result = await asyncio.get_running_loop().run_in_executor(self._executor, work)
        return result, time.perf_counter_ns() - start

    async def Search(
        self,
        request: index_service_pb2.IndexServiceSearchRequest,
        context: grpc.aio.ServicerContext,
    ) -> index_service_pb2.IndexServiceSearchResponse:
        started = time.perf_counter_ns()
        vector = decode_vector(request, self.store.info.dimension)
        check_range("k", request.k, 1, MAX_K)
        check_range("ef", request.ef, 0, MAX_EF)
        hits, run_ns = await self._call(
            lambda: self.store.dense_search(vector, request.k, request.ef)
        )
        timing = common_pb2.StageTiming(
            stage="dense", inference_ns=run_ns, total_ns=time.perf_counter_ns() - started
        )
        return index_service_pb2.IndexServiceSearchResponse(
            documents=_documents(hits), timing=timing
        )

    async def LexicalSearch(
        self, request: index_service_pb2.LexicalSearchRequest, context: grpc.aio.ServicerContext
    ) -> index_service_pb2.LexicalSearchResponse:
        started = time.perf_counter_ns()
        check_text("query", request.query, MAX_QUERY_CHARS)
        check_range("k", request.k, 1, MAX_K)
        hits, run_ns = await self._call(lambda: self.store.lexical_search(request.query, request.k))
        timing = common_pb2.StageTiming(
            stage="lexical", inference_ns=run_ns, total_ns=time.perf_counter_ns() - started
        )
        return index_service_pb2.LexicalSearchResponse(documents=_documents(hits), timing=timing)

    async def GetDocuments(
        self, request: index_service_pb2.GetDocumentsRequest, context: grpc.aio.ServicerContext
    ) -> index_service_pb2.GetDocumentsResponse:
        check_count("doc_ids", len(request.doc_ids), MAX_DOC_IDS)
        (found, missing), _ = await self._call(lambda: self.store.get_documents(request.doc_ids))
        return index_service_pb2.GetDocumentsResponse(
            documents=[
                index_service_pb2.Document(doc_id=d.doc_id, title=d.title, text=d.text)
                for d in found
            ],
            missing_ids=missing,
        )

    async def Describe(
        self, request: index_service_pb2.DescribeRequest, context: grpc.aio.ServicerContext
    ) -> index_service_pb2.DescribeResponse:
        info = self.store.info
        return index_service_pb2.DescribeResponse(
            size=info.size,
            dimension=info.dimension,
            metric=info.metric,
            dtype=info.dtype,
            connectivity=info.connectivity,
            expansion_add=info.expansion_add,
            expansion_search=info.expansion_search,
            encoder_model_id=info.encoder_model_id,
            corpus_sha256=info.corpus_sha256,
            bm25_parameters=info.bm25_parameters,
            built_at=info.built_at,
        )
