"""Rank fusion and score blending: pure functions shared by the search service, the rerank
service and the training and tuning code, so what is tuned is what is served.

- `reciprocal_rank_fusion`: RRF over ranked id lists (Cormack et al., 2009).
- `convex_fusion`: a convex combination of normalised dense and BM25 scores over the union of
  both lists, a document missing from one list taking that list's floor (Bruch, Gai and
  Ingber, "An Analysis of Fusion Functions for Hybrid Retrieval", ACM TOIS 2023).
- `blend_signals`: the rerank score, a weighted sum of the z-scored cross-encoder logit and
  the first stage's own z-scored signals (BM25, dense cosine) over the reranked candidates.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Literal

import numpy as np

RRF_K = 60  # the constant of Cormack et al. (2009); robust across collections
Normalization = Literal["minmax", "zscore"]
NORMALIZATIONS: tuple[Normalization, ...] = ("minmax", "zscore")
CROSS_ENCODER = "cross_encoder"  # the blend weight of the cross-encoder's own score


def reciprocal_rank_fusion(
    rankings: Sequence[Sequence[str]], k: int = RRF_K
) -> list[tuple[str, float]]:
    """Fuses ranked id lists: score(d) = sum over lists of 1 / (k + rank of d), rank from 1."""
    scores: dict[str, float] = {}
    for ranking in rankings:
        for rank, doc_id in enumerate(ranking, start=1):
            scores[doc_id] = scores.get(doc_id, 0.0) + 1.0 / (k + rank)
    # Ties keep the order of first appearance, so the result is deterministic.
    return sorted(scores.items(), key=lambda item: item[1], reverse=True)


def standardize(scores: np.ndarray) -> np.ndarray:
    """z-scores within one query's candidates; a constant list becomes all zeros."""
    scores = np.asarray(scores, dtype=np.float64)
    if scores.size == 0:  # std() of nothing warns and gives NaN
        return scores
    spread = scores.std()
    if spread < 1e-12:
        return np.zeros_like(scores)
    return (scores - scores.mean()) / spread


def min_max(scores: np.ndarray) -> np.ndarray:
    """Scores mapped onto [0, 1] within one list; a constant list carries no order: all 1."""
    scores = np.asarray(scores, dtype=np.float64)
    if scores.size == 0:
        return scores
    low, high = scores.min(), scores.max()
    if high - low < 1e-12:
        return np.ones_like(scores)
    return (scores - low) / (high - low)


def normalize(scores: np.ndarray, method: Normalization) -> np.ndarray:
    if method == "minmax":
        return min_max(scores)
    if method == "zscore":
        return standardize(scores)
    raise ValueError(f"normalization must be one of {NORMALIZATIONS}, not {method!r}")


def check_weight(weight: float) -> None:
    if not (math.isfinite(weight) and 0.0 <= weight <= 1.0):
        raise ValueError(f"a fusion or blend weight must be in [0, 1], not {weight}")


def convex_fusion(
    dense: Sequence[tuple[str, float]],
    lexical: Sequence[tuple[str, float]],
    dense_weight: float,
    method: Normalization = "minmax",
) -> list[tuple[str, float]]:
    """w * norm(dense) + (1 - w) * norm(BM25) over the union of both (doc_id, score) lists.

    Each list is normalised on its own; a document missing from a list gets that list's
    floor (its lowest normalised score: what the list says of its last candidate), and an
    empty list contributes nothing. Best first; ties keep the order of first appearance
    (dense list first), so the result is deterministic.
    """
    check_weight(dense_weight)
    fused: dict[str, float] = {}
    present: list[tuple[float, dict[str, float], float]] = []
    for hits, weight in ((dense, dense_weight), (lexical, 1.0 - dense_weight)):
        if not hits:
            continue
        normalised = normalize(np.array([s for _, s in hits], dtype=np.float64), method)
        scores = {doc_id: float(v) for (doc_id, _), v in zip(hits, normalised, strict=True)}
        present.append((weight, scores, float(normalised.min())))
        for doc_id, _ in hits:
            fused.setdefault(doc_id, 0.0)
    for weight, scores, floor in present:
        for doc_id in fused:
            fused[doc_id] += weight * scores.get(doc_id, floor)
    return sorted(fused.items(), key=lambda item: item[1], reverse=True)


def blend_signals(
    cross_encoder: np.ndarray,
    signals: Mapping[str, np.ndarray],
    weights: Mapping[str, float],
) -> np.ndarray:
    """sum_s weights[s] * z(s) over the cross-encoder's logits and the named first-stage signals.

    Each signal is an array over the same candidates, NaN where a candidate lacks it (found by
    only one first stage): a missing value takes that signal's floor (its lowest z-score here).
    `weights` names CROSS_ENCODER and the signals; a signal without a weight counts 0.
    """
    total = weights.get(CROSS_ENCODER, 0.0) * standardize(cross_encoder)
    for name, values in signals.items():
        weight = weights.get(name, 0.0)
        if weight == 0.0:
            continue
        values = np.asarray(values, dtype=np.float64)
        known = ~np.isnan(values)
        if not known.any():
            continue
        z = np.empty_like(values)
        z[known] = standardize(values[known])
        z[~known] = z[known].min()
        total = total + weight * z
    return np.asarray(total, dtype=np.float64)


def signal_weights(
    recommended: Mapping[str, Mapping[str, float]],
    fallback_cross_weight: float,
    signals: Sequence[str],
    cross_weight: float | None = None,
) -> dict[str, float]:
    """The blend weights of the cross-encoder and `signals` (e.g. ("bm25", "dense")).

    `recommended` maps a signal set ("bm25", "dense", "bm25+dense") to its weights (a model's
    recipe); a set it lacks gets `fallback_cross_weight` for the cross-encoder and the rest
    shared equally. `cross_weight` (a caller's choice) replaces the cross-encoder's weight and
    scales the signals' weights to the rest, keeping their proportions.
    """
    weights = dict(recommended.get("+".join(signals), {}))
    if not weights:
        share = (1.0 - fallback_cross_weight) / len(signals)
        weights = {CROSS_ENCODER: fallback_cross_weight} | dict.fromkeys(signals, share)
    if cross_weight is None:
        return weights
    rest = sum(weights.get(s, 0.0) for s in signals)
    if rest <= 0:  # the recommendation gives the signals nothing: share the rest equally
        return {CROSS_ENCODER: cross_weight} | dict.fromkeys(
            signals, (1.0 - cross_weight) / len(signals)
        )
    scale = (1.0 - cross_weight) / rest
    return {CROSS_ENCODER: cross_weight} | {s: weights.get(s, 0.0) * scale for s in signals}


def blend_scores(cross_encoder: np.ndarray, first_stage: np.ndarray, weight: float) -> np.ndarray:
    """weight * z(cross-encoder) + (1 - weight) * z(first stage); weight 1 = cross-encoder alone."""
    if weight >= 1.0:
        return np.asarray(cross_encoder, dtype=np.float64)
    return weight * standardize(cross_encoder) + (1.0 - weight) * standardize(first_stage)
