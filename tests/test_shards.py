"""Sharded indexes: the stable doc-id hash, `--shards N` builds, and the search service's
fan-out over real index servers (equal results, partial results, never a hang)."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from servers import embedded, health_status, server_settings

from neuralir.client import convert
from neuralir.index.build import IndexBuildError, IndexBuildSettings, build_index
from neuralir.index.format import read_index_json
from neuralir.index.shard_build import build_sharded_index
from neuralir.index.shard_map import SHARD_MAP_FILE, ShardSpec, read_shard_map, shard_of
from neuralir.index.store import IndexStore
from neuralir.models.encoder import Encoder
from neuralir.server.app import SERVICE_NAMES
from neuralir.server.embedded import EmbeddedServer
from neuralir.server.pipeline.sharded import split_index_addresses
from neuralir.v1 import index_service_pb2, index_service_pb2_grpc, search_service_pb2_grpc

QUERIES = (
    "automatic indexing of documents",
    "information retrieval evaluation",
    "library catalog search",
    "subprocess pipes and return codes",
)
SERVING = 1

# ---------------------------------------------------------------- the hash


def test_shard_of_is_sha1_of_the_id_and_stable_across_processes() -> None:
    ids = [f"doc-{i}" for i in range(200)]
    expected = [int.from_bytes(hashlib.sha1(d.encode()).digest()[:8], "big") % 3 for d in ids]
    assert [shard_of(d, 3) for d in ids] == expected
    # Python's hash() would change with the seed; the shard of a document must not.
    code = (
        "from neuralir.index.shard_map import shard_of; "
        "print([shard_of(f'doc-{i}', 3) for i in range(200)])"
    )
    for seed in ("1", "2"):
        out = subprocess.run(
            [sys.executable, "-c", code],
            env={**os.environ, "PYTHONHASHSEED": seed},
            capture_output=True,
            text=True,
            check=True,
        )
        assert json.loads(out.stdout) == expected


def test_shard_of_spreads_ids_evenly_enough() -> None:
    counts = [0] * 4
    for i in range(4000):
        counts[shard_of(f"id{i}", 4)] += 1
    assert all(800 < c < 1200 for c in counts), counts


def test_shard_spec_rejects_shards_that_do_not_exist() -> None:
    with pytest.raises(ValueError, match="does not exist"):
        ShardSpec(2, 2)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("a:1", ["a:1"]),
        ("a:1,b:2", ["a:1", "b:2"]),
        ("ipv4:10.0.0.1:1,10.0.0.2:1;dns:///s1:1", ["ipv4:10.0.0.1:1,10.0.0.2:1", "dns:///s1:1"]),
        # gRPC's own list syntax: replicas of one index, not two shards
        ("ipv4:10.0.0.1:1,10.0.0.2:1", ["ipv4:10.0.0.1:1,10.0.0.2:1"]),
        ("ipv4:10.0.0.1:1,ipv4:10.0.0.2:1", ["ipv4:10.0.0.1:1", "ipv4:10.0.0.2:1"]),
        ("dns:///a:1,dns:///b:1", ["dns:///a:1", "dns:///b:1"]),
    ],
)
def test_index_addresses_split_on_commas_or_semicolons(value: str, expected: list[str]) -> None:
    assert split_index_addresses(value) == expected


# ---------------------------------------------------------------- the build


@pytest.fixture(scope="module")
def encoder(bi_encoder_dir: Path) -> Encoder:
    return Encoder(bi_encoder_dir)


# One passage per encoder call: int8 dynamic quantization scales activations per batch, so a
# passage's embedding shifts slightly with its batch-mates (cosine down to ~0.99); encoded
# alone, it is the same in a shard as in the unsharded index, and results compare exactly.
EXACT = IndexBuildSettings(threads=1, batch_size=1)


@pytest.fixture(scope="module")
def sharded_index(
    tmp_path_factory: pytest.TempPathFactory, small_corpus: Path, encoder: Encoder
) -> Path:
    out = tmp_path_factory.mktemp("sharded") / "small"
    build_sharded_index(small_corpus, out, encoder, 2, EXACT, False)
    return out


@pytest.fixture(scope="module")
def reference_index(
    tmp_path_factory: pytest.TempPathFactory, small_corpus: Path, encoder: Encoder
) -> Path:
    """The same corpus, unsharded, encoded the same way."""
    out = tmp_path_factory.mktemp("reference") / "small"
    build_index(small_corpus, out, encoder, EXACT, progress=False)
    return out


def test_sharded_build_splits_documents_by_hash(
    sharded_index: Path, small_corpus_docs: list, bi_encoder_dir: Path
) -> None:
    shard_map = read_shard_map(sharded_index)
    assert shard_map is not None
    assert shard_map.count == 2
    assert sum(shard_map.documents) == len(small_corpus_docs)
    seen: set[str] = set()
    for i, directory in enumerate(shard_map.shard_dirs(sharded_index)):
        ids = _stored_ids(directory, small_corpus_docs)
        assert len(ids) == shard_map.documents[i]
        assert all(shard_of(d, 2) == i for d in ids)
        assert not ids & seen
        seen |= ids
        recorded = read_index_json(directory.resolve())
        assert recorded["shard"] == {"index": i, "count": 2, "hash": shard_map.hash}
    assert seen == {d.doc_id for d in small_corpus_docs}


def _stored_ids(directory: Path, docs: list) -> set[str]:
    store = IndexStore.open(directory)
    try:
        found, _ = store.get_documents([d.doc_id for d in docs])
    finally:
        store.close()
    return {d.doc_id for d in found}


def test_sharded_build_refuses_a_changed_shard_count_and_empty_shards(
    sharded_index: Path, small_corpus: Path, encoder: Encoder, tmp_path: Path
) -> None:
    with pytest.raises(IndexBuildError, match="2 shards, not 3"):
        build_sharded_index(small_corpus, sharded_index, encoder, 3, progress=False)
    tiny = tmp_path / "tiny.jsonl"
    tiny.write_text(json.dumps({"_id": "only", "title": "", "text": "one document"}) + "\n")
    with pytest.raises(IndexBuildError, match="would hold no documents"):
        build_sharded_index(tiny, tmp_path / "out", encoder, 2, progress=False)
    assert not (tmp_path / "out" / SHARD_MAP_FILE).exists()


def test_unsharded_build_writes_no_shard_record(small_index: Path) -> None:
    assert "shard" not in read_index_json(small_index.resolve())


def test_cli_builds_shards(small_corpus: Path, bi_encoder_dir: Path, tmp_path: Path) -> None:
    from neuralir.cli.main import main

    out = tmp_path / "cli"
    argv = ["index", "build", "--corpus", str(small_corpus), "--out", str(out)]
    argv += ["--encoder-model", str(bi_encoder_dir), "--shards", "2", "--threads", "1"]
    argv += ["--max-docs", "30"]
    assert main(argv) == 0
    shard_map = read_shard_map(out)
    assert shard_map is not None
    assert sum(shard_map.documents) == 30


def test_max_docs_counts_the_whole_corpus_before_sharding(
    small_corpus: Path, small_corpus_docs: list, encoder: Encoder, tmp_path: Path
) -> None:
    settings = IndexBuildSettings(threads=1, max_docs=20)
    build_index(small_corpus, tmp_path / "s1", encoder, settings, False, ShardSpec(1, 2))
    first = [d.doc_id for d in small_corpus_docs[:20]]
    expected = {d for d in first if shard_of(d, 2) == 1}
    assert _stored_ids(tmp_path / "s1", small_corpus_docs) == expected


# ---------------------------------------------------------------- fan-out through real servers


def _index_server(bi_encoder_dir: Path, directory: Path):  # type: ignore[no-untyped-def]
    return embedded(server_settings(bi_encoder_dir, (), directory, services=("index",)))


@pytest.fixture(scope="module")
def shard_servers(sharded_index: Path, bi_encoder_dir: Path) -> Iterator[list]:
    shard_map = read_shard_map(sharded_index)
    assert shard_map is not None
    with (
        _index_server(bi_encoder_dir, shard_map.shard_dirs(sharded_index)[0]) as s0,
        _index_server(bi_encoder_dir, shard_map.shard_dirs(sharded_index)[1]) as s1,
    ):
        yield [s0, s1]


def _front(bi_encoder_dir: Path, cross_encoder_dir: Path, small_index: Path, **overrides: object):  # type: ignore[no-untyped-def]
    settings = server_settings(
        bi_encoder_dir,
        (("default", cross_encoder_dir),),
        small_index,
        services=("encoder", "rerank", "search"),
        **overrides,
    )
    return embedded(settings)


@pytest.fixture(scope="module")
def sharded_search(
    shard_servers: list, bi_encoder_dir: Path, cross_encoder_dir: Path, small_index: Path
) -> Iterator[search_service_pb2_grpc.SearchServiceStub]:
    addresses = ",".join(s.address for s in shard_servers)
    with (
        _front(bi_encoder_dir, cross_encoder_dir, small_index, index_address=addresses) as front,
        grpc.insecure_channel(front.address) as channel,
    ):
        _wait_search_serving(front.address)
        yield search_service_pb2_grpc.SearchServiceStub(channel)


@pytest.fixture(scope="module")
def single_search(
    bi_encoder_dir: Path, cross_encoder_dir: Path, reference_index: Path
) -> Iterator[search_service_pb2_grpc.SearchServiceStub]:
    rerankers = (("default", cross_encoder_dir),)
    with (
        embedded(server_settings(bi_encoder_dir, rerankers, reference_index)) as server,
        grpc.insecure_channel(server.address) as channel,
    ):
        _wait_search_serving(server.address)
        yield search_service_pb2_grpc.SearchServiceStub(channel)


def _wait_search_serving(address: str, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while health_status(address, SERVICE_NAMES["search"]) != SERVING:
        assert time.monotonic() < deadline, "search service never SERVING"
        time.sleep(0.05)


def _search(stub: search_service_pb2_grpc.SearchServiceStub, query: str, **options: object):  # type: ignore[no-untyped-def]
    return stub.Search(convert.search_request(query, **options), timeout=30)


def _ranked(response) -> list[tuple[str, float]]:  # type: ignore[no-untyped-def]
    return [(h.doc_id, round(h.score, 4)) for h in response.hits]


@pytest.mark.parametrize("query", QUERIES)
def test_dense_search_over_shards_equals_one_index(
    sharded_search: search_service_pb2_grpc.SearchServiceStub,
    single_search: search_service_pb2_grpc.SearchServiceStub,
    query: str,
) -> None:
    sharded = _search(sharded_search, query, k=10, mode="dense", snippet_chars=40)
    single = _search(single_search, query, k=10, mode="dense", snippet_chars=40)
    assert _ranked(sharded) == _ranked(single)
    assert [(h.title, h.snippet) for h in sharded.hits] == [
        (h.title, h.snippet) for h in single.hits
    ]
    assert not sharded.partial
    assert not sharded.unavailable_shards


def test_reranked_search_over_shards_equals_one_index(
    sharded_search: search_service_pb2_grpc.SearchServiceStub,
    single_search: search_service_pb2_grpc.SearchServiceStub,
) -> None:
    options = {"k": 5, "mode": "dense", "rerank_depth": 10}
    sharded = _search(sharded_search, QUERIES[0], **options)
    single = _search(single_search, QUERIES[0], **options)
    assert _ranked(sharded) == _ranked(single)
    assert sharded.rerank_model_id == single.rerank_model_id != ""


def test_lexical_search_merges_each_shards_own_bm25(
    sharded_search: search_service_pb2_grpc.SearchServiceStub, shard_servers: list
) -> None:
    """BM25 uses per-shard statistics: the merge is the best k of the shards' own lists."""
    query = QUERIES[1]
    merged = _search(sharded_search, query, k=8, mode="lexical")
    per_shard: list[tuple[str, float]] = []
    for server in shard_servers:
        with grpc.insecure_channel(server.address) as channel:
            stub = index_service_pb2_grpc.IndexServiceStub(channel)
            reply = stub.LexicalSearch(index_service_pb2.LexicalSearchRequest(query=query, k=8))
            per_shard += [(d.doc_id, d.score) for d in reply.documents]
    best = sorted(per_shard, key=lambda p: (-p[1], p[0]))[:8]
    assert [(d, round(s, 4)) for d, s in best] == _ranked(merged)
    assert merged.hits
    assert all(h.bm25_score > 0 for h in merged.hits)


