"""Access: TLS with a CA and certificates made at run time, a plaintext client refused by a TLS
server, the shared-secret bearer token (missing or wrong -> UNAUTHENTICATED on every RPC but
health), the token never logged, and the transport limits as settings with safe defaults.

One `neuralir serve all` process runs with TLS and a token, as an operator would start it;
its search stage reaches the other stages over TLS with the token too.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import ipaddress
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from reliability import RPCS, rpc
from servers import SERVING, ServerProcess, model_args

from neuralir.client import NeuralIRClient
from neuralir.server.app import SERVICE_NAMES, _server_options
from neuralir.server.settings import ServerSettings, add_server_arguments, settings_from_args
from neuralir.v1 import (
    encoder_service_pb2,
    index_service_pb2,
    rerank_service_pb2,
    search_service_pb2,
)

TOKEN = "tok-7f3a9c41d2e8b650-secret"  # distinctive, so a leak into the log is found
WRONG_TOKENS = [
    "tok-7f3a9c41d2e8b650-secreT",  # one character off
    "tok-7f3a9c41d2e8b650-secret-and-more",  # the right one as a prefix
    "tok-7f3a9c41",  # a prefix of the right one
]
QUERY = "computer information retrieval"


# ---------------------------------------------------------------- a CA and a server certificate


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _certificate(
    subject: str,
    key: ec.EllipticCurvePrivateKey,
    issuer: x509.Name | None = None,
    issuer_key: ec.EllipticCurvePrivateKey | None = None,
) -> x509.Certificate:
    """A CA certificate (self-signed) or, given an issuer, a server certificate for
    localhost and 127.0.0.1."""
    now = datetime.datetime.now(datetime.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(subject))
        .issuer_name(issuer or _name(subject))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
    )
    if issuer is None:
        builder = builder.add_extension(x509.BasicConstraints(ca=True, path_length=0), True)
    else:
        names = [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
        builder = builder.add_extension(x509.SubjectAlternativeName(names), False)
        builder = builder.add_extension(x509.BasicConstraints(ca=False, path_length=None), True)
    return builder.sign(issuer_key or key, hashes.SHA256())


def _pem(certificate: x509.Certificate) -> bytes:
    return certificate.public_bytes(serialization.Encoding.PEM)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """ca.pem, server.pem, server.key, and other-ca.pem (a CA that signed nothing here)."""
    out = tmp_path_factory.mktemp("pki")
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = _certificate("neuralir test CA", ca_key)
    server_key = ec.generate_private_key(ec.SECP256R1())
    server = _certificate("localhost", server_key, ca.subject, ca_key)
    other_key = ec.generate_private_key(ec.SECP256R1())
    files = {
        "ca": out / "ca.pem",
        "cert": out / "server.pem",
        "key": out / "server.key",
        "other_ca": out / "other-ca.pem",
    }
    files["ca"].write_bytes(_pem(ca))
    files["cert"].write_bytes(_pem(server))
    files["key"].write_bytes(
        server_key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    files["key"].chmod(0o600)
    files["other_ca"].write_bytes(_pem(_certificate("another CA", other_key)))
    return files


@pytest.fixture(scope="module")
def secured(
    tmp_path_factory: pytest.TempPathFactory,
    pki: dict[str, Path],
    bi_encoder_dir: Path,
    cross_encoder_dir: Path,
    small_index: Path,
) -> Iterator[ServerProcess]:
    """`serve all` with TLS, the token from a file, JSON logs, every call logged."""
    workdir = tmp_path_factory.mktemp("secured")
    token_file = workdir / "token"
    token_file.write_text(TOKEN + "\n")
    token_file.chmod(0o600)
    args = [
        *model_args(bi_encoder_dir, (("default", cross_encoder_dir),)),
        "--index-dir", str(small_index),
        "--tls-cert", str(pki["cert"]), "--tls-key", str(pki["key"]),
        "--tls-client-ca", str(pki["ca"]),
        "--auth-token-file", str(token_file),
        "--log-format", "json",
        "--access-log", "all",  # every call logged: the token must still not show
    ]  # fmt: skip
    process = ServerProcess("all", workdir, args)
    try:
        with _tls_channel(process.address, pki["ca"]) as channel:
            _wait_search_serving(channel)
        yield process
    finally:
        process.terminate()


def _tls_channel(address: str, ca: Path) -> grpc.Channel:
    return grpc.secure_channel(address, grpc.ssl_channel_credentials(ca.read_bytes()))


def _wait_search_serving(channel: grpc.Channel, timeout_s: float = 120.0) -> None:
    """Health needs no token: an operator's probe holds none."""
    stub = health_pb2_grpc.HealthStub(channel)
    request = health_pb2.HealthCheckRequest(service=SERVICE_NAMES["search"])
    deadline = time.monotonic() + timeout_s
    while True:
        with contextlib.suppress(grpc.RpcError):
            if stub.Check(request, timeout=5).status == SERVING:
                return
        assert time.monotonic() < deadline, "search never SERVING"
        time.sleep(0.1)


