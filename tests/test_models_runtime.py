"""The torch-free model runtime on the built models: Encoder and CrossEncoder, in-process."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from neuralir.models.cross_encoder import CrossEncoder
from neuralir.models.encoder import Encoder
from neuralir.models.manifest import load_manifest
from neuralir.models.session import RuntimeSettings
from neuralir.models.tokenization import length_sorted_chunks
from neuralir.models.verify import VERIFY_PASSAGES, VERIFY_QUERIES

# Texts of very different lengths, so batches carry real padding.
MIXED_TEXTS = [
    "short one",
    "what is the capital of France",
    "boundary layer transition on a flat plate at supersonic speed, measured with hot-wire "
    "anemometry in a blow-down wind tunnel over a range of Reynolds numbers",
    "parse JSON from a string in Python",
    "word " * 300,  # longer than the model's max length: truncated
]
QUERY = "does aspirin reduce the risk of heart attack"


@pytest.fixture(scope="module")
def encoder(bi_encoder_dir: Path) -> Encoder:
    return Encoder(bi_encoder_dir)


@pytest.fixture(scope="module")
def fp32_encoder(fp32_bi_encoder_dir: Path) -> Encoder:
    return Encoder(fp32_bi_encoder_dir)


@pytest.fixture(scope="module")
def cross_encoder(cross_encoder_dir: Path) -> CrossEncoder:
    return CrossEncoder(cross_encoder_dir)


@pytest.fixture(scope="module")
def fp32_cross_encoder(fp32_cross_encoder_dir: Path) -> CrossEncoder:
    return CrossEncoder(fp32_cross_encoder_dir)


def _cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(axis=1)


# ---------------------------------------------------------------- bi-encoder


def test_length_chunks_cover_every_text_once_and_bound_padding() -> None:
    lengths = [40, 12, 11, 13, 39, 12, 90, 10, 41, 12]
    chunks = length_sorted_chunks(lengths, chunk_size=3, max_padding=0.25)
    assert sorted(int(i) for chunk in chunks for i in chunk) == list(range(len(lengths)))
    for chunk in chunks:
        sizes = [lengths[i] for i in chunk]
        assert len(chunk) <= 3
        assert sizes == sorted(sizes)
        padded = max(sizes) * len(sizes)
        assert padded - sum(sizes) <= 0.25 * padded, sizes
    # Short texts are not padded to the long ones: 10-13 tokens ride apart from 39-41 and 90.
    assert [[lengths[i] for i in c] for c in chunks] == [
        [10, 11, 12],
        [12, 12, 13],
        [39, 40, 41],
        [90],
    ]
    # Without a padding bound, chunks fill up to their size whatever the lengths.
    assert [len(c) for c in length_sorted_chunks(lengths, 4, max_padding=1.0)] == [4, 4, 2]
    assert length_sorted_chunks([], 4) == []


def test_encode_shape_dtype_and_unit_norm(encoder: Encoder) -> None:
    embeddings = encoder.encode(MIXED_TEXTS)
    assert embeddings.shape == (len(MIXED_TEXTS), encoder.dimension)
    assert encoder.dimension == encoder.manifest.dimension == 384
    assert embeddings.dtype == np.float32
    assert np.all(np.isfinite(embeddings))
    np.testing.assert_allclose(np.linalg.norm(embeddings, axis=1), 1.0, atol=1e-5)


def test_encode_is_deterministic(encoder: Encoder) -> None:
    first = encoder.encode(MIXED_TEXTS)
    second = encoder.encode(MIXED_TEXTS)
    np.testing.assert_array_equal(first, second)


def test_encode_detailed_reports_tokens_and_times(encoder: Encoder) -> None:
    result = encoder.encode_detailed(["what is the capital of France"])
    # [CLS] what is the capital of france [SEP]
    assert result.token_counts == [8]
    assert result.tokenize_ns > 0
    assert result.inference_ns > 0
    np.testing.assert_array_equal(
        result.embeddings, encoder.encode(["what is the capital of France"])
    )


def test_fp32_batch_equals_single_whatever_the_batch(fp32_encoder: Encoder) -> None:
    """In fp32, padding and batch neighbours do not change a text's embedding."""
    singles = np.stack([fp32_encoder.encode([t])[0] for t in MIXED_TEXTS])
    batched = fp32_encoder.encode(MIXED_TEXTS)
    reversed_batch = fp32_encoder.encode(MIXED_TEXTS[::-1])[::-1]
    pairs = fp32_encoder.encode(MIXED_TEXTS[:2])
    np.testing.assert_allclose(batched, singles, atol=1e-5)
    np.testing.assert_allclose(reversed_batch, singles, atol=1e-5)
    np.testing.assert_allclose(pairs, singles[:2], atol=1e-5)


