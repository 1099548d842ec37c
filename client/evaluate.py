"""`neuralir eval`: ranking quality and latency of each pipeline, through the real services.

    neuralir eval --dataset DIR --split SPLIT --pipeline P [--pipeline P ...] [--k 10] [--json]
                  [--target host:port]

Pipelines: bm25, dense, hybrid, and each of them +rerank (depth 100, or +rerank@N). Every judged
query of the split goes to the search service over gRPC with the real client. Without --target
the services run in this process on loopback, over an index built for the dataset (or reused:
see eval_index_cache). Metrics come from ranx (trec_eval-compatible): nDCG@k and MRR@k on the top
k, Recall@100 on the top 100, so the service is always asked for max(100, k) results.

Latency is each query's own client-side time (perf_counter_ns around one Search call) while
`--concurrency` callers keep queries in flight; queries/s is the judged queries over the wall time
of the timed pass. Output: a table (or --markdown, or one JSON object with --json) on stdout;
progress and logs on stderr. Exit status 2 for a bad dataset or bad options, 1 if a search fails.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import dataclasses
import json
import os
import re
import sys
import threading
import time
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, TextIO

import grpc

from neuralir.client.client import ClientSettings, NeuralIRClient
from neuralir.client.datasets import Dataset, DatasetError, load_dataset

RECALL_DEPTH = 100
DEFAULT_RERANK_DEPTH = 100
MAX_RERANK_DEPTH = 200  # server/limits.py MAX_RERANK_DEPTH
MAX_K = 1000  # server/limits.py MAX_K
FIRST_STAGES = {"bm25": "lexical", "dense": "dense", "hybrid": "hybrid"}
_PIPELINE = re.compile(r"(?P<first>bm25|dense|hybrid)(?P<rerank>\+rerank(?:@(?P<depth>\d+))?)?")


class EvalError(Exception):
    """A problem the user can fix (options, models, index, target): exit status 2."""


class SearchFailed(Exception):
    """A search call failed while measuring: exit status 1."""


@dataclasses.dataclass(frozen=True)
class Pipeline:
    name: str  # as given on the command line, the key of the results
    mode: str  # client search mode: "lexical", "dense" or "hybrid"
    rerank_depth: int  # 0 = no reranking


def parse_pipeline(text: str) -> Pipeline:
    match = _PIPELINE.fullmatch(text.strip())
    if match is None:
        raise argparse.ArgumentTypeError(
            f"unknown pipeline {text!r}: use bm25, dense, hybrid, or one of them with +rerank "
            "or +rerank@DEPTH (e.g. dense+rerank@50)"
        )
    depth = 0
    if match.group("rerank"):
        depth = int(match.group("depth") or DEFAULT_RERANK_DEPTH)
        if not 1 <= depth <= MAX_RERANK_DEPTH:
            raise argparse.ArgumentTypeError(
                f"rerank depth in {text!r} must be between 1 and {MAX_RERANK_DEPTH}"
            )
    return Pipeline(text.strip(), FIRST_STAGES[match.group("first")], depth)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="neuralir eval",
        description="Ranking quality (nDCG, MRR, recall) and latency of search pipelines.",
    )
    add = parser.add_argument
    add("--dataset", type=Path, required=True, help="BEIR-layout directory")
    add("--split", required=True, help="qrels/SPLIT.tsv (e.g. test, dev_sub)")
    add(
        "--pipeline",
        dest="pipelines",
        action="append",
        type=parse_pipeline,
        required=True,
        metavar="PIPELINE",
        help="bm25, dense, hybrid, bm25+rerank, dense+rerank, hybrid+rerank; "
        f"+rerank@N sets the depth (default {DEFAULT_RERANK_DEPTH}); repeatable",
    )
    add("--k", type=int, default=10, help="cut-off of nDCG and MRR (default 10)")
    output = parser.add_mutually_exclusive_group()
    output.add_argument("--json", action="store_true", help="one JSON object on stdout")
    output.add_argument("--markdown", action="store_true", help="a Markdown table on stdout")
    add("--target", help="host:port of running services (default: start them in-process)")
    add("--token", default=os.environ.get("NEURALIR_TOKEN", ""), help="bearer token for --target")
    add("--models", type=Path, default=Path("artifacts/models"), help="built model tree")
    add("--precision", choices=("int8", "fp32"), default="int8", help="which built models")
    add(
        "--cross-encoder",
        type=Path,
        help="cross-encoder directory to serve in-process (default MODELS/cross-encoder/PRECISION)",
    )
    add("--rerank-model", default="", help="name of the served reranker to use (default: first)")
    add("--blend-weight", type=float, help="cross-encoder weight in [0, 1] (default: the model's)")
    add("--ef", type=int, default=0, help="HNSW expansion for dense search (0 = index default)")
    add("--max-queries", type=int, default=0, help="only the first N judged queries (0 = all)")
    add(
        "--concurrency",
        type=int,
        default=1,
        help="concurrent callers (default 1: queries are then never batched together, which "
        "keeps int8 results reproducible; more callers measure throughput under load)",
    )
    add("--warmup", type=int, default=3, help="untimed queries before each pipeline (default 3)")
    add("--timeout", type=float, default=120.0, help="deadline of one search in seconds")
    add(
        "--index-cache",
        type=Path,
        default=Path("artifacts/indexes/eval"),
        help="where in-process runs keep their indexes",
    )
    return parser


def main(argv: list[str]) -> int:
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exc:  # argparse has already said why
        return int(exc.code or 0)
    try:
        _check_options(args)
        dataset = load_dataset(args.dataset, args.split).limited(args.max_queries)
        report = evaluate(dataset, args)
    except (DatasetError, EvalError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except SearchFailed as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    if args.json:
        json.dump(report, sys.stdout, indent=2)
        sys.stdout.write("\n")
    else:
        sys.stdout.write(render_markdown(report) if args.markdown else render_text(report))
    sys.stdout.flush()
    return 0


def _check_options(args: argparse.Namespace) -> None:
    names = [p.name for p in args.pipelines]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise EvalError(f"pipeline given twice: {', '.join(duplicates)}")
    if not 1 <= args.k <= MAX_K:
        raise EvalError(f"--k must be between 1 and {MAX_K}")
    if args.concurrency < 1 or args.warmup < 0 or args.max_queries < 0 or args.ef < 0:
        raise EvalError("--concurrency must be 1 or more; --warmup, --max-queries, --ef 0 or more")
    if args.blend_weight is not None and not 0.0 <= args.blend_weight <= 1.0:
        raise EvalError("--blend-weight must be between 0 and 1")
    if args.timeout <= 0:
        raise EvalError("--timeout must be positive")


# ---------------------------------------------------------------- services


def evaluate(dataset: Dataset, args: argparse.Namespace) -> dict[str, Any]:
    """Runs every pipeline over the dataset's judged queries and returns the report."""
    _progress(
        f"{dataset.name}/{dataset.split}: {len(dataset.queries)} judged queries, "
        f"{dataset.corpus_size:,} documents"
    )
    if args.target:
        return _against(args.target, dataset, args, {"target": args.target})
    from neuralir.server.embedded import EmbeddedServer

    settings, setup = _in_process_settings(dataset, args)
    try:
        server = EmbeddedServer(settings).start()
    except Exception as exc:  # a stage that cannot load: say which, without a traceback
        raise EvalError(f"the in-process services did not start: {exc}") from exc
    try:
        return _against(server.address, dataset, args, setup)
    finally:
        server.stop()


