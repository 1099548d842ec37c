"""Readable terminal output for search results."""

from __future__ import annotations

import textwrap

from neuralir.client.types import SearchResult


def _score(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def render_search(query: str, result: SearchResult, width: int = 100) -> str:
    lines = [f"query: {query}"]
    header = f"{'#':>3} {'doc':28} {'final':>7} {'dense':>7} {'bm25':>7} {'fused':>7} {'rerank':>7}"
    lines += [header, "-" * len(header)]
    for hit in result.hits:
        lines.append(
            f"{hit.rank:>3} {hit.doc_id[:28]:28} {hit.score:>7.3f} {_score(hit.dense_score):>7} "
            f"{_score(hit.bm25_score):>7} {_score(hit.fused_score):>7} "
            f"{_score(hit.rerank_score):>7}"
        )
        if hit.title and hit.title != hit.doc_id:
            lines.append(textwrap.shorten("     " + hit.title, width))
    stages = ", ".join(
        f"{t.stage} {t.total_ms:.2f} ms"
        + (
            f" (queue {t.queue_ms:.2f}, model {t.inference_ms:.2f}, batch {t.batch_size})"
            if t.batch_size
            else ""
        )
        for t in result.timings
    )
    lines.append(f"stages (server-side): {stages}")
    return "\n".join(lines)
