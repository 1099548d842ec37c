"""Calls the load generators make over gRPC, each returning the server's StageTiming.

The project's asyncio client is used where it returns the server timings (encode, rerank,
search); index calls go through the generated aio stubs on the same channel, because the
client's index_search/lexical_search drop the response's StageTiming.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import numpy as np
from grpc_health.v1 import health_pb2, health_pb2_grpc

from neuralir.benchmarks.loadgen import AsyncCall, CallReport
from neuralir.client import AsyncNeuralIRClient, ClientSettings
from neuralir.client.convert import stage_time
from neuralir.v1 import index_service_pb2, index_service_pb2_grpc

CALL_TIMEOUT_S = 60.0


async def connect(address: str) -> AsyncNeuralIRClient:
    """A client whose channel is connected before any timing starts (no retries: a failed
    call is counted as an error, not hidden)."""
    client = AsyncNeuralIRClient(
        ClientSettings(target=address, timeout_s=CALL_TIMEOUT_S, max_attempts=1)
    )
    await client.channel.channel_ready()
    return client


def encode_call(client: AsyncNeuralIRClient, batches: Sequence[list[str]]) -> AsyncCall:
    cycle = itertools.cycle(batches)

    async def call() -> CallReport:
        texts = next(cycle)
        result = await client.encode(texts, "query")
        return CallReport(items=len(texts), stages=(result.timing,))

    return call


def health_call(client: AsyncNeuralIRClient) -> AsyncCall:
    """The cheapest RPC the server has: the floor of one Python gRPC round trip."""
    stub = health_pb2_grpc.HealthStub(client.channel)
    request = health_pb2.HealthCheckRequest(service="")

    async def call() -> CallReport:
        await stub.Check(request, timeout=CALL_TIMEOUT_S)
        return CallReport()

    return call


def dense_call(
    client: AsyncNeuralIRClient, vectors: np.ndarray, k: int = 10, ef: int = 0
) -> AsyncCall:
    stub = index_service_pb2_grpc.IndexServiceStub(client.channel)
    requests = [
        index_service_pb2.IndexServiceSearchRequest(
            vector=np.ascontiguousarray(v, dtype="<f4").tobytes(), dimension=v.shape[0], k=k, ef=ef
        )
        for v in vectors
    ]
    cycle = itertools.cycle(requests)

    async def call() -> CallReport:
        response = await stub.Search(next(cycle), timeout=CALL_TIMEOUT_S)
        return CallReport(stages=(stage_time(response.timing),))

    return call


def lexical_call(client: AsyncNeuralIRClient, queries: Sequence[str], k: int = 10) -> AsyncCall:
    stub = index_service_pb2_grpc.IndexServiceStub(client.channel)
    cycle = itertools.cycle([index_service_pb2.LexicalSearchRequest(query=q, k=k) for q in queries])

    async def call() -> CallReport:
        response = await stub.LexicalSearch(next(cycle), timeout=CALL_TIMEOUT_S)
        return CallReport(stages=(stage_time(response.timing),))

    return call


def rerank_call(client: AsyncNeuralIRClient, sets: Sequence[tuple[str, list[str]]]) -> AsyncCall:
    cycle = itertools.cycle(sets)

    async def call() -> CallReport:
        query, passages = next(cycle)
        result = await client.rerank(query, [(f"p{i}", text) for i, text in enumerate(passages)])
        return CallReport(items=len(passages), stages=(result.timing,))

    return call


def search_call(
    client: AsyncNeuralIRClient, queries: Sequence[str], mode: str, rerank_depth: int, k: int = 10
) -> AsyncCall:
    cycle = itertools.cycle(queries)

    async def call() -> CallReport:
        result = await client.search(
            next(cycle), k=k, mode=mode, rerank_depth=rerank_depth, snippet_chars=0
        )
        return CallReport(stages=tuple(result.timings))

    return call
