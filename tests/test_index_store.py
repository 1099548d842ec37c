"""Index build and store: real int8 encoder, real usearch/bm25s/SQLite indexes, no mocks."""

from __future__ import annotations

import datetime
import hashlib
import json
import logging
import os
import random
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from neuralir.index.build import IndexBuildError, IndexBuildSettings, build_index
from neuralir.index.corpus import CorpusError, iter_corpus
from neuralir.index.format import IndexLoadError
from neuralir.index.store import IndexStore
from neuralir.models.encoder import Encoder

# Forty short documents on unrelated topics. "axolotl" appears once; "run"/"runs" only in
# marathon (stemming test); "stopwords-only" has no indexable term at all.
DOCS: dict[str, tuple[str, str]] = {
    "axolotl": ("Axolotl", "The axolotl is a salamander that keeps its larval gills all its life."),
    "marathon": ("Marathon", "She runs forty kilometres every weekend to train for the race."),
    "photosynthesis": (
        "Photosynthesis",
        "Plants turn sunlight, water and carbon dioxide into sugar.",
    ),
    "volcano": ("Volcanoes", "Magma rises through the crust and erupts as lava and ash."),
    "tides": ("Tides", "The gravitational pull of the moon raises tides on the oceans."),
    "bread": ("Baking bread", "Yeast ferments the dough, producing gas that makes bread rise."),
    "chess": ("Chess openings", "The Sicilian Defence answers the king's pawn opening with c5."),
    "vaccine": ("Vaccines", "A vaccine trains the immune system to recognise a pathogen."),
    "inflation": ("Inflation", "Central banks raise interest rates to slow rising prices."),
    "guitar": ("Guitar tuning", "Standard tuning sets the six strings to E A D G B E."),
    "glacier": ("Glaciers", "Compacted snow becomes ice that flows slowly downhill."),
    "compiler": ("Compilers", "A compiler translates source code into machine instructions."),
    "coffee": ("Coffee", "Roasting green coffee beans develops their aroma and bitterness."),
    "eclipse": ("Solar eclipse", "The moon passes between the sun and earth, casting a shadow."),
    "bees": ("Honey bees", "Worker bees dance to tell the hive where flowers are."),
    "rome": ("Ancient Rome", "Augustus became the first emperor after the republic fell."),
    "dna": ("DNA", "The double helix stores genetic information in base pairs."),
    "tennis": ("Tennis scoring", "Points go love, fifteen, thirty, forty, then game."),
    "origami": ("Origami", "Paper is folded without cuts or glue into cranes and boxes."),
    "blackhole": ("Black holes", "Nothing, not even light, escapes past the event horizon."),
    "sourdough": ("Sourdough starter", "Wild yeast and lactobacilli leaven the loaf slowly."),
    "tsunami": ("Tsunamis", "Undersea earthquakes push huge waves across the ocean."),
    "jazz": ("Jazz", "Improvisation over chord changes defines much of jazz music."),
    "password": ("Passwords", "Long passphrases resist brute-force guessing better."),
    "recycling": ("Recycling", "Sorted plastics, glass and metals are melted and reused."),
    "telescope": ("Telescopes", "A mirror gathers faint starlight and focuses it to an image."),
    "mushroom": ("Mushrooms", "Fungi spread through the soil as threads called mycelium."),
    "sleep": ("Sleep", "Deep sleep helps the brain consolidate memories overnight."),
    "bridge": ("Suspension bridges", "Cables hung from towers carry the deck of the bridge."),
    "pyramids": ("Pyramids of Giza", "Egyptian pharaohs were buried in great stone pyramids."),
    "rainbow": ("Rainbows", "Raindrops refract and reflect sunlight into a spectrum."),
    "cheese": ("Cheese making", "Rennet curdles milk; the curds are pressed and aged."),
    "wolves": ("Wolves", "Wolf packs hunt deer and elk across the northern forests."),
    "battery": ("Lithium batteries", "Lithium ions move between electrodes as cells charge."),
    "haiku": ("Haiku", "A haiku has three lines of five, seven and five syllables."),
    "knots": ("Sailing knots", "The bowline makes a fixed loop that will not slip."),
    "vitamin": ("Vitamin C", "Citrus fruits prevent scurvy by supplying ascorbic acid."),
    "earthquake": ("Earthquakes", "Stress along faults is released as seismic waves."),
    "printing": ("Printing press", "Gutenberg's movable type made books cheap and common."),
    "stopwords-only": ("", "the and of it is was"),
}


