"""The benchmark's batching ceiling: the int8 product it times computes what the model's ops
compute, the work count matches MiniLM's architecture, and the encode scenario turns both into
rows and a finding."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from neuralir.benchmarks import bench_encode
from neuralir.benchmarks.analysis import explain
from neuralir.benchmarks.context import BenchContext
from neuralir.benchmarks.int8_gemm import Int8Gemm, encoder_work
from neuralir.benchmarks.records import validate_results
from neuralir.benchmarks.scenario import Scenario
from neuralir.models.manifest import read_manifest

# all-MiniLM-L6-v2: 6 layers of Q, K, V, output (384 x 384) and FFN in/out (384 x 1536).
MINILM_LINEAR_MACS_PER_TOKEN = 6 * (4 * 384 * 384 + 2 * 384 * 1536)


def _reference_int8_product(x: np.ndarray, weight: np.ndarray) -> np.ndarray:
    """ONNX DynamicQuantizeLinear (uint8, range includes 0, round half to even) then
    MatMulInteger with the input's zero point, rescaled by the input's scale."""
    low, high = min(0.0, float(x.min())), max(0.0, float(x.max()))
    scale = (high - low) / 255.0
    zero = np.clip(np.rint(-low / scale), 0, 255)
    xq = np.clip(np.rint(x / scale) + zero, 0, 255)
    return ((xq - zero) @ weight.astype(np.float64)) * scale


def test_the_timed_int8_product_computes_the_quantized_matrix_product(tmp_path: Path) -> None:
    gemm = Int8Gemm(64, 96, threads=1, work_dir=tmp_path)
    model = onnx.load(str(tmp_path / "int8-gemm-64x96.onnx"))
    weight = numpy_helper.to_array(model.graph.initializer[0])
    assert weight.dtype == np.int8
    assert weight.shape == (64, 96)
    out = gemm.run(7)
    x = np.random.default_rng(7).standard_normal((7, 64), dtype=np.float32)
    assert out.shape == (7, 96)
    np.testing.assert_allclose(out, _reference_int8_product(x, weight), rtol=1e-4, atol=1e-3)
    # And it is a real product: far from zero, correlated with the float result.
    assert np.corrcoef(out.ravel(), (x @ weight).ravel())[0, 1] > 0.99
    assert gemm.macs(7) == 7 * 64 * 96


@pytest.mark.parametrize("precision", ["int8", "int8-plain", "fp32"])
def test_encoder_work_counts_minilm_from_its_graph(models_dir: Path, precision: str) -> None:
    """The fused graph (QAttention holds Q, K and V) counts as the plain one and fp32 do."""
    model_dir = models_dir / "bi-encoder" / precision
    work = encoder_work(model_dir / read_manifest(model_dir).onnx_file)
    assert work.linear_macs_per_token == MINILM_LINEAR_MACS_PER_TOKEN
    assert work.attention_layers == 6
    assert work.hidden == 384
    # 20 tokens: projections grow with tokens, attention with their square.
    assert work.macs(20) == 20 * MINILM_LINEAR_MACS_PER_TOKEN + 2 * 6 * 400 * 384


def test_a_graph_without_weight_products_is_refused(tmp_path: Path) -> None:
    graph = helper.make_graph(
        [helper.make_node("Relu", ["x"], ["y"])],
        "relu",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])],
    )
    path = tmp_path / "relu.onnx"
    onnx.save(helper.make_model(graph), path)
    with pytest.raises(ValueError, match="no weight products"):
        encoder_work(path)


@pytest.mark.slow
def test_encode_scenario_reports_the_product_rows_and_the_ceiling_finding(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, models_dir: Path, small_index: Path
) -> None:
    monkeypatch.chdir(tmp_path)
    ctx = BenchContext(
        repo=tmp_path,
        out_dir=tmp_path / "out",
        work_dir=tmp_path,
        quick=True,
        models_dir=models_dir,
        data_dir=None,
        index_override=small_index,
    )
    scenario = Scenario(
        name="encode",
        title="encode",
        handler="encode",
        order=10,
        warmup_s=0.05,
        duration_s=0.3,
        params={
            "variants": ["onnx-int8"],
            "threads": [1],
            "batches": [1],
            "rounds": 1,
            "gemm_queries": [1, 4],
        },
        path=tmp_path / "encode.toml",
    )
    try:
        output = bench_encode.run(scenario, ctx)
    finally:
        ctx.close()
    work = output.extra["encoder_work"]
    assert work["linear_macs_per_token"] == MINILM_LINEAR_MACS_PER_TOKEN
    assert work["queries"] == len(ctx.workload.queries) > 0
    tokens = round(work["mean_query_tokens"])
    gemm = [r for r in output.runs if r["stage"] == "int8_gemm"]
    assert sorted(r["batch"] for r in gemm) == [tokens, 4 * tokens]
    assert all(r["gmac_per_s"] > 0 and r["requests"] > 0 for r in gemm)
    document = {
        "machine": {"cpu_model": "test"},
        "scenarios": [{"name": "encode", "extra": output.extra}],
        "runs": output.runs,
        "targets": [],
    }
    assert not [p for p in validate_results(document) if "runs[" in p]
    finding = next(line for line in explain(document) if "What a batch can gain" in line)
    assert f"{work['mean_query_tokens']:.1f} tokens" in finding
    assert "GMAC/s" in finding
