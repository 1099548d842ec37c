"""Conversions between the plain stage results and the neuralir.v1 messages, in one place."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from neuralir.server.stages.timing import StageTime
from neuralir.v1 import common_pb2


def timing_message(timing: StageTime) -> common_pb2.StageTiming:
    return common_pb2.StageTiming(
        stage=timing.stage,
        queue_ns=timing.queue_ns,
        tokenize_ns=timing.tokenize_ns,
        inference_ns=timing.inference_ns,
        total_ns=timing.total_ns,
        batch_size=timing.batch_size,
    )


def stage_time(message: common_pb2.StageTiming) -> StageTime:
    return StageTime(
        stage=message.stage,
        queue_ns=message.queue_ns,
        tokenize_ns=message.tokenize_ns,
        inference_ns=message.inference_ns,
        total_ns=message.total_ns,
        batch_size=message.batch_size,
    )


def scored_documents(hits: Sequence[tuple[str, float]]) -> list[common_pb2.ScoredDocument]:
    return [
        common_pb2.ScoredDocument(doc_id=doc_id, score=score, rank=rank)
        for rank, (doc_id, score) in enumerate(hits, start=1)
    ]


def hits_of(documents: Iterable[common_pb2.ScoredDocument]) -> list[tuple[str, float]]:
    return [(d.doc_id, d.score) for d in documents]
