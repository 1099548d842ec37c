"""ONNX Runtime session creation with explicit, documented thread settings."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path

import onnxruntime as ort


@dataclasses.dataclass(frozen=True)
class RuntimeSettings:
    """How a model runs. Thread counts are explicit so stages do not oversubscribe the cores."""

    intra_op_threads: int = 1
    inter_op_threads: int = 1
    # Batches are capped so ONNX Runtime's arena, which keeps the peak size, stays small.
    max_batch_items: int = 64
    # Spinning threads burn a core while idle; off by default since stages share the machine.
    allow_spinning: bool = False
    graph_optimization: str = "all"  # "disable", "basic", "extended" or "all"


_OPT_LEVELS = {
    "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
    "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
    "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
    "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
}


def create_session(
    model_path: Path, settings: RuntimeSettings, disabled_optimizers: Sequence[str] = ()
) -> ort.InferenceSession:
    """`disabled_optimizers`: ONNX Runtime graph optimizers to skip at load, by name (a fused
    graph's manifest lists those whose kernels are slower than what they would replace)."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = settings.intra_op_threads
    options.inter_op_num_threads = settings.inter_op_threads
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = _OPT_LEVELS[settings.graph_optimization]
    spin = "1" if settings.allow_spinning else "0"
    options.add_session_config_entry("session.intra_op.allow_spinning", spin)
    options.add_session_config_entry("session.inter_op.allow_spinning", spin)
    options.log_severity_level = 3
    return ort.InferenceSession(
        str(model_path),
        sess_options=options,
        providers=["CPUExecutionProvider"],
        disabled_optimizers=list(disabled_optimizers) or None,
    )
