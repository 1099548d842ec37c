"""PNG plots: latency percentiles vs load per stage, throughput vs batch or depth, and recall
vs queries/s for ANN. Small figures (they are committed with the report)."""

from __future__ import annotations

import io
from collections import defaultdict
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import matplotlib

from neuralir.benchmarks.records import ann_qps

matplotlib.use("Agg")  # no display; must precede pyplot
import matplotlib.pyplot as plt

Row = dict[str, Any]
FIGSIZE = (7.5, 4.2)
DPI = 85


def _series(rows: Iterable[Row]) -> dict[str, list[Row]]:
    groups: dict[str, list[Row]] = defaultdict(list)
    for row in rows:
        groups[f"{row['path']}: {row.get('variant', '')}"].append(row)
    return groups


def _save(fig: Any, path: Path) -> Path:
    """A 64-colour palette PNG: line plots lose nothing visible and shrink ~4x (committed)."""
    from PIL import Image  # matplotlib's own dependency

    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=DPI)
    plt.close(fig)
    buffer.seek(0)
    Image.open(buffer).convert("RGB").quantize(colors=64).save(path, optimize=True)
    return path


def _slug(text: str) -> str:
    return "".join(c if c.isalnum() else "-" for c in text).strip("-").lower()


def latency_vs_load(runs: list[Row], out_dir: Path) -> list[Path]:
    """One figure per (scenario, stage) that was swept over callers or over arrival rates."""
    made = []
    keys = sorted({(r["scenario"], r["stage"], r["load"]) for r in runs})
    for scenario, stage, load in keys:
        rows = [
            r for r in runs if (r["scenario"], r["stage"], r["load"]) == (scenario, stage, load)
        ]
        x_key = "concurrency" if load == "closed" else "rate"
        groups = {
            name: sorted(group, key=lambda r: r[x_key])
            for name, group in _series(rows).items()
            if len({r[x_key] for r in group}) > 1
        }
        if not groups:
            continue
        fig, (ax_lat, ax_tp) = plt.subplots(1, 2, figsize=(FIGSIZE[0] * 1.4, FIGSIZE[1]))
        for i, (name, group) in enumerate(sorted(groups.items())):
            colour = f"C{i % 10}"
            xs = [r[x_key] for r in group]
            ax_lat.plot(
                xs,
                [r["latency_ms"]["p50"] for r in group],
                "-o",
                color=colour,
                label=f"{name} p50",
                markersize=3,
            )
            ax_lat.plot(
                xs,
                [r["latency_ms"]["p99"] for r in group],
                "--^",
                color=colour,
                label=f"{name} p99",
                markersize=3,
            )
            ax_tp.plot(
                xs,
                [r["throughput_rps"] for r in group],
                "-o",
                color=colour,
                label=name,
                markersize=3,
            )
        xlabel = (
            "concurrent callers (closed loop)"
            if load == "closed"
            else "offered rate, req/s (open loop, Poisson)"
        )
        for ax in (ax_lat, ax_tp):
            ax.set_xlabel(xlabel)
            ax.grid(True, alpha=0.3)
            if load == "closed":
                ax.set_xscale("log", base=2)
        ax_lat.set_yscale("log")
        ax_lat.set_ylabel(
            "client latency, ms" + (" (from intended send)" if load == "open" else "")
        )
        ax_tp.set_ylabel("completed requests/s")
        ax_lat.legend(fontsize=6)
        ax_tp.legend(fontsize=6)
        fig.suptitle(
            f"{scenario} / {stage}: latency and throughput vs load ({load} loop)", fontsize=9
        )
        made.append(_save(fig, out_dir / f"latency-vs-{load}-{_slug(scenario)}-{_slug(stage)}.png"))
    return made


def throughput_vs_size(
    runs: list[Row], scenario: str, x_key: str, xlabel: str, out_dir: Path, name: str
) -> list[Path]:
    """Items/s vs batch (encode) or depth (rerank), one line per variant and thread setting."""
    rows = [
        r
        for r in runs
        if r["scenario"] == scenario and r["stage"] == scenario and r["path"] != "grpc"
    ]
    if not rows:
        return []
    groups: dict[str, list[Row]] = defaultdict(list)
    for row in rows:
        threads = ",".join(f"{k}={v}" for k, v in row["threads"].items())
        groups[f"{row.get('variant', row['path'])} ({threads})"].append(row)
    fig, (ax_tp, ax_lat) = plt.subplots(1, 2, figsize=(FIGSIZE[0] * 1.4, FIGSIZE[1]))
    for i, (label, group) in enumerate(sorted(groups.items())):
        group.sort(key=lambda r: r[x_key])
        xs = [r[x_key] for r in group]
        ax_tp.plot(
            xs,
            [r["items_per_s"] for r in group],
            "-o",
            color=f"C{i % 10}",
            label=label,
            markersize=3,
        )
        ax_lat.plot(
            xs,
            [r["latency_ms"]["p50"] for r in group],
            "-o",
            color=f"C{i % 10}",
            label=label,
            markersize=3,
        )
    ax_tp.set_ylabel("items/s")
    ax_lat.set_ylabel("latency p50 per call, ms")
    for ax in (ax_tp, ax_lat):
        ax.set_xlabel(xlabel)
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=6)
    fig.suptitle(f"{scenario}: in-process throughput and latency", fontsize=9)
    return [_save(fig, out_dir / f"{name}.png")]


