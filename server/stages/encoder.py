"""The encoder stage: texts -> L2-normalised float32 embeddings, dynamically batched."""

from __future__ import annotations

import dataclasses
import time

import numpy as np

from neuralir.models.encoder import Encoder, TextKind
from neuralir.server.batching import BatchingSettings, DynamicBatcher
from neuralir.server.stages.timing import StageTime


@dataclasses.dataclass(frozen=True, slots=True)
class EncodeItem:
    texts: list[str]
    kind: TextKind


@dataclasses.dataclass(frozen=True, slots=True)
class EncodedItem:
    embeddings: np.ndarray
    token_counts: list[int]
    tokenize_ns: int
    inference_ns: int


@dataclasses.dataclass(frozen=True, slots=True)
class Encoded:
    embeddings: np.ndarray  # float32 [len(texts), dimension], rows L2-normalised
    token_counts: list[int]  # per text, after truncation
    timing: StageTime


class EncoderStage:
    def __init__(self, encoder: Encoder, batching: BatchingSettings) -> None:
        self.encoder = encoder
        self.batcher: DynamicBatcher[EncodeItem, EncodedItem] = DynamicBatcher(
            "encoder", self._run_batch, lambda item: len(item.texts), batching
        )

    @property
    def model_id(self) -> str:
        return self.encoder.model_id

    async def start(self) -> None:
        """Starts the batch worker and warms the model up (first runs allocate the arena)."""
        self.batcher.start()
        for _ in range(3):
            await self.batcher.submit(EncodeItem(["warm-up query for the encoder"], "query"))

    async def stop(self) -> None:
        await self.batcher.stop()

    async def encode(self, texts: list[str], kind: TextKind) -> Encoded:
        started = time.perf_counter_ns()
        result, stats = await self.batcher.submit(EncodeItem(texts, kind))
        timing = StageTime(
            stage="encode",
            queue_ns=stats.queue_ns,
            tokenize_ns=result.tokenize_ns,
            inference_ns=result.inference_ns,
            total_ns=time.perf_counter_ns() - started,
            batch_size=stats.batch_items,
        )
        return Encoded(result.embeddings, result.token_counts, timing)

    def _run_batch(self, items: list[EncodeItem]) -> list[EncodedItem]:
        """One model call per text kind present in the batch (kinds may use different prefixes)."""
        results: list[EncodedItem | None] = [None] * len(items)
        for kind in {item.kind for item in items}:
            members = [i for i, item in enumerate(items) if item.kind == kind]
            texts = [text for i in members for text in items[i].texts]
            out = self.encoder.encode_detailed(texts, kind)
            start = 0
            for i in members:
                end = start + len(items[i].texts)
                results[i] = EncodedItem(
                    out.embeddings[start:end],
                    out.token_counts[start:end],
                    out.tokenize_ns,
                    out.inference_ns,
                )
                start = end
        return [r for r in results if r is not None]