def _in_process_settings(dataset: Dataset, args: argparse.Namespace) -> tuple[Any, dict[str, Any]]:
    from neuralir.client.eval_index_cache import ensure_index
    from neuralir.models.manifest import ManifestError, read_manifest
    from neuralir.server.corpus import CorpusError
    from neuralir.server.index_build import IndexBuildError
    from neuralir.server.index_store import IndexLoadError
    from neuralir.server.settings import ServerSettings

    encoder_dir = args.models / "bi-encoder" / args.precision
    cross_dir = args.cross_encoder or args.models / "cross-encoder" / args.precision
    try:
        cross_id = read_manifest(cross_dir).model_id
        cached = ensure_index(
            dataset.corpus_path,
            dataset.corpus_sha256,
            dataset.name,
            encoder_dir,
            args.index_cache,
        )
    except (ManifestError, IndexBuildError, IndexLoadError, CorpusError, OSError) as exc:
        raise EvalError(str(exc)) from exc
    if cached.built:
        _progress(f"built index {cached.path} in {cached.build_seconds:.1f} s")
    settings = ServerSettings(
        port=0,
        index_dir=cached.path,
        encoder_model=encoder_dir,
        rerank_models=(("default", cross_dir),),
        log_format="text",
    )
    setup = {
        "target": "in-process",
        "precision": args.precision,
        "index": str(cached.path),
        "index_reused": not cached.built,
        "cross_encoder_model_id": cross_id,
    }
    return settings, setup


