"""The on-disk format of one index version: file names, `index.json`, and the lexical analyzer.

Layout of one published version (see `build` for how it is written and swapped in):

    DIR -> DIR.v<ns>/             symlink swapped atomically by each build
        index.json                IndexInfo, settings, sha256 and size of every file below
        dense.usearch             HNSW graph and vectors; key = document ordinal
        docs.sqlite               documents(ordinal, doc_id, title, text)
        bm25/                     bm25s arrays and vocabulary, plus the stopword list used

The build writes this format and the store reads it; both go through this module, so the two
can only disagree by a schema version, which the reader refuses.
"""

from __future__ import annotations

import dataclasses
import json
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from neuralir.models.manifest import sha256_file

SCHEMA_VERSION = 1
INFO_FILE = "index.json"
DENSE_FILE = "dense.usearch"
DOCS_FILE = "docs.sqlite"
BM25_DIR = "bm25"
STOPWORDS_FILE = f"{BM25_DIR}/stopwords.json"
# bm25s' default splitter: words of two or more word characters.
TOKEN_PATTERN = r"(?u)\b\w\w+\b"


class IndexLoadError(RuntimeError):
    """An index cannot be served: missing, altered, truncated, or built by another encoder."""


@dataclasses.dataclass(frozen=True)
class IndexInfo:
    """What an index is, as recorded at build time (everything DescribeResponse needs)."""

    size: int  # documents
    dimension: int
    metric: str  # usearch metric: "ip" (f32, f16) or "cos" (i8, see neuralir.index.build)
    dtype: str  # usearch storage: "f32", "f16", "bf16" or "i8"
    connectivity: int
    expansion_add: int
    expansion_search: int  # default ef when a search does not ask for one
    encoder_model_id: str
    corpus_sha256: str
    bm25_parameters: str  # e.g. "bm25s lucene k1=0.9 b=0.4 stopwords=english stemmer=english"
    built_at: str  # ISO 8601, UTC


class LexicalAnalyzer:
    """Text → BM25 terms: lower-case, bm25s' word splitter, stopwords out, Snowball stems.

    The build and every query go through this one class, so a query can only ever produce
    terms spelled the way the index spells them.
    """

    def __init__(self, stopwords: Sequence[str], stemmer: str) -> None:
        self.stopwords = frozenset(stopwords)
        self.stemmer_name = stemmer
        self._split = re.compile(TOKEN_PATTERN).findall
        self._stemmer = _make_stemmer(stemmer)

    def analyze(self, text: str) -> list[str]:
        words = [w for w in self._split(text.lower()) if w not in self.stopwords]
        if self._stemmer is None:
            return words
        return list(self._stemmer.stemWords(words))


def _make_stemmer(name: str) -> Any:
    if not name:
        return None
    import Stemmer  # PyStemmer; imported here so an unstemmed index does not need it

    return Stemmer.Stemmer(name)


def read_index_json(directory: Path) -> dict[str, Any]:
    path = directory / INFO_FILE
    if not path.is_file():
        raise IndexLoadError(
            f"no {INFO_FILE} in {directory}: build the index with `neuralir index build`"
        )
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
        if raw.get("schema_version") != SCHEMA_VERSION:
            raise IndexLoadError(
                f"{path} has schema version {raw.get('schema_version')!r}, this server reads "
                f"{SCHEMA_VERSION}: rebuild the index"
            )
        raw["info"] = IndexInfo(**raw["info"])
        raw["files"] = {
            str(name): {"bytes": int(entry["bytes"]), "sha256": str(entry["sha256"])}
            for name, entry in raw["files"].items()
        }
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise IndexLoadError(f"{path} is malformed ({exc!r}): rebuild the index") from exc
    return raw


def verify_files(directory: Path, files: dict[str, dict[str, Any]]) -> None:
    """Checks each recorded file's size, then its sha256; names the first file that differs."""
    for name, expected in sorted(files.items()):
        path = directory / name
        if not path.is_file():
            raise IndexLoadError(f"index file {path} is missing")
        size = path.stat().st_size
        if size != expected["bytes"]:
            raise IndexLoadError(
                f"index file {path} is {size} bytes, {expected['bytes']} were written at build "
                "(truncated or altered): rebuild the index"
            )
    for name, expected in sorted(files.items()):
        path = directory / name
        if sha256_file(path) != expected["sha256"]:
            raise IndexLoadError(
                f"index file {path} does not match the sha256 recorded at build (altered or "
                "corrupted): rebuild the index"
            )
