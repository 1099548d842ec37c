"""Optional OpenTelemetry tracing: a span per RPC on every server and per downstream call.

Off unless `--tracing otlp|console` (env NEURALIR_TRACING) is set AND the `tracing` extra is
installed (`pip install 'neural-ir-serve[tracing]'`); without the packages the server logs a
warning and serves untraced. Nothing here is imported while tracing is off.

The gRPC hooks are OpenTelemetry's own grpc.aio interceptors: the server interceptor reads the
caller's `traceparent` and opens a SERVER span; the search service's channels carry the client
interceptors, which open a CLIENT span per stage call and send its `traceparent` on, so one
search is one trace across every process it touches. Exporters and sampling follow the
standard OTEL_* environment variables (OTEL_EXPORTER_OTLP_ENDPOINT, OTEL_SERVICE_NAME,
OTEL_TRACES_SAMPLER...). An application that embeds the server and has already installed an
SDK tracer provider keeps it (and its exporters); the exporter choice is then ignored.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Mapping
from typing import Any

import grpc

log = logging.getLogger(__name__)

TRACING_MODES = ("off", "otlp", "console")
INSTALL_HINT = "pip install 'neural-ir-serve[tracing]'"


@dataclasses.dataclass
class Tracing:
    """The tracer provider of this process and the gRPC interceptors bound to it."""

    provider: Any  # opentelemetry.sdk.trace.TracerProvider
    owned: bool  # created here (flushed and shut down with the server) or the application's

    def server_interceptor(self) -> grpc.aio.ServerInterceptor:
        from opentelemetry.instrumentation.grpc import aio_server_interceptor

        interceptor: grpc.aio.ServerInterceptor = aio_server_interceptor(
            tracer_provider=self.provider, filter_=_not_health()
        )
        return interceptor

    def client_interceptors(self) -> list[grpc.aio.ClientInterceptor]:
        from opentelemetry.instrumentation.grpc import aio_client_interceptors

        return list(aio_client_interceptors(tracer_provider=self.provider, filter_=_not_health()))

    def span(self, name: str, attributes: Mapping[str, Any] | None = None) -> Any:
        """A child span of the current one, as a context manager yielding the span."""
        tracer = self.provider.get_tracer("neuralir.server")
        return tracer.start_as_current_span(name, attributes=dict(attributes or {}))

    def shutdown(self) -> None:
        if self.owned:
            self.provider.shutdown()  # flushes spans still queued for export


def _not_health() -> Any:
    """Health checks (probes, the search service's watcher: every second) are not traced."""
    from opentelemetry.instrumentation.grpc import filters

    return filters.negate(filters.health_check())


def setup_tracing(mode: str, service_name: str) -> Tracing | None:
    """The process's tracing for `mode`, or None when off or the packages are missing."""
    if mode == "off":
        return None
    if mode not in TRACING_MODES:
        raise ValueError(f"tracing must be one of {TRACING_MODES}, not {mode!r}")
    try:
        import opentelemetry.instrumentation.grpc  # noqa: F401
        from opentelemetry import trace
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor
    except ImportError as exc:
        log.warning(
            "tracing %s requested, but OpenTelemetry is not installed (%s): serving without "
            "traces; install it with %s",
            mode,
            exc,
            INSTALL_HINT,
        )
        return None
    current = trace.get_tracer_provider()
    if isinstance(current, TracerProvider):
        return Tracing(current, owned=False)
    exporter = _exporter(mode)
    if exporter is None:
        return None
    provider = TracerProvider(resource=Resource.create({"service.name": service_name}))
    provider.add_span_processor(BatchSpanProcessor(exporter))
    trace.set_tracer_provider(provider)
    log.info("tracing on: %s exporter, service %s", mode, service_name)
    return Tracing(provider, owned=True)


def _exporter(mode: str) -> Any:
    if mode == "console":
        from opentelemetry.sdk.trace.export import ConsoleSpanExporter

        return ConsoleSpanExporter()
    try:
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
    except ImportError as exc:
        log.warning(
            "tracing otlp needs the OTLP exporter (%s): %s; serving untraced", exc, INSTALL_HINT
        )
        return None
    return OTLPSpanExporter()  # endpoint etc. from OTEL_EXPORTER_OTLP_* variables
