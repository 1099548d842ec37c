"""Chooses fusion and rerank-blend settings on the development collections, together.

    python -m neuralir.eval.tune fusion --out DIR
    python -m neuralir.eval.tune rerank --out DIR [--model NAME=DIR ...] [--lengths 128 192 256]

Both run the served code in-process: the int8 bi-encoder, the built index (`neuralir.index`,
the same index `neuralir eval` builds), the fusion and blend functions of `models/ranking.py`
and the int8 cross-encoders at each passage length. Every judged query of every collection
gets its dense and BM25 top 100 once (cached); fusion settings are then scored over every
collection from those lists; cross-encoder logits are computed once per (model, length) for the
union of every first stage's top `--max-depth` (cached) and every blend weight is scored from
them. Metrics are ranx's nDCG@10 (as `neuralir eval`).

The choice rule is the issue's: a setting must not fall below its reference (RRF for fusion;
the first stage it reranks for a blend) on any collection by more than the tolerance, and
among those the best mean nDCG@10 wins. The figures of record come from `neuralir eval`
through the real services with the chosen settings (docs/quality.md); this tool only chooses.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import itertools
import json
import logging
import sys
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from neuralir.eval.datasets import Dataset, load_dataset
from neuralir.eval.metrics import ranking_metrics
from neuralir.index.reuse import ensure_index, keyed_path
from neuralir.index.store import IndexStore
from neuralir.models.cross_encoder import CrossEncoder
from neuralir.models.encoder import Encoder
from neuralir.models.manifest import read_manifest
from neuralir.models.ranking import (
    CROSS_ENCODER,
    NORMALIZATIONS,
    blend_signals,
    convex_fusion,
    reciprocal_rank_fusion,
)
from neuralir.models.session import RuntimeSettings

log = logging.getLogger("neuralir.eval.tune")

DEV_COLLECTIONS = ("scifact:dev_sub", "cranfield:test", "cisi:test", "medline:test")
LIST_DEPTH = 100  # each first-stage list, as the search service fuses them
WEIGHTS = tuple(round(w, 2) for w in np.arange(0.0, 1.0001, 0.1))
Ranked = list[tuple[str, float]]


@dataclasses.dataclass
class Collection:
    """One development collection with every judged query's first-stage lists."""

    label: str  # "scifact:dev_sub"
    dataset: Dataset
    dense: dict[str, Ranked]
    bm25: dict[str, Ranked]
    texts: dict[str, str]  # doc_id -> the text the cross-encoder reads (title + text)

    def ndcg(self, rankings: dict[str, list[str]]) -> float:
        return ranking_metrics(self.dataset.qrels, rankings, 10)["ndcg@10"]


def load_collection(
    label: str, data_dir: Path, models_dir: Path, index_cache: Path, cache_dir: Path
) -> Collection:
    name, _, split = label.partition(":")
    dataset = load_dataset(data_dir / name, split)
    encoder_dir = models_dir / "bi-encoder" / "int8"
    model_id = read_manifest(encoder_dir).model_id
    path = keyed_path(index_cache, dataset.name, dataset.corpus_sha256, model_id)
    ensure_index(dataset.corpus_path, path, encoder_dir, corpus_sha256=dataset.corpus_sha256)
    cache = cache_dir / f"lists-{dataset.name}-{split}-{path.name}.json"
    store = IndexStore.open(path, model_id)
    try:
        if cache.is_file():
            lists = json.loads(cache.read_text())
        else:
            log.info("%s: first-stage lists of %d queries", label, len(dataset.queries))
            encoder = Encoder(encoder_dir, RuntimeSettings(intra_op_threads=2))
            lists = {"dense": {}, "bm25": {}}
            for qid, text in dataset.queries.items():
                # One query per call, as a search encodes it (int8 depends on batch company).
                vector = encoder.encode([text], "query")[0]
                lists["dense"][qid] = store.dense_search(vector, LIST_DEPTH)
                lists["bm25"][qid] = store.lexical_search(text, LIST_DEPTH)
            cache.parent.mkdir(parents=True, exist_ok=True)
            cache.write_text(json.dumps(lists))
        wanted = {d for kind in lists.values() for hits in kind.values() for d, _ in hits}
        found, _ = store.get_documents(sorted(wanted))
    finally:
        store.close()
    texts = {d.doc_id: (f"{d.title} {d.text}".strip() or d.doc_id) for d in found}
    as_ranked = {
        kind: {q: [(d, float(s)) for d, s in hits] for q, hits in by_query.items()}
        for kind, by_query in lists.items()
    }
    return Collection(label, dataset, as_ranked["dense"], as_ranked["bm25"], texts)