def test_hybrid_search_over_shards_returns_titles(
    sharded_search: search_service_pb2_grpc.SearchServiceStub,
) -> None:
    reply = _search(sharded_search, QUERIES[2], k=10, mode="hybrid", snippet_chars=20)
    assert len(reply.hits) == 10
    assert all(h.title or h.snippet for h in reply.hits)
    assert [h.rank for h in reply.hits] == list(range(1, 11))


# ---------------------------------------------------------------- shards that do not answer


def test_a_stopped_shard_gives_a_flagged_partial_result(
    sharded_index: Path, bi_encoder_dir: Path, cross_encoder_dir: Path, small_index: Path
) -> None:
    shard_map = read_shard_map(sharded_index)
    assert shard_map is not None
    dirs = shard_map.shard_dirs(sharded_index)
    shard1 = EmbeddedServer(server_settings(bi_encoder_dir, (), dirs[1], services=("index",)))
    with _index_server(bi_encoder_dir, dirs[0]) as s0, contextlib.ExitStack() as stack:
        stopped = []

        def stop_shard1() -> None:
            if not stopped:
                stopped.append(True)
                shard1.stop()

        stack.callback(stop_shard1)
        addresses = f"{s0.address},{shard1.start().address}"
        with (
            _front(
                bi_encoder_dir, cross_encoder_dir, small_index, index_address=addresses
            ) as front,
            grpc.insecure_channel(front.address) as channel,
        ):
            _wait_search_serving(front.address)
            stub = search_service_pb2_grpc.SearchServiceStub(channel)
            assert not _search(stub, QUERIES[0], k=5).partial
            stop_shard1()
            for mode in ("dense", "lexical", "hybrid"):
                reply = _search(stub, QUERIES[0], k=5, mode=mode, rerank_depth=5, snippet_chars=20)
                assert reply.partial, mode
                assert list(reply.unavailable_shards) == ["shard-1"]
                assert reply.hits
                assert all(shard_of(h.doc_id, 2) == 0 for h in reply.hits)
                assert all(h.snippet for h in reply.hits)
            # One shard up is enough to keep the search service SERVING.
            time.sleep(1.5)  # the health watcher polls every second
            assert health_status(front.address, SERVICE_NAMES["search"]) == SERVING


