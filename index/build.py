"""Builds an index from a BEIR corpus and publishes it atomically.

One pass over the corpus: each batch of documents goes to the SQLite store, the BM25 term
lists and the encoder, whose vectors go into usearch. Everything is written to a temporary
sibling of the output, checksummed into `index.json`, renamed to a version directory, and
published by swapping the `DIR` symlink with `os.replace` (atomic on POSIX). A build killed at
any point leaves the previous version intact behind `DIR`; the next build removes the leftovers.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import fcntl
import itertools
import json
import logging
import os
import re
import shutil
import sqlite3
import sys
import time
from collections.abc import Iterable, Iterator
from importlib import metadata
from pathlib import Path
from typing import IO, Any

import bm25s
import numpy as np

# onnxruntime must be loaded before usearch: importing usearch 2.26.6 first and onnxruntime
# 1.32.0 afterwards crashes the interpreter (SIGSEGV) on this platform.
import onnxruntime  # noqa: F401
from bm25s.stopwords import STOPWORDS_EN
from usearch.index import Index

from neuralir.index.corpus import DEFAULT_MAX_DOC_CHARS, CorpusDoc, count_lines, iter_corpus
from neuralir.index.format import (
    BM25_DIR,
    DENSE_FILE,
    DOCS_FILE,
    INFO_FILE,
    SCHEMA_VERSION,
    STOPWORDS_FILE,
    TOKEN_PATTERN,
    IndexInfo,
    LexicalAnalyzer,
)
from neuralir.index.shard_map import ShardSpec
from neuralir.models.encoder import Encoder
from neuralir.models.manifest import sha256_file

logger = logging.getLogger(__name__)

# bf16 halves memory like f16 and, on CPUs with AVX-512 BF16, has the fastest distance kernel
# (benchmarks/results: usearch-bf16 beat f32 and f16 at equal recall on every index size).
DTYPES = ("f32", "f16", "bf16", "i8")
# Names of a build's siblings of DIR: DIR.v<ns> (a version), DIR.tmp<ns>, DIR.link<ns>.
_SIBLING = re.compile(r"\.(v|tmp|link)(\d{15,})")
# Passages are sorted by length within windows of this many batches before encoding.
_SORT_WINDOW_BATCHES = 16
# Characters per encoder call, at most (one passage at least): the tokenizer reads a whole
# passage before truncating it to 256 tokens, so 64 passages of 200,000 characters in one call
# held 1.2 GB (measured). 64 passages of 16,384 characters (the API's passage limit) fit.
_MAX_CHARS_PER_CALL = 64 * 16_384


class IndexBuildError(RuntimeError):
    """A build cannot start or complete (bad settings, empty corpus, unsafe output path)."""


@dataclasses.dataclass(frozen=True)
class IndexBuildSettings:
    dtype: str = "f32"  # usearch storage: one of DTYPES
    connectivity: int = 16
    expansion_add: int = 128
    expansion_search: int = 64
    bm25_k1: float = 0.9
    bm25_b: float = 0.4
    stemmer: str = "english"  # "" = no stemming
    batch_size: int = 64  # passages per encoder call
    threads: int = 2  # usearch add threads
    max_docs: int = 0  # 0 = all (for quick tests)
    max_doc_chars: int = DEFAULT_MAX_DOC_CHARS  # title + text of one document, at most
    truncate_long_docs: bool = False  # cut a longer document to max_doc_chars instead of failing

    def validate(self) -> None:
        if self.dtype not in DTYPES:
            raise IndexBuildError(f"dtype must be one of {DTYPES}, not {self.dtype!r}")
        positive = ("connectivity", "expansion_add", "expansion_search", "batch_size", "threads")
        for name in positive:
            if getattr(self, name) < 1:
                raise IndexBuildError(f"{name} must be at least 1")
        if self.max_docs < 0:
            raise IndexBuildError("max_docs must be 0 (all) or more")
        if self.max_doc_chars < 1:
            raise IndexBuildError("max_doc_chars must be at least 1")

    @property
    def metric(self) -> str:
        # usearch's i8 inner product is computed on raw int8 codes (not a cosine); its i8 cosine
        # is, and on L2-normalised vectors cosine ranks exactly as inner product does.
        return "cos" if self.dtype == "i8" else "ip"


def build_index(
    corpus_path: Path,
    out_dir: Path,
    encoder: Encoder,
    settings: IndexBuildSettings = IndexBuildSettings(),
    progress: bool = True,
    shard: ShardSpec | None = None,
) -> IndexInfo:
    """Builds the index for `corpus_path` and publishes it as `out_dir` (a symlink).

    With `shard`, only the documents that shard owns are indexed (see `sharding`); max_docs
    still counts the whole corpus, so every shard of a build sees the same documents.
    """
    settings.validate()
    corpus_path = Path(corpus_path)
    check_corpus_path(corpus_path)
    out_dir = Path(os.path.abspath(out_dir))  # not resolve(): out_dir itself is the link
    created = missing_dirs(out_dir.parent)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    try:
        with _build_lock(out_dir):
            current = _current_version(out_dir)
            _remove_stale_siblings(out_dir, keep=current)
            tmp = out_dir.with_name(f"{out_dir.name}.tmp{time.time_ns()}")
            tmp.mkdir()
            try:
                info = _build_into(tmp, corpus_path, encoder, settings, progress, shard)
                _publish(tmp, out_dir)
            except BaseException:
                shutil.rmtree(tmp, ignore_errors=True)
                raise
            if current is not None:
                shutil.rmtree(current, ignore_errors=True)
    except BaseException:
        remove_empty_dirs(created)
        raise
    return info


def check_corpus_path(corpus_path: Path) -> None:
    """Refuses a corpus path that is missing or not a regular file, before anything is made."""
    if not corpus_path.exists():
        raise IndexBuildError(f"corpus {corpus_path} does not exist")
    if not corpus_path.is_file():
        raise IndexBuildError(f"corpus {corpus_path} is not a file")


# ---------------------------------------------------------------- output path and publishing


def missing_dirs(directory: Path) -> list[Path]:
    """`directory` and its parents that do not exist yet, deepest first."""
    missing = []
    while not directory.exists() and directory != directory.parent:
        missing.append(directory)
        directory = directory.parent
    return missing


def remove_empty_dirs(directories: list[Path]) -> None:
    """Removes the directories a failed build created, deepest first, where nothing else is."""
    for directory in directories:
        try:
            directory.rmdir()
        except OSError:
            return


@contextlib.contextmanager
def _build_lock(out_dir: Path) -> Iterator[None]:
    """One build per output at a time: an flock on `.NAME.lock` beside it, removed on the way
    out. The kernel drops the lock if the builder is killed; the file a killed build leaves is
    locked and removed by the next build.

    The holder unlinks the file before it unlocks, so a builder that opened the file and got
    the lock only after that holds an unlinked file: it checks that its file is still the one
    at the path, and if not takes the lock again on the one there now.
    """
    lock_path = out_dir.with_name(f".{out_dir.name}.lock")
    while True:
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as exc:
            os.close(fd)
            raise IndexBuildError(f"another build of {out_dir} is running ({lock_path})") from exc
        held = os.fstat(fd)
        try:
            current = os.stat(lock_path)
        except FileNotFoundError:
            current = None
        if current is not None and (current.st_dev, current.st_ino) == (held.st_dev, held.st_ino):
            break
        os.close(fd)
    try:
        yield
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(lock_path)
        os.close(fd)


def _current_version(out_dir: Path) -> Path | None:
    """The version directory `out_dir` links to; refuses anything a build did not make."""
    if out_dir.is_symlink():
        target = os.readlink(out_dir)
        match = _SIBLING.fullmatch(target[len(out_dir.name) :])
        if target.startswith(out_dir.name) and match and match.group(1) == "v":
            return out_dir.with_name(target)
        raise IndexBuildError(
            f"{out_dir} is a symlink to {target}, not to an index version made by "
            "`neuralir index build`: remove it or choose another output"
        )
    if out_dir.exists():
        raise IndexBuildError(
            f"{out_dir} exists and is not an index published by `neuralir index build` "
            "(those are symlinks to versioned directories): move it away or choose another output"
        )
    return None


def _remove_stale_siblings(out_dir: Path, keep: Path | None) -> None:
    """Removes what killed builds left: temporaries, spare links, unreferenced versions."""
    prefix = out_dir.name
    for entry in out_dir.parent.iterdir():
        if not entry.name.startswith(prefix) or entry == keep:
            continue
        if not _SIBLING.fullmatch(entry.name[len(prefix) :]):
            continue
        logger.info("removing %s left by an earlier build", entry)
        if entry.is_symlink() or not entry.is_dir():
            entry.unlink()
        else:
            shutil.rmtree(entry)


def _publish(tmp: Path, out_dir: Path) -> Path:
    stamp = time.time_ns()
    version = out_dir.with_name(f"{out_dir.name}.v{stamp}")
    os.rename(tmp, version)
    link = out_dir.with_name(f"{out_dir.name}.link{stamp}")
    # A relative target keeps the link valid if the whole parent directory is moved.
    os.symlink(version.name, link)
    _fsync_dir(out_dir.parent)
    os.replace(link, out_dir)
    _fsync_dir(out_dir.parent)
    logger.info("published %s -> %s", out_dir, version.name)
    return version


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


# ---------------------------------------------------------------- the build itself


def _build_into(
    tmp: Path,
    corpus_path: Path,
    encoder: Encoder,
    settings: IndexBuildSettings,
    progress: bool,
    shard: ShardSpec | None = None,
) -> IndexInfo:
    start = time.perf_counter()
    corpus_sha256 = sha256_file(corpus_path)
    expected = count_lines(corpus_path)
    if settings.max_docs:
        expected = min(expected, settings.max_docs)
    if shard is not None:
        expected = -(-expected // shard.count)  # about a 1/count share, for progress only
    dense = Index(
        ndim=encoder.dimension,
        metric=settings.metric,
        dtype=settings.dtype,
        connectivity=settings.connectivity,
        expansion_add=settings.expansion_add,
        expansion_search=settings.expansion_search,
    )
    analyzer = LexicalAnalyzer(STOPWORDS_EN, settings.stemmer)
    vocabulary: dict[str, int] = {}
    term_ids: list[list[int]] = []
    first_without_terms: CorpusDoc | None = None  # documents without a BM25 term: the first
    count_without_terms = 0
    meter = _Progress(expected, sys.stderr if progress else None)
    with contextlib.closing(_create_store(tmp / DOCS_FILE)) as store:
        size = 0
        window_docs = settings.batch_size * _SORT_WINDOW_BATCHES
        for window in _batches(_selected(corpus_path, settings, shard), window_docs, 0):
            keys = np.arange(size, size + len(window), dtype=np.uint64)
            store.executemany(
                "INSERT INTO documents (ordinal, doc_id, title, text) VALUES (?, ?, ?, ?)",
                [(int(k), d.doc_id, d.title, d.text) for k, d in zip(keys, window, strict=True)],
            )
            passages = [doc.passage for doc in window]
            for doc, passage in zip(window, passages, strict=True):
                terms = analyzer.analyze(passage)
                term_ids.append([vocabulary.setdefault(t, len(vocabulary)) for t in terms])
                if not terms:
                    count_without_terms += 1
                    first_without_terms = first_without_terms or doc
            _encode_window(passages, keys, encoder, dense, settings, meter, size)
            size += len(window)
        if size == 0:
            raise IndexBuildError(f"corpus {corpus_path} holds no documents")
        if first_without_terms is not None:
            _check_terms(corpus_path, size, count_without_terms, first_without_terms, shard)
        store.commit()
    meter.close(size)
    dense.save(str(tmp / DENSE_FILE))
    _save_bm25(tmp, term_ids, vocabulary, settings)
    info = IndexInfo(
        size=size,
        dimension=encoder.dimension,
        metric=settings.metric,
        dtype=settings.dtype,
        connectivity=settings.connectivity,
        expansion_add=settings.expansion_add,
        expansion_search=settings.expansion_search,
        encoder_model_id=encoder.model_id,
        corpus_sha256=corpus_sha256,
        bm25_parameters=_bm25_description(settings),
        built_at=datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
    )
    seconds = time.perf_counter() - start
    _write_index_json(tmp, info, settings, corpus_path, encoder, seconds, shard)
    logger.info("built %d docs in %.1f s (%.1f docs/s)", size, seconds, size / seconds)
    return info


def no_terms_error(what: str, size: int, first_line: int, advice: str = "") -> IndexBuildError:
    """The error of a build none of whose `size` documents has a BM25 term."""
    return IndexBuildError(
        f"{what}: none of its {size:,} documents (the first on line {first_line}) has a term "
        f"BM25 can index: they are empty or hold only stopwords and one-letter words{advice}"
    )


def _check_terms(
    corpus_path: Path, size: int, count: int, first: CorpusDoc, shard: ShardSpec | None
) -> None:
    """Fails a build none of whose documents has a BM25 term (bm25s cannot index that); warns
    about the documents without one otherwise (they are indexed with an empty BM25 row)."""
    if count == size:
        owner = "" if shard is None else f"shard {shard.index} of {shard.count}: "
        raise no_terms_error(f"{owner}{corpus_path}", size, first.line)
    logger.warning(
        "%s:%d: %d of %d documents have no term BM25 can index (empty or only stopwords), the "
        "first %r: they are indexed, but lexical search never returns them",
        corpus_path,
        first.line,
        count,
        size,
        first.doc_id,
    )


def _encode_window(
    passages: list[str],
    keys: np.ndarray,
    encoder: Encoder,
    dense: Index,
    settings: IndexBuildSettings,
    meter: _Progress,
    done_before: int,
) -> None:
    """Encodes one window in batches of similar length: in corpus order, padding to the longest
    passage of each batch tripled the tokens computed on the demo corpus. A batch also stops at
    _MAX_CHARS_PER_CALL characters, so a window of long passages cannot take gigabytes."""
    order = np.argsort([len(p) for p in passages], kind="stable")
    done = 0
    for chunk in _calls(order, [len(p) for p in passages], settings.batch_size):
        vectors = encoder.encode([passages[i] for i in chunk], kind="passage")
        dense.add(keys[chunk], vectors, threads=settings.threads)
        done += len(chunk)
        meter.update(done_before + done)


def _calls(order: np.ndarray, lengths: list[int], batch_size: int) -> Iterator[np.ndarray]:
    """Consecutive runs of `order`: at most batch_size passages and _MAX_CHARS_PER_CALL
    characters each (a longer passage alone)."""
    start = 0
    while start < len(order):
        end = start + 1
        chars = lengths[order[start]]
        while end < len(order) and end - start < batch_size:
            chars += lengths[order[end]]
            if chars > _MAX_CHARS_PER_CALL:
                break
            end += 1
        yield order[start:end]
        start = end


def _selected(
    corpus_path: Path, settings: IndexBuildSettings, shard: ShardSpec | None
) -> Iterator[CorpusDoc]:
    """The corpus's first `max_docs` documents (0 = all), then only those `shard` owns."""
    docs: Iterable[CorpusDoc] = iter_corpus(
        corpus_path, settings.max_doc_chars, settings.truncate_long_docs
    )
    if settings.max_docs:
        docs = itertools.islice(docs, settings.max_docs)
    if shard is None:
        yield from docs
    else:
        yield from (doc for doc in docs if shard.owns(doc.doc_id))


