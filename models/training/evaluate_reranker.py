"""Evaluate a cross-encoder checkpoint as a reranker over the product's first stages.

For each first stage (BM25 + stem top-100; hybrid = RRF k 60 of BM25 + stem and dense
top-100) and rerank depth d, reports nDCG@10 (ranx) of the first stage alone, the
cross-encoder alone, and blends ``w * z(ce) + (1 - w) * z(first_stage)``, where z
standardises the scores over each query's top-d candidates (the RRF stage blends its
fused score). Cross-encoder scores are raw logits; they are cached per model.

    python -m models.training.evaluate_reranker --model /work/train-runs/runs/ce-v1/final \\
        --out /work/train-runs/eval/ce-v1-final.json
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch
from ranx import Qrels, Run, evaluate
from sentence_transformers.cross_encoder import CrossEncoder

from ..ranking import blend_scores
from .data import (
    DEFAULT_BASE_MODEL,
    DEFAULT_DATA_DIR,
    DEFAULT_WORK_DIR,
    Document,
    collection_dir,
    load_corpus,
    load_qrels,
    load_queries,
)
from .first_stage import BM25Index, DenseIndex, rrf

log = logging.getLogger(__name__)

Ranked = dict[str, list[tuple[str, float]]]  # query id -> (doc id, score), best first
DEPTHS = (10, 20, 50, 100)
WEIGHTS = (0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 1.0)
CANDIDATES = 100
# Prefer a cheaper depth when it is within this nDCG@10 of the best (100 queries are noisy).
TIE_TOLERANCE = 0.002


def first_stages(
    docs: list[Document], queries: dict[str, str], base_model: Path, cache_dir: Path
) -> tuple[dict[str, Ranked], dict[tuple[str, str], float]]:
    """The first stages' top-100 lists, and the bi-encoder cosine of every candidate."""
    qids = sorted(queries)
    texts = [queries[q] for q in qids]
    bm25 = dict(zip(qids, BM25Index(docs).search(texts, CANDIDATES), strict=True))
    index = DenseIndex(base_model, docs, cache_dir)
    q_emb = index.encode(texts)
    dense = dict(zip(qids, index.search_embeddings(q_emb, CANDIDATES), strict=True))
    hybrid = {q: rrf([bm25[q], dense[q]])[:CANDIDATES] for q in qids}
    cosine = {
        (q, d): index.cosine(q_emb[i], d)
        for i, q in enumerate(qids)
        for d, _ in bm25[q] + hybrid[q]
    }
    return {"bm25": bm25, "dense": dense, "hybrid": hybrid}, cosine


def score_pairs(
    model_dir: Path,
    pairs: list[tuple[str, str]],
    docs: dict[str, Document],
    queries: dict[str, str],
    max_length: int,
    cache: Path,
) -> dict[tuple[str, str], float]:
    """Cross-encoder logits for (query id, doc id) pairs, cached on disk per model + length."""
    cached: dict[str, float] = json.loads(cache.read_text()) if cache.exists() else {}
    todo = sorted({p for p in pairs if f"{p[0]}\t{p[1]}" not in cached})
    if todo:
        log.info("scoring %d pairs with %s", len(todo), model_dir)
        model = CrossEncoder(str(model_dir), max_length=max_length, device="cpu")
        texts = [(queries[q], docs[d].full_text) for q, d in todo]
        logits = model.predict(
            texts, batch_size=32, activation_fn=torch.nn.Identity(), show_progress_bar=True
        )
        cached.update({f"{q}\t{d}": float(s) for (q, d), s in zip(todo, logits, strict=True)})
        cache.parent.mkdir(parents=True, exist_ok=True)
        cache.write_text(json.dumps(cached))
    return {p: cached[f"{p[0]}\t{p[1]}"] for p in pairs}


def rerank(
    ranked: Ranked, ce: dict[tuple[str, str], float], depth: int, weight: float
) -> dict[str, dict[str, float]]:
    """Blend the top-`depth`; the rest keep their first-stage order below them."""
    run: dict[str, dict[str, float]] = {}
    for qid, hits in ranked.items():
        head, tail = hits[:depth], hits[depth:]
        if not head:
            continue
        # The blend the rerank service applies (models/ranking.py): trained = served.
        first = np.array([s for _, s in head])
        cross = np.array([ce[(qid, d)] for d, _ in head])
        blend = blend_scores(cross, first, weight)
        scores = {d: 1000.0 + float(b) for (d, _), b in zip(head, blend, strict=True)}
        scores.update({d: -float(i) for i, (d, _) in enumerate(tail)})
        run[qid] = scores
    return run


def sorted_qrels(qrels: dict[str, dict[str, int]]) -> Qrels:
    # ranx 0.3.21 silently mis-scores when Qrels and Run list queries in different
    # orders (dev nDCG@10 0.013 instead of 0.681): always hand both over sorted by id.
    return Qrels({q: qrels[q] for q in sorted(qrels)})


def sorted_run(run: dict[str, dict[str, float]]) -> Run:
    return Run({q: run[q] for q in sorted(run)})


def metric(qrels: Qrels, run: dict[str, dict[str, float]], name: str) -> float:
    return float(evaluate(qrels, sorted_run(run), name))


