"""Sync and asyncio clients over the generated stubs, with deadlines and retries as settings."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import grpc
import numpy as np
from grpc_health.v1 import health_pb2, health_pb2_grpc

from neuralir.client import convert
from neuralir.client.types import EncodeResult, IndexHit, RerankResult, SearchResult
from neuralir.v1 import (
    encoder_service_pb2_grpc,
    index_service_pb2,
    index_service_pb2_grpc,
    rerank_service_pb2_grpc,
    search_service_pb2,
    search_service_pb2_grpc,
)


@dataclasses.dataclass(frozen=True)
class ClientSettings:
    target: str = "127.0.0.1:50051"
    timeout_s: float = 10.0  # deadline of each call
    # Attempts for calls that fail with UNAVAILABLE (1 = no retry), with exponential backoff.
    max_attempts: int = 3
    initial_backoff_s: float = 0.1
    max_message_bytes: int = 16 << 20
    tls_ca: Path | None = None  # CA bundle: set to talk TLS
    tls_server_name: str = ""  # override the name checked in the server certificate
    token: str = dataclasses.field(default="", repr=False)  # bearer token, if the server wants one

    def channel_options(self) -> list[tuple[str, Any]]:
        options: list[tuple[str, Any]] = [
            ("grpc.max_send_message_length", self.max_message_bytes),
            ("grpc.max_receive_message_length", self.max_message_bytes),
            ("grpc.enable_retries", 1 if self.max_attempts > 1 else 0),
            ("grpc.service_config", self._service_config()),
        ]
        if self.tls_server_name:
            options.append(("grpc.ssl_target_name_override", self.tls_server_name))
        return options

    def _service_config(self) -> str:
        policy = {
            "maxAttempts": max(2, min(self.max_attempts, 5)),
            "initialBackoff": f"{self.initial_backoff_s}s",
            "maxBackoff": f"{self.initial_backoff_s * 10}s",
            "backoffMultiplier": 2,
            "retryableStatusCodes": ["UNAVAILABLE"],
        }
        config: dict[str, Any] = {"methodConfig": [{"name": [{}]}]}
        if self.max_attempts > 1:
            config["methodConfig"][0]["retryPolicy"] = policy
        return json.dumps(config)

    def credentials(self) -> grpc.ChannelCredentials | None:
        if self.tls_ca is None:
            return None
        return grpc.ssl_channel_credentials(self.tls_ca.read_bytes())

    def open_channel(self, channels: Any = grpc) -> Any:
        """A channel to the target with these options; `channels` is `grpc` or `grpc.aio`."""
        credentials = self.credentials()
        options = self.channel_options()
        if credentials is None:
            return channels.insecure_channel(self.target, options=options)
        return channels.secure_channel(self.target, credentials, options=options)

    def metadata(self) -> tuple[tuple[str, str], ...]:
        return (("authorization", f"Bearer {self.token}"),) if self.token else ()


class _Stubs:
    def __init__(self, channel: Any) -> None:
        self.search = search_service_pb2_grpc.SearchServiceStub(channel)
        self.encoder = encoder_service_pb2_grpc.EncoderServiceStub(channel)
        self.index = index_service_pb2_grpc.IndexServiceStub(channel)
        self.rerank = rerank_service_pb2_grpc.RerankServiceStub(channel)
        self.health = health_pb2_grpc.HealthStub(channel)


class NeuralIRClient:
    """Blocking client. Use as a context manager, or call close()."""

    def __init__(self, settings: ClientSettings | None = None, **overrides: Any) -> None:
        self.settings = dataclasses.replace(settings or ClientSettings(), **overrides)
        self.channel = self.settings.open_channel(grpc)
        self._stubs = _Stubs(self.channel)

    def __enter__(self) -> NeuralIRClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self.channel.close()

    def _call(self, rpc: Any, request: Any, timeout_s: float | None) -> Any:
        timeout = self.settings.timeout_s if timeout_s is None else timeout_s
        return rpc(request, timeout=timeout, metadata=self.settings.metadata())

    def wait_ready(self, timeout_s: float = 60.0, service: str = "") -> None:
        """Blocks until the server's health says SERVING (for `service`, or overall)."""
        import time

        deadline = time.monotonic() + timeout_s
        while True:
            try:
                reply = self._stubs.health.Check(
                    health_pb2.HealthCheckRequest(service=service), timeout=1.0
                )
                if reply.status == health_pb2.HealthCheckResponse.SERVING:
                    return
            except grpc.RpcError:
                pass
            if time.monotonic() > deadline:
                raise TimeoutError(f"{self.settings.target} not SERVING after {timeout_s} s")
            time.sleep(0.1)

    def search(self, query: str, *, timeout_s: float | None = None, **options: Any) -> SearchResult:
        """Options: k, mode ("dense", "lexical", "hybrid"), rerank_depth, blend_weight,
        rerank_model, snippet_chars, ef, fusion ("rrf", "convex"), fusion_weight,
        cascade ((first-pass reranker, its depth))."""
        request = convert.search_request(query, **options)
        return convert.search_result(self._call(self._stubs.search.Search, request, timeout_s))

    def batch_search(
        self, queries: Sequence[str], *, timeout_s: float | None = None, **options: Any
    ) -> list[SearchResult]:
        request = search_service_pb2.BatchSearchRequest(
            requests=[convert.search_request(q, **options) for q in queries]
        )
        response = self._call(self._stubs.search.BatchSearch, request, timeout_s)
        return [convert.search_result(r) for r in response.responses]

    def encode(
        self, texts: Sequence[str], kind: str = "query", *, timeout_s: float | None = None
    ) -> EncodeResult:
        request = convert.encode_request(texts, kind)
        return convert.encode_result(self._call(self._stubs.encoder.Encode, request, timeout_s))

    def rerank(
        self, query: str, passages: Sequence[Any], *, timeout_s: float | None = None, **options: Any
    ) -> RerankResult:
        """Passages as (id, text), (id, text, first_stage_score) or `Passage` (with BM25 and
        dense signals); options: top_n, blend_weight, model."""
        request = convert.rerank_request(query, passages, **options)
        return convert.rerank_result(self._call(self._stubs.rerank.Rerank, request, timeout_s))

    def index_search(
        self, vector: np.ndarray, k: int = 10, ef: int = 0, *, timeout_s: float | None = None
    ) -> list[IndexHit]:
        request = convert.index_search_request(vector, k, ef)
        return convert.index_hits(
            self._call(self._stubs.index.Search, request, timeout_s).documents
        )

    def lexical_search(
        self, query: str, k: int = 10, *, timeout_s: float | None = None
    ) -> list[IndexHit]:
        request = index_service_pb2.LexicalSearchRequest(query=query, k=k)
        response = self._call(self._stubs.index.LexicalSearch, request, timeout_s)
        return convert.index_hits(response.documents)

    def describe_index(
        self, *, timeout_s: float | None = None
    ) -> index_service_pb2.DescribeResponse:
        return self._call(
            self._stubs.index.Describe, index_service_pb2.DescribeRequest(), timeout_s
        )


