"""What the benchmarks run on: real queries, a real index, real passages, cached embeddings.

With ../shared/data present the workload is SciFact (5,183 abstracts, 809 claims as queries)
indexed into artifacts/indexes/bench-scifact; without it, the demo corpus (Python's own
documentation) with a fixed list of questions, so the suite runs on any machine.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
from collections.abc import Callable
from pathlib import Path

import numpy as np

from neuralir.index.format import DENSE_FILE
from neuralir.index.reuse import ensure_index
from neuralir.index.store import IndexStore
from neuralir.models.encoder import Encoder
from neuralir.models.manifest import read_manifest
from neuralir.models.session import RuntimeSettings

log = logging.getLogger(__name__)

DEMO_QUERIES = (
    "how do I read a file line by line",
    "sort a list of dictionaries by a key",
    "parse command line arguments",
    "format a date as a string",
    "run a function in a background thread",
    "compress data with gzip",
    "open a network socket and send bytes",
    "regular expression to match an email address",
    "serialize an object to json",
    "measure elapsed time precisely",
    "copy a directory tree recursively",
    "generate random numbers with a seed",
    "iterate over two lists at the same time",
    "read environment variables",
    "what does the with statement do",
    "define a class with slots",
    "catch an exception and re-raise it",
    "decode bytes to a unicode string",
    "create a temporary file",
    "compute a sha256 hash of a file",
)


@dataclasses.dataclass
class Workload:
    name: str  # "scifact" or "demo"
    corpus_path: Path | None
    index_dir: Path
    queries: list[str]
    encoder_model: Path
    cache_dir: Path
    _store: IndexStore | None = None

    @property
    def store(self) -> IndexStore:
        """The index opened in-process (one usearch thread, as the index service uses)."""
        if self._store is None:
            model_id = read_manifest(self.encoder_model).model_id
            self._store = IndexStore.open(self.index_dir, model_id, search_threads=1)
        return self._store

    def query(self, i: int) -> str:
        return self.queries[i % len(self.queries)]

    def close(self) -> None:
        if self._store is not None:
            self._store.close()
            self._store = None

    def _cache_key(self, what: str) -> Path:
        info = self.store.info
        digest = hashlib.sha256(f"{info.corpus_sha256}|{info.encoder_model_id}".encode())
        return self.cache_dir / f"{self.name}-{what}-{digest.hexdigest()[:12]}.npy"

    def doc_embeddings(self) -> np.ndarray:
        """All document vectors, [size, dim] float32, read once from the built index and cached.

        The index build already encoded every document with the serving encoder; an f32 index
        holds those vectors exactly, so nothing is encoded twice.
        """
        path = self._cache_key("docs")
        if path.is_file():
            return np.load(path)
        info = self.store.info
        if info.dtype != "f32":
            raise RuntimeError(f"index {self.index_dir} stores {info.dtype}: need an f32 index")
        from usearch.index import Index

        dense = Index.restore(str(self.store.directory / DENSE_FILE), view=True)
        if dense is None:
            raise RuntimeError(f"cannot read {self.store.directory / DENSE_FILE}")
        vectors = np.asarray(dense.get(np.arange(info.size, dtype=np.uint64)), dtype=np.float32)
        path.parent.mkdir(parents=True, exist_ok=True)
        np.save(path, vectors)
        return vectors

    def query_embeddings(self) -> np.ndarray:
        """Every query, encoded once by the serving int8 encoder and cached."""
        path = self._cache_key(f"queries{len(self.queries)}")
        if path.is_file():
            return np.load(path)
        encoder = Encoder(self.encoder_model, RuntimeSettings(intra_op_threads=2))
        vectors = encoder.encode(self.queries, "query")
        path.parent.mkdir(parents=True, exist_ok=True)
        np.save(path, vectors)
        return vectors

    def rerank_sets(self, depth: int, count: int) -> list[tuple[str, list[str]]]:
        """`count` (query, top-`depth` passages) pairs: dense top hits, title + text each."""
        store = self.store
        vectors = self.query_embeddings()
        sets = []
        for i in range(count):
            hits = store.dense_search(vectors[i % len(vectors)], depth)
            docs, _ = store.get_documents([doc_id for doc_id, _ in hits])
            passages = [f"{d.title} {d.text}".strip() or d.doc_id for d in docs]
            sets.append((self.query(i), passages))
        return sets


def _read_queries(path: Path) -> list[str]:
    queries = []
    with path.open(encoding="utf-8") as handle:
        for line in handle:
            if line.strip():
                text = json.loads(line).get("text", "").strip()
                if text:
                    queries.append(text)
    return queries


def prepare_workload(
    repo: Path,
    data_dir: Path | None,
    encoder_model: Path,
    index_dir: Path | None = None,
    progress: Callable[[str], None] = log.info,
) -> Workload:
    """SciFact if `data_dir` holds it, else the demo corpus; builds the index when missing."""
    cache_dir = repo / "artifacts" / "bench-cache"
    scifact = data_dir / "scifact" if data_dir is not None else None
    if scifact is not None and (scifact / "corpus.jsonl").is_file():
        name, corpus = "scifact", scifact / "corpus.jsonl"
        queries = _read_queries(scifact / "queries.jsonl")
    else:
        from neuralir.index.demo_corpus import CORPUS_FILE, build_demo_corpus

        name = "demo"
        demo_dir = repo / "artifacts" / "data" / "pydocs"
        corpus = demo_dir / CORPUS_FILE
        if index_dir is None and not corpus.is_file():
            progress(f"building the demo corpus in {demo_dir}")
            corpus = build_demo_corpus(demo_dir)
        queries = list(DEMO_QUERIES)
    if index_dir is not None:  # given by the caller: use it as it is
        return Workload(name, None, index_dir, queries, encoder_model, cache_dir)
    index_dir = repo / "artifacts" / "indexes" / f"bench-{name}"
    ensured = ensure_index(corpus, index_dir, encoder_model)
    if ensured.built:
        progress(f"built the {name} index in {index_dir} ({ensured.reason}; reused by later runs)")
    return Workload(name, corpus, index_dir, queries, encoder_model, cache_dir)
