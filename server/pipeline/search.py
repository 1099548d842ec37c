"""SearchPipeline: query text -> retrieve (dense, BM25, or both fused) -> fetch -> rerank.

Plain values in, plain results out: the search servicer adapts it to gRPC, the benchmark
calls it in-process, and the same code runs whether its stages share the process or not.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import time
from collections.abc import Callable, Coroutine
from typing import Any, Literal

from neuralir.index.store import StoredDocument
from neuralir.models.ranking import (
    NORMALIZATIONS,
    Normalization,
    check_weight,
    convex_fusion,
    reciprocal_rank_fusion,
)
from neuralir.server.errors import InvalidArgument
from neuralir.server.pipeline.backends import (
    EncoderBackend,
    IndexBackend,
    RerankBackend,
    SearchCall,
)
from neuralir.server.stages.rerank import RerankPassage
from neuralir.server.stages.timing import StageTime
from neuralir.v1.limits import MAX_PASSAGE_CHARS

# Each first-stage list contributes this many candidates to fusion (RRF over each list's
# top 100 is the field's usual setting); deeper k or rerank depth raises it.
FUSION_DEPTH = 100

Mode = Literal["dense", "lexical", "hybrid"]
FusionMethod = Literal["rrf", "convex"]
FUSIONS: tuple[FusionMethod, ...] = ("rrf", "convex")


@dataclasses.dataclass(frozen=True, slots=True)
class FusionDefaults:
    """How hybrid mode fuses when a query does not say (the server's --fusion flags)."""

    # Chosen on the development collections together (docs/quality.md, "Fusion"): convex
    # fusion of z-scores at dense weight 0.6 beat RRF on each of the four.
    method: FusionMethod = "convex"
    dense_weight: float = 0.6  # convex fusion: the dense list's weight
    normalization: Normalization = "zscore"

    def __post_init__(self) -> None:
        if self.method not in FUSIONS:
            raise ValueError(f"fusion must be one of {FUSIONS}, not {self.method!r}")
        if self.normalization not in NORMALIZATIONS:
            raise ValueError(f"normalization must be one of {NORMALIZATIONS}")
        check_weight(self.dense_weight)


@dataclasses.dataclass(frozen=True, slots=True)
class Cascade:
    """A first, cheaper rerank pass: `model` rescores the top `depth` before the main one."""

    model: str
    depth: int


@dataclasses.dataclass(frozen=True, slots=True)
class SearchQuery:
    text: str
    k: int
    mode: Mode = "hybrid"
    rerank_depth: int = 0  # 0 = no rerank
    rerank_model: str = ""  # "" = the served default
    blend_weight: float | None = None  # None = the reranker's recommended weights
    snippet_chars: int = 0
    ef: int = 0  # 0 = the index default
    fusion: FusionMethod | None = None  # hybrid mode; None = the pipeline's default
    fusion_weight: float | None = None  # convex fusion's dense weight; None = the default
    cascade: Cascade | None = None  # None = one rerank pass


@dataclasses.dataclass(slots=True)
class Candidate:
    """A document on its way through the stages; the hits of a search are the first k."""

    doc_id: str
    first_stage_score: float
    dense_score: float | None = None
    bm25_score: float | None = None
    fused_score: float | None = None
    rerank_score: float | None = None
    final_score: float = 0.0
    title: str = ""
    snippet: str = ""


@dataclasses.dataclass(slots=True)
class SearchOutcome:
    hits: list[Candidate]  # best first
    timings: list[StageTime]  # in the order the stages ran, then "search"
    encoder_model_id: str = ""
    rerank_model_id: str = ""
    cascade_model_id: str = ""  # the first pass's reranker, with a cascade
    unavailable_shards: list[str] = dataclasses.field(default_factory=list)


SpanFactory = Callable[[str], contextlib.AbstractContextManager[Any]]


def _no_span(name: str) -> contextlib.AbstractContextManager[Any]:
    return contextlib.nullcontext()


class SearchPipeline:
    def __init__(
        self,
        encoder: EncoderBackend,
        index: IndexBackend,
        reranker: RerankBackend,
        span: SpanFactory | None = None,
        fusion: FusionDefaults | None = None,
    ) -> None:
        self.encoder = encoder
        self.index = index
        self.reranker = reranker
        self.fusion = fusion or FusionDefaults()
        # A tracing span around each stage call (same names in-process and over gRPC).
        self._span = span or _no_span

    async def search(self, query: SearchQuery, call: SearchCall) -> SearchOutcome:
        started = time.perf_counter_ns()
        timings: list[StageTime] = []
        outcome = SearchOutcome([], timings)
        depth = max(query.k, query.rerank_depth, query.cascade.depth if query.cascade else 0)
        shown = (await self._retrieve(query, depth, call, outcome))[:depth]
        documents = await self._documents(query, shown, call, timings)
        if query.rerank_depth > 0 and shown:
            if query.cascade is not None:
                cascade = query.cascade
                outcome.cascade_model_id = await self._rerank(
                    query, shown, documents, call, timings, cascade.depth, cascade.model, True
                )
            outcome.rerank_model_id = await self._rerank(
                query, shown, documents, call, timings, query.rerank_depth, query.rerank_model
            )
        hits = shown[: query.k]
        for candidate in hits:
            document = documents.get(candidate.doc_id)
            if document is not None:
                candidate.title = document.title
                candidate.snippet = document.text[: query.snippet_chars]
        outcome.hits = hits
        outcome.unavailable_shards = sorted(call.shards.unavailable)
        timings.append(StageTime(stage="search", total_ns=time.perf_counter_ns() - started))
        return outcome

    async def _retrieve(
        self, query: SearchQuery, depth: int, call: SearchCall, outcome: SearchOutcome
    ) -> list[Candidate]:
        timings = outcome.timings
        if query.mode == "dense":
            dense = await self._dense(query, depth, call, outcome)
            return [Candidate(d, s, dense_score=s, final_score=s) for d, s in dense]
        if query.mode == "lexical":
            lexical = await self._lexical(query, depth, call, timings)
            return [Candidate(d, s, bm25_score=s, final_score=s) for d, s in lexical]
        list_depth = max(depth, FUSION_DEPTH)
        dense, lexical = await _all_or_nothing(
            self._dense(query, list_depth, call, outcome),
            self._lexical(query, list_depth, call, timings),
        )
        fuse_start = time.perf_counter_ns()
        dense_scores, bm25_scores = dict(dense), dict(lexical)
        if (query.fusion or self.fusion.method) == "convex":
            weight = (
                self.fusion.dense_weight if query.fusion_weight is None else query.fusion_weight
            )
            fused = convex_fusion(dense, lexical, weight, self.fusion.normalization)
        else:
            fused = reciprocal_rank_fusion([[d for d, _ in dense], [d for d, _ in lexical]])
        candidates = [
            Candidate(
                doc_id,
                score,
                dense_score=dense_scores.get(doc_id),
                bm25_score=bm25_scores.get(doc_id),
                fused_score=score,
                final_score=score,
            )
            for doc_id, score in fused
        ]
        timings.append(StageTime(stage="fuse", total_ns=time.perf_counter_ns() - fuse_start))
        return candidates

    async def _dense(
        self, query: SearchQuery, k: int, call: SearchCall, outcome: SearchOutcome
    ) -> list[tuple[str, float]]:
        with self._span("encode"):
            encoded = await self.encoder.encode_query(query.text, call)
        outcome.timings.append(encoded.timing)
        outcome.encoder_model_id = encoded.model_id
        with self._span("dense"):
            found = await self.index.dense_search(encoded.vector, k, query.ef, call)
        outcome.timings.append(found.timing)
        return found.hits

    async def _lexical(
        self, query: SearchQuery, k: int, call: SearchCall, timings: list[StageTime]
    ) -> list[tuple[str, float]]:
        with self._span("lexical"):
            found = await self.index.lexical_search(query.text, k, call)
        timings.append(found.timing)
        return found.hits

    async def _documents(
        self,
        query: SearchQuery,
        shown: list[Candidate],
        call: SearchCall,
        timings: list[StageTime],
    ) -> dict[str, StoredDocument]:
        if not shown:
            return {}
        # Texts only when something reads them: snippets or the cross-encoder.
        with_text = query.snippet_chars > 0 or query.rerank_depth > 0
        started = time.perf_counter_ns()
        with self._span("documents"):
            documents = await self.index.get_documents([c.doc_id for c in shown], with_text, call)
        timings.append(StageTime(stage="documents", total_ns=time.perf_counter_ns() - started))
        return documents

    async def _rerank(
        self,
        query: SearchQuery,
        candidates: list[Candidate],
        documents: dict[str, StoredDocument],
        call: SearchCall,
        timings: list[StageTime],
        depth: int,
        model: str,
        first_pass: bool = False,
    ) -> str:
        """Reorders the top `depth` candidates in place with `model`; the rest keep their order.

        The reranker blends its logits with the first stage's own signals (BM25 and dense
        scores as retrieved, never the fused rank transform).
        """
        head = [c for c in candidates[:depth] if c.doc_id in documents]
        passages = [
            RerankPassage(
                c.doc_id,
                passage_text(documents[c.doc_id]),
                c.first_stage_score,
                c.bm25_score,
                c.dense_score,
            )
            for c in head
        ]
        try:
            with self._span("rerank"):
                reranked = await self.reranker.rerank(
                    query.text, passages, model, query.blend_weight, call
                )
        except InvalidArgument as exc:
            # The reranker names its own fields: a search names the ones of its request.
            fields = {
                "model": "cascade.model" if first_pass else "rerank_model",
                "blend_weight": "blend_weight",
            }
            violation = exc.violations[0]
            if violation.field in fields:
                raise InvalidArgument(fields[violation.field], violation.description) from exc
            raise
        timings.append(
            dataclasses.replace(reranked.timing, stage="cascade") if first_pass else reranked.timing
        )
        by_id = {c.doc_id: c for c in head}
        ordered = []
        for passage in reranked.passages:
            candidate = by_id[passage.id]
            candidate.rerank_score = passage.cross_encoder_score
            candidate.final_score = passage.score
            ordered.append(candidate)
        tail = [c for c in candidates if c.doc_id not in by_id]
        candidates[:] = ordered + tail
        return reranked.model_id


def passage_text(document: StoredDocument) -> str:
    """The text the cross-encoder reads: title and body, as the passages were embedded."""
    text = f"{document.title} {document.text}".strip() or document.doc_id
    return text[:MAX_PASSAGE_CHARS]


async def _all_or_nothing(*coros: Coroutine[Any, Any, Any]) -> list[Any]:
    """Runs coroutines concurrently; the first failure cancels the rest and is re-raised."""
    tasks = [asyncio.ensure_future(c) for c in coros]
    try:
        return list(await asyncio.gather(*tasks))
    except BaseException:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        raise
