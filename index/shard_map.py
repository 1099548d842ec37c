"""Which shard holds a document, and the shard map a sharded build writes beside its shards.

A document belongs to shard `sha1(doc_id) mod N`: a stable hash (Python's `hash()` changes
between processes), so every build and every reader agrees on the owner of a document.

Layout of a sharded build (`neuralir index build --shards N --out DIR`):

    DIR/
        shards.json        the shard map: count, hash, documents per shard, corpus, encoder
        shard-0 -> ...     one published index per shard (a symlink, as an unsharded build)
        ...
        shard-<N-1>
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from pathlib import Path
from typing import Any

SHARD_MAP_FILE = "shards.json"
SHARD_MAP_SCHEMA = 1
HASH_NAME = "sha1(doc_id utf-8), first 8 bytes big-endian, mod count"


def shard_of(doc_id: str, count: int) -> int:
    """The shard (0..count-1) that holds `doc_id`."""
    if count < 1:
        raise ValueError("a shard count must be at least 1")
    digest = hashlib.sha1(doc_id.encode("utf-8"), usedforsecurity=False).digest()
    return int.from_bytes(digest[:8], "big") % count


def shard_dir_name(index: int) -> str:
    return f"shard-{index}"


@dataclasses.dataclass(frozen=True)
class ShardSpec:
    """One shard of a build: this build keeps the documents with shard_of(id, count) == index."""

    index: int
    count: int

    def __post_init__(self) -> None:
        if self.count < 1 or not 0 <= self.index < self.count:
            raise ValueError(f"shard {self.index} of {self.count} does not exist")

    def owns(self, doc_id: str) -> bool:
        return shard_of(doc_id, self.count) == self.index

    def describe(self) -> dict[str, Any]:
        return {"index": self.index, "count": self.count, "hash": HASH_NAME}


@dataclasses.dataclass(frozen=True)
class ShardMap:
    """What `shards.json` records about a sharded build."""

    count: int
    documents: tuple[int, ...]  # per shard, in shard order
    corpus_sha256: str
    encoder_model_id: str
    hash: str = HASH_NAME

    def shard_dirs(self, root: Path) -> list[Path]:
        return [Path(root) / shard_dir_name(i) for i in range(self.count)]

    def to_json(self) -> dict[str, Any]:
        return {
            "schema_version": SHARD_MAP_SCHEMA,
            "count": self.count,
            "hash": self.hash,
            "shards": [
                {"index": i, "dir": shard_dir_name(i), "documents": n}
                for i, n in enumerate(self.documents)
            ],
            "corpus_sha256": self.corpus_sha256,
            "encoder_model_id": self.encoder_model_id,
        }


def write_shard_map(root: Path, shard_map: ShardMap) -> Path:
    """Written to a temporary file and renamed: a reader never sees half a map."""
    path = Path(root) / SHARD_MAP_FILE
    tmp = path.with_name(f".{SHARD_MAP_FILE}.tmp")
    tmp.write_text(json.dumps(shard_map.to_json(), indent=2) + "\n", encoding="utf-8")
    with tmp.open("rb") as handle:
        os.fsync(handle.fileno())
    os.replace(tmp, path)
    return path


def read_shard_map(root: Path) -> ShardMap | None:
    """The map of a sharded build at `root`, or None when `root` holds no map."""
    path = Path(root) / SHARD_MAP_FILE
    if not path.is_file():
        return None
    raw = json.loads(path.read_text(encoding="utf-8"))
    if raw.get("schema_version") != SHARD_MAP_SCHEMA:
        raise ValueError(f"{path} has schema version {raw.get('schema_version')!r}")
    return ShardMap(
        count=int(raw["count"]),
        documents=tuple(int(s["documents"]) for s in raw["shards"]),
        corpus_sha256=str(raw["corpus_sha256"]),
        encoder_model_id=str(raw["encoder_model_id"]),
        hash=str(raw["hash"]),
    )
