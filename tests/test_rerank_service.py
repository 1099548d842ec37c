"""RerankService alone, through the real client; and the score blending it applies."""

from __future__ import annotations

from pathlib import Path

import grpc
import numpy as np
import pytest
from servers import assert_invalid_argument

from neuralir.client import NeuralIRClient, Passage
from neuralir.models.cross_encoder import CrossEncoder
from neuralir.models.manifest import load_manifest
from neuralir.models.ranking import blend_scores, standardize
from neuralir.server.batching import BatchingSettings
from neuralir.server.settings import default_rerank_models
from neuralir.server.stages.rerank import RerankModel
from neuralir.v1.limits import MAX_PASSAGE_CHARS, MAX_PASSAGES_PER_RERANK, MAX_QUERY_CHARS

QUERY = "does aspirin reduce the risk of heart attack"
PASSAGES = [
    ("aspirin", "Daily low-dose aspirin reduced the incidence of myocardial infarction."),
    ("sonnet", "A sonnet is a fourteen-line poem written in iambic pentameter."),
    ("paris", "Paris is the capital and most populous city of France."),
    ("heat", "The heat equation describes how temperature evolves in a solid over time."),
    ("statins", "Statins lower cholesterol and the risk of cardiovascular events."),
    ("json", "json.loads deserializes a string containing a JSON document."),
]
FIRST_STAGE = [3.0, 0.5, 1.0, 2.0, 4.0, 0.1]


@pytest.fixture(scope="module")
def cross_encoder(cross_encoder_dir: Path) -> CrossEncoder:
    return CrossEncoder(cross_encoder_dir)


def _expected_scores(model: CrossEncoder) -> dict[str, float]:
    scores = model.score(QUERY, [text for _, text in PASSAGES])
    return {pid: float(s) for (pid, _), s in zip(PASSAGES, scores, strict=True)}


def test_rerank_orders_by_cross_encoder_score(
    client: NeuralIRClient, cross_encoder: CrossEncoder, cross_encoder_dir: Path
) -> None:
    result = client.rerank(QUERY, PASSAGES)
    expected = _expected_scores(cross_encoder)
    assert result.model_id == load_manifest(cross_encoder_dir).model_id
    assert result.blend_weight == 1.0  # no first-stage scores: cross-encoder alone
    assert sorted(p.id for p in result.passages) == sorted(expected)
    assert [p.id for p in result.passages] == sorted(
        expected, key=lambda pid: expected[pid], reverse=True
    )
    assert [p.rank for p in result.passages] == list(range(1, len(PASSAGES) + 1))
    for passage in result.passages:
        # the request rode alone in its batch: the same numbers as in-process
        assert passage.cross_encoder_score == pytest.approx(expected[passage.id], abs=1e-5)
        assert passage.score == pytest.approx(passage.cross_encoder_score, abs=1e-6)
    timing = result.timing
    assert timing.stage == "rerank"
    assert timing.batch_size >= len(PASSAGES)
    assert timing.inference_ms > 0
    assert timing.total_ms >= timing.inference_ms


def test_top_n_keeps_the_best(client: NeuralIRClient) -> None:
    full = client.rerank(QUERY, PASSAGES)
    top = client.rerank(QUERY, PASSAGES, top_n=2)
    assert [p.id for p in top.passages] == [p.id for p in full.passages[:2]]
    assert [p.rank for p in top.passages] == [1, 2]
    everything = client.rerank(QUERY, PASSAGES, top_n=len(PASSAGES) + 5)
    assert len(everything.passages) == len(PASSAGES)


def _with_first_stage() -> list[tuple[str, str, float]]:
    return [(pid, text, s) for (pid, text), s in zip(PASSAGES, FIRST_STAGE, strict=True)]


