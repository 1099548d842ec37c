"""The fused graph: ONNX Runtime's transformer optimizer on fp32, before int8 (build extra).

    fp32 export -> optimize_model(model_type="bert") -> exact rewrites -> dynamic int8

What is fused and why (measured on onnxruntime 1.32, 2 cores with AVX-512 VNNI; see
docs/models.md and benchmarks/results/fused-graph/):
- Attention -> one `Attention` node per layer (quantized: `QAttention`, Q/K/V in one int8
  product), the embeddings -> `EmbedLayerNormalization` (quantized: `QEmbedLayerNormalization`),
  LayerNorm and Gelu subgraphs -> `LayerNormalization` and `Gelu`.
- Not fused: `SkipLayerNormalization` and `BiasGelu`. Their CPU kernels ran 2.5-5x slower than
  the Add + LayerNormalization and Gelu they replace (51 vs 19 us at 24 x 384; 4.0 vs 0.77 ms at
  2,000 x 384), so the optimizer leaves them out and the session is told not to re-create them at
  load (`SESSION_DISABLED_OPTIMIZERS`, recorded in the manifest and applied by the runtime).
- Cross-encoders: only the [CLS] row of the last layer feeds the pooler, so that layer computes
  keys and values for every token but queries, attention output, feed-forward and norms for the
  [CLS] row alone (`MultiHeadAttention` with a one-token query). Exact: the same logits in fp32.
- Bi-encoders: mean pooling and L2 normalisation run inside the graph (output
  `sentence_embedding`), not as numpy calls after it.
"""

from __future__ import annotations

import collections
import logging
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import helper, numpy_helper

from neuralir.models.manifest import ModelKind

log = logging.getLogger(__name__)

TOOL = "onnxruntime.transformers.optimizer.optimize_model"
MODEL_TYPE = "bert"
# The optimizer's own passes only (0); the session applies ONNX Runtime's at load.
OPT_LEVEL = 0
# FusionOptions switched off: their fused kernels are slower here than the operators they replace.
DISABLED_FUSIONS = ("enable_skip_layer_norm", "enable_bias_skip_layer_norm", "enable_bias_gelu")
# ONNX Runtime session optimizers that would re-create those fusions at load time.
SESSION_DISABLED_OPTIMIZERS = ("SkipLayerNormFusion", "BiasGeluFusion")
POOLED_OUTPUT = "sentence_embedding"
# Operators worth counting in a manifest: the fused kernels and the int8 products.
_COUNTED = {
    "Attention",
    "QAttention",
    "MultiHeadAttention",
    "EmbedLayerNormalization",
    "QEmbedLayerNormalization",
    "SkipLayerNormalization",
    "LayerNormalization",
    "Gelu",
    "BiasGelu",
    "FastGelu",
    "MatMul",
    "MatMulInteger",
    "DynamicQuantizeMatMul",
    "MatMulIntegerToFloat",
    "Softmax",
}


def operator_counts(model_path: Path) -> dict[str, int]:
    """Counts of the fused and product operators in an ONNX file (those it has)."""
    graph = onnx.load(str(model_path), load_external_data=False).graph
    counts = collections.Counter(node.op_type for node in graph.node if node.op_type in _COUNTED)
    return dict(sorted(counts.items()))


def _architecture(config: dict[str, Any]) -> tuple[int, int]:
    heads, hidden = int(config.get("num_attention_heads", 0)), int(config.get("hidden_size", 0))
    if not heads or not hidden:
        raise ValueError("config.json names no num_attention_heads / hidden_size")
    return heads, hidden


def optimize_fp32(
    fp32_model: Path, out_model: Path, kind: ModelKind, config: dict[str, Any], pooling: str
) -> dict[str, Any]:
    """Writes the transformer-optimized fp32 graph of `fp32_model` to `out_model`; returns the
    settings used (for the manifest). Raises if the optimizer fused no attention."""
    from onnxruntime.transformers.fusion_options import FusionOptions
    from onnxruntime.transformers.optimizer import optimize_model

    heads, hidden = _architecture(config)
    options = FusionOptions(MODEL_TYPE)
    for name in DISABLED_FUSIONS:
        setattr(options, name, False)
    optimized = optimize_model(
        str(fp32_model),
        model_type=MODEL_TYPE,
        num_heads=heads,
        hidden_size=hidden,
        optimization_options=options,
        opt_level=OPT_LEVEL,
    )
    fused = {k: v for k, v in optimized.get_fused_operator_statistics().items() if v}
    if not fused.get("Attention"):
        raise RuntimeError(f"{fp32_model}: the transformer optimizer fused no attention: {fused}")
    model = optimized.model
    rewrites = []
    if kind == "cross-encoder" and cls_only_last_layer(model):
        rewrites.append("cls_only_last_layer")
    if kind == "bi-encoder" and pool_in_graph(model, pooling):
        rewrites.append(f"{pooling}_pooling_and_l2_in_graph")
    optimized.save_model_to_file(str(out_model))  # adds the com.microsoft opset import
    return {
        "tool": TOOL,
        "model_type": MODEL_TYPE,
        "opt_level": OPT_LEVEL,
        "num_heads": heads,
        "hidden_size": hidden,
        "disabled_fusions": list(DISABLED_FUSIONS),
        "optimizer_fusions": fused,
        "rewrites": rewrites,
        "session_disabled_optimizers": list(SESSION_DISABLED_OPTIMIZERS),
    }


