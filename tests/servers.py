"""Helpers for tests that start real servers: in-process (EmbeddedServer) or as processes.

Every server listens on 127.0.0.1 port 0; a process reports its port through `--port-file`.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import grpc
from google.rpc import error_details_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_status import rpc_status

from neuralir.server.app import SERVICE_NAMES
from neuralir.server.batching import BatchingSettings
from neuralir.server.embedded import EmbeddedServer
from neuralir.server.settings import ServerSettings

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
START_TIMEOUT_S = 120.0


def server_settings(
    encoder_model: Path,
    rerank_models: Sequence[tuple[str, Path]],
    index_dir: Path,
    services: Sequence[str] = ("encoder", "index", "rerank", "search"),
    **overrides: object,
) -> ServerSettings:
    """Settings for a test server: port 0, small thread counts, text logs."""
    values: dict[str, object] = {
        "services": tuple(services),
        "host": "127.0.0.1",
        "port": 0,
        "encoder_model": Path(encoder_model),
        "rerank_models": tuple((name, Path(path)) for name, path in rerank_models),
        "index_dir": Path(index_dir),
        "encoder_threads": 1,
        "rerank_threads": 1,
        "index_threads": 1,
        "grace_period_s": 5.0,
        "log_format": "text",
        "encoder_batching": BatchingSettings(max_batch_items=64, max_wait_us=0),
        "rerank_batching": BatchingSettings(max_batch_items=128, max_wait_us=1000),
    }
    values.update(overrides)
    return ServerSettings(**values)


@contextlib.contextmanager
def embedded(settings: ServerSettings, wait_ready: bool = True) -> Iterator[EmbeddedServer]:
    """An EmbeddedServer that is stopped even when its start fails."""
    server = EmbeddedServer(settings)
    try:
        server.start(wait_ready=wait_ready)
        yield server
    finally:
        server.stop(grace=1.0)


def health_status(address: str, service: str = "", timeout_s: float = 2.0) -> int:
    """One grpc.health.v1 Check; raises grpc.RpcError when the server does not answer."""
    with grpc.insecure_channel(address) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        reply = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=timeout_s)
        return int(reply.status)


def wait_serving(
    address: str,
    service: str = "",
    timeout_s: float = START_TIMEOUT_S,
    process: subprocess.Popen[bytes] | None = None,
) -> None:
    """Polls health until `service` is SERVING; fails early if `process` exits."""
    deadline = time.monotonic() + timeout_s
    with grpc.insecure_channel(address) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        while True:
            if process is not None and process.poll() is not None:
                raise RuntimeError(f"server process exited with {process.returncode}")
            with contextlib.suppress(grpc.RpcError):
                request = health_pb2.HealthCheckRequest(service=service)
                if stub.Check(request, timeout=1.0).status == SERVING:
                    return
            if time.monotonic() > deadline:
                name = service or "(server)"
                raise TimeoutError(f"{address} {name} not SERVING in {timeout_s} s")
            time.sleep(0.05)


class ServerProcess:
    """`neuralir serve <stage>` as a child process on port 0; its log goes to a file."""

    def __init__(self, stage: str, workdir: Path, args: Sequence[str] = ()) -> None:
        self.stage = stage
        workdir.mkdir(parents=True, exist_ok=True)
        self.port_file = workdir / f"{stage}.port"
        self.log_path = workdir / f"{stage}.log"
        self.port_file.unlink(missing_ok=True)
        command = [
            sys.executable, "-m", "neuralir.cli", "serve", stage,
            "--host", "127.0.0.1", "--port", "0", "--port-file", str(self.port_file),
            "--log-format", "text", *args,
        ]  # fmt: skip
        env = {**os.environ, "HF_HUB_OFFLINE": "1"}
        with self.log_path.open("wb") as log:
            self.process = subprocess.Popen(
                command, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=workdir
            )
        self.port = self._read_port()

    def _read_port(self, timeout_s: float = START_TIMEOUT_S) -> int:
        deadline = time.monotonic() + timeout_s
        while True:
            if self.port_file.is_file() and self.port_file.read_text():
                return int(self.port_file.read_text())
            if self.process.poll() is not None:
                raise RuntimeError(f"{self.stage} server exited early:\n{self.log()}")
            if time.monotonic() > deadline:
                self.kill()
                raise TimeoutError(f"{self.stage} server wrote no port file:\n{self.log()}")
            time.sleep(0.05)

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.is_file() else ""

    def wait_serving(self, service: str = "", timeout_s: float = START_TIMEOUT_S) -> None:
        try:
            wait_serving(self.address, service, timeout_s, self.process)
        except (RuntimeError, TimeoutError) as exc:
            raise RuntimeError(f"{self.stage} server not serving ({exc}):\n{self.log()}") from exc

    def terminate(self, timeout_s: float = 30.0) -> int:
        """SIGTERM (graceful shutdown), then the exit code."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            self.kill()
            raise

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=10)


