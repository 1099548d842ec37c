"""Backends over gRPC: a channel per stage, the caller's remaining deadline on every call,
UNAVAILABLE retried a few times, failures named by stage, and the stages' health watched."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar

import grpc
import numpy as np
from google.rpc import error_details_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_status import rpc_status

from neuralir.index.store import StoredDocument
from neuralir.server.errors import InvalidArgument, Overloaded, StageUnavailable
from neuralir.server.pipeline.backends import EncodedQuery, SearchCall
from neuralir.server.stages.index import Retrieved
from neuralir.server.stages.rerank import RankedPassage, Reranked, RerankPassage
from neuralir.server.tracing import Tracing
from neuralir.server.wire import hits_of, stage_time
from neuralir.v1 import (
    encoder_service_pb2,
    encoder_service_pb2_grpc,
    index_service_pb2,
    index_service_pb2_grpc,
    rerank_service_pb2,
    rerank_service_pb2_grpc,
)

log = logging.getLogger(__name__)

Response = TypeVar("Response")

# Retry only what is safe and quick: UNAVAILABLE (the stage restarting or a connection
# blip), a few times with short backoff; the caller's deadline still bounds the total.
RETRY_SERVICE_CONFIG = json.dumps(
    {
        "methodConfig": [
            {
                "name": [{}],
                "retryPolicy": {
                    "maxAttempts": 3,
                    "initialBackoff": "0.05s",
                    "maxBackoff": "0.5s",
                    "backoffMultiplier": 2,
                    "retryableStatusCodes": ["UNAVAILABLE"],
                },
            }
        ]
    }
)


def channel_options(max_message_bytes: int) -> list[tuple[str, Any]]:
    return [
        ("grpc.max_send_message_length", max_message_bytes),
        ("grpc.max_receive_message_length", max_message_bytes),
        ("grpc.service_config", RETRY_SERVICE_CONFIG),
        ("grpc.enable_retries", 1),
        # Reconnect quickly after a stage restarts, so search recovers within ~1 s.
        ("grpc.initial_reconnect_backoff_ms", 100),
        ("grpc.min_reconnect_backoff_ms", 100),
        ("grpc.max_reconnect_backoff_ms", 1000),
        ("grpc.keepalive_time_ms", 30_000),
        ("grpc.lb_policy_name", "round_robin"),
    ]


@dataclasses.dataclass
class RemoteStage:
    """One downstream stage reached over gRPC."""

    name: str  # "encoder", "index", "index shard-1", "rerank"
    address: str
    channel: grpc.aio.Channel
    health_service: str  # fully qualified service name for grpc.health.v1
    # sent on every call (the bearer token when the stages require one)
    metadata: tuple[tuple[str, str], ...] = ()

    async def call(
        self, rpc: Callable[..., Awaitable[Response]], request: Any, call: SearchCall
    ) -> Response:
        """Calls the stage with the search's remaining time; failures name the stage."""
        try:
            return await rpc(
                request, timeout=call.deadline.remaining(), metadata=self.metadata + call.metadata
            )
        except grpc.aio.AioRpcError as exc:
            code = exc.code()
            if code == grpc.StatusCode.UNAVAILABLE:
                raise StageUnavailable(
                    f"{self.name} stage at {self.address} is unavailable: {exc.details()}"
                ) from exc
            if code == grpc.StatusCode.RESOURCE_EXHAUSTED:
                raise Overloaded(f"{self.name} stage shed the request: {exc.details()}") from exc
            if code == grpc.StatusCode.DEADLINE_EXCEEDED:
                raise TimeoutError(f"deadline exceeded in the {self.name} stage") from exc
            violation = _field_violation(exc)
            if violation is not None:  # the stage refused a field: keep the field's name
                raise InvalidArgument(*violation) from exc
            raise

    async def close(self) -> None:
        await self.channel.close()


@dataclasses.dataclass(frozen=True)
class Connector:
    """Opens channels to stages with one process's transport settings."""

    max_message_bytes: int
    credentials: grpc.ChannelCredentials | None = None
    auth_token: str = dataclasses.field(default="", repr=False)
    tracing: Tracing | None = None

    def open(self, name: str, address: str, health_service: str) -> RemoteStage:
        options = channel_options(self.max_message_bytes)
        interceptors = self.tracing.client_interceptors() if self.tracing is not None else None
        if self.credentials is None:
            channel = grpc.aio.insecure_channel(address, options=options, interceptors=interceptors)
        else:
            channel = grpc.aio.secure_channel(
                address, self.credentials, options=options, interceptors=interceptors
            )
        metadata = (("authorization", f"Bearer {self.auth_token}"),) if self.auth_token else ()
        return RemoteStage(name, address, channel, health_service, metadata)