def _against(
    address: str, dataset: Dataset, args: argparse.Namespace, setup: dict[str, Any]
) -> dict[str, Any]:
    client_settings = ClientSettings(target=address, timeout_s=args.timeout, token=args.token)
    with NeuralIRClient(client_settings) as client:
        try:
            client.wait_ready(timeout_s=60.0)
        except TimeoutError as exc:
            raise EvalError(f"services at {address} are not ready: {exc}") from exc
        index = _describe_index(client, address, dataset)
        report: dict[str, Any] = {
            "dataset": dataset.name,
            "split": dataset.split,
            "queries": len(dataset.queries),
            "k": args.k,
            "documents": dataset.corpus_size,
            **setup,
            **index,
            "concurrency": args.concurrency,
            "pipelines": {},
        }
        for pipeline in args.pipelines:
            measured = run_pipeline(client, dataset, pipeline, args)
            report["pipelines"][pipeline.name] = summarize(dataset, pipeline, measured, args.k)
            report["encoder_model_id"] = report["encoder_model_id"] or measured.encoder_model_id
            if measured.rerank_model_id:
                report["rerank_model_id"] = measured.rerank_model_id
            _progress(_one_line(pipeline.name, report["pipelines"][pipeline.name], args.k))
    return report


def _describe_index(client: NeuralIRClient, address: str, dataset: Dataset) -> dict[str, str]:
    """Checks that the served index holds this dataset's corpus (the same sha256).

    A target that serves only the search service cannot be asked; then the check is skipped.
    """
    try:
        described = client.describe_index()
    except grpc.RpcError as exc:
        if exc.code() == grpc.StatusCode.UNIMPLEMENTED:
            _progress(f"{address} does not serve the index service: corpus not verified")
            return {"encoder_model_id": "", "bm25": ""}
        raise EvalError(f"cannot describe the index at {address}: {_why(exc)}") from exc
    if described.corpus_sha256 != dataset.corpus_sha256:
        raise EvalError(
            f"the index at {address} was built from another corpus (sha256 "
            f"{described.corpus_sha256[:12]}…) than {dataset.corpus_path} "
            f"({dataset.corpus_sha256[:12]}…)"
        )
    return {"encoder_model_id": described.encoder_model_id, "bm25": described.bm25_parameters}


# ---------------------------------------------------------------- measuring


@dataclasses.dataclass
class Measured:
    rankings: dict[str, list[str]]  # query id -> doc ids, best first
    latency_ns: list[int]  # client side, one per query
    server_ns: list[int]  # the search stage's own total, one per query
    wall_ns: int
    rerank_ns: list[int] = dataclasses.field(default_factory=list)  # the rerank stage's total
    encoder_model_id: str = ""
    rerank_model_id: str = ""


