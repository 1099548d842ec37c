"""Bi-encoder domain adaptation (`neuralir models adapt`): its pairs, and the whole path on a tiny
corpus: adapt a few steps, export + quantize + verify + manifest through `neuralir models build`,
`neuralir index build` with the adapted encoder, one search through a real server."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from neuralir.models.training.adapt import (
    Pair,
    body_without_title,
    crop_pair,
    ict_pair,
    label_free_pairs,
    labelled_pairs,
    model_card,
    ndcg_at_10,
    record_eval,
    sentences_of,
    title_pair,
)
from neuralir.models.training.data import Document

TOPICS = [
    ("boundary layer transition", "supersonic flow over a flat plate at high mach number"),
    ("metformin and diabetes", "blood glucose control in patients with type two diabetes"),
    ("library classification", "the dewey decimal classification of books in libraries"),
    ("heat transfer in turbines", "cooling of turbine blades by film and convection"),
    ("vitamin d and fractures", "serum vitamin d levels and hip fracture risk in women"),
    ("automatic indexing", "assigning descriptors to documents for retrieval by computer"),
]


def _doc(i: int) -> Document:
    topic, detail = TOPICS[i % len(TOPICS)]
    title = f"A study of {topic} number {i}"
    sentences = [
        f"We report measurements of {detail} in experiment {i}.",
        f"The results on {topic} agree with theory within ten percent.",
        f"Earlier work on {detail} was limited to small samples.",
        f"A new method for {topic} is proposed and tested on {i + 3} cases.",
    ]
    return Document(str(i), title, " ".join(sentences))


def _write_corpus(root: Path, n: int = 36) -> Path:
    root.mkdir(parents=True)
    with (root / "corpus.jsonl").open("w") as f:
        for i in range(n):
            d = _doc(i)
            f.write(json.dumps({"_id": d.doc_id, "title": d.title, "text": d.text}) + "\n")
    with (root / "queries.jsonl").open("w") as f:
        for j, (topic, _) in enumerate(TOPICS):
            f.write(json.dumps({"_id": f"q{j}", "text": f"what is known about {topic}"}) + "\n")
    (root / "qrels").mkdir()
    lines = ["query-id\tcorpus-id\tscore"]
    lines += [f"q{j}\t{i}\t1" for j in range(len(TOPICS)) for i in range(j, n, len(TOPICS))]
    (root / "qrels" / "test.tsv").write_text("\n".join(lines) + "\n")
    return root


def test_title_pairs_drop_a_repeated_title() -> None:
    doc = Document(
        "7", "flow over a wing .", "flow over a wing . " + "the lift was measured . " * 12
    )
    assert body_without_title(doc).startswith("the lift")
    pair = title_pair(doc)
    assert pair is not None
    assert pair.query == doc.title
    assert "flow over a wing" not in pair.positive
    assert pair.excluded == frozenset({"7"})
    assert title_pair(Document("8", "short", doc.text)) is None  # too short to be a query


def test_ict_and_crop_pairs_come_from_their_document() -> None:
    rng = random.Random(0)
    doc = _doc(3)
    ict = ict_pair(doc, rng)
    assert ict is not None
    assert ict.query not in ict.positive  # the sentence is removed from its passage
    assert ict.query in doc.text
    crop = crop_pair(Document("9", "", " ".join(f"w{i}" for i in range(100))), rng)
    assert crop is not None
    assert crop.query in "w0 " + " ".join(f"w{i}" for i in range(100))
    assert 8 <= len(crop.query.split()) <= 50
    # Lower-case corpora (Cranfield, MEDLINE) still split into sentences.
    assert len(sentences_of("the first one . the second one . the third one .")) == 3
    pairs = label_free_pairs([_doc(i) for i in range(4)], ("title", "ict", "crop"), rng)
    assert {p.source for p in pairs} == {"title", "ict", "crop"}
    assert len(pairs) == 12


def test_labelled_pairs_exclude_every_judged_document() -> None:
    docs = {d.doc_id: d for d in (_doc(i) for i in range(4))}
    pairs = labelled_pairs({"q": "a claim"}, {"q": {"0": 1, "1": 0, "2": 2, "99": 1}}, docs)
    assert [p.doc_id for p in pairs] == ["0", "2"]  # positives that exist
    assert all(p.excluded == frozenset({"0", "1", "2", "99"}) for p in pairs)
    assert isinstance(pairs[0], Pair)


def test_ndcg_at_10() -> None:
    qrels = {"a": {"x": 1}, "b": {"y": 2, "z": 1}}
    assert ndcg_at_10(qrels, {"a": ["x"], "b": ["y", "z"]}) == pytest.approx(1.0)
    assert ndcg_at_10(qrels, {"a": ["w", "x"]}) == pytest.approx(0.5 * (1 / 1.5849625), rel=1e-4)


def _report(model_id: str, dense: float, hybrid: float) -> dict[str, object]:
    pipelines = {"dense": {"ndcg@10": dense}, "hybrid": {"ndcg@10": hybrid}}
    return {
        "dataset": "tiny",
        "split": "test",
        "queries": 6,
        "encoder_model_id": model_id,
        "pipelines": pipelines,
    }


def test_record_eval_puts_the_serving_figures_in_the_card(tmp_path: Path) -> None:
    recipe = {
        "name": "tiny-adapted",
        "base_model_id": "all-MiniLM-L6-v2",
        "corpus": "data/tiny",
        "documents": 36,
        "mode": "label-free",
        "qrels": None,
        "pairs": {"title": 3},
        "hard_negatives": "BM25 and dense",
        "loss": "MNRL",
        "mining_s": 1.0,
        "wall_s": 60.0,
        "hyperparameters": {
            "lr": 2e-5,
            "warmup_ratio": 0.1,
            "weight_decay": 0.01,
            "batch_size": 4,
            "batch_sampler": "no_duplicates",
            "max_steps": 4,
            "max_seq_length": 48,
            "seed": 13,
            "threads": 1,
        },
        "training": {
            "steps": 4,
            "examples": 16,
            "train_wall_s": 5.0,
            "pairs_per_s": 3.2,
            "loss_first_logged": 1.0,
            "loss_last_logged": 0.5,
        },
        "selection": {"proxy_queries": 0},
    }
    (tmp_path / "recipe.json").write_text(json.dumps(recipe))
    base, adapted = tmp_path / "base.json", tmp_path / "adapted.json"
    base.write_text(json.dumps(_report("all-MiniLM-L6-v2@1", 0.5, 0.6)))
    adapted.write_text(json.dumps(_report("tiny-adapted@2", 0.55, 0.59)))
    row = record_eval(tmp_path, base, adapted)
    assert row["pipelines"]["dense"] == {"before": 0.5, "after": 0.55}
    card = (tmp_path / "README.md").read_text()
    assert "| dense | 0.5000 | 0.5500 | +5.0 |" in card
    assert "| hybrid | 0.6000 | 0.5900 | -1.0 |" in card
    assert json.loads((tmp_path / "recipe.json").read_text())["neuralir_eval"]["tiny/test"]
    assert model_card(json.loads((tmp_path / "recipe.json").read_text())) == card
    other = _report("x", 0.1, 0.1) | {"split": "dev"}
    adapted.write_text(json.dumps(other))
    with pytest.raises(ValueError, match="different splits"):
        record_eval(tmp_path, base, adapted)


# The export goes through optimum -> torch.onnx's TorchScript exporter, which warns about its
# own deprecation and about tracing (as in test_models_build).
@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:You are using the legacy TorchScript-based ONNX export")
@pytest.mark.filterwarnings("ignore:The feature will be removed")
@pytest.mark.filterwarnings("ignore:torch.tensor results are registered as constants")
def test_adapt_build_index_and_search_end_to_end(
    tmp_path: Path, bi_encoder_dir: Path, cross_encoder_dir: Path
) -> None:
    pytest.importorskip("sentence_transformers")
    from servers import embedded, server_settings

    from neuralir.cli.main import main as neuralir
    from neuralir.client import ClientSettings, NeuralIRClient
    from neuralir.models.manifest import load_manifest

    corpus = _write_corpus(tmp_path / "tiny")
    checkpoint = tmp_path / "tiny-adapted"
    common = ["--corpus", str(corpus), "--base-encoder", str(bi_encoder_dir)]
    small = ["--max-steps", "4", "--batch-size", "4", "--max-seq-length", "48", "--threads", "1"]
    evaluated = ["--eval-qrels", str(corpus / "qrels" / "test.tsv"), "--proxy-queries", "6"]
    assert neuralir(["models", "adapt", *common, "--out", str(checkpoint), *small, *evaluated]) == 0
    recipe = json.loads((checkpoint / "recipe.json").read_text())
    assert recipe["mode"] == "label-free"
    assert recipe["training"]["steps"] == 4
    assert set(recipe["selection"]["proxy_mrr@10"]) == {"base", "half", "final", "merge@0.5"}
    assert 0.0 <= recipe["dense_ndcg@10_after"] <= 1.0
    card = (checkpoint / "README.md").read_text()
    assert "Dense nDCG@10" in card
    assert "examples/s" in card
    from safetensors import safe_open

    with safe_open(str(checkpoint / "model.safetensors"), "pt") as weights:
        first = next(iter(weights.keys()))
        assert str(weights.get_tensor(first).dtype) == "torch.float16"

    models = tmp_path / "models"
    built = ["models", "build", "--bi-encoder", str(checkpoint), "--only", "bi-encoder"]
    assert neuralir([*built, "--out", str(models)]) == 0
    int8 = models / "bi-encoder" / "int8"
    manifest = load_manifest(int8)
    assert manifest.name == "tiny-adapted"
    assert manifest.verify["mean_cosine"] >= 0.99
    assert manifest.recipe["mode"] == "label-free"
    assert not (models / "cross-encoder").exists()

    index = tmp_path / "index"
    command = ["index", "build", "--corpus", str(corpus / "corpus.jsonl"), "--out", str(index)]
    assert neuralir([*command, "--encoder-model", str(int8), "--threads", "1"]) == 0
    settings = server_settings(int8, [("default", cross_encoder_dir)], index)
    with (
        embedded(settings) as server,
        NeuralIRClient(ClientSettings(target=server.address)) as client,
    ):
        result = client.search("supersonic flow over a flat plate", k=5, mode="dense")
        assert result.encoder_model_id == manifest.model_id
        assert len(result.doc_ids) == 5
        assert {int(d) % len(TOPICS) for d in result.doc_ids[:3]} == {0}