# ---------------------------------------------------------------- fusion


@dataclasses.dataclass(frozen=True)
class Fusion:
    method: str  # "rrf" or "convex"
    weight: float = 0.0  # convex: the dense list's weight
    normalization: str = ""

    @property
    def name(self) -> str:
        if self.method == "rrf":
            return "rrf"
        return f"convex-{self.normalization}@{self.weight:g}"

    def fuse(self, dense: Ranked, bm25: Ranked) -> Ranked:
        if self.method == "rrf":
            return reciprocal_rank_fusion([[d for d, _ in dense], [d for d, _ in bm25]])
        return convex_fusion(dense, bm25, self.weight, self.normalization)  # type: ignore[arg-type]


def fusions() -> list[Fusion]:
    convex = [Fusion("convex", w, n) for n in NORMALIZATIONS for w in WEIGHTS]
    return [Fusion("rrf"), *convex]


def fused_lists(collection: Collection, fusion: Fusion) -> dict[str, Ranked]:
    return {q: fusion.fuse(collection.dense[q], collection.bm25[q]) for q in collection.dense}


def tune_fusion(collections: Sequence[Collection], tolerance: float) -> dict[str, Any]:
    """nDCG@10 of every fusion (and of each list alone) per collection; the best convex fusion
    that stays within `tolerance` of RRF on every collection."""

    def row(name: str, lists_of: Any) -> dict[str, Any]:
        scores = {
            c.label: c.ndcg({q: [d for d, _ in hits] for q, hits in lists_of(c).items()})
            for c in collections
        }
        return {"fusion": name, **scores, "mean": float(np.mean(list(scores.values())))}

    table = [row("dense", lambda c: c.dense), row("bm25", lambda c: c.bm25)]
    table += [row(f.name, lambda c, f=f: fused_lists(c, f)) for f in fusions()]
    rrf = next(r for r in table if r["fusion"] == "rrf")
    eligible = [
        r
        for r in table
        if r["fusion"].startswith("convex")
        and all(r[c.label] >= rrf[c.label] - tolerance for c in collections)
    ]
    best = max(eligible, key=lambda r: r["mean"], default=rrf)
    return {"collections": [c.label for c in collections], "table": table, "chosen": best}


# ---------------------------------------------------------------- rerank blends


def _digest(*parts: Any) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:16]


def cross_scores(
    collection: Collection,
    heads: dict[str, list[str]],
    model_dir: Path,
    max_length: int,
    cache_dir: Path,
    threads: int = 1,
) -> tuple[dict[str, dict[str, float]], float]:
    """Logits of (query, doc) for every doc of each query's head, and seconds per pair."""
    model_id = read_manifest(model_dir).model_id
    key = _digest(collection.label, model_id, max_length, heads)
    cache = cache_dir / f"ce-{collection.dataset.name}-{key}.json"
    if cache.is_file():
        cached = json.loads(cache.read_text())
        return cached["scores"], float(cached["seconds_per_pair"])
    model = CrossEncoder(
        model_dir, RuntimeSettings(intra_op_threads=threads), max_length=max_length
    )
    scores: dict[str, dict[str, float]] = {}
    pairs, started = 0, time.perf_counter()
    for qid, docs in heads.items():
        query = collection.dataset.queries[qid]
        # One query's head per call, as a search's Rerank call scores it.
        logits = model.score(query, [collection.texts[d] for d in docs])
        scores[qid] = {d: float(s) for d, s in zip(docs, logits, strict=True)}
        pairs += len(docs)
    per_pair = (time.perf_counter() - started) / max(pairs, 1)
    log.info(
        "%s: %d pairs with %s at %d tokens, %.1f ms/pair",
        collection.label,
        pairs,
        model_id,
        max_length,
        per_pair * 1e3,
    )
    cache.parent.mkdir(parents=True, exist_ok=True)
    cache.write_text(json.dumps({"scores": scores, "seconds_per_pair": per_pair}))
    return scores, per_pair


