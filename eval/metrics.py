"""Ranking metrics (ranx, trec_eval-compatible) and latency summaries (HDR histograms)."""

from __future__ import annotations

import warnings
from collections.abc import Sequence

RECALL_DEPTH = 100


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
