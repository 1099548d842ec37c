"""The distributed topology for real: seven hosts as Linux network namespaces on a private
switch, one process each (two encoder replicas, two index shards, a reranker, a search
service, and a client), all started with `ip netns exec NS neuralir serve ...`.

Shows that results equal the single-process results on the same data, that load spreads
over the encoder replicas, that losing an encoder replica keeps search working, and that
losing a shard gives a partial result flagged in the response. Skips, with the reason, where
namespaces cannot be made (not root, no iproute2). The last test stops processes: it runs last.
"""

from __future__ import annotations

import dataclasses
import signal
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from prometheus_client.parser import text_string_to_metric_families
from servers import embedded, server_settings

from neuralir.benchmarks.netns_topology import (
    Driver,
    Host,
    HostProcess,
    Network,
    netns_unavailable_reason,
    serve_argv,
)
from neuralir.client import convert
from neuralir.index.build import IndexBuildSettings, build_index
from neuralir.index.shard_build import build_sharded_index
from neuralir.index.shard_map import read_shard_map, shard_of
from neuralir.models.encoder import Encoder
from neuralir.server.app import SERVICE_NAMES
from neuralir.v1 import search_service_pb2_grpc

pytestmark = [pytest.mark.netns, pytest.mark.slow]

QUERIES = [
    "automatic indexing of documents",
    "information retrieval evaluation",
    "library catalog search",
    "citation analysis of scientific journals",
]
HOSTS = ("client", "search", "encoder-a", "encoder-b", "shard-0", "shard-1", "rerank")
ENCODE_OK = {"service": "neuralir.v1.EncoderService", "method": "Encode", "code": "OK"}


@dataclasses.dataclass
class Cluster:
    network: Network
    hosts: dict[str, Host]
    processes: dict[str, HostProcess]
    driver: Driver

    @property
    def search_target(self) -> str:
        return self.hosts["search"].grpc_target

    def search(self, queries: list[str], **options: object) -> list[dict]:
        reply = self.driver.request(
            "search", target=self.search_target, queries=queries, options=options
        )
        return list(reply["results"])

    def encodes(self, host: str) -> float:
        """Encode calls answered OK by one encoder replica, from its /metrics."""
        text = self.driver.request("metrics", url=self.hosts[host].metrics_url)["text"]
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if sample.name == "neuralir_rpc_requests_total" and sample.labels == ENCODE_OK:
                    return float(sample.value)
        return 0.0

    def logs(self) -> str:
        return "\n".join(f"--- {n}\n{p.log(1500)}" for n, p in self.processes.items())


# One passage per encoder call: embeddings then do not depend on batch-mates, so the
# sharded and unsharded builds hold identical vectors (see tests/test_shards.py).
EXACT = IndexBuildSettings(threads=1, batch_size=1)


@pytest.fixture(scope="module")
def netns_ready() -> None:
    reason = netns_unavailable_reason()
    if reason is not None:
        pytest.skip(f"multi-host test needs network namespaces: {reason}")


@pytest.fixture(scope="module")
def indexes(
    netns_ready: None, tmp_path_factory: pytest.TempPathFactory, small_corpus: Path,
    bi_encoder_dir: Path,
) -> tuple[Path, list[Path]]:  # fmt: skip
    """The same small corpus, unsharded and in two shards."""
    root = tmp_path_factory.mktemp("multihost-indexes")
    encoder = Encoder(bi_encoder_dir)
    build_index(small_corpus, root / "single", encoder, EXACT, progress=False)
    build_sharded_index(small_corpus, root / "sharded", encoder, 2, EXACT, progress=False)
    shard_map = read_shard_map(root / "sharded")
    assert shard_map is not None
    return root / "single", shard_map.shard_dirs(root / "sharded")


@pytest.fixture(scope="module")
def cluster(
    indexes: tuple[Path, list[Path]],
    bi_encoder_dir: Path,
    cross_encoder_dir: Path,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Cluster]:
    _, shard_dirs = indexes
    workdir = tmp_path_factory.mktemp("multihost")
    models = ["--encoder-model", str(bi_encoder_dir), "--grace-period", "2"]
    with Network(workdir) as network:
        hosts = {name: network.add_host(name) for name in HOSTS}
        start = network.start
        processes = {
            "encoder-a": start(
                hosts["encoder-a"],
                serve_argv("encoder", hosts["encoder-a"], *models, "--encoder-threads", "1"),
            ),
            "encoder-b": start(
                hosts["encoder-b"],
                serve_argv("encoder", hosts["encoder-b"], *models, "--encoder-threads", "1"),
            ),
            "rerank": start(
                hosts["rerank"],
                serve_argv(
                    "rerank", hosts["rerank"], *models, "--rerank-model",
                    f"default={cross_encoder_dir}", "--rerank-threads", "1",
                ),
            ),
        }  # fmt: skip
        for i in range(2):
            name = f"shard-{i}"
            processes[name] = start(
                hosts[name],
                serve_argv("index", hosts[name], *models, "--index-dir", str(shard_dirs[i])),
            )
        processes["search"] = start(
            hosts["search"],
            serve_argv(
                "search", hosts["search"], *models,
                # Two replicas behind one target: gRPC round robin over both addresses.
                "--encoder-address",
                f"ipv4:{hosts['encoder-a'].grpc_target},{hosts['encoder-b'].grpc_target}",
                # One address per shard, in shard order.
                "--index-address",
                f"{hosts['shard-0'].grpc_target},{hosts['shard-1'].grpc_target}",
                "--rerank-address", hosts["rerank"].grpc_target,
                "--shard-timeout-ms", "2000",
            ),
        )  # fmt: skip
        driver = Driver(network, hosts["client"])
        running = Cluster(network, hosts, processes, driver)
        stage_of = {"search": "search", "rerank": "rerank"}
        for name, process in processes.items():
            stage = stage_of.get(name, name.split("-")[0])
            stage = "index" if stage == "shard" else stage
            reply = driver.request(
                "wait_serving",
                target=process.host.grpc_target,
                service=SERVICE_NAMES[stage],
                timeout_s=120,
            )
            assert reply["serving"], f"{name} never SERVING:\n{running.logs()}"
        yield running


