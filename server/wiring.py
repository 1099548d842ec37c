"""Builds a process's stages, servicers and search pipeline from its settings.

Each stage this process serves is loaded (models and index off the event loop, then warmed
up) into its engine (`neuralir.server.stages`) and wrapped in its servicer. The search
pipeline gets, for each stage, an in-process backend when the stage lives in this process,
and a gRPC backend when an address says where it lives (or when settings ask co-located
stages to be called over loopback gRPC, as a separate deployment would).
"""

from __future__ import annotations

import asyncio
import dataclasses
from typing import TYPE_CHECKING, Any

import grpc

from neuralir.index.store import IndexStore
from neuralir.models.cross_encoder import CrossEncoder
from neuralir.models.encoder import Encoder
from neuralir.models.manifest import read_manifest
from neuralir.models.session import RuntimeSettings
from neuralir.server.batching import BatchingSettings
from neuralir.server.pipeline.backends import EncoderBackend, IndexBackend, RerankBackend
from neuralir.server.pipeline.local import LocalEncoder, LocalIndex, LocalReranker
from neuralir.server.pipeline.remote import (
    Connector,
    RemoteEncoder,
    RemoteIndex,
    RemoteReranker,
    RemoteStage,
    watch_stages,
)
from neuralir.server.pipeline.search import FusionDefaults, SearchPipeline, SpanFactory
from neuralir.server.pipeline.sharded import Shard, ShardedIndex, shard_name, split_index_addresses
from neuralir.server.services.encoder import EncoderService
from neuralir.server.services.index import IndexService
from neuralir.server.services.rerank import RerankService
from neuralir.server.services.search import SearchService
from neuralir.server.stages.encoder import EncoderStage
from neuralir.server.stages.index import IndexStage
from neuralir.server.stages.rerank import RerankStage

if TYPE_CHECKING:
    from neuralir.server.app import Server
    from neuralir.server.settings import ServerSettings

HEALTH_SERVICES = {
    "encoder": "neuralir.v1.EncoderService",
    "index": "neuralir.v1.IndexService",
    "rerank": "neuralir.v1.RerankService",
}


class SettingsError(ValueError):
    """The settings cannot make a working process (e.g. a search service with no encoder)."""


async def _off_loop(function: Any, *args: Any) -> Any:
    return await asyncio.get_running_loop().run_in_executor(None, function, *args)


def _runtime(threads: int, batching: BatchingSettings, settings: ServerSettings) -> RuntimeSettings:
    """The model calls keep the stage's token budget (0 = the runtime's own)."""
    tokens = batching.max_batch_tokens or RuntimeSettings.max_batch_tokens
    return RuntimeSettings(
        intra_op_threads=threads, max_batch_tokens=tokens, arena=settings.model_arena
    )


async def load_stage(name: str, server: Server) -> tuple[Any, Any]:
    """The loaded and warmed engine of stage `name` and its servicer."""
    settings = server.settings
    engine: Any
    if name == "encoder":
        runtime = _runtime(settings.encoder_threads, settings.encoder_batching, settings)
        encoder = await _off_loop(Encoder, settings.encoder_model, runtime)
        engine = EncoderStage(encoder, settings.encoder_batching)
        servicer: Any = EncoderService(engine)
        server.metrics.observe_batcher("encoder", engine.batcher)
        server.metrics.model_info.labels("encoder", "default", encoder.model_id).set(1)
    elif name == "rerank":
        runtime = _runtime(settings.rerank_threads, settings.rerank_batching, settings)
        models = {}
        for model_name, path in settings.rerank_models:
            models[model_name] = await _off_loop(CrossEncoder, path, runtime)
        engine = RerankStage(models, settings.rerank_models[0][0], settings.rerank_batching)
        servicer = RerankService(engine)
        for model_name, served in engine.models.items():
            server.metrics.observe_batcher(f"rerank:{model_name}", served.batcher)
            server.metrics.model_info.labels("rerank", model_name, served.model.model_id).set(1)
    elif name == "index":
        # The index must have been embedded by the encoder that serves queries.
        expected = read_manifest(settings.encoder_model).model_id
        store = await _off_loop(
            IndexStore.open, settings.index_dir, expected, settings.index_threads
        )
        engine = IndexStage(store)
        servicer = IndexService(engine)
        server.metrics.index_documents.set(store.info.size)
    elif name == "search":
        return None, _search_service(server)
    else:
        raise ValueError(f"unknown stage {name!r}")
    await engine.start()
    return engine, servicer


