"""BEIR-layout test collections: strict loading for evaluation, download from the BEIR release.

    DIR/corpus.jsonl          {"_id", "title", "text"} one document a line
    DIR/queries.jsonl         {"_id", "text"} one query a line
    DIR/qrels/SPLIT.tsv       header "query-id<TAB>corpus-id<TAB>score", then one judgment a line

Every problem in a file is reported as a `DatasetError` naming the file and line, so a broken
collection fails before any service starts instead of giving quietly wrong figures.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import re
import shutil
import urllib.error
import urllib.request
import zipfile
from pathlib import Path
from typing import Any

from neuralir.server.corpus import CorpusError, iter_corpus
from neuralir.server.index_store import sha256_file

logger = logging.getLogger(__name__)

CORPUS_FILE = "corpus.jsonl"
QUERIES_FILE = "queries.jsonl"
QRELS_DIR = "qrels"
# The public BEIR release (UKP Lab, TU Darmstadt), one zip per dataset holding NAME/ in this layout.
BEIR_BASE_URL = "https://public.ukp.informatik.tu-darmstadt.de/thakur/BEIR/datasets"
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")
_HEADER = ("query-id", "corpus-id", "score")


class DatasetError(ValueError):
    """A collection cannot be evaluated: a missing file, a malformed line, an unknown id."""


class DownloadError(RuntimeError):
    """A dataset could not be fetched or unpacked (offline, unknown name, damaged archive)."""


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
    if not _NAME.fullmatch(split):
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
        ids = {doc.doc_id for doc in iter_corpus(path)}
    except CorpusError as exc:  # already names the file and line
        raise DatasetError(str(exc)) from exc
    except UnicodeDecodeError as exc:
        raise DatasetError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from exc
    if not ids:
        raise DatasetError(f"{path}: holds no documents")
    return ids


def _read_queries(path: Path) -> tuple[dict[str, str], dict[str, int]]:
    """All queries (id -> text) and the line each was read from."""
    queries: dict[str, str] = {}
    lines: dict[str, int] = {}
    try:
        with path.open("r", encoding="utf-8") as handle:
            for number, line in enumerate(handle, start=1):
                if not line.strip():
                    continue
                qid, text = _parse_query(line, f"{path}:{number}")
                if qid in lines:
                    raise DatasetError(
                        f"{path}:{number}: duplicate _id {qid!r} (first seen on line {lines[qid]})"
                    )
                queries[qid], lines[qid] = text, number
    except UnicodeDecodeError as exc:
        raise DatasetError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from exc
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
    qid = raw.get("_id")
    if isinstance(qid, int) and not isinstance(qid, bool):
        qid = str(qid)  # some converted collections write numeric ids
    if not isinstance(qid, str) or not qid:
        raise DatasetError(f"{where}: missing or empty _id")
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
        handle = path.open("r", encoding="utf-8")
    except OSError as exc:
        raise DatasetError(f"{path}: cannot read ({exc.strerror})") from exc
    with handle:
        try:
            for number, raw_line in enumerate(handle, start=1):
                line = raw_line.rstrip("\r\n")
                if not line.strip():
                    continue
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
        except UnicodeDecodeError as exc:
            raise DatasetError(
                f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})"
            ) from exc
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


# ---------------------------------------------------------------- download


def download_beir(
    name: str, out: Path, base_url: str = BEIR_BASE_URL, timeout_s: float = 60.0
) -> Path:
    """Fetches BEIR dataset `name` from its public release into `out/name`; returns that path.

    An existing, complete `out/name` is kept as it is. The archive is unpacked beside the
    destination and renamed into place, so an interrupted download never leaves half a dataset.
    """
    if not _NAME.fullmatch(name):
        raise DownloadError(f"{name!r} is not a dataset name (e.g. scifact, nfcorpus, fiqa)")
    out = Path(out)
    dest = out / name
    if (dest / CORPUS_FILE).is_file() and (dest / QUERIES_FILE).is_file():
        logger.info("%s is already here", dest)
        return dest
    out.mkdir(parents=True, exist_ok=True)
    url = f"{base_url.rstrip('/')}/{name}.zip"
    archive = out / f".{name}.zip.part"
    unpacked = out / f".{name}.unpacked"
    try:
        _fetch(url, archive, name, dest, timeout_s)
        shutil.rmtree(unpacked, ignore_errors=True)
        root = _unpack(archive, unpacked, name, url)
        if dest.exists():  # an incomplete earlier copy
            shutil.rmtree(dest)
        root.rename(dest)
    finally:
        with contextlib.suppress(FileNotFoundError):
            archive.unlink()
        shutil.rmtree(unpacked, ignore_errors=True)
    logger.info("downloaded %s into %s (splits: %s)", name, dest, available_splits(dest))
    return dest


def _fetch(url: str, archive: Path, name: str, dest: Path, timeout_s: float) -> None:
    logger.info("downloading %s", url)
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as response, archive.open("wb") as f:
            shutil.copyfileobj(response, f, length=1 << 20)
    except urllib.error.HTTPError as exc:
        if exc.code == 404:
            raise DownloadError(f"no BEIR dataset named {name!r} at {url} (HTTP 404)") from exc
        raise DownloadError(f"cannot download {url}: HTTP {exc.code} {exc.reason}") from exc
    except (urllib.error.URLError, TimeoutError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise DownloadError(
            f"cannot download {url}: {reason}. This needs internet access; on a machine that "
            f"has it, fetch that zip and unpack it so that {dest}/{CORPUS_FILE}, "
            f"{dest}/{QUERIES_FILE} and {dest}/{QRELS_DIR}/ exist"
        ) from exc


def _unpack(archive: Path, target: Path, name: str, url: str) -> Path:
    """Extracts safely (no absolute or `..` paths) and returns the directory holding the corpus."""
    try:
        with zipfile.ZipFile(archive) as bundle:
            for member in bundle.namelist():
                parts = Path(member).parts
                if member.startswith(("/", "\\")) or ".." in parts:
                    raise DownloadError(f"{url}: unsafe path {member!r} in the archive")
            bad = bundle.testzip()
            if bad is not None:
                raise DownloadError(f"{url}: archive member {bad} is damaged")
            bundle.extractall(target)
    except zipfile.BadZipFile as exc:
        raise DownloadError(f"{url}: not a zip archive ({exc})") from exc
    for candidate in (target / name, target):
        if (candidate / CORPUS_FILE).is_file():
            if not (candidate / QUERIES_FILE).is_file() or not (candidate / QRELS_DIR).is_dir():
                raise DownloadError(f"{url}: archive lacks {QUERIES_FILE} or {QRELS_DIR}/")
            return candidate
    raise DownloadError(f"{url}: archive holds no {CORPUS_FILE}")
