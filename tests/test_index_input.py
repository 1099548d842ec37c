"""Hostile input to `neuralir index build`: every bad corpus or setting fails with one
`error:` line naming the file and line, exit code 2, no traceback, and leaves nothing behind
(no temporary directory, no lock file, the previous index intact). Real builds with the real
int8 encoder, through the real command where the exit code and stderr matter."""

from __future__ import annotations

import json
import logging
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest
from test_cli import neuralir

from neuralir.index.build import IndexBuildError, IndexBuildSettings, build_index
from neuralir.index.corpus import (
    DEFAULT_MAX_DOC_CHARS,
    MAX_ID_CHARS,
    CorpusError,
    iter_corpus,
    read_lines,
)
from neuralir.index.shard_build import build_sharded_index
from neuralir.index.shard_map import SHARD_MAP_FILE, read_shard_map, shard_of
from neuralir.index.store import IndexStore
from neuralir.models.encoder import Encoder

GOOD = [
    {"_id": "volcano", "title": "Volcanoes", "text": "Magma rises through the crust as lava."},
    {"_id": "tides", "title": "Tides", "text": "The moon raises tides on the oceans."},
    {"_id": "bread", "title": "Bread", "text": "Yeast ferments the dough and it rises."},
]


def jsonl(*records: dict) -> bytes:
    return b"".join(json.dumps(r).encode() + b"\n" for r in records)


def write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def leftovers(directory: Path) -> list[str]:
    """Everything a build may leave beside its output: temporaries, links, lock files."""
    return sorted(p.name for p in directory.iterdir() if p.name.startswith(".") or ".tmp" in p.name)


@pytest.fixture(scope="module")
def encoder(bi_encoder_dir: Path) -> Encoder:
    return Encoder(bi_encoder_dir)


# ---------------------------------------------------------------- the reader, line by line


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (
            jsonl(GOOD[0]) + b'{"_id": "cafe", "text": "caf\xe9 au lait"}\n',
            r"c\.jsonl:2: not UTF-8 \(invalid continuation byte: byte 0xE9 at byte 28 of the "
            r"line, 119 of the file\): convert the file to UTF-8",
        ),
        (bytes(range(256)) * 4, r"c\.jsonl:1: NUL byte at byte 0 of the line: a binary"),
        ("é".encode("utf-16"), r"c\.jsonl:1: NUL byte at byte 3 .* UTF-16"),
        (b'{"_id": 7, "text": "seven"}\n', r':1: _id is the number 7, not a string: quote it'),
        (b'{"_id": 7.5, "text": "x"}\n', r":1: _id is the number 7.5, not a string"),
        (b'{"_id": true, "text": "x"}\n', r":1: _id is a boolean, not a string"),
        (b'{"_id": null, "text": "x"}\n', r":1: _id is null, not a string"),
        (b'{"text": "x"}\n', r":1: missing _id"),
        (b'{"_id": "", "text": "x"}\n', r":1: empty _id"),
        (b'{"_id": "a\\u0000b", "text": "x"}\n', r":1: _id 'a\\x00b' holds the control .* U\+0000"),
        (b'{"_id": "a\\tb", "text": "x"}\n', r":1: _id 'a\\tb' holds the control .* U\+0009"),
        (b'{"_id": "a\\u0085", "text": "x"}\n', r"control character U\+0085"),
        (b'{"_id": " a", "text": "x"}\n', r":1: _id ' a' starts or ends with whitespace"),
        (b'{"_id": "a\\ud800", "text": "x"}\n', r":1: _id holds an unpaired surrogate \\ud800"),
        (b'{"_id": "a", "text": "x \\udfff"}\n', r":1: text of 'a' holds an unpaired surrogate"),
        (b'{"_id": "a", "title": 3, "text": "x"}\n', r":1: title of 'a' is a number"),
        (b'{"_id": "a", "text": ["x"]}\n', r":1: text of 'a' is an array, not a string"),
        (b'{"_id": "a", "text": "x"}\n["a"]\n', r":2: expected a JSON object, got an array"),
    ],
    ids=[
        "latin-1", "binary", "utf-16", "int-id", "float-id", "bool-id", "null-id",
        "missing-id", "empty-id", "nul-in-id", "tab-in-id", "c1-in-id", "space-around-id",
        "surrogate-in-id", "surrogate-in-text", "number-title", "array-text", "array-line",
    ],
)  # fmt: skip
def test_reader_names_file_and_line(tmp_path: Path, data: bytes, expected: str) -> None:
    path = write(tmp_path / "c.jsonl", data)
    with pytest.raises(CorpusError, match=expected):
        list(iter_corpus(path))


