"""Fine-tune the MiniLM-L6 cross-encoder with a listwise loss on 2 CPU cores, on a time budget.

Starts from the all-MiniLM-L6-v2 bi-encoder weights (new one-logit classification head).
Each training row is a group (query, positive, negative_1..negative_K) built by
``models.training.pairs``; the loss is a softmax cross-entropy over the group
(sentence-transformers' cross-encoder MultipleNegativesRankingLoss, plus one in-batch
negative). Weak groups and the labelled ``train_sub`` groups are mixed in one shuffled
epoch with the labelled ones repeated, so any early stop has still seen the labels.
Training is bounded by wall time, not steps (the 2 cores are shared): the learning rate
follows the time budget and the run stops, saved, when it is spent.

    python -m models.training.train_reranker --run-name ce-v1 --max-minutes 70
    python -m models.training.train_reranker --run-name ce-v1 --max-minutes 30 --resume

On a loaded shared machine prefer ``--threads 1`` with ``OMP_WAIT_POLICY=PASSIVE``: two
spinning OpenMP threads under ``nice`` thrash (11 steps in 10 min at load average 12).
"""

from __future__ import annotations

import argparse
import json
import logging
import random
import time
from pathlib import Path
from typing import Any

import torch
from datasets import Dataset
from sentence_transformers.cross_encoder import (
    CrossEncoder,
    CrossEncoderTrainer,
    CrossEncoderTrainingArguments,
)
from sentence_transformers.cross_encoder.losses import MultipleNegativesRankingLoss
from transformers import TrainerCallback, TrainerControl, TrainerState, TrainingArguments

from .data import DEFAULT_BASE_MODEL, DEFAULT_WORK_DIR
from .pairs import Group, read_groups

log = logging.getLogger(__name__)


class TimeBudget(TrainerCallback):
    """Wall-clock budget: time-based LR schedule, saves every `save_minutes`, clean stop.

    The machine is shared, so steps per minute are unknown in advance: the learning rate
    warms up over the first `warmup_ratio` of the budget and then decays linearly to zero
    at `max_minutes` of training time, whatever step that turns out to be.
    """

    def __init__(self, save_minutes: float, max_minutes: float, warmup_ratio: float) -> None:
        self.save_s = save_minutes * 60
        self.max_s = max_minutes * 60
        self.warmup_s = warmup_ratio * self.max_s
        self.start = self.last_save = time.monotonic()

    def lr_factor(self, _step: int = 0) -> float:
        elapsed = time.monotonic() - self.start
        if elapsed < self.warmup_s:
            return elapsed / self.warmup_s
        return max(0.0, (self.max_s - elapsed) / (self.max_s - self.warmup_s))

    def on_train_begin(
        self,
        args: TrainingArguments,
        state: TrainerState,
        control: TrainerControl,
        **kwargs: Any,
    ) -> TrainerControl:
        self.start = self.last_save = time.monotonic()
        return control

    def on_step_end(
        self,
        args: TrainingArguments,
        state: TrainerState,
        control: TrainerControl,
        **kwargs: Any,
    ) -> TrainerControl:
        now = time.monotonic()
        if now - self.last_save >= self.save_s:
            control.should_save = True
            self.last_save = now
        if now - self.start >= self.max_s:
            log.info(
                "time budget of %.0f min reached at step %d", self.max_s / 60, state.global_step
            )
            control.should_save = True
            control.should_training_stop = True
        return control


def select_groups(args: argparse.Namespace) -> list[Group]:
    """Weak groups (title and sentence queries alternating) + labelled groups repeated."""
    pairs_dir = args.work_dir / "pairs"
    titles = read_groups(pairs_dir / "weak_title.jsonl")
    sentences = read_groups(pairs_dir / "weak_sentence.jsonl")
    weak = [g for pair in zip(titles, sentences, strict=False) for g in pair]
    labelled = read_groups(pairs_dir / "train_sub.jsonl")
    groups = weak[: args.weak_groups] + labelled * args.labelled_repeat
    random.Random(args.seed).shuffle(groups)
    return groups


def to_dataset(groups: list[Group]) -> Dataset:
    k = min(len(g.negatives) for g in groups)
    columns: dict[str, list[str]] = {
        "query": [g.query for g in groups],
        "positive": [g.positive for g in groups],
    }
    for i in range(k):
        columns[f"negative_{i + 1}"] = [g.negatives[i] for g in groups]
    return Dataset.from_dict(columns)


