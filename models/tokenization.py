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


# A text is cut to this many characters per token of max length (plus a margin for the word
# the cut splits) before tokenizing, when the cut still holds more tokens than the model keeps:
# tokenizing costs time and memory per character (256 texts of 8,192 CJK characters took
# 335 MiB and seconds), while truncation keeps only the first `max_length` tokens anyway.
CHARS_PER_TOKEN_CUT = 8
CUT_MARGIN_TOKENS = 100  # a word longer than 100 characters is one [UNK]: a split word's tokens


class BoundedTokenizer:
    """Tokenizes like `load_tokenizer`'s tokenizer (same ids), at a bounded cost per text.

    A text is cut to its first `cut_chars` characters when that prefix alone gives at least
    max_length + CUT_MARGIN_TOKENS tokens: the kept tokens all come from whole words before
    the cut. In a pair, longest-first truncation gives the odd token to the longer side, so a
    side is cut only when the other is short and stays the shorter one (a long query beside a
    long passage is tokenized whole; checked against the plain tokenizer in the tests).
    """

    def __init__(self, path: Path, max_length: int) -> None:
        self.tokenizer = load_tokenizer(path, max_length)
        self._plain = Tokenizer.from_file(str(path))
        self._plain.no_truncation()
        self._plain.no_padding()
        self.max_length = max_length
        self.cut_chars = CHARS_PER_TOKEN_CUT * (max_length + CUT_MARGIN_TOKENS)

    def encode(self, text: str) -> Encoding:
        return self.encode_batch([text])[0]

    def encode_batch(self, inputs: Sequence[str | tuple[str, str]]) -> list[Encoding]:
        counts = self._counts({t for item in inputs for t in _texts(item) if self._long(t)})
        # the short side of a pair whose other side can be cut: is it surely the shorter?
        short_sides = {
            t
            for item in inputs
            if not isinstance(item, str)
            for t, other in (item, item[::-1])
            if not self._long(t) and self._cuttable(other, counts)
        }
        counts |= self._counts(short_sides)
        cut = self.cut_chars
        rebuilt: list[str | tuple[str, str]] = []
        for item in inputs:
            if isinstance(item, str):
                rebuilt.append(item[:cut] if self._cuttable(item, counts) else item)
                continue
            a, b = item
            if self._cuttable(b, counts) and self._short(a, counts):
                b = b[:cut]
            elif self._cuttable(a, counts) and self._short(b, counts):
                a = a[:cut]
            rebuilt.append((a, b))
        return list(self.tokenizer.encode_batch(rebuilt))

    def _long(self, text: str) -> bool:
        return len(text) > self.cut_chars

    def _cuttable(self, text: str, counts: dict[str, int]) -> bool:
        return self._long(text) and counts[text] >= self.max_length + CUT_MARGIN_TOKENS

    def _short(self, text: str, counts: dict[str, int]) -> bool:
        """Whole (not cut) and fewer tokens than any cut text keeps before truncation."""
        return not self._long(text) and counts[text] < self.max_length + CUT_MARGIN_TOKENS

    def _counts(self, texts: set[str]) -> dict[str, int]:
        """Tokens (no special tokens) of each text's first `cut_chars` characters."""
        ordered = sorted(texts)
        prefixes = [t[: self.cut_chars] for t in ordered]
        encodings = self._plain.encode_batch(prefixes, add_special_tokens=False)
        return {t: len(e.ids) for t, e in zip(ordered, encodings, strict=True)}


def _texts(item: str | tuple[str, str]) -> tuple[str, ...]:
    return (item,) if isinstance(item, str) else item


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
    lengths: Sequence[int],
    chunk_size: int,
    max_padding: float = 0.25,
    max_tokens: int | None = None,
) -> list[np.ndarray]:
    """Index chunks for model calls, grouped by length so little padding is wasted.

    Texts are sorted by token count; a chunk closes when it holds `chunk_size` texts, when
    padding it to its longest member would make more than `max_padding` of its tokens padding,
    or when its padded size (rows x longest) would pass `max_tokens`: ONNX Runtime's memory
    for one call grows with the padded tokens, and its arena keeps the peak.
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
        over_budget = max_tokens is not None and padded > max_tokens
        if size and (size >= chunk_size or wasted > max_padding * padded or over_budget):
            chunks.append(order[start:position])
            start, real_tokens = position, 0
        real_tokens += longest
    if start < len(order):
        chunks.append(order[start:])
    return chunks
