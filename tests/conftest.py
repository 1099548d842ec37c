"""Shared fixtures: the real int8 models, built once (idempotently) by the same command users run."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from neuralir.models.build import build_all
from neuralir.models.sources import default_bi_encoder_source, default_cross_encoder_source

REPO_ROOT = Path(__file__).resolve().parents[1]
MODELS_DIR = Path(os.environ.get("NEURALIR_MODELS_DIR", REPO_ROOT / "artifacts" / "models"))
SHARED_DATA = Path(os.environ.get("NEURALIR_DATA_DIR", REPO_ROOT.parent / "shared" / "data"))


@pytest.fixture(scope="session")
def models_dir() -> Path:
    """The built model tree (bi-encoder and cross-encoder, fp32 and int8); built if missing."""
    cross_source = os.environ.get("NEURALIR_CROSS_ENCODER_SOURCE", default_cross_encoder_source())
    build_all(MODELS_DIR, default_bi_encoder_source(), cross_source)
    return MODELS_DIR


@pytest.fixture(scope="session")
def bi_encoder_dir(models_dir: Path) -> Path:
    return models_dir / "bi-encoder" / "int8"


@pytest.fixture(scope="session")
def cross_encoder_dir(models_dir: Path) -> Path:
    return models_dir / "cross-encoder" / "int8"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip(f"IR collections not found at {SHARED_DATA} (set NEURALIR_DATA_DIR)")
    return SHARED_DATA
