"""Bad input: each case gets a clear status and a message naming the field, and the server
keeps serving. Limits come from neuralir.server.limits (the numbers the proto comments state);
texts over a limit are refused, never cut. A property test throws generated requests at every
RPC and accepts only the documented status codes."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import grpc
import numpy as np
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from reliability import BIG_CHANNEL_OPTIONS, RPCS, rpc, rpc_code
from servers import SERVING, assert_invalid_argument, health_status

from neuralir.v1 import (
    encoder_service_pb2,
    index_service_pb2,
    rerank_service_pb2,
    search_service_pb2,
)
from neuralir.v1.limits import (
    MAX_BATCH_SEARCHES,
    MAX_DOC_IDS,
    MAX_EF,
    MAX_K,
    MAX_PASSAGE_CHARS,
    MAX_PASSAGES_PER_RERANK,
    MAX_QUERY_CHARS,
    MAX_RERANK_DEPTH,
    MAX_SNIPPET_CHARS,
    MAX_TEXTS_PER_ENCODE,
)

QUERY = "computer information retrieval"
# Codes a caller may see for a request it built itself (see docs/operating.md).
DOCUMENTED = {"OK", "INVALID_ARGUMENT", "RESOURCE_EXHAUSTED", "DEADLINE_EXCEEDED"}
TIMEOUT_S = 30.0


@pytest.fixture(scope="module")
def channel(all_in_one: Any, client: Any) -> Iterator[grpc.Channel]:
    """A channel to the all-in-one server (ready: `client` waits) that may send 64 MiB."""
    with grpc.insecure_channel(all_in_one.address, options=BIG_CHANNEL_OPTIONS) as ch:
        yield ch


@pytest.fixture(scope="module")
def dimension(channel: grpc.Channel) -> int:
    return int(rpc(channel, "Describe")(index_service_pb2.DescribeRequest(), timeout=10).dimension)


@pytest.fixture(autouse=True)
def still_serving(channel: grpc.Channel, all_in_one: Any) -> Iterator[None]:
    """After every test: health SERVING and a normal search answers."""
    yield
    assert health_status(all_in_one.address) == SERVING
    reply = rpc(channel, "Search")(search_service_pb2.SearchRequest(query=QUERY, k=3), timeout=30)
    assert len(reply.hits) == 3


def passages(n: int, text: str = "a short passage about libraries") -> list[Any]:
    return [rerank_service_pb2.Passage(id=f"p{i}", text=text) for i in range(n)]


def vector(dim: int, fill: float | None = None) -> bytes:
    values = np.full(dim, 1.0 / np.sqrt(dim), dtype="<f4")
    if fill is not None:
        values[dim // 2] = fill
    return values.tobytes()


S = search_service_pb2.SearchRequest
LONG_QUERY = "q" * (MAX_QUERY_CHARS + 1)

# (rpc, request or a function of the index dimension, field the error must name)
CASES: list[tuple[str, Any, str]] = [
    ("Search", S(query="", k=3), "query"),
    ("Search", S(query=" \t\n", k=3), "query"),
    ("Search", S(query=LONG_QUERY, k=3), "query"),
    ("Search", S(query=QUERY, k=0), "k"),
    ("Search", S(query=QUERY, k=-1), "k"),
    ("Search", S(query=QUERY, k=MAX_K + 1), "k"),
    ("Search", S(query=QUERY, k=3, mode=7), "mode"),
    ("Search", S(query=QUERY, k=3, mode=-1), "mode"),
    ("Search", S(query=QUERY, k=3, rerank_depth=MAX_RERANK_DEPTH + 1), "rerank_depth"),
    ("Search", S(query=QUERY, k=3, rerank_depth=-1), "rerank_depth"),
    ("Search", S(query=QUERY, k=3, snippet_chars=MAX_SNIPPET_CHARS + 1), "snippet_chars"),
    ("Search", S(query=QUERY, k=3, ef=MAX_EF + 1), "ef"),
    ("Search", S(query=QUERY, k=3, blend_weight=float("nan")), "blend_weight"),
    ("Search", S(query=QUERY, k=3, blend_weight=1.5), "blend_weight"),
    ("Search", S(query=QUERY, k=3, rerank_depth=2, rerank_model="no-such-model"), "rerank_model"),
    ("BatchSearch", search_service_pb2.BatchSearchRequest(), "requests"),
    (
        "BatchSearch",
        search_service_pb2.BatchSearchRequest(requests=[S(query=QUERY, k=1)] * 65),
        "requests",
    ),
    (
        "BatchSearch",
        search_service_pb2.BatchSearchRequest(requests=[S(query=QUERY, k=1), S(query=QUERY)]),
        "requests[1].k",
    ),
    ("Encode", encoder_service_pb2.EncodeRequest(), "texts"),
    (
        "Encode",
        encoder_service_pb2.EncodeRequest(texts=["x"] * (MAX_TEXTS_PER_ENCODE + 1)),
        "texts",
    ),
    ("Encode", encoder_service_pb2.EncodeRequest(texts=["fine", ""]), "texts[1]"),
    ("Encode", encoder_service_pb2.EncodeRequest(texts=[LONG_QUERY]), "texts[0]"),
    ("Encode", encoder_service_pb2.EncodeRequest(texts=["fine"], kind=9), "kind"),
    ("Rerank", rerank_service_pb2.RerankRequest(query="", passages=passages(2)), "query"),
    ("Rerank", rerank_service_pb2.RerankRequest(query=LONG_QUERY, passages=passages(2)), "query"),
    ("Rerank", rerank_service_pb2.RerankRequest(query=QUERY), "passages"),
    (
        "Rerank",
        rerank_service_pb2.RerankRequest(
            query=QUERY, passages=passages(MAX_PASSAGES_PER_RERANK + 1)
        ),
        "passages",
    ),
    (
        "Rerank",
        rerank_service_pb2.RerankRequest(
            query=QUERY,
            passages=[
                rerank_service_pb2.Passage(id="a", text="one"),
                rerank_service_pb2.Passage(id="a", text="two"),
            ],
        ),
        "passages[1].id",
    ),
    (
        "Rerank",
        rerank_service_pb2.RerankRequest(
            query=QUERY, passages=[rerank_service_pb2.Passage(id="", text="one")]
        ),
        "passages[0].id",
    ),
    (
        "Rerank",
        rerank_service_pb2.RerankRequest(
            query=QUERY, passages=passages(1, "p" * (MAX_PASSAGE_CHARS + 1))
        ),
        "passages[0].text",
    ),
    (
        "Rerank",
        rerank_service_pb2.RerankRequest(query=QUERY, passages=passages(1, "")),
        "passages[0].text",
    ),
    (
        "Rerank",
        rerank_service_pb2.RerankRequest(query=QUERY, passages=passages(2), top_n=-1),
        "top_n",
    ),
    (
        "Rerank",
        rerank_service_pb2.RerankRequest(
            query=QUERY, passages=passages(2), blend_weight=float("inf")
        ),
        "blend_weight",
    ),
    (
        "Rerank",
        rerank_service_pb2.RerankRequest(query=QUERY, passages=passages(2), blend_weight=0.5),
        "blend_weight",  # blending needs first-stage scores
    ),
    (
        "Rerank",
        rerank_service_pb2.RerankRequest(query=QUERY, passages=passages(2), model="nope"),
        "model",
    ),
    (
        "IndexSearch",
        lambda d: index_service_pb2.IndexServiceSearchRequest(
            vector=vector(d - 1), dimension=d - 1, k=3
        ),
        "dimension",
    ),
    (
        "IndexSearch",
        lambda d: index_service_pb2.IndexServiceSearchRequest(
            vector=vector(d - 1), dimension=d, k=3
        ),
        "vector",
    ),
    (
        "IndexSearch",
        lambda d: index_service_pb2.IndexServiceSearchRequest(
            vector=vector(d, float("nan")), dimension=d, k=3
        ),
        "vector",
    ),
    (
        "IndexSearch",
        lambda d: index_service_pb2.IndexServiceSearchRequest(
            vector=vector(d, float("inf")), dimension=d, k=3
        ),
        "vector",
    ),
    (
        "IndexSearch",
        lambda d: index_service_pb2.IndexServiceSearchRequest(vector=vector(d), dimension=d, k=0),
        "k",
    ),
    (
        "IndexSearch",
        lambda d: index_service_pb2.IndexServiceSearchRequest(
            vector=vector(d), dimension=d, k=MAX_K + 1
        ),
        "k",
    ),
    (
        "IndexSearch",
        lambda d: index_service_pb2.IndexServiceSearchRequest(
            vector=vector(d), dimension=d, k=3, ef=MAX_EF + 1
        ),
        "ef",
    ),
    ("LexicalSearch", index_service_pb2.LexicalSearchRequest(query="", k=3), "query"),
    ("LexicalSearch", index_service_pb2.LexicalSearchRequest(query=LONG_QUERY, k=3), "query"),
    ("LexicalSearch", index_service_pb2.LexicalSearchRequest(query=QUERY, k=0), "k"),
    ("GetDocuments", index_service_pb2.GetDocumentsRequest(), "doc_ids"),
    (
        "GetDocuments",
        index_service_pb2.GetDocumentsRequest(doc_ids=["1"] * (MAX_DOC_IDS + 1)),
        "doc_ids",
    ),
]


@pytest.mark.parametrize(
    ("name", "request_or_factory", "field"),
    CASES,
    ids=[f"{name}-{field}-{i}" for i, (name, _, field) in enumerate(CASES)],
)
def test_invalid_field_is_refused_naming_it(
    channel: grpc.Channel, dimension: int, name: str, request_or_factory: Any, field: str
) -> None:
    request = request_or_factory(dimension) if callable(request_or_factory) else request_or_factory
    with pytest.raises(grpc.RpcError) as caught:
        rpc(channel, name)(request, timeout=TIMEOUT_S)
    assert_invalid_argument(caught.value, field)


def test_texts_at_the_limit_are_accepted_past_it_refused(channel: grpc.Channel) -> None:
    """Length limits refuse, never truncate: exactly at the limit is served."""
    at_limit = ("information " * (MAX_QUERY_CHARS // 12 + 1))[:MAX_QUERY_CHARS]
    assert len(at_limit) == MAX_QUERY_CHARS
    encoded = rpc(channel, "Encode")(
        encoder_service_pb2.EncodeRequest(texts=[at_limit]), timeout=TIMEOUT_S
    )
    # Tokens past the model's max length are cut (documented), characters never are.
    assert encoded.token_counts[0] == encoded.max_length
    rpc(channel, "LexicalSearch")(
        index_service_pb2.LexicalSearchRequest(query=at_limit, k=3), timeout=TIMEOUT_S
    )
    long_passage = ("library " * (MAX_PASSAGE_CHARS // 8 + 1))[:MAX_PASSAGE_CHARS]
    reranked = rpc(channel, "Rerank")(
        rerank_service_pb2.RerankRequest(query=QUERY, passages=passages(1, long_passage)),
        timeout=TIMEOUT_S,
    )
    assert [p.id for p in reranked.passages] == ["p0"]


def test_message_over_the_grpc_size_limit_is_resource_exhausted(
    channel: grpc.Channel, all_in_one: Any
) -> None:
    """gRPC itself refuses a message over max_message_bytes (16 MiB by default), before any
    handler runs, with RESOURCE_EXHAUSTED."""
    limit = all_in_one.settings.max_message_bytes
    request = encoder_service_pb2.EncodeRequest(texts=["x" * (limit + 1)])
    with pytest.raises(grpc.RpcError) as caught:
        rpc(channel, "Encode")(request, timeout=TIMEOUT_S)
    assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "larger than max" in caught.value.details()


GARBAGE = [
    b"\xff\xff\xff\xff",  # not a valid tag
    b"\x0a\x10abc",  # a length-delimited field cut short
    b"\x0a\x02\xff\xfe",  # a string field holding invalid UTF-8
    b"\x08",  # a varint tag with no value
]


def _field_one_holds_text(name: str) -> bool:
    """Whether field 1 of the RPC's request is decoded as text or a message (so that bytes
    which are not UTF-8 or not a message cannot be valid there)."""
    field = RPCS[name][1].DESCRIPTOR.fields_by_number.get(1)
    return field is not None and field.type in (field.TYPE_STRING, field.TYPE_MESSAGE)


GARBAGE_CASES = [
    pytest.param(name, payload, id=f"{name}-{label}")
    for name in RPCS
    for label, payload in zip(
        ("bad-tag", "truncated", "bad-utf8", "no-value"), GARBAGE, strict=True
    )
    if label != "bad-utf8" or _field_one_holds_text(name)
]


@pytest.mark.parametrize(("name", "payload"), GARBAGE_CASES)
def test_bytes_that_are_not_the_message_are_invalid_argument(
    channel: grpc.Channel, name: str, payload: bytes
) -> None:
    """Undecodable bytes are bad input like any other: INVALID_ARGUMENT naming `request`."""
    with pytest.raises(grpc.RpcError) as caught:
        rpc(channel, name)(payload, timeout=TIMEOUT_S)
    assert_invalid_argument(caught.value, "request")
    assert "not a valid protobuf" in caught.value.details()


def test_truncated_valid_request_is_invalid_argument(channel: grpc.Channel) -> None:
    whole = S(query=QUERY, k=3, rerank_depth=2).SerializeToString()
    with pytest.raises(grpc.RpcError) as caught:
        rpc(channel, "Search")(whole[: len(QUERY) // 2], timeout=TIMEOUT_S)
    assert_invalid_argument(caught.value, "request")


def test_message_of_another_type_is_refused(channel: grpc.Channel) -> None:
    """A RerankRequest sent to Search decodes (its passages field becomes an unknown field,
    k stays 0) and is refused by validation, naming the field."""
    wrong = rerank_service_pb2.RerankRequest(query=QUERY, passages=passages(2))
    with pytest.raises(grpc.RpcError) as caught:
        rpc(channel, "Search")(wrong.SerializeToString(), timeout=TIMEOUT_S)
    assert_invalid_argument(caught.value, "k")


def test_unknown_method_is_unimplemented(channel: grpc.Channel) -> None:
    call = channel.unary_unary("/neuralir.v1.SearchService/NoSuchMethod")
    with pytest.raises(grpc.RpcError) as caught:
        call(b"", timeout=TIMEOUT_S)
    assert caught.value.code() == grpc.StatusCode.UNIMPLEMENTED


def test_no_deadline_is_served(channel: grpc.Channel) -> None:
    """A caller without a deadline is served (the search bounds its own downstream calls)."""
    reply = rpc(channel, "Search")(S(query=QUERY, k=3, rerank_depth=2))
    assert len(reply.hits) == 3


@pytest.mark.parametrize("timeout_s", [0.0, 1e-4])
def test_expired_deadline_is_deadline_exceeded(channel: grpc.Channel, timeout_s: float) -> None:
    with pytest.raises(grpc.RpcError) as caught:
        rpc(channel, "Search")(S(query=QUERY, k=3, rerank_depth=2), timeout=timeout_s)
    assert caught.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED


def test_deadline_expiring_mid_search_is_deadline_exceeded(channel: grpc.Channel) -> None:
    """Retrieval takes milliseconds, reranking 20 passages hundreds: the deadline passes in
    the rerank stage."""
    with pytest.raises(grpc.RpcError) as caught:
        rpc(channel, "Search")(S(query=QUERY, k=3, rerank_depth=20), timeout=0.05)
    assert caught.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED


# ---------------------------------------------------------------- property test over every RPC
# Each generated request starts valid, then 0 to 2 of its fields get an edge value (empty,
# over a limit, NaN, unknown enum...), so valid paths are exercised as well as refusals.

_chars = st.characters(blacklist_categories=("Cs",))  # protobuf strings must be valid UTF-8
_valid_text = st.one_of(
    st.text(_chars, min_size=1, max_size=30).filter(str.strip),
    st.sampled_from([QUERY, "library automation", "x"]),
)
_bad_text = st.sampled_from(["", " ", "\t\n", LONG_QUERY])
_bad_int = st.sampled_from([-(2**31), -1, 2**31 - 1])
_bad_weight = st.sampled_from([float("nan"), float("inf"), -0.5, 1.5])
_valid_weight = st.one_of(st.none(), st.floats(0, 1, width=32))
_rerankers = st.sampled_from(["", "default", "fp32"])


def _mutated(
    message: type[Any], valid: dict[str, st.SearchStrategy[Any]], edges: dict[str, Any]
) -> st.SearchStrategy[Any]:
    @st.composite
    def build(draw: st.DrawFn) -> Any:
        values = {field: draw(strategy) for field, strategy in valid.items()}
        for field in draw(st.sets(st.sampled_from(sorted(edges)), max_size=2)):
            values[field] = draw(edges[field])
        return message(**values)

    return build()


def _search() -> st.SearchStrategy[Any]:
    return _mutated(
        S,
        {
            "query": _valid_text,
            "k": st.integers(1, MAX_K),
            "mode": st.integers(0, 3),
            "rerank_depth": st.integers(0, 3),  # small: each reranked passage costs ~10-40 ms
            "blend_weight": _valid_weight,
            "rerank_model": _rerankers,
            "snippet_chars": st.integers(0, 200),
            "ef": st.integers(0, 256),
        },
        {
            "query": _bad_text,
            "k": st.sampled_from([0, MAX_K + 1]) | _bad_int,
            "mode": st.sampled_from([-1, 4, 7]) | _bad_int,
            "rerank_depth": st.just(MAX_RERANK_DEPTH + 1) | _bad_int,
            "blend_weight": _bad_weight,
            "rerank_model": st.just("no-such-model"),
            "snippet_chars": st.just(MAX_SNIPPET_CHARS + 1) | _bad_int,
            "ef": st.just(MAX_EF + 1) | _bad_int,
        },
    )


def _passages(unique: bool) -> st.SearchStrategy[list[Any]]:
    passage = st.builds(
        rerank_service_pb2.Passage,
        id=st.text(_chars, min_size=1, max_size=6),
        text=_valid_text,
    )
    return st.lists(passage, min_size=1, max_size=4, unique_by=(lambda p: p.id) if unique else None)


def _vector(dim: int) -> st.SearchStrategy[bytes]:
    def build(size: int, special: float | None, seed: int) -> bytes:
        values = np.random.default_rng(seed).standard_normal(size).astype("<f4")
        if special is not None:
            values[seed % size] = special
        return values.tobytes()

    return st.builds(build, st.just(dim), st.none(), st.integers(0, 2**16)), st.one_of(
        st.binary(max_size=64),
        st.builds(
            build,
            st.sampled_from([dim - 1, dim, dim + 1]),
            st.sampled_from([float("nan"), float("inf"), -float("inf")]),
            st.integers(0, 2**16),
        ),
    )


def strategies(dim: int) -> dict[str, st.SearchStrategy[Any]]:
    valid_vector, bad_vector = _vector(dim)
    return {
        "Search": _search(),
        "BatchSearch": _mutated(
            search_service_pb2.BatchSearchRequest,
            {"requests": st.lists(_search(), min_size=1, max_size=3)},
            {"requests": st.sampled_from([[], [S(query="x", k=1)] * (MAX_BATCH_SEARCHES + 1)])},
        ),
        "Encode": _mutated(
            encoder_service_pb2.EncodeRequest,
            {"texts": st.lists(_valid_text, min_size=1, max_size=4), "kind": st.integers(0, 2)},
            {
                "texts": st.sampled_from(
                    [[], ["x"] * (MAX_TEXTS_PER_ENCODE + 1), ["fine", ""], [LONG_QUERY]]
                ),
                "kind": st.sampled_from([-1, 3, 99]) | _bad_int,
            },
        ),
        "Rerank": _mutated(
            rerank_service_pb2.RerankRequest,
            {
                "query": _valid_text,
                "passages": _passages(unique=True),
                "top_n": st.integers(0, 4),
                "blend_weight": st.sampled_from([None, 1.0]),
                "model": _rerankers,
            },
            {
                "query": _bad_text,
                "passages": _passages(unique=False)
                | st.sampled_from(
                    [[], passages(1, ""), passages(1, "p" * (MAX_PASSAGE_CHARS + 1))]
                ),
                "top_n": st.just(MAX_PASSAGES_PER_RERANK + 1) | _bad_int,
                "blend_weight": _bad_weight | st.just(0.5),  # 0.5 needs first-stage scores
                "model": st.just("no-such-model"),
            },
        ),
        "IndexSearch": _mutated(
            index_service_pb2.IndexServiceSearchRequest,
            {
                "vector": valid_vector,
                "dimension": st.just(dim),
                "k": st.integers(1, MAX_K),
                "ef": st.integers(0, 256),
            },
            {
                "vector": bad_vector,
                "dimension": st.sampled_from([0, dim - 1, dim + 1]) | _bad_int,
                "k": st.sampled_from([0, MAX_K + 1]) | _bad_int,
                "ef": st.just(MAX_EF + 1) | _bad_int,
            },
        ),
        "LexicalSearch": _mutated(
            index_service_pb2.LexicalSearchRequest,
            {"query": _valid_text, "k": st.integers(1, MAX_K)},
            {"query": _bad_text, "k": st.sampled_from([0, MAX_K + 1]) | _bad_int},
        ),
        "GetDocuments": _mutated(
            index_service_pb2.GetDocumentsRequest,
            {"doc_ids": st.lists(st.text(_chars, max_size=8), min_size=1, max_size=5)},
            {"doc_ids": st.sampled_from([[], ["1"] * (MAX_DOC_IDS + 1)])},
        ),
        "Describe": st.just(index_service_pb2.DescribeRequest()),
    }


@pytest.mark.parametrize("name", list(RPCS))
@settings(
    max_examples=60,
    deadline=None,
    database=None,
    # The autouse check runs once around all examples, which is what it is for.
    suppress_health_check=[
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
        HealthCheck.function_scoped_fixture,
    ],
)
@given(data=st.data())
def test_generated_requests_get_documented_codes(
    channel: grpc.Channel, dimension: int, name: str, data: st.DataObject
) -> None:
    """Whatever a caller sends, typed or as raw bytes, the answer is OK or a documented
    code (never UNKNOWN or INTERNAL), and the server keeps serving (the autouse fixture)."""
    if data.draw(st.integers(0, 9), label="raw bytes when 0") == 0:
        request: Any = data.draw(st.binary(max_size=200), label="payload")
    else:
        request = data.draw(strategies(dimension)[name], label="request")
    code = rpc_code(channel, name, request, timeout=TIMEOUT_S)
    event(code)  # the mix of answers shows with --hypothesis-show-statistics
    assert code in DOCUMENTED, (name, request, code)
