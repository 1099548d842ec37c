"""`neuralir bench [--scenario NAME ...] [--quick] --out DIR`: runs the scenarios declared in
benchmarks/scenarios/*.toml and writes DIR/results.json, DIR/report.md and PNG plots."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

from neuralir.benchmarks import (
    analysis,
    bench_ann,
    bench_encode,
    bench_grpc,
    bench_index,
    bench_rerank,
    bench_rerank_pipelines,
    bench_search,
    multihost,
)
from neuralir.benchmarks.context import BenchContext, ScenarioOutput
from neuralir.benchmarks.machine import load_average, machine_info
from neuralir.benchmarks.plots import make_plots
from neuralir.benchmarks.records import validate_results
from neuralir.benchmarks.report import render_report
from neuralir.benchmarks.scenario import Scenario, ScenarioError, load_scenarios
from neuralir.benchmarks.targets import compute_targets

Handler = Callable[[Scenario, BenchContext], ScenarioOutput]
HANDLERS: dict[str, Handler] = {
    "encode": bench_encode.run,
    "grpc_overhead": bench_grpc.run_overhead,
    "batching": bench_grpc.run_batching,
    "index": bench_index.run,
    "rerank": bench_rerank.run,
    "rerank_pipelines": bench_rerank_pipelines.run,
    "search": bench_search.run,
    "ann": bench_ann.run,
    "multihost": multihost.run_scenario,
}
# Scenarios that use no server: the running servers are stopped first to free CPU and memory.
SERVERLESS = frozenset({"encode", "ann", "multihost", "rerank_pipelines"})


def _default_data_dir() -> Path | None:
    value = os.environ.get("NEURALIR_DATA_DIR")
    path = Path(value) if value else Path.cwd().parent / "shared" / "data"
    return path if path.is_dir() else None


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="neuralir bench", description=__doc__)
    parser.add_argument("--scenario", action="append", metavar="NAME", help="repeatable")
    parser.add_argument("--quick", action="store_true", help="every scenario briefly (CI smoke)")
    parser.add_argument("--out", type=Path, help="output directory (required unless --list)")
    parser.add_argument("--list", action="store_true", help="list the scenarios and exit")
    parser.add_argument(
        "--render",
        type=Path,
        metavar="DIR",
        help="only re-render DIR/report.md and plots from DIR/results.json",
    )
    parser.add_argument(
        "--models-dir",
        type=Path,
        default=Path(os.environ.get("NEURALIR_MODELS_DIR", "artifacts/models")),
    )
    parser.add_argument(
        "--data-dir",
        type=Path,
        default=None,
        help="BEIR collections (default ../shared/data); without scifact the demo corpus is used",
    )
    parser.add_argument("--no-data", action="store_true", help="use the demo corpus")
    parser.add_argument(
        "--index-dir", type=Path, help="use this built index instead of building bench-<name>"
    )
    parser.add_argument(
        "--baseline-code",
        type=Path,
        metavar="DIR",
        help="also measure the deployments of another build, side by side in this run: DIR is "
        "put first on the servers' PYTHONPATH and must hold a `neuralir` package (e.g. a link "
        "tree of main before a change; see benchmarks/README.md)",
    )
    return parser


def _write_json(path: Path, document: dict[str, Any]) -> None:
    tmp = path.with_suffix(".json.tmp")
    # One run per line: small enough to commit, still readable in a diff.
    text = json.dumps(document, separators=(",", ":"))
    tmp.write_text(text.replace(',{"scenario":', ',\n{"scenario":') + "\n")
    tmp.replace(path)


def _run_scenario(scenario: Scenario, ctx: BenchContext) -> tuple[dict[str, Any], ScenarioOutput]:
    if scenario.handler in SERVERLESS:
        ctx.stop_servers()
    entry: dict[str, Any] = {
        "name": scenario.name,
        "title": scenario.title,
        "handler": scenario.handler,
        "warmup_s": scenario.warmup_s,
        "duration_s": scenario.duration_s,
        "params": scenario.params,
        "load_average_before": load_average(),
    }
    ctx.progress(f"scenario {scenario.name}: {scenario.title}")
    start = time.perf_counter()
    try:
        output = HANDLERS[scenario.handler](scenario, ctx)
    except Exception as exc:
        ctx.progress(f"scenario {scenario.name} FAILED:\n{traceback.format_exc()}")
        entry["error"] = f"{type(exc).__name__}: {exc}"[:2000]
        output = ScenarioOutput()
    entry["wall_s"] = round(time.perf_counter() - start, 1)
    entry["load_average_after"] = load_average()
    entry["notes"] = output.notes
    entry["extra"] = output.extra
    ctx.progress(f"scenario {scenario.name}: {len(output.runs)} rows in {entry['wall_s']} s")
    return entry, output


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    # Every model here is local (built artifacts, packaged weights): never wait on a hub.
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    logging.getLogger().setLevel(logging.WARNING)  # progress lines go to stderr instead
    try:
        scenarios = load_scenarios(args.quick, args.scenario)
    except ScenarioError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.render is not None:
        return render(args.render)
    if args.list:
        for s in load_scenarios(args.quick):
            print(f"{s.name:16s} {s.title}")
        return 0
    if args.out is None:
        print("error: --out DIR is required", file=sys.stderr)
        return 2
    for handler in {s.handler for s in scenarios} - set(HANDLERS):
        print(f"error: no handler {handler!r} (known: {', '.join(HANDLERS)})", file=sys.stderr)
        return 2
    # Absolute: handlers hand paths to server processes that run in other directories.
    out_dir: Path = args.out.absolute()
    out_dir.mkdir(parents=True, exist_ok=True)
    repo = Path.cwd()
    data_dir = None if args.no_data else (args.data_dir or _default_data_dir())
    started = time.perf_counter()
    document: dict[str, Any] = {
        "machine": machine_info(repo),
        "run": {
            "command": " ".join(["neuralir bench", *(argv if argv is not None else sys.argv[1:])]),
            "quick": args.quick,
        },
        "scenarios": [],
        "targets": [],
        "runs": [],
    }
    failed = False
    with tempfile.TemporaryDirectory(prefix="neuralir-bench-") as work:
        ctx = BenchContext(
            repo=repo,
            out_dir=out_dir,
            work_dir=Path(work),
            quick=args.quick,
            models_dir=args.models_dir.absolute(),
            data_dir=data_dir,
            index_override=args.index_dir.absolute() if args.index_dir else None,
            baseline_code=args.baseline_code.absolute() if args.baseline_code else None,
        )
        try:
            for scenario in scenarios:
                entry, output = _run_scenario(scenario, ctx)
                failed |= "error" in entry
                document["scenarios"].append(entry)
                document["runs"].extend(output.runs)
                _write_json(out_dir / "results.json", document)  # partial results survive a crash
            if ctx._workload is not None:
                document["run"]["workload"] = (
                    f"{ctx.workload.name} ({ctx.workload.store.info.size:,} documents, "
                    f"{len(ctx.workload.queries)} queries; index {ctx.workload.index_dir})"
                )
            if ctx._pool is not None:
                base = ctx.pool.base
                document["run"]["server_settings"] = (
                    f"threads {base.threads()}, encoder batching max 64 items / max wait "
                    f"{base.encoder_max_wait_us} us (server defaults), rerank batching max 128 "
                    "pairs / 1000 us; int8 models from artifacts/models"
                )
        finally:
            ctx.close()
    document["run"]["wall_s"] = round(time.perf_counter() - started, 1)
    problems = _finish(document, out_dir)
    return 1 if failed or problems else 0


def _finish(document: dict[str, Any], out_dir: Path) -> list[str]:
    """Targets, findings, plots and report from the measured rows; returns shape problems."""
    document["targets"] = compute_targets(document["runs"])
    document["run"]["analysis"] = analysis.explain(document)
    for old in out_dir.glob("*.png"):  # plots of a previous rendering
        old.unlink()
    plots = make_plots(document["runs"], out_dir)
    document["run"]["plots"] = [p.name for p in plots]
    _write_json(out_dir / "results.json", document)
    (out_dir / "report.md").write_text(render_report(document, plots, out_dir))
    problems = validate_results(document)
    for problem in problems:
        print(f"results.json: {problem}", file=sys.stderr)
    print(f"wrote {out_dir / 'results.json'}, {out_dir / 'report.md'} and {len(plots)} plots")
    return problems


def render(out_dir: Path) -> int:
    """Re-renders targets, findings, plots and report.md from DIR/results.json (no measuring)."""
    document = json.loads((out_dir / "results.json").read_text())
    document["run"]["rendered_from_results_json"] = True
    return 1 if _finish(document, out_dir) else 0