class AsyncNeuralIRClient:
    """asyncio client with the same methods as NeuralIRClient, awaitable."""

    def __init__(self, settings: ClientSettings | None = None, **overrides: Any) -> None:
        self.settings = dataclasses.replace(settings or ClientSettings(), **overrides)
        self.channel = self.settings.open_channel(grpc.aio)
        self._stubs = _Stubs(self.channel)

    async def __aenter__(self) -> AsyncNeuralIRClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        await self.channel.close()

    async def _call(self, rpc: Any, request: Any, timeout_s: float | None) -> Any:
        timeout = self.settings.timeout_s if timeout_s is None else timeout_s
        return await rpc(request, timeout=timeout, metadata=self.settings.metadata())

    async def wait_ready(self, timeout_s: float = 60.0, service: str = "") -> None:
        import asyncio
        import time

        deadline = time.monotonic() + timeout_s
        while True:
            try:
                reply = await self._stubs.health.Check(
                    health_pb2.HealthCheckRequest(service=service), timeout=1.0
                )
                if reply.status == health_pb2.HealthCheckResponse.SERVING:
                    return
            except grpc.RpcError:
                pass
            if time.monotonic() > deadline:
                raise TimeoutError(f"{self.settings.target} not SERVING after {timeout_s} s")
            await asyncio.sleep(0.1)

    async def search(
        self, query: str, *, timeout_s: float | None = None, **options: Any
    ) -> SearchResult:
        request = convert.search_request(query, **options)
        return convert.search_result(
            await self._call(self._stubs.search.Search, request, timeout_s)
        )

    async def batch_search(
        self, queries: Sequence[str], *, timeout_s: float | None = None, **options: Any
    ) -> list[SearchResult]:
        request = search_service_pb2.BatchSearchRequest(
            requests=[convert.search_request(q, **options) for q in queries]
        )
        response = await self._call(self._stubs.search.BatchSearch, request, timeout_s)
        return [convert.search_result(r) for r in response.responses]

    async def encode(
        self, texts: Sequence[str], kind: str = "query", *, timeout_s: float | None = None
    ) -> EncodeResult:
        request = convert.encode_request(texts, kind)
        return convert.encode_result(
            await self._call(self._stubs.encoder.Encode, request, timeout_s)
        )

    async def rerank(
        self, query: str, passages: Sequence[Any], *, timeout_s: float | None = None, **options: Any
    ) -> RerankResult:
        request = convert.rerank_request(query, passages, **options)
        return convert.rerank_result(
            await self._call(self._stubs.rerank.Rerank, request, timeout_s)
        )

    async def index_search(
        self, vector: np.ndarray, k: int = 10, ef: int = 0, *, timeout_s: float | None = None
    ) -> list[IndexHit]:
        request = convert.index_search_request(vector, k, ef)
        response = await self._call(self._stubs.index.Search, request, timeout_s)
        return convert.index_hits(response.documents)

    async def lexical_search(
        self, query: str, k: int = 10, *, timeout_s: float | None = None
    ) -> list[IndexHit]:
        request = index_service_pb2.LexicalSearchRequest(query=query, k=k)
        response = await self._call(self._stubs.index.LexicalSearch, request, timeout_s)
        return convert.index_hits(response.documents)