def start_serving(stage: str, workdir: Path, args: list[str]) -> ServerProcess:
    """A `neuralir serve STAGE` process, returned once its service answers SERVING."""
    process = ServerProcess(stage, workdir, args)
    try:
        process.wait_serving(SERVICE_NAMES[stage])
    except BaseException:
        process.kill()
        raise
    return process


def model_args(encoder_model: Path, rerank_models: Sequence[tuple[str, Path]]) -> list[str]:
    args = ["--encoder-model", str(encoder_model), "--encoder-threads", "1"]
    for name, path in rerank_models:
        args += ["--rerank-model", f"{name}={path}"]
    return [*args, "--rerank-threads", "1", "--index-threads", "1"]


class SeparateStages:
    """Encoder, index and rerank as three processes, and a search process that reaches them."""

    def __init__(
        self,
        workdir: Path,
        encoder_model: Path,
        rerank_models: Sequence[tuple[str, Path]],
        index_dir: Path,
    ) -> None:
        common = [*model_args(encoder_model, rerank_models), "--index-dir", str(index_dir)]
        self.processes: dict[str, ServerProcess] = {}
        try:
            for stage in ("encoder", "index", "rerank"):
                self.processes[stage] = ServerProcess(stage, workdir, common)
            self.processes["search"] = ServerProcess(
                "search",
                workdir,
                [
                    *common,
                    "--encoder-address", self.processes["encoder"].address,
                    "--index-address", self.processes["index"].address,
                    "--rerank-address", self.processes["rerank"].address,
                ],
            )  # fmt: skip
            for stage, process in self.processes.items():
                process.wait_serving(SERVICE_NAMES[stage])
        except BaseException:
            self.stop()
            raise

    @property
    def search_address(self) -> str:
        return self.processes["search"].address

    def address(self, stage: str) -> str:
        return self.processes[stage].address

    def stop(self) -> dict[str, int]:
        """Stops the search process first, then the stages; returns the exit codes."""
        codes: dict[str, int] = {}
        for stage in ("search", "encoder", "index", "rerank"):
            if stage in self.processes:
                codes[stage] = self.processes[stage].terminate()
        return codes


def field_violations(error: grpc.RpcError) -> list[tuple[str, str]]:
    """The google.rpc.BadRequest field violations in an error's trailing metadata."""
    status = rpc_status.from_call(error)
    if status is None:
        return []
    found = []
    for detail in status.details:
        if detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            bad_request = error_details_pb2.BadRequest()
            detail.Unpack(bad_request)
            found += [(v.field, v.description) for v in bad_request.field_violations]
    return found


def assert_invalid_argument(error: grpc.RpcError, field: str) -> None:
    """INVALID_ARGUMENT whose message and BadRequest details name `field`."""
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, (error.code(), error.details())
    assert field in (error.details() or ""), error.details()
    violations = field_violations(error)
    assert [f for f, _ in violations] == [field], violations
    assert all(description for _, description in violations)
