"""A small reader for BEIR-layout corpora (`{"_id", "title", "text"}` per line).

Shared by the index build and the evaluation code, so both see the same documents and fail the
same way on a bad file: with the file name and line number.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any


class CorpusError(ValueError):
    """A corpus file is malformed: bad JSON, a missing or duplicate `_id`, a wrong field type."""


@dataclasses.dataclass(frozen=True)
class CorpusDoc:
    doc_id: str
    title: str
    text: str

    @property
    def passage(self) -> str:
        """The text that is embedded and indexed: title and text, as the BEIR baselines do."""
        return f"{self.title} {self.text}" if self.title else self.text


def iter_corpus(path: Path) -> Iterator[CorpusDoc]:
    """Yields the documents of a BEIR `corpus.jsonl` in file order; blank lines are skipped.

    Raises CorpusError naming the file and line for malformed JSON, a missing `_id`, a field of
    the wrong type, or an id seen before (with the line it was first seen on).
    """
    path = Path(path)
    first_seen: dict[str, int] = {}
    with path.open("r", encoding="utf-8") as handle:
        for line_number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            doc = _parse_line(line, path, line_number)
            if doc.doc_id in first_seen:
                raise CorpusError(
                    f"{path}:{line_number}: duplicate _id {doc.doc_id!r} "
                    f"(first seen on line {first_seen[doc.doc_id]})"
                )
            first_seen[doc.doc_id] = line_number
            yield doc


def _parse_line(line: str, path: Path, line_number: int) -> CorpusDoc:
    where = f"{path}:{line_number}"
    try:
        raw: Any = json.loads(line)
    except json.JSONDecodeError as exc:
        raise CorpusError(f"{where}: malformed JSON: {exc.msg} (column {exc.colno})") from exc
    if not isinstance(raw, dict):
        raise CorpusError(f"{where}: expected a JSON object, got {type(raw).__name__}")
    doc_id = raw.get("_id")
    # BEIR ids are strings, but some converted corpora write numbers: accept those as text.
    if isinstance(doc_id, int) and not isinstance(doc_id, bool):
        doc_id = str(doc_id)
    if not isinstance(doc_id, str) or not doc_id:
        raise CorpusError(f"{where}: missing or empty _id")
    title = raw.get("title") or ""
    text = raw.get("text")
    if not isinstance(title, str):
        raise CorpusError(f"{where}: title of {doc_id!r} is not a string")
    if not isinstance(text, str):
        raise CorpusError(f"{where}: missing text for {doc_id!r}")
    return CorpusDoc(doc_id, title, text)


def count_lines(path: Path) -> int:
    """Non-blank line count: a cheap upper bound on the number of documents, for progress."""
    with Path(path).open("rb") as handle:
        return sum(1 for line in handle if line.strip())
