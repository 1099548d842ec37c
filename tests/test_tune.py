"""The tuning tool's cascade and recommendation rules on hand-made score lists."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from neuralir.eval.datasets import Dataset
from neuralir.eval.tune import Collection, cascade_rows, recommend

DOCS = ["d1", "d2", "d3", "d4"]


def _collection() -> Collection:
    # One query; d4 is the only relevant document and BM25 ranks it last.
    dataset = Dataset(
        "toy", Path("."), "test", Path("c"), "0", 4, Path("q"), {"q1": "query"}, {"q1": {"d4": 1}}
    )
    bm25 = {"q1": [(d, float(4 - i)) for i, d in enumerate(DOCS)]}
    return Collection("toy:test", dataset, bm25, bm25, {d: d for d in DOCS})


def _row(model: str, depth: int, score: float, weights: dict[str, float]) -> dict[str, Any]:
    return {
        "model": model,
        "stage": "lexical",
        "length": 160,
        "depth": depth,
        "weights": weights,
        "toy:test": score,
        "ms": depth * (1.0 if model == "small" else 3.0),
    }


def test_a_cascade_reranks_the_small_models_top_n_then_the_defaults_top_m() -> None:
    c = _collection()
    firsts = {c.label: {"lexical": c.bm25, "dense": c.dense, "hybrid": c.bm25}}
    # The small model lifts d4 into its top 2; the default then puts it first.
    small = {"q1": {"d1": 0.0, "d2": 0.1, "d3": -1.0, "d4": 5.0}}
    default = {"q1": {"d1": 0.0, "d2": -1.0, "d3": 0.0, "d4": 3.0}}
    logits = {("small", 160, c.label): small, ("default", 160, c.label): default}
    ce_only = {"cross_encoder": 1.0, "bm25": 0.0}
    chosen = {
        "small/lexical/160/4": _row("small", 4, 0.0, ce_only),
        "default/lexical/160/2": _row("default", 2, 0.0, ce_only),
        "default/lexical/160/4": _row("default", 4, 0.0, ce_only),
    }
    costs = {"small": {"160": 1.0}, "default": {"160": 3.0}}
    rows = cascade_rows([c], firsts, logits, chosen, costs)
    # M < N only: small@4 then default@2 (default@4 is not a cascade of small@4).
    assert [(r["model"], r["stage"]) for r in rows] == [("small@4:default@2", "lexical")]
    assert rows[0]["toy:test"] == 1.0  # d4 first: ideal nDCG
    assert rows[0]["ms"] == 4 * 1.0 + 2 * 3.0


def test_recommend_picks_the_cheapest_pipeline_that_loses_nowhere() -> None:
    c = _collection()
    reference = _row("default", 20, 0.70, {"cross_encoder": 0.5, "bm25": 0.5})
    cheap_but_worse = _row("small", 10, 0.60, {"cross_encoder": 0.5, "bm25": 0.5})
    cheap_and_good = _row("small", 20, 0.71, {"cross_encoder": 0.7, "bm25": 0.3})
    best = _row("default", 30, 0.80, {"cross_encoder": 0.7, "bm25": 0.3})
    chosen = {str(i): r for i, r in enumerate([cheap_but_worse, cheap_and_good, best])}
    picks = recommend(
        [c], [reference, *chosen.values()], chosen, [], {(c.label, "lexical"): 0.65}, 0.005
    )
    assert picks["reference"]["depth"] == 20
    assert picks["reference"]["model"] == "default"
    assert (picks["cheapest"]["model"], picks["cheapest"]["depth"]) == ("small", 20)
    assert picks["best"]["mean"] == 0.80
    # Without the reference row there is nothing to compare with: no recommendation.
    assert recommend([c], list(chosen.values()), chosen, [], {}, 0.005) == {}
