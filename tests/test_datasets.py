"""BEIR dataset loading (strict, with file:line errors) and download from the public release."""

from __future__ import annotations

import shutil
import socket
import subprocess
import sys
import zipfile
from collections.abc import Callable
from pathlib import Path
from urllib.parse import urlparse

import pytest

from neuralir.eval.datasets import DatasetError, load_dataset
from neuralir.eval.download import BEIR_BASE_URL, DownloadError, download_beir


@pytest.fixture
def adi_copy(shared_data: Path, tmp_path: Path) -> Path:
    """A private copy of ADI (82 docs, 35 queries) that a test may damage."""
    return Path(shutil.copytree(shared_data / "adi", tmp_path / "adi"))


@pytest.mark.needs_data
def test_adi_loads_with_every_judgment(shared_data: Path) -> None:
    dataset = load_dataset(shared_data / "adi", "test")
    assert dataset.name == "adi"
    assert dataset.corpus_size == 82
    assert len(dataset.queries) == 35
    assert sum(len(j) for j in dataset.qrels.values()) == 170
    assert dataset.qrels["1"]["17"] == 1
    assert len(dataset.corpus_sha256) == 64


@pytest.mark.needs_data
def test_only_judged_queries_are_kept(shared_data: Path) -> None:
    cisi = load_dataset(shared_data / "cisi", "test")
    assert len(cisi.queries) == 76  # of 112 queries, as the collection's README says
    assert set(cisi.queries) == set(cisi.qrels)


@pytest.mark.needs_data
def test_graded_judgments_keep_their_grades(shared_data: Path) -> None:
    cranfield = load_dataset(shared_data / "cranfield", "test_graded")
    grades = {g for judged in cranfield.qrels.values() for g in judged.values()}
    assert grades == {1, 2, 3, 4}


@pytest.mark.needs_data
def test_limited_takes_the_first_judged_queries(shared_data: Path) -> None:
    dataset = load_dataset(shared_data / "adi", "test")
    first = dataset.limited(5)
    assert list(first.queries) == list(dataset.queries)[:5]
    assert set(first.qrels) == set(first.queries)
    assert dataset.limited(0) is dataset


def _replace_line(path: Path, number: int, text: str) -> None:
    lines = path.read_text(encoding="utf-8").splitlines()
    lines[number - 1] = text
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


