"""Loads one stage from settings: models and index off the event loop, then warm-up."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

import grpc

from neuralir.models.cross_encoder import CrossEncoder
from neuralir.models.encoder import Encoder
from neuralir.models.manifest import read_manifest
from neuralir.models.session import RuntimeSettings
from neuralir.server.encoder_service import EncoderService
from neuralir.server.index_service import IndexService
from neuralir.server.index_store import IndexStore
from neuralir.server.rerank_service import RerankService
from neuralir.server.search_service import SearchService
from neuralir.server.stages import connect_stages, watch_stages

if TYPE_CHECKING:
    from neuralir.server.app import Server


async def _off_loop(function: Any, *args: Any) -> Any:
    return await asyncio.get_running_loop().run_in_executor(None, function, *args)


async def load_stage(name: str, server: Server) -> Any:
    settings = server.settings
    service: Any
    if name == "encoder":
        runtime = RuntimeSettings(intra_op_threads=settings.encoder_threads)
        encoder = await _off_loop(Encoder, settings.encoder_model, runtime)
        service = EncoderService(encoder, settings.encoder_batching)
        server.metrics.observe_batcher("encoder", service.batcher)
        server.metrics.model_info.labels("encoder", "default", encoder.model_id).set(1)
    elif name == "rerank":
        runtime = RuntimeSettings(intra_op_threads=settings.rerank_threads)
        models = {}
        for model_name, path in settings.rerank_models:
            models[model_name] = await _off_loop(CrossEncoder, path, runtime)
        service = RerankService(models, settings.rerank_models[0][0], settings.rerank_batching)
        for model_name, served in service.models.items():
            server.metrics.observe_batcher(f"rerank:{model_name}", served.batcher)
            server.metrics.model_info.labels("rerank", model_name, served.model.model_id).set(1)
    elif name == "index":
        # The index must have been embedded by the encoder that serves queries.
        expected = read_manifest(settings.encoder_model).model_id
        store = await _off_loop(
            IndexStore.open, settings.index_dir, expected, settings.index_threads
        )
        service = IndexService(store)
        server.metrics.index_documents.set(store.info.size)
    elif name == "search":
        service = _search_service(server)
    else:
        raise ValueError(f"unknown stage {name!r}")
    await service.start()
    return service


def _search_service(server: Server) -> SearchService:
    settings = server.settings
    local = f"{settings.host}:{server.port}"
    credentials = None
    if settings.tls_client_ca is not None:
        credentials = grpc.ssl_channel_credentials(settings.tls_client_ca.read_bytes())
    stages = connect_stages(
        settings.encoder_address or local,
        settings.index_address or local,
        settings.rerank_address or local,
        settings.max_message_bytes,
        credentials=credentials,
        auth_token=settings.auth_token,
        shard_timeout_s=settings.shard_timeout_ms / 1000,
        tracing=server.tracing,
    )
    service = SearchService(stages)
    server.background.append(
        asyncio.get_running_loop().create_task(watch_stages(stages, server.set_search_health))
    )
    return service