def _batches(docs: Iterable[CorpusDoc], size: int, limit: int) -> Iterator[list[CorpusDoc]]:
    batch: list[CorpusDoc] = []
    for count, doc in enumerate(docs, start=1):
        batch.append(doc)
        if len(batch) == size:
            yield batch
            batch = []
        if limit and count >= limit:
            break
    if batch:
        yield batch


def _create_store(path: Path) -> sqlite3.Connection:
    store = sqlite3.connect(path)
    # No journal: a failed build throws the whole temporary directory away anyway.
    store.execute("PRAGMA journal_mode=OFF")
    store.execute("PRAGMA synchronous=OFF")
    store.execute(
        "CREATE TABLE documents (ordinal INTEGER PRIMARY KEY, doc_id TEXT NOT NULL UNIQUE, "
        "title TEXT NOT NULL, text TEXT NOT NULL)"
    )
    return store


def _save_bm25(
    tmp: Path, term_ids: list[list[int]], vocabulary: dict[str, int], settings: IndexBuildSettings
) -> None:
    retriever = bm25s.BM25(k1=settings.bm25_k1, b=settings.bm25_b, method="lucene")
    retriever.index((term_ids, vocabulary), show_progress=False)
    retriever.save(str(tmp / BM25_DIR), show_progress=False)
    # The stopword list is stored, so a later bm25s release cannot change how queries split.
    (tmp / STOPWORDS_FILE).write_text(json.dumps(sorted(STOPWORDS_EN)), encoding="utf-8")


