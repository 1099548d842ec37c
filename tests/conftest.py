"""Shared fixtures: the real int8 models, built once (idempotently) by the command users run."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from neuralir.models.build import build_all
from neuralir.models.sources import (
    default_bi_encoder_source,
    default_cross_encoder_source,
    default_small_cross_encoder_source,
)

if TYPE_CHECKING:
    from neuralir.client import NeuralIRClient
    from neuralir.server.embedded import EmbeddedServer

REPO_ROOT = Path(__file__).resolve().parents[1]
MODELS_DIR = Path(os.environ.get("NEURALIR_MODELS_DIR", REPO_ROOT / "artifacts" / "models"))
SHARED_DATA = Path(os.environ.get("NEURALIR_DATA_DIR", REPO_ROOT.parent / "shared" / "data"))


@pytest.fixture(scope="session")
def models_dir() -> Path:
    """The built model tree (bi-encoder, cross-encoder and the small cross-encoder, fp32 and
    int8), as `neuralir models build` writes it; built if missing."""
    cross_source = os.environ.get("NEURALIR_CROSS_ENCODER_SOURCE", default_cross_encoder_source())
    small_source = os.environ.get(
        "NEURALIR_SMALL_CROSS_ENCODER_SOURCE", default_small_cross_encoder_source() or ""
    )
    build_all(MODELS_DIR, default_bi_encoder_source(), cross_source, False, small_source or None)
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


@pytest.fixture(scope="session")
def shared_data_if_present() -> Path | None:
    """The IR collections, or None: for tests that fall back to the demo corpus without them."""
    return SHARED_DATA if SHARED_DATA.is_dir() else None


# ---------------------------------------------------------------- a small real index and servers

# Modules of the demo corpus used when ../shared/data is absent (~60 documents).
SMALL_DEMO_MODULES = ("json", "subprocess", "shutil")


@pytest.fixture(scope="session")
def fp32_bi_encoder_dir(models_dir: Path) -> Path:
    return models_dir / "bi-encoder" / "fp32"


@pytest.fixture(scope="session")
def fp32_cross_encoder_dir(models_dir: Path) -> Path:
    return models_dir / "cross-encoder" / "fp32"


@pytest.fixture(scope="session")
def small_cross_encoder_dir(models_dir: Path) -> Path:
    """The distilled 3-layer reranker (int8), shipped in models/checkpoints/."""
    path = models_dir / "cross-encoder-small" / "int8"
    assert (path / "manifest.json").is_file(), f"{path} was not built: is the checkpoint shipped?"
    return path


@pytest.fixture(scope="session")
def small_corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """ADI (82 docs) from ../shared/data when present, else a few stdlib modules' docs."""
    adi = SHARED_DATA / "adi" / "corpus.jsonl"
    if adi.is_file():
        return adi
    from neuralir.index.demo_corpus import build_demo_corpus

    return build_demo_corpus(tmp_path_factory.mktemp("corpus"), modules=SMALL_DEMO_MODULES)


@pytest.fixture(scope="session")
def small_index(
    tmp_path_factory: pytest.TempPathFactory, small_corpus: Path, bi_encoder_dir: Path
) -> Path:
    """The small corpus indexed with the int8 bi-encoder (built once per session)."""
    from neuralir.index.build import IndexBuildSettings, build_index
    from neuralir.models.encoder import Encoder

    out = tmp_path_factory.mktemp("index") / "small"
    encoder = Encoder(bi_encoder_dir)
    build_index(small_corpus, out, encoder, IndexBuildSettings(threads=1), progress=False)
    return out


@pytest.fixture(scope="session")
def rerank_models(
    cross_encoder_dir: Path, fp32_cross_encoder_dir: Path, small_cross_encoder_dir: Path
) -> tuple:
    """Three served rerankers: the int8 default, its fp32 original and the small one."""
    return (
        ("default", cross_encoder_dir),
        ("fp32", fp32_cross_encoder_dir),
        ("small", small_cross_encoder_dir),
    )


@pytest.fixture(scope="session")
def all_in_one(
    bi_encoder_dir: Path, rerank_models: tuple, small_index: Path
) -> Iterator[EmbeddedServer]:
    """Every service in this process (EmbeddedServer) on 127.0.0.1 port 0, warm."""
    from servers import embedded, server_settings

    settings = server_settings(bi_encoder_dir, rerank_models, small_index)
    with embedded(settings) as server:
        yield server


@pytest.fixture(scope="session")
def client(all_in_one: EmbeddedServer) -> Iterator[NeuralIRClient]:
    """A blocking client of the all-in-one server; no retries, so failures show as they are."""
    from neuralir.client import NeuralIRClient

    with NeuralIRClient(target=all_in_one.address, max_attempts=1, timeout_s=30.0) as c:
        c.wait_ready(timeout_s=60, service="neuralir.v1.SearchService")
        yield c


@pytest.fixture(scope="session")
def small_corpus_docs(small_corpus: Path) -> list:
    """The small corpus's documents (CorpusDoc), in file order."""
    from neuralir.index.corpus import iter_corpus

    return list(iter_corpus(small_corpus))
