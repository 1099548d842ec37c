"""BEIR-layout test collections, loaded strictly for evaluation (download: `download`).

    DIR/corpus.jsonl          {"_id", "title", "text"} one document a line
    DIR/queries.jsonl         {"_id", "text"} one query a line
    DIR/qrels/SPLIT.tsv       header "query-id<TAB>corpus-id<TAB>score", then one judgment a line

Every problem in a file is reported as a `DatasetError` naming the file and line, so a broken
collection fails before any service starts instead of giving quietly wrong figures. All three
files are read by the index layer's strict reader (`neuralir.index.corpus`): the same UTF-8,
line and id rules as `neuralir index build`. Only the document size limit is left to the
build, which applies it with its own settings (evaluation reads only the corpus ids).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import re
from pathlib import Path
from typing import Any

from neuralir.index.corpus import CorpusError, check_id, iter_corpus, read_lines
from neuralir.models.manifest import sha256_file

logger = logging.getLogger(__name__)

CORPUS_FILE = "corpus.jsonl"
QUERIES_FILE = "queries.jsonl"
QRELS_DIR = "qrels"
# Names of datasets and splits: they become file and directory names.
NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")
_HEADER = ("query-id", "corpus-id", "score")


class DatasetError(ValueError):
    """A collection cannot be evaluated: a missing file, a malformed line, an unknown id."""


@dataclasses.dataclass(frozen=True)
class Dataset:
    name: str
    root: Path
    split: str
    corpus_path: Path
    corpus_sha256: str
    corpus_size: int
    qrels_path: Path
    # judged queries of the split only, in queries.jsonl order
    queries: dict[str, str]
    # query id -> document id -> grade (0 = judged not relevant)
    qrels: dict[str, dict[str, int]]

    def limited(self, max_queries: int) -> Dataset:
        """The first `max_queries` judged queries (0 = all), with their judgments."""
        if max_queries <= 0 or max_queries >= len(self.queries):
            return self
        kept = dict(list(self.queries.items())[:max_queries])
        qrels = {qid: self.qrels[qid] for qid in kept}
        return dataclasses.replace(self, queries=kept, qrels=qrels)


def load_dataset(root: Path, split: str) -> Dataset:
    """Reads and cross-checks a BEIR collection; raises DatasetError naming the file and line."""
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"dataset directory {root} does not exist")
    if not NAME_PATTERN.fullmatch(split):
        raise DatasetError(f"split {split!r} is not a valid split name (letters, digits, _ . -)")
    corpus_path = root / CORPUS_FILE
    queries_path = root / QUERIES_FILE
    qrels_path = root / QRELS_DIR / f"{split}.tsv"
    for path in (corpus_path, queries_path):
        if not path.is_file():
            raise DatasetError(
                f"{path}: missing (a BEIR dataset needs {CORPUS_FILE}, "
                f"{QUERIES_FILE} and {QRELS_DIR}/SPLIT.tsv)"
            )
    if not qrels_path.is_file():
        raise DatasetError(
            f"{qrels_path}: missing; splits here: {available_splits(root) or 'none'}"
        )
    doc_ids = _corpus_ids(corpus_path)
    queries, query_lines = _read_queries(queries_path)
    qrels = _read_qrels(qrels_path, queries_path, corpus_path, set(queries), doc_ids)
    judged = {qid: text for qid, text in queries.items() if qid in qrels}
    for qid, text in judged.items():
        if not text.strip():
            raise DatasetError(
                f"{queries_path}:{query_lines[qid]}: judged query {qid!r} has an empty text"
            )
    without_relevant = sum(1 for grades in qrels.values() if max(grades.values()) <= 0)
    if without_relevant:
        logger.warning(
            "%s: %d judged queries have no relevant document; they count as 0",
            qrels_path,
            without_relevant,
        )
    return Dataset(
        name=root.resolve().name,
        root=root,
        split=split,
        corpus_path=corpus_path,
        corpus_sha256=sha256_file(corpus_path),
        corpus_size=len(doc_ids),
        qrels_path=qrels_path,
        queries=judged,
        qrels={qid: qrels[qid] for qid in judged},
    )


def available_splits(root: Path) -> str:
    directory = Path(root) / QRELS_DIR
    if not directory.is_dir():
        return ""
    return ", ".join(sorted(p.stem for p in directory.glob("*.tsv")))


def _corpus_ids(path: Path) -> set[str]:
    try:
        ids = {doc.doc_id for doc in iter_corpus(path, max_doc_chars=None)}
    except CorpusError as exc:  # already names the file and line
        raise DatasetError(str(exc)) from exc
    if not ids:
        raise DatasetError(f"{path}: holds no documents")
    return ids


def _read_queries(path: Path) -> tuple[dict[str, str], dict[str, int]]:
    """All queries (id -> text) and the line each was read from."""
    queries: dict[str, str] = {}
    lines: dict[str, int] = {}
    try:
        for number, line in read_lines(path):
            qid, text = _parse_query(line, f"{path}:{number}")
            if qid in lines:
                raise DatasetError(
                    f"{path}:{number}: duplicate _id {qid!r} (first seen on line {lines[qid]})"
                )
            queries[qid], lines[qid] = text, number
    except CorpusError as exc:  # names the file and line
        raise DatasetError(str(exc)) from exc
    if not queries:
        raise DatasetError(f"{path}: holds no queries")
    return queries, lines


def _parse_query(line: str, where: str) -> tuple[str, str]:
    try:
        raw: Any = json.loads(line)
    except json.JSONDecodeError as exc:
        raise DatasetError(f"{where}: malformed JSON: {exc.msg} (column {exc.colno})") from exc
    if not isinstance(raw, dict):
        raise DatasetError(f"{where}: expected a JSON object, got {type(raw).__name__}")
    qid = check_id(raw.get("_id"), where, "_id" in raw)  # the corpus's id rules
    text = raw.get("text")
    if not isinstance(text, str):
        raise DatasetError(f"{where}: missing text for query {qid!r}")
    return qid, text


def _read_qrels(
    path: Path,
    queries_path: Path,
    corpus_path: Path,
    query_ids: set[str],
    doc_ids: set[str],
) -> dict[str, dict[str, int]]:
    qrels: dict[str, dict[str, int]] = {}
    seen: dict[tuple[str, str], int] = {}
    first = True
    try:
        for number, line in read_lines(path):
            fields = line.split("\t")
            if first and tuple(f.strip().lower() for f in fields) == _HEADER:
                first = False
                continue
            first = False
            where = f"{path}:{number}"
            if len(fields) != 3:
                raise DatasetError(
                    f"{where}: expected 3 tab-separated fields (query-id, corpus-id, score), "
                    f"found {len(fields)}: {line[:80]!r}"
                )
            qid, did, grade_text = (f.strip() for f in fields)
            grade = _grade(grade_text, where)
            if qid not in query_ids:
                raise DatasetError(f"{where}: query-id {qid!r} is not in {queries_path}")
            if did not in doc_ids:
                raise DatasetError(f"{where}: corpus-id {did!r} is not in {corpus_path}")
            if (qid, did) in seen:
                raise DatasetError(
                    f"{where}: duplicate judgment for query {qid!r}, document {did!r} "
                    f"(first on line {seen[qid, did]})"
                )
            seen[qid, did] = number
            qrels.setdefault(qid, {})[did] = grade
    except CorpusError as exc:  # unreadable, not UTF-8, ...: names the file and line
        raise DatasetError(str(exc)) from exc
    if not qrels:
        raise DatasetError(f"{path}: the split holds no judgments (empty split)")
    return qrels


def _grade(text: str, where: str) -> int:
    try:
        value = float(text)
    except ValueError:
        raise DatasetError(f"{where}: score {text!r} is not a number") from None
    if not value.is_integer() or value < 0:
        raise DatasetError(f"{where}: score {text!r} must be a whole number, 0 or more")
    return int(value)