class RemoteEncoder:
    def __init__(self, stage: RemoteStage) -> None:
        self.stage = stage
        self._stub = encoder_service_pb2_grpc.EncoderServiceStub(stage.channel)

    async def encode_query(self, query: str, call: SearchCall) -> EncodedQuery:
        request = encoder_service_pb2.EncodeRequest(
            texts=[query], kind=encoder_service_pb2.TEXT_KIND_QUERY
        )
        reply = await self.stage.call(self._stub.Encode, request, call)
        # Little-endian float32 on the wire is this machine's float32: a view, no copy.
        vector = np.frombuffer(reply.embeddings, dtype="<f4", count=reply.dimension)
        return EncodedQuery(vector, reply.model_id, stage_time(reply.timing))


class RemoteIndex:
    def __init__(self, stage: RemoteStage) -> None:
        self.stage = stage
        self._stub = index_service_pb2_grpc.IndexServiceStub(stage.channel)

    async def dense_search(
        self, vector: np.ndarray, k: int, ef: int, call: SearchCall
    ) -> Retrieved:
        request = index_service_pb2.IndexServiceSearchRequest(
            vector=np.asarray(vector, dtype="<f4").tobytes(), dimension=len(vector), k=k, ef=ef
        )
        reply = await self.stage.call(self._stub.Search, request, call)
        return Retrieved(hits_of(reply.documents), stage_time(reply.timing))

    async def lexical_search(self, query: str, k: int, call: SearchCall) -> Retrieved:
        request = index_service_pb2.LexicalSearchRequest(query=query, k=k)
        reply = await self.stage.call(self._stub.LexicalSearch, request, call)
        return Retrieved(hits_of(reply.documents), stage_time(reply.timing))

    async def get_documents(
        self, doc_ids: Sequence[str], with_text: bool, call: SearchCall
    ) -> dict[str, StoredDocument]:
        request = index_service_pb2.GetDocumentsRequest(doc_ids=doc_ids, omit_text=not with_text)
        reply = await self.stage.call(self._stub.GetDocuments, request, call)
        return {d.doc_id: StoredDocument(d.doc_id, d.title, d.text) for d in reply.documents}


class RemoteReranker:
    def __init__(self, stage: RemoteStage) -> None:
        self.stage = stage
        self._stub = rerank_service_pb2_grpc.RerankServiceStub(stage.channel)

    async def rerank(
        self,
        query: str,
        passages: Sequence[RerankPassage],
        model: str,
        blend_weight: float | None,
        call: SearchCall,
    ) -> Reranked:
        request = rerank_service_pb2.RerankRequest(query=query, model=model)
        for passage in passages:
            sent = request.passages.add(id=passage.id, text=passage.text)
            # Optional fields: unset is not 0.
            if passage.first_stage_score is not None:
                sent.first_stage_score = passage.first_stage_score
            if passage.bm25_score is not None:
                sent.bm25_score = passage.bm25_score
            if passage.dense_score is not None:
                sent.dense_score = passage.dense_score
        if blend_weight is not None:
            request.blend_weight = blend_weight
        reply = await self.stage.call(self._stub.Rerank, request, call)
        ranked = [RankedPassage(p.id, p.score, p.cross_encoder_score) for p in reply.passages]
        return Reranked(ranked, reply.model_id, reply.blend_weight, stage_time(reply.timing))


def _field_violation(error: grpc.aio.AioRpcError) -> tuple[str, str] | None:
    """The first google.rpc.BadRequest violation of a downstream INVALID_ARGUMENT."""
    if error.code() != grpc.StatusCode.INVALID_ARGUMENT:
        return None
    status = rpc_status.from_call(error)
    for detail in status.details if status is not None else ():
        bad_request = error_details_pb2.BadRequest()
        if detail.Unpack(bad_request):
            for violation in bad_request.field_violations:
                return str(violation.field), str(violation.description)
    return None


# ---------------------------------------------------------------- health of the remote stages


async def stage_is_serving(stage: RemoteStage, timeout: float = 2.0) -> bool:
    stub = health_pb2_grpc.HealthStub(stage.channel)
    try:
        reply = await stub.Check(
            health_pb2.HealthCheckRequest(service=stage.health_service), timeout=timeout
        )
    except grpc.aio.AioRpcError:
        return False
    return reply.status == health_pb2.HealthCheckResponse.SERVING


async def watch_stages(
    stages: Sequence[RemoteStage],
    serving: Callable[[list[str]], bool],
    on_change: Callable[[bool, list[str]], Awaitable[None]],
    interval_s: float = 1.0,
) -> None:
    """Polls every stage's health; calls on_change(serving(down), down) when it changes.

    A stage counts as down after two failed checks in a row: one slow answer on a loaded
    machine is not an outage, while a stopped stage (connection refused) fails both at once.
    """
    previous: tuple[bool, tuple[str, ...]] | None = None
    failures: dict[str, int] = {}
    while True:
        results = await asyncio.gather(*(stage_is_serving(s) for s in stages))
        for stage, ok in zip(stages, results, strict=True):
            failures[stage.name] = 0 if ok else failures.get(stage.name, 0) + 1
        down = [s.name for s in stages if failures[s.name] >= 2]
        state = (serving(down), tuple(down))
        if state != previous:
            if down:
                log.warning("downstream stages not serving: %s", ", ".join(down))
            await on_change(state[0], down)
            previous = state
        await asyncio.sleep(interval_s)
