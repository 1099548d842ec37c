"""report.md: the machine, the targets as ratios (PASS/MISS), then one table per scenario."""

from __future__ import annotations

from pathlib import Path
from typing import Any

Row = dict[str, Any]

RATIO_NOTE = """\
**Ratios vs absolute figures.** Every target below is a *ratio* (or a difference) between two
measurements of the same run on the same machine, with variants interleaved in time where it
matters: these carry over to other machines reasonably well. Every other figure (ms, req/s,
pairs/s, queries/s, build seconds) is *absolute*: valid only for this machine, this load and
these thread settings. The machine is a shared 2-core VM (see the load averages): expect
run-to-run noise of 10-30% on absolute figures and on p99 in particular.
"""


def _fmt(value: Any, digits: int = 3) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        if value >= 100:
            return f"{value:,.0f}"
        return f"{value:.{digits}f}"
    return str(value)


def _threads(row: Row) -> str:
    return " ".join(f"{k}={v}" for k, v in row["threads"].items())


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(cell.replace("|", "/") for cell in row) + " |" for row in rows]
    return lines


def _load_cell(row: Row) -> str:
    if row["load"] == "closed":
        return f"closed x{row['concurrency']}"
    return f"open {row['rate']:g}/s"


def _errors_cell(row: Row) -> str:
    kinds = row.get("error_kinds") or {}
    text = str(row.get("errors", 0))
    if kinds:
        text += " (" + ", ".join(f"{k} {v}" for k, v in sorted(kinds.items())) + ")"
    return text


def _server_cell(row: Row) -> str:
    server = row.get("server_ms")
    if not server:
        return "-"
    parts = []
    for stage, s in server.items():
        text = f"{stage} {s['p50']:.2f}/{s['p99']:.2f}"
        if s.get("queue_p50", 0) > 0 or s.get("mean_batch", 0) > 1:
            text += f" (q {s['queue_p50']:.2f}, b {s['mean_batch']:.1f})"
        parts.append(text)
    return "; ".join(parts)


def _run_rows(runs: list[Row]) -> list[str]:
    header = [
        "stage",
        "path",
        "variant",
        "load",
        "batch",
        "quant",
        "threads",
        "req",
        "err",
        "req/s",
        "items/s",
        "p50",
        "p90",
        "p99",
        "p99.9",
        "max",
        "server p50/p99 ms",
    ]
    body = []
    for r in runs:
        lat = r["latency_ms"]
        body.append(
            [
                r["stage"],
                r["path"],
                str(r.get("variant", "")),
                _load_cell(r),
                str(r["batch"]),
                r["quantization"],
                _threads(r),
                str(r["requests"]),
                _errors_cell(r),
                _fmt(r["throughput_rps"], 1),
                _fmt(r["items_per_s"], 1),
                *(_fmt(lat[k]) for k in ("p50", "p90", "p99", "p999", "max")),
                _server_cell(r),
            ]
        )
    return _table(header, body)


def _ann_rows(runs: list[Row]) -> list[str]:
    header = [
        "dataset",
        "engine",
        "path",
        "ef",
        "mode",
        "threads",
        "recall@10",
        "queries/s",
        "p50 ms",
        "p99 ms",
        "calls",
    ]
    body = [
        [
            r["dataset"],
            r["engine"],
            r["path"],
            _fmt(r.get("ef")),
            r["query_mode"],
            _threads(r),
            _fmt(r["recall@10"]),
            _fmt(r["items_per_s"], 1),
            _fmt(r["latency_ms"]["p50"]),
            _fmt(r["latency_ms"]["p99"]),
            str(r["requests"]),
        ]
        for r in runs
    ]
    return _table(header, body)


def _builds(builds: list[Row]) -> list[str]:
    header = [
        "dataset",
        "engine",
        "M",
        "efc",
        "threads",
        "build s",
        "vectors/s",
        "memory MB",
        "cached",
        "SIMD (hardware_acceleration)",
    ]
    body = [
        [
            b["dataset"],
            b["engine"],
            str(b["connectivity"]),
            str(b["expansion_add"]),
            str(b["build_threads"]),
            _fmt(b.get("build_s"), 1),
            _fmt(b.get("vectors_per_s"), 0),
            _fmt(b.get("memory_mb"), 1),
            f"yes (built {b.get('built_at', '?')})" if b.get("cached") else "no",
            b.get("hardware", "")[:60] if b["engine"].startswith("usearch") else "-",
        ]
        for b in builds
    ]
    return _table(header, body)


