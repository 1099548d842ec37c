"""Structured logs: JSON lines carrying the caller's x-request-id, in this process and in the
downstream stages the search service forwards it to over gRPC."""

from __future__ import annotations

import io
import json
import logging
import re
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from servers import ServerProcess, embedded, model_args, server_settings

from neuralir.client import convert
from neuralir.server.embedded import EmbeddedServer
from neuralir.server.logs import JsonFormatter
from neuralir.v1 import index_service_pb2, index_service_pb2_grpc, search_service_pb2_grpc


@pytest.fixture(scope="module")
def server(
    bi_encoder_dir: Path, cross_encoder_dir: Path, small_index: Path
) -> Iterator[EmbeddedServer]:
    # Stages called over loopback gRPC, as separate processes would be: every stage call is
    # an RPC of its own, which must carry the caller's id.
    settings = server_settings(
        bi_encoder_dir, (("default", cross_encoder_dir),), small_index, local_stages="grpc"
    )
    with embedded(settings) as running:
        yield running


@pytest.fixture
def json_lines() -> Iterator[io.StringIO]:
    """The access log of this process, formatted as the servers format it (JSON)."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    logger = logging.getLogger("neuralir.access")
    old_level = logger.level
    logger.setLevel(logging.INFO)
    logger.addHandler(handler)
    try:
        yield stream
    finally:
        logger.removeHandler(handler)
        logger.setLevel(old_level)


def _entries(stream: io.StringIO, expected: int = 1) -> list[dict]:
    """The JSON lines logged so far, once there are `expected` (an aborted call's status can
    reach the caller a moment before the server's handler has logged it)."""
    deadline = time.monotonic() + 10
    while True:
        lines = [line for line in stream.getvalue().splitlines() if line.strip()]
        if len(lines) >= expected or time.monotonic() > deadline:
            return [json.loads(line) for line in lines]
        time.sleep(0.01)


def test_request_id_travels_to_the_stage_that_failed(
    server: EmbeddedServer, json_lines: io.StringIO
) -> None:
    request_id = "req-7f3a9c-travel"
    request = convert.search_request(
        "library automation", k=3, rerank_depth=3, rerank_model="no-such-model"
    )
    with grpc.insecure_channel(server.address) as channel:
        stub = search_service_pb2_grpc.SearchServiceStub(channel)
        with pytest.raises(grpc.RpcError) as caught:
            stub.Search(request, timeout=30, metadata=(("x-request-id", request_id),))
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    entries = _entries(json_lines, expected=2)
    mine = {e["method"]: e for e in entries if e["request_id"] == request_id}
    # The reranker refused the model: its line carries the id the search service forwarded
    # over gRPC (a separate call, handled in its own task: nothing shared in memory).
    assert set(mine) == {
        "/neuralir.v1.RerankService/Rerank",
        "/neuralir.v1.SearchService/Search",
    }, entries
    for entry in mine.values():
        assert entry["code"] == "INVALID_ARGUMENT"
        assert entry["level"] == "info"
        assert entry["duration_ms"] >= 0
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", entry["ts"])


def test_calls_without_a_request_id_get_one(
    server: EmbeddedServer, json_lines: io.StringIO
) -> None:
    with grpc.insecure_channel(server.address) as channel:
        stub = search_service_pb2_grpc.SearchServiceStub(channel)
        with pytest.raises(grpc.RpcError):
            stub.Search(convert.search_request("q", k=0), timeout=10)
    (entry,) = _entries(json_lines)
    assert re.fullmatch(r"[0-9a-f]{16}", entry["request_id"])


def test_a_server_process_writes_json_lines_with_the_callers_id(
    tmp_path: Path, bi_encoder_dir: Path, small_index: Path
) -> None:
    """`neuralir serve` as users run it: every stderr line is a JSON object."""
    args = [*model_args(bi_encoder_dir, ()), "--index-dir", str(small_index)]
    process = ServerProcess(
        "index", tmp_path, [*args, "--log-format", "json", "--access-log", "all"]
    )
    try:
        process.wait_serving("neuralir.v1.IndexService")
        with grpc.insecure_channel(process.address) as channel:
            stub = index_service_pb2_grpc.IndexServiceStub(channel)
            stub.LexicalSearch(
                index_service_pb2.LexicalSearchRequest(query="computer indexing", k=3),
                timeout=10,
                metadata=(("x-request-id", "proc-req-42"),),
            )
    finally:
        assert process.terminate() == 0
    lines = [line for line in process.log().splitlines() if line.strip()]
    entries = [json.loads(line) for line in lines]  # every line parses
    access = [e for e in entries if e.get("method") == "/neuralir.v1.IndexService/LexicalSearch"]
    assert [(e["request_id"], e["code"]) for e in access] == [("proc-req-42", "OK")]
    assert any(e["msg"] == "settings" for e in entries)
