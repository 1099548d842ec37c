"""EncoderService: texts -> embeddings with the bi-encoder, dynamically batched."""

from __future__ import annotations

import dataclasses
import time

import grpc
import numpy as np

from neuralir.models.encoder import Encoder, TextKind
from neuralir.server.batching import BatchingSettings, DynamicBatcher
from neuralir.server.errors import InvalidArgument
from neuralir.server.limits import MAX_QUERY_CHARS, MAX_TEXTS_PER_ENCODE, check_count, check_text
from neuralir.v1 import common_pb2, encoder_service_pb2, encoder_service_pb2_grpc

_KINDS: dict[int, TextKind] = {
    encoder_service_pb2.TEXT_KIND_UNSPECIFIED: "query",
    encoder_service_pb2.TEXT_KIND_QUERY: "query",
    encoder_service_pb2.TEXT_KIND_PASSAGE: "passage",
}


@dataclasses.dataclass(frozen=True)
class EncodeItem:
    texts: list[str]
    kind: TextKind


@dataclasses.dataclass(frozen=True)
class EncodedItem:
    embeddings: np.ndarray
    token_counts: list[int]
    tokenize_ns: int
    inference_ns: int


def validate_encode(request: encoder_service_pb2.EncodeRequest) -> TextKind:
    check_count("texts", len(request.texts), MAX_TEXTS_PER_ENCODE)
    for index, text in enumerate(request.texts):
        check_text(f"texts[{index}]", text, MAX_QUERY_CHARS)
    if request.kind not in _KINDS:
        raise InvalidArgument("kind", f"unknown TextKind value {request.kind}")
    return _KINDS[request.kind]


class EncoderService(encoder_service_pb2_grpc.EncoderServiceServicer):
    def __init__(self, encoder: Encoder, batching: BatchingSettings) -> None:
        self.encoder = encoder
        self.batcher: DynamicBatcher[EncodeItem, EncodedItem] = DynamicBatcher(
            "encoder", self._run_batch, lambda item: len(item.texts), batching
        )

    async def start(self) -> None:
        """Starts the batch worker and warms the model up (first runs allocate the arena)."""
        self.batcher.start()
        for _ in range(3):
            await self.batcher.submit(EncodeItem(["warm-up query for the encoder"], "query"))

    async def stop(self) -> None:
        await self.batcher.stop()

    def _run_batch(self, items: list[EncodeItem]) -> list[EncodedItem]:
        """One model call per text kind present in the batch (kinds may use different prefixes)."""
        results: list[EncodedItem | None] = [None] * len(items)
        for kind in {item.kind for item in items}:
            members = [i for i, item in enumerate(items) if item.kind == kind]
            texts = [text for i in members for text in items[i].texts]
            out = self.encoder.encode_detailed(texts, kind)
            start = 0
            for i in members:
                end = start + len(items[i].texts)
                results[i] = EncodedItem(
                    out.embeddings[start:end],
                    out.token_counts[start:end],
                    out.tokenize_ns,
                    out.inference_ns,
                )
                start = end
        return [r for r in results if r is not None]

    async def Encode(
        self, request: encoder_service_pb2.EncodeRequest, context: grpc.aio.ServicerContext
    ) -> encoder_service_pb2.EncodeResponse:
        started = time.perf_counter_ns()
        kind = validate_encode(request)
        result, stats = await self.batcher.submit(EncodeItem(list(request.texts), kind))
        timing = common_pb2.StageTiming(
            stage="encode",
            queue_ns=stats.queue_ns,
            tokenize_ns=result.tokenize_ns,
            inference_ns=result.inference_ns,
            batch_size=stats.batch_items,
            total_ns=time.perf_counter_ns() - started,
        )
        return encoder_service_pb2.EncodeResponse(
            model_id=self.encoder.model_id,
            dimension=self.encoder.dimension,
            embeddings=np.ascontiguousarray(result.embeddings, dtype="<f4").tobytes(),
            token_counts=result.token_counts,
            max_length=self.encoder.max_length,
            timing=timing,
        )