def _reranked(
    first: Ranked,
    logits: dict[str, float],
    depth: int,
    weights: dict[str, float],
    dense: dict[str, float],
    bm25: dict[str, float],
    signals: Sequence[str],
) -> list[str]:
    head, tail = first[:depth], first[depth:]
    ids = [d for d, _ in head]
    values = {
        "bm25": np.array([bm25.get(d, np.nan) for d in ids]),
        "dense": np.array([dense.get(d, np.nan) for d in ids]),
    }
    cross = np.array([logits[d] for d in ids])
    final = blend_signals(cross, {s: values[s] for s in signals}, weights)
    order = np.argsort(-final, kind="stable")
    return [ids[i] for i in order] + [d for d, _ in tail]


SIGNAL_SETS = {"lexical": ("bm25",), "dense": ("dense",), "hybrid": ("bm25", "dense")}


def weight_grid(signals: Sequence[str]) -> Iterable[dict[str, float]]:
    """Cross-encoder weights 0.1..1 and, with two signals, the BM25 share of the rest."""
    for w in WEIGHTS[1:]:
        if len(signals) == 1:
            yield {CROSS_ENCODER: w, signals[0]: round(1.0 - w, 2)}
        else:
            for share in (0.0, 0.25, 0.5, 0.75, 1.0):
                rest = 1.0 - w
                yield {CROSS_ENCODER: w, "bm25": rest * share, "dense": rest * (1.0 - share)}


def tune_rerank(
    collections: Sequence[Collection],
    models: dict[str, Path],
    lengths: Sequence[int],
    depths: Sequence[int],
    fusion: Fusion,
    cache_dir: Path,
    tolerance: float,
    threads: int = 1,
) -> dict[str, Any]:
    max_depth = max(depths)
    firsts: dict[str, dict[str, dict[str, Ranked]]] = {}
    heads: dict[str, dict[str, list[str]]] = {}
    for c in collections:
        hybrid = fused_lists(c, fusion)
        firsts[c.label] = {"lexical": c.bm25, "dense": c.dense, "hybrid": hybrid}
        heads[c.label] = {
            q: sorted({d for stage in firsts[c.label].values() for d, _ in stage[q][:max_depth]})
            for q in c.dense
        }
    baseline = {
        (c.label, stage): c.ndcg({q: [d for d, _ in h] for q, h in lists.items()})
        for c in collections
        for stage, lists in firsts[c.label].items()
    }
    rows: list[dict[str, Any]] = []
    costs: dict[str, dict[str, float]] = {}
    logits_of: dict[tuple[str, int, str], dict[str, dict[str, float]]] = {}
    for (name, model_dir), length in itertools.product(models.items(), lengths):
        spent = []
        for c in collections:
            logits, per_pair = cross_scores(
                c, heads[c.label], model_dir, length, cache_dir, threads
            )
            logits_of[(name, length, c.label)] = logits
            spent.append(per_pair)
        costs.setdefault(name, {})[str(length)] = float(np.mean(spent)) * 1e3
        for stage, signals in SIGNAL_SETS.items():
            for depth, weights in itertools.product(depths, weight_grid(signals)):
                row: dict[str, Any] = {
                    "model": name,
                    "length": length,
                    "stage": stage,
                    "depth": depth,
                    "weights": {k: round(v, 3) for k, v in weights.items()},
                }
                gains = []
                for c in collections:
                    logits = logits_of[(name, length, c.label)]
                    rankings = {
                        q: _reranked(
                            first,
                            logits[q],
                            depth,
                            weights,
                            dict(c.dense[q]),
                            dict(c.bm25[q]),
                            signals,
                        )
                        for q, first in firsts[c.label][stage].items()
                    }
                    score = c.ndcg(rankings)
                    row[c.label] = score
                    gains.append(score - baseline[(c.label, stage)])
                row["mean_gain"] = float(np.mean(gains))
                row["min_gain"] = float(np.min(gains))
                rows.append(row)
    chosen = {}
    for name, stage in itertools.product(models, SIGNAL_SETS):
        for length, depth in itertools.product(lengths, depths):
            candidates = [
                r
                for r in rows
                if (r["model"], r["stage"], r["length"], r["depth"]) == (name, stage, length, depth)
                and r["min_gain"] >= -tolerance
            ]
            if candidates:
                best = max(candidates, key=lambda r: r["mean_gain"])
                chosen[f"{name}/{stage}/{length}/{depth}"] = best
    cascades = cascade_rows(collections, firsts, logits_of, chosen, costs)
    for row in rows:
        row["ms"] = costs[row["model"]][str(row["length"])] * row["depth"]
    return {
        "collections": [c.label for c in collections],
        "fusion": fusion.name,
        "baseline": {f"{c}/{s}": v for (c, s), v in baseline.items()},
        "ms_per_pair": costs,
        "chosen": chosen,
        "cascades": cascades,
        "recommended": recommend(collections, rows, chosen, cascades, baseline, tolerance),
        "rows": rows,
    }