def write_corpus(path: Path, docs: dict[str, tuple[str, str]], suffix: str = "") -> Path:
    with path.open("w", encoding="utf-8") as handle:
        for doc_id, (title, text) in docs.items():
            record = {"_id": doc_id + suffix, "title": title, "text": text}
            handle.write(json.dumps(record) + "\n")
    return path


def passage(doc_id: str) -> str:
    title, text = DOCS[doc_id]
    return f"{title} {text}" if title else text


def siblings(out_dir: Path) -> list[str]:
    return sorted(p.name for p in out_dir.parent.iterdir() if p.name.startswith(out_dir.name))


@pytest.fixture(scope="module")
def encoder(bi_encoder_dir: Path) -> Encoder:
    return Encoder(bi_encoder_dir)


@pytest.fixture(scope="module")
def corpus_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_corpus(tmp_path_factory.mktemp("corpus") / "corpus.jsonl", DOCS)


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory, corpus_path: Path, encoder: Encoder) -> Path:
    out = tmp_path_factory.mktemp("index") / "index"
    build_index(corpus_path, out, encoder, IndexBuildSettings(batch_size=16), progress=False)
    return out


@pytest.fixture(scope="module")
def store(built: Path, encoder: Encoder) -> Iterator[IndexStore]:
    opened = IndexStore.open(built, expected_encoder_model_id=encoder.model_id)
    yield opened
    opened.close()


@pytest.fixture
def version_copy(built: Path, tmp_path: Path) -> Path:
    """A private copy of the published version, free to damage."""
    return Path(shutil.copytree(built.resolve(), tmp_path / "copy"))


# ---------------------------------------------------------------- corpus reader


def test_corpus_reader_names_file_and_line(tmp_path: Path) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_text('{"_id": "a", "text": "x"}\n\n{"_id": "b", "text": \n')
    with pytest.raises(CorpusError, match=r"bad\.jsonl:3: malformed JSON"):
        list(iter_corpus(path))
    path.write_text('{"_id": "a", "text": "x"}\n{"title": "t", "text": "y"}\n')
    with pytest.raises(CorpusError, match=r"bad\.jsonl:2: missing _id"):
        list(iter_corpus(path))
    path.write_text('{"_id": "a", "text": "x"}\n{"_id": "a", "text": "y"}\n')
    with pytest.raises(
        CorpusError, match=r"bad\.jsonl:2: duplicate _id 'a' \(first seen on line 1"
    ):
        list(iter_corpus(path))


def test_corpus_reader_refuses_numeric_ids_and_accepts_a_missing_title(tmp_path: Path) -> None:
    # More hostile input in tests/test_index_input.py.
    path = tmp_path / "ok.jsonl"
    path.write_text('{"_id": 7, "text": "seven"}\n')
    with pytest.raises(CorpusError, match=r'ok\.jsonl:1: _id is the number 7.* \("_id": "7"\)'):
        list(iter_corpus(path))
    path.write_text('{"_id": "7", "text": "seven"}\n')
    [doc] = iter_corpus(path)
    assert (doc.doc_id, doc.title, doc.passage) == ("7", "", "seven")


# ---------------------------------------------------------------- search and documents


def test_dense_search_finds_a_documents_own_text_first(store: IndexStore, encoder: Encoder) -> None:
    for doc_id in ("axolotl", "compiler", "haiku", "rome"):
        vector = encoder.encode([passage(doc_id)], kind="passage")[0]
        hits = store.dense_search(vector, 5)
        assert hits[0][0] == doc_id
        # Not 1e-6: int8 dynamic quantization scales activations per batch, so a text encoded
        # alone and inside a build batch differ slightly (cosine ~0.993 measured).
        assert hits[0][1] == pytest.approx(1.0, abs=0.02)
        assert [s for _, s in hits] == sorted((s for _, s in hits), reverse=True)


def test_dense_search_clamps_k(store: IndexStore, encoder: Encoder) -> None:
    vector = encoder.encode(["ocean waves"])[0]
    assert len(store.dense_search(vector, 10_000)) == len(DOCS)
    assert store.dense_search(vector, 0) == []
    with pytest.raises(ValueError, match="dimensions"):
        store.dense_search(vector[:10], 3)