def render_report(document: dict[str, Any], plots: list[Path], out_dir: Path) -> str:
    machine = document["machine"]
    meta = document.get("run", {})
    suite = "quick" if meta.get("quick") else "full"
    lines = [
        "# neural-ir-serve latency benchmarks",
        "",
        f"Run: `{meta.get('command', 'neuralir bench')}` ({suite} suite), "
        f"{machine.get('started_at', '')}, commit {machine.get('git_commit', '?')}, "
        f"wall time {meta.get('wall_s', 0):.0f} s. Workload: {meta.get('workload', '?')}.",
        "",
        "## Machine",
        "",
        f"- CPU: {machine['cpu_model']} (family/model {machine.get('cpu_family_model', '?')}), "
        f"{machine['logical_cores']} logical cores ({machine.get('usable_cores')} usable), "
        f"{'virtual machine' if machine.get('hypervisor') else 'bare metal'}, "
        f"{machine.get('memory_gib')} GiB RAM, {machine.get('os')}, Python {machine.get('python')}",
        f"- SIMD flags: {' '.join(machine['flags']) or 'none of interest'}",
        "- Versions: " + ", ".join(f"{k} {v}" for k, v in machine["versions"].items()),
        f"- Load average (1/5/15 min) at start: {machine.get('load_average_at_start')}; "
        "other work on the machine slows every figure, so the load average before and after "
        "each scenario is listed with it.",
        f"- Server settings: {meta.get('server_settings', '')}",
        "",
        RATIO_NOTE,
        "## Targets",
        "",
    ]
    target_rows = [
        [
            t["name"],
            t["goal"],
            t["measured"],
            _fmt(t["ratio"]),
            f"**{t['status']}**",
            t.get("detail", ""),
        ]
        for t in document.get("targets", [])
    ]
    lines += _table(["target", "goal", "measured", "ratio", "status", "detail"], target_rows)
    lines += ["", *meta.get("analysis", []), ""]
    lines += [
        "## How it measures",
        "",
        "- Timing with `time.perf_counter_ns`; latencies in HDR histograms (`hdrhistogram`, 3 "
        "significant digits); percentiles p50/p90/p99/p99.9 and max per row, in ms, client-side.",
        "- gRPC servers run as separate processes (`neuralir serve all|encoder|index|rerank|search "
        "--port 0 --port-file F`); the load generator is this process's grpc.aio client (no "
        "retries: failures count as errors). Channels are connected and every stage answers "
        "SERVING before timing; each measurement has a warm-up window that is not recorded.",
        "- Closed loop: N callers, each sends when its previous call returns. Open loop: Poisson "
        "arrivals at a fixed rate; latency counts from each request's *intended* send time, so "
        "queueing is never hidden (asyncio's timer adds up to ~1 ms of send lag, counted).",
        "- `server p50/p99 ms` is the server's own StageTiming from the responses (per stage: "
        "total; `q` = batching queue p50, `b` = mean batch size) beside the client-side latency.",
        "- Every row names its thread pools (ONNX Runtime intra-op, torch, FAISS OpenMP, usearch, "
        "BLAS); `client_event_loop=1` is the load generator's single asyncio thread.",
        "",
    ]
    builds_all: list[Row] = []
    for scenario in document.get("scenarios", []):
        name = scenario["name"]
        runs = [r for r in document["runs"] if r["scenario"] == name]
        lines += [
            f"## {scenario.get('title', name)} (`{name}`)",
            "",
            f"Wall time {scenario.get('wall_s', 0):.0f} s; load average before "
            f"{scenario.get('load_average_before')} / after {scenario.get('load_average_after')}.",
            "",
        ]
        if scenario.get("error"):
            lines += [f"**FAILED:** `{scenario['error']}`", ""]
        lines += [f"- {note}" for note in scenario.get("notes", [])]
        if scenario.get("notes"):
            lines.append("")
        ann = [r for r in runs if "query_mode" in r]
        other = [r for r in runs if "query_mode" not in r]
        if other:
            lines += [*_run_rows(other), ""]
        if ann:
            lines += [*_ann_rows(ann), ""]
        builds = scenario.get("extra", {}).get("builds", [])
        if builds:
            builds_all += builds
            lines += ["Index builds:", "", *_builds(builds), ""]
        for key, text in sorted(scenario.get("extra", {}).items()):
            if key.endswith("_markdown") and isinstance(text, str):  # a handler's own tables
                # Its headings go two levels down, under this scenario's.
                lines += [
                    ("##" + ln if ln.startswith("#") else ln) for ln in text.strip().split("\n")
                ]
                lines.append("")
        overhead = scenario.get("extra", {}).get("call_overhead_us")
        if overhead:
            lines += [
                "Per-call cost of a single-query search on a tiny index (2,000 vectors, ef 16), "
                "p50 us: " + ", ".join(f"{k} {v}" for k, v in overhead.items()),
                "",
            ]
    if plots:
        lines += ["## Plots", ""]
        lines += [f"![{p.stem}]({p.relative_to(out_dir).as_posix()})" for p in plots]
        lines.append("")
    return "\n".join(lines)
