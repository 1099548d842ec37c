"""RerankService: cross-encoder scores for (query, passage) pairs, blended and sorted."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Mapping

import grpc
import numpy as np

from neuralir.models.cross_encoder import CrossEncoder
from neuralir.server.batching import BatchingSettings, DynamicBatcher
from neuralir.server.errors import InvalidArgument
from neuralir.server.fusion import blend_scores
from neuralir.server.limits import (
    MAX_PASSAGE_CHARS,
    MAX_PASSAGES_PER_RERANK,
    MAX_QUERY_CHARS,
    check_count,
    check_range,
    check_text,
    check_unique,
    check_weight,
)
from neuralir.v1 import common_pb2, rerank_service_pb2, rerank_service_pb2_grpc


@dataclasses.dataclass(frozen=True)
class RerankItem:
    query: str
    passages: list[str]


@dataclasses.dataclass(frozen=True)
class ScoredItem:
    scores: np.ndarray
    tokenize_ns: int
    inference_ns: int


def validate_rerank(request: rerank_service_pb2.RerankRequest) -> None:
    check_text("query", request.query, MAX_QUERY_CHARS)
    check_count("passages", len(request.passages), MAX_PASSAGES_PER_RERANK)
    check_unique("passages[{}].id", [p.id for p in request.passages])
    for index, passage in enumerate(request.passages):
        check_text(f"passages[{index}].text", passage.text, MAX_PASSAGE_CHARS)
    check_range("top_n", request.top_n, 0, MAX_PASSAGES_PER_RERANK)
    if request.HasField("blend_weight"):
        check_weight("blend_weight", request.blend_weight)


class RerankModel:
    """One served cross-encoder with its own batching queue and recommended blend weight."""

    def __init__(self, name: str, model: CrossEncoder, batching: BatchingSettings) -> None:
        self.name = name
        self.model = model
        self.default_blend_weight = float(model.manifest.recipe.get("blend_weight", 1.0))
        self.batcher: DynamicBatcher[RerankItem, ScoredItem] = DynamicBatcher(
            f"rerank-{name}", self._run_batch, lambda item: len(item.passages), batching
        )

    def _run_batch(self, items: list[RerankItem]) -> list[ScoredItem]:
        """All pairs of all requests in one call: the runtime groups them by length."""
        pairs = [(item.query, passage) for item in items for passage in item.passages]
        out = self.model.score_pairs(pairs)
        results, start = [], 0
        for item in items:
            end = start + len(item.passages)
            results.append(ScoredItem(out.scores[start:end], out.tokenize_ns, out.inference_ns))
            start = end
        return results


class RerankService(rerank_service_pb2_grpc.RerankServiceServicer):
    def __init__(
        self, models: Mapping[str, CrossEncoder], default: str, batching: BatchingSettings
    ) -> None:
        if default not in models:
            raise ValueError(f"default reranker {default!r} is not among {sorted(models)}")
        self.models = {name: RerankModel(name, m, batching) for name, m in models.items()}
        self.default = default

    async def start(self) -> None:
        for served in self.models.values():
            served.batcher.start()
            for _ in range(2):
                await served.batcher.submit(RerankItem("warm-up", ["a passage to warm up on"] * 4))

    async def stop(self) -> None:
        for served in self.models.values():
            await served.batcher.stop()

    def _model(self, name: str) -> RerankModel:
        served = self.models.get(name or self.default)
        if served is None:
            raise InvalidArgument(
                "model", f"unknown reranker {name!r}; served: {sorted(self.models)}"
            )
        return served

    async def Rerank(
        self, request: rerank_service_pb2.RerankRequest, context: grpc.aio.ServicerContext
    ) -> rerank_service_pb2.RerankResponse:
        started = time.perf_counter_ns()
        validate_rerank(request)
        served = self._model(request.model)
        passages = list(request.passages)
        result, stats = await served.batcher.submit(
            RerankItem(request.query, [p.text for p in passages])
        )
        weight = self._blend_weight(request, served)
        first_stage = np.array([p.first_stage_score for p in passages], dtype=np.float64)
        final = blend_scores(result.scores, first_stage, weight)
        order = np.argsort(-final, kind="stable")
        if request.top_n:
            order = order[: request.top_n]
        ranked = [
            rerank_service_pb2.RerankedPassage(
                id=passages[i].id,
                score=float(final[i]),
                cross_encoder_score=float(result.scores[i]),
                rank=rank,
            )
            for rank, i in enumerate(order, start=1)
        ]
        timing = common_pb2.StageTiming(
            stage="rerank",
            queue_ns=stats.queue_ns,
            tokenize_ns=result.tokenize_ns,
            inference_ns=result.inference_ns,
            batch_size=stats.batch_items,
            total_ns=time.perf_counter_ns() - started,
        )
        return rerank_service_pb2.RerankResponse(
            passages=ranked, model_id=served.model.model_id, blend_weight=weight, timing=timing
        )

    @staticmethod
    def _blend_weight(request: rerank_service_pb2.RerankRequest, served: RerankModel) -> float:
        has_first_stage = all(p.HasField("first_stage_score") for p in request.passages)
        if request.HasField("blend_weight"):
            if request.blend_weight < 1.0 and not has_first_stage:
                raise InvalidArgument(
                    "blend_weight",
                    "blending needs first_stage_score on every passage; set it or use weight 1",
                )
            return float(request.blend_weight)
        return served.default_blend_weight if has_first_stage else 1.0