def test_reader_refuses_a_long_id(tmp_path: Path) -> None:
    path = write(tmp_path / "c.jsonl", jsonl({"_id": "x" * (MAX_ID_CHARS + 1), "text": "t"}))
    with pytest.raises(CorpusError, match=r":1: _id 'x+'\.\.\. is 1,025 characters, over"):
        list(iter_corpus(path))
    write(path, jsonl({"_id": "x" * MAX_ID_CHARS, "text": "t"}))
    assert [d.doc_id for d in iter_corpus(path)] == ["x" * MAX_ID_CHARS]


def test_reader_accepts_what_beir_writes(tmp_path: Path) -> None:
    """Missing or null titles, non-ASCII text, CRLF line ends, blank lines, empty text."""
    data = (
        b'{"_id": "a", "text": "caf\xc3\xa9"}\r\n\n'
        b'{"_id": "b", "title": null, "text": ""}\n'
        b'{"_id": "c d", "title": "T", "text": "\\u00e9t\\u00e9 \\ud83d\\ude00"}'  # no final \n
    )
    docs = list(iter_corpus(write(tmp_path / "c.jsonl", data)))
    assert [(d.doc_id, d.title, d.text, d.line) for d in docs] == [
        ("a", "", "café", 1),
        ("b", "", "", 3),
        ("c d", "T", "été \U0001f600", 4),
    ]


def test_reader_refuses_or_cuts_a_document_over_the_limit(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    long = {"_id": "long", "title": "Title", "text": "word " * 40}  # 205 characters
    path = write(tmp_path / "c.jsonl", jsonl(GOOD[0], long))
    with pytest.raises(
        CorpusError,
        match=r"c\.jsonl:2: document 'long' is 205 characters \(title \+ text\), over the limit "
        r"of 100: raise the limit \(--max-doc-chars\) or cut .* \(--truncate-long-docs\)",
    ):
        list(iter_corpus(path, max_doc_chars=100))
    with caplog.at_level(logging.WARNING, logger="neuralir.index.corpus"):
        docs = list(iter_corpus(path, max_doc_chars=100, truncate=True))
    assert (docs[1].title, len(docs[1].text)) == ("Title", 95)
    assert docs[0] == next(iter_corpus(path))
    assert "c.jsonl:2: document 'long' is 205 characters (title + text): cut to 100" in caplog.text
    assert len(list(iter_corpus(path, max_doc_chars=None))[1].text) == 200
    assert DEFAULT_MAX_DOC_CHARS == 200_000


def test_reader_stops_at_a_line_too_long_and_names_unreadable_files(tmp_path: Path) -> None:
    path = write(tmp_path / "c.jsonl", b"x" * 1000 + b"\n")
    with pytest.raises(CorpusError, match=r"c\.jsonl:1: line is over 100 bytes"):
        list(read_lines(path, line_bytes=100))
    assert list(read_lines(path, line_bytes=1001)) == [(1, "x" * 1000)]
    (tmp_path / "d").mkdir()
    with pytest.raises(CorpusError, match=r"d: cannot read \(Is a directory\)"):
        list(iter_corpus(tmp_path / "d"))


# ---------------------------------------------------------------- the command


def build_cli(
    corpus: Path, out: Path, bi_encoder_dir: Path, *extra: str
) -> subprocess.CompletedProcess[str]:
    args = ["index", "build", "--corpus", str(corpus), "--out", str(out)]
    return neuralir(*args, "--encoder-model", str(bi_encoder_dir), "--threads", "1", *extra)


def assert_failed(result: subprocess.CompletedProcess[str], message: str) -> None:
    """One `error:` line with `message`, exit code 2, no traceback."""
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, result.stderr
    assert message in errors[0], result.stderr


HOSTILE: dict[str, tuple[Callable[[Path], bytes], str]] = {
    # name: (the corpus's bytes, what the error line says after the corpus path)
    "latin-1": (
        lambda _: jsonl(GOOD[0]) + '{"_id": "b", "text": "café"}\n'.encode("latin-1"),
        ":2: not UTF-8 (invalid continuation byte: byte 0xE9 at byte 25 of the line",
    ),
    "binary": (lambda _: bytes(range(256)) * 16, ":1: NUL byte at byte 0 of the line: a binary"),
    "5 MB document": (
        lambda _: jsonl(GOOD[0], {"_id": "big", "text": "lava " * 1_000_000}),
        ":2: document 'big' is 5,000,000 characters (title + text), over the limit of 200,000",
    ),
    "numeric id": (
        lambda _: jsonl(GOOD[0], {"_id": 17, "text": "seventeen"}),
        ':2: _id is the number 17, not a string: quote it ("_id": "17")',
    ),
    "NUL in id": (
        lambda _: jsonl({"_id": "a\x00b", "text": "volcano"}),
        ":1: _id 'a\\x00b' holds the control character U+0000",
    ),
    "only empty text": (
        lambda _: jsonl({"_id": "a", "title": "", "text": ""}),
        ": none of its 1 documents (the first on line 1) has a term BM25 can index",
    ),
    "only stopwords": (
        lambda _: jsonl({"_id": "a", "text": ""}, {"_id": "b", "title": "The", "text": "a of it"}),
        ": none of its 2 documents (the first on line 1) has a term BM25 can index",
    ),
    "unpaired surrogate": (
        lambda _: jsonl(GOOD[0]) + b'{"_id": "s", "text": "bad \\ud800"}\n',
        ":2: text of 's' holds an unpaired surrogate \\ud800",
    ),
}


@pytest.mark.parametrize("name", list(HOSTILE))
def test_hostile_corpus_fails_with_one_named_error_and_leaves_nothing(
    tmp_path: Path, bi_encoder_dir: Path, name: str
) -> None:
    make, message = HOSTILE[name]
    corpus = write(tmp_path / "corpus.jsonl", make(tmp_path))
    out = tmp_path / "new" / "index"
    result = build_cli(corpus, out, bi_encoder_dir)
    assert_failed(result, f"error: {corpus}{message}")
    assert not (tmp_path / "new").exists()  # not even the parent it would have made
    assert sorted(p.name for p in tmp_path.iterdir()) == ["corpus.jsonl"]


def test_failure_keeps_the_previous_index_and_leaves_no_lock(
    tmp_path: Path, bi_encoder_dir: Path, encoder: Encoder
) -> None:
    out = tmp_path / "index"
    first = build_index(write(tmp_path / "good.jsonl", jsonl(*GOOD)), out, encoder, progress=False)
    version = out.resolve()
    assert leftovers(tmp_path) == []  # success leaves no .index.lock
    bad = write(tmp_path / "bad.jsonl", jsonl(GOOD[0], {"_id": 2, "text": "two"}))
    assert_failed(build_cli(bad, out, bi_encoder_dir), f"error: {bad}:2: _id is the number 2")
    with pytest.raises(CorpusError):  # in-process too
        build_index(bad, out, encoder, progress=False)
    assert leftovers(tmp_path) == []
    assert out.resolve() == version
    store = IndexStore.open(out, encoder.model_id)
    try:
        assert store.info.corpus_sha256 == first.corpus_sha256
        assert store.lexical_search("magma", 3)[0][0] == "volcano"
    finally:
        store.close()


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (("--max-doc-chars", "0"), "error: max_doc_chars must be at least 1"),
        (("--shards", "0"), "error: --shards must be at least 1"),
        (("--threads", "0"), "error: threads must be at least 1"),
        (("--encoder-model", "/nonexistent/model"), "error: no manifest.json in /nonexistent"),
    ],
)
def test_bad_settings_fail_with_one_error(
    tmp_path: Path, bi_encoder_dir: Path, extra: tuple[str, ...], message: str
) -> None:
    corpus = write(tmp_path / "corpus.jsonl", jsonl(*GOOD))
    assert_failed(build_cli(corpus, tmp_path / "new" / "index", bi_encoder_dir, *extra), message)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["corpus.jsonl"]


