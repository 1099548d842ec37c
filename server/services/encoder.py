"""EncoderService: texts -> embeddings (packed little-endian float32)."""

from __future__ import annotations

import time

import grpc
import numpy as np

from neuralir.models.encoder import TextKind
from neuralir.server.errors import InvalidArgument
from neuralir.server.limits import check_count, check_text
from neuralir.server.stages.encoder import EncoderStage
from neuralir.server.wire import timing_message
from neuralir.v1 import encoder_service_pb2, encoder_service_pb2_grpc
from neuralir.v1.limits import MAX_QUERY_CHARS, MAX_TEXTS_PER_ENCODE

_KINDS: dict[int, TextKind] = {
    encoder_service_pb2.TEXT_KIND_UNSPECIFIED: "query",
    encoder_service_pb2.TEXT_KIND_QUERY: "query",
    encoder_service_pb2.TEXT_KIND_PASSAGE: "passage",
}


def validate_encode(request: encoder_service_pb2.EncodeRequest) -> TextKind:
    check_count("texts", len(request.texts), MAX_TEXTS_PER_ENCODE)
    for index, text in enumerate(request.texts):
        check_text(f"texts[{index}]", text, MAX_QUERY_CHARS)
    if request.kind not in _KINDS:
        raise InvalidArgument("kind", f"unknown TextKind value {request.kind}")
    return _KINDS[request.kind]


class EncoderService(encoder_service_pb2_grpc.EncoderServiceServicer):
    def __init__(self, stage: EncoderStage) -> None:
        self.stage = stage

    async def Encode(
        self, request: encoder_service_pb2.EncodeRequest, context: grpc.aio.ServicerContext
    ) -> encoder_service_pb2.EncodeResponse:
        started = time.perf_counter_ns()
        kind = validate_encode(request)
        encoded = await self.stage.encode(list(request.texts), kind, context.time_remaining())
        timing = timing_message(encoded.timing)
        timing.total_ns = time.perf_counter_ns() - started
        encoder = self.stage.encoder
        return encoder_service_pb2.EncodeResponse(
            model_id=encoder.model_id,
            dimension=encoder.dimension,
            embeddings=np.ascontiguousarray(encoded.embeddings, dtype="<f4").tobytes(),
            token_counts=encoded.token_counts,
            max_length=encoder.max_length,
            timing=timing,
        )
