"""The benchmark suite's own machinery: HDR percentiles, the load generators' semantics, the
results.json validator, the scenario files, and a reduced quick run end to end.

The load-generator tests drive synthetic asyncio targets on purpose: they test how the
generator measures (from intended send times), not the speed of anything. Their bounds are
wide ratios of a 10 ms service time, not speed thresholds.
"""

from __future__ import annotations

import asyncio
import copy
import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from neuralir.benchmarks.ann_engines import exact_top_k, recall_at_k
from neuralir.benchmarks.bench_ann import engine_from_spec
from neuralir.benchmarks.bench_grpc import PROBE_VARIANTS
from neuralir.benchmarks.hdr import LatencyHistogram
from neuralir.benchmarks.loadgen import (
    CallReport,
    LoadResult,
    closed_loop,
    closed_loop_sync,
    merge_round,
    open_loop,
)
from neuralir.benchmarks.records import make_run, validate_results
from neuralir.benchmarks.runner import HANDLERS, main
from neuralir.benchmarks.scenario import ScenarioError, load_scenarios
from neuralir.client.types import StageTime

SERVICE_S = 0.010


# ---------------------------------------------------------------- HDR histogram


def test_percentiles_of_1_to_1000_ms_are_exact_within_histogram_precision() -> None:
    histogram = LatencyHistogram()
    for ms in range(1, 1001):
        histogram.record_ns(ms * 1_000_000)
    summary = histogram.summary()
    assert histogram.count == 1000
    # Three significant digits: each value is exact to within 0.1%.
    assert summary["p50"] == pytest.approx(500.0, rel=1e-3)
    assert summary["p90"] == pytest.approx(900.0, rel=1e-3)
    assert summary["p99"] == pytest.approx(990.0, rel=1e-3)
    assert summary["p999"] == pytest.approx(999.0, rel=1e-3)
    assert summary["max"] == pytest.approx(1000.0, rel=1e-3)
    assert histogram.mean_ms() == pytest.approx(500.5, rel=1e-3)


def test_sub_millisecond_latencies_keep_microsecond_resolution() -> None:
    histogram = LatencyHistogram()
    for us in (250, 300, 350):
        histogram.record_ns(us * 1000)
    assert histogram.percentile_ms(50) == pytest.approx(0.300, abs=0.001)
    assert histogram.max_ms() == pytest.approx(0.350, abs=0.001)


def test_merged_histograms_hold_both_sets_and_empty_summary_is_zero() -> None:
    low, high = LatencyHistogram(), LatencyHistogram()
    for _ in range(99):
        low.record_ms(1.0)
    high.record_ms(100.0)
    low.merge(high)
    assert low.count == 100
    assert low.percentile_ms(50) == pytest.approx(1.0, rel=1e-3)
    assert low.max_ms() == pytest.approx(100.0, rel=1e-3)
    assert LatencyHistogram().summary() == {
        "p50": 0.0,
        "p90": 0.0,
        "p99": 0.0,
        "p999": 0.0,
        "max": 0.0,
    }


# ---------------------------------------------------------------- load generators


def _serial_target() -> Any:
    """A fake server that serves one request at a time, SERVICE_S each (asyncio, no CPU)."""
    lock = asyncio.Lock()

    async def call() -> CallReport:
        async with lock:
            await asyncio.sleep(SERVICE_S)
        return CallReport(stages=(StageTime("fake", 0.0, 0.0, SERVICE_S * 1000, 10.0, 1),))

    return call


def test_open_loop_above_capacity_shows_queueing_that_closed_loop_does_not() -> None:
    async def measure() -> tuple[Any, Any]:
        # Capacity is 1 / SERVICE_S = 100 req/s; offer twice that for a second.
        opened = await open_loop(_serial_target(), rate=200.0, duration_s=1.0, seed=1)
        closed = await closed_loop(_serial_target(), concurrency=1, duration_s=0.5)
        return opened, closed

    opened, closed = asyncio.run(measure())
    service_ms = SERVICE_S * 1000
    # The backlog grows all through the window: the median request waits for many others.
    assert opened.latency.percentile_ms(50) > 5 * service_ms
    assert opened.latency.percentile_ms(99) > 20 * service_ms
    assert opened.throughput_rps < 150  # it cannot complete faster than it serves
    assert opened.server_summary()["fake"]["mean_batch"] == 1.0
    # One caller never queues behind another: latency stays near the service time.
    assert closed.latency.percentile_ms(50) < 3 * service_ms
    assert closed.requests > 10
    assert closed.errors == 0


