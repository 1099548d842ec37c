"""The encoder stage: texts -> L2-normalised float32 embeddings, dynamically batched."""

from __future__ import annotations

import dataclasses
import time

import numpy as np

from neuralir.models.encoder import Encoder, TextKind
from neuralir.server.batching import BatchingSettings, DynamicBatcher, split_request
from neuralir.server.stages.timing import StageTime


@dataclasses.dataclass(frozen=True, slots=True)
class EncodeItem:
    """One chunk of a request: at most the batch limits in texts and estimated tokens."""

    texts: list[str]
    kind: TextKind
    tokens: int = 0  # padded-token estimate (rows x longest), for the batch's token budget


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
        self.batching = batching
        self.batcher: DynamicBatcher[EncodeItem, EncodedItem] = DynamicBatcher(
            "encoder",
            self._run_batch,
            lambda item: len(item.texts),
            batching,
            item_tokens=lambda item: item.tokens,
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

    async def encode(
        self, texts: list[str], kind: TextKind, timeout_s: float | None = None
    ) -> Encoded:
        """Embeddings of `texts`; a request over the batch limits runs as several chunks that
        interleave with other callers', and stops between chunks once `timeout_s` (the
        caller's time left) has passed or the caller is cancelled."""
        started = time.perf_counter_ns()
        costs = [estimate_tokens(text, self.encoder.max_length) for text in texts]
        chunks = [
            EncodeItem(texts[start:end], kind, tokens)
            for start, end, tokens in split_request(costs, self.batching)
        ]
        results, stats = await self.batcher.submit_chunks(chunks, timeout_s)
        timing = StageTime(
            stage="encode",
            queue_ns=stats.queue_ns,
            tokenize_ns=sum(r.tokenize_ns for r in results),
            inference_ns=sum(r.inference_ns for r in results),
            total_ns=time.perf_counter_ns() - started,
            batch_size=stats.batch_items,
        )
        embeddings = np.concatenate([r.embeddings for r in results])
        token_counts = [n for r in results for n in r.token_counts]
        return Encoded(embeddings, token_counts, timing)

    def _run_batch(self, items: list[EncodeItem]) -> list[EncodedItem]:
        """One model call for the whole batch: kinds differ only in the prefix tokenized in."""
        start = time.perf_counter_ns()
        encodings = [e for item in items for e in self.encoder.tokenize(item.texts, item.kind)]
        tokenized = time.perf_counter_ns()
        embeddings = self.encoder.embed(encodings)
        tokenize_ns, inference_ns = tokenized - start, time.perf_counter_ns() - tokenized
        results, offset = [], 0
        for item in items:
            end = offset + len(item.texts)
            counts = [len(e.ids) for e in encodings[offset:end]]
            results.append(EncodedItem(embeddings[offset:end], counts, tokenize_ns, inference_ns))
            offset = end
        return results


def estimate_tokens(text: str, max_length: int, specials: int = 2) -> int:
    """Tokens a text takes before it is tokenized: about one per character at most (a word
    piece covers at least one), cut at the model's max length."""
    return min(max_length, len(text) + specials)