def ann_recall_vs_qps(runs: list[Row], out_dir: Path) -> list[Path]:
    rows = [r for r in runs if r["stage"] == "ann" and "query_mode" in r]
    made = []
    for dataset in sorted({r["dataset"] for r in rows}):
        fig, axes = plt.subplots(1, 2, figsize=(FIGSIZE[0] * 1.4, FIGSIZE[1]))
        for ax, mode in zip(axes, ("single", "batch"), strict=True):
            subset = [r for r in rows if r["dataset"] == dataset and r["query_mode"] == mode]
            for i, engine in enumerate(sorted({r["engine"] for r in subset})):
                group = sorted(
                    (r for r in subset if r["engine"] == engine), key=lambda r: r["ef"] or 0
                )
                ax.plot(
                    [r["recall@10"] for r in group],
                    [ann_qps(r) for r in group],
                    "-o" if len(group) > 1 else "s",
                    color=f"C{i % 10}",
                    label=engine,
                    markersize=4,
                )
                for r in group:
                    if r["ef"]:
                        ax.annotate(
                            str(r["ef"]),
                            (r["recall@10"], ann_qps(r)),
                            fontsize=5,
                            xytext=(2, 2),
                            textcoords="offset points",
                        )
            hnsw = [r for r in subset if r["engine"] != "exact-numpy"]
            threads = hnsw[0]["threads"] if hnsw else {}
            ax.axvline(0.95, color="grey", linestyle=":", linewidth=1)
            ax.set_yscale("log")
            ax.set_xlabel("recall@10 vs exact")
            ax.set_ylabel("queries/s (1 / p50)" if mode == "single" else "queries/s")
            ax.set_title(
                f"{mode} queries ({', '.join(f'{k}={v}' for k, v in threads.items())} for HNSW)",
                fontsize=8,
            )
            ax.grid(True, alpha=0.3)
            ax.legend(fontsize=6)
        fig.suptitle(f"ANN recall vs queries/s: {dataset} (labels: ef)", fontsize=9)
        made.append(_save(fig, out_dir / f"ann-recall-vs-qps-{_slug(dataset)}.png"))
    return made


def ann_cost_vs_size(runs: list[Row], out_dir: Path) -> list[Path]:
    """Best single-query queries/s at recall@10 >= 0.95 (exact: its only setting) vs size."""
    rows = [
        r
        for r in runs
        if r["stage"] == "ann"
        and r.get("query_mode") == "single"
        and r["dataset"].startswith("synthetic")
    ]
    sizes = sorted({r["n_vectors"] for r in rows})
    if len(sizes) < 2:
        return []
    fig, ax = plt.subplots(figsize=FIGSIZE)
    for i, engine in enumerate(sorted({r["engine"] for r in rows})):
        points = []
        for size in sizes:
            good = [
                r
                for r in rows
                if r["engine"] == engine and r["n_vectors"] == size and r["recall@10"] >= 0.95
            ]
            if good:
                points.append((size, max(ann_qps(r) for r in good)))
        if points:
            ax.plot(
                *zip(*points, strict=True), "-o", color=f"C{i % 10}", label=engine, markersize=4
            )
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("vectors in the index (384 dims)")
    ax.set_ylabel("single queries/s (1 / p50) at recall@10 >= 0.95")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=7)
    ax.set_title("Search cost vs index size (1 thread, best ef reaching recall 0.95)", fontsize=9)
    return [_save(fig, out_dir / "ann-cost-vs-size.png")]


def make_plots(runs: list[Row], out_dir: Path) -> list[Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    made = latency_vs_load(runs, out_dir)
    made += throughput_vs_size(
        runs, "encode", "batch", "queries per call (batch)", out_dir, "encode-throughput-vs-batch"
    )
    made += throughput_vs_size(
        runs, "rerank", "batch", "passages per query (depth)", out_dir, "rerank-throughput-vs-depth"
    )
    made += ann_recall_vs_qps(runs, out_dir)
    made += ann_cost_vs_size(runs, out_dir)
    return made
