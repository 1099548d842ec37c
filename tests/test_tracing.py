"""OpenTelemetry tracing (the optional `tracing` extra): one trace per search, a span per stage
call on both sides of every gRPC hop, the caller's traceparent honoured; and a server that
starts untraced when the packages are missing."""

from __future__ import annotations

import logging
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from servers import embedded, server_settings

from neuralir.client import convert
from neuralir.server.embedded import EmbeddedServer
from neuralir.server.tracing import setup_tracing
from neuralir.v1 import search_service_pb2_grpc

SKIP_REASON = "OpenTelemetry not installed (pip install 'neural-ir-serve[tracing]')"
# The pipeline's span for each stage call, and the RPC each becomes over gRPC.
STAGE_SPANS = ("encode", "dense", "lexical", "documents", "rerank")
STAGE_CALLS = {
    "/neuralir.v1.EncoderService/Encode": "encode",
    "/neuralir.v1.IndexService/Search": "dense",
    "/neuralir.v1.IndexService/LexicalSearch": "lexical",
    "/neuralir.v1.IndexService/GetDocuments": "documents",
    "/neuralir.v1.RerankService/Rerank": "rerank",
}
SEARCH = "/neuralir.v1.SearchService/Search"


@pytest.fixture(scope="module")
def exporter() -> Any:
    """An in-memory exporter on the process's SDK tracer provider (installed if none is)."""
    pytest.importorskip("opentelemetry.sdk.trace", reason=SKIP_REASON)
    pytest.importorskip("opentelemetry.instrumentation.grpc", reason=SKIP_REASON)
    from opentelemetry import trace
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    provider = trace.get_tracer_provider()
    if not isinstance(provider, TracerProvider):
        provider = TracerProvider()
        trace.set_tracer_provider(provider)
    memory = InMemorySpanExporter()
    provider.add_span_processor(SimpleSpanProcessor(memory))
    return memory


@pytest.fixture(scope="module", params=["inprocess", "grpc"])
def traced(
    request: pytest.FixtureRequest,
    exporter: Any,
    bi_encoder_dir: Path,
    cross_encoder_dir: Path,
    small_index: Path,
) -> Iterator[EmbeddedServer]:
    """serve all with its stages called in-process, and over loopback gRPC (as separate
    processes would be called)."""
    settings = server_settings(
        bi_encoder_dir,
        (("default", cross_encoder_dir),),
        small_index,
        tracing="otlp",
        local_stages=request.param,
    )
    with embedded(settings) as server:
        assert server.server is not None
        assert server.server.tracing is not None
        # The process already had an SDK provider (ours): the server used it, exporter and all.
        assert not server.server.tracing.owned
        yield server


def _spans_of_trace(exporter: Any, trace_id: int, count: int) -> list[Any]:
    """The finished spans of one trace, once `count` have ended (client spans end a moment
    after their call returns)."""
    deadline = time.monotonic() + 10
    while True:
        spans = [s for s in exporter.get_finished_spans() if s.context.trace_id == trace_id]
        if len(spans) >= count or time.monotonic() > deadline:
            return spans
        time.sleep(0.02)


def _search(server: EmbeddedServer, metadata: tuple[tuple[str, str], ...] = ()) -> None:
    request = convert.search_request("automatic indexing", k=5, mode="hybrid", rerank_depth=5)
    with grpc.insecure_channel(server.address) as channel:
        stub = search_service_pb2_grpc.SearchServiceStub(channel)
        reply = stub.Search(request, timeout=30, metadata=metadata)
    assert len(reply.hits) == 5


def test_one_search_is_one_trace_with_a_span_per_stage(
    traced: EmbeddedServer, exporter: Any
) -> None:
    from opentelemetry.trace import SpanKind

    exporter.clear()
    _search(traced)
    roots = [s for s in _finished(exporter) if s.name == SEARCH]
    assert len(roots) == 1
    root = roots[0]
    assert root.parent is None  # the caller sent no trace context: the search starts one
    assert root.kind == SpanKind.SERVER
    remote = _remote(traced)
    spans = _spans_of_trace(exporter, root.context.trace_id, _span_count(remote))
    # The pipeline opens one span per stage call, a child of the search, in both transports.
    stages = {s.name: s for s in spans if s.kind == SpanKind.INTERNAL}
    assert set(stages) == set(STAGE_SPANS)
    for name in STAGE_SPANS:
        assert stages[name].parent.span_id == root.context.span_id, name
    clients = {s.name: s for s in spans if s.kind == SpanKind.CLIENT}
    servers = {s.name: s for s in spans if s.kind == SpanKind.SERVER and s is not root}
    if not remote:
        assert not clients  # in-process stages: no RPC, so no client or server spans
        assert not servers
    else:
        # Each stage call over gRPC: a CLIENT span under the pipeline's span, a SERVER span
        # in the stage, its child: traceparent crossed the hop.
        assert set(clients) == set(STAGE_CALLS)
        assert set(servers) == set(STAGE_CALLS)
        for name, stage in STAGE_CALLS.items():
            assert clients[name].parent.span_id == stages[stage].context.span_id, name
            assert servers[name].parent.span_id == clients[name].context.span_id, name
            assert servers[name].attributes["rpc.grpc.status_code"] == 0
    # Health checks (the search service's watcher, probes) stay out of traces.
    assert not [s for s in exporter.get_finished_spans() if "Health" in s.name]


