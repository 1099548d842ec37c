"""`neuralir index build --shards N`: one published index per shard plus the shard map.

Each shard is an ordinary index built by `build_index` over the documents it owns, so it is
served, verified and swapped exactly as an unsharded index is. The shard map is written
last: a directory without `shards.json` is an unfinished build.

The whole corpus is read once before the first shard is built, so a bad corpus (a malformed
line, a shard left without documents or without a BM25 term) fails before any shard of an
earlier build is replaced. A failed first build removes the directory it made.
"""

from __future__ import annotations

import itertools
import logging
import shutil
from collections.abc import Iterable
from pathlib import Path

from bm25s.stopwords import STOPWORDS_EN

from neuralir.index.build import (
    IndexBuildError,
    IndexBuildSettings,
    build_index,
    check_corpus_path,
    missing_dirs,
    no_terms_error,
    remove_empty_dirs,
)
from neuralir.index.corpus import CorpusDoc, iter_corpus
from neuralir.index.format import IndexInfo, LexicalAnalyzer
from neuralir.index.shard_map import (
    ShardMap,
    ShardSpec,
    read_shard_map,
    shard_of,
    write_shard_map,
)
from neuralir.models.encoder import Encoder
from neuralir.models.manifest import sha256_file

logger = logging.getLogger(__name__)


def build_sharded_index(
    corpus_path: Path,
    out_dir: Path,
    encoder: Encoder,
    shards: int,
    settings: IndexBuildSettings | None = None,
    progress: bool = True,
) -> ShardMap:
    """Builds `shards` indexes under `out_dir` (`shard-0` ...) and writes `shards.json`."""
    if shards < 2:
        raise IndexBuildError("a sharded build needs at least 2 shards (1 = the plain layout)")
    settings = settings or IndexBuildSettings()
    settings.validate()
    corpus_path = Path(corpus_path)
    check_corpus_path(corpus_path)
    out_dir = Path(out_dir)
    if out_dir.is_symlink() or (out_dir.exists() and not out_dir.is_dir()):
        raise IndexBuildError(
            f"{out_dir} holds an unsharded index: a sharded build needs its own directory"
        )
    previous = read_shard_map(out_dir) if out_dir.is_dir() else None
    if previous is not None and previous.count != shards:
        raise IndexBuildError(
            f"{out_dir} holds a build with {previous.count} shards, not {shards}: remove it or "
            "choose another output"
        )
    _check_shards(corpus_path, shards, settings)
    created = missing_dirs(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    infos: list[IndexInfo] = []
    try:
        for index in range(shards):
            spec = ShardSpec(index, shards)
            target = out_dir / f"shard-{index}"
            logger.info("building shard %d of %d into %s", index, shards, target)
            infos.append(build_index(corpus_path, target, encoder, settings, progress, spec))
    except BaseException:
        if created:  # a first build: what it made is no index yet
            shutil.rmtree(out_dir, ignore_errors=True)
            remove_empty_dirs(created[1:])
        raise
    shard_map = ShardMap(
        count=shards,
        documents=tuple(info.size for info in infos),
        corpus_sha256=sha256_file(Path(corpus_path)),
        encoder_model_id=encoder.model_id,
    )
    write_shard_map(out_dir, shard_map)
    logger.info("built %d shards: %s documents", shards, "/".join(map(str, shard_map.documents)))
    return shard_map


def _check_shards(corpus_path: Path, shards: int, settings: IndexBuildSettings) -> None:
    """Reads the whole corpus as the build will (so a malformed line fails here) and refuses a
    shard count that leaves a shard without documents or without a BM25 term."""
    docs: Iterable[CorpusDoc] = iter_corpus(
        corpus_path, settings.max_doc_chars, settings.truncate_long_docs
    )
    if settings.max_docs:
        docs = itertools.islice(docs, settings.max_docs)
    analyzer = LexicalAnalyzer(STOPWORDS_EN, settings.stemmer)
    counts = [0] * shards
    first: list[CorpusDoc | None] = [None] * shards
    with_terms = [False] * shards
    for doc in docs:
        owner = shard_of(doc.doc_id, shards)
        counts[owner] += 1
        first[owner] = first[owner] or doc
        if not with_terms[owner]:  # analysed until the shard has a term, no further
            with_terms[owner] = bool(analyzer.analyze(doc.passage))
    seen = [d.line for d in first if d is not None]
    if not seen:
        raise IndexBuildError(f"corpus {corpus_path} holds no documents")
    if not any(with_terms):
        raise no_terms_error(str(corpus_path), sum(counts), min(seen))
    for index, shard_first in enumerate(first):
        if shard_first is None:
            raise IndexBuildError(
                f"shard {index} of {shards} would hold no documents of {corpus_path}: "
                "use fewer shards"
            )
        if not with_terms[index]:
            where = f"shard {index} of {shards}: {corpus_path}"
            raise no_terms_error(where, counts[index], shard_first.line, ": use fewer shards")
