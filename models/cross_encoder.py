"""Cross-encoder runtime: (query, passage) pairs tokenized together, one relevance logit each."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from tokenizers import Encoding

from neuralir.models.manifest import Manifest, load_manifest
from neuralir.models.session import RuntimeSettings, create_session
from neuralir.models.tokenization import BoundedTokenizer, length_sorted_chunks, to_batch


@dataclasses.dataclass(frozen=True)
class ScoreResult:
    scores: np.ndarray  # float32 [n] raw logits, higher = more relevant
    token_counts: list[int]
    tokenize_ns: int
    inference_ns: int


class CrossEncoder:
    """Scores query–passage pairs with a model built by `neuralir models build`."""

    def __init__(
        self,
        model_dir: Path,
        settings: RuntimeSettings | None = None,
        max_length: int | None = None,
    ) -> None:
        """`max_length` cuts pairs shorter than the manifest's (e.g. to measure what a shorter
        passage costs in quality); it can never be longer."""
        self.model_dir = Path(model_dir)
        self.manifest: Manifest = load_manifest(self.model_dir)
        if self.manifest.kind != "cross-encoder":
            raise ValueError(f"{model_dir} holds a {self.manifest.kind}, not a cross-encoder")
        if max_length is not None and not 8 <= max_length <= self.manifest.max_length:
            raise ValueError(
                f"max_length must be between 8 and the model's {self.manifest.max_length}"
            )
        self._max_length = max_length or self.manifest.max_length
        self.settings = settings or RuntimeSettings()
        self._tokenizer = BoundedTokenizer(self.model_dir / "tokenizer.json", self.max_length)
        self._session = create_session(
            self.model_dir / self.manifest.onnx_file,
            self.settings,
            self.manifest.session_disabled_optimizers,
        )
        self._input_names = {i.name for i in self._session.get_inputs()}
        self._output = self._session.get_outputs()[0].name

    @property
    def model_id(self) -> str:
        return self.manifest.model_id

    @property
    def max_length(self) -> int:
        return self._max_length

    def score(self, query: str, passages: Sequence[str]) -> np.ndarray:
        """float32 [len(passages)] raw logits, in the order given.

        An empty list gives an empty array. An empty passage is scored as the query alone
        ([CLS] query [SEP] [SEP]; the gRPC service refuses empty passages). A pair longer than
        `max_length` tokens is truncated longest-first, so a long passage is cut, not the query.
        """
        return self.score_pairs([(query, p) for p in passages]).scores

    def score_pairs(self, pairs: Sequence[tuple[str, str]]) -> ScoreResult:
        """Scores pairs from any number of queries; batches are grouped by token length."""
        start = time.perf_counter_ns()
        encodings = self.tokenize(pairs)
        tokenized = time.perf_counter_ns()
        scores = self.score_encodings(encodings)
        done = time.perf_counter_ns()
        lengths = [len(e.ids) for e in encodings]
        return ScoreResult(scores, lengths, tokenized - start, done - tokenized)

    def tokenize(self, pairs: Sequence[tuple[str, str]]) -> list[Encoding]:
        """Pair encodings (truncated longest-first to `max_length`), for `score_encodings`."""
        return list(self._tokenizer.encode_batch(list(pairs)))

    def score_encodings(self, encodings: Sequence[Encoding]) -> np.ndarray:
        """float32 [len(encodings)] logits for encodings from `tokenize`, in their order; model
        calls are cut at `max_batch_items` rows and `max_batch_tokens` padded tokens."""
        scores = np.zeros(len(encodings), dtype=np.float32)
        lengths = [len(e.ids) for e in encodings]
        budget = self.settings.max_batch_tokens or None
        for chunk in length_sorted_chunks(
            lengths, self.settings.max_batch_items, max_tokens=budget
        ):
            scores[chunk] = self._run([encodings[i] for i in chunk])
        return scores

    def _run(self, encodings: list[Encoding]) -> np.ndarray:
        batch = to_batch(encodings)
        feeds = {"input_ids": batch.input_ids, "attention_mask": batch.attention_mask}
        if "token_type_ids" in self._input_names:
            feeds["token_type_ids"] = batch.token_type_ids
        logits = self._session.run([self._output], feeds, batch.input_ids.size)[0]
        # One logit per pair; a two-class head scores the "relevant" column.
        return np.asarray(logits[:, -1], dtype=np.float32)
