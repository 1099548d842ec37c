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


def length_sorted_chunks(lengths: Sequence[int], chunk_size: int) -> list[np.ndarray]:
    """Index chunks of at most chunk_size, grouped by length so little padding is wasted."""
    order = np.argsort(np.asarray(lengths), kind="stable")
    return [order[i : i + chunk_size] for i in range(0, len(order), chunk_size)]
