"""The reranker distillation's building blocks: which groups it trains on, and the student it
starts from (a copy of the shipped teacher with some of its layers)."""

from __future__ import annotations

from pathlib import Path

import pytest

from neuralir.models.training.distill_reranker import make_student, training_groups
from neuralir.models.training.pairs import Group, write_groups

TEACHER = Path(__file__).resolve().parents[1] / "models" / "checkpoints" / "minilm-l6-scifact-ce"


def _groups(source: str, n: int) -> list[Group]:
    return [Group(source, f"{source}-{i}", f"q{i}", f"p{i}", [f"n{i}"]) for i in range(n)]


def test_training_groups_take_labelled_first_then_weak(tmp_path: Path) -> None:
    pairs = tmp_path / "pairs"
    write_groups(_groups("train_sub", 5), pairs / "train_sub.jsonl")
    write_groups(_groups("weak_title", 20), pairs / "weak_title.jsonl")
    write_groups(_groups("weak_sentence", 20), pairs / "weak_sentence.jsonl")
    chosen = training_groups(tmp_path, 12, seed=1)
    sources = [g.source for g in chosen]
    assert len(chosen) == 12
    assert sources.count("train_sub") == 5  # every labelled group is in
    assert len({g.qid for g in chosen}) == 12
    assert training_groups(tmp_path, 12, seed=1) == chosen  # deterministic for a seed
    assert len(training_groups(tmp_path, 3, seed=1)) == 3


def test_student_keeps_the_chosen_teacher_layers() -> None:
    torch = pytest.importorskip("torch")
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    teacher = AutoModelForSequenceClassification.from_pretrained(TEACHER, dtype=torch.float32)
    student = make_student(TEACHER, [1, 3, 5])
    assert student.config.num_hidden_layers == 3
    assert len(student.bert.encoder.layer) == 3
    for mine, theirs in zip(student.bert.encoder.layer, [1, 3, 5], strict=True):
        teacher_layer = teacher.bert.encoder.layer[theirs]
        assert torch.equal(
            mine.attention.self.query.weight, teacher_layer.attention.self.query.weight
        )
    # Embeddings and the classification head are the teacher's.
    assert torch.equal(
        student.bert.embeddings.word_embeddings.weight,
        teacher.bert.embeddings.word_embeddings.weight,
    )
    assert torch.equal(student.classifier.weight, teacher.classifier.weight)
    tokenizer = AutoTokenizer.from_pretrained(TEACHER)
    encoded = tokenizer(
        ["aspirin and heart attacks"], ["aspirin prevents infarction"], return_tensors="pt"
    )
    with torch.no_grad():
        logits = student(**encoded).logits
    assert logits.shape == (1, 1)
    assert bool(torch.isfinite(logits).all())


def test_teacher_scores_are_cached_per_teacher_and_groups(tmp_path: Path, models_dir: Path) -> None:
    from neuralir.models.cross_encoder import CrossEncoder
    from neuralir.models.training.distill_reranker import teacher_scores

    teacher_dir = models_dir / "cross-encoder" / "fp32"
    groups = [
        Group(
            "train_sub", "1", "aspirin and heart attacks", "aspirin prevents infarction", ["a poem"]
        ),
        Group("train_sub", "2", "vitamin D and fractures", "vitamin D lowers hip fractures", ["x"]),
    ]
    scores = teacher_scores(groups, teacher_dir, tmp_path, threads=1)
    expected = CrossEncoder(teacher_dir).score(
        groups[0].query, ["aspirin prevents infarction", "a poem"]
    )
    assert scores[0] == pytest.approx([float(s) for s in expected], abs=1e-5)
    assert [len(s) for s in scores] == [2, 2]
    [cache] = list(tmp_path.glob("teacher_scores-*.jsonl"))
    assert teacher_scores(groups, teacher_dir, tmp_path, threads=1) == scores  # read back
    teacher_scores(groups[:1], teacher_dir, tmp_path, threads=1)  # other groups: another file
    assert len(list(tmp_path.glob("teacher_scores-*.jsonl"))) == 2
    assert cache.exists()
