"""A strict reader for BEIR-layout corpora (`{"_id", "title", "text"}` per line).

Shared by the index build and the evaluation code, so both see the same documents and fail the
same way on a bad file: a `CorpusError` naming the file and line (and the byte, for bytes that
are not UTF-8). What it refuses, and why (docs/operating.md, "Index build input"):

- bytes that are not UTF-8, NUL bytes (a binary or UTF-16 file), lines over `max_line_bytes`;
- a line that is not a JSON object, a missing or non-string `title`/`text`;
- an `_id` that is missing, empty, not a JSON string (numbers are refused, not converted:
  `7`, `7.0` and `7e0` would all be text "7" to one reader and not to another), over
  `MAX_ID_CHARS`, holding a control character or starting or ending with whitespace (qrels
  files are tab-separated and their fields stripped: such an id could never be judged), or a
  duplicate;
- any field holding an unpaired surrogate (`"\\ud800"`): not Unicode, so neither SQLite's
  UTF-8 nor a protobuf string can carry it;
- a document whose title + text is over `max_doc_chars`, unless `truncate` cuts it (a warning
  names the line).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

# Characters of title + text. The encoder reads 256 tokens (about 1,500 characters) and BM25
# gains nothing from megabytes; 200,000 keeps whole every document of the development
# collections (the longest: 10,126) and of a long scientific paper, and bounds one document's
# cost (measured: 0.4 s and ~20 MiB to encode, 0.03 s to analyse; 50 MB took 67 s and 7.5 GB).
DEFAULT_MAX_DOC_CHARS = 200_000
MAX_ID_CHARS = 1024
# No line is read past this many bytes (a file without line breaks is not slurped whole): the
# larger of 64 MiB and 16 bytes per allowed character (JSON escapes take up to 12).
MIN_LINE_BYTES = 64 << 20
# Warnings for cut documents name this many lines, then one summary counts the rest.
_TRUNCATION_WARNINGS = 20

_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f]")
_SURROGATE = re.compile("[\ud800-\udfff]")
_JSON_TYPES = {dict: "an object", list: "an array", bool: "a boolean", type(None): "null"}


class CorpusError(ValueError):
    """A corpus file is unreadable or malformed; the message names the file and line."""


@dataclasses.dataclass(frozen=True)
class CorpusDoc:
    doc_id: str
    title: str
    text: str
    line: int = dataclasses.field(default=0, compare=False)  # in its file; 0 = not from a file

    @property
    def passage(self) -> str:
        """The text that is embedded and indexed: title and text, as the BEIR baselines do."""
        return f"{self.title} {self.text}" if self.title else self.text


def max_line_bytes(max_doc_chars: int | None) -> int:
    return max(MIN_LINE_BYTES, 16 * (max_doc_chars or 0))


def iter_corpus(
    path: Path,
    max_doc_chars: int | None = DEFAULT_MAX_DOC_CHARS,
    truncate: bool = False,
) -> Iterator[CorpusDoc]:
    """Yields the documents of a BEIR `corpus.jsonl` in file order; blank lines are skipped.

    A document whose title + text is longer than `max_doc_chars` (None = no limit) is refused,
    or with `truncate` cut to it: the text first, then the title. Raises CorpusError naming
    the file and line for everything the module docstring lists.
    """
    path = Path(path)
    first_seen: dict[str, int] = {}
    truncated = 0
    for line_number, line in read_lines(path, max_line_bytes(max_doc_chars)):
        where = f"{path}:{line_number}"
        doc = _parse_line(line, where, line_number)
        if doc.doc_id in first_seen:
            raise CorpusError(
                f"{where}: duplicate _id {doc.doc_id!r} "
                f"(first seen on line {first_seen[doc.doc_id]})"
            )
        first_seen[doc.doc_id] = line_number
        chars = len(doc.title) + len(doc.text)
        if max_doc_chars is not None and chars > max_doc_chars:
            if not truncate:
                raise CorpusError(
                    f"{where}: document {doc.doc_id!r} is {chars:,} characters (title + text), "
                    f"over the limit of {max_doc_chars:,}: raise the limit (--max-doc-chars) "
                    "or cut such documents to it (--truncate-long-docs)"
                )
            truncated += 1
            if truncated <= _TRUNCATION_WARNINGS:
                logger.warning(
                    "%s: document %r is %s characters (title + text): cut to %s",
                    where,
                    doc.doc_id,
                    f"{chars:,}",
                    f"{max_doc_chars:,}",
                )
            doc = _cut(doc, max_doc_chars)
        yield doc
    if truncated:
        logger.warning(
            "%s: %d documents cut to %s characters (title + text)",
            path,
            truncated,
            f"{max_doc_chars:,}",
        )


def read_lines(path: Path, line_bytes: int = MIN_LINE_BYTES) -> Iterator[tuple[int, str]]:
    """(line number, text) of each non-blank line of a UTF-8 file, the line break removed.

    Raises CorpusError naming the file and line for a file that cannot be read, a line over
    `line_bytes`, a NUL byte, or bytes that are not UTF-8 (with their offset in the line and
    in the file).
    """
    path = Path(path)
    try:
        handle = path.open("rb")
    except OSError as exc:
        raise CorpusError(f"{path}: cannot read ({exc.strerror or exc})") from exc
    with handle:
        offset = 0
        line_number = 0
        while True:
            line_number += 1
            where = f"{path}:{line_number}"
            try:
                raw = handle.readline(line_bytes + 1)
            except OSError as exc:
                raise CorpusError(f"{where}: cannot read ({exc.strerror or exc})") from exc
            if not raw:
                return
            if len(raw) > line_bytes:
                raise CorpusError(
                    f"{where}: line is over {line_bytes:,} bytes, longer than any document "
                    "may be: a file without line breaks, or not a JSON-lines file?"
                )
            nul = raw.find(b"\x00")
            if nul >= 0:
                raise CorpusError(
                    f"{where}: NUL byte at byte {nul} of the line: a binary or UTF-16 file, "
                    "not UTF-8 JSON lines"
                )
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise CorpusError(
                    f"{where}: not UTF-8 ({exc.reason}: byte 0x{raw[exc.start]:02X} at byte "
                    f"{exc.start} of the line, {offset + exc.start} of the file): convert the "
                    "file to UTF-8 (e.g. `iconv -f latin1 -t utf-8`)"
                ) from None
            offset += len(raw)
            if text.strip():
                yield line_number, text.rstrip("\r\n")


def check_id(value: Any, where: str, present: bool = True) -> str:
    """`value` as a document or query id, or a CorpusError saying why it cannot be one.

    `present` = the record has an `_id` key (a missing key and `null` are told apart).
    """
    if not present:
        raise CorpusError(f"{where}: missing _id")
    if isinstance(value, int | float) and not isinstance(value, bool):
        number = json.dumps(value)
        raise CorpusError(
            f'{where}: _id is the number {number}, not a string: quote it ("_id": "{number}")'
        )
    if not isinstance(value, str):
        raise CorpusError(f"{where}: _id is {_json_type(value)}, not a string")
    if not value:
        raise CorpusError(f"{where}: empty _id")
    if len(value) > MAX_ID_CHARS:
        raise CorpusError(
            f"{where}: _id {value[:40]!r}... is {len(value):,} characters, "
            f"over the limit of {MAX_ID_CHARS:,}"
        )
    control = _CONTROL.search(value)
    if control:
        raise CorpusError(
            f"{where}: _id {value!r} holds the control character U+{ord(control.group()):04X} "
            f"(at character {control.start()}): qrels files and result tables cannot carry it"
        )
    if value != value.strip():
        raise CorpusError(
            f"{where}: _id {value!r} starts or ends with whitespace: qrels fields are "
            "stripped, so it could never be judged"
        )
    _check_unicode(value, "_id", where)
    return value


def _parse_line(line: str, where: str, line_number: int) -> CorpusDoc:
    try:
        raw: Any = json.loads(line)
    except json.JSONDecodeError as exc:
        raise CorpusError(f"{where}: malformed JSON: {exc.msg} (column {exc.colno})") from exc
    if not isinstance(raw, dict):
        raise CorpusError(f"{where}: expected a JSON object, got {_json_type(raw)}")
    doc_id = check_id(raw.get("_id"), where, "_id" in raw)
    title = raw.get("title") or ""
    text = raw.get("text")
    if not isinstance(title, str):
        raise CorpusError(f"{where}: title of {doc_id!r} is {_json_type(title)}, not a string")
    if text is None:
        raise CorpusError(f"{where}: missing text for {doc_id!r}")
    if not isinstance(text, str):
        raise CorpusError(f"{where}: text of {doc_id!r} is {_json_type(text)}, not a string")
    if "\\u" in line:  # only a \u escape can make a lone surrogate
        _check_unicode(title, f"title of {doc_id!r}", where)
        _check_unicode(text, f"text of {doc_id!r}", where)
    return CorpusDoc(doc_id, title, text, line_number)


def _check_unicode(value: str, what: str, where: str) -> None:
    surrogate = _SURROGATE.search(value)
    if surrogate:
        raise CorpusError(
            f"{where}: {what} holds an unpaired surrogate \\u{ord(surrogate.group()):04x} "
            f"(at character {surrogate.start()}): not valid Unicode"
        )


def _json_type(value: Any) -> str:
    if isinstance(value, int | float) and not isinstance(value, bool):
        return "a number"
    return _JSON_TYPES.get(type(value), type(value).__name__)


def _cut(doc: CorpusDoc, max_chars: int) -> CorpusDoc:
    title = doc.title[:max_chars]
    text = doc.text[: max_chars - len(title)]
    return dataclasses.replace(doc, title=title, text=text)


def count_lines(path: Path) -> int:
    """Line count: a cheap upper bound on the number of documents, for progress. Read in
    chunks, so a file without line breaks is not read into memory whole."""
    count = 0
    last = b"\n"
    with Path(path).open("rb") as handle:
        while chunk := handle.read(1 << 20):
            count += chunk.count(b"\n")
            last = chunk[-1:]
    return count + (last != b"\n")