def cascade_rows(
    collections: Sequence[Collection],
    firsts: dict[str, dict[str, dict[str, Ranked]]],
    logits_of: dict[tuple[str, int, str], dict[str, dict[str, float]]],
    chosen: dict[str, dict[str, Any]],
    costs: dict[str, dict[str, float]],
) -> list[dict[str, Any]]:
    """The small model's chosen blend over depth N, then the default's over the top M < N.

    As the search service runs a cascade: both passes blend with the first stage's own
    signals, each with its model's weights; the cost is N small pairs plus M default pairs.
    """
    if not {"small", "default"} <= {key.split("/")[0] for key in chosen}:
        return []
    out = []
    for stage, signals in SIGNAL_SETS.items():
        passes = [
            (key.split("/"), row) for key, row in chosen.items() if key.split("/")[1] == stage
        ]
        smalls = [(int(k[2]), int(k[3]), r) for k, r in passes if k[0] == "small"]
        defaults = [(int(k[2]), int(k[3]), r) for k, r in passes if k[0] == "default"]
        for (s_len, n, s_row), (d_len, m, d_row) in itertools.product(smalls, defaults):
            if m >= n:
                continue
            row: dict[str, Any] = {
                "model": f"small@{n}:default@{m}",
                "stage": stage,
                "lengths": [s_len, d_len],
                "depths": [n, m],
                "weights": [s_row["weights"], d_row["weights"]],
                "ms": costs["small"][str(s_len)] * n + costs["default"][str(d_len)] * m,
            }
            for c in collections:
                rankings = {}
                for q, first in firsts[c.label][stage].items():
                    dense, bm25 = dict(c.dense[q]), dict(c.bm25[q])
                    once = _reranked(
                        first,
                        logits_of[("small", s_len, c.label)][q],
                        n,
                        s_row["weights"],
                        dense,
                        bm25,
                        signals,
                    )
                    rankings[q] = _reranked(
                        [(d, 0.0) for d in once],
                        logits_of[("default", d_len, c.label)][q],
                        m,
                        d_row["weights"],
                        dense,
                        bm25,
                        signals,
                    )
                row[c.label] = c.ndcg(rankings)
            out.append(row)
    return out


# Today's served default before the blend and length work: BM25 top 20 reranked by the
# default model at 160 tokens, w 0.5 on the z-scored logit and 0.5 on BM25's.
REFERENCE = {"model": "default", "stage": "lexical", "length": 160, "depth": 20}
REFERENCE_WEIGHTS = {CROSS_ENCODER: 0.5, "bm25": 0.5}


