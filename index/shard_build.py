"""`neuralir index build --shards N`: one published index per shard plus the shard map.

Each shard is an ordinary index built by `build_index` over the documents it owns, so it is
served, verified and swapped exactly as an unsharded index is. The shard map is written
last: a directory without `shards.json` is an unfinished build.
"""

from __future__ import annotations

import logging
from pathlib import Path

from neuralir.index.build import IndexBuildError, IndexBuildSettings, build_index
from neuralir.index.format import IndexInfo
from neuralir.index.shard_map import ShardMap, ShardSpec, read_shard_map, write_shard_map
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
    out_dir = Path(out_dir)
    if out_dir.is_symlink() or (out_dir.exists() and not out_dir.is_dir()):
        raise IndexBuildError(
            f"{out_dir} holds an unsharded index: a sharded build needs its own directory"
        )
    out_dir.mkdir(parents=True, exist_ok=True)
    previous = read_shard_map(out_dir)
    if previous is not None and previous.count != shards:
        raise IndexBuildError(
            f"{out_dir} holds a build with {previous.count} shards, not {shards}: remove it or "
            "choose another output"
        )
    infos: list[IndexInfo] = []
    for index in range(shards):
        spec = ShardSpec(index, shards)
        target = out_dir / f"shard-{index}"
        logger.info("building shard %d of %d into %s", index, shards, target)
        try:
            infos.append(build_index(corpus_path, target, encoder, settings, progress, spec))
        except IndexBuildError as exc:
            if "holds no documents" in str(exc):
                raise IndexBuildError(
                    f"shard {index} of {shards} would hold no documents of {corpus_path}: "
                    "use fewer shards"
                ) from exc
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