def _consumers(graph: onnx.GraphProto) -> dict[str, list[onnx.NodeProto]]:
    found: dict[str, list[onnx.NodeProto]] = collections.defaultdict(list)
    for node in graph.node:
        for name in node.input:
            found[name].append(node)
    return found


def _add_initializer(graph: onnx.GraphProto, name: str, array: np.ndarray) -> str:
    graph.initializer.append(numpy_helper.from_array(array, name))
    return name


def _reads_only_the_first_row(graph: onnx.GraphProto, tensor: str) -> bool:
    """True when every path from `tensor` to the outputs starts with Gather(index 0, axis 1)."""
    constants = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    for node in graph.node:  # Constant nodes hold the pooler's index in some exports
        if node.op_type == "Constant" and node.attribute and node.attribute[0].name == "value":
            constants[node.output[0]] = numpy_helper.to_array(node.attribute[0].t)
    users = _consumers(graph)[tensor]
    if not users or tensor in {o.name for o in graph.output}:
        return False
    for node in users:
        axis = next((a.i for a in node.attribute if a.name == "axis"), 0)
        index = constants.get(node.input[1]) if node.op_type == "Gather" else None
        if index is None or axis != 1 or index.size != 1 or int(index.reshape(-1)[0]) != 0:
            return False
    return True


def cls_only_last_layer(model: onnx.ModelProto) -> bool:
    """Rewrites the last fused Attention so only the [CLS] row goes on; False when the graph is
    not the expected shape (then it is left unchanged)."""
    graph = model.graph
    attentions = [n for n in graph.node if n.op_type == "Attention"]
    if not attentions:
        return False
    last = attentions[-1]
    x, weight_name, bias_name = last.input[0], last.input[1], last.input[2]
    mask = last.input[3] if len(last.input) > 3 else ""
    initializers = {t.name: t for t in graph.initializer}
    residual = [n for n in _consumers(graph)[x] if n is not last]
    if (
        weight_name not in initializers
        or bias_name not in initializers
        or len(residual) != 1
        or residual[0].op_type != "Add"
        or not _layer_output_reads_first_row(graph, residual[0])
    ):
        return False
    heads = next(a.i for a in last.attribute if a.name == "num_heads")
    weight = numpy_helper.to_array(initializers[weight_name])
    bias = numpy_helper.to_array(initializers[bias_name])
    hidden = weight.shape[0]
    prefix = f"{last.name}_cls"
    first_row = f"{prefix}_x0"
    zero, one = np.array([0], np.int64), np.array([1], np.int64)
    nodes = [
        helper.make_node(
            "Slice",
            [
                x,
                _add_initializer(graph, f"{prefix}_start", zero),
                _add_initializer(graph, f"{prefix}_end", one),
                _add_initializer(graph, f"{prefix}_axis", one),
            ],
            [first_row],
            name=f"{prefix}_Slice",
        )
    ]
    projected = []
    for j, (part, source) in enumerate((("q", first_row), ("k", x), ("v", x))):
        cols = slice(j * hidden, (j + 1) * hidden)
        w = _add_initializer(graph, f"{prefix}_w{part}", np.ascontiguousarray(weight[:, cols]))
        b = _add_initializer(graph, f"{prefix}_b{part}", np.ascontiguousarray(bias[cols]))
        product, out = f"{prefix}_{part}_mm", f"{prefix}_{part}"
        nodes.append(helper.make_node("MatMul", [source, w], [product], name=product))
        nodes.append(helper.make_node("Add", [product, b], [out], name=f"{out}_bias"))
        projected.append(out)
    inputs = [*projected, "", mask] if mask else projected
    nodes.append(
        helper.make_node(
            "MultiHeadAttention",
            inputs,
            list(last.output),
            name=f"{prefix}_MultiHeadAttention",
            domain="com.microsoft",
            num_heads=heads,
        )
    )
    position = list(graph.node).index(last)
    graph.node.remove(last)
    for offset, node in enumerate(nodes):
        graph.node.insert(position + offset, node)
    residual_inputs = list(residual[0].input)
    residual[0].input[residual_inputs.index(x)] = first_row
    for name in (weight_name, bias_name):
        if not _consumers(graph)[name]:
            graph.initializer.remove(initializers[name])
    return True


