"""IndexService: ANN search, BM25 search, document lookup and description of one index."""

from __future__ import annotations

import time

import grpc
import numpy as np

from neuralir.server.errors import InvalidArgument
from neuralir.server.limits import check_count, check_range, check_text
from neuralir.server.stages.index import IndexStage
from neuralir.server.wire import scored_documents, timing_message
from neuralir.v1 import index_service_pb2, index_service_pb2_grpc
from neuralir.v1.limits import MAX_DOC_IDS, MAX_EF, MAX_K, MAX_QUERY_CHARS

# A vector whose length is this close to 1 is used as sent (the encoder's rows are unit length
# to float32 rounding): its scores stay exactly those the search pipeline computes.
_UNIT_TOLERANCE = 1e-4


def decode_vector(
    request: index_service_pb2.IndexServiceSearchRequest, dimension: int
) -> np.ndarray:
    """The request's vector as unit-length float32: scores are cosines, as documented.

    A zero vector has no direction and is refused; any other finite vector is normalised (in
    float64: the length of a vector of 3e38 values overflows float32)."""
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
    norm = float(np.linalg.norm(vector.astype(np.float64)))
    if norm == 0.0:
        raise InvalidArgument("vector", "is the zero vector: a query vector needs a direction")
    if abs(norm - 1.0) > _UNIT_TOLERANCE:
        vector = (vector.astype(np.float64) / norm).astype("<f4")
    return vector


class IndexService(index_service_pb2_grpc.IndexServiceServicer):
    def __init__(self, stage: IndexStage) -> None:
        self.stage = stage

    async def Search(
        self,
        request: index_service_pb2.IndexServiceSearchRequest,
        context: grpc.aio.ServicerContext,
    ) -> index_service_pb2.IndexServiceSearchResponse:
        started = time.perf_counter_ns()
        vector = decode_vector(request, self.stage.info.dimension)
        check_range("k", request.k, 1, MAX_K)
        check_range("ef", request.ef, 0, MAX_EF)
        found = await self.stage.dense_search(vector, request.k, request.ef)
        timing = timing_message(found.timing)
        timing.total_ns = time.perf_counter_ns() - started
        return index_service_pb2.IndexServiceSearchResponse(
            documents=scored_documents(found.hits), timing=timing
        )

    async def LexicalSearch(
        self, request: index_service_pb2.LexicalSearchRequest, context: grpc.aio.ServicerContext
    ) -> index_service_pb2.LexicalSearchResponse:
        started = time.perf_counter_ns()
        check_text("query", request.query, MAX_QUERY_CHARS)
        check_range("k", request.k, 1, MAX_K)
        found = await self.stage.lexical_search(request.query, request.k)
        timing = timing_message(found.timing)
        timing.total_ns = time.perf_counter_ns() - started
        return index_service_pb2.LexicalSearchResponse(
            documents=scored_documents(found.hits), timing=timing
        )

    async def GetDocuments(
        self, request: index_service_pb2.GetDocumentsRequest, context: grpc.aio.ServicerContext
    ) -> index_service_pb2.GetDocumentsResponse:
        check_count("doc_ids", len(request.doc_ids), MAX_DOC_IDS)
        fetched = await self.stage.get_documents(request.doc_ids, not request.omit_text)
        return index_service_pb2.GetDocumentsResponse(
            documents=[
                index_service_pb2.Document(doc_id=d.doc_id, title=d.title, text=d.text)
                for d in fetched.documents
            ],
            missing_ids=fetched.missing,
        )

    async def Describe(
        self, request: index_service_pb2.DescribeRequest, context: grpc.aio.ServicerContext
    ) -> index_service_pb2.DescribeResponse:
        info = self.stage.info
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
