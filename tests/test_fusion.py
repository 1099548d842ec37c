"""Fusion and blending functions (models/ranking.py) on score lists worked out by hand."""

from __future__ import annotations

import numpy as np
import pytest

from neuralir.models.ranking import (
    CROSS_ENCODER,
    blend_signals,
    convex_fusion,
    min_max,
    signal_weights,
    standardize,
)

DENSE = [("a", 1.0), ("b", 0.75), ("c", 0.5)]  # binary fractions: exact ties
BM25 = [("c", 12.0), ("d", 8.0), ("a", 4.0)]


def test_min_max_maps_onto_the_unit_interval() -> None:
    np.testing.assert_allclose(min_max(np.array([2.0, 4.0, 3.0])), [0.0, 1.0, 0.5])
    # A constant list carries no order: every member is at the top.
    np.testing.assert_array_equal(min_max(np.array([7.0, 7.0])), [1.0, 1.0])
    assert min_max(np.array([])).shape == (0,)


def test_convex_fusion_by_hand() -> None:
    # min-max: dense a 1, b 0.5, c 0; BM25 c 1, d 0.5, a 0. Missing: b from BM25 and d from
    # dense take that list's floor, 0.
    fused = dict(convex_fusion(DENSE, BM25, 0.5))
    assert fused == pytest.approx({"a": 0.5, "b": 0.25, "c": 0.5, "d": 0.25})
    ranked = convex_fusion(DENSE, BM25, 0.8)
    assert [d for d, _ in ranked] == ["a", "b", "c", "d"]
    assert dict(ranked)["c"] == pytest.approx(0.2)
    assert dict(ranked)["d"] == pytest.approx(0.1)


def test_convex_fusion_ties_keep_first_appearance_dense_first() -> None:
    # a and c tie at 0.5, b and d at 0.25: dense's a before c, b before BM25's d.
    assert [d for d, _ in convex_fusion(DENSE, BM25, 0.5)] == ["a", "c", "b", "d"]


def test_convex_fusion_weight_one_is_the_dense_order_then_the_rest() -> None:
    assert [d for d, _ in convex_fusion(DENSE, BM25, 1.0)] == ["a", "b", "c", "d"]
    assert [d for d, _ in convex_fusion(DENSE, BM25, 0.0)] == ["c", "d", "a", "b"]


def test_convex_fusion_with_one_empty_list_is_the_other_list() -> None:
    assert [d for d, _ in convex_fusion(DENSE, [], 0.3)] == ["a", "b", "c"]
    assert dict(convex_fusion([], BM25, 0.3)) == pytest.approx({"c": 0.7, "d": 0.35, "a": 0.0})
    assert convex_fusion([], [], 0.5) == []


def test_convex_fusion_zscore_floor_is_the_lowest_z() -> None:
    fused = dict(convex_fusion(DENSE, BM25, 0.5, "zscore"))
    z_dense = dict(zip("abc", standardize(np.array([1.0, 0.75, 0.5])), strict=True))
    z_bm25 = dict(zip("cda", standardize(np.array([12.0, 8.0, 4.0])), strict=True))
    assert fused["b"] == pytest.approx(0.5 * z_dense["b"] + 0.5 * min(z_bm25.values()))
    assert fused["d"] == pytest.approx(0.5 * min(z_dense.values()) + 0.5 * z_bm25["d"])


@pytest.mark.parametrize("weight", [-0.1, 1.5, float("nan"), float("inf")])
def test_convex_fusion_refuses_weights_outside_the_unit_interval(weight: float) -> None:
    with pytest.raises(ValueError, match=r"in \[0, 1\]"):
        convex_fusion(DENSE, BM25, weight)


def test_unknown_normalization_is_refused() -> None:
    with pytest.raises(ValueError, match="normalization"):
        convex_fusion(DENSE, BM25, 0.5, "rank")  # type: ignore[arg-type]


def test_blend_signals_by_hand_with_a_missing_signal() -> None:
    cross = np.array([1.0, 3.0, 2.0])
    bm25 = np.array([10.0, np.nan, 30.0])  # the second candidate was found by dense only
    dense = np.array([0.2, 0.4, 0.3])
    weights = {CROSS_ENCODER: 0.5, "bm25": 0.3, "dense": 0.2}
    blended = blend_signals(cross, {"bm25": bm25, "dense": dense}, weights)
    z_bm25_known = standardize(np.array([10.0, 30.0]))  # [-1, 1]; the missing one: the floor
    expected = (
        0.5 * standardize(cross)
        + 0.3 * np.array([z_bm25_known[0], z_bm25_known.min(), z_bm25_known[1]])
        + 0.2 * standardize(dense)
    )
    np.testing.assert_allclose(blended, expected)


def test_blend_signals_without_weights_for_a_signal_ignores_it() -> None:
    cross = np.array([1.0, 2.0])
    only_ce = blend_signals(cross, {"bm25": np.array([5.0, 1.0])}, {CROSS_ENCODER: 1.0})
    np.testing.assert_allclose(only_ce, standardize(cross))


def test_signal_weights_from_a_recipe_a_fallback_and_a_callers_weight() -> None:
    # No recommendation for the set: the fallback cross-encoder weight, the rest shared.
    assert signal_weights({}, 0.4, ("bm25",)) == {CROSS_ENCODER: 0.4, "bm25": 0.6}
    assert signal_weights({}, 0.4, ("bm25", "dense")) == pytest.approx(
        {CROSS_ENCODER: 0.4, "bm25": 0.3, "dense": 0.3}
    )
    assert signal_weights({}, 0.4, ("bm25", "dense"), 0.8) == pytest.approx(
        {CROSS_ENCODER: 0.8, "bm25": 0.1, "dense": 0.1}
    )
    # A recommendation keeps its proportions under a caller's weight.
    recipe = {"bm25+dense": {CROSS_ENCODER: 0.5, "bm25": 0.4, "dense": 0.1}}
    assert signal_weights(recipe, 0.4, ("bm25", "dense")) == recipe["bm25+dense"]
    assert signal_weights(recipe, 0.4, ("bm25", "dense"), 0.0) == pytest.approx(
        {CROSS_ENCODER: 0.0, "bm25": 0.8, "dense": 0.2}
    )
    # A recommendation that gives the signals nothing: a caller's weight shares the rest.
    alone = {"bm25": {CROSS_ENCODER: 1.0, "bm25": 0.0}}
    assert signal_weights(alone, 0.4, ("bm25",), 0.5) == {CROSS_ENCODER: 0.5, "bm25": 0.5}
