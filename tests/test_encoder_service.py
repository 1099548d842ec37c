"""EncoderService alone, through the real client, on the all-in-one test server."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest
from servers import assert_invalid_argument

from neuralir.client import NeuralIRClient
from neuralir.models.encoder import Encoder
from neuralir.models.manifest import load_manifest
from neuralir.server.embedded import EmbeddedServer
from neuralir.v1 import encoder_service_pb2, encoder_service_pb2_grpc
from neuralir.v1.limits import MAX_QUERY_CHARS, MAX_TEXTS_PER_ENCODE


@pytest.fixture(scope="module")
def encoder(bi_encoder_dir: Path) -> Encoder:
    return Encoder(bi_encoder_dir)


@pytest.fixture(scope="module")
def stub(all_in_one: EmbeddedServer) -> Iterator[encoder_service_pb2_grpc.EncoderServiceStub]:
    """The raw stub, for requests the typed client will not build (unknown enum values)."""
    with grpc.insecure_channel(all_in_one.address) as channel:
        yield encoder_service_pb2_grpc.EncoderServiceStub(channel)


def test_encode_returns_the_models_embeddings(
    client: NeuralIRClient, encoder: Encoder, bi_encoder_dir: Path
) -> None:
    result = client.encode(["what is information retrieval"])
    assert result.model_id == load_manifest(bi_encoder_dir).model_id
    assert result.embeddings.shape == (1, 384)
    assert result.embeddings.dtype == np.float32
    # one text alone in its batch: exactly what the runtime gives in-process
    np.testing.assert_allclose(
        result.embeddings, encoder.encode(["what is information retrieval"]), atol=1e-6
    )
    assert result.token_counts == [6]


def test_encode_keeps_order_and_reports_tokens(client: NeuralIRClient, encoder: Encoder) -> None:
    texts = ["first text", "a second, rather longer text about libraries", "word " * 400]
    result = client.encode(texts, kind="passage")
    assert result.embeddings.shape == (3, 384)
    np.testing.assert_allclose(np.linalg.norm(result.embeddings, axis=1), 1.0, atol=1e-5)
    expected = encoder.encode_detailed(texts, "passage")
    assert result.token_counts == expected.token_counts
    assert result.token_counts[2] == 256  # truncated to the model's max length
    np.testing.assert_allclose(result.embeddings, expected.embeddings, atol=1e-5)


def test_encode_timing(client: NeuralIRClient) -> None:
    timing = client.encode(["timing please", "and another"]).timing
    assert timing.stage == "encode"
    assert timing.batch_size >= 2
    assert timing.tokenize_ms > 0
    assert timing.inference_ms > 0
    assert timing.queue_ms >= 0
    assert timing.total_ms >= timing.inference_ms


def test_encode_response_fields(stub: encoder_service_pb2_grpc.EncoderServiceStub) -> None:
    request = encoder_service_pb2.EncodeRequest(texts=["a", "bb"])  # kind unset = query
    response = stub.Encode(request, timeout=30)
    assert response.dimension == 384
    assert response.max_length == 256
    assert len(response.embeddings) == 2 * 384 * 4
    assert list(response.token_counts) == [3, 3]


def test_unspecified_kind_is_query(
    client: NeuralIRClient, stub: encoder_service_pb2_grpc.EncoderServiceStub
) -> None:
    unset = stub.Encode(encoder_service_pb2.EncodeRequest(texts=["a query"]), timeout=30)
    vector = np.frombuffer(unset.embeddings, dtype="<f4")
    np.testing.assert_allclose(vector, client.encode(["a query"], "query").embeddings[0], atol=1e-6)


def test_limits_at_the_boundary_are_accepted(client: NeuralIRClient) -> None:
    assert client.encode(["x"] * MAX_TEXTS_PER_ENCODE).embeddings.shape == (256, 384)
    assert client.encode(["y " * (MAX_QUERY_CHARS // 2)]).token_counts == [256]


@pytest.mark.parametrize(
    ("texts", "field"),
    [
        ([], "texts"),
        (["x"] * (MAX_TEXTS_PER_ENCODE + 1), "texts"),
        (["fine", "y" * (MAX_QUERY_CHARS + 1)], "texts[1]"),
        (["fine", ""], "texts[1]"),
        (["   \n"], "texts[0]"),
    ],
    ids=["no-texts", "too-many-texts", "too-long", "empty", "blank"],
)
def test_bad_texts_are_invalid_argument(
    client: NeuralIRClient, texts: list[str], field: str
) -> None:
    with pytest.raises(grpc.RpcError) as caught:
        client.encode(texts)
    assert_invalid_argument(caught.value, field)


def test_unknown_kind_is_invalid_argument(
    stub: encoder_service_pb2_grpc.EncoderServiceStub,
) -> None:
    request = encoder_service_pb2.EncodeRequest(texts=["a"], kind=99)
    with pytest.raises(grpc.RpcError) as caught:
        stub.Encode(request, timeout=30)
    assert_invalid_argument(caught.value, "kind")
