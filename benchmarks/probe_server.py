"""A stripped-down EncoderService that isolates parts of the served encoder's RPC cost.

Only the gRPC-overhead scenario starts it, in its own process like the real server:
- `stored`: Encode answers with one stored embedding, no model work: what the RPC, the
  protobufs and the 1.5 KB payload cost (compare with Health.Check);
- `inline`: the model runs inside the handler on the event loop, with no batcher, thread hop
  or interceptors: against `stored` plus the in-process call, what running the model between
  RPCs costs.
Not a serving path: the real server never blocks its event loop on the model.
"""

from __future__ import annotations

import argparse
import asyncio
import time
from pathlib import Path

import grpc
import numpy as np
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from neuralir.models.encoder import Encoder
from neuralir.models.session import RuntimeSettings
from neuralir.v1 import common_pb2, encoder_service_pb2, encoder_service_pb2_grpc

MODES = ("stored", "inline")


class ProbeEncoder(encoder_service_pb2_grpc.EncoderServiceServicer):
    def __init__(self, encoder: Encoder, mode: str) -> None:
        self.encoder = encoder
        self.mode = mode
        self.stored = encoder.encode(["a stored query"], "query")

    async def Encode(
        self, request: encoder_service_pb2.EncodeRequest, context: grpc.aio.ServicerContext
    ) -> encoder_service_pb2.EncodeResponse:
        started = time.perf_counter_ns()
        texts = list(request.texts)
        if self.mode == "inline":
            embeddings = self.encoder.encode(texts, "query")
        else:
            embeddings = np.repeat(self.stored, len(texts), axis=0)
        return encoder_service_pb2.EncodeResponse(
            model_id=self.encoder.model_id,
            dimension=self.encoder.dimension,
            embeddings=np.ascontiguousarray(embeddings, dtype="<f4").tobytes(),
            max_length=self.encoder.max_length,
            timing=common_pb2.StageTiming(
                stage="encode", batch_size=len(texts), total_ns=time.perf_counter_ns() - started
            ),
        )


async def serve(model_dir: Path, mode: str, threads: int, port_file: Path) -> None:
    encoder = Encoder(model_dir, RuntimeSettings(intra_op_threads=threads))
    server = grpc.aio.server()
    encoder_service_pb2_grpc.add_EncoderServiceServicer_to_server(
        ProbeEncoder(encoder, mode), server
    )
    checks = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(checks, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    await checks.set("", health_pb2.HealthCheckResponse.SERVING)
    tmp = port_file.with_suffix(".tmp")
    tmp.write_text(str(port))
    tmp.replace(port_file)  # whole, so a reader never sees a partial port
    await server.wait_for_termination()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", type=Path, required=True, help="bi-encoder model directory")
    parser.add_argument("--mode", choices=MODES, required=True)
    parser.add_argument("--threads", type=int, default=1, help="ONNX Runtime intra-op threads")
    parser.add_argument("--port-file", type=Path, required=True)
    args = parser.parse_args(argv)
    asyncio.run(serve(args.model, args.mode, args.threads, args.port_file))


if __name__ == "__main__":
    main()