def test_ef_override_matches_exact_search(store: IndexStore, built: Path, encoder: Encoder) -> None:
    query = encoder.encode(["animals living in water"])[0]
    from usearch.index import Index  # after onnxruntime (see neuralir.index.store)

    # Ground truth: usearch's exhaustive search over the very vectors stored in the file; its
    # keys are document ordinals, i.e. positions in the corpus.
    exact_index = Index.restore(built / "dense.usearch", view=True)
    assert exact_index is not None
    exact_keys = exact_index.search(query, 10, exact=True, threads=1).keys
    exact = store.get_documents([list(DOCS)[int(k)] for k in exact_keys])[0]
    # Alternate settings: changing ef on a memory-mapped index must keep working.
    for ef in (400, 1, 0, 400):
        hits = store.dense_search(query, 10, ef=ef)
        assert len(hits) == 10
        if ef == 400:
            assert [d for d, _ in hits] == [d.doc_id for d in exact]


def test_dense_search_with_two_threads_after_ef_change(built: Path, encoder: Encoder) -> None:
    # After view(), a changed expansion with threads > 1 has been seen to raise in usearch.
    two = IndexStore.open(built, encoder.model_id, search_threads=2)
    try:
        query = encoder.encode(["how do volcanoes erupt"])[0]
        assert two.dense_search(query, 3, ef=128)[0][0] == "volcano"
        assert two.dense_search(query, 3)[0][0] == "volcano"
    finally:
        two.close()


def test_zero_vector_warm_up_does_not_fail(store: IndexStore) -> None:
    hits = store.dense_search(np.zeros(store.info.dimension, dtype=np.float32), 3)
    assert len(hits) == 3


def test_lexical_search_finds_a_rare_word(store: IndexStore) -> None:
    hits = store.lexical_search("Axolotl", 10)
    assert hits[0][0] == "axolotl"
    assert all(score > 0 for _, score in hits)
    assert [d for d, _ in hits] == ["axolotl"]  # no other document has the term


def test_lexical_search_stems_queries_like_documents(store: IndexStore) -> None:
    # The document says "runs"; both stem to "run".
    assert [d for d, _ in store.lexical_search("running", 5)] == ["marathon"]


def test_lexical_search_ranks_by_score(store: IndexStore) -> None:
    hits = store.lexical_search("moon sun shadow eclipse", 100)
    assert hits[0][0] == "eclipse"
    assert "tides" in [d for d, _ in hits]
    scores = [s for _, s in hits]
    assert scores == sorted(scores, reverse=True)
    assert len(store.lexical_search("moon sun shadow eclipse", 1)) == 1


@pytest.mark.parametrize("query", ["", "   ", "the and of", "qwertyuiop zxcvbnm", "a"])
def test_lexical_search_without_known_terms_is_empty(store: IndexStore, query: str) -> None:
    assert store.lexical_search(query, 10) == []


def test_get_documents_keeps_order_and_reports_missing(store: IndexStore) -> None:
    found, missing = store.get_documents(["tides", "nope", "axolotl", "tides", "gone"])
    assert [d.doc_id for d in found] == ["tides", "axolotl", "tides"]
    assert (found[1].title, found[1].text) == DOCS["axolotl"]
    assert missing == ["nope", "gone"]
    assert store.get_documents([]) == ([], [])


def test_info_describes_the_build(store: IndexStore, encoder: Encoder, corpus_path: Path) -> None:
    info = store.info
    assert (info.size, info.dimension) == (len(DOCS), encoder.dimension)
    assert (info.metric, info.dtype) == ("ip", "f32")
    assert (info.connectivity, info.expansion_add, info.expansion_search) == (16, 128, 64)
    assert info.encoder_model_id == encoder.model_id
    assert info.corpus_sha256 == hashlib.sha256(corpus_path.read_bytes()).hexdigest()
    assert "k1=0.9" in info.bm25_parameters
    assert "b=0.4" in info.bm25_parameters
    assert "stemmer=english" in info.bm25_parameters
    built_at = datetime.datetime.fromisoformat(info.built_at)
    assert built_at.tzinfo is not None


@pytest.mark.parametrize(("dtype", "metric"), [("f16", "ip"), ("bf16", "ip"), ("i8", "cos")])
def test_other_storage_dtypes_build_and_search(
    tmp_path: Path, corpus_path: Path, encoder: Encoder, dtype: str, metric: str
) -> None:
    settings = IndexBuildSettings(dtype=dtype, stemmer="", expansion_search=32)
    info = build_index(corpus_path, tmp_path / "index", encoder, settings, progress=False)
    assert (info.dtype, info.metric, info.expansion_search) == (dtype, metric, 32)
    assert "stemmer=none" in info.bm25_parameters
    opened = IndexStore.open(tmp_path / "index", encoder.model_id)
    try:
        for doc_id in ("glacier", "jazz"):
            vector = encoder.encode([passage(doc_id)], kind="passage")[0]
            top_id, top_score = opened.dense_search(vector, 3, ef=64)[0]
            assert top_id == doc_id
            assert top_score == pytest.approx(1.0, abs=0.02)
        # Without a stemmer "running" is not "runs".
        assert opened.lexical_search("running", 5) == []
        assert opened.lexical_search("runs", 5)[0][0] == "marathon"
    finally:
        opened.close()


