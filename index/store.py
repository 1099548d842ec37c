"""A built, read-only index: usearch HNSW (memory-mapped), BM25 (bm25s, memory-mapped) and a
SQLite document store, verified against `index.json` at open (format: `neuralir.index.format`).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import sqlite3
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import bm25s
import numpy as np

# onnxruntime must be loaded before usearch: importing usearch 2.26.6 first and onnxruntime
# 1.32.0 afterwards crashes the interpreter (SIGSEGV) on this platform.
import onnxruntime  # noqa: F401
from usearch.index import Index

from neuralir.index.format import (
    BM25_DIR,
    DENSE_FILE,
    DOCS_FILE,
    INFO_FILE,
    STOPWORDS_FILE,
    IndexInfo,
    IndexLoadError,
    LexicalAnalyzer,
    read_index_json,
    verify_files,
)

logger = logging.getLogger(__name__)

# SQLite's default limit on bound parameters is far above this; chunking keeps queries small.
_SQL_CHUNK = 500


@dataclasses.dataclass(frozen=True, slots=True)
class StoredDocument:
    doc_id: str
    title: str
    text: str


class IndexStore:
    """Serves one published index version. Calls may come from different threads over time but
    are serialised by the caller; a lock keeps that true even if a caller forgets."""

    def __init__(
        self,
        directory: Path,
        info: IndexInfo,
        dense: Index,
        bm25: bm25s.BM25,
        analyzer: LexicalAnalyzer,
        docs: sqlite3.Connection,
        doc_ids: list[str],
        search_threads: int,
    ) -> None:
        self.directory = directory
        self.info = info
        self._dense: Index | None = dense
        self._bm25 = bm25
        self._bm25_terms = len(bm25.scores["indptr"]) - 1
        self._analyzer = analyzer
        self._docs: sqlite3.Connection | None = docs
        self._doc_ids = doc_ids
        self._search_threads = search_threads
        self._ef = info.expansion_search
        self._lock = threading.Lock()

    @classmethod
    def open(
        cls,
        directory: Path,
        expected_encoder_model_id: str | None = None,
        search_threads: int = 1,
    ) -> IndexStore:
        """Verifies and opens the index at `directory` (the published link or a version).

        Raises IndexLoadError if it is missing, was built by another encoder than
        `expected_encoder_model_id`, or any file differs from what the build recorded.
        """
        if search_threads < 1:
            raise ValueError("search_threads must be at least 1")
        # Resolve the link once: a build swapping it meanwhile cannot mix two versions here.
        requested = Path(directory)
        if not requested.exists():
            raise IndexLoadError(
                f"no index at {requested}: build one with `neuralir index build --out {requested}`"
            )
        version_dir = requested.resolve()
        raw = read_index_json(version_dir)
        info: IndexInfo = raw["info"]
        if expected_encoder_model_id is not None and info.encoder_model_id != (
            expected_encoder_model_id
        ):
            raise IndexLoadError(
                f"index {requested} was built with encoder {info.encoder_model_id!r}, but queries "
                f"are encoded by {expected_encoder_model_id!r}: rebuild the index with this encoder"
            )
        verify_files(version_dir, raw["files"])
        try:
            store = cls._open_verified(version_dir, info, raw, search_threads)
        except (OSError, ValueError, KeyError, RuntimeError, sqlite3.Error) as exc:
            if isinstance(exc, IndexLoadError):
                raise
            raise IndexLoadError(f"cannot open index {version_dir}: {exc!r}") from exc
        logger.info(
            "opened index %s (%d docs, %s %s, encoder %s)",
            version_dir,
            info.size,
            info.metric,
            info.dtype,
            info.encoder_model_id,
        )
        return store

    @classmethod
    def _open_verified(
        cls, directory: Path, info: IndexInfo, raw: dict[str, Any], search_threads: int
    ) -> IndexStore:
        dense = Index.restore(directory / DENSE_FILE, view=True)
        if dense is None or dense.ndim != info.dimension or dense.size != info.size:
            raise IndexLoadError(f"{directory / DENSE_FILE} does not match {INFO_FILE}")
        bm25 = bm25s.BM25.load(directory / BM25_DIR, mmap=True, show_progress=False)
        lexical = raw["lexical"]
        stopwords = json.loads((directory / STOPWORDS_FILE).read_text(encoding="utf-8"))
        analyzer = LexicalAnalyzer(stopwords, lexical["stemmer"])
        docs = _connect_read_only(directory / DOCS_FILE)
        doc_ids = [row[0] for row in docs.execute("SELECT doc_id FROM documents ORDER BY ordinal")]
        if len(doc_ids) != info.size:
            docs.close()
            raise IndexLoadError(f"{directory / DOCS_FILE} holds {len(doc_ids)} documents")
        return cls(directory, info, dense, bm25, analyzer, docs, doc_ids, search_threads)

    def dense_search(self, vector: np.ndarray, k: int, ef: int = 0) -> list[tuple[str, float]]:
        """(doc_id, cosine) best first; k is clamped to the index size, ef 0 = the built default."""
        query = np.asarray(vector, dtype=np.float32).reshape(-1)
        if query.shape[0] != self.info.dimension:
            raise ValueError(
                f"vector has {query.shape[0]} dimensions, index has {self.info.dimension}"
            )
        k = min(k, self.info.size)
        if k <= 0:
            return []
        with self._lock:
            index = self._require_open(self._dense)
            wanted_ef = ef if ef > 0 else self.info.expansion_search
            if wanted_ef != self._ef:
                index.expansion_search = wanted_ef
                self._ef = wanted_ef
            matches = index.search(query, k, threads=self._search_threads)
        # Both metrics give distance = 1 - cosine on normalised vectors; a zero query gives NaN.
        scores = np.nan_to_num(1.0 - matches.distances.astype(np.float64), nan=0.0)
        ids = self._doc_ids
        return [(ids[int(key)], float(s)) for key, s in zip(matches.keys, scores, strict=True)]

    def lexical_search(self, query: str, k: int) -> list[tuple[str, float]]:
        """(doc_id, BM25 score) best first, scores > 0 only; [] when no query term is indexed."""
        k = min(k, self.info.size)
        if k <= 0:
            return []
        vocab = self._bm25.vocab_dict
        with self._lock:  # PyStemmer's stemmer objects are not thread-safe
            self._require_open(self._docs)
            terms = self._analyzer.analyze(query)
            # bm25s adds an empty token to the vocabulary with no column: keep ids in the matrix.
            term_ids = [vocab[t] for t in terms if t in vocab and vocab[t] < self._bm25_terms]
            if not term_ids:
                return []
            scores = np.asarray(self._bm25.get_scores_from_ids(term_ids))
        hits = np.flatnonzero(scores > 0)
        if hits.size > k:
            hits = hits[np.argpartition(-scores[hits], k - 1)[:k]]
        # Best score first; ties by ordinal so results are reproducible.
        hits = hits[np.lexsort((hits, -scores[hits]))]
        return [(self._doc_ids[int(i)], float(scores[i])) for i in hits]

    def get_documents(
        self, doc_ids: Sequence[str], with_text: bool = True
    ) -> tuple[list[StoredDocument], list[str]]:
        """The documents found, in the order asked (repeats kept), and the ids not found.

        `with_text=False` reads titles only (text ""): a search that shows no snippets and
        reranks nothing never reads the passages.
        """
        asked = list(doc_ids)
        rows: dict[str, StoredDocument] = {}
        unique = list(dict.fromkeys(asked))
        columns = "doc_id, title, text" if with_text else "doc_id, title, ''"
        with self._lock:
            docs = self._require_open(self._docs)
            for start in range(0, len(unique), _SQL_CHUNK):
                chunk = unique[start : start + _SQL_CHUNK]
                marks = ",".join("?" * len(chunk))
                sql = f"SELECT {columns} FROM documents WHERE doc_id IN ({marks})"
                for doc_id, title, text in docs.execute(sql, chunk):
                    rows[doc_id] = StoredDocument(doc_id, title, text)
        found = [rows[d] for d in asked if d in rows]
        missing = [d for d in asked if d not in rows]
        return found, missing

    def close(self) -> None:
        with self._lock:
            if self._docs is not None:
                self._docs.close()
            self._docs = None
            self._dense = None  # drops the memory map once no search holds it

    def _require_open(self, resource: Any) -> Any:
        if resource is None:
            raise RuntimeError(f"index store {self.directory} is closed")
        return resource


def _connect_read_only(path: Path) -> sqlite3.Connection:
    # immutable=1: a published version never changes, so SQLite may skip locking entirely.
    uri = f"{path.resolve().as_uri()}?mode=ro&immutable=1"
    try:
        return sqlite3.connect(uri, uri=True, check_same_thread=False)
    except sqlite3.Error as exc:
        raise IndexLoadError(f"cannot open document store {path}: {exc}") from exc
