"""sentence-transformers on PyTorch fp32: what a user would run instead, on the same weights.

An optional dependency (the `build` extra). `unavailable_reason` says why a baseline cannot
run, so the report states it rather than silently leaving the rows out.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

# fp32 whatever dtype the checkpoint was saved in (the shipped cross-encoder is fp16 on disk).
_FP32 = {"dtype": "float32"}


def unavailable_reason(source: str | Path) -> str | None:
    """None when the baseline can run; otherwise a sentence for the report."""
    for module in ("torch", "sentence_transformers"):
        if importlib.util.find_spec(module) is None:
            return (
                f"`{module}` is not installed: the PyTorch baseline is absent "
                "(install the `build` extra: pip install -e '.[build]')"
            )
    if not Path(source).is_dir():
        return f"the model source {source} is not a local directory: PyTorch baseline absent"
    return None


def set_threads(threads: int) -> None:
    import torch

    torch.set_num_threads(threads)


def torch_version() -> str:
    import torch

    return str(torch.__version__)


class TorchBiEncoder:
    """SentenceTransformer.encode, L2-normalised, as a user of the library would call it."""

    def __init__(self, source: str | Path, max_length: int) -> None:
        from sentence_transformers import SentenceTransformer

        self.model: Any = SentenceTransformer(str(source), device="cpu", model_kwargs=_FP32)
        self.model.max_seq_length = max_length

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        return np.asarray(
            self.model.encode(
                list(texts),
                batch_size=max(1, len(texts)),
                normalize_embeddings=True,
                convert_to_numpy=True,
                show_progress_bar=False,
            )
        )


class TorchCrossEncoder:
    """sentence_transformers.CrossEncoder.predict on (query, passage) pairs."""

    def __init__(self, source: str | Path, max_length: int, batch_size: int) -> None:
        from sentence_transformers import CrossEncoder

        self.model: Any = CrossEncoder(
            str(source), max_length=max_length, device="cpu", model_kwargs=_FP32
        )
        self.batch_size = batch_size

    def score(self, query: str, passages: Sequence[str]) -> np.ndarray:
        pairs = [(query, p) for p in passages]
        return np.asarray(
            self.model.predict(pairs, batch_size=self.batch_size, show_progress_bar=False)
        )
