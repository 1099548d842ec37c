"""The offline model build (export -> quantize -> verify -> manifest) and manifest checks."""

from __future__ import annotations

import dataclasses
import json
import logging
import re
import shutil
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import pytest

from neuralir.models.encoder import Encoder
from neuralir.models.manifest import Manifest, ManifestError, load_manifest, sha256_file
from neuralir.models.sources import default_bi_encoder_source, source_fingerprint
from neuralir.models.verify import (
    MIN_MEAN_COSINE,
    VerificationError,
    verify_bi_encoder,
)

# The export goes through optimum -> torch.onnx's TorchScript exporter, which warns about
# its own deprecation and about tracing; those are the libraries' business, not ours.
BUILD_MARKS = (
    pytest.mark.slow,
    pytest.mark.filterwarnings("ignore:You are using the legacy TorchScript-based ONNX export"),
    pytest.mark.filterwarnings("ignore:The feature will be removed"),
    pytest.mark.filterwarnings("ignore:torch.tensor results are registered as constants"),
)
T = TypeVar("T")


def build_test(function: T) -> T:
    """Marks a test that runs (or shares) the ~15 s model build."""
    marked: Any = function
    for mark in BUILD_MARKS:
        marked = mark(marked)
    return marked


@dataclasses.dataclass
class Built:
    out: Path
    fp32: Manifest
    int8: Manifest


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Built:
    """The default bi-encoder exported, quantized and verified into a fresh directory."""
    pytest.importorskip("optimum.exporters.onnx", reason="the build extra is not installed")
    from neuralir.models.build import ModelSpec, build_model

    out = tmp_path_factory.mktemp("models")
    spec = ModelSpec("all-MiniLM-L6-v2", "bi-encoder", default_bi_encoder_source(), 256, "mean")
    fp32, int8 = build_model(spec, out)
    return Built(out, fp32, int8)


@build_test
@pytest.mark.parametrize("precision", ["fp32", "int8"])
def test_build_writes_a_complete_manifest(built: Built, precision: str) -> None:
    directory = built.out / "bi-encoder" / precision
    manifest = load_manifest(directory)  # checks every listed file's sha256
    assert manifest == (built.fp32 if precision == "fp32" else built.int8)
    assert manifest.kind == "bi-encoder"
    assert manifest.precision == precision
    assert manifest.source == default_bi_encoder_source()
    assert manifest.source_fingerprint == source_fingerprint(default_bi_encoder_source())
    assert manifest.dimension == 384
    assert manifest.max_length == 256
    assert (manifest.pooling, manifest.normalize) == ("mean", True)
    assert set(manifest.files) == {"model.onnx", "tokenizer.json"}
    for name, digest in manifest.files.items():
        assert sha256_file(directory / name) == digest
    assert manifest.versions["onnxruntime"] != "absent"
    assert manifest.versions["optimum"] != "absent"
    assert manifest.model_id == f"all-MiniLM-L6-v2@{manifest.files['model.onnx'][:12]}"
    assert not list(built.out.glob("bi-encoder/.build-*")), "staging directories left behind"


@build_test
def test_int8_manifest_records_passing_verify_figures(built: Built) -> None:
    figures = built.int8.verify
    assert figures["mean_cosine"] >= MIN_MEAN_COSINE
    assert 0.9 < figures["min_cosine"] <= figures["mean_cosine"] <= 1.0
    assert figures["nearest_neighbour_agreement"] == 1.0
    assert figures["texts"] == 20
    assert built.int8.quantization["per_channel"] is True
    assert built.int8.quantization["method"] == "dynamic"
    # int8 is the smaller file, and it runs
    size = {
        p: (built.out / "bi-encoder" / p / "model.onnx").stat().st_size for p in ("fp32", "int8")
    }
    assert size["int8"] < size["fp32"] / 3
    embeddings = Encoder(built.out / "bi-encoder" / "int8").encode(["a query", "another one"])
    np.testing.assert_allclose(np.linalg.norm(embeddings, axis=1), 1.0, atol=1e-5)


@build_test
def test_build_is_reproducible(built: Built, bi_encoder_dir: Path) -> None:
    """Same source -> same ONNX files as the tree the other tests use (when built from it)."""
    shipped = load_manifest(bi_encoder_dir)
    if shipped.source_fingerprint != built.int8.source_fingerprint:
        pytest.skip(f"{bi_encoder_dir} was built from another source ({shipped.source})")
    assert shipped.files == built.int8.files


