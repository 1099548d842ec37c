"""Soak: mixed valid and invalid traffic against every service of one `serve all` process for a
bounded time; reports requests served, answers by status code, and the server's resident
memory, and checks memory growth after warm-up stays under a few percent.

Warm-up first sends the largest model batches this traffic can form (4 callers: 16 texts,
16 long passages), because ONNX Runtime's arena keeps its peak: memory grows in steps until
the largest shape has been seen, then stays flat. (One 64-item batch of 256-token inputs, the
model's chunk limit, adds ~0.5 GiB per model; see docs/operating.md.)

Bounded by NEURALIR_SOAK_SECONDS (measured part, default 75) after a warm-up of
NEURALIR_SOAK_WARMUP_SECONDS (default 10); NEURALIR_SOAK_REPORT names a JSON file to write the
report to (it is always printed).
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import json
import os
import random
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from reliability import RPCS, rss_bytes
from servers import ServerProcess, model_args

from neuralir.server.app import SERVICE_NAMES
from neuralir.v1 import (
    encoder_service_pb2,
    index_service_pb2,
    rerank_service_pb2,
    search_service_pb2,
)
from neuralir.v1.limits import MAX_QUERY_CHARS

SOAK_S = float(os.environ.get("NEURALIR_SOAK_SECONDS", "75"))
WARMUP_S = float(os.environ.get("NEURALIR_SOAK_WARMUP_SECONDS", "10"))
WORKERS = 4
MAX_GROWTH = 0.05  # of the RSS after warm-up

WORDS = [
    "information",
    "retrieval",
    "library",
    "computer",
    "indexing",
    "documents",
    "automatic",
    "system",
    "catalog",
    "search",
    "citation",
    "thesaurus",
    "evaluation",
    "language",
    "analysis",
    "storage",
]
S = search_service_pb2.SearchRequest


@dataclasses.dataclass(frozen=True)
class Traffic:
    name: str  # a label for the report
    rpc: str  # key of RPCS, or "Health"
    expected: str  # the status code this request must get
    build: Callable[[random.Random], Any]  # request message or raw bytes


def _query(rng: random.Random) -> str:
    return " ".join(rng.choices(WORDS, k=rng.randint(1, 6)))


def _traffic(dim: int) -> list[tuple[Traffic, int]]:
    """(kind of request, weight): about one request in six is invalid."""
    rerank, index, encoder = rerank_service_pb2, index_service_pb2, encoder_service_pb2

    def vector(rng: random.Random, bad: bool = False) -> bytes:
        values = np.random.default_rng(rng.getrandbits(32)).standard_normal(dim)
        if bad:
            values[0] = np.nan
        return values.astype("<f4").tobytes()

    def passages(rng: random.Random, ids: str = "abc") -> list[Any]:
        return [rerank.Passage(id=i, text=f"{_query(rng)} {_query(rng)}") for i in ids]

    def search(r: random.Random) -> Any:
        return S(query=_query(r), k=r.randint(1, 20), mode=r.randint(0, 3))

    def search_rerank(r: random.Random) -> Any:
        return S(query=_query(r), k=5, rerank_depth=r.randint(1, 3), snippet_chars=80)

    def batch(r: random.Random) -> Any:
        return search_service_pb2.BatchSearchRequest(requests=[search(r), search(r)])

    def encode(r: random.Random) -> Any:
        return encoder.EncodeRequest(texts=[_query(r) for _ in range(r.randint(1, 4))])

    def rerank_call(r: random.Random, ids: str = "abc") -> Any:
        return rerank.RerankRequest(query=_query(r), passages=passages(r, ids))

    def dense(r: random.Random, bad: bool = False) -> Any:
        return index.IndexServiceSearchRequest(vector=vector(r, bad), dimension=dim, k=10)

    def lexical(r: random.Random, k: int = 10) -> Any:
        return index.LexicalSearchRequest(query=_query(r), k=k)

    def documents(r: random.Random) -> Any:
        return index.GetDocumentsRequest(doc_ids=[str(r.randint(1, 90)) for _ in range(5)])

    ok, bad = "OK", "INVALID_ARGUMENT"
    return [
        (Traffic("search", "Search", ok, search), 6),
        (Traffic("search+rerank", "Search", ok, search_rerank), 3),
        (Traffic("batch-search", "BatchSearch", ok, batch), 2),
        (Traffic("encode", "Encode", ok, encode), 4),
        (Traffic("rerank", "Rerank", ok, rerank_call), 2),
        (Traffic("index-search", "IndexSearch", ok, dense), 3),
        (Traffic("lexical", "LexicalSearch", ok, lexical), 3),
        (Traffic("documents", "GetDocuments", ok, documents), 2),
        (Traffic("describe", "Describe", ok, lambda r: index.DescribeRequest()), 1),
        (Traffic("health", "Health", ok, lambda r: health_pb2.HealthCheckRequest()), 1),
        (Traffic("bad:empty-query", "Search", bad, lambda r: S(query=" ", k=3)), 2),
        (Traffic("bad:unknown-mode", "Search", bad, lambda r: S(query="x", k=3, mode=9)), 1),
        (Traffic("bad:k", "LexicalSearch", bad, lambda r: lexical(r, r.choice([0, -5, 5000]))), 1),
        (Traffic("bad:nan-vector", "IndexSearch", bad, lambda r: dense(r, bad=True)), 1),
        (Traffic("bad:duplicate-ids", "Rerank", bad, lambda r: rerank_call(r, "aba")), 1),
        (
            Traffic(
                "bad:too-long",
                "Encode",
                bad,
                lambda r: encoder.EncodeRequest(texts=["x" * (MAX_QUERY_CHARS + 1)]),
            ),
            1,
        ),
        (
            Traffic(
                "bad:garbage", "Search", bad, lambda r: b"\xff" + r.randbytes(r.randint(0, 40))
            ),
            1,
        ),
    ]


def _serialize(message: Any) -> bytes:
    return message if isinstance(message, bytes) else bytes(message.SerializeToString())


@dataclasses.dataclass
class Tally:
    served: collections.Counter[str] = dataclasses.field(default_factory=collections.Counter)
    codes: collections.Counter[str] = dataclasses.field(default_factory=collections.Counter)
    unexpected: list[tuple[str, str, str]] = dataclasses.field(default_factory=list)


async def _run(address: str, dimension: int, seconds: float, tally: Tally, seed: int) -> None:
    traffic = _traffic(dimension)
    kinds = [t for t, _ in traffic]
    weights = [w for _, w in traffic]
    stop_at = time.monotonic() + seconds
    channels = [
        grpc.aio.insecure_channel(address, options=[("grpc.use_local_subchannel_pool", 1)])
        for _ in range(2)
    ]

    async def worker(index: int) -> None:
        rng = random.Random(seed * 100 + index)
        channel = channels[index % len(channels)]
        health = health_pb2_grpc.HealthStub(channel)
        while time.monotonic() < stop_at:
            kind = rng.choices(kinds, weights)[0]
            request = kind.build(rng)
            try:
                if kind.rpc == "Health":
                    await health.Check(request, timeout=30)
                else:
                    path, _, response = RPCS[kind.rpc]
                    call = channel.unary_unary(
                        path,
                        request_serializer=_serialize,
                        response_deserializer=response.FromString,
                    )
                    await call(request, timeout=30)
                code = "OK"
            except grpc.aio.AioRpcError as error:
                code = error.code().name
                if code != kind.expected:
                    tally.unexpected.append((kind.name, code, error.details() or ""))
            tally.codes[code] += 1
            tally.served[kind.name] += 1
            await asyncio.sleep(0.005)  # leave the shared cores some air

    try:
        await asyncio.gather(*(worker(i) for i in range(WORKERS)))
    finally:
        for channel in channels:
            await channel.close()


def _largest_batches(address: str) -> None:
    """One encoder and one reranker batch as large as this traffic can form, long texts."""
    long = "information retrieval systems for technical libraries and documentation " * 40
    size = WORKERS * 4
    with grpc.insecure_channel(address) as channel:
        encode = channel.unary_unary(
            RPCS["Encode"][0], request_serializer=_serialize, response_deserializer=None
        )
        encode(encoder_service_pb2.EncodeRequest(texts=[long[:8000]] * size), timeout=120)
        rerank = channel.unary_unary(
            RPCS["Rerank"][0], request_serializer=_serialize, response_deserializer=None
        )
        passages = [rerank_service_pb2.Passage(id=str(i), text=long) for i in range(size)]
        rerank(rerank_service_pb2.RerankRequest(query="library", passages=passages), timeout=120)


@pytest.mark.slow
def test_soak_mixed_traffic_keeps_serving_with_flat_memory(
    tmp_path: Path, bi_encoder_dir: Path, cross_encoder_dir: Path, small_index: Path
) -> None:
    args = [
        *model_args(bi_encoder_dir, (("default", cross_encoder_dir),)),
        "--index-dir", str(small_index),
    ]  # fmt: skip
    process = ServerProcess("all", tmp_path, args)
    try:
        process.wait_serving(SERVICE_NAMES["search"])
        pid = process.process.pid
        with grpc.insecure_channel(process.address) as channel:
            describe = channel.unary_unary(
                RPCS["Describe"][0], response_deserializer=RPCS["Describe"][2].FromString
            )
            dimension = describe(b"", timeout=30).dimension
        rss_start = rss_bytes(pid)
        _largest_batches(process.address)
        warmup = Tally()
        asyncio.run(_run(process.address, dimension, WARMUP_S, warmup, seed=1))
        rss_warm = rss_bytes(pid)
        tally, samples = Tally(), []
        started = time.monotonic()
        slices = max(1, round(SOAK_S / 15))
        for i in range(slices):  # in slices, to sample memory along the way
            asyncio.run(_run(process.address, dimension, SOAK_S / slices, tally, seed=2 + i))
            samples.append(round(rss_bytes(pid) / (1 << 20), 1))
        elapsed = time.monotonic() - started
        rss_end = rss_bytes(pid)
        exit_code = process.terminate()
    finally:
        process.kill()

    mib = 1 << 20
    growth = (rss_end - rss_warm) / rss_warm
    report = {
        "seconds": round(elapsed, 1),
        "warmup_seconds": WARMUP_S,
        "requests": sum(tally.served.values()),
        "requests_per_second": round(sum(tally.served.values()) / elapsed, 1),
        "requests_by_kind": dict(sorted(tally.served.items())),
        "answers_by_code": dict(sorted(tally.codes.items())),
        "unexpected": tally.unexpected[:20] + warmup.unexpected[:20],
        "rss_mib": {
            "start": round(rss_start / mib, 1),
            "after_warmup": round(rss_warm / mib, 1),
            "samples": samples,
            "end": round(rss_end / mib, 1),
        },
        "growth_after_warmup": round(growth, 4),
        "exit_code": exit_code,
    }
    print("soak report:", json.dumps(report, indent=1))
    if os.environ.get("NEURALIR_SOAK_REPORT"):
        Path(os.environ["NEURALIR_SOAK_REPORT"]).write_text(json.dumps(report, indent=1))

    assert not report["unexpected"], report["unexpected"]
    assert tally.codes["OK"] > 0
    assert tally.codes["INVALID_ARGUMENT"] > 0
    assert set(tally.served) == {t.name for t, _ in _traffic(dimension)}  # every kind was sent
    assert growth < MAX_GROWTH, f"RSS grew {growth:.1%} after warm-up: {report['rss_mib']}"
    assert exit_code == 0, process.log()