# ---------------------------------------------------------------- integrity checks


@pytest.mark.parametrize(
    "name", ["dense.usearch", "docs.sqlite", "bm25/data.csc.index.npy", "bm25/vocab.index.json"]
)
def test_altered_file_is_refused_by_name(version_copy: Path, name: str) -> None:
    path = version_copy / name
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(IndexLoadError, match=rf"{name}.*sha256"):
        IndexStore.open(version_copy)


@pytest.mark.parametrize("name", ["dense.usearch", "docs.sqlite", "bm25/indptr.csc.index.npy"])
def test_truncated_file_is_refused_by_name(version_copy: Path, name: str) -> None:
    path = version_copy / name
    with path.open("r+b") as handle:
        handle.truncate(path.stat().st_size - 7)
    with pytest.raises(IndexLoadError, match=rf"{name} is \d+ bytes.*truncated"):
        IndexStore.open(version_copy)


def test_missing_file_and_missing_index_are_refused(version_copy: Path, tmp_path: Path) -> None:
    (version_copy / "docs.sqlite").unlink()
    with pytest.raises(IndexLoadError, match=r"docs\.sqlite is missing"):
        IndexStore.open(version_copy)
    with pytest.raises(IndexLoadError, match="no index at"):
        IndexStore.open(tmp_path / "nothing-here")


def test_index_from_another_encoder_is_refused(built: Path, version_copy: Path) -> None:
    with pytest.raises(
        IndexLoadError, match=r"built with encoder '.+', but queries .* 'other-model@1234'"
    ):
        IndexStore.open(built, expected_encoder_model_id="other-model@1234")
    # The recorded id is what counts: an index.json naming another encoder is refused too.
    record_path = version_copy / "index.json"
    record = json.loads(record_path.read_text())
    real_id = record["info"]["encoder_model_id"]
    record["info"]["encoder_model_id"] = "some-other-encoder@abcdef"
    record_path.write_text(json.dumps(record))
    with pytest.raises(IndexLoadError, match="some-other-encoder@abcdef"):
        IndexStore.open(version_copy, expected_encoder_model_id=real_id)


# ---------------------------------------------------------------- publishing and failures


def test_failed_build_keeps_the_previous_index(tmp_path: Path, encoder: Encoder) -> None:
    small = dict(list(DOCS.items())[:6])
    out = tmp_path / "index"
    first = build_index(write_corpus(tmp_path / "a.jsonl", small), out, encoder, progress=False)
    bad = tmp_path / "bad.jsonl"
    lines = write_corpus(tmp_path / "b.jsonl", small, suffix="-b").read_text().splitlines()
    bad.write_text("\n".join([*lines[:3], '{"_id": "broken", "text": ', *lines[3:]]) + "\n")
    with pytest.raises(CorpusError, match=r"bad\.jsonl:4: malformed JSON"):
        build_index(bad, out, encoder, progress=False)
    assert [n for n in siblings(out) if ".tmp" in n] == []
    opened = IndexStore.open(out, encoder.model_id)
    assert opened.info.corpus_sha256 == first.corpus_sha256
    assert opened.lexical_search("axolotl", 3)[0][0] == "axolotl"
    opened.close()
    # An empty corpus fails the same way.
    (tmp_path / "empty.jsonl").write_text("\n")
    with pytest.raises(IndexBuildError, match="no documents"):
        build_index(tmp_path / "empty.jsonl", out, encoder, progress=False)
    assert IndexStore.open(out).info.corpus_sha256 == first.corpus_sha256


def test_rebuild_swaps_versions_and_max_docs_limits(tmp_path: Path, encoder: Encoder) -> None:
    out = tmp_path / "index"
    corpus = write_corpus(tmp_path / "c.jsonl", DOCS)
    build_index(corpus, out, encoder, IndexBuildSettings(max_docs=5), progress=False)
    first_version = out.resolve()
    info = build_index(corpus, out, encoder, IndexBuildSettings(max_docs=3), progress=False)
    assert info.size == 3
    assert out.is_symlink()
    assert out.resolve() != first_version
    assert not first_version.exists()  # the old version is removed after the swap
    assert siblings(out) == ["index", out.resolve().name]


