"""The response budget (issue 17, finding 2): a Search or BatchSearch whose answer could
outgrow the 16 MiB message limit is refused before any work, with INVALID_ARGUMENT naming the
limit; everything the budget accepts fits, measured on the worst response it allows."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import grpc
import pytest
from reliability import BIG_CHANNEL_OPTIONS, rpc
from servers import assert_invalid_argument

from neuralir.v1 import common_pb2, search_service_pb2
from neuralir.v1.limits import (
    HIT_ID_AND_TITLE_BYTES,
    MAX_BATCH_SEARCHES,
    MAX_K,
    MAX_RESULTS_PER_CALL,
    MAX_SNIPPET_CHARS,
    MAX_SNIPPET_CHARS_PER_CALL,
)

MESSAGE_LIMIT = 16 << 20  # the server's default --max-message-mib
MARGIN = 3 << 20
S = search_service_pb2.SearchRequest
LEXICAL = search_service_pb2.RETRIEVAL_MODE_LEXICAL
QUERY = "computer information retrieval"


@pytest.fixture(scope="module")
def channel(all_in_one: Any, client: Any) -> Iterator[grpc.Channel]:
    with grpc.insecure_channel(all_in_one.address, options=BIG_CHANNEL_OPTIONS) as ch:
        yield ch


def test_the_issue_batch_is_refused_before_any_work(channel: grpc.Channel) -> None:
    """64 lexical searches of k=1000 with 4,096-character snippets: each within its own limits,
    together 64,000 results (17.7 MB on the issue's corpus, failing after the work)."""
    request = search_service_pb2.BatchSearchRequest(
        requests=[
            S(query=QUERY, k=MAX_K, mode=LEXICAL, snippet_chars=MAX_SNIPPET_CHARS)
            for _ in range(MAX_BATCH_SEARCHES)
        ]
    )
    started = time.perf_counter()
    with pytest.raises(grpc.RpcError) as caught:
        rpc(channel, "BatchSearch")(request, timeout=30)
    seconds = time.perf_counter() - started
    assert_invalid_argument(caught.value, "requests")
    assert f"{MAX_RESULTS_PER_CALL:,}" in caught.value.details()
    assert seconds < 2.0, f"refused after {seconds:.2f} s: the searches ran first"


def test_snippet_characters_are_budgeted_across_the_batch(channel: grpc.Channel) -> None:
    per_search = MAX_SNIPPET_CHARS_PER_CALL // 2 // 500 + 1  # two searches, just over
    request = search_service_pb2.BatchSearchRequest(
        requests=[S(query=QUERY, k=500, mode=LEXICAL, snippet_chars=per_search)] * 2
    )
    with pytest.raises(grpc.RpcError) as caught:
        rpc(channel, "BatchSearch")(request, timeout=30)
    assert_invalid_argument(caught.value, "requests")
    assert "snippet_chars" in caught.value.details()


def test_one_search_is_held_to_the_same_budget(channel: grpc.Channel) -> None:
    request = S(query=QUERY, k=MAX_K, mode=LEXICAL, snippet_chars=MAX_SNIPPET_CHARS)
    with pytest.raises(grpc.RpcError) as caught:
        rpc(channel, "Search")(request, timeout=30)
    assert_invalid_argument(caught.value, "snippet_chars")
    assert f"{MAX_SNIPPET_CHARS_PER_CALL:,}" in caught.value.details()


def test_the_largest_accepted_batch_is_answered(channel: grpc.Channel) -> None:
    """At the budget exactly: 10 searches of k=1000 with snippets summing to the limit."""
    searches = MAX_RESULTS_PER_CALL // MAX_K
    snippet = MAX_SNIPPET_CHARS_PER_CALL // MAX_RESULTS_PER_CALL
    request = search_service_pb2.BatchSearchRequest(
        requests=[S(query=QUERY, k=MAX_K, mode=LEXICAL, snippet_chars=snippet)] * searches
    )
    reply = rpc(channel, "BatchSearch")(request, timeout=120)
    assert len(reply.responses) == searches
    assert all(r.hits for r in reply.responses)
    print(f"largest accepted batch on the test index: {reply.ByteSize():,} bytes")
    assert reply.ByteSize() < MESSAGE_LIMIT - MARGIN


def worst_response() -> search_service_pb2.BatchSearchResponse:
    """The largest answer the budget allows: the most searches, results and snippet characters,
    every snippet character 4 UTF-8 bytes, every optional score set, ids and titles at their
    allowance, every stage timed, the longest model ids."""
    snippet = "\U0001f600" * (MAX_SNIPPET_CHARS_PER_CALL // MAX_RESULTS_PER_CALL)
    doc_id = "d" * 64
    title = "t" * (HIT_ID_AND_TITLE_BYTES - len(doc_id))
    big = 2**31 - 1
    timing = common_pb2.StageTiming(
        stage="documents", queue_ns=big, tokenize_ns=big, inference_ns=big, total_ns=big,
        batch_size=big,
    )  # fmt: skip
    response = search_service_pb2.BatchSearchResponse()
    per_search = MAX_RESULTS_PER_CALL // MAX_BATCH_SEARCHES + 1
    left = MAX_RESULTS_PER_CALL
    for _ in range(MAX_BATCH_SEARCHES):
        one = response.responses.add(
            encoder_model_id="m" * 80, rerank_model_id="m" * 80, cascade_model_id="m" * 80,
            partial=True, unavailable_shards=[f"shard-{i}" for i in range(16)],
        )  # fmt: skip
        one.timings.extend([timing] * 10)
        for rank in range(1, min(per_search, left) + 1):
            one.hits.add(
                doc_id=doc_id, rank=rank, score=-1.5e38, title=title, snippet=snippet,
                dense_score=-1.5e38, bm25_score=-1.5e38, fused_score=-1.5e38,
                rerank_score=-1.5e38,
            )  # fmt: skip
        left -= len(one.hits)
    assert sum(len(r.hits) for r in response.responses) == MAX_RESULTS_PER_CALL
    return response


def test_the_worst_accepted_response_fits_the_message_limit_with_margin() -> None:
    size = worst_response().ByteSize()
    print(f"worst response within the budget: {size:,} bytes ({size / (1 << 20):.2f} MiB)")
    assert size < MESSAGE_LIMIT - MARGIN, size