def run_pipeline(
    client: NeuralIRClient, dataset: Dataset, pipeline: Pipeline, args: argparse.Namespace
) -> Measured:
    """Sends every judged query through `pipeline` with `args.concurrency` callers."""
    options: dict[str, Any] = {
        "k": max(RECALL_DEPTH, args.k),
        "mode": pipeline.mode,
        "rerank_depth": pipeline.rerank_depth,
        "snippet_chars": 0,
        "ef": args.ef,
    }
    if pipeline.rerank_depth:
        options["rerank_model"] = args.rerank_model
        if args.blend_weight is not None:
            options["blend_weight"] = args.blend_weight
    queries = list(dataset.queries.items())

    def one(item: tuple[str, str]) -> tuple[str, list[str], int, int, int, Any]:
        qid, text = item
        started = time.perf_counter_ns()
        try:
            result = client.search(text, **options)
        except grpc.RpcError as exc:
            why = _why(exc)
            raise SearchFailed(f"{pipeline.name}: search for query {qid!r} failed: {why}") from None
        elapsed = time.perf_counter_ns() - started
        server = next((t.total_ms for t in result.timings if t.stage == "search"), 0.0)
        rerank = next((t.total_ms for t in result.timings if t.stage == "rerank"), 0.0)
        return qid, result.doc_ids, elapsed, int(server * 1e6), int(rerank * 1e6), result

    measured = Measured({}, [], [], 0)
    with concurrent.futures.ThreadPoolExecutor(args.concurrency) as pool:
        list(pool.map(one, queries[: args.warmup]))
        meter = _Meter(pipeline.name, len(queries))
        started = time.perf_counter_ns()
        for qid, ids, elapsed, server, rerank, result in _as_done(pool, one, queries):
            measured.rankings[qid] = ids
            measured.latency_ns.append(elapsed)
            measured.server_ns.append(server)
            measured.rerank_ns.append(rerank)
            measured.encoder_model_id = result.encoder_model_id or measured.encoder_model_id
            measured.rerank_model_id = result.rerank_model_id or measured.rerank_model_id
            meter.tick()
        measured.wall_ns = time.perf_counter_ns() - started
    return measured


def _as_done(
    pool: concurrent.futures.Executor, function: Any, items: Sequence[Any]
) -> Iterator[Any]:
    futures = [pool.submit(function, item) for item in items]
    try:
        for future in concurrent.futures.as_completed(futures):
            yield future.result()
    finally:
        for future in futures:  # after a failure, do not send the rest
            future.cancel()


def summarize(dataset: Dataset, pipeline: Pipeline, measured: Measured, k: int) -> dict[str, Any]:
    quality = ranking_metrics(dataset.qrels, measured.rankings, k)
    seconds = measured.wall_ns / 1e9
    summary = {
        **quality,
        "latency_ms": latency_summary(measured.latency_ns),
        "server_ms": latency_summary(measured.server_ns),
        "qps": round(len(measured.latency_ns) / seconds, 2) if seconds > 0 else 0.0,
        "mode": pipeline.mode,
        "rerank_depth": pipeline.rerank_depth,
        "queries": len(measured.latency_ns),
        "empty_results": sum(1 for ids in measured.rankings.values() if not ids),
        "seconds": round(seconds, 3),
    }
    if pipeline.rerank_depth:
        # The rerank stage's own time (the search service's StageTiming), queue included.
        summary["rerank_ms"] = latency_summary(measured.rerank_ns)
    return summary


def ranking_metrics(
    qrels: dict[str, dict[str, int]], rankings: dict[str, list[str]], k: int
) -> dict[str, float]:
    """nDCG@k, MRR@k and Recall@100 by ranx, averaged over every judged query.

    Scores are derived from ranks, so ranx sees exactly the order the service returned (its own
    tie-breaking never reorders equal scores). A query with no results counts as 0.
    """
    from numba.core.errors import NumbaTypeSafetyWarning
    from ranx import Qrels, Run, evaluate

    run = {
        qid: {doc_id: float(len(ids) - rank) for rank, doc_id in enumerate(ids)}
        for qid, ids in rankings.items()
        if ids
    }
    names = [f"ndcg@{k}", f"mrr@{k}", f"recall@{RECALL_DEPTH}"]
    if not run:  # ranx cannot build an empty run; nothing found scores 0 everywhere
        return dict.fromkeys(names, 0.0)
    with warnings.catch_warnings():
        # ranx's numba kernels warn about an internal uint64 cast while they compile.
        warnings.simplefilter("ignore", NumbaTypeSafetyWarning)
        values = evaluate(Qrels.from_dict(qrels), Run.from_dict(run), names, make_comparable=True)
    return {name: float(values[name]) for name in names}


