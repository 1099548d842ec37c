"""The whole path end to end: SearchService over the encoder, index and reranker, in every
mode, with and without rerank, all in one process (stages called in-process, or over loopback
gRPC) and as separate processes."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from servers import SeparateStages, assert_invalid_argument, embedded, server_settings

from neuralir.client import NeuralIRClient, Passage, SearchResult
from neuralir.index.corpus import CorpusDoc
from neuralir.models.ranking import RRF_K, convex_fusion, reciprocal_rank_fusion
from neuralir.server.embedded import EmbeddedServer
from neuralir.server.pipeline.search import FUSION_DEPTH, FusionDefaults
from neuralir.v1 import search_service_pb2, search_service_pb2_grpc
from neuralir.v1.limits import (
    MAX_BATCH_SEARCHES,
    MAX_EF,
    MAX_K,
    MAX_QUERY_CHARS,
    MAX_RERANK_DEPTH,
    MAX_SNIPPET_CHARS,
)

# Words found in both small corpora (ADI abstracts, and the json/subprocess/shutil docs).
QUERY = "retrieval of documents, files and processes"
MODES = ("dense", "lexical", "hybrid")
STAGES = {
    "dense": ["encode", "dense", "documents"],
    "lexical": ["lexical", "documents"],
    "hybrid": ["encode", "dense", "lexical", "fuse", "documents"],
}


@pytest.fixture(scope="module")
def docs(small_corpus_docs: list[CorpusDoc]) -> dict[str, CorpusDoc]:
    return {d.doc_id: d for d in small_corpus_docs}


def _first_stage(client: NeuralIRClient, query: str, mode: str, depth: int) -> list[tuple]:
    """(doc_id, score, dense, bm25, fused) as the search service must compute them, built
    from the encoder and index services called directly."""
    if mode in ("dense", "hybrid"):
        vector = client.encode([query]).embeddings[0]
        dense = [(h.doc_id, h.score) for h in client.index_search(vector, k=depth)]
    if mode in ("lexical", "hybrid"):
        lexical = [(h.doc_id, h.score) for h in client.lexical_search(query, k=depth)]
    if mode == "dense":
        return [(d, s, s, None, None) for d, s in dense]
    if mode == "lexical":
        return [(d, s, None, s, None) for d, s in lexical]
    dense_scores, bm25_scores = dict(dense), dict(lexical)
    fusion = FusionDefaults()  # hybrid mode's default
    fused = convex_fusion(dense, lexical, fusion.dense_weight, fusion.normalization)
    return [(d, s, dense_scores.get(d), bm25_scores.get(d), s) for d, s in fused]


def _check_hit_scores(result: SearchResult, expected: list[tuple], k: int) -> None:
    assert [h.doc_id for h in result.hits] == [e[0] for e in expected[:k]]
    for hit, (_, score, dense, bm25, fused) in zip(result.hits, expected, strict=False):
        assert hit.score == pytest.approx(score, abs=1e-5)
        for got, want in (
            (hit.dense_score, dense),
            (hit.bm25_score, bm25),
            (hit.fused_score, fused),
        ):
            assert (got is None) == (want is None)
            if want is not None:
                assert got == pytest.approx(want, abs=1e-5)
        assert hit.rerank_score is None


@pytest.mark.parametrize("mode", MODES)
def test_search_without_rerank(
    client: NeuralIRClient, docs: dict[str, CorpusDoc], mode: str, bi_encoder_dir: Path
) -> None:
    k = 5
    result = client.search(QUERY, k=k, mode=mode, snippet_chars=80)
    assert len(result.hits) == k
    assert [h.rank for h in result.hits] == list(range(1, k + 1))
    depth = k if mode != "hybrid" else max(k, FUSION_DEPTH)
    _check_hit_scores(result, _first_stage(client, QUERY, mode, depth), k)
    for hit in result.hits:
        assert hit.title == docs[hit.doc_id].title
        assert hit.snippet == docs[hit.doc_id].text[:80]
    stages = [t.stage for t in result.timings]
    # hybrid runs dense and lexical concurrently: their timings may come in either order
    assert sorted(stages[:-1]) == sorted(STAGES[mode])
    assert stages[-1] == "search"
    if mode != "lexical":
        assert stages.index("encode") < stages.index("dense")
    assert stages[-2] == "documents"
    if mode == "hybrid":
        assert stages[-3] == "fuse"
    assert result.timings[-1].total_ms > 0
    assert result.rerank_model_id == ""
    assert (result.encoder_model_id != "") == (mode != "lexical")


@pytest.mark.parametrize("mode", MODES)
def test_search_with_rerank(
    client: NeuralIRClient, docs: dict[str, CorpusDoc], mode: str, cross_encoder_dir: Path
) -> None:
    k, depth = 8, 6  # the two hits past the depth keep their first-stage order
    result = client.search(QUERY, k=k, mode=mode, rerank_depth=depth)
    first_depth = max(k, depth) if mode != "hybrid" else max(k, depth, FUSION_DEPTH)
    first = _first_stage(client, QUERY, mode, first_depth)[: max(k, depth)]
    head = first[:depth]
    # The search sends the reranker each candidate's own first-stage signals.
    passages = [
        Passage(d, f"{docs[d].title} {docs[d].text}".strip(), s, bm25, dense)
        for d, s, dense, bm25, _ in head
    ]
    reranked = client.rerank(QUERY, passages)  # blend weights unset: the model's recipe
    expected_ids = [p.id for p in reranked.passages] + [e[0] for e in first[depth:k]]
    assert [h.doc_id for h in result.hits] == expected_ids[:k]
    by_id = {p.id: p for p in reranked.passages}
    for hit in result.hits:
        if hit.doc_id in by_id:
            assert hit.rerank_score == pytest.approx(
                by_id[hit.doc_id].cross_encoder_score, abs=1e-5
            )
            assert hit.score == pytest.approx(by_id[hit.doc_id].score, abs=1e-5)
        else:
            assert hit.rerank_score is None
    assert sum(h.rerank_score is not None for h in result.hits) == depth
    assert result.rerank_model_id == reranked.model_id
    assert "rerank" in [t.stage for t in result.timings]
    rerank_timing = next(t for t in result.timings if t.stage == "rerank")
    assert rerank_timing.batch_size >= depth


def test_search_finds_a_document_by_its_text(
    client: NeuralIRClient, small_corpus_docs: list[CorpusDoc]
) -> None:
    doc = small_corpus_docs[len(small_corpus_docs) // 3]
    dense = client.search(doc.passage[:MAX_QUERY_CHARS], k=3, mode="dense")
    assert dense.hits[0].doc_id == doc.doc_id
    lexical = client.search(doc.title or doc.text[:200], k=3, mode="lexical")
    assert doc.doc_id in lexical.doc_ids
    hybrid = client.search(doc.passage[:MAX_QUERY_CHARS], k=3, mode="hybrid", rerank_depth=5)
    assert doc.doc_id in hybrid.doc_ids


def test_blend_weight_and_rerank_model_reach_the_reranker(client: NeuralIRClient) -> None:
    ce_only = client.search(QUERY, k=5, mode="hybrid", rerank_depth=5, blend_weight=1.0)
    plain = client.search(QUERY, k=5, mode="hybrid")
    assert sorted(ce_only.doc_ids) == sorted(plain.doc_ids)
    # Weight 0: the first stage's own signal alone, so BM25's order is kept.
    bm25_only = client.search(QUERY, k=5, mode="lexical", rerank_depth=5, blend_weight=0.0)
    assert bm25_only.doc_ids == client.search(QUERY, k=5, mode="lexical").doc_ids
    assert [h.score for h in ce_only.hits] == [h.rerank_score for h in ce_only.hits]
    fp32 = client.search(QUERY, k=5, mode="hybrid", rerank_depth=5, rerank_model="fp32")
    assert fp32.rerank_model_id != ce_only.rerank_model_id
    assert fp32.rerank_model_id.startswith(ce_only.rerank_model_id.split("@")[0])


def test_snippets_titles_and_k_larger_than_the_corpus(
    client: NeuralIRClient, docs: dict[str, CorpusDoc]
) -> None:
    result = client.search(QUERY, k=MAX_K, mode="dense", snippet_chars=0)
    assert len(result.hits) == len(docs)
    assert all(hit.snippet == "" for hit in result.hits)
    assert all(hit.title == docs[hit.doc_id].title for hit in result.hits)


def test_query_without_indexed_terms_in_lexical_mode(client: NeuralIRClient) -> None:
    assert client.search("the of and", k=5, mode="lexical").hits == []
    assert len(client.search("the of and", k=5, mode="hybrid").hits) == 5  # dense still answers


def test_batch_search_equals_single_searches(client: NeuralIRClient) -> None:
    """Lexical: no model involved, so a batch answers exactly as single calls do."""
    queries = [QUERY, "information science definitions", "copy a file"]
    batch = client.batch_search(queries, k=4, mode="lexical", snippet_chars=30)
    singles = [client.search(q, k=4, mode="lexical", snippet_chars=30) for q in queries]
    assert [r.hits for r in batch] == [r.hits for r in singles]


def test_batch_search_answers_in_order(
    client: NeuralIRClient, small_corpus_docs: list[CorpusDoc]
) -> None:
    """Searches of a batch run concurrently, so the encoder and reranker batch them together
    (int8 scores then move a little); each answer still belongs to its own query."""
    wanted = small_corpus_docs[:: max(1, len(small_corpus_docs) // 4)][:4]
    queries = [doc.passage[:MAX_QUERY_CHARS] for doc in wanted]
    batch = client.batch_search(queries, k=5, mode="hybrid", rerank_depth=5, blend_weight=0.0)
    assert len(batch) == len(queries)
    for doc, result in zip(wanted, batch, strict=True):
        assert result.hits[0].doc_id == doc.doc_id
        assert all(hit.rerank_score is not None for hit in result.hits)
        assert result.rerank_model_id


def test_unknown_rerank_model_names_the_search_field(client: NeuralIRClient) -> None:
    with pytest.raises(grpc.RpcError) as caught:
        client.search(QUERY, k=3, rerank_depth=3, rerank_model="no-such-model")
    assert_invalid_argument(caught.value, "rerank_model")


# ---------------------------------------------------------------- limits


@pytest.mark.parametrize(
    ("query", "options", "field"),
    [
        ("", {}, "query"),
        ("q" * (MAX_QUERY_CHARS + 1), {}, "query"),
        (QUERY, {"k": 0}, "k"),
        (QUERY, {"k": MAX_K + 1}, "k"),
        (QUERY, {"rerank_depth": -1}, "rerank_depth"),
        (QUERY, {"rerank_depth": MAX_RERANK_DEPTH + 1}, "rerank_depth"),
        (QUERY, {"snippet_chars": -1}, "snippet_chars"),
        (QUERY, {"snippet_chars": MAX_SNIPPET_CHARS + 1}, "snippet_chars"),
        (QUERY, {"ef": -1}, "ef"),
        (QUERY, {"ef": MAX_EF + 1}, "ef"),
        (QUERY, {"blend_weight": 1.01}, "blend_weight"),
        (QUERY, {"blend_weight": float("inf")}, "blend_weight"),
    ],
    ids=[
        "empty-query",
        "long-query",
        "k-0",
        "k-too-big",
        "depth-negative",
        "depth-too-big",
        "snippet-negative",
        "snippet-too-big",
        "ef-negative",
        "ef-too-big",
        "weight-above-1",
        "weight-inf",
    ],
)
def test_bad_search_is_invalid_argument(
    client: NeuralIRClient, query: str, options: dict, field: str
) -> None:
    with pytest.raises(grpc.RpcError) as caught:
        client.search(query, **options)
    assert_invalid_argument(caught.value, field)


@pytest.fixture(scope="module")
def search_stub(all_in_one: EmbeddedServer) -> Iterator[search_service_pb2_grpc.SearchServiceStub]:
    with grpc.insecure_channel(all_in_one.address) as channel:
        yield search_service_pb2_grpc.SearchServiceStub(channel)


def test_unknown_mode_is_invalid_argument(
    search_stub: search_service_pb2_grpc.SearchServiceStub,
) -> None:
    request = search_service_pb2.SearchRequest(query=QUERY, k=3, mode=42)
    with pytest.raises(grpc.RpcError) as caught:
        search_stub.Search(request, timeout=30)
    assert_invalid_argument(caught.value, "mode")


def test_unspecified_mode_is_hybrid(
    client: NeuralIRClient, search_stub: search_service_pb2_grpc.SearchServiceStub
) -> None:
    response = search_stub.Search(search_service_pb2.SearchRequest(query=QUERY, k=5), timeout=30)
    assert [h.doc_id for h in response.hits] == client.search(QUERY, k=5, mode="hybrid").doc_ids


@pytest.mark.parametrize(
    ("requests", "field"),
    [
        ([], "requests"),
        ([search_service_pb2.SearchRequest(query="q", k=1)] * (MAX_BATCH_SEARCHES + 1), "requests"),
        (
            [
                search_service_pb2.SearchRequest(query="q", k=1),
                search_service_pb2.SearchRequest(query="q", k=0),
            ],
            "requests[1].k",
        ),
    ],
    ids=["none", "too-many", "nested-field"],
)
def test_bad_batch_search_is_invalid_argument(
    search_stub: search_service_pb2_grpc.SearchServiceStub, requests: list, field: str
) -> None:
    with pytest.raises(grpc.RpcError) as caught:
        search_stub.BatchSearch(
            search_service_pb2.BatchSearchRequest(requests=requests), timeout=30
        )
    assert_invalid_argument(caught.value, field)


# ---------------------------------------------------------------- RRF (pure function)


def test_rrf_hand_computed() -> None:
    fused = reciprocal_rank_fusion([["a", "b", "c"], ["c", "a", "d"]], k=60)
    expected = {
        "a": 1 / 61 + 1 / 62,
        "c": 1 / 63 + 1 / 61,
        "b": 1 / 62,
        "d": 1 / 63,
    }
    assert [doc for doc, _ in fused] == ["a", "c", "b", "d"]
    for doc, score in fused:
        assert score == pytest.approx(expected[doc], rel=1e-12)


def test_rrf_ties_keep_first_appearance_and_defaults() -> None:
    assert RRF_K == 60
    fused = reciprocal_rank_fusion([["x", "y"], ["y", "x"]])
    assert [doc for doc, _ in fused] == ["x", "y"]
    assert fused[0][1] == pytest.approx(fused[1][1])
    assert [d for d, _ in reciprocal_rank_fusion([["p", "q", "r"]])] == ["p", "q", "r"]
    assert reciprocal_rank_fusion([]) == []
    assert reciprocal_rank_fusion([[], []]) == []
    # k = 0 weighs the top ranks much more: one first place beats two second places
    fused = reciprocal_rank_fusion([["a", "b"], ["c", "b"], ["d", "a"]], k=0)
    assert fused[0] == ("a", pytest.approx(1.5))


# ---------------------------------------------------------------- separate processes


@pytest.fixture(scope="module")
def separate(
    tmp_path_factory: pytest.TempPathFactory,
    bi_encoder_dir: Path,
    rerank_models: tuple,
    small_index: Path,
) -> Iterator[SeparateStages]:
    stages = SeparateStages(
        tmp_path_factory.mktemp("stages"), bi_encoder_dir, rerank_models, small_index
    )
    try:
        yield stages
    finally:
        codes = stages.stop()
        assert codes == {"search": 0, "encoder": 0, "index": 0, "rerank": 0}


@pytest.fixture(scope="module")
def separate_client(separate: SeparateStages) -> Iterator[NeuralIRClient]:
    with NeuralIRClient(target=separate.search_address, max_attempts=1, timeout_s=60) as c:
        yield c


@pytest.fixture(scope="module")
def loopback(
    bi_encoder_dir: Path, rerank_models: tuple, small_index: Path
) -> Iterator[EmbeddedServer]:
    """serve all, its search service calling its own stages over loopback gRPC."""
    settings = server_settings(bi_encoder_dir, rerank_models, small_index, local_stages="grpc")
    with embedded(settings) as server:
        yield server


@pytest.fixture(scope="module")
def loopback_client(loopback: EmbeddedServer) -> Iterator[NeuralIRClient]:
    with NeuralIRClient(target=loopback.address, max_attempts=1, timeout_s=60) as c:
        c.wait_ready(timeout_s=60, service="neuralir.v1.SearchService")
        yield c


CASES = [{"mode": mode, "rerank_depth": depth} for mode in MODES for depth in (0, 6)] + [
    {"mode": "hybrid", "rerank_depth": 5, "blend_weight": 0.5},
    {"mode": "dense", "rerank_depth": 4, "rerank_model": "fp32"},
]


@pytest.mark.slow
@pytest.mark.parametrize("topology", ["loopback", "separate"])
@pytest.mark.parametrize("options", CASES, ids=lambda o: "-".join(str(v) for v in o.values()))
def test_every_topology_answers_like_in_process_stages(
    client: NeuralIRClient, request: pytest.FixtureRequest, topology: str, options: dict
) -> None:
    """The same pipeline over gRPC backends (loopback in one process, or separate processes)
    gives what it gives on in-process backends: the transport changes nothing."""
    other: NeuralIRClient = request.getfixturevalue(f"{topology}_client")
    one = client.search(QUERY, k=8, snippet_chars=40, **options)
    apart = other.search(QUERY, k=8, snippet_chars=40, **options)
    assert apart.doc_ids == one.doc_ids
    assert len(one.hits) == 8
    for a, b in zip(apart.hits, one.hits, strict=True):
        assert (a.title, a.snippet, a.rank) == (b.title, b.snippet, b.rank)
        for name in ("score", "dense_score", "bm25_score", "fused_score", "rerank_score"):
            x, y = getattr(a, name), getattr(b, name)
            assert (x is None) == (y is None), name
            if x is not None:
                assert x == pytest.approx(y, abs=1e-5), name
    assert (apart.encoder_model_id, apart.rerank_model_id) == (
        one.encoder_model_id,
        one.rerank_model_id,
    )
    assert [t.stage for t in apart.timings][-1] == "search"


@pytest.mark.slow
def test_each_separate_stage_serves_its_own_service(separate: SeparateStages) -> None:
    with NeuralIRClient(target=separate.address("encoder"), max_attempts=1) as encoder:
        assert encoder.encode(["hello"]).embeddings.shape == (1, 384)
        with pytest.raises(grpc.RpcError) as caught:
            encoder.lexical_search("hello", k=3)  # the index is not in this process
        assert caught.value.code() == grpc.StatusCode.UNIMPLEMENTED
    with NeuralIRClient(target=separate.address("index"), max_attempts=1) as index:
        assert index.describe_index().size > 0
    with NeuralIRClient(target=separate.address("rerank"), max_attempts=1) as rerank:
        assert len(rerank.rerank("q", [("a", "text")]).passages) == 1


@pytest.mark.parametrize(("local_stages", "rpcs"), [("inprocess", 1), ("grpc", 6)])
def test_serve_all_makes_one_rpc_per_search(
    bi_encoder_dir: Path,
    rerank_models: tuple,
    small_index: Path,
    caplog: pytest.LogCaptureFixture,
    local_stages: str,
    rpcs: int,
) -> None:
    """In-process stages: a hybrid search with rerank is the caller's one RPC (one pass through
    the interceptors: token, metrics, access log). Over loopback it is six."""
    settings = server_settings(
        bi_encoder_dir,
        rerank_models,
        small_index,
        local_stages=local_stages,
        access_log="all",
        auth_token="s3cret",
    )
    with (
        embedded(settings) as server,
        NeuralIRClient(target=server.address, token="s3cret", max_attempts=1) as c,
    ):
        c.wait_ready(timeout_s=60, service="neuralir.v1.SearchService")
        caplog.clear()
        with caplog.at_level(logging.INFO, logger="neuralir.access"):
            assert len(c.search(QUERY, k=5, mode="hybrid", rerank_depth=5).hits) == 5
            deadline = time.monotonic() + 10
            while len(_access_lines(caplog)) < rpcs and time.monotonic() < deadline:
                time.sleep(0.01)
            time.sleep(0.2)  # a stray late line would show up now
    methods = sorted(_access_lines(caplog))
    assert len(methods) == rpcs, methods
    assert "/neuralir.v1.SearchService/Search" in methods


def _access_lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [
        str(r.__dict__.get("fields", {}).get("method", r.getMessage()))
        for r in caplog.records
        if r.name == "neuralir.access"
    ]


# ---------------------------------------------------------------- fusion and cascades


@pytest.mark.parametrize("weight", [0.0, 0.3, 1.0])
def test_convex_fusion_is_computed_over_both_lists(client: NeuralIRClient, weight: float) -> None:
    k = 10
    result = client.search(QUERY, k=k, mode="hybrid", fusion="convex", fusion_weight=weight)
    vector = client.encode([QUERY]).embeddings[0]
    dense = [(h.doc_id, h.score) for h in client.index_search(vector, k=FUSION_DEPTH)]
    lexical = [(h.doc_id, h.score) for h in client.lexical_search(QUERY, k=FUSION_DEPTH)]
    normalization = FusionDefaults().normalization  # the server's default
    expected = convex_fusion(dense, lexical, weight, normalization)[:k]
    assert result.doc_ids == [d for d, _ in expected]
    for hit, (_, score) in zip(result.hits, expected, strict=True):
        assert hit.fused_score == pytest.approx(score, abs=1e-5)
        assert hit.score == pytest.approx(score, abs=1e-5)


def test_rrf_fusion_can_be_asked_for(client: NeuralIRClient) -> None:
    rrf = client.search(QUERY, k=10, mode="hybrid", fusion="rrf")
    vector = client.encode([QUERY]).embeddings[0]
    dense = [h.doc_id for h in client.index_search(vector, k=FUSION_DEPTH)]
    lexical = [h.doc_id for h in client.lexical_search(QUERY, k=FUSION_DEPTH)]
    expected = reciprocal_rank_fusion([dense, lexical])[:10]
    assert rrf.doc_ids == [d for d, _ in expected]
    assert [h.fused_score for h in rrf.hits] == pytest.approx([s for _, s in expected])


@pytest.mark.parametrize("weight", [-0.5, 1.01, float("nan")])
def test_a_fusion_weight_outside_the_unit_interval_is_refused(
    client: NeuralIRClient, weight: float
) -> None:
    with pytest.raises(grpc.RpcError) as caught:
        client.search(QUERY, k=5, mode="hybrid", fusion="convex", fusion_weight=weight)
    assert_invalid_argument(caught.value, "fusion_weight")


def test_an_unknown_fusion_is_refused(client: NeuralIRClient) -> None:
    request = search_service_pb2.SearchRequest(query=QUERY, k=3, fusion=7)  # type: ignore[arg-type]
    with grpc.insecure_channel(client.settings.target) as channel:
        stub = search_service_pb2_grpc.SearchServiceStub(channel)
        with pytest.raises(grpc.RpcError) as caught:
            stub.Search(request, timeout=10)
    assert_invalid_argument(caught.value, "fusion")


def test_a_cascade_reranks_twice(client: NeuralIRClient, docs: dict[str, CorpusDoc]) -> None:
    """small over the top 8, then default over the top 4 of that order: two Rerank calls."""
    k, first_depth, depth = 8, 8, 4
    result = client.search(
        QUERY, k=k, mode="lexical", rerank_depth=depth, cascade=("small", first_depth)
    )
    first = _first_stage(client, QUERY, "lexical", max(k, first_depth))
    passages = [
        Passage(d, f"{docs[d].title} {docs[d].text}".strip(), s, bm25, dense)
        for d, s, dense, bm25, _ in first[:first_depth]
    ]
    by_id = {p.id: p for p in passages}
    small = client.rerank(QUERY, passages, model="small")
    second = client.rerank(QUERY, [by_id[p.id] for p in small.passages[:depth]])
    expected = [p.id for p in second.passages] + [p.id for p in small.passages[depth:]]
    assert result.doc_ids == expected[:k]
    assert result.cascade_model_id == small.model_id
    assert result.rerank_model_id == second.model_id
    scores = {p.id: p.cross_encoder_score for p in second.passages}
    scores |= {p.id: p.cross_encoder_score for p in small.passages[depth:]}
    for hit in result.hits:
        assert hit.rerank_score == pytest.approx(scores[hit.doc_id], abs=1e-5)
    assert [t.stage for t in result.timings if "rerank" in t.stage or t.stage == "cascade"] == [
        "cascade",
        "rerank",
    ]


@pytest.mark.parametrize(
    ("options", "field"),
    [
        ({"rerank_depth": 0, "cascade": ("small", 10)}, "cascade"),
        ({"rerank_depth": 10, "cascade": ("small", 10)}, "cascade.depth"),
        ({"rerank_depth": 5, "cascade": ("small", MAX_RERANK_DEPTH + 1)}, "cascade.depth"),
        ({"rerank_depth": 5, "cascade": ("no-such-model", 10)}, "cascade.model"),
    ],
)
def test_a_bad_cascade_is_refused(client: NeuralIRClient, options: dict, field: str) -> None:
    with pytest.raises(grpc.RpcError) as caught:
        client.search(QUERY, k=5, mode="lexical", **options)
    assert_invalid_argument(caught.value, field)