def _remote(server: EmbeddedServer) -> bool:
    assert server.server is not None
    return server.server.settings.local_stages == "grpc"


def _span_count(remote: bool) -> int:
    """The search, a pipeline span per stage call, and over gRPC a client and a server span."""
    return 1 + len(STAGE_SPANS) + (2 * len(STAGE_CALLS) if remote else 0)


def test_the_callers_traceparent_is_the_parent_of_the_search(
    traced: EmbeddedServer, exporter: Any
) -> None:
    exporter.clear()
    trace_id = "4bf92f3577b34da6a3ce929d0e0e4736"
    parent_id = "00f067aa0ba902b7"
    _search(traced, (("traceparent", f"00-{trace_id}-{parent_id}-01"),))
    roots = [s for s in _finished(exporter) if s.name == SEARCH]
    assert len(roots) == 1
    assert f"{roots[0].context.trace_id:032x}" == trace_id
    assert f"{roots[0].parent.span_id:016x}" == parent_id
    assert roots[0].parent.is_remote
    expected = _span_count(_remote(traced))
    assert len(_spans_of_trace(exporter, roots[0].context.trace_id, expected)) == expected


def _finished(exporter: Any) -> list[Any]:
    deadline = time.monotonic() + 10
    while True:
        spans = list(exporter.get_finished_spans())
        if any(s.name == SEARCH for s in spans) or time.monotonic() > deadline:
            return spans
        time.sleep(0.02)


def test_tracing_off_imports_no_opentelemetry() -> None:
    code = (
        "import sys\n"
        "from neuralir.server import app, wiring\n"
        "from neuralir.server.settings import ServerSettings\n"
        "assert app.setup_tracing(ServerSettings().tracing, 'x') is None\n"
        "loaded = [m for m in sys.modules if m.startswith('opentelemetry')]\n"
        "assert not loaded, loaded\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


def test_tracing_without_the_packages_warns_and_serves_untraced(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # None in sys.modules makes the import fail, as an install without the extra would.
    monkeypatch.setitem(sys.modules, "opentelemetry.instrumentation.grpc", None)
    with caplog.at_level(logging.WARNING, logger="neuralir.server.tracing"):
        assert setup_tracing("otlp", "neuralir-test") is None
    assert "neural-ir-serve[tracing]" in caplog.text


def test_unknown_tracing_mode_is_refused() -> None:
    with pytest.raises(ValueError, match="tracing must be one of"):
        setup_tracing("jaeger", "neuralir-test")


def test_a_server_process_exports_its_spans(
    tmp_path: Path, bi_encoder_dir: Path, small_index: Path
) -> None:
    """`neuralir serve --tracing console` as users run it: a provider of its own, flushed at
    shutdown; the caller's trace id reaches the exported span."""
    pytest.importorskip("opentelemetry.sdk.trace", reason=SKIP_REASON)
    pytest.importorskip("opentelemetry.instrumentation.grpc", reason=SKIP_REASON)
    from servers import ServerProcess, model_args

    from neuralir.v1 import index_service_pb2, index_service_pb2_grpc

    args = [*model_args(bi_encoder_dir, ()), "--index-dir", str(small_index)]
    process = ServerProcess("index", tmp_path, [*args, "--tracing", "console"])
    trace_id = "0af7651916cd43dd8448eb211c80319c"
    try:
        process.wait_serving("neuralir.v1.IndexService")
        with grpc.insecure_channel(process.address) as channel:
            index_service_pb2_grpc.IndexServiceStub(channel).LexicalSearch(
                index_service_pb2.LexicalSearchRequest(query="computer indexing", k=3),
                timeout=10,
                metadata=(("traceparent", f"00-{trace_id}-b7ad6b7169203331-01"),),
            )
    finally:
        assert process.terminate() == 0
    log = process.log()
    assert '"name": "/neuralir.v1.IndexService/LexicalSearch"' in log, log[-3000:]
    assert f'"trace_id": "0x{trace_id}"' in log
    assert '"service.name": "neuralir-index"' in log
