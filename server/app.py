"""Builds a gRPC server from settings: the chosen services, health, reflection, interceptors.

The server listens at once with every service NOT_SERVING, then loads and warms each stage;
a stage turns SERVING only when it can answer at full speed. The search service's health
follows its downstream stages.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import signal
from collections.abc import Awaitable, Callable
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from neuralir.server.access_log import access_logger
from neuralir.server.errors import ErrorInterceptor, NotReady
from neuralir.server.health import HealthServicer
from neuralir.server.interceptors import (
    BearerTokenInterceptor,
    InFlightLimitInterceptor,
    ObservingInterceptor,
    RequestIdInterceptor,
)
from neuralir.server.limits import check_finite_floats
from neuralir.server.metrics import ServerMetrics
from neuralir.server.reflection import enable_reflection
from neuralir.server.settings import ServerSettings
from neuralir.server.tracing import Tracing, setup_tracing
from neuralir.v1 import (
    encoder_service_pb2,
    encoder_service_pb2_grpc,
    index_service_pb2,
    index_service_pb2_grpc,
    rerank_service_pb2,
    rerank_service_pb2_grpc,
    search_service_pb2,
    search_service_pb2_grpc,
)

log = logging.getLogger(__name__)

SERVICE_NAMES = {
    "encoder": encoder_service_pb2.DESCRIPTOR.services_by_name["EncoderService"].full_name,
    "index": index_service_pb2.DESCRIPTOR.services_by_name["IndexService"].full_name,
    "rerank": rerank_service_pb2.DESCRIPTOR.services_by_name["RerankService"].full_name,
    "search": search_service_pb2.DESCRIPTOR.services_by_name["SearchService"].full_name,
}

_ADD_SERVICER: dict[str, Callable[[Any, grpc.aio.Server], None]] = {
    "encoder": encoder_service_pb2_grpc.add_EncoderServiceServicer_to_server,
    "index": index_service_pb2_grpc.add_IndexServiceServicer_to_server,
    "rerank": rerank_service_pb2_grpc.add_RerankServiceServicer_to_server,
    "search": search_service_pb2_grpc.add_SearchServiceServicer_to_server,
}

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


class PendingServicer:
    """Stands in for a stage while it loads: gRPC needs servicers before the server starts.

    Every RPC answers UNAVAILABLE ("not ready") until `bind` hands over the real servicer.
    """

    def __init__(self, name: str) -> None:
        self._name = name
        self.target: Any = None

    def bind(self, target: Any) -> None:
        self.target = target

    def __getattr__(self, method: str) -> Callable[[Any, grpc.aio.ServicerContext], Awaitable[Any]]:
        async def call(request: Any, context: grpc.aio.ServicerContext) -> Any:
            if self.target is None:
                raise NotReady(f"the {self._name} stage is still loading; retry shortly")
            return await getattr(self.target, method)(request, context)

        return call


@dataclasses.dataclass
class Server:
    """One server process: its gRPC server, health, and the stages it serves."""

    settings: ServerSettings
    grpc_server: grpc.aio.Server
    port: int
    health: HealthServicer
    servicers: dict[str, PendingServicer]
    metrics: ServerMetrics
    # the loaded stage engines (encoder, index, rerank): what servicers and pipeline call
    engines: dict[str, Any] = dataclasses.field(default_factory=dict)
    background: list[asyncio.Task[None]] = dataclasses.field(default_factory=list)
    # set when the search service reaches stages over gRPC: its health then follows theirs
    search_watcher: asyncio.Task[None] | None = None
    ready: asyncio.Event = dataclasses.field(default_factory=asyncio.Event)
    tracing: Tracing | None = None  # OpenTelemetry, when --tracing is on and installed

    @property
    def address(self) -> str:
        return f"{self.settings.host}:{self.port}"

    def stage(self, name: str) -> Any:
        """The loaded servicer of a stage (None while loading)."""
        return self.servicers[name].target

    def engine(self, name: str) -> Any:
        """The loaded engine of a stage served by this process (KeyError if it serves none)."""
        return self.engines[name]

    async def start(self) -> None:
        """Listens at once (health NOT_SERVING), then loads and warms each stage in turn."""
        for name in self.settings.services:
            await self.health.set(SERVICE_NAMES[name], NOT_SERVING)
        await self.health.set("", NOT_SERVING)
        await self.grpc_server.start()
        log.info("listening on %s, services %s", self.address, ",".join(self.settings.services))
        if self.settings.metrics_port >= 0:
            port = self.metrics.serve_http(self.settings.metrics_port, self.settings.host)
            log.info("metrics on http://%s:%d/metrics", self.settings.host, port)
        from neuralir.server.wiring import load_stage

        for name in self.settings.services:
            engine, servicer = await load_stage(name, self)
            if engine is not None:
                self.engines[name] = engine
            self.servicers[name].bind(servicer)
            if name != "search" or self.search_watcher is None:
                await self.health.set(SERVICE_NAMES[name], SERVING)
            log.info("%s stage ready", name)
        await self.health.set("", SERVING)
        self.ready.set()

    async def set_search_health(self, serving: bool, down: list[str]) -> None:
        await self.health.set(SERVICE_NAMES["search"], SERVING if serving else NOT_SERVING)

    async def stop(self, grace: float | None = None) -> None:
        """Graceful: health NOT_SERVING, refuse new calls, let in-flight ones finish, stop."""
        loop = asyncio.get_running_loop()
        grace_s = self.settings.grace_period_s if grace is None else grace
        deadline = loop.time() + grace_s
        await self.health.enter_graceful_shutdown()
        for task in self.background:
            task.cancel()
        await asyncio.gather(*self.background, return_exceptions=True)
        search = self.servicers["search"].target if "search" in self.servicers else None
        if search is not None:
            # Searches in flight still call their stages: drain them before the stages stop.
            await search.drain(grace_s)
        await self.grpc_server.stop(max(0.0, deadline - loop.time()))
        if search is not None:
            await search.stop()  # closes its channels to remote stages
        for engine in self.engines.values():
            await engine.stop()
        if self.tracing is not None:
            self.tracing.shutdown()
        log.info("stopped %s", self.address)

    async def serve_until_signal(self) -> None:
        """Runs until SIGTERM or SIGINT, then shuts down gracefully within the grace period."""
        loop = asyncio.get_running_loop()
        stopping = asyncio.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stopping.set)
        starting = asyncio.create_task(self.start())
        waiter = asyncio.create_task(stopping.wait())
        done, _ = await asyncio.wait({starting, waiter}, return_when=asyncio.FIRST_COMPLETED)
        if starting in done and starting.exception() is not None:
            waiter.cancel()
            await self.stop(grace=0)  # close the port and any stage already loaded
            raise starting.exception()  # type: ignore[misc]
        await waiter
        log.info("signal received: draining for up to %.1f s", self.settings.grace_period_s)
        starting.cancel()
        await asyncio.gather(starting, return_exceptions=True)
        await self.stop()


# 16 connections' worth of streams at the default --max-concurrent-streams: past it gRPC core
# drops calls (CANCELLED) before the in-flight cap sees them.
_MAX_PENDING_CALLS = 65536


def _server_options(settings: ServerSettings) -> list[tuple[str, Any]]:
    options: list[tuple[str, Any]] = [
        ("grpc.max_send_message_length", settings.max_message_bytes),
        ("grpc.max_receive_message_length", settings.max_message_bytes),
        ("grpc.max_concurrent_streams", settings.max_concurrent_streams),
        # Streams past the limit wait in the client instead of being refused (UNAVAILABLE
        # "Stream removed", RST_STREAM REFUSED_STREAM) while earlier ones are still allocated.
        ("grpc.http.overload_protection", 0),
        # Calls gRPC core holds until grpc.aio accepts them (it accepts one at a time). Past the
        # defaults (1,000, with random early drops up to 3,000) the core drops them and the
        # client sees a bare CANCELLED: the cause of issue 17's flood failures. Raised so that
        # a flood reaches InFlightLimitInterceptor, which sheds it with RESOURCE_EXHAUSTED.
        ("grpc.server.max_pending_requests", _MAX_PENDING_CALLS),
        ("grpc.server.max_pending_requests_hard_limit", _MAX_PENDING_CALLS),
        ("grpc.so_reuseport", 0),
    ]
    if settings.max_connection_age_s > 0:
        # Clients reconnect now and then, and so re-resolve a DNS name: replicas added by an
        # autoscaler behind a headless Service start receiving calls.
        age_ms = int(settings.max_connection_age_s * 1000)
        options += [
            ("grpc.max_connection_age_ms", age_ms),
            ("grpc.max_connection_age_grace_ms", int(settings.grace_period_s * 1000)),
        ]
    return options


def _bind(grpc_server: grpc.aio.Server, settings: ServerSettings) -> int:
    address = f"{settings.host}:{settings.port}"
    if settings.tls_cert is None:
        return grpc_server.add_insecure_port(address)
    if settings.tls_key is None:
        raise ValueError("--tls-cert needs --tls-key")
    credentials = grpc.ssl_server_credentials(
        [(settings.tls_key.read_bytes(), settings.tls_cert.read_bytes())]
    )
    return grpc_server.add_secure_port(address, credentials)


def build_server(settings: ServerSettings) -> tuple[Server, int]:
    """Creates the server and binds its port; stages load in `Server.start()`."""
    metrics = ServerMetrics()
    tracing = setup_tracing(settings.tracing, "neuralir-" + "-".join(settings.services))
    # Order: the trace span outermost, request id next (logs), then metrics and the access log
    # (they see refused calls too), then the in-flight cap (sheds are counted), then auth.
    interceptors: list[grpc.aio.ServerInterceptor] = [RequestIdInterceptor()]
    if tracing is not None:
        interceptors.insert(0, tracing.server_interceptor())
    access_log = access_logger(settings.access_log)
    observers = [metrics.observe_call] + ([access_log] if access_log else [])
    interceptors.append(ObservingInterceptor(observers))
    in_flight = InFlightLimitInterceptor(settings.max_in_flight_rpcs, metrics.observe_shed_call)
    metrics.rpc_in_flight.set_function(lambda: in_flight.in_flight)
    interceptors.append(in_flight)
    if settings.auth_token:
        interceptors.append(BearerTokenInterceptor(settings.auth_token))
    interceptors.append(ErrorInterceptor(check_request=check_finite_floats))
    grpc_server = grpc.aio.server(interceptors=interceptors, options=_server_options(settings))
    port = _bind(grpc_server, settings)
    health_servicer = HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, grpc_server)
    servicers = {name: PendingServicer(name) for name in settings.services}
    for name, servicer in servicers.items():
        _ADD_SERVICER[name](servicer, grpc_server)
    enable_reflection(
        [*(SERVICE_NAMES[n] for n in settings.services), health.SERVICE_NAME], grpc_server
    )
    server = Server(settings, grpc_server, port, health_servicer, servicers, metrics)
    server.tracing = tracing
    return server, port
