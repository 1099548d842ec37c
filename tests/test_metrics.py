"""Prometheus metrics: scrape a running server's /metrics over HTTP and watch them move with
real traffic (searches through every stage, and a refused call)."""

from __future__ import annotations

import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from prometheus_client.parser import text_string_to_metric_families
from servers import embedded, server_settings

from neuralir.client import NeuralIRClient, convert
from neuralir.server.embedded import EmbeddedServer
from neuralir.v1 import rerank_service_pb2, rerank_service_pb2_grpc, search_service_pb2_grpc

SEARCH = "neuralir.v1.SearchService"
ENCODER = "neuralir.v1.EncoderService"
INDEX = "neuralir.v1.IndexService"
RERANK = "neuralir.v1.RerankService"


@pytest.fixture(scope="module")
def metered(
    bi_encoder_dir: Path, cross_encoder_dir: Path, small_index: Path
) -> Iterator[EmbeddedServer]:
    settings = server_settings(
        bi_encoder_dir, (("default", cross_encoder_dir),), small_index, metrics_port=0
    )
    with embedded(settings) as server:
        yield server


def _scrape(server: EmbeddedServer) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """Every sample on /metrics, keyed by (sample name, labels)."""
    assert server.server is not None
    port = server.server.metrics.http_port
    assert port > 0
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as reply:
        assert reply.status == 200
        assert reply.headers["Content-Type"].startswith("text/plain")
        text = reply.read().decode()
    samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return samples


def _value(samples: dict, name: str, **labels: str) -> float:
    return float(samples.get((name, frozenset(labels.items())), 0.0))


def test_counters_and_histograms_move_with_searches(metered: EmbeddedServer) -> None:
    before = _scrape(metered)
    searches = 3
    with NeuralIRClient(target=metered.address, max_attempts=1, timeout_s=30) as client:
        for query in ("indexing documents", "library systems", "retrieval evaluation")[:searches]:
            result = client.search(query, k=5, mode="hybrid", rerank_depth=5)
            assert len(result.hits) == 5
    after = _scrape(metered)

    def grew(name: str, **labels: str) -> float:
        return _value(after, name, **labels) - _value(before, name, **labels)

    # One Search RPC per search, status OK.
    labels = {"service": SEARCH, "method": "Search"}
    assert grew("neuralir_rpc_requests_total", **labels, code="OK") == searches
    assert grew("neuralir_rpc_duration_seconds_count", **labels) == searches
    assert grew("neuralir_rpc_duration_seconds_sum", **labels) > 0
    # Histogram buckets are cumulative: the +Inf bucket counts every call.
    assert grew("neuralir_rpc_duration_seconds_bucket", **labels, le="+Inf") == searches
    # The stages live in this process: the search calls them directly, so no stage RPC is
    # counted (only what callers sent is an RPC); their batchers still saw the work.
    for service, method in (
        (ENCODER, "Encode"),
        (INDEX, "Search"),
        (INDEX, "LexicalSearch"),
        (INDEX, "GetDocuments"),
        (RERANK, "Rerank"),
    ):
        stage = {"service": service, "method": method}
        assert grew("neuralir_rpc_duration_seconds_count", **stage) == 0, method
    # The encoder batched one query per search; the reranker 5 pairs per search.
    assert grew("neuralir_batch_size_items_sum", stage="encoder") == searches
    assert 1 <= grew("neuralir_batch_size_items_count", stage="encoder") <= searches
    assert grew("neuralir_batch_size_items_sum", stage="rerank:default") == 5 * searches
    for histogram in ("neuralir_batch_queue_wait_seconds", "neuralir_batch_inference_seconds"):
        assert grew(f"{histogram}_count", stage="encoder") >= 1
        assert grew(f"{histogram}_count", stage="rerank:default") >= 1
    assert grew("neuralir_batch_inference_seconds_sum", stage="encoder") > 0
    # Idle again: nothing queued, nothing shed.
    assert _value(after, "neuralir_queue_depth_items", stage="encoder") == 0
    assert _value(after, "neuralir_shed_requests_total", stage="encoder") == 0


def test_refused_calls_are_counted_by_status_code(metered: EmbeddedServer) -> None:
    labels = {"service": SEARCH, "method": "Search", "code": "INVALID_ARGUMENT"}
    before = _value(_scrape(metered), "neuralir_rpc_requests_total", **labels)
    with grpc.insecure_channel(metered.address) as channel:
        stub = search_service_pb2_grpc.SearchServiceStub(channel)
        for _ in range(2):
            with pytest.raises(grpc.RpcError) as caught:
                stub.Search(convert.search_request("query", k=0), timeout=10)
            assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    # The status reaches the caller before the server's interceptor finishes counting: poll.
    deadline = time.monotonic() + 5
    while (after := _value(_scrape(metered), "neuralir_rpc_requests_total", **labels)) < before + 2:
        if time.monotonic() > deadline:
            break
        time.sleep(0.02)
    assert after - before == 2


@pytest.mark.parametrize("rpc", ["Search", "Rerank"])
def test_a_passed_deadline_is_counted_as_deadline_exceeded(
    metered: EmbeddedServer, rpc: str
) -> None:
    """A call still reranking when its caller's deadline passes is DEADLINE_EXCEEDED in the
    metrics (what the caller saw), not CANCELLED (what gRPC does to the handler task): the
    search pipeline times itself out, a Rerank is cancelled by gRPC mid-batch."""
    service = {"Search": SEARCH, "Rerank": RERANK}[rpc]
    counted = {"service": service, "method": rpc}
    text = "library automation and the circulation of books " * 20
    before = _scrape(metered)
    with grpc.insecure_channel(metered.address) as channel:
        if rpc == "Search":
            call = search_service_pb2_grpc.SearchServiceStub(channel).Search
            request: object = convert.search_request("library automation", k=50, rerank_depth=50)
        else:
            call = rerank_service_pb2_grpc.RerankServiceStub(channel).Rerank
            passages = [rerank_service_pb2.Passage(id=f"p{i}", text=text) for i in range(200)]
            request = rerank_service_pb2.RerankRequest(query="library", passages=passages)
        with pytest.raises(grpc.RpcError) as caught:
            call(request, timeout=0.3)  # 50 pairs and more take well over 0.3 s on 1 thread
        assert caught.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    name = "neuralir_rpc_requests_total"
    deadline = time.monotonic() + 30
    while True:
        after = _scrape(metered)
        exceeded = _value(after, name, **counted, code="DEADLINE_EXCEEDED") - _value(
            before, name, **counted, code="DEADLINE_EXCEEDED"
        )
        if exceeded >= 1 or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert exceeded == 1
    cancelled = _value(after, name, **counted, code="CANCELLED")
    assert cancelled == _value(before, name, **counted, code="CANCELLED")


def test_index_size_and_model_ids_are_exported(
    metered: EmbeddedServer, small_corpus_docs: list
) -> None:
    samples = _scrape(metered)
    assert _value(samples, "neuralir_index_documents") == len(small_corpus_docs)
    model_ids = {
        dict(labels)["stage"]: dict(labels)["model_id"]
        for name, labels in samples
        if name == "neuralir_model_info" and samples[(name, labels)] == 1
    }
    assert set(model_ids) == {"encoder", "rerank"}
    assert all(model_ids.values())