@pytest.fixture(scope="module")
def single_process(
    indexes: tuple[Path, list[Path]], bi_encoder_dir: Path, cross_encoder_dir: Path
) -> Iterator[search_service_pb2_grpc.SearchServiceStub]:
    """Every stage in one process (this one, on 127.0.0.1), over the unsharded index."""
    single, _ = indexes
    settings = server_settings(bi_encoder_dir, (("default", cross_encoder_dir),), single)
    with embedded(settings) as server, grpc.insecure_channel(server.address) as channel:
        yield search_service_pb2_grpc.SearchServiceStub(channel)


def _single(stub: search_service_pb2_grpc.SearchServiceStub, query: str, **options: object):  # type: ignore[no-untyped-def]
    reply = stub.Search(convert.search_request(query, **options), timeout=30)
    return [[h.doc_id, round(h.score, 4), h.title] for h in reply.hits]


@pytest.mark.parametrize(
    "options",
    [
        {"k": 10, "mode": "dense", "snippet_chars": 0},
        {"k": 5, "mode": "dense", "rerank_depth": 10, "snippet_chars": 0},
    ],
    ids=["dense", "dense+rerank"],
)
def test_results_equal_the_single_process_results(
    cluster: Cluster, single_process: search_service_pb2_grpc.SearchServiceStub, options: dict
) -> None:
    results = cluster.search(QUERIES, **options)
    for query, result in zip(QUERIES, results, strict=True):
        assert result["code"] == "OK", (result, cluster.logs())
        assert not result["partial"]
        hits = [[d, round(s, 4), t] for d, s, t in result["hits"]]
        assert hits == _single(single_process, query, **options), query


def test_load_spreads_over_both_encoder_replicas(cluster: Cluster) -> None:
    before = {h: cluster.encodes(h) for h in ("encoder-a", "encoder-b")}
    searches = 20
    queries = [QUERIES[i % len(QUERIES)] for i in range(searches)]
    results = cluster.search(queries, k=5, mode="hybrid")
    assert all(r["code"] == "OK" for r in results), results
    served = {h: cluster.encodes(h) - before[h] for h in before}
    # Each search encodes its query once, on one replica; round robin alternates them.
    assert sum(served.values()) == searches
    assert all(n >= searches // 4 for n in served.values()), served


def test_losing_a_replica_keeps_search_working_and_losing_a_shard_is_flagged(
    cluster: Cluster,
) -> None:
    # An encoder replica crashes: every search still succeeds, on the other replica.
    before = cluster.encodes("encoder-b")
    cluster.processes["encoder-a"].stop(signal.SIGKILL)
    results = cluster.search(QUERIES * 3, k=5, mode="hybrid", rerank_depth=5)
    assert [r["code"] for r in results] == ["OK"] * len(results), (results, cluster.logs())
    assert not any(r["partial"] for r in results)
    assert cluster.encodes("encoder-b") - before == len(results)

    # A shard crashes: searches answer from the other shard, flagged partial.
    cluster.processes["shard-1"].stop(signal.SIGKILL)
    for mode in ("dense", "lexical", "hybrid"):
        results = cluster.search(QUERIES, k=5, mode=mode)
        for result in results:
            assert result["code"] == "OK", (mode, result, cluster.logs())
            assert result["partial"], mode
            assert result["unavailable_shards"] == ["shard-1"]
            assert all(shard_of(doc_id, 2) == 0 for doc_id, _, _ in result["hits"])
        # Dense always fills k from the remaining shard; BM25 may find a query's terms only in
        # the lost shard (small corpora), so lexical needs hits for some query, not every one.
        with_hits = [bool(result["hits"]) for result in results]
        assert all(with_hits) if mode != "lexical" else any(with_hits), (mode, results)
    # The search service still reports SERVING: one shard is enough for partial answers.
    reply = cluster.driver.request(
        "wait_serving", target=cluster.search_target, service=SERVICE_NAMES["search"], timeout_s=5
    )
    assert reply["serving"]
