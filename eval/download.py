"""`neuralir data download NAME`: a BEIR dataset from its public release (needs internet)."""

from __future__ import annotations

import contextlib
import logging
import shutil
import urllib.error
import urllib.request
import zipfile
from pathlib import Path

from neuralir.eval.datasets import (
    CORPUS_FILE,
    NAME_PATTERN,
    QRELS_DIR,
    QUERIES_FILE,
    available_splits,
)

logger = logging.getLogger(__name__)

# The public BEIR release (UKP Lab, TU Darmstadt), one zip per dataset holding NAME/ in this layout.
BEIR_BASE_URL = "https://public.ukp.informatik.tu-darmstadt.de/thakur/BEIR/datasets"


class DownloadError(RuntimeError):
    """A dataset could not be fetched or unpacked (offline, unknown name, damaged archive)."""


def download_beir(
    name: str, out: Path, base_url: str = BEIR_BASE_URL, timeout_s: float = 60.0
) -> Path:
    """Fetches BEIR dataset `name` from its public release into `out/name`; returns that path.

    An existing, complete `out/name` is kept as it is. The archive is unpacked beside the
    destination and renamed into place, so an interrupted download never leaves half a dataset.
    """
    if not NAME_PATTERN.fullmatch(name):
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