def recommend(
    collections: Sequence[Collection],
    rows: list[dict[str, Any]],
    chosen: dict[str, dict[str, Any]],
    cascades: list[dict[str, Any]],
    baseline: dict[tuple[str, str], float],
    tolerance: float,
) -> dict[str, Any]:
    """The cheapest reranked pipeline that loses nothing, and the best one.

    "Loses nothing": on every collection at least its own first stage and at least the
    reference (today's default rerank@20) less the tolerance. Cost = estimated rerank
    milliseconds per query (pairs x the model's measured ms/pair at that length).
    """
    labels = [c.label for c in collections]
    reference = next(
        (
            r
            for r in rows
            if all(r[k] == v for k, v in REFERENCE.items())
            and all(r["weights"].get(k) == v for k, v in REFERENCE_WEIGHTS.items())
        ),
        None,
    )
    candidates = list(chosen.values()) + cascades
    if reference is None:
        return {}
    safe = [
        r
        for r in candidates
        if all(
            r[c] >= baseline[(c, r["stage"])] - tolerance and r[c] >= reference[c] - tolerance
            for c in labels
        )
    ]

    def summary(r: dict[str, Any]) -> dict[str, Any]:
        keep = ("model", "stage", "length", "lengths", "depth", "depths", "weights", "ms")
        return {k: r[k] for k in keep if k in r} | {
            "mean": float(np.mean([r[c] for c in labels])),
            **{c: r[c] for c in labels},
        }

    out = {"reference": summary(reference)}
    if safe:
        out["cheapest"] = summary(min(safe, key=lambda r: r["ms"]))
        out["best"] = summary(max(safe, key=lambda r: np.mean([r[c] for c in labels])))
    return out


# ---------------------------------------------------------------- tables


def _short(label: str) -> str:
    return label.split(":")[0]


def fusion_markdown(result: dict[str, Any], keep: Sequence[str] = ()) -> str:
    """The fusion table (every row, or those named in `keep`), nDCG@10 per collection."""
    cols = result["collections"]
    lines = [
        "| fusion | " + " | ".join(_short(c) for c in cols) + " | mean |",
        "|---|" + "---:|" * (len(cols) + 1),
    ]
    chosen = result["chosen"]["fusion"]
    for row in result["table"]:
        if keep and row["fusion"] not in keep and row["fusion"] != chosen:
            continue
        name = f"**{row['fusion']}** (chosen)" if row["fusion"] == chosen else row["fusion"]
        cells = " | ".join(f"{row[c]:.3f}" for c in cols)
        lines.append(f"| {name} | {cells} | {row['mean']:.3f} |")
    return "\n".join(lines) + "\n"


def _weights(w: dict[str, float]) -> str:
    return " / ".join(f"{w.get(k, 0.0):.2f}" for k in (CROSS_ENCODER, "bm25", "dense"))


def rerank_markdown(result: dict[str, Any]) -> str:
    """Per model, first stage, length and depth: the best blend that loses nowhere."""
    cols = result["collections"]
    lines = [
        "| model | first stage | tokens | depth | weights (ce / bm25 / dense) | "
        + " | ".join(_short(c) for c in cols)
        + " | mean gain | ms/pair |",
        "|---|---|---:|---:|---|" + "---:|" * (len(cols) + 2),
    ]
    for stage in SIGNAL_SETS:
        base = " | ".join(f"{result['baseline'][f'{c}/{stage}']:.3f}" for c in cols)
        lines.append(f"| none | {stage} | | | | {base} | | |")
        for key, row in result["chosen"].items():
            model, row_stage, length, depth = key.split("/")
            if row_stage != stage:
                continue
            weights = _weights(row["weights"])
            cells = " | ".join(f"{row[c]:.3f}" for c in cols)
            cost = result["ms_per_pair"][model][length]
            lines.append(
                f"| {model} | {stage} | {length} | {depth} | {weights} | {cells} | "
                f"{row['mean_gain'] * 100:+.1f} | {cost:.1f} |"
            )
    lines += ["", *cascade_markdown(result)]
    return "\n".join(lines) + "\n"


def cascade_markdown(result: dict[str, Any]) -> list[str]:
    """Cascades (small over N, default over the top M), then the recommendation."""
    cols = result["collections"]
    lines = [
        "| cascade | first stage | tokens (small / default) | "
        + " | ".join(_short(c) for c in cols)
        + " | est. ms |",
        "|---|---|---|" + "---:|" * (len(cols) + 1),
    ]
    for row in result.get("cascades", []):
        cells = " | ".join(f"{row[c]:.3f}" for c in cols)
        lengths = " / ".join(str(n) for n in row["lengths"])
        lines.append(f"| {row['model']} | {row['stage']} | {lengths} | {cells} | {row['ms']:.0f} |")
    lines += [
        "",
        "| pick | pipeline | " + " | ".join(_short(c) for c in cols) + " | mean | est. ms |",
    ]
    lines.append("|---|---|" + "---:|" * (len(cols) + 2))
    for pick, row in result.get("recommended", {}).items():
        depth = row.get("depth", row.get("depths"))
        length = row.get("length", row.get("lengths"))
        weights = row["weights"]
        shown = (
            _weights(weights)
            if isinstance(weights, dict)
            else " then ".join(_weights(w) for w in weights)
        )
        name = f"{row['stage']} + {row['model']} depth {depth}, {length} tokens, weights {shown}"
        cells = " | ".join(f"{row[c]:.3f}" for c in cols)
        lines.append(f"| {pick} | {name} | {cells} | {row['mean']:.3f} | {row['ms']:.0f} |")
    return lines