def latency_summary(values_ns: Sequence[int]) -> dict[str, float]:
    """Mean, p50 and p99 in ms from an HDR histogram (microsecond resolution, 3 digits)."""
    from hdrh.histogram import HdrHistogram

    histogram = HdrHistogram(1, 3_600_000_000, 3)
    for value in values_ns:
        histogram.record_value(max(1, value // 1000))
    if not values_ns:
        return {"mean": 0.0, "p50": 0.0, "p99": 0.0}
    return {
        "mean": round(histogram.get_mean_value() / 1000, 3),
        "p50": round(histogram.get_value_at_percentile(50) / 1000, 3),
        "p99": round(histogram.get_value_at_percentile(99) / 1000, 3),
    }


# ---------------------------------------------------------------- output


def _columns(k: int) -> list[tuple[str, str]]:
    return [
        (f"ndcg@{k}", f"nDCG@{k}"),
        (f"mrr@{k}", f"MRR@{k}"),
        (f"recall@{RECALL_DEPTH}", f"R@{RECALL_DEPTH}"),
    ]


def _header(report: dict[str, Any]) -> str:
    where = report["target"]
    if where == "in-process":
        where = f"in-process services ({report['precision']}, index {report['index']})"
    return (
        f"{report['dataset']} split {report['split']}: {report['queries']} judged queries, "
        f"{report['documents']:,} documents; {where}; {_callers(report['concurrency'])}; "
        f"encoder {report['encoder_model_id']}"
        + (f", reranker {report['rerank_model_id']}" if "rerank_model_id" in report else "")
    )


def _callers(count: int) -> str:
    return f"{count} concurrent caller{'' if count == 1 else 's'}"


def render_text(report: dict[str, Any]) -> str:
    k = report["k"]
    rows = [
        ["pipeline", *(label for _, label in _columns(k)), "mean ms", "p50 ms", "p99 ms", "q/s"]
    ]
    for name, result in report["pipelines"].items():
        rows.append(_row(name, result, k))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = [_header(report), ""]
    for row in rows:
        cells = [row[0].ljust(widths[0])] + [
            c.rjust(w) for c, w in zip(row[1:], widths[1:], strict=True)
        ]
        lines.append("  ".join(cells))
    return "\n".join(lines) + "\n"


def render_markdown(report: dict[str, Any]) -> str:
    k = report["k"]
    head = ["pipeline", *(label for _, label in _columns(k)), "mean ms", "p50 ms", "p99 ms", "q/s"]
    lines = [
        f"_{_header(report)}_",
        "",
        "| " + " | ".join(head) + " |",
        "|" + "|".join(["---"] + ["---:"] * (len(head) - 1)) + "|",
    ]
    for name, result in report["pipelines"].items():
        lines.append("| " + " | ".join(_row(name, result, k)) + " |")
    return "\n".join(lines) + "\n"


def _row(name: str, result: dict[str, Any], k: int) -> list[str]:
    latency = result["latency_ms"]
    return [
        name,
        *(f"{result[key]:.3f}" for key, _ in _columns(k)),
        f"{latency['mean']:.1f}",
        f"{latency['p50']:.1f}",
        f"{latency['p99']:.1f}",
        f"{result['qps']:.1f}",
    ]


def _one_line(name: str, result: dict[str, Any], k: int) -> str:
    return (
        f"{name}: nDCG@{k} {result[f'ndcg@{k}']:.3f}, R@100 {result['recall@100']:.3f}, "
        f"mean {result['latency_ms']['mean']:.1f} ms, {result['qps']:.1f} q/s "
        f"({result['seconds']:.1f} s)"
    )


def _why(exc: BaseException) -> str:
    if isinstance(exc, grpc.RpcError) and hasattr(exc, "code"):
        return f"{exc.code().name}: {exc.details()}"
    return str(exc)


def _progress(message: str, stream: TextIO | None = None) -> None:
    stream = stream or sys.stderr
    stream.write(f"eval: {message}\n")
    stream.flush()


class _Meter:
    """A progress line on stderr at most every 10 s, so long rerank runs show they are alive."""

    def __init__(self, name: str, total: int) -> None:
        self._name, self._total, self._done = name, total, 0
        self._last = time.perf_counter()
        self._lock = threading.Lock()

    def tick(self) -> None:
        with self._lock:
            self._done += 1
            now = time.perf_counter()
            if now - self._last >= 10.0 and self._done < self._total:
                self._last = now
                _progress(f"{self._name}: {self._done}/{self._total} queries")