def test_missing_corpus_and_a_directory_fail_with_one_error(
    tmp_path: Path, bi_encoder_dir: Path
) -> None:
    missing = tmp_path / "missing.jsonl"
    assert_failed(build_cli(missing, tmp_path / "i", bi_encoder_dir), f"corpus {missing} does not")
    assert_failed(build_cli(tmp_path, tmp_path / "i", bi_encoder_dir), f"corpus {tmp_path} is not")
    assert list(tmp_path.iterdir()) == []


def test_truncate_long_docs_builds_and_names_the_line(tmp_path: Path, bi_encoder_dir: Path) -> None:
    big = {"_id": "big", "text": "lava " * 1_000_000}
    corpus = write(tmp_path / "corpus.jsonl", jsonl(*GOOD, big))
    out = tmp_path / "index"
    result = build_cli(corpus, out, bi_encoder_dir, "--truncate-long-docs")
    assert result.returncode == 0, result.stderr
    warning = f"{corpus}:4: document 'big' is 5,000,000 characters (title + text): cut to 200,000"
    assert warning in result.stderr
    store = IndexStore.open(out)
    try:
        [big], _ = store.get_documents(["big"])
        assert len(big.text) == 200_000
        assert store.info.size == 4
    finally:
        store.close()
    assert leftovers(tmp_path) == []