@build_test
def test_second_build_skips_and_keeps_the_files(
    built: Built, caplog: pytest.LogCaptureFixture
) -> None:
    from neuralir.models.build import ModelSpec, build_model

    files = sorted(p for p in (built.out / "bi-encoder").rglob("*") if p.is_file())
    before = {p: p.stat().st_mtime_ns for p in files}
    spec = ModelSpec("all-MiniLM-L6-v2", "bi-encoder", default_bi_encoder_source(), 256, "mean")
    with caplog.at_level(logging.INFO, logger="neuralir.models.build"):
        fp32, int8 = build_model(spec, built.out)
    assert (fp32, int8) == (built.fp32, built.int8)
    assert "up to date" in caplog.text
    assert "exporting" not in caplog.text
    after = sorted(p for p in (built.out / "bi-encoder").rglob("*") if p.is_file())
    assert after == files
    assert {p: p.stat().st_mtime_ns for p in after} == before


@build_test
def test_per_tensor_quantization_fails_verification(built: Built, tmp_path: Path) -> None:
    """A quantization that loses too much is refused loudly (per-tensor weights on MiniLM)."""
    from neuralir.models.export import quantize_int8

    fp32_dir = built.out / "bi-encoder" / "fp32"
    bad = tmp_path / "per-tensor"
    quantize_int8(fp32_dir, bad, per_channel=False)
    shutil.copy2(fp32_dir / "tokenizer.json", bad / "tokenizer.json")
    files = {name: sha256_file(bad / name) for name in ("model.onnx", "tokenizer.json")}
    dataclasses.replace(built.fp32, files=files, precision="int8").write(bad)
    with pytest.raises(VerificationError, match="mean cosine"):
        verify_bi_encoder(Encoder(fp32_dir), Encoder(bad))


# ---------------------------------------------------------------- manifest refusals (fast)


