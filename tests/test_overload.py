"""Overload: every batching queue is bounded; past its bound a request is refused at once with
RESOURCE_EXHAUSTED (load shedding) instead of waiting for its deadline. Accepted requests
complete correctly, the server's memory stays bounded, and after the flood a normal request
is as fast as before.

The server runs as its own process (its memory is measured alone) with small queues, and with
the fp32 models: int8 activations are quantized per batch, so only fp32 scores let a test
check that each caller of a mixed batch got exactly its own results.
"""

from __future__ import annotations

import asyncio
import dataclasses
import statistics
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
from reliability import metrics_port_from_log, rpc, rss_bytes, scrape
from servers import ServerProcess, start_serving

from neuralir.v1 import (
    encoder_service_pb2,
    encoder_service_pb2_grpc,
    rerank_service_pb2,
    rerank_service_pb2_grpc,
)

RERANK_QUEUE_ITEMS = 32
ENCODER_QUEUE_ITEMS = 16
FLOOD_CALLS = 400  # over 4 connections: far past either queue
CONNECTIONS = 4
ROUNDS = 4  # the first grows the model's arena; the others must not grow memory
TIMEOUT_S = 60.0

QUERIES = ["computer information retrieval", "library automation", "indexing of documents"]
TEXTS = [
    f"document {i}: " + " ".join(words)
    for i, words in enumerate(
        [
            ["automatic", "indexing", "of", "scientific", "papers"] * 6,
            ["library", "circulation", "systems", "with", "punched", "cards"] * 5,
            ["information", "retrieval", "evaluation", "recall", "precision"] * 6,
            ["machine", "translation", "and", "linguistic", "analysis"] * 6,
            ["thesaurus", "construction", "for", "technical", "vocabularies"] * 6,
            ["citation", "indexing", "in", "the", "sciences"] * 6,
            ["microfilm", "storage", "of", "engineering", "drawings"] * 6,
            ["online", "catalog", "search", "by", "subject", "headings"] * 5,
        ]
    )
]


def _start(workdir: Path, stage: str, args: list[str]) -> ServerProcess:
    return start_serving(stage, workdir, [*args, "--metrics-port", "0"])


@pytest.fixture(scope="module")
def rerank_server(
    tmp_path_factory: pytest.TempPathFactory, fp32_cross_encoder_dir: Path
) -> Iterator[ServerProcess]:
    args = [
        "--rerank-model", f"default={fp32_cross_encoder_dir}", "--rerank-threads", "1",
        "--rerank-queue", str(RERANK_QUEUE_ITEMS), "--rerank-max-batch", "8",
    ]  # fmt: skip
    process = _start(tmp_path_factory.mktemp("overload"), "rerank", args)
    yield process
    process.terminate()


@pytest.fixture(scope="module")
def encoder_server(
    tmp_path_factory: pytest.TempPathFactory, fp32_bi_encoder_dir: Path
) -> Iterator[ServerProcess]:
    args = [
        "--encoder-model", str(fp32_bi_encoder_dir), "--encoder-threads", "1",
        "--encoder-queue", str(ENCODER_QUEUE_ITEMS), "--encoder-max-batch", "8",
    ]  # fmt: skip
    process = _start(tmp_path_factory.mktemp("overload"), "encoder", args)
    yield process
    process.terminate()


class PeakRss:
    """Samples a process's resident memory every 20 ms while in use."""

    def __init__(self, pid: int) -> None:
        self._pid = pid
        self.peak = rss_bytes(pid)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(0.02):
            self.peak = max(self.peak, rss_bytes(self._pid))

    def __enter__(self) -> PeakRss:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


@dataclasses.dataclass
class Answer:
    index: int  # which flood call
    code: str
    details: str
    seconds: float
    response: Any