def test_small_model_batches_give_the_same_embeddings(fp32_bi_encoder_dir: Path) -> None:
    """Length-sorted chunks of 2 are scattered back into the caller's order."""
    whole = Encoder(fp32_bi_encoder_dir).encode(MIXED_TEXTS)
    chunked = Encoder(fp32_bi_encoder_dir, RuntimeSettings(max_batch_items=2)).encode(MIXED_TEXTS)
    np.testing.assert_allclose(chunked, whole, atol=1e-5)


def test_int8_batch_close_to_single(encoder: Encoder) -> None:
    """int8 activations are quantized per tensor at run time, so a text's embedding moves a
    little with its batch neighbours; it stays within the int8-vs-fp32 error and never gets
    closer to another text than to itself."""
    singles = np.stack([encoder.encode([t])[0] for t in MIXED_TEXTS])
    for batch in (MIXED_TEXTS, MIXED_TEXTS[::-1], MIXED_TEXTS[:3]):
        embeddings = encoder.encode(batch)
        expected = np.stack([singles[MIXED_TEXTS.index(t)] for t in batch])
        assert _cosines(embeddings, expected).min() > 0.97
        similarity = embeddings @ singles.T
        own = [MIXED_TEXTS.index(t) for t in batch]
        assert list(similarity.argmax(axis=1)) == own


def test_int8_agrees_with_fp32(encoder: Encoder, fp32_encoder: Encoder) -> None:
    texts = VERIFY_QUERIES + VERIFY_PASSAGES
    cosines = _cosines(encoder.encode(texts), fp32_encoder.encode(texts))
    assert cosines.mean() >= 0.99
    assert cosines.min() >= 0.98
    # and the figures the build recorded agree with a fresh measurement
    recorded = encoder.manifest.verify
    assert recorded["mean_cosine"] == pytest.approx(float(cosines.mean()), abs=5e-3)


def test_encoder_finds_the_relevant_passage(encoder: Encoder) -> None:
    """A real embedding model: each verify query's nearest passage is its own (same index)."""
    queries = encoder.encode(VERIFY_QUERIES, "query")
    passages = encoder.encode(VERIFY_PASSAGES, "passage")
    nearest = (queries @ passages.T).argmax(axis=1)
    assert list(nearest) == list(range(len(VERIFY_QUERIES)))


def test_query_and_passage_kinds_follow_the_manifest_prefixes(encoder: Encoder) -> None:
    assert encoder.manifest.query_prefix == encoder.manifest.passage_prefix == ""
    np.testing.assert_array_equal(
        encoder.encode(MIXED_TEXTS[:3], "query"), encoder.encode(MIXED_TEXTS[:3], "passage")
    )


def test_encode_empty_list(encoder: Encoder) -> None:
    result = encoder.encode_detailed([])
    assert result.embeddings.shape == (0, encoder.dimension)
    assert result.embeddings.dtype == np.float32
    assert result.token_counts == []


def test_encode_empty_string_is_the_special_tokens_embedding(encoder: Encoder) -> None:
    """Documented: "" encodes as [CLS] [SEP], a valid unit vector (the services refuse it)."""
    result = encoder.encode_detailed(["", "   "])
    assert result.token_counts == [2, 2]
    np.testing.assert_allclose(np.linalg.norm(result.embeddings, axis=1), 1.0, atol=1e-5)
    np.testing.assert_array_equal(result.embeddings[0], result.embeddings[1])