def ndcg10(qrels: Qrels, run: dict[str, dict[str, float]]) -> float:
    return metric(qrels, run, "ndcg@10")


def choose(results: dict[str, dict[str, dict[str, float]]]) -> dict[str, object]:
    """Best (stage, depth, weight) by dev nDCG@10, ties within tolerance to the cheaper depth."""
    rows = [
        (score, stage, int(depth), float(w))
        for stage, by_depth in results.items()
        for depth, by_w in by_depth.items()
        for w, score in by_w.items()
    ]
    best = max(r[0] for r in rows)
    near = [r for r in rows if r[0] >= best - TIE_TOLERANCE]
    score, stage, depth, weight = min(near, key=lambda r: (r[2], -r[0]))
    return {"first_stage": stage, "rerank_depth": depth, "blend_weight": weight, "ndcg@10": score}


def run_eval(args: argparse.Namespace) -> dict[str, Any]:
    path = collection_dir(args.data_dir, args.collection)
    corpus = load_corpus(path)
    docs = {d.doc_id: d for d in corpus}
    qrels_dict = load_qrels(path, args.split)
    all_queries = load_queries(path)
    queries = {q: all_queries[q] for q in qrels_dict if q in all_queries}
    qrels = sorted_qrels(qrels_dict)
    stages, cosine = first_stages(corpus, queries, args.base_model, args.work_dir / "cache")

    report: dict[str, Any] = {
        "model": str(args.model),
        "collection": args.collection,
        "split": args.split,
        "queries": len(queries),
        "max_length": args.max_length,
        "first_stage": {
            name: {
                "ndcg@10": ndcg10(qrels, {q: dict(h) for q, h in ranked.items()}),
                "recall@100": metric(qrels, {q: dict(h) for q, h in ranked.items()}, "recall@100"),
            }
            for name, ranked in stages.items()
        },
    }
    depths = sorted(args.depths)
    pairs = sorted(
        {
            (q, d)
            for name in args.stages
            for q, hits in stages[name].items()
            for d, _ in hits[: max(depths)]
        }
    )
    # Key the score cache by the weights file too, so a re-exported model is rescored.
    weights = args.model / "model.safetensors"
    stamp = weights.stat().st_mtime_ns if weights.exists() else 0
    key = hashlib.sha1(f"{args.model.resolve()}:{stamp}:{args.max_length}".encode()).hexdigest()[
        :12
    ]
    cache = args.work_dir / "cache" / f"ce-{args.collection}-{args.split}-{key}.json"
    ce = score_pairs(args.model, pairs, docs, all_queries, args.max_length, cache)

    def grid(scores: dict[tuple[str, str], float]) -> dict[str, dict[str, dict[str, float]]]:
        return {
            name: {
                str(depth): {
                    str(w): ndcg10(qrels, rerank(stages[name], scores, depth, w)) for w in WEIGHTS
                }
                for depth in depths
            }
            for name in args.stages
        }

    report["rerank"] = grid(ce)
    report["chosen"] = choose(report["rerank"])
    # Reference: the same blends with the bi-encoder's cosine instead of the cross-encoder.
    # The cross-encoder is only worth its latency where it beats this.
    report["rerank_bi_encoder_cosine"] = grid(cosine)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2))
    return report


def format_table(report: dict[str, Any]) -> str:
    lines = [f"{report['collection']} {report['split']} ({report['queries']} q), nDCG@10"]
    for name, m in report["first_stage"].items():
        lines.append(f"  first stage {name:7s} {m['ndcg@10']:.4f}  (R@100 {m['recall@100']:.3f})")
    header = "  stage   depth " + " ".join(f"w={w:<5}" for w in WEIGHTS)
    lines.append(header)
    for name, by_depth in report["rerank"].items():
        for depth, by_w in by_depth.items():
            cells = " ".join(f"{by_w[str(w)]:.4f} " for w in WEIGHTS)
            lines.append(f"  {name:7s} {depth:>5} {cells}")
    lines.append(f"  chosen: {report['chosen']}")
    lines.append("  reference, bi-encoder cosine in place of the cross-encoder:")
    for name, by_depth in report["rerank_bi_encoder_cosine"].items():
        for depth, by_w in by_depth.items():
            cells = " ".join(f"{by_w[str(w)]:.4f} " for w in WEIGHTS)
            lines.append(f"  {name:7s} {depth:>5} {cells}")
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--model", type=Path, required=True)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--data-dir", type=Path, default=DEFAULT_DATA_DIR)
    p.add_argument("--work-dir", type=Path, default=DEFAULT_WORK_DIR)
    p.add_argument("--base-model", type=Path, default=DEFAULT_BASE_MODEL, help="the bi-encoder")
    p.add_argument("--collection", default="scifact")
    p.add_argument("--split", default="dev_sub")
    p.add_argument("--stages", nargs="+", default=["bm25", "hybrid"], choices=["bm25", "hybrid"])
    p.add_argument("--depths", type=int, nargs="+", default=list(DEPTHS), help="rerank depths")
    p.add_argument("--max-length", type=int, default=160)
    p.add_argument("--threads", type=int, default=2)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    print(format_table(run_eval(args)))


if __name__ == "__main__":
    main()