def test_open_loop_counts_a_late_send_from_its_intended_time() -> None:
    """A target that blocks the event loop keeps the generator from sending on time. Measured
    from the actual send, every call looks like SERVICE_S; from the intended send time (what
    the generator reports) the delay shows."""

    async def blocking() -> CallReport:
        time.sleep(SERVICE_S / 2)  # noqa: ASYNC251 -- blocking the loop is the point here
        return CallReport()

    result = asyncio.run(open_loop(blocking, rate=400.0, duration_s=0.8, seed=2))
    assert result.service.percentile_ms(50) < 3 * (SERVICE_S / 2) * 1000
    assert result.latency.percentile_ms(50) > 5 * result.service.percentile_ms(50)
    assert result.send_lag.percentile_ms(50) > result.service.percentile_ms(50)


def test_closed_loop_warm_up_is_not_recorded_and_failures_are_counted() -> None:
    calls = {"n": 0}

    def flaky() -> CallReport:
        calls["n"] += 1
        if calls["n"] % 4 == 0:
            raise RuntimeError("boom")
        return CallReport(items=3)

    result = closed_loop_sync(flaky, duration_s=0.05, warmup_s=0.05, max_requests=40)
    assert result.requests + result.errors == 40  # recorded calls only, warm-up excluded
    assert calls["n"] > 40
    assert result.errors > 0
    assert result.error_kinds == {"RuntimeError": result.errors}
    assert result.error_examples == {"RuntimeError": "boom"}
    assert result.items == 3 * result.requests


def test_slow_calls_still_record_at_least_one_measurement() -> None:
    def slow() -> CallReport:
        time.sleep(0.03)
        return CallReport()

    result = closed_loop_sync(slow, duration_s=0.001, warmup_s=0.05)
    assert result.requests >= 1
    assert result.latency.percentile_ms(50) >= 25


def test_merged_rounds_add_up() -> None:
    first = closed_loop_sync(lambda: CallReport(), 10.0, 0.0, max_requests=5)
    second = closed_loop_sync(lambda: CallReport(), 10.0, 0.0, max_requests=7)
    rates = [first.items_per_s, second.items_per_s]
    assert first.rounds() == [first.items_per_s]
    first.merge(second)
    assert first.requests == 12
    assert first.latency.count == 12
    # Each round's own rate is kept, so a report can show how far rounds disagreed.
    assert first.rounds() == rates
    third = closed_loop_sync(lambda: CallReport(items=3), 10.0, 0.0, max_requests=4)
    first.merge(third)
    assert first.rounds() == [*rates, third.items_per_s]
    row = _encode_row(first)
    assert row["rounds_items_per_s"] == [round(r, 1) for r in first.rounds()]
    store: dict[str, LoadResult] = {}
    merge_round(store, "cell", second)  # the first round starts the measurement
    merge_round(store, "cell", third)
    assert store["cell"] is second
    assert store["cell"].requests == 7 + 4


# ---------------------------------------------------------------- ANN helpers


def test_exact_top_k_in_blocks_matches_a_full_sort() -> None:
    rng = np.random.default_rng(0)
    vectors = rng.standard_normal((1000, 16)).astype(np.float32)
    queries = rng.standard_normal((7, 16)).astype(np.float32)
    expected = np.argsort(-(queries @ vectors.T), axis=1)[:, :10]
    found = exact_top_k(vectors, queries, 10, threads=1, block=128)
    assert np.array_equal(found, expected)
    assert recall_at_k(found, expected) == 1.0
    assert recall_at_k(found[:, ::-1][:, :5].repeat(2, axis=1), expected) == 0.5


def test_engine_specs_carry_their_own_build_expansion() -> None:
    params = {"connectivity": 16, "expansion_add": 64, "build_threads": 1, "batch_threads": 1}
    engine, own = engine_from_spec("usearch-bf16@efc128", params)
    assert engine.name == "usearch-bf16@efc128"
    assert engine.dtype == "bf16"
    assert own["expansion_add"] == 128
    assert params["expansion_add"] == 64
    with pytest.raises(ValueError, match="efcN"):
        engine_from_spec("usearch-f32@fast", params)


# ---------------------------------------------------------------- results shape


def _encode_row(result: LoadResult) -> dict[str, Any]:
    return make_run(
        scenario="encode",
        stage="encode",
        path="in_process",
        result=result,
        batch=2,
        model="all-MiniLM-L6-v2",
        quantization="int8",
        threads={"ort_intra_op": 1},
    )


def _valid_document() -> dict[str, Any]:
    run = _encode_row(closed_loop_sync(lambda: CallReport(items=2), 10.0, 0.0, max_requests=3))
    return {
        "machine": {"cpu_model": "x", "logical_cores": 2, "flags": [], "versions": {}},
        "runs": [run, {**run, "path": "baseline:faiss-hnsw", "recall@10": 0.97}],
        "targets": [{"status": "PASS"}],
    }