def test_blend_weight_one_is_the_cross_encoder_alone(client: NeuralIRClient) -> None:
    alone = client.rerank(QUERY, PASSAGES)
    blended = client.rerank(QUERY, _with_first_stage(), blend_weight=1.0)
    assert blended.blend_weight == 1.0
    assert [p.id for p in blended.passages] == [p.id for p in alone.passages]
    for passage in blended.passages:
        assert passage.score == pytest.approx(passage.cross_encoder_score, abs=1e-6)


def test_blend_weight_zero_is_the_first_stage_alone(client: NeuralIRClient) -> None:
    result = client.rerank(QUERY, _with_first_stage(), blend_weight=0.0)
    ids = [pid for pid, _ in PASSAGES]
    assert [p.id for p in result.passages] == [ids[i] for i in np.argsort(-np.array(FIRST_STAGE))]
    expected = dict(zip(ids, standardize(np.array(FIRST_STAGE)), strict=True))
    for passage in result.passages:
        assert passage.score == pytest.approx(expected[passage.id], abs=1e-5)


def test_blend_weight_between_mixes_z_scores(client: NeuralIRClient) -> None:
    result = client.rerank(QUERY, _with_first_stage(), blend_weight=0.3)
    assert result.blend_weight == pytest.approx(0.3)
    raw = {p.id: p.cross_encoder_score for p in result.passages}
    ids = [pid for pid, _ in PASSAGES]
    ce = np.array([raw[pid] for pid in ids])
    expected = 0.3 * standardize(ce) + 0.7 * standardize(np.array(FIRST_STAGE))
    got = {p.id: p.score for p in result.passages}
    np.testing.assert_allclose([got[pid] for pid in ids], expected, atol=1e-4)
    assert [p.id for p in result.passages] == [ids[i] for i in np.argsort(-expected)]


def test_unset_blend_weight_uses_the_models_recipe(
    client: NeuralIRClient, cross_encoder_dir: Path
) -> None:
    recommended = float(load_manifest(cross_encoder_dir).recipe.get("blend_weight", 1.0))
    assert client.rerank(QUERY, _with_first_stage()).blend_weight == pytest.approx(recommended)
    assert client.rerank(QUERY, PASSAGES).blend_weight == 1.0  # nothing to blend with


def test_models_are_served_by_name(
    client: NeuralIRClient, fp32_cross_encoder_dir: Path, cross_encoder_dir: Path
) -> None:
    default = client.rerank(QUERY, PASSAGES)
    named_default = client.rerank(QUERY, PASSAGES, model="default")
    fp32 = client.rerank(QUERY, PASSAGES, model="fp32")
    assert default.model_id == named_default.model_id == load_manifest(cross_encoder_dir).model_id
    assert fp32.model_id == load_manifest(fp32_cross_encoder_dir).model_id
    assert fp32.model_id != default.model_id
    expected = _expected_scores(CrossEncoder(fp32_cross_encoder_dir))
    for passage in fp32.passages:
        assert passage.cross_encoder_score == pytest.approx(expected[passage.id], abs=1e-5)


def test_small_reranker_is_served_by_name_and_ranks_like_a_reranker(
    client: NeuralIRClient, small_cross_encoder_dir: Path, cross_encoder_dir: Path
) -> None:
    small = client.rerank(QUERY, PASSAGES, model="small")
    manifest = load_manifest(small_cross_encoder_dir)
    assert small.model_id == manifest.model_id
    assert small.model_id != load_manifest(cross_encoder_dir).model_id
    assert manifest.recipe["teacher"] == "minilm-l6-scifact-ce"  # the distilled student
    expected = _expected_scores(CrossEncoder(small_cross_encoder_dir))
    for passage in small.passages:
        assert passage.cross_encoder_score == pytest.approx(expected[passage.id], abs=1e-4)
    # The aspirin passage answers the query; poems, capitals and JSON do not.
    scores = {p.id: p.cross_encoder_score for p in small.passages}
    assert scores["aspirin"] > max(scores[i] for i in ("sonnet", "paris", "heat", "json"))