@pytest.fixture(scope="module")
def tls(secured: ServerProcess, pki: dict[str, Path]) -> Iterator[grpc.Channel]:
    with _tls_channel(secured.address, pki["ca"]) as channel:
        yield channel


def _valid_requests(dim: int) -> dict[str, Any]:
    vector = b"\x00\x00\x80\x3f" + b"\x00" * 4 * (dim - 1)  # (1, 0, 0, ...) as float32
    return {
        "Search": search_service_pb2.SearchRequest(query=QUERY, k=3, rerank_depth=2),
        "BatchSearch": search_service_pb2.BatchSearchRequest(
            requests=[search_service_pb2.SearchRequest(query=QUERY, k=2)]
        ),
        "Encode": encoder_service_pb2.EncodeRequest(texts=[QUERY]),
        "Rerank": rerank_service_pb2.RerankRequest(
            query=QUERY, passages=[rerank_service_pb2.Passage(id="a", text="library systems")]
        ),
        "IndexSearch": index_service_pb2.IndexServiceSearchRequest(
            vector=vector, dimension=dim, k=3
        ),
        "LexicalSearch": index_service_pb2.LexicalSearchRequest(query=QUERY, k=3),
        "GetDocuments": index_service_pb2.GetDocumentsRequest(doc_ids=["1"]),
        "Describe": index_service_pb2.DescribeRequest(),
    }


def _bearer(token: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {token}"),)


@pytest.fixture(scope="module")
def dimension(tls: grpc.Channel) -> int:
    reply = rpc(tls, "Describe")(
        index_service_pb2.DescribeRequest(), timeout=10, metadata=_bearer(TOKEN)
    )
    return int(reply.dimension)


# ---------------------------------------------------------------- TLS


def test_tls_client_with_the_ca_and_token_is_served_end_to_end(
    secured: ServerProcess, pki: dict[str, Path]
) -> None:
    """Through the real client; the search reaches its stages over TLS with the token."""
    with NeuralIRClient(
        target=secured.address, tls_ca=pki["ca"], token=TOKEN, max_attempts=1
    ) as client:
        result = client.search(QUERY, k=3, rerank_depth=2, timeout_s=30)
        assert len(result.hits) == 3
        assert result.rerank_model_id
        assert {t.stage for t in result.timings} >= {"encode", "rerank", "search"}


@pytest.mark.parametrize("name", list(RPCS))
def test_every_rpc_is_served_with_the_token(tls: grpc.Channel, dimension: int, name: str) -> None:
    rpc(tls, name)(_valid_requests(dimension)[name], timeout=30, metadata=_bearer(TOKEN))


def test_plaintext_client_is_refused_by_the_tls_server(secured: ServerProcess) -> None:
    with grpc.insecure_channel(secured.address) as channel:
        for call in (
            lambda: health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(), timeout=5
            ),
            lambda: rpc(channel, "Describe")(
                index_service_pb2.DescribeRequest(), timeout=5, metadata=_bearer(TOKEN)
            ),
        ):
            with pytest.raises(grpc.RpcError) as caught:
                call()
            assert caught.value.code() == grpc.StatusCode.UNAVAILABLE


def test_client_trusting_another_ca_is_refused(
    secured: ServerProcess, pki: dict[str, Path]
) -> None:
    with _tls_channel(secured.address, pki["other_ca"]) as channel:
        with pytest.raises(grpc.RpcError) as caught:
            rpc(channel, "Describe")(
                index_service_pb2.DescribeRequest(), timeout=5, metadata=_bearer(TOKEN)
            )
        assert caught.value.code() == grpc.StatusCode.UNAVAILABLE


# ---------------------------------------------------------------- bearer token


@pytest.mark.parametrize("name", list(RPCS))
@pytest.mark.parametrize(
    ("metadata", "message"),
    [
        ((), "missing bearer token"),
        (_bearer(WRONG_TOKENS[0]), "invalid bearer token"),
        (_bearer(WRONG_TOKENS[1]), "invalid bearer token"),
        (_bearer(WRONG_TOKENS[2]), "invalid bearer token"),
        ((("authorization", TOKEN),), "invalid bearer token"),  # no "Bearer " scheme
        ((("authorization", f"bearer {TOKEN}"),), "invalid bearer token"),
    ],
    ids=["missing", "one-char-off", "longer", "prefix", "no-scheme", "lowercase-scheme"],
)
def test_missing_or_wrong_token_is_unauthenticated(
    tls: grpc.Channel, dimension: int, name: str, metadata: Any, message: str
) -> None:
    with pytest.raises(grpc.RpcError) as caught:
        rpc(tls, name)(_valid_requests(dimension)[name], timeout=30, metadata=metadata)
    assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert caught.value.details() == message
    assert TOKEN not in caught.value.details()


def test_garbage_without_token_is_unauthenticated_before_it_is_parsed(tls: grpc.Channel) -> None:
    """Authentication comes first: a caller without the token learns nothing about input."""
    with pytest.raises(grpc.RpcError) as caught:
        rpc(tls, "Search")(b"\xff\xff\xff", timeout=10)
    assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED


