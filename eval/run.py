"""Runs pipelines over a dataset's judged queries through the real search service.

Without a target the services run in this process on loopback, over an index built for the
dataset or reused (`neuralir.index.reuse`); with one, against running services, after checking
that their index holds the dataset's corpus. Each query is one Search call with the real client;
its client-side time is measured with perf_counter_ns while `concurrency` callers keep queries
in flight.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import dataclasses
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, TextIO

import grpc

from neuralir.client.client import ClientSettings, NeuralIRClient
from neuralir.eval.datasets import Dataset
from neuralir.eval.metrics import RECALL_DEPTH, latency_summary, ranking_metrics
from neuralir.eval.pipelines import Pipeline


class EvalError(Exception):
    """A problem the user can fix (options, models, index, target): exit status 2."""


class SearchFailed(Exception):
    """A search call failed while measuring: exit status 1."""


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
    from neuralir.index.build import IndexBuildError
    from neuralir.index.corpus import CorpusError
    from neuralir.index.format import IndexLoadError
    from neuralir.index.reuse import ensure_index, keyed_path
    from neuralir.models.manifest import ManifestError, read_manifest
    from neuralir.server.settings import ServerSettings

    encoder_dir = getattr(args, "bi_encoder", None) or args.models / "bi-encoder" / args.precision
    cross_dir = args.cross_encoder or args.models / "cross-encoder" / args.precision
    try:
        cross_id = read_manifest(cross_dir).model_id
        encoder_id = read_manifest(encoder_dir).model_id
        path = keyed_path(args.index_cache, dataset.name, dataset.corpus_sha256, encoder_id)
        cached = ensure_index(
            dataset.corpus_path, path, encoder_dir, corpus_sha256=dataset.corpus_sha256
        )
    except (ManifestError, IndexBuildError, IndexLoadError, CorpusError, OSError) as exc:
        raise EvalError(str(exc)) from exc
    if cached.built:
        _progress(f"built index {cached.path} in {cached.build_seconds:.1f} s")
    rerank_models: list[tuple[str, Path]] = [("default", cross_dir)]
    small_dir = args.models / "cross-encoder-small" / args.precision
    if (small_dir / "manifest.json").is_file():  # the cascade's first pass, where built
        rerank_models.append(("small", small_dir))
    settings = ServerSettings(
        port=0,
        index_dir=cached.path,
        encoder_model=encoder_dir,
        rerank_models=tuple(rerank_models),
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


@dataclasses.dataclass
class Measured:
    rankings: dict[str, list[str]]  # query id -> doc ids, best first
    latency_ns: list[int]  # client side, one per query
    server_ns: list[int]  # the search stage's own total, one per query
    wall_ns: int
    # the rerank stages' own totals: both passes of a cascade together
    rerank_ns: list[int] = dataclasses.field(default_factory=list)
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
    if pipeline.fusion:
        options["fusion"] = pipeline.fusion
    if pipeline.fusion_weight is not None:
        options["fusion_weight"] = pipeline.fusion_weight
    if pipeline.rerank_depth:
        options["rerank_model"] = args.rerank_model
        if args.blend_weight is not None:
            options["blend_weight"] = args.blend_weight
    if pipeline.cascade_depth:
        options["cascade"] = (args.cascade_model, pipeline.cascade_depth)
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
        rerank = sum(t.total_ms for t in result.timings if t.stage in ("rerank", "cascade"))
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
        **({"fusion": pipeline.fusion} if pipeline.fusion else {}),
        **({"fusion_weight": pipeline.fusion_weight} if pipeline.fusion_weight is not None else {}),
        **({"cascade_depth": pipeline.cascade_depth} if pipeline.cascade_depth else {}),
        "queries": len(measured.latency_ns),
        "empty_results": sum(1 for ids in measured.rankings.values() if not ids),
        "seconds": round(seconds, 3),
    }
    if pipeline.rerank_depth:
        # The rerank stages' own time (the search service's StageTiming), queue included.
        summary["rerank_ms"] = latency_summary(measured.rerank_ns)
    return summary


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