def test_overlong_text_is_truncated_to_max_length(encoder: Encoder) -> None:
    long_text, longer_text = "word " * 1000, "word " * 3000
    result = encoder.encode_detailed([long_text, longer_text])
    assert encoder.max_length == 256
    assert result.token_counts == [encoder.max_length, encoder.max_length]
    # Both are cut to the same first 256 tokens, so they embed the same.
    np.testing.assert_allclose(result.embeddings[0], result.embeddings[1], atol=1e-6)


def test_encoder_refuses_a_cross_encoder_directory(cross_encoder_dir: Path) -> None:
    with pytest.raises(ValueError, match="not a bi-encoder"):
        Encoder(cross_encoder_dir)


# ---------------------------------------------------------------- cross-encoder


def test_cross_encoder_scores_shape_and_dtype(cross_encoder: CrossEncoder) -> None:
    scores = cross_encoder.score(QUERY, VERIFY_PASSAGES)
    assert scores.shape == (len(VERIFY_PASSAGES),)
    assert scores.dtype == np.float32
    assert np.all(np.isfinite(scores))
    assert np.unique(scores).size > 1


def test_cross_encoder_is_deterministic(cross_encoder: CrossEncoder) -> None:
    np.testing.assert_array_equal(
        cross_encoder.score(QUERY, VERIFY_PASSAGES), cross_encoder.score(QUERY, VERIFY_PASSAGES)
    )


def test_score_pairs_mixes_queries(cross_encoder: CrossEncoder) -> None:
    """Pairs from several queries in one call score as each query's own call does (fp32
    exactness is checked below; int8 within the run-time quantization error)."""
    pairs = [(q, p) for q in VERIFY_QUERIES[:2] for p in VERIFY_PASSAGES[:3]]
    together = cross_encoder.score_pairs(pairs)
    apart = np.concatenate(
        [cross_encoder.score(q, VERIFY_PASSAGES[:3]) for q in VERIFY_QUERIES[:2]]
    )
    assert together.scores.shape == (6,)
    assert len(together.token_counts) == 6
    _assert_close_to_spread(together.scores, apart)


def test_fp32_cross_encoder_batch_equals_single(fp32_cross_encoder_dir: Path) -> None:
    passages = [*VERIFY_PASSAGES[:4], "word " * 400]
    model = CrossEncoder(fp32_cross_encoder_dir)
    batched = model.score(QUERY, passages)
    singles = np.array([model.score(QUERY, [p])[0] for p in passages])
    chunked = CrossEncoder(fp32_cross_encoder_dir, RuntimeSettings(max_batch_items=2)).score(
        QUERY, passages
    )
    np.testing.assert_allclose(batched, singles, atol=1e-5)
    np.testing.assert_allclose(chunked, singles, atol=1e-5)


def test_int8_cross_encoder_batch_close_to_single(cross_encoder: CrossEncoder) -> None:
    batched = cross_encoder.score(QUERY, VERIFY_PASSAGES)
    singles = np.array([cross_encoder.score(QUERY, [p])[0] for p in VERIFY_PASSAGES])
    _assert_close_to_spread(batched, singles)


def _assert_close_to_spread(scores: np.ndarray, reference: np.ndarray) -> None:
    """int8 activations are quantized per batch: logits move by a few percent of their spread
    with the batch's company (fp32 exactness is checked separately)."""
    worst = float(np.max(np.abs(scores - reference)))
    assert worst <= 0.1 * float(np.ptp(reference)), (worst, np.ptp(reference))


def test_int8_cross_encoder_agrees_with_fp32(
    cross_encoder: CrossEncoder, fp32_cross_encoder: CrossEncoder
) -> None:
    int8 = cross_encoder.score(QUERY, VERIFY_PASSAGES)
    fp32 = fp32_cross_encoder.score(QUERY, VERIFY_PASSAGES)
    ranks = [np.argsort(np.argsort(s)) for s in (int8, fp32)]
    assert np.corrcoef(ranks[0], ranks[1])[0, 1] >= 0.9
    assert cross_encoder.manifest.verify["mean_spearman"] >= 0.95