def test_default_rerankers_are_the_built_ones(models_dir: Path, tmp_path: Path) -> None:
    """`neuralir serve` without --rerank-model serves every reranker `models build` built."""
    assert default_rerank_models(models_dir) == (
        ("default", models_dir / "cross-encoder" / "int8"),
        ("small", models_dir / "cross-encoder-small" / "int8"),
    )
    assert default_rerank_models(tmp_path) == (("default", tmp_path / "cross-encoder" / "int8"),)


def test_unknown_model_is_invalid_argument(client: NeuralIRClient) -> None:
    with pytest.raises(grpc.RpcError) as caught:
        client.rerank(QUERY, PASSAGES, model="no-such-model")
    assert_invalid_argument(caught.value, "model")
    assert "default" in caught.value.details()  # names what is served


def test_limits_at_the_boundary_are_accepted(client: NeuralIRClient) -> None:
    long_text = "word " * (MAX_PASSAGE_CHARS // 5)
    result = client.rerank("q " * (MAX_QUERY_CHARS // 2), [("long", long_text)])
    assert [p.id for p in result.passages] == ["long"]


PASSAGE = ("a", "some text")


@pytest.mark.parametrize(
    ("query", "passages", "options", "field"),
    [
        ("", [PASSAGE], {}, "query"),
        ("q" * (MAX_QUERY_CHARS + 1), [PASSAGE], {}, "query"),
        ("q", [], {}, "passages"),
        ("q", [(str(i), "t") for i in range(MAX_PASSAGES_PER_RERANK + 1)], {}, "passages"),
        ("q", [("a", "x"), ("b", "y"), ("a", "z")], {}, "passages[2].id"),
        ("q", [("a", "x"), ("", "y")], {}, "passages[1].id"),
        ("q", [("a", "x"), ("b", "")], {}, "passages[1].text"),
        ("q", [("a", "x" * (MAX_PASSAGE_CHARS + 1))], {}, "passages[0].text"),
        ("q", [PASSAGE], {"top_n": -1}, "top_n"),
        ("q", [PASSAGE], {"top_n": MAX_PASSAGES_PER_RERANK + 1}, "top_n"),
        ("q", [("a", "x", 1.0)], {"blend_weight": 1.5}, "blend_weight"),
        ("q", [("a", "x", 1.0)], {"blend_weight": -0.1}, "blend_weight"),
        ("q", [("a", "x", 1.0)], {"blend_weight": float("nan")}, "blend_weight"),
        ("q", [("a", "x", 1.0), ("b", "y")], {"blend_weight": 0.5}, "blend_weight"),
    ],
    ids=[
        "empty-query",
        "long-query",
        "no-passages",
        "too-many-passages",
        "duplicate-id",
        "empty-id",
        "empty-text",
        "long-text",
        "top-n-negative",
        "top-n-too-big",
        "weight-above-1",
        "weight-below-0",
        "weight-nan",
        "weight-without-first-stage",
    ],
)
def test_bad_requests_are_invalid_argument(
    client: NeuralIRClient, query: str, passages: list, options: dict, field: str
) -> None:
    with pytest.raises(grpc.RpcError) as caught:
        client.rerank(query, passages, **options)
    assert_invalid_argument(caught.value, field)


# ---------------------------------------------------------------- blending (pure functions)


def test_standardize() -> None:
    z = standardize(np.array([1.0, 2.0, 3.0, 4.0]))
    np.testing.assert_allclose(z, [-1.3416408, -0.4472136, 0.4472136, 1.3416408], atol=1e-6)
    assert z.mean() == pytest.approx(0.0)
    assert z.std() == pytest.approx(1.0)
    np.testing.assert_array_equal(standardize(np.array([5.0, 5.0, 5.0])), [0.0, 0.0, 0.0])
    assert standardize(np.array([])).shape == (0,)


def test_blend_scores() -> None:
    ce = np.array([2.0, -1.0, 0.5])
    first = np.array([10.0, 30.0, 20.0])
    # weight 1: the raw cross-encoder scores, untouched
    np.testing.assert_array_equal(blend_scores(ce, first, 1.0), ce)
    # weight 0: the first stage's z-scores
    np.testing.assert_allclose(blend_scores(ce, first, 0.0), [-1.2247449, 1.2247449, 0.0])
    # between: the weighted sum of both z-scores
    expected = 0.25 * standardize(ce) + 0.75 * standardize(first)
    np.testing.assert_allclose(blend_scores(ce, first, 0.25), expected)
    # a constant first stage leaves the cross-encoder's order
    blended = blend_scores(ce, np.ones(3), 0.5)
    assert list(np.argsort(-blended)) == list(np.argsort(-ce))


# ---------------------------------------------------------------- blending the first-stage signals

BM25 = [3.0, None, 1.0, 2.0, 4.0, 0.5]  # "sonnet" was found by dense retrieval only
DENSE = [0.61, 0.10, None, 0.35, 0.58, 0.05]  # "paris" by BM25 only


def _with_signals() -> list[Passage]:
    return [
        Passage(pid, text, bm25_score=b, dense_score=d)
        for (pid, text), b, d in zip(PASSAGES, BM25, DENSE, strict=True)
    ]


def _z_with_floor(values: list[float | None]) -> np.ndarray:
    known = np.array([v for v in values if v is not None])
    z = standardize(known)
    out, it = [], iter(z)
    for v in values:
        out.append(next(it) if v is not None else z.min())
    return np.array(out)


def test_signals_blend_with_the_recipes_weights_and_floors(
    client: NeuralIRClient, cross_encoder_dir: Path
) -> None:
    served = RerankModel("default", CrossEncoder(cross_encoder_dir), BatchingSettings())
    weights = served.weights_for(("bm25", "dense"), None)
    assert sum(weights.values()) == pytest.approx(1.0)
    result = client.rerank(QUERY, _with_signals())
    assert result.blend_weight == pytest.approx(weights["cross_encoder"])
    raw = {p.id: p.cross_encoder_score for p in result.passages}
    ids = [pid for pid, _ in PASSAGES]
    expected = (
        weights["cross_encoder"] * standardize(np.array([raw[pid] for pid in ids]))
        + weights["bm25"] * _z_with_floor(BM25)
        + weights["dense"] * _z_with_floor(DENSE)
    )
    got = {p.id: p.score for p in result.passages}
    np.testing.assert_allclose([got[pid] for pid in ids], expected, atol=1e-4)


def test_a_blend_weight_scales_the_signals_to_the_rest(client: NeuralIRClient) -> None:
    # Weight 0: the signals alone, in the recipe's proportions; here BM25 alone.
    bm25_only = [Passage(p.id, p.text, bm25_score=p.bm25_score) for p in _with_signals()]
    result = client.rerank(QUERY, bm25_only, blend_weight=0.0)
    ids = [pid for pid, _ in PASSAGES]
    order = np.argsort(-_z_with_floor(BM25), kind="stable")
    assert [p.id for p in result.passages] == [ids[i] for i in order]
    mixed = client.rerank(QUERY, bm25_only, blend_weight=0.25)
    raw = {p.id: p.cross_encoder_score for p in mixed.passages}
    expected = 0.25 * standardize(np.array([raw[pid] for pid in ids])) + 0.75 * _z_with_floor(BM25)
    got = {p.id: p.score for p in mixed.passages}
    np.testing.assert_allclose([got[pid] for pid in ids], expected, atol=1e-4)


def test_signals_take_precedence_over_a_first_stage_score(client: NeuralIRClient) -> None:
    both = [
        Passage(p.id, p.text, first_stage_score=float(i), bm25_score=p.bm25_score)
        for i, p in enumerate(_with_signals())
    ]
    signals_only = [Passage(p.id, p.text, bm25_score=p.bm25_score) for p in _with_signals()]
    a = client.rerank(QUERY, both, blend_weight=0.0)
    b = client.rerank(QUERY, signals_only, blend_weight=0.0)
    assert [p.id for p in a.passages] == [p.id for p in b.passages]
