"""The pipelines `neuralir eval` measures, as named on its command line.

FIRST                       bm25 | dense | hybrid (the server's default fusion)
                            | hybrid-rrf | hybrid-convex[@WEIGHT] (WEIGHT: the dense list's)
FIRST+rerank[@DEPTH]        that first stage reranked at DEPTH (default 100)
FIRST+cascade@FIRST:DEPTH   reranked twice: the cascade model (--cascade-model) over the
                            top FIRST, then the reranker over the top DEPTH of that order
"""

from __future__ import annotations

import argparse
import dataclasses
import re

from neuralir.v1.limits import MAX_RERANK_DEPTH

DEFAULT_RERANK_DEPTH = 100

FIRST_STAGES = {"bm25": "lexical", "dense": "dense", "hybrid": "hybrid"}

_PIPELINE = re.compile(
    r"(?P<first>bm25|dense|hybrid)"
    r"(?:-(?P<fusion>rrf|convex)(?:@(?P<weight>[0-9.]+))?)?"
    r"(?:\+rerank(?:@(?P<depth>\d+))?|\+cascade@(?P<cascade>\d+):(?P<second>\d+))?"
)
_HELP = (
    "use bm25, dense, hybrid, hybrid-rrf or hybrid-convex[@W], optionally followed by "
    "+rerank[@DEPTH] or +cascade@FIRST:DEPTH (e.g. bm25+rerank@20, hybrid-convex@0.4+rerank@20, "
    "bm25+cascade@50:20)"
)


@dataclasses.dataclass(frozen=True)
class Pipeline:
    name: str  # as given on the command line, the key of the results
    mode: str  # client search mode: "lexical", "dense" or "hybrid"
    rerank_depth: int  # 0 = no reranking
    fusion: str = ""  # hybrid only: "rrf", "convex", "" = the server's default
    fusion_weight: float | None = None  # convex fusion's dense weight; None = the server's
    cascade_depth: int = 0  # > rerank_depth: a first rerank pass over this many


def parse_pipeline(text: str) -> Pipeline:
    match = _PIPELINE.fullmatch(text.strip())
    if match is None:
        raise argparse.ArgumentTypeError(f"unknown pipeline {text!r}: {_HELP}")
    first, fusion = match.group("first"), match.group("fusion") or ""
    if fusion and first != "hybrid":
        raise argparse.ArgumentTypeError(f"{text!r}: only hybrid has a fusion")
    weight = None
    if match.group("weight") is not None:
        if fusion != "convex":
            raise argparse.ArgumentTypeError(f"{text!r}: only convex fusion has a weight")
        weight = float(match.group("weight"))
        if not 0.0 <= weight <= 1.0:
            raise argparse.ArgumentTypeError(f"fusion weight in {text!r} must be in [0, 1]")
    depth = cascade = 0
    if match.group("cascade"):
        cascade, depth = int(match.group("cascade")), int(match.group("second"))
        if not 1 <= depth < cascade <= MAX_RERANK_DEPTH:
            raise argparse.ArgumentTypeError(
                f"cascade in {text!r}: 1 <= DEPTH < FIRST <= {MAX_RERANK_DEPTH}"
            )
    elif "+rerank" in text:
        depth = int(match.group("depth") or DEFAULT_RERANK_DEPTH)
        if not 1 <= depth <= MAX_RERANK_DEPTH:
            raise argparse.ArgumentTypeError(
                f"rerank depth in {text!r} must be between 1 and {MAX_RERANK_DEPTH}"
            )
    return Pipeline(text.strip(), FIRST_STAGES[first], depth, fusion, weight, cascade)