def test_long_passage_is_truncated_to_max_length(cross_encoder: CrossEncoder) -> None:
    result = cross_encoder.score_pairs([(QUERY, "word " * 2000), (QUERY, "short passage")])
    assert result.token_counts[0] == cross_encoder.max_length
    assert result.token_counts[1] < cross_encoder.max_length
    assert np.all(np.isfinite(result.scores))


def test_cross_encoder_empty_list(cross_encoder: CrossEncoder) -> None:
    scores = cross_encoder.score(QUERY, [])
    assert scores.shape == (0,)
    assert scores.dtype == np.float32


def test_cross_encoder_empty_passage_scores_the_query_alone(cross_encoder: CrossEncoder) -> None:
    """Documented: "" is scored as the pair ([CLS] query [SEP] [SEP]); the service refuses it."""
    result = cross_encoder.score_pairs([(QUERY, ""), (QUERY, "")])
    query_tokens = len(cross_encoder._tokenizer.encode(QUERY).ids)  # [CLS] query [SEP]
    assert result.token_counts == [query_tokens + 1] * 2
    assert np.all(np.isfinite(result.scores))
    assert result.scores[0] == result.scores[1]


def test_cross_encoder_refuses_a_bi_encoder_directory(bi_encoder_dir: Path) -> None:
    with pytest.raises(ValueError, match="not a cross-encoder"):
        CrossEncoder(bi_encoder_dir)


# Relevant passages for each query, and passages that have nothing to do with it.
QUALITY_CASES = [
    (
        "does aspirin reduce the risk of heart attack",
        "Daily low-dose aspirin reduced the incidence of myocardial infarction in a randomized "
        "trial of 22,071 male physicians.",
    ),
    (
        "vitamin D deficiency and bone fractures in older adults",
        "Low serum 25-hydroxyvitamin D was associated with a higher rate of hip fractures in "
        "women over 65 years in a prospective cohort.",
    ),
    (
        "treatment of type 2 diabetes with metformin",
        "Metformin lowers blood glucose by reducing hepatic glucose production and is the first "
        "line therapy for type 2 diabetes.",
    ),
]
IRRELEVANT = [
    "A sonnet is a fourteen-line poem written in iambic pentameter.",
    "The heat equation describes how temperature evolves in a solid over time.",
    "Paris is the capital and most populous city of France.",
]
SHIPPED_CHECKPOINTS = {
    "cross-encoder": "minilm-l6-scifact-ce",
    "cross-encoder-small": "minilm-l3-scifact-ce",
}


@pytest.mark.parametrize("role", sorted(SHIPPED_CHECKPOINTS))
def test_cross_encoder_ranks_relevant_pairs_above_irrelevant(models_dir: Path, role: str) -> None:
    model_dir = models_dir / role / "int8"
    source = load_manifest(model_dir).source
    shipped = ("models", "checkpoints", SHIPPED_CHECKPOINTS[role])
    if Path(source).parts[-3:] != shipped:
        pytest.skip(
            f"{model_dir} was built from {source}, not the shipped trained checkpoint "
            f"{'/'.join(shipped)}: an untrained head scores at random"
        )
    model = CrossEncoder(model_dir)
    for query, relevant in QUALITY_CASES:
        scores = model.score(query, [relevant, *IRRELEVANT])
        assert scores[0] > scores[1:].max(), (query, scores)


# ---------------------------------------------------------------- torch-free import


def test_runtime_imports_no_training_stack() -> None:
    code = (
        "import json, sys\n"
        "import neuralir.models, neuralir.models.encoder, neuralir.models.cross_encoder\n"
        "import neuralir.models.manifest, neuralir.models.session, neuralir.models.tokenization\n"
        "heavy = ('torch', 'transformers', 'optimum', 'sentence_transformers')\n"
        "print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in heavy)))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120
    )
    assert json.loads(out.stdout) == []


# ---------------------------------------------------------------- both graphs (fused and plain)


