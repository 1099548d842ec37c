"""RerankService: a query and passages in, the passages reordered by the cross-encoder out."""

from __future__ import annotations

import time

import grpc

from neuralir.server.limits import (
    check_count,
    check_range,
    check_text,
    check_unique,
    check_weight,
)
from neuralir.server.stages.rerank import RerankPassage, RerankStage
from neuralir.server.wire import timing_message
from neuralir.v1 import rerank_service_pb2, rerank_service_pb2_grpc
from neuralir.v1.limits import MAX_PASSAGE_CHARS, MAX_PASSAGES_PER_RERANK, MAX_QUERY_CHARS


def validate_rerank(request: rerank_service_pb2.RerankRequest) -> None:
    check_text("query", request.query, MAX_QUERY_CHARS)
    check_count("passages", len(request.passages), MAX_PASSAGES_PER_RERANK)
    check_unique("passages[{}].id", [p.id for p in request.passages])
    for index, passage in enumerate(request.passages):
        check_text(f"passages[{index}].text", passage.text, MAX_PASSAGE_CHARS)
    check_range("top_n", request.top_n, 0, MAX_PASSAGES_PER_RERANK)
    if request.HasField("blend_weight"):
        check_weight("blend_weight", request.blend_weight)


class RerankService(rerank_service_pb2_grpc.RerankServiceServicer):
    def __init__(self, stage: RerankStage) -> None:
        self.stage = stage

    async def Rerank(
        self, request: rerank_service_pb2.RerankRequest, context: grpc.aio.ServicerContext
    ) -> rerank_service_pb2.RerankResponse:
        started = time.perf_counter_ns()
        validate_rerank(request)
        passages = [
            RerankPassage(
                p.id,
                p.text,
                p.first_stage_score if p.HasField("first_stage_score") else None,
                p.bm25_score if p.HasField("bm25_score") else None,
                p.dense_score if p.HasField("dense_score") else None,
            )
            for p in request.passages
        ]
        reranked = await self.stage.rerank(
            request.query,
            passages,
            request.model,
            request.blend_weight if request.HasField("blend_weight") else None,
            request.top_n,
            context.time_remaining(),
        )
        timing = timing_message(reranked.timing)
        timing.total_ns = time.perf_counter_ns() - started
        return rerank_service_pb2.RerankResponse(
            passages=[
                rerank_service_pb2.RerankedPassage(
                    id=p.id, score=p.score, cross_encoder_score=p.cross_encoder_score, rank=rank
                )
                for rank, p in enumerate(reranked.passages, start=1)
            ],
            model_id=reranked.model_id,
            blend_weight=reranked.blend_weight,
            timing=timing,
        )
