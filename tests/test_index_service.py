"""IndexService alone (dense, BM25, documents, describe), through the real client."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest
from servers import assert_invalid_argument

from neuralir.client import NeuralIRClient
from neuralir.index.corpus import CorpusDoc
from neuralir.models.encoder import Encoder
from neuralir.models.manifest import load_manifest, sha256_file
from neuralir.server.embedded import EmbeddedServer
from neuralir.v1 import index_service_pb2, index_service_pb2_grpc
from neuralir.v1.limits import MAX_DOC_IDS, MAX_EF, MAX_K, MAX_QUERY_CHARS


@pytest.fixture(scope="module")
def encoder(bi_encoder_dir: Path) -> Encoder:
    return Encoder(bi_encoder_dir)


@pytest.fixture(scope="module")
def stub(all_in_one: EmbeddedServer) -> Iterator[index_service_pb2_grpc.IndexServiceStub]:
    with grpc.insecure_channel(all_in_one.address) as channel:
        yield index_service_pb2_grpc.IndexServiceStub(channel)


@pytest.fixture(scope="module")
def probes(small_corpus_docs: list[CorpusDoc]) -> list[CorpusDoc]:
    """A few documents spread over the corpus: first, middle, last."""
    docs = small_corpus_docs
    return [docs[0], docs[len(docs) // 2], docs[-1]]


def test_describe(
    client: NeuralIRClient,
    small_corpus: Path,
    small_corpus_docs: list[CorpusDoc],
    bi_encoder_dir: Path,
) -> None:
    info = client.describe_index()
    assert info.size == len(small_corpus_docs)
    assert info.dimension == 384
    assert (info.metric, info.dtype) == ("ip", "f32")
    assert (info.connectivity, info.expansion_add, info.expansion_search) == (16, 128, 64)
    assert info.encoder_model_id == load_manifest(bi_encoder_dir).model_id
    assert info.corpus_sha256 == sha256_file(small_corpus)
    assert "k1=0.9" in info.bm25_parameters
    assert "stemmer=english" in info.bm25_parameters
    assert info.built_at


def test_dense_search_finds_the_document_itself(
    client: NeuralIRClient, encoder: Encoder, probes: list[CorpusDoc]
) -> None:
    for doc in probes:
        vector = encoder.encode([doc.passage], "passage")[0]
        hits = client.index_search(vector, k=5)
        assert hits[0].doc_id == doc.doc_id
        # the index embedded it in a batch of 64: int8 run-time quantization moves it a little
        assert hits[0].score == pytest.approx(1.0, abs=0.03)
        assert [h.rank for h in hits] == [1, 2, 3, 4, 5]
        scores = [h.score for h in hits]
        assert scores == sorted(scores, reverse=True)
        assert len({h.doc_id for h in hits}) == 5


def test_dense_scores_are_cosines(
    client: NeuralIRClient, encoder: Encoder, small_corpus_docs: list[CorpusDoc]
) -> None:
    query = encoder.encode(["automatic indexing of documents"])[0]
    hits = client.index_search(query, k=10)
    by_id = {d.doc_id: d for d in small_corpus_docs}
    passages = encoder.encode([by_id[h.doc_id].passage for h in hits], "passage")
    # passages re-encoded in another batch: allow the int8 run-time quantization error
    np.testing.assert_allclose([h.score for h in hits], passages @ query, atol=0.03)


def test_dense_search_k_and_ef(
    client: NeuralIRClient, encoder: Encoder, small_corpus_docs: list[CorpusDoc]
) -> None:
    query = encoder.encode(["retrieval"])[0]
    everything = client.index_search(query, k=MAX_K)
    assert len(everything) == len(small_corpus_docs)  # k above the size returns all
    exact = [h.doc_id for h in everything[:5]]
    for ef in (0, 16, 64, MAX_EF, 64):  # changing ef back and forth on the mmap'd index
        assert [h.doc_id for h in client.index_search(query, k=5, ef=ef)] == exact


def test_lexical_search_finds_the_document_by_title(
    client: NeuralIRClient, probes: list[CorpusDoc]
) -> None:
    for doc in probes:
        hits = client.lexical_search(doc.title or doc.text[:200], k=5)
        assert doc.doc_id in [h.doc_id for h in hits[:3]], (doc.title, hits)
        scores = [h.score for h in hits]
        assert all(s > 0 for s in scores)
        assert scores == sorted(scores, reverse=True)
        assert [h.rank for h in hits] == list(range(1, len(hits) + 1))


def test_lexical_search_without_indexed_terms_is_empty(client: NeuralIRClient) -> None:
    assert client.lexical_search("the of and", k=10) == []  # stopwords only
    assert client.lexical_search("zzqxv qqqzzk", k=10) == []  # unknown terms


def test_get_documents(
    stub: index_service_pb2_grpc.IndexServiceStub, small_corpus_docs: list[CorpusDoc]
) -> None:
    wanted = [small_corpus_docs[3], small_corpus_docs[0]]
    request = index_service_pb2.GetDocumentsRequest(
        doc_ids=[wanted[0].doc_id, "no-such-doc", wanted[1].doc_id]
    )
    response = stub.GetDocuments(request, timeout=30)
    got = [(d.doc_id, d.title, d.text) for d in response.documents]
    assert got == [(d.doc_id, d.title, d.text) for d in wanted]  # in the order asked
    assert list(response.missing_ids) == ["no-such-doc"]


def _vector_request(
    values: np.ndarray, dimension: int, k: int = 5, ef: int = 0
) -> index_service_pb2.IndexServiceSearchRequest:
    return index_service_pb2.IndexServiceSearchRequest(
        vector=np.asarray(values, dtype="<f4").tobytes(), dimension=dimension, k=k, ef=ef
    )


UNIT = np.eye(1, 384, dtype=np.float32)[0]


@pytest.mark.parametrize(
    ("request_", "field"),
    [
        (_vector_request(UNIT, 384, k=0), "k"),
        (_vector_request(UNIT, 384, k=MAX_K + 1), "k"),
        (_vector_request(UNIT, 384, ef=-1), "ef"),
        (_vector_request(UNIT, 384, ef=MAX_EF + 1), "ef"),
        (_vector_request(UNIT[:100], 100), "dimension"),
        (_vector_request(UNIT[:383], 384), "vector"),
        (_vector_request(np.full(384, np.nan), 384), "vector"),
        (_vector_request(np.r_[np.inf, UNIT[1:]], 384), "vector"),
        (_vector_request(np.zeros(384), 384), "vector"),
    ],
    ids=[
        "k-0",
        "k-too-big",
        "ef-negative",
        "ef-too-big",
        "dimension",
        "bytes",
        "nan",
        "inf",
        "zero",
    ],
)
def test_bad_vector_search_is_invalid_argument(
    stub: index_service_pb2_grpc.IndexServiceStub,
    request_: index_service_pb2.IndexServiceSearchRequest,
    field: str,
) -> None:
    with pytest.raises(grpc.RpcError) as caught:
        stub.Search(request_, timeout=30)
    assert_invalid_argument(caught.value, field)


@pytest.mark.parametrize("scale", [3e38, 1e-30, 7.0])
def test_a_vector_of_any_length_is_normalised(
    stub: index_service_pb2_grpc.IndexServiceStub, encoder: Encoder, scale: float
) -> None:
    """Scores stay cosines whatever the query vector's length: 3e38 values (whose length
    overflows float32) answer the same documents and scores as the unit vector."""
    unit = encoder.encode(["automatic indexing of documents"])[0]
    direction = unit / np.abs(unit).max()  # largest component 1: scale * 1 stays finite
    scaled = (direction.astype(np.float64) * scale).astype(np.float32)
    assert np.all(np.isfinite(scaled))
    want = stub.Search(_vector_request(unit, unit.size, k=5), timeout=30).documents
    got = stub.Search(_vector_request(scaled, unit.size, k=5), timeout=30).documents
    assert [d.doc_id for d in got] == [d.doc_id for d in want]
    assert all(-1.0 - 1e-5 <= d.score <= 1.0 + 1e-5 for d in got)
    np.testing.assert_allclose([d.score for d in got], [d.score for d in want], atol=1e-5)


def test_client_sends_the_vector_dimension(client: NeuralIRClient) -> None:
    with pytest.raises(grpc.RpcError) as caught:
        client.index_search(np.ones(128, dtype=np.float32), k=3)
    assert_invalid_argument(caught.value, "dimension")


@pytest.mark.parametrize(
    ("query", "k", "field"),
    [
        ("", 5, "query"),
        ("  ", 5, "query"),
        ("x " * (MAX_QUERY_CHARS // 2 + 1), 5, "query"),
        ("retrieval", 0, "k"),
        ("retrieval", MAX_K + 1, "k"),
    ],
    ids=["empty", "blank", "too-long", "k-0", "k-too-big"],
)
def test_bad_lexical_search_is_invalid_argument(
    client: NeuralIRClient, query: str, k: int, field: str
) -> None:
    with pytest.raises(grpc.RpcError) as caught:
        client.lexical_search(query, k=k)
    assert_invalid_argument(caught.value, field)


@pytest.mark.parametrize("count", [0, MAX_DOC_IDS + 1])
def test_bad_get_documents_is_invalid_argument(
    stub: index_service_pb2_grpc.IndexServiceStub, count: int
) -> None:
    request = index_service_pb2.GetDocumentsRequest(doc_ids=[str(i) for i in range(count)])
    with pytest.raises(grpc.RpcError) as caught:
        stub.GetDocuments(request, timeout=30)
    assert_invalid_argument(caught.value, "doc_ids")