# Operators that act on each token's row alone (with constant weights): a row subset is exact.
_ROW_WISE = {"Add", "MatMul", "LayerNormalization", "Gelu", "FastGelu", "Mul", "Div", "Erf", "Cast"}


def _layer_output_reads_first_row(graph: onnx.GraphProto, residual_add: onnx.NodeProto) -> bool:
    """Everything after the last attention's residual Add is row-wise and ends in Gather(index
    0, axis 1) (the pooler) before any graph output: then only row 0 needs computing."""
    users = _consumers(graph)
    outputs = {o.name for o in graph.output}
    initializers = {t.name for t in graph.initializer}
    frontier, seen = [residual_add], set()
    while frontier:
        node = frontier.pop()
        if id(node) in seen:
            continue
        seen.add(id(node))
        if node.op_type not in _ROW_WISE:
            return False
        weights = [name for name in node.input[1:] if name in initializers]
        if node.op_type == "MatMul" and not weights:
            return False  # a product of two activations mixes rows
        for tensor in node.output:
            if tensor in outputs:
                return False
            for user in users[tensor]:
                if user.op_type == "Gather":
                    if not _reads_only_the_first_row(graph, tensor):
                        return False
                else:
                    frontier.append(user)
    return True


def pool_in_graph(model: onnx.ModelProto, pooling: str) -> bool:
    """Appends masked mean (or [CLS]) pooling and L2 normalisation; output `sentence_embedding`.
    False when the graph already has it or has no `last_hidden_state` output."""
    graph = model.graph
    outputs = {o.name for o in graph.output}
    if POOLED_OUTPUT in outputs or "last_hidden_state" not in outputs:
        return False
    hidden, prefix = "last_hidden_state", "pool"
    axes = _add_initializer(graph, f"{prefix}_axes_seq", np.array([1], np.int64))
    if pooling == "cls":
        index = _add_initializer(graph, f"{prefix}_zero", np.array(0, np.int64))
        nodes = [helper.make_node("Gather", [hidden, index], ["pool_sum"], axis=1)]
        pooled = "pool_sum"
    else:
        tiny = _add_initializer(graph, f"{prefix}_tiny", np.array(1e-9, np.float32))
        nodes = [
            helper.make_node("Cast", ["attention_mask"], ["pool_mask"], to=onnx.TensorProto.FLOAT),
            helper.make_node(
                "Unsqueeze",
                ["pool_mask", _add_initializer(graph, "pool_axes_last", np.array([2], np.int64))],
                ["pool_mask3"],
            ),
            helper.make_node("Mul", [hidden, "pool_mask3"], ["pool_masked"]),
            helper.make_node("ReduceSum", ["pool_masked", axes], ["pool_sum"], keepdims=0),
            helper.make_node("ReduceSum", ["pool_mask3", axes], ["pool_count"], keepdims=0),
            helper.make_node("Max", ["pool_count", tiny], ["pool_count_safe"]),
            helper.make_node("Div", ["pool_sum", "pool_count_safe"], ["pool_mean"]),
        ]
        pooled = "pool_mean"
    eps = _add_initializer(graph, f"{prefix}_eps", np.array(1e-12, np.float32))
    last_axis = _add_initializer(graph, f"{prefix}_axes_dim", np.array([1], np.int64))
    nodes += [
        helper.make_node("ReduceL2", [pooled, last_axis], ["pool_norm"], keepdims=1),
        helper.make_node("Max", ["pool_norm", eps], ["pool_norm_safe"]),
        helper.make_node("Div", [pooled, "pool_norm_safe"], [POOLED_OUTPUT]),
    ]
    graph.node.extend(nodes)
    width = graph.output[0].type.tensor_type.shape.dim[-1]
    dims: list[Any] = [
        "batch_size",
        width.dim_value if width.HasField("dim_value") else "hidden",
    ]
    graph.output.insert(
        0, helper.make_tensor_value_info(POOLED_OUTPUT, onnx.TensorProto.FLOAT, dims)
    )
    return True
