"""Build listwise training groups (query, positive, hard negatives) for the reranker.

Sources, all from SciFact (never the held-out collections):
- ``train_sub``: labelled claims with their judged abstracts;
- ``weak_title``: a paper's title as the query for its abstract (text without the title);
- ``weak_sentence``: one sentence of an abstract as the query for the rest of the document.

Hard negatives are sampled from the union of the BM25 (+stem) and dense top-30, with the
judged positives (or the source document itself) removed, as the product's first stages
would surface them. Deterministic for a given seed.

    python -m models.training.pairs --work-dir /work/train-runs
"""

from __future__ import annotations

import argparse
import json
import logging
import random
import re
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path

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
from .first_stage import BM25Index, DenseIndex

log = logging.getLogger(__name__)

SOURCES = ("train_sub", "weak_title", "weak_sentence")
# Split after ., ! or ? when the next sentence starts like one (avoids "e.g. x", "p < 0.05").
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z(\[])")
# Structured abstracts carry section labels ("BACKGROUND", "MAIN OUTCOME MEASURES") that a
# real claim never starts with: a leading run of capitalised words before a normal word.
_SECTION_LABEL = re.compile(r"^(?:[A-Z][A-Z/&,-]+\s+)+(?=[A-Z][a-z])")


@dataclass(frozen=True)
class Group:
    source: str
    qid: str
    query: str
    positive: str
    negatives: list[str]


@dataclass(frozen=True)
class Query:
    """A query to mine negatives for: its positives and the texts to pair them with."""

    source: str
    qid: str
    text: str
    positives: dict[str, str]  # doc id -> positive passage text
    excluded: set[str]  # doc ids never used as negatives


def split_sentences(text: str) -> list[str]:
    return [s.strip() for s in _SENTENCE_END.split(text) if s.strip()]


def strip_section_label(sentence: str) -> str:
    match = _SECTION_LABEL.match(sentence)
    # Only long labels: a leading acronym ("HIV", "DNA") belongs to the sentence.
    if match and max(len(w) for w in match.group().split()) >= 5:
        return sentence[match.end() :]
    return sentence


def labelled_queries(
    queries: dict[str, str], qrels: dict[str, dict[str, int]], docs: dict[str, Document]
) -> list[Query]:
    out = []
    for qid in sorted(qrels):
        pos = {d for d, s in qrels[qid].items() if s > 0 and d in docs}
        if qid in queries and pos:
            texts = {d: docs[d].full_text for d in sorted(pos)}
            out.append(Query("train_sub", qid, queries[qid], texts, set(qrels[qid])))
    return out


def title_queries(docs: Iterable[Document]) -> list[Query]:
    # The positive omits the title, or the pair would be an exact-match giveaway.
    return [
        Query("weak_title", f"t:{d.doc_id}", d.title, {d.doc_id: d.text}, {d.doc_id})
        for d in docs
        if len(d.title.split()) >= 4 and len(d.text.split()) >= 30
    ]


def sentence_queries(docs: Iterable[Document], rng: random.Random) -> list[Query]:
    """One sentence (8-50 words, claim-sized) as the query for the rest of its document."""
    out = []
    for d in docs:
        sentences = split_sentences(d.text)
        candidates = [i for i, s in enumerate(sentences) if 8 <= len(s.split()) <= 50]
        if len(sentences) < 3 or not candidates:
            continue
        i = rng.choice(candidates)
        rest = " ".join(s for j, s in enumerate(sentences) if j != i)
        positive = f"{d.title} {rest}".strip()
        query = strip_section_label(sentences[i])
        out.append(Query("weak_sentence", f"s:{d.doc_id}", query, {d.doc_id: positive}, {d.doc_id}))
    return out


def negative_pools(
    queries: list[Query], bm25: BM25Index, dense: DenseIndex, depth: int
) -> list[list[str]]:
    """Union of both first stages' top-`depth`, interleaved by rank, minus excluded ids."""
    texts = [q.text for q in queries]
    bm25_hits = bm25.search(texts, depth + 1)
    dense_hits = dense.search(texts, depth + 1)
    pools = []
    for q, b, d in zip(queries, bm25_hits, dense_hits, strict=True):
        pool: list[str] = []
        for pair in zip(b[:depth], d[:depth], strict=False):
            for doc_id, _ in pair:
                if doc_id not in q.excluded and doc_id not in pool:
                    pool.append(doc_id)
        pools.append(pool)
    return pools


def make_groups(
    queries: list[Query],
    pools: list[list[str]],
    docs: dict[str, Document],
    num_negatives: int,
    rng: random.Random,
) -> list[Group]:
    groups = []
    for q, pool in zip(queries, pools, strict=True):
        if len(pool) < num_negatives:
            continue
        for positive in q.positives.values():
            neg_ids = rng.sample(pool, num_negatives)
            # Weak title queries pair with title-less passages: keep negatives in the same form.
            negs = [
                docs[n].text if q.source == "weak_title" else docs[n].full_text for n in neg_ids
            ]
            groups.append(Group(q.source, q.qid, q.text, positive, negs))
    return groups


def write_groups(groups: list[Group], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as f:
        for g in groups:
            f.write(json.dumps(asdict(g), ensure_ascii=False) + "\n")


def read_groups(path: Path) -> list[Group]:
    with path.open(encoding="utf-8") as f:
        return [Group(**json.loads(line)) for line in f if line.strip()]


def build(args: argparse.Namespace) -> dict[str, int]:
    path = collection_dir(args.data_dir, "scifact")
    corpus = load_corpus(path)
    docs = {d.doc_id: d for d in corpus}
    rng = random.Random(args.seed)
    sources = {
        "train_sub": labelled_queries(load_queries(path), load_qrels(path, "train_sub"), docs),
        "weak_title": title_queries(corpus),
        "weak_sentence": sentence_queries(corpus, rng),
    }
    bm25 = BM25Index(corpus)
    dense = DenseIndex(args.base_model, corpus, args.work_dir / "cache")
    counts = {}
    for name, queries in sources.items():
        pools = negative_pools(queries, bm25, dense, args.pool_depth)
        groups = make_groups(queries, pools, docs, args.num_negatives, rng)
        rng.shuffle(groups)
        write_groups(groups, args.work_dir / "pairs" / f"{name}.jsonl")
        counts[name] = len(groups)
        log.info("%s: %d queries -> %d groups", name, len(queries), len(groups))
    stats = {**counts, "num_negatives": args.num_negatives, "pool_depth": args.pool_depth}
    stats["seed"] = args.seed
    (args.work_dir / "pairs" / "stats.json").write_text(json.dumps(stats, indent=2))
    return counts


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--data-dir", type=Path, default=DEFAULT_DATA_DIR)
    p.add_argument("--work-dir", type=Path, default=DEFAULT_WORK_DIR)
    p.add_argument("--base-model", type=Path, default=DEFAULT_BASE_MODEL)
    p.add_argument("--num-negatives", type=int, default=4)
    p.add_argument("--pool-depth", type=int, default=30)
    p.add_argument("--seed", type=int, default=13)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    print(json.dumps(build(parse_args(argv))))


if __name__ == "__main__":
    main()