def test_refuses_to_replace_a_plain_directory(tmp_path: Path, encoder: Encoder) -> None:
    out = tmp_path / "precious"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    corpus = write_corpus(tmp_path / "c.jsonl", dict(list(DOCS.items())[:2]))
    with pytest.raises(IndexBuildError, match="not an index published by"):
        build_index(corpus, out, encoder, progress=False)
    assert (out / "keep.txt").read_text() == "mine"
    with pytest.raises(IndexBuildError, match="dtype"):
        build_index(corpus, tmp_path / "x", encoder, IndexBuildSettings(dtype="f64"))


# A builder process that can kill itself with SIGKILL just before or just after the link swap;
# otherwise the test kills it after a random delay.
_CHILD = textwrap.dedent(
    """
    import os, signal, sys
    from pathlib import Path
    mode, model_dir, corpus, out = sys.argv[1:5]
    real_replace = os.replace

    def replace(src, dst, **kwargs):
        if Path(dst) == Path(out) and mode == "before-swap":
            os.kill(os.getpid(), signal.SIGKILL)
        real_replace(src, dst, **kwargs)
        if Path(dst) == Path(out) and mode == "after-swap":
            os.kill(os.getpid(), signal.SIGKILL)

    os.replace = replace
    from neuralir.models.encoder import Encoder
    from neuralir.index.build import IndexBuildSettings, build_index
    encoder = Encoder(Path(model_dir))
    print("ready", flush=True)
    build_index(Path(corpus), Path(out), encoder, IndexBuildSettings(batch_size=8), progress=False)
    print("done", flush=True)
    """
)


def _run_child(mode: str, model_dir: Path, corpus: Path, out: Path, delay: float) -> None:
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    args = [sys.executable, "-c", _CHILD, mode, str(model_dir), str(corpus), str(out)]
    with subprocess.Popen(args, stdout=subprocess.PIPE, text=True, env=env) as child:
        assert child.stdout is not None
        assert child.stdout.readline().strip() == "ready"
        if mode == "random":
            time.sleep(delay)
            child.send_signal(signal.SIGKILL)
        child.communicate(timeout=120)


@pytest.mark.slow
def test_sigkill_during_build_leaves_a_servable_index(
    tmp_path: Path, encoder: Encoder, bi_encoder_dir: Path
) -> None:
    out = tmp_path / "index"
    old = build_index(write_corpus(tmp_path / "old.jsonl", DOCS), out, encoder, progress=False)
    # 800 short documents: ~2 s of encoding on two busy cores, so most random kills land in it.
    many = {f"{d}-{i}": v for i in range(20) for d, v in DOCS.items()}
    new_corpus = write_corpus(tmp_path / "new.jsonl", many)
    new_sha = hashlib.sha256(new_corpus.read_bytes()).hexdigest()
    runs = [("before-swap", 0.0), ("after-swap", 0.0)]
    runs += [("random", random.uniform(0.0, 1.5)) for _ in range(3)]
    for mode, delay in runs:
        what = f"{mode} (delay {delay:.2f} s)"
        _run_child(mode, bi_encoder_dir, new_corpus, out, delay)
        leftovers = [n for n in siblings(out) if ".tmp" in n or ".link" in n]
        logging.getLogger(__name__).info("%s left %s", what, leftovers)
        opened = IndexStore.open(out, encoder.model_id)
        try:
            sha = opened.info.corpus_sha256
            assert sha in (old.corpus_sha256, new_sha), what
            if mode == "before-swap":
                assert sha == old.corpus_sha256, what
            if mode == "after-swap":
                assert sha == new_sha, what
            assert opened.lexical_search("axolotl", 1)[0][0].startswith("axolotl"), what
            vector = encoder.encode([passage("haiku")], kind="passage")[0]
            assert opened.dense_search(vector, 1)[0][0].startswith("haiku"), what
        finally:
            opened.close()
        # The published version stays; the killed build's leftovers (its lock file among
        # them) wait for the next build, which they do not block and which removes them.
        build_index(write_corpus(tmp_path / "old.jsonl", DOCS), out, encoder, progress=False)
        assert siblings(out) == ["index", out.resolve().name], what
        assert not (tmp_path / ".index.lock").exists(), what