def training_args(args: argparse.Namespace, output_dir: Path) -> CrossEncoderTrainingArguments:
    return CrossEncoderTrainingArguments(
        output_dir=str(output_dir),
        num_train_epochs=1,
        per_device_train_batch_size=args.batch_size,
        learning_rate=args.lr,
        seed=args.seed,
        data_seed=args.seed,
        use_cpu=True,
        bf16=args.bf16,
        # Saving is time-based (TimeBudget); the step-based schedule is just a backstop.
        save_strategy="steps",
        save_steps=10**9,
        save_total_limit=4,
        logging_steps=10,
        report_to="none",
        dataloader_num_workers=0,
        disable_tqdm=True,
    )


def train(args: argparse.Namespace) -> dict[str, Any]:
    torch.set_num_threads(args.threads)
    output_dir = args.work_dir / "runs" / args.run_name
    groups = select_groups(args)
    dataset = to_dataset(groups)
    # query column aside: 1 positive + K hard negatives + the in-batch ones.
    pairs_per_group = len(dataset.column_names) - 1 + args.in_batch_negatives
    log.info("%d groups, %d pairs per group", len(dataset), pairs_per_group)

    model = CrossEncoder(str(args.base_model), num_labels=1, max_length=args.max_length)
    loss = MultipleNegativesRankingLoss(model, num_negatives=args.in_batch_negatives)
    budget = TimeBudget(args.save_minutes, args.max_minutes, args.warmup_ratio)
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.01)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, budget.lr_factor)
    trainer = CrossEncoderTrainer(
        model=model,
        args=training_args(args, output_dir),
        train_dataset=dataset,
        loss=loss,
        optimizers=(optimizer, scheduler),
        callbacks=[budget],
    )
    start = time.monotonic()
    resume = last_checkpoint(output_dir) if args.resume else None
    if resume:
        log.info("resuming from %s", resume)
    result = trainer.train(resume_from_checkpoint=str(resume) if resume else None)
    wall_s = time.monotonic() - start
    final_dir = output_dir / "final"
    model.save_pretrained(str(final_dir))

    steps_run = trainer.state.global_step - (int(resume.name.split("-")[1]) if resume else 0)
    pairs = steps_run * args.batch_size * pairs_per_group
    summary = {
        "run_name": args.run_name,
        "groups": len(dataset),
        "pairs_per_group": pairs_per_group,
        "global_step": trainer.state.global_step,
        "max_steps": trainer.state.max_steps,
        "wall_s_this_process": round(wall_s, 1),
        "pairs_this_process": pairs,
        "pairs_per_s": round(pairs / wall_s, 2),
        "train_loss": result.training_loss,
        "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
    }
    (output_dir / "train_summary.json").write_text(json.dumps(summary, indent=2))
    return summary


def last_checkpoint(output_dir: Path) -> Path | None:
    """Newest complete checkpoint: a run killed mid-save leaves one without trainer_state.json."""
    complete = [p for p in output_dir.glob("checkpoint-*") if (p / "trainer_state.json").exists()]
    return max(complete, key=lambda p: int(p.name.split("-")[1]), default=None)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--work-dir", type=Path, default=DEFAULT_WORK_DIR)
    p.add_argument("--run-name", default="ce-v1")
    p.add_argument("--base-model", type=Path, default=DEFAULT_BASE_MODEL)
    p.add_argument("--max-length", type=int, default=160)
    p.add_argument("--batch-size", type=int, default=16, help="groups per step")
    p.add_argument("--lr", type=float, default=5e-5)
    p.add_argument("--warmup-ratio", type=float, default=0.05, help="of the time budget")
    p.add_argument("--weak-groups", type=int, default=8000, help="weak groups used (of ~10k)")
    p.add_argument("--labelled-repeat", type=int, default=3)
    p.add_argument("--in-batch-negatives", type=int, default=1, help="MNRL needs >= 1")
    p.add_argument("--seed", type=int, default=13)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--bf16", action="store_true", help="CPU autocast to bfloat16")
    p.add_argument("--save-minutes", type=float, default=10.0)
    p.add_argument("--max-minutes", type=float, default=70.0, help="training time budget")
    p.add_argument(
        "--resume",
        action="store_true",
        help="continue from the last checkpoint (with a fresh --max-minutes LR schedule)",
    )
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    print(json.dumps(train(parse_args(argv)), indent=2))


if __name__ == "__main__":
    main()
