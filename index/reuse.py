"""The one "reuse or build" rule for indexes: the demo, evaluation, benchmarks and tests call
`ensure_index` instead of deciding for themselves when an index is still good.

An index at `out_dir` is reused when it opens and verifies (`IndexStore.open`: every file's
checksum, the encoder's model id) and was built from the same corpus bytes with the same build
settings; anything else is rebuilt there, published atomically as every build is.
"""

from __future__ import annotations

import dataclasses
import logging
import re
import time
from pathlib import Path

from neuralir.index.build import IndexBuildSettings, build_index
from neuralir.index.format import IndexLoadError, read_index_json
from neuralir.index.store import IndexStore
from neuralir.models.manifest import read_manifest, sha256_file

logger = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class EnsuredIndex:
    path: Path
    encoder_model_id: str
    built: bool  # False = reused
    build_seconds: float
    reason: str  # why it was built, or "current"


def keyed_path(root: Path, name: str, corpus_sha256: str, encoder_model_id: str) -> Path:
    """A directory under `root` per (corpus, encoder): a changed corpus or a rebuilt encoder gets
    a new index instead of overwriting the one other runs may still use."""
    model = re.sub(r"[^A-Za-z0-9_.-]+", "-", encoder_model_id)
    return Path(root) / f"{name}-{corpus_sha256[:12]}-{model}"


def ensure_index(
    corpus_path: Path,
    out_dir: Path,
    encoder_dir: Path,
    settings: IndexBuildSettings | None = None,
    corpus_sha256: str | None = None,
    progress: bool = False,
) -> EnsuredIndex:
    """A verified index of `corpus_path` embedded by the model at `encoder_dir`, at `out_dir`."""
    settings = settings or IndexBuildSettings()
    model_id = read_manifest(encoder_dir).model_id
    checksum = corpus_sha256 or sha256_file(Path(corpus_path))
    reason = _why_rebuild(Path(out_dir), model_id, checksum, settings)
    if reason is None:
        logger.info("reusing index %s", out_dir)
        return EnsuredIndex(Path(out_dir), model_id, False, 0.0, "current")
    logger.info("building index %s (%s)", out_dir, reason)
    # Loads ONNX Runtime only when a build is due.
    from neuralir.models.encoder import Encoder
    from neuralir.models.session import RuntimeSettings

    started = time.perf_counter()
    encoder = Encoder(encoder_dir, RuntimeSettings(intra_op_threads=settings.threads))
    info = build_index(corpus_path, out_dir, encoder, settings, progress=progress)
    if info.corpus_sha256 != checksum:
        raise IndexLoadError(f"{corpus_path} changed while its index was being built: run again")
    return EnsuredIndex(Path(out_dir), model_id, True, time.perf_counter() - started, reason)


def _why_rebuild(
    path: Path, model_id: str, corpus_sha256: str, settings: IndexBuildSettings
) -> str | None:
    if not path.exists():
        return "not built yet"
    try:
        store = IndexStore.open(path, expected_encoder_model_id=model_id)
    except IndexLoadError as exc:
        return f"existing one is unusable: {exc}"
    store.close()
    recorded = read_index_json(path.resolve())
    if recorded["info"].corpus_sha256 != corpus_sha256:
        return "existing one was built from another corpus"
    if recorded.get("settings") != dataclasses.asdict(settings):
        return "existing one was built with other settings"
    return None
