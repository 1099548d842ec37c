"""Tokenization with `tokenizers` into padded numpy batches, shared by both model kinds."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from tokenizers import Encoding, Tokenizer


@dataclasses.dataclass(frozen=True)
class TokenBatch:
    input_ids: np.ndarray  # int64 [batch, seq]
    attention_mask: np.ndarray  # int64 [batch, seq]
    token_type_ids: np.ndarray  # int64 [batch, seq]

    @property
    def lengths(self) -> np.ndarray:
        return self.attention_mask.sum(axis=1)


def load_tokenizer(path: Path, max_length: int) -> Tokenizer:
    tokenizer = Tokenizer.from_file(str(path))
    # Pairs are cut longest-first: the passage side goes first, a long query is cut too.
    tokenizer.enable_truncation(max_length=max_length, strategy="longest_first")
    tokenizer.no_padding()  # padding is done per batch below, to the longest member
    return tokenizer


def to_batch(encodings: Sequence[Encoding]) -> TokenBatch:
    """Pads a list of encodings to the longest one (pad id 0, as BERT vocabularies use)."""
    longest = max((len(e.ids) for e in encodings), default=0)
    shape = (len(encodings), longest)
    ids = np.zeros(shape, dtype=np.int64)
    mask = np.zeros(shape, dtype=np.int64)
    types = np.zeros(shape, dtype=np.int64)
    for row, encoding in enumerate(encodings):
        n = len(encoding.ids)
        ids[row, :n] = encoding.ids
        mask[row, :n] = encoding.attention_mask
        types[row, :n] = encoding.type_ids
    return TokenBatch(ids, mask, types)


def length_sorted_chunks(
    lengths: Sequence[int], chunk_size: int, max_padding: float = 0.25
) -> list[np.ndarray]:
    """Index chunks for model calls, grouped by length so little padding is wasted.

    Texts are sorted by token count; a chunk closes when it holds `chunk_size` texts or when
    padding it to its longest member would make more than `max_padding` of its tokens padding.
    A batch of mixed-length queries padded to its longest member costs more per query than
    the queries alone on this kind of CPU (int8 matrix work grows with padded tokens), so a
    few well-filled chunks beat one padded one.
    """
    order = np.argsort(np.asarray(lengths), kind="stable")
    chunks: list[np.ndarray] = []
    start, real_tokens = 0, 0
    for position, index in enumerate(order):
        longest, size = int(lengths[index]), position - start
        padded = longest * (size + 1)
        wasted = padded - (real_tokens + longest)
        if size and (size >= chunk_size or wasted > max_padding * padded):
            chunks.append(order[start:position])
            start, real_tokens = position, 0
        real_tokens += longest
    if start < len(order):
        chunks.append(order[start:])
    return chunks
