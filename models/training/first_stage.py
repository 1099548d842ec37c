"""First-stage retrievers with the product's settings, for negative mining and evaluation.

BM25: bm25s, k1 0.9, b 0.4, Lucene IDF, English stopwords, PyStemmer English stemmer.
Dense: all-MiniLM-L6-v2 with sentence-transformers, fp32, normalised, cosine (exact search).
Hybrid: reciprocal rank fusion (k 60) of both lists' top 100.
"""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path

import bm25s
import numpy as np
import Stemmer
from sentence_transformers import SentenceTransformer

from ..ranking import reciprocal_rank_fusion
from .data import Document

log = logging.getLogger(__name__)

Run = dict[str, dict[str, float]]  # query id -> doc id -> score (ranx layout)


class BM25Index:
    def __init__(self, docs: list[Document]) -> None:
        self.doc_ids = [d.doc_id for d in docs]
        self.stemmer = Stemmer.Stemmer("english")
        tokens = bm25s.tokenize(
            [d.full_text for d in docs], stopwords="en", stemmer=self.stemmer, show_progress=False
        )
        self.retriever = bm25s.BM25(k1=0.9, b=0.4, method="lucene")
        self.retriever.index(tokens, show_progress=False)

    def search(self, queries: list[str], k: int) -> list[list[tuple[str, float]]]:
        """Top-k (doc id, score) per query, best first."""
        k = min(k, len(self.doc_ids))
        tokens = bm25s.tokenize(queries, stopwords="en", stemmer=self.stemmer, show_progress=False)
        idx, scores = self.retriever.retrieve(tokens, k=k, show_progress=False)
        return [
            [(self.doc_ids[i], float(s)) for i, s in zip(row_i, row_s, strict=True) if s > 0]
            for row_i, row_s in zip(idx, scores, strict=True)
        ]


class DenseIndex:
    def __init__(self, model_path: Path, docs: list[Document], cache_dir: Path) -> None:
        self.doc_ids = [d.doc_id for d in docs]
        self.row = {doc_id: i for i, doc_id in enumerate(self.doc_ids)}
        self.model = SentenceTransformer(str(model_path), device="cpu")
        self.doc_emb = self._doc_embeddings(docs, cache_dir)

    def _doc_embeddings(self, docs: list[Document], cache_dir: Path) -> np.ndarray:
        # Encoding the corpus takes minutes on 2 cores: cache it, keyed by the texts.
        digest = hashlib.sha1("\n".join(d.full_text for d in docs).encode()).hexdigest()[:12]
        path = cache_dir / f"doc-emb-{digest}.npy"
        if path.exists():
            return np.load(path)
        log.info("encoding %d documents (cached to %s)", len(docs), path)
        emb = self.encode([d.full_text for d in docs], show_progress_bar=True)
        cache_dir.mkdir(parents=True, exist_ok=True)
        np.save(path, emb)
        return emb

    def encode(self, texts: list[str], show_progress_bar: bool = False) -> np.ndarray:
        return self.model.encode(
            texts,
            batch_size=32,
            normalize_embeddings=True,
            convert_to_numpy=True,
            show_progress_bar=show_progress_bar,
        ).astype(np.float32)

    def search(self, queries: list[str], k: int) -> list[list[tuple[str, float]]]:
        return self.search_embeddings(self.encode(queries), k)

    def search_embeddings(self, query_emb: np.ndarray, k: int) -> list[list[tuple[str, float]]]:
        k = min(k, len(self.doc_ids))
        sims = query_emb @ self.doc_emb.T
        top = np.argpartition(-sims, k - 1, axis=1)[:, :k]
        out = []
        for row, cand in zip(sims, top, strict=True):
            order = cand[np.argsort(-row[cand])]
            out.append([(self.doc_ids[i], float(row[i])) for i in order])
        return out

    def cosine(self, query_emb: np.ndarray, doc_id: str) -> float:
        return float(query_emb @ self.doc_emb[self.row[doc_id]])


def rrf(lists: list[list[tuple[str, float]]]) -> list[tuple[str, float]]:
    """Reciprocal rank fusion of scored lists, as the search service fuses them."""
    return reciprocal_rank_fusion([[doc_id for doc_id, _ in ranked] for ranked in lists])
