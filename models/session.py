"""ONNX Runtime session creation with explicit, documented thread and memory settings."""

from __future__ import annotations

import ctypes
import ctypes.util
import dataclasses
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import onnxruntime as ort

# How ONNX Runtime's CPU memory arena behaves (docs/operating.md, "Memory", has the figures):
# "default": grows in powers of two and keeps its peak for the process's life;
# "same-as-requested": one process-wide arena that grows by what is asked, shared by sessions;
# "off": plain malloc/free per tensor; "shrink": the default arena, shrunk back (and the C
# heap trimmed) after any run of more than `shrink_above_tokens` padded tokens.
ArenaMode = Literal["default", "same-as-requested", "off", "shrink"]
ARENA_MODES: tuple[ArenaMode, ...] = ("default", "same-as-requested", "off", "shrink")


@dataclasses.dataclass(frozen=True)
class RuntimeSettings:
    """How a model runs. Thread counts are explicit so stages do not oversubscribe the cores."""

    intra_op_threads: int = 1
    inter_op_threads: int = 1
    # Rows of one model call; calls are also cut at `max_batch_tokens` padded tokens
    # (rows x longest), since memory and time of a call grow with tokens, not rows.
    max_batch_items: int = 64
    max_batch_tokens: int = 2048
    arena: ArenaMode = "shrink"
    shrink_above_tokens: int = 1024
    mem_pattern: bool = True
    # Spinning threads burn a core while idle; off by default since stages share the machine.
    allow_spinning: bool = False
    graph_optimization: str = "all"  # "disable", "basic", "extended" or "all"


_OPT_LEVELS = {
    "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
    "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
    "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
    "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
}

_env_arena_lock = threading.Lock()
_env_arena_registered = False


def _register_env_arena() -> None:
    """Registers (once per process) a CPU arena that extends by what is requested."""
    global _env_arena_registered
    with _env_arena_lock:
        if _env_arena_registered:
            return
        info = ort.OrtMemoryInfo(
            "Cpu", ort.OrtAllocatorType.ORT_ARENA_ALLOCATOR, 0, ort.OrtMemType.DEFAULT
        )
        config = ort.OrtArenaCfg({"arena_extend_strategy": 1})  # 1 = kSameAsRequested
        ort.create_and_register_allocator(info, config)
        _env_arena_registered = True


def _malloc_trim() -> Any:
    """glibc's malloc_trim, or None elsewhere: freed heap memory stays resident otherwise."""
    name = ctypes.util.find_library("c")
    libc = ctypes.CDLL(name) if name else None
    return getattr(libc, "malloc_trim", None)


_TRIM = _malloc_trim()


class ModelSession:
    """An ONNX Runtime session and the run options its arena setting needs."""

    def __init__(self, session: ort.InferenceSession, settings: RuntimeSettings) -> None:
        self.session = session
        self.settings = settings
        self._shrink = ort.RunOptions()
        self._shrink.add_run_config_entry("memory.enable_memory_arena_shrinkage", "cpu:0")

    def get_inputs(self) -> Any:
        return self.session.get_inputs()

    def get_outputs(self) -> Any:
        return self.session.get_outputs()

    def run(self, outputs: list[str], feeds: dict[str, Any], tokens: int = 0) -> list[Any]:
        """One call; `tokens` (padded rows x length) decides whether the arena shrinks after."""
        s = self.settings
        shrink = s.arena == "shrink" and tokens > s.shrink_above_tokens
        out = list(self.session.run(outputs, feeds, self._shrink if shrink else None))
        if shrink and _TRIM is not None:
            _TRIM(0)  # what the arena gave back to malloc goes back to the system
        return out


def create_session(
    model_path: Path, settings: RuntimeSettings, disabled_optimizers: Sequence[str] = ()
) -> ModelSession:
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
    options.enable_mem_pattern = settings.mem_pattern
    if settings.arena == "off":
        options.enable_cpu_mem_arena = False
    elif settings.arena == "same-as-requested":
        _register_env_arena()
        options.add_session_config_entry("session.use_env_allocators", "1")
    options.log_severity_level = 3
    session = ort.InferenceSession(
        str(model_path),
        sess_options=options,
        providers=["CPUExecutionProvider"],
        disabled_optimizers=list(disabled_optimizers) or None,
    )
    return ModelSession(session, settings)