def test_a_conforming_document_validates() -> None:
    document = _valid_document()
    assert validate_results(document) == []
    assert validate_results(json.loads(json.dumps(document))) == []


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda d: d.pop("machine"), "machine is missing"),
        (lambda d: d["runs"][0].pop("latency_ms"), "runs[0].latency_ms is missing"),
        (lambda d: d["runs"][0].update(path="somewhere"), "runs[0].path"),
        (lambda d: d["runs"][0].update(load="open"), "runs[0].rate"),
        (lambda d: d["runs"][0].update(threads={}), "runs[0].threads"),
        (lambda d: d["runs"][1].update({"recall@10": 1.5}), "runs[1].recall@10"),
        (
            lambda d: d["runs"][0]["latency_ms"].update(p50=9.0, p99=1.0),
            "percentiles must not decrease",
        ),
        (lambda d: d["targets"].append({"status": "maybe"}), "targets[1].status"),
        (lambda d: d.update(runs=[]), "runs is empty"),
    ],
)
def test_departures_from_the_shape_are_named(change: Any, message: str) -> None:
    document = copy.deepcopy(_valid_document())
    change(document)
    assert any(message in problem for problem in validate_results(document))


# ---------------------------------------------------------------- scenario files


@pytest.mark.parametrize("quick", [False, True])
def test_every_shipped_scenario_parses_and_names_a_known_handler(quick: bool) -> None:
    scenarios = load_scenarios(quick)
    names = [s.name for s in scenarios]
    assert len(names) == len(set(names))
    assert {s.handler for s in scenarios} <= set(HANDLERS)
    assert {"encode", "grpc_overhead", "batching", "rerank", "search"} <= set(names)
    assert all(s.duration_s > 0 for s in scenarios)


def test_unknown_scenario_names_are_refused() -> None:
    with pytest.raises(ScenarioError, match="nope"):
        load_scenarios(True, ["nope"])


# ---------------------------------------------------------------- end to end


@pytest.fixture(scope="module")
def tiny_index(tmp_path_factory: pytest.TempPathFactory, bi_encoder_dir: Path) -> Path:
    """A real index of a few dozen demo documents (Python's own docs), built once."""
    from neuralir.index.build import IndexBuildSettings, build_index
    from neuralir.index.demo_corpus import build_demo_corpus
    from neuralir.models.encoder import Encoder
    from neuralir.models.session import RuntimeSettings

    root = tmp_path_factory.mktemp("bench-index")
    corpus = build_demo_corpus(root / "corpus", modules=["json", "csv", "argparse"])
    encoder = Encoder(bi_encoder_dir, RuntimeSettings(intra_op_threads=1))
    build_index(corpus, root / "index", encoder, IndexBuildSettings(threads=1), progress=False)
    return root / "index"


@pytest.mark.slow
def test_quick_subset_runs_end_to_end_and_its_results_validate(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    models_dir: Path,
    tiny_index: Path,
) -> None:
    monkeypatch.chdir(tmp_path)  # caches land under tmp_path/artifacts, not the repository's
    out = tmp_path / "out"
    argv = [
        "--quick",
        "--scenario",
        "grpc_overhead",
        "--scenario",
        "index",
        "--no-data",
        "--index-dir",
        str(tiny_index),
        "--models-dir",
        str(models_dir),
        "--out",
        str(out),
    ]
    assert main(argv) == 0
    document = json.loads((out / "results.json").read_text())
    assert validate_results(document) == []
    assert {s["name"] for s in document["scenarios"]} == {"grpc_overhead", "index"}
    assert not any("error" in s for s in document["scenarios"])
    paths = {r["path"] for r in document["runs"]}
    assert {"in_process", "grpc", "grpc_multiprocess"} <= paths
    grpc_rows = [r for r in document["runs"] if r["path"] == "grpc" and r["stage"] == "encode"]
    assert grpc_rows
    assert all(r["server_ms"]["encode"]["p50"] > 0 for r in grpc_rows)
    assert all(r["errors"] == 0 and r["requests"] > 0 for r in document["runs"])
    variants = {r.get("variant") for r in document["runs"] if r["path"] == "in_process"}
    assert {"Encoder.encode in-process", "server batcher in-process (no RPC)"} <= variants
    gap = next(t for t in document["targets"] if t["name"].startswith("gRPC encode"))
    assert gap["status"] in ("PASS", "MISS")
    assert "thread hop" in gap["detail"]
    # The probe servers' rows isolate parts of the cost; they are not served paths with targets.
    probes = {r["variant"] for r in document["runs"] if r["variant"].startswith("probe")}
    assert probes == set(PROBE_VARIANTS.values())
    assert not [t for t in document["targets"] if "probe" in t["name"]]
    report = (out / "report.md").read_text()
    assert document["machine"]["cpu_model"] in report
    assert "## Targets" in report


