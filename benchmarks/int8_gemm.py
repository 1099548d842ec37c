"""How fast ONNX Runtime's dynamic int8 matrix product runs here, by number of rows.

The served encoder is mostly a stack of such products (DynamicQuantizeLinear feeding
MatMulInteger, as the quantizer emits them). One product timed at the rows of one query and at
the rows of a large batch shows how much batching can speed up the model's matrix work: the
ceiling that dynamic batching works under. The model's own work is counted from its graph.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

from neuralir.models.session import RuntimeSettings, create_session

OPSET = 17


def gemm_model(k: int, n: int, seed: int = 0) -> onnx.ModelProto:
    """float X[M, k] -> dynamic uint8 quantization -> MatMulInteger with int8 W[k, n] -> float."""
    rng = np.random.default_rng(seed)
    # 7-bit weights, as a reduce_range quantizer makes them: x86 without VNNI multiplies u8 by
    # s8 in pairs summed into int16 with saturation (255 * 127 * 2 overflows; 255 * 64 * 2 does
    # not), so full-range random weights would time a product that computes something else.
    weight = rng.integers(-64, 64, size=(k, n), dtype=np.int8)
    nodes = [
        helper.make_node("DynamicQuantizeLinear", ["x"], ["xq", "x_scale", "x_zero"]),
        helper.make_node("MatMulInteger", ["xq", "w", "x_zero"], ["acc"]),
        helper.make_node("Cast", ["acc"], ["acc_f"], to=TensorProto.FLOAT),
        helper.make_node("Mul", ["acc_f", "x_scale"], ["y"]),
    ]
    graph = helper.make_graph(
        nodes,
        "int8_gemm",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["rows", k])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["rows", n])],
        initializer=[numpy_helper.from_array(weight, "w")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    onnx.checker.check_model(model)
    return model


class Int8Gemm:
    """One int8 product of shape [rows, k] x [k, n] on an ONNX Runtime session."""

    def __init__(self, k: int, n: int, threads: int, work_dir: Path) -> None:
        self.k, self.n = k, n
        path = work_dir / f"int8-gemm-{k}x{n}.onnx"
        if not path.is_file():
            onnx.save(gemm_model(k, n), path)
        self.session: ort.InferenceSession = create_session(
            path, RuntimeSettings(intra_op_threads=threads)
        )
        self._inputs: dict[int, np.ndarray] = {}

    def run(self, rows: int) -> np.ndarray:
        x = self._inputs.get(rows)
        if x is None:
            x = np.random.default_rng(rows).standard_normal((rows, self.k), dtype=np.float32)
            self._inputs[rows] = x
        return np.asarray(self.session.run(["y"], {"x": x})[0])

    def macs(self, rows: int) -> int:
        return rows * self.k * self.n


@dataclasses.dataclass(frozen=True)
class EncoderWork:
    """Multiply-accumulates of one forward pass, counted from the ONNX graph."""

    linear_macs_per_token: int  # every product with a constant weight (projections, FFN)
    attention_layers: int  # one Softmax per layer
    hidden: int

    def macs(self, tokens: int) -> int:
        """One sequence of `tokens` tokens: the projections, plus Q.K^T and A.V per layer."""
        return self.linear_macs_per_token * tokens + 2 * self.attention_layers * tokens**2 * (
            self.hidden
        )


# Products with a constant weight as their second input; a fused (Q)Attention holds the
# layer's Q, K and V projections as one [hidden, 3 * hidden] weight.
_PRODUCTS = {
    "MatMul",
    "MatMulInteger",
    "DynamicQuantizeMatMul",
    "MatMulIntegerToFloat",
    "Attention",
    "QAttention",
}
# One per attention layer: the plain graph's Softmax, or the fused graph's attention operator.
_ATTENTION = {"Softmax", "Attention", "QAttention", "MultiHeadAttention"}


def encoder_work(model_path: Path) -> EncoderWork:
    """Counted from a plain or a fused graph (the same model gives the same counts)."""
    model = onnx.load(str(model_path), load_external_data=False)
    weights = {init.name: tuple(init.dims) for init in model.graph.initializer}
    linear = 0
    hidden = 0
    for node in model.graph.node:
        if node.op_type in _PRODUCTS and len(node.input) > 1:
            shape = weights.get(node.input[1])
            if shape is not None and len(shape) == 2:
                linear += shape[0] * shape[1]
                hidden = max(hidden, min(shape))
    layers = sum(1 for node in model.graph.node if node.op_type in _ATTENTION)
    if linear == 0 or layers == 0:
        raise ValueError(f"{model_path}: no weight products or no attention layers found")
    return EncoderWork(linear, layers, hidden)