def test_every_shard_down_fails_as_one_unavailable_index(
    bi_encoder_dir: Path, cross_encoder_dir: Path, small_index: Path
) -> None:
    dead = []
    for _ in range(2):  # ports that were free a moment ago: nothing listens there
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            dead.append(f"127.0.0.1:{sock.getsockname()[1]}")
    with (
        _front(
            bi_encoder_dir, cross_encoder_dir, small_index, index_address=",".join(dead)
        ) as front,
        grpc.insecure_channel(front.address) as channel,
    ):
        stub = search_service_pb2_grpc.SearchServiceStub(channel)
        with pytest.raises(grpc.RpcError) as caught:
            _search(stub, QUERIES[0], k=5, mode="dense")
        assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
        assert "shard" in (caught.value.details() or "")


def test_a_hung_shard_costs_the_shard_timeout_not_a_hang(
    shard_servers: list, bi_encoder_dir: Path, cross_encoder_dir: Path, small_index: Path
) -> None:
    # A socket that accepts connections and never speaks HTTP/2: a host that hangs.
    with socket.socket() as hung:
        hung.bind(("127.0.0.1", 0))
        hung.listen(16)
        addresses = f"{shard_servers[0].address},127.0.0.1:{hung.getsockname()[1]}"
        with (
            _front(
                bi_encoder_dir,
                cross_encoder_dir,
                small_index,
                index_address=addresses,
                shard_timeout_ms=300,
            ) as front,
            grpc.insecure_channel(front.address) as channel,
        ):
            stub = search_service_pb2_grpc.SearchServiceStub(channel)
            start = time.monotonic()
            reply = _search(stub, QUERIES[1], k=5, mode="hybrid")
            elapsed = time.monotonic() - start
            assert reply.partial
            assert list(reply.unavailable_shards) == ["shard-1"]
            assert reply.hits
            # Bounded by the shard timeout (twice: dense and lexical run in parallel), far
            # below the caller's 30 s deadline; generous for a loaded 2-core machine.
            assert elapsed < 10, elapsed
