"""The demo corpus (Python's own documentation): contents, determinism, and a real search."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from neuralir.index.build import IndexBuildSettings, build_index
from neuralir.index.corpus import iter_corpus
from neuralir.index.demo_corpus import EXCLUDED_PACKAGES, MAX_TEXT_CHARS, build_demo_corpus
from neuralir.index.store import IndexStore
from neuralir.models.encoder import Encoder
from neuralir.models.ranking import convex_fusion, reciprocal_rank_fusion
from neuralir.server.pipeline.search import FusionDefaults

MODULES = (
    "subprocess",
    "json",
    "shutil",
    "os",
    "re",
    "pathlib",
    "datetime",
    "csv",
    "sqlite3",
    "glob",
    "tempfile",
)
SHELL_QUERY = "run a shell command and capture its output"


@pytest.fixture(scope="module")
def small_corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_demo_corpus(tmp_path_factory.mktemp("demo"), MODULES)


@pytest.fixture(scope="module")
def small_store(
    small_corpus: Path, tmp_path_factory: pytest.TempPathFactory, bi_encoder_dir: Path
) -> Iterator[tuple[IndexStore, Encoder]]:
    encoder = Encoder(bi_encoder_dir)
    out = tmp_path_factory.mktemp("demo-index") / "index"
    build_index(small_corpus, out, encoder, IndexBuildSettings(), progress=False)
    store = IndexStore.open(out, encoder.model_id)
    yield store, encoder
    store.close()


def test_restricted_corpus_holds_only_those_modules(small_corpus: Path) -> None:
    docs = list(iter_corpus(small_corpus))  # also proves it is valid BEIR layout
    assert 150 < len(docs) < 600
    roots = {d.doc_id.split(".")[0] for d in docs}
    assert roots <= set(MODULES)
    ids = {d.doc_id for d in docs}
    assert {"subprocess", "subprocess.run", "subprocess.check_output", "json.dumps"} <= ids
    assert "pathlib.Path.read_text" in ids  # public methods of public classes are in
    for doc in docs:
        assert not any(part.startswith("_") for part in doc.doc_id.split("."))
        assert doc.title.startswith(doc.doc_id)
        assert 0 < len(doc.text) <= MAX_TEXT_CHARS


def test_shell_query_finds_subprocess_dense_and_hybrid(
    small_store: tuple[IndexStore, Encoder],
) -> None:
    store, encoder = small_store
    dense = store.dense_search(encoder.encode([SHELL_QUERY])[0], 100)
    lexical = store.lexical_search(SHELL_QUERY, 100)
    rrf = reciprocal_rank_fusion([[d for d, _ in dense], [d for d, _ in lexical]])
    fusion = FusionDefaults()  # the search service's default fusion
    convex = convex_fusion(dense, lexical, fusion.dense_weight, fusion.normalization)
    for name, ranking in (("dense", dense), ("hybrid rrf", rrf), ("hybrid convex", convex)):
        top5 = [doc_id for doc_id, _ in ranking[:5]]
        assert any(d.startswith("subprocess") for d in top5), f"{name} top 5: {top5}"


@pytest.mark.slow
def test_full_corpus_is_deterministic_and_clean(tmp_path: Path) -> None:
    first = build_demo_corpus(tmp_path / "a")
    second = build_demo_corpus(tmp_path / "b")
    assert first.read_bytes() == second.read_bytes()
    docs = list(iter_corpus(first))  # raises on duplicate ids
    assert len(docs) > 3000
    ids = {d.doc_id for d in docs}
    assert {"subprocess.run", "json", "pydoc_data.topics.assert", "pathlib.Path"} <= ids
    for doc in docs:
        parts = doc.doc_id.split(".")
        assert parts[0] == "pydoc_data" or parts[0] not in EXCLUDED_PACKAGES, doc.doc_id
        # Test subpackages inside library packages are skipped too (a function named test is not).
        assert not doc.doc_id.startswith(("unittest.test.", "ctypes.test.")), doc.doc_id
        if parts[0] != "pydoc_data":
            assert not any(p.startswith("_") for p in parts), doc.doc_id
    # Sources are parsed, never imported: modules with import side effects stay unloaded.
    assert "antigravity" not in sys.modules
    assert "this" not in sys.modules
