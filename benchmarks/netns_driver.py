"""A client that runs inside a network namespace and answers JSON requests, one per line.

    ip netns exec NS python -m neuralir.benchmarks.netns_driver

Requests (stdin) and replies (stdout) are single JSON lines:
    {"op": "wait_serving", "target": "10.213.0.11:50051", "service": "...", "timeout_s": 60}
    {"op": "search", "target": ..., "queries": [...], "options": {"k": 10, "mode": "dense"}}
    {"op": "metrics", "url": "http://10.213.0.12:9100/metrics"}
    {"op": "load", "target": ..., "queries": [...], "options": {...}, "concurrency": 4,
     "duration_s": 5, "warmup_s": 1}
A failed request answers {"exception": "..."}; a failed search answers its status code.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import sys
import time
import urllib.request
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from neuralir.benchmarks.loadgen import CallReport, closed_loop
from neuralir.client import convert
from neuralir.v1 import search_service_pb2_grpc


def wait_serving(target: str, service: str = "", timeout_s: float = 60.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    with grpc.insecure_channel(target) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        while True:
            try:
                reply = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=1.0)
                if reply.status == health_pb2.HealthCheckResponse.SERVING:
                    return {"serving": True, "waited_s": timeout_s - (deadline - time.monotonic())}
            except grpc.RpcError:
                pass
            if time.monotonic() > deadline:
                return {"serving": False}
            time.sleep(0.1)


def search(
    target: str, queries: list[str], options: dict[str, Any], timeout_s: float = 30.0
) -> dict[str, Any]:
    """Each query's hits, partial flag and missing shards, or its error status."""
    results = []
    with grpc.insecure_channel(target) as channel:
        stub = search_service_pb2_grpc.SearchServiceStub(channel)
        for query in queries:
            try:
                reply = stub.Search(convert.search_request(query, **options), timeout=timeout_s)
            except grpc.RpcError as exc:
                results.append({"code": exc.code().name, "details": exc.details()})
                continue
            results.append(
                {
                    "code": "OK",
                    "hits": [[h.doc_id, h.score, h.title] for h in reply.hits],
                    "partial": reply.partial,
                    "unavailable_shards": list(reply.unavailable_shards),
                }
            )
    return {"results": results}


def metrics(url: str) -> dict[str, Any]:
    with urllib.request.urlopen(url, timeout=10) as reply:
        return {"text": reply.read().decode()}


async def _load(
    target: str,
    queries: list[str],
    options: dict[str, Any],
    concurrency: int,
    duration_s: float,
    warmup_s: float,
) -> dict[str, Any]:
    """Closed loop: `concurrency` callers on one channel, as the benchmark's other scenarios."""
    requests = itertools.cycle([convert.search_request(q, **options) for q in queries])
    async with grpc.aio.insecure_channel(target) as channel:
        stub = search_service_pb2_grpc.SearchServiceStub(channel)
        await asyncio.wait_for(channel.channel_ready(), 30)

        async def call() -> CallReport:
            reply = await stub.Search(next(requests), timeout=30)
            return CallReport(stages=[convert.stage_time(t) for t in reply.timings])

        result = await closed_loop(call, concurrency, duration_s, warmup_s)
    return {
        "requests": result.requests,
        "errors": result.errors,
        "elapsed_s": round(result.elapsed_s, 3),
        "throughput_rps": round(result.throughput_rps, 2),
        "latency_ms": result.latency.summary(),
        "server_ms": result.server_summary(),
    }


def handle(request: dict[str, Any]) -> dict[str, Any]:
    op = request.pop("op")
    if op == "wait_serving":
        return wait_serving(**request)
    if op == "search":
        return search(**request)
    if op == "metrics":
        return metrics(**request)
    if op == "load":
        return asyncio.run(_load(**request))
    raise ValueError(f"unknown op {op!r}")


def main() -> int:
    for line in sys.stdin:
        if not line.strip():
            continue
        try:
            reply = handle(json.loads(line))
        except Exception as exc:  # the caller gets the failure, the driver stays up
            reply = {"exception": f"{type(exc).__name__}: {exc}"}
        sys.stdout.write(json.dumps(reply) + "\n")
        sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
