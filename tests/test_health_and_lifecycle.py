"""Health (NOT_SERVING until warm, search follows its stages), refused loads, deadlines, load
shedding, reflection and graceful SIGTERM."""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf import descriptor_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
    ProtoReflectionDescriptorDatabase,
)
from servers import (
    NOT_SERVING,
    SERVING,
    ServerProcess,
    embedded,
    health_status,
    model_args,
    server_settings,
    wait_serving,
)

from neuralir.client import NeuralIRClient
from neuralir.index.format import IndexLoadError
from neuralir.server.app import SERVICE_NAMES
from neuralir.server.batching import BatchingSettings
from neuralir.server.embedded import EmbeddedServer
from neuralir.server.errors import ErrorInterceptor
from neuralir.v1 import encoder_service_pb2, encoder_service_pb2_grpc

QUERY = "retrieval of documents, files and processes"
V1ALPHA_REFLECTION = "grpc.reflection.v1alpha.ServerReflection"


def _free_port() -> int:
    """A port nothing listens on (bound, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _poll_health(address: str, until: float) -> list[int]:
    """Overall health, polled as fast as the server answers, until SERVING or `until`."""
    seen: list[int] = []
    with grpc.insecure_channel(address) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        while time.monotonic() < until:
            status = stub.Check(health_pb2.HealthCheckRequest(), timeout=5).status
            if not seen or seen[-1] != status:
                seen.append(status)
            if status == SERVING:
                break
            time.sleep(0.01)
    return seen


def test_health_is_not_serving_until_the_stages_are_warm(
    bi_encoder_dir: Path, rerank_models: tuple, small_index: Path
) -> None:
    settings = server_settings(bi_encoder_dir, rerank_models, small_index)
    server = EmbeddedServer(settings)
    try:
        server.start(wait_ready=False)  # listening; the models are still loading
        seen = _poll_health(server.address, until=time.monotonic() + 120)
        assert seen == [NOT_SERVING, SERVING]
        server.wait_ready()
        for name in ("encoder", "index", "rerank"):
            assert health_status(server.address, SERVICE_NAMES[name]) == SERVING
        # the search service turns SERVING once it has seen its stages serving
        wait_serving(server.address, SERVICE_NAMES["search"], timeout_s=10)
        with NeuralIRClient(target=server.address, max_attempts=1) as client:
            assert len(client.search(QUERY, k=3).hits) == 3
    finally:
        server.stop()
    with pytest.raises(grpc.RpcError):
        health_status(server.address, timeout_s=1)


def test_index_built_by_another_encoder_is_refused(
    fp32_bi_encoder_dir: Path, rerank_models: tuple, small_index: Path
) -> None:
    """The index was embedded by the int8 encoder: serving it with fp32 queries is refused,
    the index stays NOT_SERVING and its RPCs answer UNAVAILABLE; the encoder still serves."""
    settings = server_settings(
        fp32_bi_encoder_dir, rerank_models, small_index, services=("encoder", "index")
    )
    with embedded(settings, wait_ready=False) as server:
        with pytest.raises(IndexLoadError, match="rebuild the index with this encoder") as caught:
            server.wait_ready()
        assert "was built with encoder 'all-MiniLM-L6-v2@" in str(caught.value)
        assert health_status(server.address, SERVICE_NAMES["encoder"]) == SERVING
        assert health_status(server.address, SERVICE_NAMES["index"]) == NOT_SERVING
        assert health_status(server.address) == NOT_SERVING
        with NeuralIRClient(target=server.address, max_attempts=1) as client:
            assert client.encode(["still serving"]).embeddings.shape == (1, 384)
            with pytest.raises(grpc.RpcError) as rpc:
                client.describe_index()
            assert rpc.value.code() == grpc.StatusCode.UNAVAILABLE
            assert "index stage is still loading" in rpc.value.details()


def test_serve_refuses_a_mismatched_index_with_a_clear_error(
    tmp_path: Path, fp32_bi_encoder_dir: Path, rerank_models: tuple, small_index: Path
) -> None:
    args = [*model_args(fp32_bi_encoder_dir, rerank_models), "--index-dir", str(small_index)]
    process = ServerProcess("index", tmp_path, args)
    assert process.process.wait(timeout=60) == 1
    log = process.log()
    assert "cannot start index" in log
    assert "rebuild the index with this encoder" in log
    assert "Traceback" not in log


def test_search_health_follows_its_stages(all_in_one: EmbeddedServer, tmp_path: Path) -> None:
    """A search process whose reranker is down is NOT_SERVING, answers searches that need no
    rerank, and names the missing stage when one does."""
    dead = f"127.0.0.1:{_free_port()}"
    down = server_settings(
        Path("unused"),
        [("default", Path("unused"))],
        tmp_path,
        services=("search",),
        encoder_address=all_in_one.address,
        index_address=all_in_one.address,
        rerank_address=dead,
    )
    up = server_settings(
        Path("unused"),
        [("default", Path("unused"))],
        tmp_path,
        services=("search",),
        encoder_address=all_in_one.address,
        index_address=all_in_one.address,
        rerank_address=all_in_one.address,
    )
    with embedded(down) as broken, embedded(up) as healthy:
        wait_serving(healthy.address, SERVICE_NAMES["search"], timeout_s=15)
        assert health_status(broken.address, SERVICE_NAMES["search"]) == NOT_SERVING
        with NeuralIRClient(target=broken.address, max_attempts=1) as client:
            assert len(client.search(QUERY, k=3, mode="hybrid").hits) == 3
            with pytest.raises(grpc.RpcError) as caught:
                client.search(QUERY, k=3, rerank_depth=3)
        assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
        assert f"rerank stage at {dead} is unavailable" in caught.value.details()


def test_short_deadlines_are_deadline_exceeded(client: NeuralIRClient) -> None:
    with pytest.raises(grpc.RpcError) as caught:
        client.search(QUERY, k=5, timeout_s=0.001)
    assert caught.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    # long enough to start, too short to rerank the whole corpus
    with pytest.raises(grpc.RpcError) as caught:
        client.search(QUERY, k=5, mode="hybrid", rerank_depth=80, timeout_s=0.05)
    assert caught.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    with pytest.raises(grpc.RpcError) as caught:
        client.rerank(QUERY, [(str(i), "word " * 200) for i in range(16)], timeout_s=0.01)
    assert caught.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    # and the server is fine afterwards
    assert len(client.search(QUERY, k=5, rerank_depth=5).hits) == 5


def test_a_full_queue_is_resource_exhausted(bi_encoder_dir: Path, tmp_path: Path) -> None:
    """Load shedding maps to RESOURCE_EXHAUSTED: here a request larger than the whole queue."""
    settings = server_settings(
        bi_encoder_dir,
        [("default", Path("unused"))],
        tmp_path,
        services=("encoder",),
        encoder_batching=BatchingSettings(max_batch_items=8, max_wait_us=0, max_queue_items=2),
    )
    with embedded(settings) as server, NeuralIRClient(target=server.address, max_attempts=1) as c:
        assert c.encode(["a", "b"]).embeddings.shape == (2, 384)
        with pytest.raises(grpc.RpcError) as caught:
            c.encode(["a", "b", "c"])
        assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "queue is full" in caught.value.details()


def test_reflection_lists_the_services(all_in_one: EmbeddedServer) -> None:
    with grpc.insecure_channel(all_in_one.address) as channel:
        services = set(ProtoReflectionDescriptorDatabase(channel).get_services())
    assert set(SERVICE_NAMES.values()) <= services
    assert "grpc.health.v1.Health" in services
    assert {"grpc.reflection.v1.ServerReflection", V1ALPHA_REFLECTION} <= services


def _reflect_v1(address: str, request: reflection_pb2.ServerReflectionRequest) -> Any:
    """One exchange with grpc.reflection.v1 (same wire messages as v1alpha)."""
    with grpc.insecure_channel(address) as channel:
        info = channel.stream_stream(
            "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
            request_serializer=reflection_pb2.ServerReflectionRequest.SerializeToString,
            response_deserializer=reflection_pb2.ServerReflectionResponse.FromString,
        )
        return next(iter(info(iter([request]), timeout=10)))


def test_reflection_v1_lists_and_describes_the_services(all_in_one: EmbeddedServer) -> None:
    """grpcurl and Postman try v1 first: it lists what v1alpha lists and serves the files,
    its own included."""
    listed = _reflect_v1(
        all_in_one.address, reflection_pb2.ServerReflectionRequest(list_services="")
    )
    services = {s.name for s in listed.list_services_response.service}
    assert set(SERVICE_NAMES.values()) | {"grpc.health.v1.Health"} <= services
    assert {"grpc.reflection.v1.ServerReflection", V1ALPHA_REFLECTION} <= services
    for symbol in ("neuralir.v1.SearchService", "grpc.reflection.v1.ServerReflection"):
        found = _reflect_v1(
            all_in_one.address,
            reflection_pb2.ServerReflectionRequest(file_containing_symbol=symbol),
        )
        assert not found.HasField("error_response"), found.error_response
        files = [
            descriptor_pb2.FileDescriptorProto.FromString(raw)
            for raw in found.file_descriptor_response.file_descriptor_proto
        ]
        package = symbol.rpartition(".")[0]
        assert any(f.package == package and f.service for f in files), [f.name for f in files]


def test_health_list_names_every_service_with_its_status(all_in_one: EmbeddedServer) -> None:
    with grpc.insecure_channel(all_in_one.address) as channel:
        reply = health_pb2_grpc.HealthStub(channel).List(health_pb2.HealthListRequest(), timeout=5)
    statuses = {name: response.status for name, response in reply.statuses.items()}
    assert statuses == {"": SERVING, **{name: SERVING for name in SERVICE_NAMES.values()}}


def test_an_unimplemented_method_is_unimplemented_not_internal() -> None:
    """NotImplementedError from any servicer (here the generated base class, whose methods all
    raise it) goes through the error table as UNIMPLEMENTED."""

    async def call() -> grpc.StatusCode:
        server = grpc.aio.server(interceptors=[ErrorInterceptor()])
        encoder_service_pb2_grpc.add_EncoderServiceServicer_to_server(
            encoder_service_pb2_grpc.EncoderServiceServicer(), server
        )
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        try:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
                stub = encoder_service_pb2_grpc.EncoderServiceStub(channel)
                try:
                    await stub.Encode(encoder_service_pb2.EncodeRequest(texts=["x"]), timeout=10)
                except grpc.aio.AioRpcError as error:
                    return error.code()
                return grpc.StatusCode.OK
        finally:
            await server.stop(0)

    assert asyncio.run(call()) == grpc.StatusCode.UNIMPLEMENTED


def test_a_stage_that_cannot_load_stays_unavailable(
    bi_encoder_dir: Path, small_index: Path
) -> None:
    """A reranker without a built model: the start fails naming it, the index (loaded first)
    serves, and the reranker's health and RPCs say it is not available."""
    settings = server_settings(
        bi_encoder_dir,
        [("default", Path("missing-model"))],
        small_index,
        services=("index", "rerank"),
    )
    with embedded(settings, wait_ready=False) as server:
        with pytest.raises(Exception, match="missing-model"):
            server.wait_ready()
        assert health_status(server.address, SERVICE_NAMES["index"]) == SERVING
        assert health_status(server.address, SERVICE_NAMES["rerank"]) == NOT_SERVING
        with NeuralIRClient(target=server.address, max_attempts=1) as client:
            assert client.describe_index().size > 0
            with pytest.raises(grpc.RpcError) as caught:
                client.rerank("q", [("a", "text")])
        assert caught.value.code() == grpc.StatusCode.UNAVAILABLE


