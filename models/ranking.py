"""Rank fusion and score blending: pure functions on the request path."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

RRF_K = 60  # the constant of Cormack et al. (2009); robust across collections


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


def blend_scores(cross_encoder: np.ndarray, first_stage: np.ndarray, weight: float) -> np.ndarray:
    """weight * z(cross-encoder) + (1 - weight) * z(first stage); weight 1 = cross-encoder alone."""
    if weight >= 1.0:
        return np.asarray(cross_encoder, dtype=np.float64)
    return weight * standardize(cross_encoder) + (1.0 - weight) * standardize(first_stage)