@pytest.fixture
def model_copy(bi_encoder_dir: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "int8"
    copy.mkdir()
    for name in ("manifest.json", "model.onnx", "tokenizer.json", "config.json"):
        shutil.copy2(bi_encoder_dir / name, copy / name)
    return copy


def _flip_byte(path: Path, offset: int) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0xFF
    path.write_bytes(bytes(data))


def test_copied_model_loads(model_copy: Path) -> None:
    assert load_manifest(model_copy).kind == "bi-encoder"
    assert Encoder(model_copy).encode(["still works"]).shape == (1, 384)


@pytest.mark.parametrize("name", ["model.onnx", "tokenizer.json"])
def test_changed_file_is_refused(model_copy: Path, name: str) -> None:
    path = model_copy / name
    _flip_byte(path, path.stat().st_size // 2)
    with pytest.raises(ManifestError, match=rf"checksum of {re.escape(name)}.*rebuild the model"):
        load_manifest(model_copy)
    with pytest.raises(ManifestError, match=re.escape(name)):
        Encoder(model_copy)


def test_missing_file_is_refused(model_copy: Path) -> None:
    (model_copy / "model.onnx").unlink()
    with pytest.raises(ManifestError, match=r"model\.onnx listed in the manifest is missing"):
        load_manifest(model_copy)


def test_missing_or_malformed_manifest_is_refused(model_copy: Path) -> None:
    manifest = model_copy / "manifest.json"
    manifest.write_text("{not json")
    with pytest.raises(ManifestError, match="not valid JSON"):
        Encoder(model_copy)
    manifest.unlink()
    with pytest.raises(ManifestError, match="neuralir models build"):
        Encoder(model_copy)


def test_changed_model_is_not_current_for_the_build(model_copy: Path) -> None:
    """The build's idempotence check loads through the manifest, so a corrupt file rebuilds."""
    from neuralir.models.build import _is_current

    fingerprint = load_manifest(model_copy).source_fingerprint
    assert _is_current(model_copy, fingerprint)
    assert not _is_current(model_copy, "another source")
    _flip_byte(model_copy / "model.onnx", 100)
    assert not _is_current(model_copy, fingerprint)


def test_a_changed_recipe_changes_the_source_fingerprint(tmp_path: Path) -> None:
    """The manifest copies the checkpoint's recipe (the served blend weight), so editing
    recipe.json must make the next build rebuild rather than keep the old manifest."""
    from neuralir.models.sources import DEFAULT_CROSS_ENCODER_DIR

    source = tmp_path / "checkpoint"
    shutil.copytree(DEFAULT_CROSS_ENCODER_DIR, source)
    before = source_fingerprint(str(source))
    recipe = json.loads((source / "recipe.json").read_text())
    recipe["blend_weight"] = 0.25
    (source / "recipe.json").write_text(json.dumps(recipe))
    assert source_fingerprint(str(source)) != before


def test_small_reranker_is_built_beside_the_default_one(models_dir: Path) -> None:
    """`models build` builds the shipped distilled reranker into cross-encoder-small/, through
    the same export -> quantize -> verify path, with its own recipe and fewer layers."""
    from neuralir.models.sources import SMALL_CROSS_ENCODER_DIR
    from neuralir.models.verify import MIN_SPEARMAN

    small = load_manifest(models_dir / "cross-encoder-small" / "int8")
    default = load_manifest(models_dir / "cross-encoder" / "int8")
    assert small.kind == default.kind == "cross-encoder"
    assert Path(small.source) == SMALL_CROSS_ENCODER_DIR
    assert small.verify["mean_spearman"] >= MIN_SPEARMAN
    assert small.recipe["teacher"] == Path(default.source).name
    assert 0 < small.recipe["blend_weight"] <= 1
    config = json.loads((SMALL_CROSS_ENCODER_DIR / "config.json").read_text())
    teacher_config = json.loads((Path(default.source) / "config.json").read_text())
    assert config["num_hidden_layers"] < teacher_config["num_hidden_layers"]
    sizes = {
        name: (models_dir / name / "int8" / "model.onnx").stat().st_size
        for name in ("cross-encoder", "cross-encoder-small")
    }
    assert sizes["cross-encoder-small"] < sizes["cross-encoder"]


# ---------------------------------------------------------------- the fused and the plain graph


@build_test
def test_fused_graph_is_served_with_its_operators_recorded(built: Built) -> None:
    """int8/ is the transformer-optimized graph: attention fused (QAttention), embeddings fused,
    no SkipLayerNormalization; the manifest says how it was made and what it contains."""
    from neuralir.models.optimize import SESSION_DISABLED_OPTIMIZERS, operator_counts

    graph = built.int8.graph
    assert built.int8.graph_name == graph["name"] == "fused"
    assert graph["tool"] == "onnxruntime.transformers.optimizer.optimize_model"
    assert (graph["model_type"], graph["opt_level"]) == ("bert", 0)
    assert (graph["num_heads"], graph["hidden_size"]) == (12, 384)
    assert graph["optimizer_fusions"]["Attention"] == 6
    assert graph["optimizer_fusions"]["EmbedLayerNormalization"] == 1
    assert graph["rewrites"] == ["mean_pooling_and_l2_in_graph"]
    assert built.int8.session_disabled_optimizers == SESSION_DISABLED_OPTIMIZERS
    counts = operator_counts(built.out / "bi-encoder" / "int8" / "model.onnx")
    assert graph["operators"] == counts
    assert counts["QAttention"] == 6
    assert counts["QEmbedLayerNormalization"] == 1
    assert counts["MatMulInteger"] == 6 * 3  # attention output and the two FFN products
    assert "SkipLayerNormalization" not in counts
    assert "Softmax" not in counts
    assert built.int8.verify["mean_cosine"] >= MIN_MEAN_COSINE


@build_test
def test_plain_graph_is_kept_beside_the_fused_one(built: Built) -> None:
    plain_dir = built.out / "bi-encoder" / "int8-plain"
    plain = load_manifest(plain_dir)
    assert plain.graph_name == "plain"
    assert plain.session_disabled_optimizers == ()
    assert plain.graph["operators"]["MatMulInteger"] == 48  # every product, attention's too
    assert plain.graph["operators"]["Softmax"] == 6
    assert plain.verify["mean_cosine"] >= MIN_MEAN_COSINE
    assert plain.source_fingerprint == built.int8.source_fingerprint
    assert plain.files["model.onnx"] != built.int8.files["model.onnx"]
    assert plain.files["tokenizer.json"] == built.int8.files["tokenizer.json"]
    embeddings = Encoder(plain_dir).encode(["a query"])
    np.testing.assert_allclose(np.linalg.norm(embeddings, axis=1), 1.0, atol=1e-5)


@build_test
def test_choosing_the_other_graph_rebuilds(
    built: Built, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The graph choice is part of what makes a build current: asking for the plain graph
    rebuilds, serves it from int8/ and leaves no int8-plain/ beside it."""
    from neuralir.models.build import ModelSpec, build_model

    out = tmp_path / "models"
    shutil.copytree(built.out, out)
    spec = ModelSpec(
        "all-MiniLM-L6-v2", "bi-encoder", default_bi_encoder_source(), 256, "mean", graph="plain"
    )
    with caplog.at_level(logging.INFO, logger="neuralir.models.build"):
        _, int8 = build_model(spec, out)
    assert "exporting" in caplog.text
    assert "up to date" not in caplog.text
    assert int8.graph_name == "plain"
    assert load_manifest(out / "bi-encoder" / "int8") == int8
    assert not (out / "bi-encoder" / "int8-plain").exists()
    # the plain graph quantizes as before graphs were chosen: the same file as int8-plain/
    assert int8.files == load_manifest(built.out / "bi-encoder" / "int8-plain").files
    with pytest.raises(ValueError, match="unknown graph"):
        build_model(dataclasses.replace(spec, graph="fast"), out)


def test_a_fallback_build_is_current_for_the_graph_it_was_asked_for(model_copy: Path) -> None:
    """A fused build that failed verify serves the plain graph and says why; it stays current
    for "fused" (no rebuild every time), and a manifest without a graph is a plain one."""
    from neuralir.models.build import _is_current

    manifest = load_manifest(model_copy)
    fingerprint = manifest.source_fingerprint
    graph = {"name": "plain", "requested": "fused", "fallback_reason": "VerificationError: ..."}
    dataclasses.replace(manifest, graph=graph).write(model_copy)
    assert _is_current(model_copy, fingerprint, "fused")
    assert not _is_current(model_copy, fingerprint, "plain")
    dataclasses.replace(manifest, graph={}).write(model_copy)
    assert load_manifest(model_copy).graph_name == "plain"
    assert _is_current(model_copy, fingerprint, "plain")
    assert not _is_current(model_copy, fingerprint, "fused")


@pytest.mark.parametrize("role", ["cross-encoder", "cross-encoder-small"])
def test_fused_rerankers_compute_the_last_layer_for_cls_only(models_dir: Path, role: str) -> None:
    """Both rerankers are served fused: attention fused in every layer but the last, which runs
    a one-token query (MultiHeadAttention) for the [CLS] row; both graphs pass verify."""
    from neuralir.models.verify import MIN_SPEARMAN

    fused = load_manifest(models_dir / role / "int8")
    plain = load_manifest(models_dir / role / "int8-plain")
    layers = json.loads((Path(fused.source) / "config.json").read_text())["num_hidden_layers"]
    assert fused.graph_name == "fused"
    assert plain.graph_name == "plain"
    assert fused.graph["rewrites"] == ["cls_only_last_layer"]
    assert fused.graph["operators"]["QAttention"] == layers - 1
    assert fused.graph["operators"]["MultiHeadAttention"] == 1
    assert plain.graph["operators"]["Softmax"] == layers
    for manifest in (fused, plain):
        assert manifest.verify["mean_spearman"] >= MIN_SPEARMAN
        assert manifest.verify["top1_agreement"] == 1.0


def _ort_run(path: Path, feeds: dict[str, np.ndarray], output: str) -> np.ndarray:
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return np.asarray(session.run([output], feeds)[0])


@pytest.mark.parametrize("kind", ["bi-encoder", "cross-encoder"])
def test_fused_fp32_graph_computes_what_the_export_computes(
    models_dir: Path, tmp_path: Path, kind: str
) -> None:
    """Before quantization the optimized graph is exact: the same logits (the [CLS]-only last
    layer) and the same pooled, normalised embeddings (pooling in the graph), padding included."""
    pytest.importorskip("onnx")
    from neuralir.models.optimize import POOLED_OUTPUT, optimize_fp32
    from neuralir.models.tokenization import load_tokenizer, to_batch
    from neuralir.models.verify import VERIFY_PASSAGES

    fp32_dir = models_dir / kind / "fp32"
    config = json.loads((fp32_dir / "config.json").read_text())
    fused = tmp_path / "fused.onnx"
    settings = optimize_fp32(fp32_dir / "model.onnx", fused, kind, config, "mean")
    assert settings["optimizer_fusions"]["Attention"] == 6
    tokenizer = load_tokenizer(fp32_dir / "tokenizer.json", 256)
    texts: list[Any] = ["short", *VERIFY_PASSAGES[:5]]  # very different lengths: real padding
    if kind == "cross-encoder":
        texts = [("does aspirin reduce the risk of heart attack", t) for t in texts]
    batch = to_batch(tokenizer.encode_batch(texts))
    feeds = {
        "input_ids": batch.input_ids,
        "attention_mask": batch.attention_mask,
        "token_type_ids": batch.token_type_ids,
    }
    if kind == "cross-encoder":
        np.testing.assert_allclose(
            _ort_run(fused, feeds, "logits"),
            _ort_run(fp32_dir / "model.onnx", feeds, "logits"),
            atol=1e-4,
        )
        return
    hidden = _ort_run(fp32_dir / "model.onnx", feeds, "last_hidden_state")
    weights = batch.attention_mask[:, :, None].astype(np.float32)
    pooled = (hidden * weights).sum(axis=1) / weights.sum(axis=1)
    pooled /= np.linalg.norm(pooled, axis=1, keepdims=True)
    np.testing.assert_allclose(_ort_run(fused, feeds, POOLED_OUTPUT), pooled, atol=1e-5)