@pytest.mark.slow
def test_sigterm_drains_in_flight_searches_and_exits_zero(
    tmp_path: Path, bi_encoder_dir: Path, rerank_models: tuple, small_index: Path
) -> None:
    """`neuralir serve all` on SIGTERM: health NOT_SERVING, in-flight searches finish (their
    calls to the in-process stages included), then exit 0."""
    args = [*model_args(bi_encoder_dir, rerank_models[:1]), "--index-dir", str(small_index)]
    process = ServerProcess("all", tmp_path, args)
    try:
        process.wait_serving()
        outcome: dict[str, object] = {}
        queries = [f"{QUERY} {i}" for i in range(8)]

        def search() -> None:
            with NeuralIRClient(target=process.address, max_attempts=1, timeout_s=60) as c:
                try:
                    outcome["results"] = c.batch_search(queries, k=3, rerank_depth=6)
                except grpc.RpcError as exc:
                    outcome["error"] = f"{exc.code()}: {exc.details()}"

        caller = threading.Thread(target=search)
        caller.start()
        time.sleep(0.3)  # the batch is in flight: each search still has stage calls to make
        assert process.terminate(timeout_s=60) == 0
        caller.join(timeout=60)
    finally:
        process.kill()
    assert "error" not in outcome, (outcome, process.log())
    results = outcome["results"]
    assert isinstance(results, list)
    assert len(results) == len(queries)
    assert all(len(r.hits) == 3 for r in results)
    log = process.log()
    assert "signal received: draining" in log
    assert "Traceback" not in log
