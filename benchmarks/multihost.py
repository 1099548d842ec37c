"""Multi-host benchmark: the staged topology across network namespaces beside one process.

    sudo python -m neuralir.benchmarks.multihost --corpus ../shared/data/cranfield/corpus.jsonl

Hosts are network namespaces on a private switch (`netns_topology`); every server is
`neuralir serve STAGE` in its own host and the load generator runs in a client host, so every
call crosses a real TCP hop. Three measurements, all closed loop from the client host:

1. end to end, one process (`serve all`, unsharded index) vs the multi-host topology (two
   encoder replicas behind round robin, two index shards, a reranker, a search service):
   p50/p90/p99 and throughput per workload;
2. ANN latency vs shard count (1, 2, 4 index hosts): dense searches, reporting the search
   service's "dense" stage time (the fan-out to every shard, merge included) and end to end.

On one small machine every host shares the same cores: the figures show what the extra hops
and the fan-out cost, not what more machines would add. Results: OUT/multihost.json and
OUT/multihost.md. Needs root and iproute2 (the test suite's netns marker has the same needs).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from neuralir.benchmarks.machine import load_average, machine_info
from neuralir.benchmarks.netns_topology import (
    Driver,
    Host,
    HostProcess,
    Network,
    netns_unavailable_reason,
    serve_argv,
)
from neuralir.index.corpus import iter_corpus
from neuralir.server.app import SERVICE_NAMES

log = logging.getLogger("neuralir.benchmarks.multihost")

REPO = Path(__file__).resolve().parents[1]
MODELS = REPO / "artifacts" / "models"


@dataclasses.dataclass(frozen=True)
class Settings:
    corpus: Path
    out: Path
    concurrency: int = 4
    duration_s: float = 8.0
    warmup_s: float = 1.5
    shard_counts: tuple[int, ...] = (1, 2, 4)
    rerank_depth: int = 10
    queries: int = 64  # distinct query texts, cycled
    max_docs: int = 0  # 0 = the whole corpus

    @property
    def workloads(self) -> dict[str, dict[str, Any]]:
        return {
            "dense": {"k": 10, "mode": "dense", "snippet_chars": 0},
            "hybrid": {"k": 10, "mode": "hybrid", "snippet_chars": 0},
            f"hybrid+rerank{self.rerank_depth}": {
                "k": 10,
                "mode": "hybrid",
                "rerank_depth": self.rerank_depth,
                "snippet_chars": 0,
            },
        }


QUICK = {"duration_s": 2.0, "warmup_s": 0.5, "shard_counts": (1, 2), "concurrency": 2}


def _queries(corpus: Path, count: int) -> list[str]:
    """Document titles (or first words) as queries: realistic length, always some hits."""
    out = []
    for doc in iter_corpus(corpus):
        text = doc.title or " ".join(doc.text.split()[:8])
        if text.strip():
            out.append(text[:200])
        if len(out) == count:
            break
    return out


def _build_indexes(settings: Settings, work: Path, encoder_model: Path) -> dict[int, list[Path]]:
    """The corpus unsharded and in each shard count: {shards: [index dir per shard]}."""
    from neuralir.index.build import IndexBuildSettings, build_index
    from neuralir.index.shard_build import build_sharded_index
    from neuralir.index.shard_map import read_shard_map
    from neuralir.models.encoder import Encoder
    from neuralir.models.session import RuntimeSettings

    encoder = Encoder(encoder_model, RuntimeSettings(intra_op_threads=2))
    build = IndexBuildSettings(threads=2, max_docs=settings.max_docs)
    out: dict[int, list[Path]] = {}
    for shards in sorted({1, *settings.shard_counts}):
        target = work / f"index-{shards}"
        start = time.perf_counter()
        if shards == 1:
            if not target.exists():
                build_index(settings.corpus, target, encoder, build, progress=False)
            out[1] = [target]
        else:
            if read_shard_map(target) is None:
                build_sharded_index(settings.corpus, target, encoder, shards, build, False)
            shard_map = read_shard_map(target)
            assert shard_map is not None
            out[shards] = shard_map.shard_dirs(target)
        log.info("index with %d shard(s) ready in %.1f s", shards, time.perf_counter() - start)
    return out


class Bench:
    """The network, its hosts and the processes of the topology being measured."""

    def __init__(self, network: Network, settings: Settings, models: Path) -> None:
        self.network = network
        self.settings = settings
        self.encoder_model = models / "bi-encoder" / "int8"
        self.rerank_model = models / "cross-encoder" / "int8"
        self.client = network.add_host("client")
        self.driver = Driver(network, self.client)
        self.running: dict[str, HostProcess] = {}
        self.stages: dict[str, str] = {}
        self._hosts: dict[str, Host] = {}

    def host(self, name: str) -> Host:
        if name not in self._hosts:
            self._hosts[name] = self.network.add_host(name)
        return self._hosts[name]

    def serve(self, name: str, stage: str, *args: str) -> HostProcess:
        common = ["--encoder-model", str(self.encoder_model), "--grace-period", "1"]
        common += ["--rerank-model", f"default={self.rerank_model}"]
        process = self.network.start(
            self.host(name), serve_argv(stage, self.host(name), *common, *args)
        )
        self.running[name] = process
        self.stages[name] = stage
        return process

    def wait(self, names: Sequence[str]) -> None:
        for name in names:
            process = self.running[name]
            stage = self.stages[name]
            service = "" if stage == "all" else SERVICE_NAMES[stage]
            reply = self.driver.request(
                "wait_serving", target=process.host.grpc_target, service=service, timeout_s=180
            )
            if not reply["serving"]:
                raise RuntimeError(f"{name} not serving:\n{process.log()}")

    def stop(self, names: Sequence[str]) -> None:
        for name in names:
            self.running.pop(name).stop()

    def load(self, target: str, options: dict[str, Any], queries: list[str]) -> dict[str, Any]:
        s = self.settings
        return self.driver.request(
            "load",
            timeout_s=s.duration_s + s.warmup_s + 120,
            target=target,
            queries=queries,
            options=options,
            concurrency=s.concurrency,
            duration_s=s.duration_s,
            warmup_s=s.warmup_s,
        )


def run(settings: Settings, models: Path = MODELS) -> dict[str, Any]:
    reason = netns_unavailable_reason()
    if reason is not None:
        raise SystemExit(f"multihost benchmark needs network namespaces: {reason}")
    settings.out.mkdir(parents=True, exist_ok=True)
    work = settings.out / "work"
    indexes = _build_indexes(settings, work, models / "bi-encoder" / "int8")
    queries = _queries(settings.corpus, settings.queries)
    results: dict[str, Any] = {
        "settings": {k: str(v) for k, v in dataclasses.asdict(settings).items()},
        "machine": machine_info(REPO),
        "end_to_end": {},
        "shards": {},
    }
    with Network(work / "net") as network:
        bench = Bench(network, settings, models)
        threads = ["--encoder-threads", "1", "--rerank-threads", "1", "--index-threads", "1"]

        # 1. one process
        bench.serve("all", "all", *threads, "--index-dir", str(indexes[1][0]))
        bench.wait(["all"])
        for name, options in settings.workloads.items():
            log.info("single process, %s", name)
            result = bench.load(bench.host("all").grpc_target, options, queries)
            results["end_to_end"].setdefault(name, {})["single_process"] = result
        bench.stop(["all"])

        # 2. multi-host: 2 encoder replicas, 2 shards, reranker, search
        for name in ("encoder-a", "encoder-b"):
            bench.serve(name, "encoder", *threads)
        bench.serve("rerank", "rerank", *threads)
        encoders = (
            f"ipv4:{bench.host('encoder-a').grpc_target},{bench.host('encoder-b').grpc_target}"
        )
        for shards in sorted({2, *settings.shard_counts}):
            shard_hosts = [f"shard-{i}" for i in range(shards)]
            for i, name in enumerate(shard_hosts):
                bench.serve(name, "index", *threads, "--index-dir", str(indexes[shards][i]))
            bench.serve(
                "search",
                "search",
                "--encoder-address", encoders,
                "--index-address", ",".join(bench.host(h).grpc_target for h in shard_hosts),
                "--rerank-address", bench.host("rerank").grpc_target,
            )  # fmt: skip
            bench.wait(["encoder-a", "encoder-b", "rerank", *shard_hosts, "search"])
            target = bench.host("search").grpc_target
            workloads = settings.workloads if shards == 2 else {}
            for name, options in workloads.items():
                log.info("multi-host, %s", name)
                result = bench.load(target, options, queries)
                results["end_to_end"][name]["multi_host"] = result
            if shards in settings.shard_counts:
                log.info("dense search over %d shard(s)", shards)
                result = bench.load(target, settings.workloads["dense"], queries)
                results["shards"][str(shards)] = result
            bench.stop(["search", *shard_hosts])
        results["load_average_after"] = load_average()
    (settings.out / "multihost.json").write_text(json.dumps(results, indent=2) + "\n")
    (settings.out / "multihost.md").write_text(render(results))
    return results


def render(results: dict[str, Any]) -> str:
    machine = results["machine"]
    s = results["settings"]
    lines = [
        "# Multi-host topology (network namespaces on one machine)",
        "",
        f"Machine: {machine.get('cpu_model', '?')}, {machine.get('usable_cores', '?')} usable "
        f"cores, load average at start {machine.get('load_average_at_start', '?')}, after "
        f"{results.get('load_average_after', '?')} (the cores are shared). Corpus {s['corpus']}; "
        f"closed loop, {s['concurrency']} callers, {s['duration_s']} s per row after "
        f"{s['warmup_s']} s warm-up; int8 models, 1 thread per stage. Every host shares the "
        "same cores: this measures the cost of the hops and the fan-out, not added capacity.",
        "",
        "## End to end",
        "",
        "| workload | topology | p50 ms | p90 ms | p99 ms | req/s | errors |",
        "|---|---|---|---|---|---|---|",
    ]
    for workload, by_topology in results["end_to_end"].items():
        for topology in ("single_process", "multi_host"):
            r = by_topology.get(topology)
            if r is None:
                continue
            lat = r["latency_ms"]
            lines.append(
                f"| {workload} | {topology.replace('_', ' ')} | {lat['p50']:.2f} | "
                f"{lat['p90']:.2f} | {lat['p99']:.2f} | {r['throughput_rps']:.1f} | {r['errors']} |"
            )
    lines += [
        "",
        "## ANN latency vs shard count (dense searches)",
        "",
        "`dense` is the search service's dense stage as it reports it (StageTiming): with",
        "shards, the parallel fan-out to every shard and the merge.",
        "",
        "| shards | dense p50 ms | dense p99 ms | end-to-end p50 ms | end-to-end p99 ms | req/s |",
        "|---|---|---|---|---|---|",
    ]
    for shards, r in sorted(results["shards"].items(), key=lambda kv: int(kv[0])):
        dense = r["server_ms"].get("dense", {"p50": 0.0, "p99": 0.0})
        lat = r["latency_ms"]
        lines.append(
            f"| {shards} | {dense['p50']:.3f} | {dense['p99']:.3f} | {lat['p50']:.2f} | "
            f"{lat['p99']:.2f} | {r['throughput_rps']:.1f} |"
        )
    return "\n".join(lines) + "\n"


def result_rows(results: dict[str, Any], common: dict[str, Any]) -> list[dict[str, Any]]:
    """`run`'s results as rows of the benchmark results document (see records.py)."""
    runs = []
    for workload, by_topology in results["end_to_end"].items():
        for topology, measured in by_topology.items():
            runs.append(
                {
                    **common,
                    **measured,
                    "stage": "search",
                    "path": "grpc" if topology == "single_process" else "grpc_multiprocess",
                    "items_per_s": measured["throughput_rps"],
                    "workload": workload,
                    "topology": topology,
                    "shards": 1 if topology == "single_process" else 2,
                }
            )
    for shards, measured in results["shards"].items():
        runs.append(
            {
                **common,
                **measured,
                "stage": "search",
                "path": "grpc_multiprocess",
                "items_per_s": measured["throughput_rps"],
                "workload": "dense",
                "topology": "shard_sweep",
                "shards": int(shards),
            }
        )
    return runs


