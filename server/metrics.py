"""Prometheus metrics of one server process, on a registry of its own (several servers may
share a test process), exposed over HTTP when a metrics port is set."""

from __future__ import annotations

from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

from neuralir.server.batching import DynamicBatcher

# Buckets from 100 µs to ~10 s: a cached encode is sub-millisecond, a deep rerank ~1 s.
LATENCY_BUCKETS = (
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
    2.5, 5.0, 10.0,
)  # fmt: skip
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)


class ServerMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "neuralir_rpc_requests", "RPCs handled, by service, method and status code",
            ["service", "method", "code"], registry=r,
        )  # fmt: skip
        self.latency = Histogram(
            "neuralir_rpc_duration_seconds", "Server-side RPC latency", ["service", "method"],
            buckets=LATENCY_BUCKETS, registry=r,
        )  # fmt: skip
        self.queue_wait = Histogram(
            "neuralir_batch_queue_wait_seconds", "Time a batch's oldest request waited",
            ["stage"], buckets=LATENCY_BUCKETS, registry=r,
        )  # fmt: skip
        self.inference = Histogram(
            "neuralir_batch_inference_seconds", "Model call time per batch", ["stage"],
            buckets=LATENCY_BUCKETS, registry=r,
        )  # fmt: skip
        self.batch_size = Histogram(
            "neuralir_batch_size_items", "Items (texts or pairs) per model call", ["stage"],
            buckets=BATCH_BUCKETS, registry=r,
        )  # fmt: skip
        self.queue_depth = Gauge(
            "neuralir_queue_depth_items", "Items waiting in a batching queue", ["stage"], registry=r
        )
        self.shed = Counter(
            "neuralir_shed_requests", "Requests refused because a queue was full", ["stage"],
            registry=r,
        )  # fmt: skip
        self.rpc_shed = Counter(
            "neuralir_rpc_shed_requests",
            "Calls refused with RESOURCE_EXHAUSTED because --max-in-flight-rpcs calls were running",
            ["service", "method"], registry=r,
        )  # fmt: skip
        self.rpc_in_flight = Gauge(
            "neuralir_rpc_in_flight", "Unary RPCs running (health and reflection excluded)",
            registry=r,
        )  # fmt: skip
        self.cancelled = Counter(
            "neuralir_cancelled_requests",
            "Requests dropped from a batching queue unrun because their caller gave up",
            ["stage"], registry=r,
        )  # fmt: skip
        self.index_documents = Gauge(
            "neuralir_index_documents", "Documents in the served index", registry=r
        )
        self.model_info = Gauge(
            "neuralir_model_info", "Served models (value 1)", ["stage", "name", "model_id"],
            registry=r,
        )  # fmt: skip
        self.http_port = -1

    def serve_http(self, port: int, host: str = "0.0.0.0") -> int:
        """Starts the /metrics endpoint; returns its port (port 0 picks a free one)."""
        server, _thread = start_http_server(port, addr=host, registry=self.registry)
        self.http_port = int(server.server_port)
        return self.http_port

    def observe_call(self, full_method: str, code: str, seconds: float) -> None:
        """A finished RPC (see interceptors.ObservingInterceptor)."""
        # "/neuralir.v1.SearchService/Search" -> ("neuralir.v1.SearchService", "Search")
        service, _, method = full_method.lstrip("/").partition("/")
        self.latency.labels(service, method).observe(seconds)
        self.requests.labels(service, method, code).inc()

    def observe_shed_call(self, full_method: str) -> None:
        """A call refused by the in-flight cap (see interceptors.InFlightLimitInterceptor)."""
        service, _, method = full_method.lstrip("/").partition("/")
        self.rpc_shed.labels(service, method).inc()

    def observe_batcher(self, stage: str, batcher: DynamicBatcher[Any, Any]) -> None:
        queue_wait = self.queue_wait.labels(stage)
        inference = self.inference.labels(stage)
        batch_size = self.batch_size.labels(stage)
        shed = self.shed.labels(stage)
        cancelled = self.cancelled.labels(stage)

        def on_batch(items: int, queue_ns: int, run_ns: int) -> None:
            batch_size.observe(items)
            queue_wait.observe(queue_ns / 1e9)
            inference.observe(run_ns / 1e9)

        batcher.on_batch = on_batch
        batcher.on_shed = shed.inc
        batcher.on_cancelled = cancelled.inc
        self.queue_depth.labels(stage).set_function(lambda: batcher.queued_items)