def _bm25_description(settings: IndexBuildSettings) -> str:
    stemmer = settings.stemmer or "none"
    return (
        f"bm25s lucene k1={settings.bm25_k1} b={settings.bm25_b} "
        f"stopwords=english stemmer={stemmer}"
    )


def _write_index_json(
    tmp: Path,
    info: IndexInfo,
    settings: IndexBuildSettings,
    corpus_path: Path,
    encoder: Encoder,
    seconds: float,
    shard: ShardSpec | None = None,
) -> None:
    files = {}
    for path in sorted(p for p in tmp.rglob("*") if p.is_file()):
        _fsync_file(path)
        files[path.relative_to(tmp).as_posix()] = {
            "bytes": path.stat().st_size,
            "sha256": sha256_file(path),
        }
    record: dict[str, Any] = {
        "schema_version": SCHEMA_VERSION,
        "info": dataclasses.asdict(info),
        "settings": dataclasses.asdict(settings),
        "lexical": {
            "stemmer": settings.stemmer,
            "token_pattern": TOKEN_PATTERN,
            "lower": True,
            "stopwords_file": STOPWORDS_FILE,
        },
        "encoder": {"model_id": encoder.model_id, "max_length": encoder.max_length},
        "corpus": {"path": str(corpus_path.resolve()), "sha256": info.corpus_sha256},
        "build_seconds": round(seconds, 3),
        "versions": {name: _version(name) for name in ("usearch", "bm25s", "PyStemmer")},
        "files": files,
    }
    if shard is not None:
        record["shard"] = shard.describe()
    path = tmp / INFO_FILE
    path.write_text(json.dumps(record, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    _fsync_file(path)
    _fsync_dir(tmp)


def _fsync_file(path: Path) -> None:
    with path.open("rb") as handle:
        os.fsync(handle.fileno())


def _version(distribution: str) -> str:
    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return "not installed"


class _Progress:
    """A one-line docs/s meter on stderr, redrawn at most twice a second (no tqdm at runtime)."""

    def __init__(self, expected: int, stream: IO[str] | None) -> None:
        self._expected = expected
        self._stream = stream
        self._interactive = bool(stream is not None and stream.isatty())
        self._start = time.perf_counter()
        self._last = 0.0

    def update(self, done: int) -> None:
        now = time.perf_counter()
        # A terminal gets a redrawn line; a log file gets a line every 10 s.
        interval = 0.5 if self._interactive else 10.0
        if self._stream is None or now - self._last < interval:
            return
        self._last = now
        self._write(done, now)

    def close(self, done: int) -> None:
        if self._stream is not None:
            self._write(done, time.perf_counter())
            if self._interactive:
                self._stream.write("\n")
            self._stream.flush()

    def _write(self, done: int, now: float) -> None:
        assert self._stream is not None
        rate = done / max(now - self._start, 1e-9)
        line = f"encoding: {done:,}/{self._expected:,} docs, {rate:,.1f} docs/s"
        self._stream.write(f"\r{line}" if self._interactive else f"{line}\n")
        self._stream.flush()