def run_scenario(scenario: Any, ctx: Any) -> Any:
    """The `neuralir bench` handler (runner.HANDLERS["multihost"] = multihost.run_scenario).

    Scenario file (benchmarks/scenarios/90-multihost.toml):

        name = "multihost"
        title = "Multi-host topology in network namespaces: one process vs stages on hosts; shards"
        handler = "multihost"
        order = 90
        warmup_s = 1.5
        duration_s = 8.0
        [params]
        collection = "cranfield"   # under the data dir; ADI when absent
        concurrency = 4
        shard_counts = [1, 2, 4]
        rerank_depth = 10
        [quick]
        warmup_s = 0.5
        duration_s = 2.0
        [quick.params]
        collection = "adi"
        concurrency = 2
        shard_counts = [1, 2]

    Rows follow records.py: `grpc` = one process, `grpc_multiprocess` = stages on separate hosts,
    with `topology`, `workload` and `shards` fields. Without namespaces (not root, no
    iproute2) or without the collection it returns no rows and a note saying why.
    """
    from neuralir.benchmarks.context import ScenarioOutput

    reason = netns_unavailable_reason()
    if reason is not None:
        return ScenarioOutput(notes=[f"multihost skipped: {reason}"])
    data_dir = ctx.data_dir or REPO.parent / "shared" / "data"
    corpus = Path(data_dir) / str(scenario.param("collection", "cranfield")) / "corpus.jsonl"
    if not corpus.is_file():
        corpus = Path(data_dir) / "adi" / "corpus.jsonl"
    if not corpus.is_file():
        return ScenarioOutput(notes=[f"multihost skipped: no collection under {data_dir}"])
    settings = Settings(
        corpus=corpus,
        # Indexes and logs are scratch: the run's temporary directory, not the committed DIR.
        out=Path(ctx.work_dir) / "multihost",
        concurrency=int(scenario.param("concurrency", 4)),
        duration_s=scenario.duration_s,
        warmup_s=scenario.warmup_s,
        shard_counts=tuple(int(n) for n in scenario.param("shard_counts", [1, 2, 4])),
        rerank_depth=int(scenario.param("rerank_depth", 10)),
    )
    ctx.stop_servers()  # every core for the namespaces' servers
    results = run(settings, Path(ctx.models_dir))
    common = {
        "scenario": scenario.name,
        "load": "closed",
        "concurrency": settings.concurrency,
        "batch": 1,
        "model": ctx.model_name("bi-encoder"),
        "quantization": "int8",
        "threads": {"encoder": 1, "index": 1, "rerank": 1},
        "corpus": str(corpus),
    }
    runs = result_rows(results, common)
    note = (
        "multihost: every namespace host shares the machine's cores, so these rows show the "
        "cost of extra hops and of the shard fan-out, not added capacity"
    )
    return ScenarioOutput(runs=runs, notes=[note], extra={"multihost_markdown": render(results)})


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="neuralir-multihost", description=__doc__.split("\n")[0])
    parser.add_argument(
        "--corpus", type=Path, default=REPO.parent / "shared/data/cranfield/corpus.jsonl"
    )
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "out" / "multihost")
    parser.add_argument("--models", type=Path, default=MODELS)
    parser.add_argument("--quick", action="store_true", help="short rows, 1 and 2 shards")
    parser.add_argument("--concurrency", type=int)
    parser.add_argument("--duration", type=float)
    parser.add_argument("--max-docs", type=int, default=0)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", stream=sys.stderr)
    overrides: dict[str, Any] = dict(QUICK) if args.quick else {}
    if args.concurrency:
        overrides["concurrency"] = args.concurrency
    if args.duration:
        overrides["duration_s"] = args.duration
    settings = Settings(corpus=args.corpus, out=args.out, max_docs=args.max_docs, **overrides)
    results = run(settings, args.models)
    print(render(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
