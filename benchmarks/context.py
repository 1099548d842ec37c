"""What every scenario handler gets: settings of the run, the workload, the server pool."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

from neuralir.benchmarks.servers import DeploySettings, ServerPool
from neuralir.benchmarks.workload import Workload, prepare_workload
from neuralir.models.manifest import read_manifest

log = logging.getLogger("neuralir.bench")
T = TypeVar("T")


@dataclasses.dataclass
class ScenarioOutput:
    runs: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    notes: list[str] = dataclasses.field(default_factory=list)
    extra: dict[str, Any] = dataclasses.field(default_factory=dict)  # e.g. ANN build costs


@dataclasses.dataclass
class BenchContext:
    repo: Path  # base for artifacts/ (the working directory, as the CLI's defaults are)
    out_dir: Path
    work_dir: Path  # server logs and port files (a temporary directory)
    quick: bool
    models_dir: Path
    data_dir: Path | None
    index_override: Path | None = None
    # another build of the code whose deployments are measured beside this one's (a PYTHONPATH
    # root holding `neuralir`, e.g. main before a change); None = this build only
    baseline_code: Path | None = None
    _workload: Workload | None = None
    _pool: ServerPool | None = None

    def progress(self, message: str) -> None:
        print(f"[bench] {message}", file=sys.stderr, flush=True)

    def model_dir(self, kind: str, precision: str) -> Path:
        return self.models_dir / kind / precision

    def model_name(self, kind: str, precision: str = "int8") -> str:
        return str(read_manifest(self.model_dir(kind, precision)).name)

    @property
    def workload(self) -> Workload:
        if self._workload is None:
            self._workload = prepare_workload(
                self.repo,
                self.data_dir,
                self.model_dir("bi-encoder", "int8"),
                self.index_override,
                self.progress,
            )
        return self._workload

    @property
    def pool(self) -> ServerPool:
        if self._pool is None:
            base = DeploySettings(
                index_dir=self.workload.index_dir.absolute(),
                encoder_model=self.model_dir("bi-encoder", "int8").absolute(),
                rerank_model=self.model_dir("cross-encoder", "int8").absolute(),
            )
            self._pool = ServerPool(base, self.work_dir)
        return self._pool

    def stop_servers(self) -> None:
        if self._pool is not None:
            self._pool.stop_all()

    def close(self) -> None:
        self.stop_servers()
        if self._workload is not None:
            self._workload.close()


def drop_missing_plain(
    ctx: BenchContext, kind: str, names: list[str], variants: dict[str, Any]
) -> str:
    """Drops the plain-graph variants (model directory int8-plain, the last item of their
    `variants` value) from `names` when int8/ is itself plain; returns a note saying so, or ""."""
    plain = [n for n in names if variants[n][-1] == "int8-plain"]
    if not plain or (ctx.model_dir(kind, "int8-plain") / "manifest.json").is_file():
        return ""
    for name in plain:
        names.remove(name)
    return (
        f"{kind}: no int8-plain/ beside int8/ (built with --graph plain?): the served graph is "
        "timed alone"
    )


def run_async(factory: Callable[[], Awaitable[T]]) -> T:
    """One event loop per measurement group (aio channels belong to the loop that made them)."""
    return asyncio.run(factory())  # type: ignore[arg-type]