@dataclasses.dataclass
class _Backends:
    encoder: EncoderBackend
    index: IndexBackend
    reranker: RerankBackend
    remote: list[RemoteStage]  # every channel the search service opened (health, close)
    shards: list[str]  # the names of index shards, when the index is sharded


def _search_service(server: Server) -> SearchService:
    span: SpanFactory | None = server.tracing.span if server.tracing is not None else None
    backends = _backends(server, span)
    settings = server.settings
    fusion = FusionDefaults(settings.fusion, settings.fusion_weight, settings.fusion_normalization)
    pipeline = SearchPipeline(backends.encoder, backends.index, backends.reranker, span, fusion)

    async def close() -> None:
        for stage in backends.remote:
            await stage.close()

    service = SearchService(pipeline, close)
    if backends.remote:
        shards = set(backends.shards)

        def serving(down: list[str]) -> bool:
            # With shards, one shard up is enough (results are flagged partial).
            if not shards:
                return not down
            return set(down) <= shards and len(set(down)) < len(shards)

        watcher = watch_stages(backends.remote, serving, server.set_search_health)
        server.search_watcher = asyncio.get_running_loop().create_task(watcher)
        server.background.append(server.search_watcher)
    return service


def _backends(server: Server, span: SpanFactory | None) -> _Backends:
    settings = server.settings
    connector = Connector(
        settings.max_message_bytes,
        credentials=grpc.ssl_channel_credentials(settings.tls_client_ca.read_bytes())
        if settings.tls_client_ca is not None
        else None,
        auth_token=settings.auth_token,
        tracing=server.tracing,
    )
    remote: list[RemoteStage] = []

    def address_of(stage: str, configured: str) -> str | None:
        """Where to reach `stage` over gRPC, or None to call its engine in this process."""
        if configured:
            return configured
        if stage not in settings.services:
            raise SettingsError(
                f"the search service needs the {stage} stage: serve it in this process or "
                f"give --{stage}-address"
            )
        if settings.local_stages == "grpc":
            return server.address  # co-located, but over loopback gRPC
        return None

    def open_stage(name: str, address: str, stage: str) -> RemoteStage:
        opened = connector.open(name, address, HEALTH_SERVICES[stage])
        remote.append(opened)
        return opened

    encoder: EncoderBackend
    address = address_of("encoder", settings.encoder_address)
    if address is None:
        encoder = LocalEncoder(server.engine("encoder"))
    else:
        encoder = RemoteEncoder(open_stage("encoder", address, "encoder"))

    index: IndexBackend
    shard_names: list[str] = []
    address = address_of("index", settings.index_address)
    if address is None:
        index = LocalIndex(server.engine("index"))
    else:
        targets = split_index_addresses(address)
        if len(targets) > 1:
            shards = []
            for i, target in enumerate(targets):
                name = shard_name(i)
                shards.append(
                    Shard(name, target, RemoteIndex(open_stage(f"{name}", target, "index")))
                )
                shard_names.append(name)
            index = ShardedIndex(shards, settings.shard_timeout_ms / 1000, span)
        else:
            index = RemoteIndex(open_stage("index", address, "index"))

    reranker: RerankBackend
    address = address_of("rerank", settings.rerank_address)
    if address is None:
        reranker = LocalReranker(server.engine("rerank"))
    else:
        reranker = RemoteReranker(open_stage("rerank", address, "rerank"))
    return _Backends(encoder, index, reranker, remote, shard_names)
