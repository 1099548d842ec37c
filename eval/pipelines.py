"""The pipelines `neuralir eval` measures, as named on its command line.

bm25 | dense | hybrid            a first stage alone
FIRST+rerank[@DEPTH]             that first stage reranked at DEPTH (default 100)
"""

from __future__ import annotations

import argparse
import dataclasses
import re

from neuralir.v1.limits import MAX_RERANK_DEPTH

DEFAULT_RERANK_DEPTH = 100

FIRST_STAGES = {"bm25": "lexical", "dense": "dense", "hybrid": "hybrid"}

_PIPELINE = re.compile(r"(?P<first>bm25|dense|hybrid)(?P<rerank>\+rerank(?:@(?P<depth>\d+))?)?")


@dataclasses.dataclass(frozen=True)
class Pipeline:
    name: str  # as given on the command line, the key of the results
    mode: str  # client search mode: "lexical", "dense" or "hybrid"
    rerank_depth: int  # 0 = no reranking


def parse_pipeline(text: str) -> Pipeline:
    match = _PIPELINE.fullmatch(text.strip())
    if match is None:
        raise argparse.ArgumentTypeError(
            f"unknown pipeline {text!r}: use bm25, dense, hybrid, or one of them with +rerank "
            "or +rerank@DEPTH (e.g. dense+rerank@50)"
        )
    depth = 0
    if match.group("rerank"):
        depth = int(match.group("depth") or DEFAULT_RERANK_DEPTH)
        if not 1 <= depth <= MAX_RERANK_DEPTH:
            raise argparse.ArgumentTypeError(
                f"rerank depth in {text!r} must be between 1 and {MAX_RERANK_DEPTH}"
            )
    return Pipeline(text.strip(), FIRST_STAGES[match.group("first")], depth)