@pytest.mark.slow
def test_the_whole_quick_suite_is_the_ci_smoke_run(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    models_dir: Path,
    shared_data_if_present: Path | None,
) -> None:
    """`neuralir bench --quick`: every shipped scenario, briefly, from cold caches."""
    monkeypatch.chdir(tmp_path)  # caches and the workload index land under tmp_path
    data = shared_data_if_present
    source = ["--data-dir", str(data)] if data is not None else ["--no-data"]
    out = tmp_path / "out"
    started = time.perf_counter()
    assert main(["--quick", *source, "--models-dir", str(models_dir), "--out", str(out)]) == 0
    wall_s = time.perf_counter() - started
    document = json.loads((out / "results.json").read_text())
    assert validate_results(document) == []
    ran = {s["name"] for s in document["scenarios"]}
    assert ran == {s.name for s in load_scenarios(True)}
    failed = {s["name"]: s["error"] for s in document["scenarios"] if "error" in s}
    assert not failed
    assert {r["scenario"] for r in document["runs"]} == ran  # every scenario produced rows
    assert document["targets"]
    assert all((out / p).is_file() for p in ["report.md", "results.json"])
    assert list(out.glob("*.png"))
    print(f"quick suite: {wall_s:.0f} s")  # the budget is 5 minutes on 2 cores


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["stored", "inline"])
def test_probe_servers_answer_encode_as_their_mode_says(
    tmp_path: Path, bi_encoder_dir: Path, mode: str
) -> None:
    from neuralir.benchmarks.servers import ServerProcess
    from neuralir.client import ClientSettings, NeuralIRClient
    from neuralir.models.encoder import Encoder

    probe = ServerProcess(
        f"probe-{mode}",
        ["--model", str(bi_encoder_dir), "--mode", mode],
        tmp_path,
        "test",
        module_args=["neuralir.benchmarks.probe_server"],
    )
    try:
        probe.wait_port(120)
        probe.wait_ready(60)
        with NeuralIRClient(ClientSettings(target=probe.address, max_attempts=1)) as client:
            texts = ["parse a csv file", "sort a list in place"]
            result = client.encode(texts)
    finally:
        probe.stop()
    encoder = Encoder(bi_encoder_dir)
    assert result.embeddings.shape == (2, encoder.dimension)
    assert result.timing.total_ms > 0
    if mode == "inline":  # the real model on these texts
        np.testing.assert_allclose(result.embeddings, encoder.encode(texts), atol=0.02)
    else:  # one stored vector for every text, whatever it says
        np.testing.assert_array_equal(result.embeddings[0], result.embeddings[1])


# ---------------------------------------------------------------- rerank trade-off table


@pytest.mark.needs_data
@pytest.mark.slow
def test_rerank_tradeoff_tabulates_every_model_precision_and_depth(
    tmp_path: Path, models_dir: Path, shared_data: Path
) -> None:
    """Both shipped rerankers, int8 and fp32, two depths, on 6 ADI queries, through `neuralir
    eval`: one row each, and the first stage's nDCG is the same in every row."""
    from neuralir.benchmarks.rerank_tradeoff import main as tradeoff

    out = tmp_path / "tradeoff"
    argv = ["--dataset", str(shared_data / "adi"), "--split", "test", "--depths", "3", "8"]
    argv += ["--reranker", f"6-layer={models_dir / 'cross-encoder'}"]
    argv += ["--reranker", f"3-layer={models_dir / 'cross-encoder-small'}"]
    argv += ["--models", str(models_dir), "--index-cache", str(tmp_path / "indexes")]
    argv += ["--max-queries", "6", "--out", str(out)]
    assert tradeoff(argv) == 0
    rows = json.loads(out.with_suffix(".json").read_text())["rows"]
    cells = {(r["model"], r["precision"], r["depth"]) for r in rows}
    assert cells == {
        (m, p, d) for m in ("6-layer", "3-layer") for p in ("int8", "fp32") for d in (3, 8)
    }
    assert len({r["first_stage_ndcg@10"] for r in rows}) == 1
    ids = {(r["model"], r["precision"]): r["model_id"] for r in rows}
    assert len(set(ids.values())) == 4  # four different builds were served
    for row in rows:
        assert row["gain"] == pytest.approx(row["ndcg@10"] - row["first_stage_ndcg@10"])
        assert 0 < row["rerank_ms"]["p50"] <= row["rerank_ms"]["p99"]
        assert 0 < row["blend_weight"] <= 1
    table = out.with_suffix(".md").read_text()
    assert table.count("\n| adi test") == len(rows)
