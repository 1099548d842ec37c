"""Checks a running neural-ir-serve from outside its container, as a user's client would.

Waits for grpc.health.v1 to say SERVING (overall, then each stage's service), sends one hybrid
search with reranking through the real client so the encoder, the index (dense and BM25) and the
reranker all run, and checks that each stage's timing is in the response. Prints one JSON
object (the time to SERVING, the stages' server-side times, the hits) and exits 1 with the
reason when a check fails. Run by deploy/image-test.sh with the host's virtual environment.

    python deploy/image_check.py --target 127.0.0.1:50051 --started-at-ns "$(date +%s%N)"
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import urllib.request
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from neuralir.client import NeuralIRClient
from neuralir.v1 import (
    encoder_service_pb2,
    index_service_pb2,
    rerank_service_pb2,
    search_service_pb2,
)

SERVICES = [
    module.DESCRIPTOR.services_by_name[name].full_name
    for module, name in (
        (encoder_service_pb2, "EncoderService"),
        (index_service_pb2, "IndexService"),
        (rerank_service_pb2, "RerankService"),
        (search_service_pb2, "SearchService"),
    )
]
# Stages a hybrid search with reranking reports (StageTiming.stage).
STAGES = ("encode", "dense", "lexical", "fuse", "rerank", "search")
QUERY = "run a shell command and capture its output"


class CheckFailed(Exception):
    pass


def wait_serving(target: str, timeout_s: float) -> None:
    """Polls the overall health every 50 ms until SERVING, or raises after timeout_s."""
    deadline = time.monotonic() + timeout_s
    last = "no answer"
    with grpc.insecure_channel(target) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        while time.monotonic() < deadline:
            try:
                reply = health.Check(health_pb2.HealthCheckRequest(service=""), timeout=1.0)
                if reply.status == health_pb2.HealthCheckResponse.SERVING:
                    return
                last = health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
            except grpc.RpcError as exc:
                last = f"{exc.code().name}: {exc.details()}"
            time.sleep(0.05)
    raise CheckFailed(f"{target} not SERVING after {timeout_s:.0f} s (last: {last})")


def service_status(target: str) -> dict[str, str]:
    with grpc.insecure_channel(target) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        return {
            name: health_pb2.HealthCheckResponse.ServingStatus.Name(
                health.Check(health_pb2.HealthCheckRequest(service=name), timeout=5.0).status
            )
            for name in SERVICES
        }


def search(target: str, rerank_depth: int, expected_model_id: str) -> dict[str, Any]:
    with NeuralIRClient(target=target, timeout_s=60.0) as client:
        result = client.search(QUERY, k=5, mode="hybrid", rerank_depth=rerank_depth)
    stages = {t.stage: round(t.total_ms, 2) for t in result.timings}
    missing = [s for s in STAGES if s not in stages]
    if missing:
        raise CheckFailed(f"stages missing from the response's timings: {missing} (got {stages})")
    if not result.hits:
        raise CheckFailed("the search returned no hits")
    unreranked = [h.doc_id for h in result.hits if h.rerank_score is None]
    if unreranked:
        raise CheckFailed(f"hits without a rerank score: {unreranked}")
    if expected_model_id and result.encoder_model_id != expected_model_id:
        raise CheckFailed(
            f"encoder model {result.encoder_model_id!r}, expected {expected_model_id!r}"
        )
    return {
        "query": QUERY,
        "stages_ms": stages,
        "encoder_model_id": result.encoder_model_id,
        "rerank_model_id": result.rerank_model_id,
        "hits": [h.doc_id for h in result.hits],
    }


def scrape(metrics_url: str) -> int:
    """The number of lines of the Prometheus endpoint that count RPCs."""
    with urllib.request.urlopen(metrics_url, timeout=5) as response:
        text = response.read().decode()
    rpc_lines = [line for line in text.splitlines() if line.startswith("neuralir_rpc_requests")]
    if not rpc_lines:
        raise CheckFailed(f"{metrics_url} has no neuralir_rpc_requests_total samples")
    return len(rpc_lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--target", required=True, help="host:port of the search service")
    parser.add_argument(
        "--started-at-ns",
        type=int,
        default=0,
        help="wall-clock time (date +%%s%%N) the container was started; 0: do not report it",
    )
    parser.add_argument("--timeout", type=float, default=180.0, help="seconds to wait for SERVING")
    parser.add_argument("--rerank-depth", type=int, default=20)
    parser.add_argument("--encoder-model-id", default="", help="the model id the image serves")
    parser.add_argument("--metrics-url", default="", help="also check this /metrics endpoint")
    args = parser.parse_args(argv)
    report: dict[str, Any] = {"target": args.target}
    try:
        wait_serving(args.target, args.timeout)
        if args.started_at_ns:
            # Wall clock, not perf_counter: the start was stamped by another process.
            report["start_to_serving_s"] = round((time.time_ns() - args.started_at_ns) / 1e9, 2)
        report["services"] = service_status(args.target)
        not_serving = {k: v for k, v in report["services"].items() if v != "SERVING"}
        if not_serving:
            raise CheckFailed(f"services not SERVING: {not_serving}")
        report["search"] = search(args.target, args.rerank_depth, args.encoder_model_id)
        if args.metrics_url:
            report["metrics_rpc_lines"] = scrape(args.metrics_url)
    except (CheckFailed, grpc.RpcError, OSError) as exc:
        report["error"] = str(exc)
        print(json.dumps(report, indent=2))
        print(f"FAIL: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