# ---------------------------------------------------------------- command line


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m neuralir.eval.tune", description=__doc__)
    parser.add_argument(
        "what", choices=("fusion", "rerank", "report"), help="report: Markdown tables of --out"
    )
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--data-dir", type=Path, default=Path("../shared/data"))
    parser.add_argument("--collections", nargs="+", default=list(DEV_COLLECTIONS))
    parser.add_argument("--models", type=Path, default=Path("artifacts/models"))
    parser.add_argument("--index-cache", type=Path, default=Path("artifacts/indexes/eval"))
    parser.add_argument("--cache", type=Path, default=Path("artifacts/tune-cache"))
    parser.add_argument(
        "--tolerance",
        type=float,
        default=0.005,
        help="how far below its reference a setting may fall on one collection (nDCG@10)",
    )
    parser.add_argument(
        "--model",
        action="append",
        metavar="NAME=DIR",
        help="cross-encoder to tune (default: default and small from --models)",
    )
    parser.add_argument("--lengths", type=int, nargs="+", default=[256])
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="ONNX Runtime threads of the cross-encoders (1 holds up best on a busy machine)",
    )
    parser.add_argument("--depths", type=int, nargs="+", default=[10, 20, 30, 50])
    parser.add_argument(
        "--fusion",
        default="",
        help="hybrid first stage to rerank, e.g. convex-minmax@0.5 or rrf (default: the "
        "fusion run's choice in --out/fusion.json, else rrf)",
    )
    return parser


def parse_fusion(text: str) -> Fusion:
    if text == "rrf":
        return Fusion("rrf")
    method, _, rest = text.partition("-")
    normalization, _, weight = rest.partition("@")
    if method != "convex" or normalization not in NORMALIZATIONS or not weight:
        raise ValueError(f"fusion {text!r}: rrf or convex-<minmax|zscore>@<weight>")
    return Fusion("convex", float(weight), normalization)


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    args = build_parser().parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    if args.what == "report":
        for name, render in (("fusion", fusion_markdown), ("rerank", rerank_markdown)):
            path = args.out / f"{name}.json"
            if path.is_file():
                print(render(json.loads(path.read_text())))
        return 0
    collections = [
        load_collection(label, args.data_dir, args.models, args.index_cache, args.cache)
        for label in args.collections
    ]
    if args.what == "fusion":
        result = tune_fusion(collections, args.tolerance)
        (args.out / "fusion.json").write_text(json.dumps(result, indent=1) + "\n")
        print(json.dumps(result["chosen"], indent=1))
        return 0
    fusion_file = args.out / "fusion.json"
    if args.fusion:
        fusion = parse_fusion(args.fusion)
    elif fusion_file.is_file():
        fusion = parse_fusion(json.loads(fusion_file.read_text())["chosen"]["fusion"])
    else:
        fusion = Fusion("rrf")
    models = {"default": args.models / "cross-encoder" / "int8"}
    small = args.models / "cross-encoder-small" / "int8"
    if (small / "manifest.json").is_file():
        models["small"] = small
    if args.model:
        models = {k: Path(v) for k, _, v in (m.partition("=") for m in args.model)}
    result = tune_rerank(
        collections,
        models,
        args.lengths,
        args.depths,
        fusion,
        args.cache,
        args.tolerance,
        args.threads,
    )
    (args.out / "rerank.json").write_text(json.dumps(result, indent=1) + "\n")
    summary = {
        key: {k: v for k, v in row.items() if k != "model"} for key, row in result["chosen"].items()
    }
    print(json.dumps({"ms_per_pair": result["ms_per_pair"], "chosen": summary}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
