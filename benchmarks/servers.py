"""gRPC servers for the benchmarks, each in its own process (`neuralir serve ... --port 0`).

The load generator never shares a Python process (and so a GIL) with the server it measures.
Deployments: "all" (every stage in one process, the search pipeline calling them directly:
the default), "loopback" (the same process, but the search service calls its own stages over
loopback gRPC: `--local-stages grpc`, what every search paid before the pipeline was split from
its transport) and "multiprocess" (encoder, index and rerank as separate processes, and a
search process reaching them by address), so the cost of each hop is visible.

A deployment can also run another build of the code (`DeploySettings.code`: a directory put
first on PYTHONPATH that holds a `neuralir` package, e.g. main before a change), so before
and after are measured in one run on the same machine.
"""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from neuralir.client import ClientSettings, NeuralIRClient
from neuralir.server.settings import ServerSettings

SEARCH_SERVICE = "neuralir.v1.SearchService"


class ServerStartError(RuntimeError):
    """A server process exited or did not become ready; the message holds its log's tail."""


@dataclasses.dataclass(frozen=True)
class DeploySettings:
    index_dir: Path
    encoder_model: Path
    rerank_model: Path
    batching: str = "on"  # "on" or "off" (the server's --batching flag)
    encoder_max_wait_us: int = ServerSettings().encoder_batching.max_wait_us  # server default
    encoder_threads: int = 1
    rerank_threads: int = 2
    index_threads: int = 1
    # another build of the code to run (a PYTHONPATH root holding `neuralir`); "" = this one
    code: str = ""

    @property
    def cli_module(self) -> str:
        """The module that runs `serve` in this build (it moved from neuralir.server.cli)."""
        if self.code and not (Path(self.code) / "neuralir" / "cli").is_dir():
            return "neuralir.server.cli"
        return "neuralir.cli"

    def threads(self) -> dict[str, int]:
        return {
            "encoder_ort_intra_op": self.encoder_threads,
            "rerank_ort_intra_op": self.rerank_threads,
            "index_usearch": self.index_threads,
            "client_event_loop": 1,
        }

    def label(self) -> str:
        """The encoder's batching and threads, as the report's rows name them."""
        threads = f"{self.encoder_threads} encoder thread{'s' if self.encoder_threads > 1 else ''}"
        if self.batching == "off":
            return f"batching off, {threads}"
        return f"batching on (max wait {self.encoder_max_wait_us} us), {threads}"

    def flags(self) -> list[str]:
        return [
            "--index-dir",
            str(self.index_dir),
            "--encoder-model",
            str(self.encoder_model),
            "--rerank-model",
            f"default={self.rerank_model}",
            "--batching",
            self.batching,
            "--encoder-max-wait-us",
            str(self.encoder_max_wait_us),
            "--encoder-threads",
            str(self.encoder_threads),
            "--rerank-threads",
            str(self.rerank_threads),
            "--index-threads",
            str(self.index_threads),
            "--log-format",
            "text",
        ]


class ServerProcess:
    """One `neuralir serve STAGE` child process on a free port (or another module's server
    that takes `--port-file`, e.g. the benchmark's probe server)."""

    def __init__(
        self,
        stage: str,
        flags: list[str],
        work_dir: Path,
        tag: str,
        module_args: list[str] | None = None,
        code: str = "",
        cli_module: str = "neuralir.cli",
    ) -> None:
        self.stage = stage
        self.port_file = work_dir / f"{tag}-{stage}.port"
        self.log_path = work_dir / f"{tag}-{stage}.log"
        self.port_file.unlink(missing_ok=True)
        serve = [cli_module, "serve", stage, "--host", "127.0.0.1", "--port", "0"]
        command = [
            sys.executable,
            "-m",
            *(module_args or serve),
            "--port-file",
            str(self.port_file),
            *flags,
        ]
        env = {**os.environ, "HF_HUB_OFFLINE": "1"}
        if code:  # ahead of this install's editable finder: that build's `neuralir` wins
            env["PYTHONPATH"] = os.pathsep.join(filter(None, [code, env.get("PYTHONPATH")]))
        with self.log_path.open("w") as log:
            self.process = subprocess.Popen(
                command, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=work_dir
            )
        self.port = 0

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def wait_port(self, timeout_s: float) -> str:
        deadline = time.monotonic() + timeout_s
        while not self.port_file.is_file():
            if self.process.poll() is not None:
                raise ServerStartError(
                    f"`serve {self.stage}` exited with {self.process.returncode}:\n"
                    f"{self.log_tail()}"
                )
            if time.monotonic() > deadline:
                raise ServerStartError(f"`serve {self.stage}` wrote no port in {timeout_s} s")
            time.sleep(0.05)
        self.port = int(self.port_file.read_text())
        return self.address

    def wait_ready(self, timeout_s: float, service: str = "") -> None:
        with NeuralIRClient(ClientSettings(target=self.address, max_attempts=1)) as client:
            try:
                client.wait_ready(timeout_s, service=service)
            except TimeoutError as exc:
                raise ServerStartError(f"{exc}\n{self.log_tail()}") from exc

    def stop(self, timeout_s: float = 15.0) -> None:
        if self.process.poll() is None:
            self.process.terminate()  # SIGTERM: the server drains and stops
            try:
                self.process.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)