async def _flood(
    address: str, build: Any, method: str, calls: int, connections: int = CONNECTIONS
) -> list[Answer]:
    """`calls` concurrent calls spread over `connections` channels, all started at once."""
    # A subchannel pool of its own gives each channel its own connection.
    options = [("grpc.use_local_subchannel_pool", 1)]
    channels = [grpc.aio.insecure_channel(address, options=options) for _ in range(connections)]
    try:
        stubs = [
            getattr(
                rerank_service_pb2_grpc.RerankServiceStub(c)
                if method == "Rerank"
                else encoder_service_pb2_grpc.EncoderServiceStub(c),
                method,
            )
            for c in channels
        ]

        async def one(index: int) -> Answer:
            started = time.perf_counter()
            try:
                response = await stubs[index % connections](build(index), timeout=TIMEOUT_S)
                code, details = "OK", ""
            except grpc.aio.AioRpcError as error:
                response, code, details = None, error.code().name, error.details() or ""
            return Answer(index, code, details, time.perf_counter() - started, response)

        return list(await asyncio.gather(*(one(i) for i in range(calls))))
    finally:
        for channel in channels:
            await channel.close()


# Passages of ~8 KB (the model reads their first 256 tokens): a flood carries ~13 MB, so
# memory held per queued request shows.
PASSAGES = [(text + " ") * (8000 // (len(text) + 1)) for text in TEXTS]


def _passage(i: int) -> Any:
    return rerank_service_pb2.Passage(id=f"t{i}", text=PASSAGES[i])


def _rerank_request(index: int) -> Any:
    chosen = [(index + j) % len(PASSAGES) for j in range(4)]
    return rerank_service_pb2.RerankRequest(
        query=QUERIES[index % len(QUERIES)], passages=[_passage(i) for i in chosen]
    )


def _median_latency_s(call: Any, request: Any, times: int = 5) -> tuple[float, Any]:
    seconds, response = [], None
    for _ in range(times):
        started = time.perf_counter()
        response = call(request, timeout=TIMEOUT_S)
        seconds.append(time.perf_counter() - started)
    return statistics.median(seconds), response


def _check_shedding(answers: list[Answer], queue: str) -> tuple[list[Answer], list[Answer]]:
    unexpected = [a for a in answers if a.code not in ("OK", "RESOURCE_EXHAUSTED")]
    assert not unexpected, unexpected[:3]
    accepted = [a for a in answers if a.code == "OK"]
    shed = [a for a in answers if a.code == "RESOURCE_EXHAUSTED"]
    assert shed, "nothing was shed: the flood never filled the queue"
    assert accepted, "nothing was accepted"
    assert all("queue is full" in a.details and queue in a.details for a in shed), shed[0]
    # Refused at once: far sooner than the deadline the callers set.
    slowest = max(a.seconds for a in shed)
    assert slowest < TIMEOUT_S / 10, f"a shed call took {slowest:.2f} s"
    return accepted, shed


@pytest.mark.slow
def test_reranker_flood_sheds_excess_serves_the_rest_and_recovers(
    rerank_server: ServerProcess,
) -> None:
    server, stage = rerank_server, {"stage": "rerank:default"}
    metrics_port = metrics_port_from_log(server.log)
    with grpc.insecure_channel(server.address) as channel:
        rerank = rpc(channel, "Rerank")
        # Reference scores, each (query, passage) pair scored alone.
        reference = {
            (q, f"t{i}"): rerank(
                rerank_service_pb2.RerankRequest(query=q, passages=[_passage(i)]),
                timeout=TIMEOUT_S,
            )
            .passages[0]
            .cross_encoder_score
            for q in QUERIES
            for i in range(len(PASSAGES))
        }
        normal = _rerank_request(0)
        latency_before, _ = _median_latency_s(rerank, normal)
        shed_before = scrape(metrics_port, "neuralir_shed_requests_total", stage)
        rss_start = rss_bytes(server.process.pid)

        shed_total, rss_after_round = 0, []
        with PeakRss(server.process.pid) as peak:
            for _ in range(ROUNDS):
                answers = asyncio.run(
                    _flood(server.address, _rerank_request, "Rerank", FLOOD_CALLS)
                )
                accepted, shed = _check_shedding(answers, "rerank")
                shed_total += len(shed)
                for answer in accepted:  # each caller got its own passages, correctly scored
                    request = _rerank_request(answer.index)
                    got = answer.response.passages
                    assert sorted(p.id for p in got) == sorted(p.id for p in request.passages)
                    assert [p.rank for p in got] == [1, 2, 3, 4]
                    for passage in got:
                        expected = reference[(request.query, passage.id)]
                        assert passage.cross_encoder_score == pytest.approx(expected, abs=1e-3)
                rss_after_round.append(rss_bytes(server.process.pid))

        # The server counted every refusal the callers saw, and nothing is left queued.
        shed_counted = scrape(metrics_port, "neuralir_shed_requests_total", stage) - shed_before
        assert shed_counted == shed_total
        assert scrape(metrics_port, "neuralir_queue_depth_items", stage) == 0
        # Memory is bounded by the queue, not by the flood: the first flood grows the model's
        # arena to a full batch; later floods add nothing beyond allocator noise (~25 MiB here).
        mib = 1 << 20
        warm = rss_after_round[0]
        growth = max(rss_after_round[1:]) - warm
        assert growth < max(0.10 * warm, 48 * mib), (
            f"RSS grew {growth / mib:.1f} MiB after the first flood: {rss_after_round}"
        )
        assert peak.peak - rss_start < 384 * mib, f"peak +{(peak.peak - rss_start) / mib:.0f} MiB"

        latency_after, response = _median_latency_s(rerank, normal)
        assert len(response.passages) == 4
        print(
            f"rerank flood: {ROUNDS * FLOOD_CALLS} calls, {shed_total} shed; RSS start "
            f"{rss_start / mib:.0f} MiB, after floods {[round(r / mib) for r in rss_after_round]}"
            f" MiB, peak {peak.peak / mib:.0f} MiB; normal call {latency_before * 1e3:.0f} ms "
            f"before, {latency_after * 1e3:.0f} ms after"
        )
        # Back to normal: no backlog left (generous bound for a shared machine).
        assert latency_after < 2 * latency_before + 0.05, (latency_before, latency_after)


def _encode_request(index: int) -> Any:
    return encoder_service_pb2.EncodeRequest(
        texts=[TEXTS[(index + j) % len(TEXTS)] for j in range(4)]
    )


@pytest.mark.slow
def test_encoder_flood_sheds_excess_and_serves_the_rest_correctly(
    encoder_server: ServerProcess,
) -> None:
    server, stage = encoder_server, {"stage": "encoder"}
    metrics_port = metrics_port_from_log(server.log)
    with grpc.insecure_channel(server.address) as channel:
        encode = rpc(channel, "Encode")
        alone = encode(encoder_service_pb2.EncodeRequest(texts=TEXTS), timeout=TIMEOUT_S)
        dim = alone.dimension
        reference = np.frombuffer(alone.embeddings, dtype="<f4").reshape(len(TEXTS), dim)
        shed_before = scrape(metrics_port, "neuralir_shed_requests_total", stage)
        answers = asyncio.run(_flood(server.address, _encode_request, "Encode", FLOOD_CALLS))
        accepted, shed = _check_shedding(answers, "encoder")
        for answer in accepted:
            got = np.frombuffer(answer.response.embeddings, dtype="<f4").reshape(4, dim)
            rows = [(answer.index + j) % len(TEXTS) for j in range(4)]
            np.testing.assert_allclose(got, reference[rows], atol=1e-4)
        shed_counted = scrape(metrics_port, "neuralir_shed_requests_total", stage) - shed_before
        assert shed_counted == len(shed)
        assert scrape(metrics_port, "neuralir_queue_depth_items", stage) == 0
        # Still serving normally.
        assert encode(_encode_request(0), timeout=TIMEOUT_S).dimension == dim


@pytest.mark.slow
def test_a_flood_on_one_connection_is_shed_by_the_queue_not_refused_by_grpc(
    encoder_server: ServerProcess,
) -> None:
    """Past gRPC's streams-per-connection limit the server would refuse streams (UNAVAILABLE,
    "Stream removed"); the default limit sits above the queue, so the queue sheds first."""
    calls = 600  # more than the previous default limit of 256 streams, on a single connection
    answers = asyncio.run(_flood(encoder_server.address, _encode_request, "Encode", calls, 1))
    accepted, shed = _check_shedding(answers, "encoder")
    assert len(accepted) + len(shed) == calls
