"""Distil the 6-layer reranker into a smaller cross-encoder (fewer transformer layers).

The student starts as a copy of the teacher with only some of its layers kept (every other
one by default, so it keeps the teacher's embeddings, head and a spread of its depth), then
learns the teacher's ranking of each training group: a listwise KL loss between the softmax
of the teacher's and the student's logits over the group's passages (one positive and its
mined hard negatives, from `models.training.pairs`). Only score *order within a query* is
taught, which is all the product uses (the rerank blend standardises scores per query).

Teacher scores come from the teacher's fp32 ONNX build (`neuralir models build`), computed
once and cached in the run directory; the student trains with torch on CPU.

    python -m models.training.distill_reranker --run-name ce-l3-distill --max-minutes 28
    python -m models.training.evaluate_reranker --model /work/train-runs/runs/ce-l3-distill/final \
        --out /work/train-runs/eval/ce-l3-distill.json --depths 10 20 50
    python -m models.training.distill_reranker --run-name ce-l3-distill \
        --export models/checkpoints/minilm-l3-scifact-ce \
        --eval /work/train-runs/eval/ce-l3-distill.json

`--export` ships the student like the teacher (fp16 safetensors, tokenizer, recipe.json with the
blend weight and depth chosen on dev, a model card) instead of training.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import math
import random
import time
from pathlib import Path

from .data import DEFAULT_WORK_DIR
from .pairs import Group, read_groups

log = logging.getLogger(__name__)

DEFAULT_TEACHER = Path("models/checkpoints/minilm-l6-scifact-ce")
DEFAULT_TEACHER_ONNX = Path("artifacts/models/cross-encoder/fp32")


def training_groups(work_dir: Path, count: int, seed: int) -> list[Group]:
    """Labelled groups first, then weak ones, `count` in all, shuffled."""
    pairs = work_dir / "pairs"
    labelled = read_groups(pairs / "train_sub.jsonl")
    weak = read_groups(pairs / "weak_title.jsonl") + read_groups(pairs / "weak_sentence.jsonl")
    rng = random.Random(seed)
    rng.shuffle(weak)
    groups = (labelled + weak)[:count]
    rng.shuffle(groups)
    return groups


def teacher_scores(
    groups: list[Group], onnx_dir: Path, cache_dir: Path, threads: int
) -> list[list[float]]:
    """One teacher logit per passage of each group (positive first), cached as JSON lines in
    `cache_dir` under a name keyed by the teacher's model id and the groups' texts."""
    from neuralir.models.cross_encoder import CrossEncoder
    from neuralir.models.manifest import read_manifest
    from neuralir.models.session import RuntimeSettings

    digest = hashlib.sha256(read_manifest(onnx_dir).model_id.encode())
    for group in groups:
        digest.update(json.dumps([group.query, group.positive, *group.negatives]).encode())
    cache = cache_dir / f"teacher_scores-{digest.hexdigest()[:16]}.jsonl"
    if cache.exists():
        return [json.loads(line) for line in cache.read_text().splitlines() if line.strip()]
    teacher = CrossEncoder(onnx_dir, RuntimeSettings(intra_op_threads=threads))
    scores: list[list[float]] = []
    started = time.perf_counter()
    for n, group in enumerate(groups, 1):
        passages = [group.positive, *group.negatives]
        scores.append([float(s) for s in teacher.score(group.query, passages)])
        if n % 200 == 0:
            rate = n * len(passages) / (time.perf_counter() - started)
            log.info("teacher: %d/%d groups (%.0f pairs/s)", n, len(groups), rate)
    cache.write_text("".join(json.dumps(s) + "\n" for s in scores))
    return scores


def make_student(teacher_dir: Path, keep_layers: list[int]):  # type: ignore[no-untyped-def]
    import torch
    from transformers import AutoModelForSequenceClassification

    model = AutoModelForSequenceClassification.from_pretrained(teacher_dir, dtype=torch.float32)
    layers = model.bert.encoder.layer
    model.bert.encoder.layer = torch.nn.ModuleList([layers[i] for i in keep_layers])
    model.config.num_hidden_layers = len(keep_layers)
    return model


def train(args: argparse.Namespace) -> dict[str, object]:
    import torch
    from transformers import AutoTokenizer, get_linear_schedule_with_warmup

    torch.manual_seed(args.seed)
    torch.set_num_threads(args.threads)
    run_dir = args.work_dir / "runs" / args.run_name
    run_dir.mkdir(parents=True, exist_ok=True)
    groups = training_groups(args.work_dir, args.groups, args.seed)
    targets = teacher_scores(groups, args.teacher_onnx, run_dir, threads=2)
    keep = [int(i) for i in args.keep_layers.split(",")]
    student = make_student(args.teacher, keep)
    tokenizer = AutoTokenizer.from_pretrained(args.teacher)
    steps = math.ceil(len(groups) / args.batch_size) * args.epochs
    optimizer = torch.optim.AdamW(student.parameters(), lr=args.lr, weight_decay=0.01)
    schedule = get_linear_schedule_with_warmup(optimizer, int(0.05 * steps), steps)
    budget_s, started, step, losses = args.max_minutes * 60, time.perf_counter(), 0, []
    student.train()
    order = list(range(len(groups)))
    for epoch in range(args.epochs):
        random.Random(args.seed + epoch).shuffle(order)
        for first in range(0, len(order), args.batch_size):
            batch = [order[i] for i in range(first, min(first + args.batch_size, len(order)))]
            queries, passages, sizes = [], [], []
            for i in batch:
                texts = [groups[i].positive, *groups[i].negatives]
                queries += [groups[i].query] * len(texts)
                passages += texts
                sizes.append(len(texts))
            encoded = tokenizer(
                queries,
                passages,
                padding=True,
                truncation="longest_first",
                max_length=args.max_length,
                return_tensors="pt",
            )
            logits = student(**encoded).logits.squeeze(-1)
            loss = torch.zeros(())
            offset = 0
            for i, size in zip(batch, sizes, strict=True):
                student_log_p = torch.log_softmax(
                    logits[offset : offset + size] / args.temperature, 0
                )
                teacher_p = torch.softmax(torch.tensor(targets[i]) / args.temperature, 0)
                loss = loss + torch.nn.functional.kl_div(student_log_p, teacher_p, reduction="sum")
                offset += size
            loss = loss / len(batch)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(student.parameters(), 1.0)
            optimizer.step()
            schedule.step()
            optimizer.zero_grad()
            step += 1
            losses.append(loss.item())
            if step % 20 == 0:
                elapsed = time.perf_counter() - started
                log.info(
                    "step %d/%d loss %.4f (%.0f pairs/s)",
                    step,
                    steps,
                    sum(losses[-20:]) / 20,
                    len(passages) * step / elapsed,
                )
            if time.perf_counter() - started > budget_s:
                break
        else:
            continue
        break
    final = run_dir / "final"
    student.save_pretrained(final)
    tokenizer.save_pretrained(final)
    summary: dict[str, object] = {
        "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "groups": len(groups),
        "global_step": step,
        "max_steps": steps,
        "wall_s": round(time.perf_counter() - started, 1),
        "first_loss": sum(losses[:20]) / max(1, len(losses[:20])),
        "last_loss": sum(losses[-20:]) / max(1, len(losses[-20:])),
    }
    (run_dir / "train_summary.json").write_text(json.dumps(summary, indent=2))
    return summary


REPRODUCE = """\
cd /work/main && export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
neuralir models build   # the teacher's fp32 ONNX build gives the distillation targets
python -m models.training.pairs --work-dir /work/train-runs
OMP_WAIT_POLICY=PASSIVE nice -n 2 python -m models.training.distill_reranker \\
    --run-name {run_name} --groups {groups} --keep-layers {keep_layers} --batch-size {batch_size} \\
    --lr {lr} --temperature {temperature} --max-length {max_length} --max-minutes {max_minutes} \\
    --threads {threads} --seed {seed}
