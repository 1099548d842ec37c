"""Helpers for the reliability tests (bad input, overload, faults, access, soak).

Calls go through `channel.unary_unary` with the generated message classes, so a test can send
any protobuf (or raw bytes) to any RPC without the client's own checks in the way.
"""

from __future__ import annotations

import re
import time
import urllib.request
from collections.abc import Callable
from typing import Any

import grpc
import psutil
from google.protobuf.message import Message
from prometheus_client.parser import text_string_to_metric_families

from neuralir.v1 import (
    encoder_service_pb2,
    index_service_pb2,
    rerank_service_pb2,
    search_service_pb2,
)

# Every RPC of the four services: name -> (method path, request class, response class).
RPCS: dict[str, tuple[str, type[Message], type[Message]]] = {
    "Search": (
        "/neuralir.v1.SearchService/Search",
        search_service_pb2.SearchRequest,
        search_service_pb2.SearchResponse,
    ),
    "BatchSearch": (
        "/neuralir.v1.SearchService/BatchSearch",
        search_service_pb2.BatchSearchRequest,
        search_service_pb2.BatchSearchResponse,
    ),
    "Encode": (
        "/neuralir.v1.EncoderService/Encode",
        encoder_service_pb2.EncodeRequest,
        encoder_service_pb2.EncodeResponse,
    ),
    "Rerank": (
        "/neuralir.v1.RerankService/Rerank",
        rerank_service_pb2.RerankRequest,
        rerank_service_pb2.RerankResponse,
    ),
    "IndexSearch": (
        "/neuralir.v1.IndexService/Search",
        index_service_pb2.IndexServiceSearchRequest,
        index_service_pb2.IndexServiceSearchResponse,
    ),
    "LexicalSearch": (
        "/neuralir.v1.IndexService/LexicalSearch",
        index_service_pb2.LexicalSearchRequest,
        index_service_pb2.LexicalSearchResponse,
    ),
    "GetDocuments": (
        "/neuralir.v1.IndexService/GetDocuments",
        index_service_pb2.GetDocumentsRequest,
        index_service_pb2.GetDocumentsResponse,
    ),
    "Describe": (
        "/neuralir.v1.IndexService/Describe",
        index_service_pb2.DescribeRequest,
        index_service_pb2.DescribeResponse,
    ),
}

# Client options that let a test send more than the server accepts (to see it refused).
BIG_CHANNEL_OPTIONS = [
    ("grpc.max_send_message_length", 64 << 20),
    ("grpc.max_receive_message_length", 64 << 20),
]


def rpc(channel: grpc.Channel, name: str) -> Callable[..., Any]:
    """A callable for RPC `name` taking its request message (or raw bytes)."""
    path, _, response = RPCS[name]

    def serialize(message: Message | bytes) -> bytes:
        return message if isinstance(message, bytes) else message.SerializeToString()

    return channel.unary_unary(
        path, request_serializer=serialize, response_deserializer=response.FromString
    )


def rpc_code(channel: grpc.Channel, name: str, request: Message | bytes, **kw: Any) -> str:
    """The status code name an RPC answers with ("OK" on success)."""
    try:
        rpc(channel, name)(request, **kw)
    except grpc.RpcError as error:
        return str(error.code().name)  # type: ignore[attr-defined]
    return "OK"


def rss_bytes(pid: int) -> int:
    """Resident memory of a process (bytes)."""
    return int(psutil.Process(pid).memory_info().rss)


def metrics_port_from_log(read_log: Callable[[], str], timeout_s: float = 30.0) -> int:
    """The Prometheus port a server process logged ("metrics on http://host:port/metrics")."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        found = re.search(r"metrics on http://[^:]+:(\d+)/metrics", read_log())
        if found:
            return int(found.group(1))
        time.sleep(0.1)
    raise TimeoutError("the server logged no metrics port")


def scrape(port: int, name: str, labels: dict[str, str] | None = None) -> float:
    """One sample of a metric from a server's /metrics endpoint (0 when absent)."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as reply:
        text = reply.read().decode()
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(
                sample.labels.get(k) == v for k, v in (labels or {}).items()
            ):
                return float(sample.value)
    return 0.0


def wait_until(predicate: Callable[[], bool], timeout_s: float, what: str) -> None:
    """Polls `predicate` every 50 ms; fails with `what` when it stays false."""
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")
        time.sleep(0.05)
