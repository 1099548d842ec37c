"""An evaluation report as a text table or a Markdown table."""

from __future__ import annotations

from typing import Any

from neuralir.eval.metrics import RECALL_DEPTH


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