python -m models.training.evaluate_reranker --model /work/train-runs/runs/{run_name}/final \\
    --out /work/train-runs/eval/{run_name}.json --depths 10 20 50
python -m models.training.distill_reranker --run-name {run_name} \\
    --export models/checkpoints/minilm-l3-scifact-ce --eval /work/train-runs/eval/{run_name}.json"""


def export(args: argparse.Namespace) -> dict[str, object]:
    """Ships the trained student: fp16 weights, recipe.json and a model card."""
    from .export_checkpoint import max_logit_gap, results_table, save_fp16

    run_dir = args.work_dir / "runs" / args.run_name
    train_summary = json.loads((run_dir / "train_summary.json").read_text())
    targs = train_summary["args"]
    dev = json.loads(args.eval.read_text())
    chosen = dev["chosen"]
    teacher_recipe = json.loads((Path(targs["teacher"]) / "recipe.json").read_text())
    recipe = {
        "blend_weight": chosen["blend_weight"],
        "rerank_depth": chosen["rerank_depth"],
        "first_stage": chosen["first_stage"],
        "max_length": int(targs["max_length"]),
        "score": teacher_recipe["score"],
        "document_text": teacher_recipe["document_text"],
        "dev_sub_ndcg@10": chosen["ndcg@10"],
        "teacher": Path(targs["teacher"]).name,
        "base_model": f"layers {targs['keep_layers']} of {Path(targs['teacher']).name}",
        "loss": "listwise KL(teacher softmax || student softmax) over each group's passages, "
        f"temperature {targs['temperature']}",
        "training": {
            **{k: v for k, v in targs.items() if k not in {"work_dir", "export", "eval"}},
            **{k: train_summary[k] for k in ("groups", "global_step", "max_steps", "wall_s")},
            "first_loss": round(train_summary["first_loss"], 4),
            "last_loss": round(train_summary["last_loss"], 4),
        },
    }
    save_fp16(run_dir / "final", args.export, recipe["max_length"])
    (args.export / "recipe.json").write_text(json.dumps(recipe, indent=2) + "\n")
    t = recipe["training"]
    layers = len(str(targs["keep_layers"]).split(","))
    card = [
        f"# {args.export.name}: the small reranker, distilled from {recipe['teacher']}",
        "",
        f"A `BertForSequenceClassification` (one logit) of {layers} transformer layers:"
        f" {recipe['base_model']}, then trained to rank each training",
        "group's passages as the teacher does. About half the teacher's cost per pair; served",
        "as the reranker `small` next to `default`. Weights are fp16.",
        "",
        "## Use",
        "",
        f"- Input: (query, document), document = {recipe['document_text']}, truncated to"
        f" {recipe['max_length']} tokens.",
        f"- Score: {recipe['score']}.",
        f"- Recommended (chosen on SciFact dev_sub): first stage `{recipe['first_stage']}`, depth"
        f" {recipe['rerank_depth']}, blend weight {recipe['blend_weight']}.",
        "",
        "## Training",
        "",
        f"- Data: {t['groups']} groups (query, 1 positive, 4 mined hard negatives) from",
        "  `models.training.pairs`: SciFact `train_sub` labelled claims first, then weak title and",
        "  sentence queries (SciFact only; cranfield, cisi, medline, adi never used).",
        "- Targets: the teacher's logits from its fp32 ONNX build, one per passage.",
        f"- Loss: {recipe['loss']}.",
        f"- AdamW lr {t['lr']}, weight decay 0.01, 5% warmup then linear decay, batch"
        f" {t['batch_size']} groups, seed {t['seed']}, {t['threads']} torch thread(s), fp32.",
        f"- Ran {t['global_step']} of {t['max_steps']} steps in {t['wall_s'] / 60:.1f} min; KL"
        f" loss {t['first_loss']} (first 20 steps) -> {t['last_loss']} (last 20).",
        "",
        f"## Results: SciFact dev_sub ({dev['queries']} queries), nDCG@10 (torch fp32 weights)",
        "",
        *results_table(dev),
        "",
        "## Reproduce",
        "",
        "```",
        REPRODUCE.format(**targs),
        "```",
        "",
    ]
    (args.export / "README.md").write_text("\n".join(card))
    gap = max_logit_gap(run_dir / "final", args.export)
    size_mb = (args.export / "model.safetensors").stat().st_size / 1e6
    return {"out": str(args.export), "size_mb": round(size_mb, 1), "fp16_max_logit_gap": gap}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--work-dir", type=Path, default=DEFAULT_WORK_DIR)
    p.add_argument("--run-name", default="ce-l3-distill")
    p.add_argument("--teacher", type=Path, default=DEFAULT_TEACHER, help="HF checkpoint")
    p.add_argument("--teacher-onnx", type=Path, default=DEFAULT_TEACHER_ONNX)
    p.add_argument("--keep-layers", default="1,3,5", help="teacher layers the student keeps")
    p.add_argument("--groups", type=int, default=4000, help="training groups (labelled first)")
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--batch-size", type=int, default=8, help="groups per step")
    p.add_argument("--lr", type=float, default=5e-5)
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--max-length", type=int, default=160)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--seed", type=int, default=13)
    p.add_argument("--max-minutes", type=float, default=30.0, help="training time budget")
    p.add_argument("--export", type=Path, help="ship the trained run here instead of training")
    p.add_argument("--eval", type=Path, help="with --export: evaluate_reranker's dev report")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    args = parse_args(argv)
    if args.export:
        if not args.eval:
            raise SystemExit("--export needs --eval (the dev report of the run)")
        print(json.dumps(export(args), indent=2))
        return
    print(json.dumps(train(args), indent=2))


if __name__ == "__main__":
    main()