def test_reflection_needs_the_token(tls: grpc.Channel) -> None:
    stub = reflection_pb2_grpc.ServerReflectionStub(tls)
    request = reflection_pb2.ServerReflectionRequest(list_services="")
    with pytest.raises(grpc.RpcError) as caught:
        list(stub.ServerReflectionInfo(iter([request]), timeout=10))
    assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED
    replies = list(stub.ServerReflectionInfo(iter([request]), timeout=10, metadata=_bearer(TOKEN)))
    names = {s.name for s in replies[0].list_services_response.service}
    assert SERVICE_NAMES["search"] in names


def test_health_needs_no_token(tls: grpc.Channel) -> None:
    stub = health_pb2_grpc.HealthStub(tls)
    for service in ("", *SERVICE_NAMES.values()):
        reply = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=5)
        assert reply.status == SERVING, service
    watch = stub.Watch(health_pb2.HealthCheckRequest(service=""), timeout=5)
    assert next(watch).status == SERVING
    watch.cancel()


def test_token_is_never_logged(secured: ServerProcess, tls: grpc.Channel, dimension: int) -> None:
    """After served, refused and failing calls (run here and by the tests above), neither
    the token nor the wrong ones callers sent appear in the server's log."""
    requests = _valid_requests(dimension)
    rpc(tls, "Search")(requests["Search"], timeout=30, metadata=_bearer(TOKEN))
    for wrong in WRONG_TOKENS:
        with pytest.raises(grpc.RpcError):
            rpc(tls, "Search")(requests["Search"], timeout=30, metadata=_bearer(wrong))
    with pytest.raises(grpc.RpcError):  # bad input with a good token
        rpc(tls, "Search")(
            search_service_pb2.SearchRequest(query=""), timeout=30, metadata=_bearer(TOKEN)
        )
    log = secured.log()
    assert '"auth_token": "set"' in log  # the settings were logged, the token shown as "set"
    assert '"code": "UNAUTHENTICATED"' in log  # refused calls were logged, without the token
    for secret in (TOKEN, *WRONG_TOKENS):
        assert secret not in log
    assert "tok-7f3a9c41" not in log


def test_settings_never_show_the_token(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    settings = ServerSettings(auth_token=TOKEN)
    assert TOKEN not in repr(settings)
    assert TOKEN not in str(settings.describe())
    # The token comes from NEURALIR_AUTH_TOKEN or --auth-token-file (the file wins).
    parser = argparse.ArgumentParser()
    monkeypatch.setenv("NEURALIR_AUTH_TOKEN", "from-env")
    add_server_arguments(parser)
    assert settings_from_args(parser.parse_args([]), ["index"]).auth_token == "from-env"
    token_file = tmp_path / "token"
    token_file.write_text("from-file\n")
    args = parser.parse_args(["--auth-token-file", str(token_file)])
    assert settings_from_args(args, ["index"]).auth_token == "from-file"


# ---------------------------------------------------------------- transport limits


def test_flag_defaults_are_the_settings_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    """No flag and no NEURALIR_* variable: the parsed settings equal ServerSettings()."""
    for name in [n for n in os.environ if n.startswith("NEURALIR_")]:
        monkeypatch.delenv(name)
    parser = argparse.ArgumentParser()
    add_server_arguments(parser)
    parsed = settings_from_args(parser.parse_args([]), ["encoder", "rerank"])
    defaults = ServerSettings()
    for field in (
        "encoder_batching",
        "rerank_batching",
        "max_message_bytes",
        "max_concurrent_streams",
        "max_in_flight_rpcs",
        "grace_period_s",
        "max_connection_age_s",
    ):
        assert getattr(parsed, field) == getattr(defaults, field), field
    # One connection's streams outnumber either queue's items and the in-flight cap, so a flood
    # meets the queue or the cap (RESOURCE_EXHAUSTED + RetryInfo) first.
    assert defaults.max_concurrent_streams > defaults.encoder_batching.max_queue_items
    assert defaults.max_concurrent_streams > defaults.rerank_batching.max_queue_items
    assert defaults.max_concurrent_streams > defaults.max_in_flight_rpcs


def test_message_size_and_stream_limits_are_settings_with_safe_defaults() -> None:
    defaults = ServerSettings()
    assert defaults.max_message_bytes == 16 << 20
    assert defaults.max_concurrent_streams == 4096
    options = dict(_server_options(defaults))
    assert options["grpc.max_receive_message_length"] == 16 << 20
    assert options["grpc.max_send_message_length"] == 16 << 20
    assert options["grpc.max_concurrent_streams"] == 4096
    parser = argparse.ArgumentParser()
    add_server_arguments(parser)
    args = parser.parse_args(["--max-message-mib", "4", "--max-concurrent-streams", "32"])
    settings = settings_from_args(args, ["index"])
    assert settings.max_message_bytes == 4 << 20
    assert dict(_server_options(settings))["grpc.max_concurrent_streams"] == 32
    # gRPC core neither refuses streams past the limit nor drops the calls grpc.aio has yet to
    # accept before the in-flight cap can shed them (tests/test_streams_flood.py).
    assert options["grpc.http.overload_protection"] == 0
    assert options["grpc.server.max_pending_requests_hard_limit"] >= 16 * 4096