PATHS = {"all": "grpc", "loopback": "grpc_loopback", "multiprocess": "grpc_multiprocess"}


@dataclasses.dataclass
class Deployment:
    kind: str  # "all", "loopback" or "multiprocess"
    settings: DeploySettings
    processes: list[ServerProcess]
    address: str  # where the search service (and, for "all", every service) listens
    stage_addresses: dict[str, str]
    startup_s: float

    @property
    def path(self) -> str:
        """The report's name for it: grpc, grpc_loopback, grpc_multiprocess (+ "@base")."""
        return PATHS[self.kind] + ("@base" if self.settings.code else "")

    def stop(self) -> None:
        for process in reversed(self.processes):
            process.stop()


def start_deployment(
    kind: str, settings: DeploySettings, work_dir: Path, timeout_s: float = 300.0
) -> Deployment:
    """Starts the processes of `kind` and returns once every service answers SERVING."""
    work_dir.mkdir(parents=True, exist_ok=True)
    tag = f"{kind}-{settings.batching}-{settings.encoder_max_wait_us}-{settings.encoder_threads}"
    tag += "-base" if settings.code else ""
    started = time.perf_counter()
    processes: list[ServerProcess] = []

    def serve(stage: str, flags: list[str]) -> ServerProcess:
        return ServerProcess(
            stage, flags, work_dir, tag, code=settings.code, cli_module=settings.cli_module
        )

    try:
        if kind in ("all", "loopback"):
            flags = settings.flags() + (["--local-stages", "grpc"] if kind == "loopback" else [])
            server = serve("all", flags)
            processes.append(server)
            address = server.wait_port(timeout_s)
            server.wait_ready(timeout_s)
            server.wait_ready(timeout_s, SEARCH_SERVICE)
            stages = dict.fromkeys(("encoder", "index", "rerank", "search"), address)
        elif kind == "multiprocess":
            for stage in ("encoder", "index", "rerank"):
                processes.append(serve(stage, settings.flags()))
            stages = {p.stage: p.wait_port(timeout_s) for p in processes}
            for process in processes:
                process.wait_ready(timeout_s)
            links = [
                "--encoder-address",
                stages["encoder"],
                "--index-address",
                stages["index"],
                "--rerank-address",
                stages["rerank"],
            ]
            search = serve("search", settings.flags() + links)
            processes.append(search)
            address = stages["search"] = search.wait_port(timeout_s)
            search.wait_ready(timeout_s, SEARCH_SERVICE)
        else:
            raise ValueError(f"unknown deployment {kind!r}")
    except BaseException:
        for process in processes:
            process.stop()
        raise
    return Deployment(kind, settings, processes, address, stages, time.perf_counter() - started)


class ServerPool:
    """Deployments started on first use and shared by the scenarios of one run."""

    def __init__(self, base: DeploySettings, work_dir: Path) -> None:
        self.base = base
        self.work_dir = work_dir
        self._running: dict[tuple[str, DeploySettings], Deployment] = {}

    def settings(self, overrides: dict[str, Any] | None = None) -> DeploySettings:
        """The base settings with a scenario's overrides (batching, encoder_max_wait_us,
        encoder_threads, ...)."""
        return dataclasses.replace(self.base, **(overrides or {}))

    def get(self, kind: str, overrides: dict[str, Any] | None = None) -> Deployment:
        key = (kind, self.settings(overrides))
        if key not in self._running:
            self._running[key] = start_deployment(kind, key[1], self.work_dir)
        return self._running[key]

    def release(self, kind: str, overrides: dict[str, Any] | None = None) -> None:
        deployment = self._running.pop((kind, self.settings(overrides)), None)
        if deployment is not None:
            deployment.stop()

    def stop_all(self) -> None:
        while self._running:
            _, deployment = self._running.popitem()
            deployment.stop()