@pytest.mark.parametrize("graph", ["int8", "int8-plain"])
def test_both_graphs_embed_close_to_fp32(
    models_dir: Path, fp32_encoder: Encoder, graph: str
) -> None:
    """The served (fused) graph and the plain one beside it, in batches with padding. (Not the
    degenerate 256 x "word" text: the plain int8 graph gives it cosine 0.95.)"""
    encoder = Encoder(models_dir / "bi-encoder" / graph)
    texts = VERIFY_QUERIES + VERIFY_PASSAGES + MIXED_TEXTS[:-1]
    cosines = _cosines(encoder.encode(texts), fp32_encoder.encode(texts))
    assert cosines.mean() >= 0.99
    assert cosines.min() >= 0.98
    np.testing.assert_allclose(np.linalg.norm(encoder.encode(MIXED_TEXTS), axis=1), 1.0, atol=1e-5)


@pytest.mark.parametrize("graph", ["int8", "int8-plain"])
@pytest.mark.parametrize("role", ["cross-encoder", "cross-encoder-small"])
def test_both_graphs_rank_like_fp32(models_dir: Path, role: str, graph: str) -> None:
    model = CrossEncoder(models_dir / role / graph)
    fp32 = CrossEncoder(models_dir / role / "fp32")
    spearmans = []
    for query in VERIFY_QUERIES:
        ranks = [np.argsort(np.argsort(m.score(query, VERIFY_PASSAGES))) for m in (model, fp32)]
        spearmans.append(np.corrcoef(ranks[0], ranks[1])[0, 1])
    assert np.mean(spearmans) >= 0.95
    # a long (truncated) passage and an empty one go through the graph like any other
    scores = model.score(QUERY, ["word " * 400, "", VERIFY_PASSAGES[0]])
    assert np.all(np.isfinite(scores))


def test_the_fused_graph_runs_with_its_session_fusions_left_out(models_dir: Path) -> None:
    """The runtime reads which ONNX Runtime optimizers the graph's manifest leaves out."""
    fused = Encoder(models_dir / "bi-encoder" / "int8")
    plain = Encoder(models_dir / "bi-encoder" / "int8-plain")
    assert fused.manifest.session_disabled_optimizers == ("SkipLayerNormFusion", "BiasGeluFusion")
    assert plain.manifest.session_disabled_optimizers == ()
    assert fused.encode(["a query"]).shape == plain.encode(["a query"]).shape == (1, 384)


@pytest.mark.parametrize("which", ["bi", "cross"])
def test_bounded_tokenizer_gives_the_plain_tokenizers_ids(
    which: str, bi_encoder_dir: Path, cross_encoder_dir: Path
) -> None:
    """Cutting long texts before tokenizing changes no id, for texts and pairs: English, CJK,
    words over 100 characters, ligatures, combining accents, long queries beside long passages."""
    import random

    from neuralir.models.manifest import load_manifest
    from neuralir.models.tokenization import BoundedTokenizer, load_tokenizer

    model_dir = bi_encoder_dir if which == "bi" else cross_encoder_dir
    max_length = load_manifest(model_dir).max_length
    path = model_dir / "tokenizer.json"
    bounded, plain = BoundedTokenizer(path, max_length), load_tokenizer(path, max_length)
    rng = random.Random(1)
    words = ["retrieval", "of", "信息", "检索", "x" * 150, "naïve", "ﬁle", "—", "e\u0301t\u0301e"]

    def text(n: int) -> str:
        sep = " " if rng.random() < 0.7 else ""
        return sep.join(rng.choice(words) for _ in range(n))

    texts = [text(rng.choice([5, 200, 800, 1500])) for _ in range(120)]
    pairs = [(rng.choice(texts), rng.choice(texts)) for _ in range(120)]
    assert sum(len(t) > bounded.cut_chars for t in texts) > 30
    for inputs in (texts, pairs):
        got, want = bounded.encode_batch(inputs), plain.encode_batch(inputs)
        assert [(g.ids, g.type_ids) for g in got] == [(w.ids, w.type_ids) for w in want]
