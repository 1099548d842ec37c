"""The search service's view of its downstream stages: channels, retries, errors, health."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from neuralir.server.errors import Overloaded, StageUnavailable
from neuralir.server.shard_fanout import ShardedIndex, shard_name, split_index_addresses
from neuralir.server.tracing import Tracing
from neuralir.v1 import encoder_service_pb2_grpc, index_service_pb2_grpc, rerank_service_pb2_grpc

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
class Stage:
    """One downstream stage reached over gRPC."""

    name: str  # "encoder", "index" or "rerank"
    address: str
    channel: grpc.aio.Channel
    stub: Any
    health_service: str  # fully qualified service name for grpc.health.v1
    # sent on every call (the bearer token when the stages require one)
    metadata: tuple[tuple[str, str], ...] = ()

    async def call(
        self,
        rpc: Callable[..., Awaitable[Response]],
        request: Any,
        timeout: float | None,
        metadata: tuple[tuple[str, str], ...] = (),
    ) -> Response:
        """Calls the stage with the caller's remaining time; failures name the stage."""
        try:
            return await rpc(request, timeout=timeout, metadata=self.metadata + metadata)
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
            raise


@dataclasses.dataclass
class Stages:
    encoder: Stage
    index: Stage | ShardedIndex  # one index, or several shards fanned out
    rerank: Stage

    def all(self) -> list[Stage]:
        """Every downstream channel's stage (each shard on its own)."""
        index = self.index.shards if isinstance(self.index, ShardedIndex) else [self.index]
        return [self.encoder, *index, self.rerank]

    def serving(self, down: Sequence[str]) -> bool:
        """Whether searches can be answered: with shards, one shard up is enough (partial)."""
        if not isinstance(self.index, ShardedIndex):
            return not down
        shards = {s.name for s in self.index.shards}
        return all(name in shards for name in down) and len(set(down)) < len(shards)

    async def close(self) -> None:
        for stage in self.all():
            await stage.channel.close()


def connect_stages(
    encoder_address: str,
    index_address: str,
    rerank_address: str,
    max_message_bytes: int,
    credentials: grpc.ChannelCredentials | None = None,
    auth_token: str = "",
    shard_timeout_s: float = 1.0,
    tracing: Tracing | None = None,
) -> Stages:
    """Channels to the stages; several index addresses make a sharded index (fan-out)."""
    options = channel_options(max_message_bytes)
    metadata = (("authorization", f"Bearer {auth_token}"),) if auth_token else ()
    interceptors = tracing.client_interceptors() if tracing is not None else None

    def open_channel(address: str) -> grpc.aio.Channel:
        if credentials is None:
            return grpc.aio.insecure_channel(address, options=options, interceptors=interceptors)
        return grpc.aio.secure_channel(
            address, credentials, options=options, interceptors=interceptors
        )

    def stage(name: str, address: str, stub_class: Any, service: str) -> Stage:
        channel = open_channel(address)
        return Stage(name, address, channel, stub_class(channel), service, metadata)

    shard_addresses = split_index_addresses(index_address)
    index: Stage | ShardedIndex
    if len(shard_addresses) > 1:
        shards = [
            stage(
                f"index {shard_name(i)}",
                address,
                index_service_pb2_grpc.IndexServiceStub,
                "neuralir.v1.IndexService",
            )
            for i, address in enumerate(shard_addresses)
        ]
        index = ShardedIndex(shards, shard_timeout_s, tracing)
    else:
        index = stage(
            "index",
            index_address,
            index_service_pb2_grpc.IndexServiceStub,
            "neuralir.v1.IndexService",
        )
    return Stages(
        encoder=stage(
            "encoder",
            encoder_address,
            encoder_service_pb2_grpc.EncoderServiceStub,
            "neuralir.v1.EncoderService",
        ),
        index=index,
        rerank=stage(
            "rerank",
            rerank_address,
            rerank_service_pb2_grpc.RerankServiceStub,
            "neuralir.v1.RerankService",
        ),
    )


async def stage_is_serving(stage: Stage, timeout: float = 2.0) -> bool:
    stub = health_pb2_grpc.HealthStub(stage.channel)
    try:
        reply = await stub.Check(
            health_pb2.HealthCheckRequest(service=stage.health_service), timeout=timeout
        )
    except grpc.aio.AioRpcError:
        return False
    return reply.status == health_pb2.HealthCheckResponse.SERVING


async def watch_stages(
    stages: Stages,
    on_change: Callable[[bool, list[str]], Awaitable[None]],
    interval_s: float = 1.0,
) -> None:
    """Polls every stage's health; calls on_change(all_serving, down_stages) when it changes.

    A stage counts as down after two failed checks in a row: one slow answer on a loaded
    machine is not an outage, while a stopped stage (connection refused) fails both at once.
    """
    previous: tuple[bool, tuple[str, ...]] | None = None
    failures: dict[str, int] = {}
    while True:
        results = await asyncio.gather(*(stage_is_serving(s) for s in stages.all()))
        for stage, ok in zip(stages.all(), results, strict=True):
            failures[stage.name] = 0 if ok else failures.get(stage.name, 0) + 1
        down = [s.name for s in stages.all() if failures[s.name] >= 2]
        serving = stages.serving(down)
        state = (serving, tuple(down))
        if state != previous:
            if down:
                log.warning("downstream stages not serving: %s", ", ".join(down))
            await on_change(serving, down)
            previous = state
        await asyncio.sleep(interval_s)
