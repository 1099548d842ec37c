"""The results.json shape: one row per measurement, plus the machine it ran on.

    {"machine": {cpu_model, logical_cores, flags, versions, ...},
     "scenarios": [{name, title, wall_s, load_average_before, load_average_after, notes}],
     "targets": [{name, goal, measured, ratio, threshold, status, detail}],
     "runs": [{"scenario", "stage", "path", "load", "concurrency" | "rate", "batch", "model",
               "quantization", "threads", "requests", "throughput_rps", "items_per_s",
               "latency_ms": {"p50", "p90", "p99", "p999", "max"}, "recall@10"?, ...}]}

`path` is "in_process", "grpc" (serve all), "grpc_loopback" (serve all, its stages called over
loopback gRPC), "grpc_multiprocess" or "baseline:NAME"; a gRPC path ending "@base" ran another
build of the code (the run's --baseline-code, e.g. main before a change). Latencies are
client-side milliseconds; `server_ms` holds the server's own StageTiming per stage.
`validate_results` checks a document against this shape (CI runs it on the quick suite).
"""

from __future__ import annotations

import itertools
import math
from typing import Any

from neuralir.benchmarks.loadgen import LoadResult

PATHS = ("in_process", "grpc", "grpc_loopback", "grpc_multiprocess")
BASE_SUFFIX = "@base"
LOADS = ("closed", "open")
PERCENTILE_KEYS = ("p50", "p90", "p99", "p999", "max")
RUN_KEYS = (
    "scenario",
    "stage",
    "path",
    "load",
    "batch",
    "model",
    "quantization",
    "threads",
    "requests",
    "throughput_rps",
    "items_per_s",
    "latency_ms",
)
MACHINE_KEYS = ("cpu_model", "logical_cores", "flags", "versions")
TARGET_STATUSES = ("PASS", "MISS", "N/A")


def make_run(
    *,
    scenario: str,
    stage: str,
    path: str,
    result: LoadResult,
    batch: int,
    model: str,
    quantization: str,
    threads: dict[str, int],
    **extra: Any,
) -> dict[str, Any]:
    """One results row from a measured LoadResult; `extra` adds scenario-specific fields."""
    row: dict[str, Any] = {
        "scenario": scenario,
        "stage": stage,
        "path": path,
        "load": result.load,
    }
    if result.load == "closed":
        row["concurrency"] = result.concurrency
    else:
        row["rate"] = round(float(result.rate or 0.0), 2)
    row.update(
        {
            "batch": batch,
            "model": model,
            "quantization": quantization,
            "threads": dict(threads),
            "requests": result.requests,
            "errors": result.errors,
            **({"error_kinds": dict(result.error_kinds)} if result.error_kinds else {}),
            **({"error_examples": dict(result.error_examples)} if result.error_examples else {}),
            "elapsed_s": round(result.elapsed_s, 3),
            "throughput_rps": round(result.throughput_rps, 2),
            "items_per_s": round(result.items_per_s, 2),
            "latency_ms": result.latency.summary(),
        }
    )
    if len(result.rounds()) > 1:  # interleaved rounds: their spread shows the machine's noise
        row["rounds_items_per_s"] = [round(r, 1) for r in result.rounds()]
    if result.load == "open":
        row["service_ms"] = result.service.summary()
        row["send_lag_ms"] = result.send_lag.summary()
    server = result.server_summary()
    if server:
        row["server_ms"] = server
    row.update(extra)
    return row


def ann_qps(row: dict[str, Any]) -> float:
    """An ANN row's queries/s: 1 / p50 latency for single queries (robust to preemption on
    a shared machine), completed queries per second for batched calls."""
    return float(row.get("qps_p50") or row["items_per_s"])


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _check_run(index: int, run: Any) -> list[str]:
    where = f"runs[{index}]"
    if not isinstance(run, dict):
        return [f"{where} is not an object"]
    errors = [f"{where}.{k} is missing" for k in RUN_KEYS if k not in run]
    if errors:
        return errors
    path = run["path"]
    if not isinstance(path, str) or not (
        path.removesuffix(BASE_SUFFIX) in PATHS or path.startswith("baseline:")
    ):
        errors.append(f"{where}.path {path!r} is not one of {PATHS} or baseline:NAME")
    if run["load"] not in LOADS:
        errors.append(f"{where}.load {run['load']!r} is not one of {LOADS}")
    elif run["load"] == "closed":
        conc = run.get("concurrency")
        if not isinstance(conc, int) or conc < 1:
            errors.append(f"{where}.concurrency must be a positive integer for a closed loop")
    elif not _number(run.get("rate")) or run["rate"] <= 0:
        errors.append(f"{where}.rate must be a positive number for an open loop")
    for key in ("scenario", "stage", "model", "quantization"):
        if not isinstance(run[key], str) or not run[key]:
            errors.append(f"{where}.{key} must be a non-empty string")
    if not isinstance(run["batch"], int) or run["batch"] < 1:
        errors.append(f"{where}.batch must be a positive integer")
    threads = run["threads"]
    if not isinstance(threads, dict) or not threads:
        errors.append(f"{where}.threads must be a non-empty object of pool -> count")
    elif not all(isinstance(v, int) and v >= 1 for v in threads.values()):
        errors.append(f"{where}.threads values must be positive integers")
    if not isinstance(run["requests"], int) or run["requests"] < 0:
        errors.append(f"{where}.requests must be a non-negative integer")
    for key in ("throughput_rps", "items_per_s"):
        if not _number(run[key]) or run[key] < 0:
            errors.append(f"{where}.{key} must be a non-negative number")
    latency = run["latency_ms"]
    if not isinstance(latency, dict) or any(k not in latency for k in PERCENTILE_KEYS):
        errors.append(f"{where}.latency_ms must hold {', '.join(PERCENTILE_KEYS)}")
    elif not all(_number(latency[k]) and latency[k] >= 0 for k in PERCENTILE_KEYS):
        errors.append(f"{where}.latency_ms values must be non-negative numbers")
    elif any(latency[a] > latency[b] for a, b in itertools.pairwise(PERCENTILE_KEYS)):
        errors.append(f"{where}.latency_ms percentiles must not decrease (p50 <= ... <= max)")
    if "recall@10" in run and (not _number(run["recall@10"]) or not 0 <= run["recall@10"] <= 1):
        errors.append(f"{where}.recall@10 must be a number in [0, 1]")
    return errors


def validate_results(document: Any) -> list[str]:
    """Every way `document` departs from the documented shape; [] when it conforms."""
    if not isinstance(document, dict):
        return ["the document is not a JSON object"]
    errors: list[str] = []
    machine = document.get("machine")
    if not isinstance(machine, dict):
        errors.append("machine is missing or not an object")
    else:
        errors += [f"machine.{k} is missing" for k in MACHINE_KEYS if k not in machine]
    runs = document.get("runs")
    if not isinstance(runs, list):
        return [*errors, "runs is missing or not a list"]
    if not runs:
        errors.append("runs is empty")
    for index, run in enumerate(runs):
        errors += _check_run(index, run)
    for index, target in enumerate(document.get("targets", [])):
        if not isinstance(target, dict) or target.get("status") not in TARGET_STATUSES:
            errors.append(f"targets[{index}].status must be one of {TARGET_STATUSES}")
    return errors
