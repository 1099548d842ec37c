"""Bi-encoder runtime: tokenize, run ONNX, pool, L2-normalise. No torch."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

import numpy as np
from tokenizers import Encoding

from neuralir.models.manifest import Manifest, load_manifest
from neuralir.models.session import RuntimeSettings, create_session
from neuralir.models.tokenization import BoundedTokenizer, length_sorted_chunks, to_batch

TextKind = Literal["query", "passage"]


@dataclasses.dataclass(frozen=True)
class EncodeResult:
    embeddings: np.ndarray  # float32 [n, dimension], L2-normalised rows
    token_counts: list[int]
    tokenize_ns: int
    inference_ns: int


class Encoder:
    """Encodes texts into embeddings with a model built by `neuralir models build`."""

    def __init__(self, model_dir: Path, settings: RuntimeSettings | None = None) -> None:
        self.model_dir = Path(model_dir)
        self.manifest: Manifest = load_manifest(self.model_dir)
        if self.manifest.kind != "bi-encoder":
            raise ValueError(f"{model_dir} holds a {self.manifest.kind}, not a bi-encoder")
        self.settings = settings or RuntimeSettings()
        self._tokenizer = BoundedTokenizer(self.model_dir / "tokenizer.json", self.max_length)
        self._session = create_session(
            self.model_dir / self.manifest.onnx_file,
            self.settings,
            self.manifest.session_disabled_optimizers,
        )
        self._input_names = {i.name for i in self._session.get_inputs()}
        outputs = [o.name for o in self._session.get_outputs()]
        # A sentence-transformers export already pools; a plain transformers export does not.
        self._pooled_output = "sentence_embedding" if "sentence_embedding" in outputs else None
        self._hidden_output: str = outputs[0]
        # A fused graph pools and L2-normalises inside (manifest.graph["rewrites"]).
        self._normalized_in_graph = self._pooled_output is not None and any(
            "l2_in_graph" in rewrite for rewrite in self.manifest.graph.get("rewrites", ())
        )

    @property
    def model_id(self) -> str:
        return self.manifest.model_id

    @property
    def dimension(self) -> int:
        return self.manifest.dimension

    @property
    def max_length(self) -> int:
        return self.manifest.max_length

    def encode(self, texts: Sequence[str], kind: TextKind = "query") -> np.ndarray:
        """float32 [len(texts), dimension], L2-normalised rows, in the order given.

        An empty list gives a [0, dimension] array. An empty (or blank) text is encoded as the
        special tokens alone, a valid vector (the gRPC service refuses empty texts). Texts longer
        than `max_length` tokens are truncated to it; `encode_detailed` reports the token counts.
        """
        return self.encode_detailed(texts, kind).embeddings

    def encode_detailed(self, texts: Sequence[str], kind: TextKind = "query") -> EncodeResult:
        start = time.perf_counter_ns()
        encodings = self.tokenize(texts, kind)
        tokenized = time.perf_counter_ns()
        out = self.embed(encodings)
        done = time.perf_counter_ns()
        return EncodeResult(
            out, [len(e.ids) for e in encodings], tokenized - start, done - tokenized
        )

    def tokenize(self, texts: Sequence[str], kind: TextKind = "query") -> list[Encoding]:
        """Token encodings (prefix added, truncated to `max_length`), for `embed`."""
        prefix = self.manifest.query_prefix if kind == "query" else self.manifest.passage_prefix
        return list(self._tokenizer.encode_batch([prefix + t for t in texts]))

    def embed(self, encodings: Sequence[Encoding]) -> np.ndarray:
        """float32 [len(encodings), dimension] for encodings from `tokenize`, in their order;
        model calls are cut at `max_batch_items` rows and `max_batch_tokens` padded tokens."""
        out = np.zeros((len(encodings), self.dimension), dtype=np.float32)
        lengths = [len(e.ids) for e in encodings]
        budget = self.settings.max_batch_tokens or None
        for chunk in length_sorted_chunks(
            lengths, self.settings.max_batch_items, max_tokens=budget
        ):
            out[chunk] = self._run([encodings[i] for i in chunk])
        return out

    def _run(self, encodings: list[Encoding]) -> np.ndarray:
        batch = to_batch(encodings)
        feeds = {"input_ids": batch.input_ids, "attention_mask": batch.attention_mask}
        if "token_type_ids" in self._input_names:
            feeds["token_type_ids"] = batch.token_type_ids
        tokens = batch.input_ids.size
        if self._pooled_output is not None:
            pooled = self._session.run([self._pooled_output], feeds, tokens)[0]
        else:
            hidden = self._session.run([self._hidden_output], feeds, tokens)[0]
            pooled = self._pool(hidden, batch.attention_mask)
        if self.manifest.normalize and not self._normalized_in_graph:
            norms = np.linalg.norm(pooled, axis=1, keepdims=True)
            pooled = pooled / np.maximum(norms, 1e-12)
        return np.asarray(pooled, dtype=np.float32)

    def _pool(self, hidden: np.ndarray, mask: np.ndarray) -> np.ndarray:
        if self.manifest.pooling == "cls":
            return hidden[:, 0, :]
        weights = mask[:, :, None].astype(np.float32)
        return (hidden * weights).sum(axis=1) / np.maximum(weights.sum(axis=1), 1e-9)
