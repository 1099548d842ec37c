"""The rerank stage: cross-encoder scores for (query, passage) pairs, blended with the first
stage's signals and sorted; one batching queue per served model.

The blend (models/ranking.py): with BM25 and/or dense scores on the passages, the z-scored
logit and signals weighted by the model's recipe (`blend` weights per signal set, chosen on
the development collections); a caller's `blend_weight` sets the cross-encoder's weight and
scales the signals' weights to the rest. With only a `first_stage_score`, w * z(logit) +
(1 - w) * z(first stage), w from the recipe's `blend_weight`.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Mapping, Sequence

import numpy as np

from neuralir.models.cross_encoder import CrossEncoder
from neuralir.models.ranking import CROSS_ENCODER, blend_scores, blend_signals, signal_weights
from neuralir.server.batching import BatchingSettings, DynamicBatcher, split_request
from neuralir.server.errors import InvalidArgument
from neuralir.server.stages.encoder import estimate_tokens
from neuralir.server.stages.timing import StageTime


@dataclasses.dataclass(frozen=True, slots=True)
class RerankPassage:
    id: str
    text: str
    first_stage_score: float | None = None  # needed only to blend
    bm25_score: float | None = None  # the first stage's own signals, blended by name
    dense_score: float | None = None


@dataclasses.dataclass(frozen=True, slots=True)
class RankedPassage:
    id: str
    score: float  # the final (blended) score that orders the passages
    cross_encoder_score: float  # the raw logit


@dataclasses.dataclass(frozen=True, slots=True)
class Reranked:
    passages: list[RankedPassage]  # best first
    model_id: str
    blend_weight: float  # the weight applied (1 = cross-encoder alone)
    timing: StageTime


@dataclasses.dataclass(frozen=True, slots=True)
class _Item:
    """One chunk of a request: at most the batch limits in pairs and estimated tokens."""

    query: str
    passages: list[str]
    tokens: int = 0  # padded-token estimate (rows x longest), for the batch's token budget


@dataclasses.dataclass(frozen=True, slots=True)
class _Scored:
    scores: np.ndarray
    tokenize_ns: int
    inference_ns: int


SIGNALS = ("bm25", "dense")  # RerankPassage fields `<name>_score`, blended by name


class RerankModel:
    """One served cross-encoder with its own batching queue and recommended blend weights."""

    def __init__(self, name: str, model: CrossEncoder, batching: BatchingSettings) -> None:
        self.name = name
        self.model = model
        recipe = model.manifest.recipe
        self.default_blend_weight = float(recipe.get("blend_weight", 1.0))
        # Per signal set ("bm25", "dense", "bm25+dense"): {cross_encoder: w, bm25: .., ...}.
        self.signal_weights: dict[str, dict[str, float]] = {
            key: {k: float(v) for k, v in weights.items()}
            for key, weights in recipe.get("blend", {}).items()
        }
        self.batching = batching
        self.batcher: DynamicBatcher[_Item, _Scored] = DynamicBatcher(
            f"rerank-{name}",
            self._run_batch,
            lambda item: len(item.passages),
            batching,
            item_tokens=lambda item: item.tokens,
        )

    def weights_for(self, signals: tuple[str, ...], cross_weight: float | None) -> dict[str, float]:
        """The blend weights for passages that carry `signals` (see ranking.signal_weights)."""
        return signal_weights(self.signal_weights, self.default_blend_weight, signals, cross_weight)

    def chunks(self, query: str, passages: Sequence[str]) -> list[_Item]:
        """The request cut at the batch limits (pairs, and tokens estimated from characters)."""
        max_length = self.model.max_length
        costs = [estimate_tokens(query + passage, max_length, specials=3) for passage in passages]
        return [
            _Item(query, list(passages[start:end]), tokens)
            for start, end, tokens in split_request(costs, self.batching)
        ]

    def _run_batch(self, items: list[_Item]) -> list[_Scored]:
        """All pairs of all requests in one call: the runtime groups them by length."""
        pairs = [(item.query, passage) for item in items for passage in item.passages]
        out = self.model.score_pairs(pairs)
        results, start = [], 0
        for item in items:
            end = start + len(item.passages)
            results.append(_Scored(out.scores[start:end], out.tokenize_ns, out.inference_ns))
            start = end
        return results


class RerankStage:
    def __init__(
        self, models: Mapping[str, CrossEncoder], default: str, batching: BatchingSettings
    ) -> None:
        if default not in models:
            raise ValueError(f"default reranker {default!r} is not among {sorted(models)}")
        self.models = {name: RerankModel(name, m, batching) for name, m in models.items()}
        self.default = default

    async def start(self) -> None:
        for served in self.models.values():
            served.batcher.start()
            for _ in range(2):
                await served.batcher.submit(_Item("warm-up", ["a passage to warm up on"] * 4))

    async def stop(self) -> None:
        for served in self.models.values():
            await served.batcher.stop()

    def model(self, name: str) -> RerankModel:
        """The served model called `name` ("" = the default); InvalidArgument("model") if none."""
        served = self.models.get(name or self.default)
        if served is None:
            raise InvalidArgument(
                "model", f"unknown reranker {name!r}; served: {sorted(self.models)}"
            )
        return served

    async def rerank(
        self,
        query: str,
        passages: Sequence[RerankPassage],
        model: str = "",
        blend_weight: float | None = None,
        top_n: int = 0,
        timeout_s: float | None = None,
    ) -> Reranked:
        """Scores every passage against `query`, blends, and returns the best `top_n` (0 = all).

        Over the batch limits the passages run as several chunks that interleave with other
        callers'; between chunks the request stops once `timeout_s` (the caller's time left)
        has passed or the caller is cancelled."""
        started = time.perf_counter_ns()
        served = self.model(model)
        signals = tuple(s for s in SIGNALS if any(_signal(p, s) is not None for p in passages))
        weights = served.weights_for(signals, blend_weight) if signals else {}
        weight = (
            weights[CROSS_ENCODER]
            if signals
            else _blend_weight(passages, blend_weight, served.default_blend_weight)
        )
        chunks = served.chunks(query, [p.text for p in passages])
        results, stats = await served.batcher.submit_chunks(chunks, timeout_s)
        cross = np.concatenate([r.scores for r in results])
        if signals and weight < 1.0:
            values = {
                s: np.array([_signal(p, s) for p in passages], dtype=np.float64) for s in signals
            }
            final = blend_signals(cross, values, weights)
        elif weight < 1.0:
            first = np.array([p.first_stage_score for p in passages], dtype=np.float64)
            final = blend_scores(cross, first, weight)
        else:
            final = np.asarray(cross, dtype=np.float64)
        order = np.argsort(-final, kind="stable")
        if top_n:
            order = order[:top_n]
        ranked = [
            RankedPassage(passages[i].id, float(final[i]), float(cross[i])) for i in order.tolist()
        ]
        timing = StageTime(
            stage="rerank",
            queue_ns=stats.queue_ns,
            tokenize_ns=sum(r.tokenize_ns for r in results),
            inference_ns=sum(r.inference_ns for r in results),
            total_ns=time.perf_counter_ns() - started,
            batch_size=stats.batch_items,
        )
        return Reranked(ranked, served.model.model_id, weight, timing)


def _signal(passage: RerankPassage, name: str) -> float | None:
    value: float | None = passage.bm25_score if name == "bm25" else passage.dense_score
    return value


def _blend_weight(
    passages: Sequence[RerankPassage], requested: float | None, recommended: float
) -> float:
    """The caller's weight, else the model's; blending needs every first-stage score."""
    has_first_stage = all(p.first_stage_score is not None for p in passages)
    if requested is not None:
        if requested < 1.0 and not has_first_stage:
            raise InvalidArgument(
                "blend_weight",
                "blending needs first_stage_score on every passage; set it or use weight 1",
            )
        return float(requested)
    return recommended if has_first_stage else 1.0
