"""Indexes built for evaluation, reused while the corpus and the encoder are the same.

One index per (corpus sha256, encoder model id), under `ROOT/NAME-CORPUS12-MODEL`: a changed
corpus or a rebuilt encoder gets a new directory; an index whose files no longer match what its
build recorded (checked by `IndexStore.open`) is rebuilt in place.
"""

from __future__ import annotations

import dataclasses
import logging
import re
import time
from pathlib import Path

from neuralir.models.manifest import read_manifest
from neuralir.server.index_build import IndexBuildSettings, build_index
from neuralir.server.index_store import IndexLoadError, IndexStore

logger = logging.getLogger(__name__)

DEFAULT_CACHE_DIR = Path("artifacts/indexes/eval")


@dataclasses.dataclass(frozen=True)
class CachedIndex:
    path: Path
    encoder_model_id: str
    built: bool  # False = reused
    build_seconds: float


def index_path(cache_dir: Path, name: str, corpus_sha256: str, encoder_model_id: str) -> Path:
    model = re.sub(r"[^A-Za-z0-9_.-]+", "-", encoder_model_id)
    return Path(cache_dir) / f"{name}-{corpus_sha256[:12]}-{model}"


def ensure_index(
    corpus_path: Path,
    corpus_sha256: str,
    name: str,
    encoder_dir: Path,
    cache_dir: Path = DEFAULT_CACHE_DIR,
    threads: int = 2,
) -> CachedIndex:
    """A verified index of `corpus_path` embedded by `encoder_dir`, built if needed."""
    model_id = read_manifest(encoder_dir).model_id
    path = index_path(cache_dir, name, corpus_sha256, model_id)
    reason = _why_not_reusable(path, model_id, corpus_sha256)
    if reason is None:
        logger.info("reusing index %s", path)
        return CachedIndex(path, model_id, built=False, build_seconds=0.0)
    logger.info("building index %s (%s)", path, reason)
    from neuralir.models.encoder import Encoder  # loads ONNX Runtime only when a build is due
    from neuralir.models.session import RuntimeSettings

    started = time.perf_counter_ns()
    encoder = Encoder(encoder_dir, RuntimeSettings(intra_op_threads=threads))
    info = build_index(corpus_path, path, encoder, IndexBuildSettings(threads=threads))
    if info.corpus_sha256 != corpus_sha256:
        raise IndexLoadError(f"{corpus_path} changed while its index was being built: run again")
    return CachedIndex(path, model_id, built=True, build_seconds=_seconds_since(started))


def _why_not_reusable(path: Path, model_id: str, corpus_sha256: str) -> str | None:
    if not path.exists():
        return "not built yet"
    try:
        store = IndexStore.open(path, expected_encoder_model_id=model_id)
    except IndexLoadError as exc:
        return f"existing one is unusable: {exc}"
    try:
        if store.info.corpus_sha256 != corpus_sha256:
            return "existing one was built from another corpus"
    finally:
        store.close()
    return None


def _seconds_since(started_ns: int) -> float:
    return (time.perf_counter_ns() - started_ns) / 1e9
