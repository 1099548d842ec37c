"""Where the time of one stage call went (the plain twin of neuralir.v1.StageTiming)."""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True, slots=True)
class StageTime:
    stage: str  # "encode", "dense", "lexical", "fuse", "documents", "rerank", "search"
    queue_ns: int = 0  # waiting in the stage's batching queue
    tokenize_ns: int = 0
    inference_ns: int = 0  # the model or index call
    total_ns: int = 0  # the whole stage as its server saw it
    batch_size: int = 0  # items in the model batch this call rode in