def test_one_empty_document_among_others_is_indexed_with_a_warning(
    tmp_path: Path, bi_encoder_dir: Path
) -> None:
    empty = {"_id": "empty", "title": "", "text": ""}
    corpus = write(tmp_path / "corpus.jsonl", jsonl(GOOD[0], empty, GOOD[1]))
    result = build_cli(corpus, tmp_path / "index", bi_encoder_dir)
    assert result.returncode == 0, result.stderr
    assert f"{corpus}:2: 1 of 3 documents have no term BM25 can index" in result.stderr
    store = IndexStore.open(tmp_path / "index")
    try:
        assert store.info.size == 3
        assert [d.doc_id for d in store.get_documents(["empty"])[0]] == ["empty"]
        assert store.lexical_search("tides moon", 5)[0][0] == "tides"
    finally:
        store.close()


# ---------------------------------------------------------------- the lock


def test_the_lock_excludes_a_second_build_and_a_killed_ones_does_not(
    tmp_path: Path, encoder: Encoder
) -> None:
    from neuralir.index import build

    corpus = write(tmp_path / "c.jsonl", jsonl(*GOOD))
    out = tmp_path / "index"
    with build._build_lock(out):
        assert (tmp_path / ".index.lock").exists()
        with pytest.raises(IndexBuildError, match=r"another build of .* is running"):
            build_index(corpus, out, encoder, progress=False)
    assert leftovers(tmp_path) == []
    # A killed build's file (its flock died with it) neither blocks the next build nor stays.
    (tmp_path / ".index.lock").touch()
    assert build_index(corpus, out, encoder, progress=False).size == 3
    assert leftovers(tmp_path) == []


# ---------------------------------------------------------------- sharded builds


def _ids_in_shard(shard: int, count: int, n: int) -> list[str]:
    ids = (f"doc-{i}" for i in range(1000))
    return [i for i in ids if shard_of(i, count) == shard][:n]


def test_sharded_build_fails_before_replacing_any_shard(
    tmp_path: Path, bi_encoder_dir: Path, encoder: Encoder
) -> None:
    """Shard 1 of the new corpus has no BM25 term: the old shards all stay as they were."""
    zero, one = _ids_in_shard(0, 2, 2), _ids_in_shard(1, 2, 2)
    good = [{"_id": i, "text": f"volcano lava magma {i}"} for i in zero + one]
    out = tmp_path / "sharded"
    build_sharded_index(write(tmp_path / "g.jsonl", jsonl(*good)), out, encoder, 2, progress=False)
    before = {p.name: p.resolve() for p in out.iterdir()}
    shard_map = (out / SHARD_MAP_FILE).read_text()
    stopwords_in_one = [{"_id": i, "text": "volcano"} for i in zero] + [
        {"_id": i, "text": "the of and"} for i in one
    ]
    bad = write(tmp_path / "bad.jsonl", jsonl(*stopwords_in_one))
    result = build_cli(bad, out, bi_encoder_dir, "--shards", "2")
    assert_failed(result, f"error: shard 1 of 2: {bad}: none of its 2 documents (the first on line")
    assert "use fewer shards" in result.stderr
    assert {p.name: p.resolve() for p in out.iterdir()} == before
    assert (out / SHARD_MAP_FILE).read_text() == shard_map
    assert read_shard_map(out) is not None


def test_sharded_build_of_a_hostile_corpus_leaves_nothing(
    tmp_path: Path, bi_encoder_dir: Path
) -> None:
    bad = write(tmp_path / "bad.jsonl", jsonl(GOOD[0]) + b'{"_id": "x", "text": "\xff"}\n')
    result = build_cli(bad, tmp_path / "sharded", bi_encoder_dir, "--shards", "2")
    assert_failed(result, f"error: {bad}:2: not UTF-8 (invalid start byte: byte 0xFF")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.jsonl"]


def test_sharded_build_of_an_empty_corpus_makes_no_directory(
    tmp_path: Path, encoder: Encoder
) -> None:
    empty = write(tmp_path / "e.jsonl", b"\n")
    with pytest.raises(IndexBuildError, match="holds no documents"):
        build_sharded_index(empty, tmp_path / "s", encoder, 2, progress=False)
    assert not (tmp_path / "s").exists()


def test_settings_record_the_document_limit(tmp_path: Path, encoder: Encoder) -> None:
    corpus = write(tmp_path / "c.jsonl", jsonl(*GOOD))
    settings = IndexBuildSettings(max_doc_chars=50, truncate_long_docs=True)
    build_index(corpus, tmp_path / "index", encoder, settings, progress=False)
    record = json.loads((tmp_path / "index" / "index.json").read_text())
    assert record["settings"]["max_doc_chars"] == 50
    assert record["settings"]["truncate_long_docs"] is True
