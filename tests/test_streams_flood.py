"""Many in-flight calls on ONE connection (issue 17, finding 3): every call is answered OK or
RESOURCE_EXHAUSTED with google.rpc.RetryInfo - never CANCELLED (gRPC core dropping calls
grpc.aio had not accepted yet) nor UNAVAILABLE (HTTP/2 streams refused) - and the calls the
in-flight cap shed are counted in the metrics.

The rerank stage serves alone as its own process, on one thread: a flood of one-passage
reranks piles up in flight (a fast RPC such as BM25 search never does: grpc.aio accepts calls
one at a time, slower than the index answers them). Loopback only.
"""

from __future__ import annotations

import asyncio
import collections
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from google.rpc import error_details_pb2
from grpc_status import rpc_status
from reliability import metrics_port_from_log, scrape
from servers import ServerProcess

from neuralir.server.app import SERVICE_NAMES
from neuralir.v1 import rerank_service_pb2, rerank_service_pb2_grpc

FLOOD_CALLS = 5000
MAX_IN_FLIGHT = 200  # far below the flood, so the cap is reached and sheds
TIMEOUT_S = 120.0
QUERIES = ["library automation", "indexing of documents", "information retrieval systems"]
PASSAGES = [
    "automatic indexing of scientific papers by computer",
    "library circulation systems with punched cards",
    "evaluation of retrieval systems by recall and precision",
]


@pytest.fixture(scope="module")
def rerank_server(
    tmp_path_factory: pytest.TempPathFactory, cross_encoder_dir: Path
) -> Iterator[ServerProcess]:
    args = [
        "--rerank-model", f"default={cross_encoder_dir}", "--rerank-threads", "1",
        "--metrics-port", "0", "--max-in-flight-rpcs", str(MAX_IN_FLIGHT),
    ]  # fmt: skip
    process = ServerProcess("rerank", tmp_path_factory.mktemp("flood"), args)
    try:
        process.wait_serving(SERVICE_NAMES["rerank"])
        yield process
    finally:
        process.terminate()


def retry_delay_s(error: grpc.aio.AioRpcError) -> float | None:
    """The google.rpc.RetryInfo delay in an error's grpc-status-details-bin (None: absent)."""
    status = rpc_status.from_call(error)  # type: ignore[arg-type]
    for detail in status.details if status is not None else ():
        if detail.Is(error_details_pb2.RetryInfo.DESCRIPTOR):
            info = error_details_pb2.RetryInfo()
            detail.Unpack(info)
            return float(info.retry_delay.ToTimedelta().total_seconds())
    return None


async def _flood(address: str, calls: int) -> tuple[collections.Counter[str], list[float | None]]:
    """`calls` one-passage Rerank calls at once over one channel (one HTTP/2 connection)."""
    async with grpc.aio.insecure_channel(address) as channel:
        await channel.channel_ready()
        stub = rerank_service_pb2_grpc.RerankServiceStub(channel)
        delays: list[float | None] = []

        async def one(i: int) -> str:
            passage = rerank_service_pb2.Passage(id="p", text=PASSAGES[i % 3])
            request = rerank_service_pb2.RerankRequest(query=QUERIES[i % 3], passages=[passage])
            try:
                await stub.Rerank(request, timeout=TIMEOUT_S)
            except grpc.aio.AioRpcError as error:
                if error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED:
                    delays.append(retry_delay_s(error))
                return f"{error.code().name}: {error.details()}"[:60]
            return "OK"

        codes = collections.Counter(await asyncio.gather(*(one(i) for i in range(calls))))
        return codes, delays


@pytest.mark.slow
def test_a_flood_on_one_connection_is_answered_ok_or_shed_with_retry_info(
    rerank_server: ServerProcess,
) -> None:
    metrics_port = metrics_port_from_log(rerank_server.log)
    shed_metric = "neuralir_rpc_shed_requests_total"
    labels = {"service": SERVICE_NAMES["rerank"], "method": "Rerank"}
    counted_before = scrape(metrics_port, shed_metric, labels)
    started = time.monotonic()
    codes, delays = asyncio.run(_flood(rerank_server.address, FLOOD_CALLS))
    elapsed = time.monotonic() - started
    print(f"{FLOOD_CALLS} calls on one connection in {elapsed:.1f} s: {dict(codes)}")
    shed = sum(n for code, n in codes.items() if code.startswith("RESOURCE_EXHAUSTED"))
    assert codes["OK"] + shed == FLOOD_CALLS, codes
    assert codes["OK"] >= MAX_IN_FLIGHT, codes
    assert shed > 0, f"nothing shed: the flood never reached {MAX_IN_FLIGHT} in flight"
    assert all(d is not None and d > 0 for d in delays), "a shed answer without RetryInfo"
    assert elapsed < TIMEOUT_S  # bounded: nothing waited for its deadline
    counted = scrape(metrics_port, shed_metric, labels) - counted_before
    assert counted == shed, (counted, shed)