BREAKAGES: dict[str, tuple[Callable[[Path], None], str, str]] = {
    # name: (damage, file whose name the error must carry, words it must contain)
    "qrels missing field": (
        lambda d: _replace_line(d / "qrels" / "test.tsv", 5, "1\t17"),
        "qrels/test.tsv:5",
        "expected 3 tab-separated fields",
    ),
    "qrels bad score": (
        lambda d: _replace_line(d / "qrels" / "test.tsv", 4, "1\t17\tvery"),
        "qrels/test.tsv:4",
        "is not a number",
    ),
    "qrels unknown document": (
        lambda d: _replace_line(d / "qrels" / "test.tsv", 3, "1\tno-such-doc\t1"),
        "qrels/test.tsv:3",
        "corpus-id 'no-such-doc' is not in",
    ),
    "qrels unknown query": (
        lambda d: _replace_line(d / "qrels" / "test.tsv", 2, "999\t17\t1"),
        "qrels/test.tsv:2",
        "query-id '999' is not in",
    ),
    "qrels duplicate": (
        lambda d: _replace_line(d / "qrels" / "test.tsv", 3, "1\t17\t1"),
        "qrels/test.tsv:3",
        "first on line 2",
    ),
    "empty split": (
        lambda d: (d / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\n"),
        "qrels/test.tsv",
        "empty split",
    ),
    "queries malformed json": (
        lambda d: _replace_line(d / "queries.jsonl", 7, '{"_id": "7", "text": '),
        "queries.jsonl:7",
        "malformed JSON",
    ),
    "queries duplicate id": (
        lambda d: _replace_line(d / "queries.jsonl", 3, '{"_id": "1", "text": "again"}'),
        "queries.jsonl:3",
        "duplicate _id '1'",
    ),
    "queries numeric id": (
        lambda d: _replace_line(d / "queries.jsonl", 4, '{"_id": 4, "text": "four"}'),
        "queries.jsonl:4",
        'quote it ("_id": "4")',
    ),
    "queries latin-1": (
        lambda d: (d / "queries.jsonl").write_bytes(
            (d / "queries.jsonl").read_bytes() + '{"_id": "99", "text": "café"}\n'.encode("latin-1")
        ),
        "queries.jsonl:36",
        "not UTF-8 (invalid continuation byte: byte 0xE9",
    ),
    "corpus id with a tab": (
        lambda d: _replace_line(d / "corpus.jsonl", 9, '{"_id": "9\\t1", "text": "x"}'),
        "corpus.jsonl:9",
        "holds the control character U+0009",
    ),
    "qrels binary": (
        lambda d: (d / "qrels" / "test.tsv").write_bytes(b"query-id\tcorpus-id\tscore\n\x00\x01"),
        "qrels/test.tsv:2",
        "NUL byte",
    ),
    "corpus malformed json": (
        lambda d: _replace_line(d / "corpus.jsonl", 11, "{not json"),
        "corpus.jsonl:11",
        "malformed JSON",
    ),
    "corpus missing": (
        lambda d: (d / "corpus.jsonl").unlink(),
        "corpus.jsonl",
        "missing",
    ),
    "split missing": (
        lambda d: (d / "qrels" / "test.tsv").rename(d / "qrels" / "other.tsv"),
        "qrels/test.tsv",
        "splits here: other",
    ),
}


@pytest.mark.needs_data
@pytest.mark.parametrize("breakage", sorted(BREAKAGES))
def test_damaged_dataset_names_file_and_line(adi_copy: Path, breakage: str) -> None:
    damage, where, words = BREAKAGES[breakage]
    damage(adi_copy)
    with pytest.raises(DatasetError) as raised:
        load_dataset(adi_copy, "test")
    message = str(raised.value)
    assert f"{adi_copy}/{where}" in message
    assert words in message


@pytest.mark.needs_data
def test_bad_split_name_is_refused(adi_copy: Path) -> None:
    with pytest.raises(DatasetError, match="not a valid split name"):
        load_dataset(adi_copy, "../test")


# ---------------------------------------------------------------- download


def _zip_dataset(source: Path, archive: Path, top: str, extra: dict[str, str] | None = None) -> str:
    with zipfile.ZipFile(archive, "w") as bundle:
        for path in sorted(source.rglob("*")):
            if path.is_file():
                bundle.write(path, f"{top}/{path.relative_to(source).as_posix()}")
        for name, text in (extra or {}).items():
            bundle.writestr(name, text)
    return archive.parent.as_uri()


@pytest.mark.needs_data
def test_download_unpacks_a_beir_archive(adi_copy: Path, tmp_path: Path) -> None:
    """The real download code, fed a file:// URL laid out like the BEIR release."""
    releases = tmp_path / "release"
    releases.mkdir()
    base_url = _zip_dataset(adi_copy, releases / "adi.zip", "adi")
    out = tmp_path / "data"
    path = download_beir("adi", out, base_url=base_url)
    assert path == out / "adi"
    assert len(load_dataset(path, "test").queries) == 35
    assert sorted(p.name for p in out.iterdir()) == ["adi"]  # no partial files left
    assert download_beir("adi", out, base_url="file:///nowhere") == path  # kept, not fetched


@pytest.mark.needs_data
def test_download_refuses_unsafe_archives(adi_copy: Path, tmp_path: Path) -> None:
    releases = tmp_path / "release"
    releases.mkdir()
    base_url = _zip_dataset(adi_copy, releases / "adi.zip", "adi", {"../escape.txt": "x"})
    with pytest.raises(DownloadError, match="unsafe path"):
        download_beir("adi", tmp_path / "data", base_url=base_url)
    assert not (tmp_path / "escape.txt").exists()
    assert list((tmp_path / "data").iterdir()) == []


def test_download_reports_a_missing_dataset(tmp_path: Path) -> None:
    with pytest.raises(DownloadError, match="cannot download"):
        download_beir("nosuch", tmp_path, base_url=tmp_path.as_uri())
    with pytest.raises(DownloadError, match="not a dataset name"):
        download_beir("../etc", tmp_path)


def _release_reachable() -> bool:
    host = urlparse(BEIR_BASE_URL).hostname
    assert host is not None
    try:
        socket.create_connection((host, 443), timeout=3).close()
    except OSError:
        return False
    return True


def test_download_fails_cleanly_offline(tmp_path: Path) -> None:
    if _release_reachable():
        pytest.skip("the BEIR release is reachable: this test covers the offline case")
    neuralir = Path(sys.executable).with_name("neuralir")
    done = subprocess.run(
        [str(neuralir), "data", "download", "scifact", "--out", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 2
    assert "error: cannot download" in done.stderr
    assert f"{BEIR_BASE_URL}/scifact.zip" in done.stderr
    assert "Traceback" not in done.stderr
    assert list(tmp_path.iterdir()) == []
