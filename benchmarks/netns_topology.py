"""Several hosts on one Linux machine: network namespaces on a private switch, a process each.

Each host is a network namespace with its own loopback and one `eth0` (a veth pair) plugged
into a bridge that lives in a namespace of its own, the switch: no interface, address or
route is added to the machine's own namespace, so every packet stays between the namespaces
made here. Processes start with `ip netns exec NS ...` (which execs the command, so the
process id we hold is the server's own). `Network.close()` kills what it started and deletes
every namespace it made, also after a failure.

Used by tests/test_multihost.py and benchmarks/multihost.py (root and iproute2 needed).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import re
import select
import shutil
import signal
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

# A private /24 that only exists inside the switch namespace of each Network.
SUBNET = "10.213.0"
GRPC_PORT = 50051  # each host has its own port space: fixed ports cannot collide
METRICS_PORT = 9100


class TopologyError(RuntimeError):
    """A namespace, link or process of the topology could not be set up."""


def _ip(*args: str) -> None:
    done = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30)
    if done.returncode != 0:
        raise TopologyError(f"ip {' '.join(args)}: {done.stderr.strip()}")


def netns_unavailable_reason() -> str | None:
    """Why network namespaces cannot be made here, or None when they can."""
    if sys.platform != "linux":
        return "network namespaces need Linux"
    if shutil.which("ip") is None:
        return "the `ip` command is missing (Debian package iproute2: apt-get install iproute2)"
    if os.geteuid() != 0:
        return "creating network namespaces needs root"
    probe = f"nirprobe{os.getpid()}"
    try:
        _ip("netns", "add", probe)
        _ip("netns", "del", probe)
    except (TopologyError, OSError, subprocess.TimeoutExpired) as exc:
        return f"cannot create a network namespace: {exc}"
    return None


def remove_stale_namespaces() -> None:
    """Deletes namespaces left by a run that was killed (its process id is gone)."""
    listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, timeout=30)
    for line in listed.stdout.splitlines():
        name = line.split()[0] if line.split() else ""
        match = re.fullmatch(r"nir(\d+)-[\w-]+", name)
        if match is None or _pid_alive(int(match.group(1))):
            continue
        with contextlib.suppress(TopologyError, subprocess.TimeoutExpired):
            _ip("netns", "del", name)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@dataclasses.dataclass
class Host:
    name: str
    netns: str
    address: str  # on the switch

    @property
    def grpc_target(self) -> str:
        return f"{self.address}:{GRPC_PORT}"

    @property
    def metrics_url(self) -> str:
        return f"http://{self.address}:{METRICS_PORT}/metrics"


@dataclasses.dataclass
class HostProcess:
    host: Host
    process: subprocess.Popen[bytes]
    log_path: Path

    def log(self, tail: int = 4000) -> str:
        text = self.log_path.read_text(errors="replace") if self.log_path.is_file() else ""
        return text[-tail:]

    def stop(self, sig: int = signal.SIGTERM, timeout_s: float = 15.0) -> int:
        """Sends `sig` (SIGTERM: graceful; SIGKILL: a crash) and waits for the exit code."""
        if self.process.poll() is None:
            self.process.send_signal(sig)
        try:
            return self.process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            self.process.kill()
            return self.process.wait(timeout=10)


class Network:
    """A switch namespace plus one namespace per host; a context manager that cleans up."""

    def __init__(self, workdir: Path, tag: str | None = None) -> None:
        self.tag = tag or f"nir{os.getpid()}"
        self.workdir = Path(workdir)
        self.switch = f"{self.tag}-sw"
        self.hosts: dict[str, Host] = {}
        self.processes: list[HostProcess] = []
        self._namespaces: list[str] = []

    def __enter__(self) -> Network:
        remove_stale_namespaces()
        try:
            self._add_namespace(self.switch)
            _ip("-n", self.switch, "link", "add", "br0", "type", "bridge")
            _ip("-n", self.switch, "link", "set", "br0", "up")
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _add_namespace(self, name: str) -> None:
        _ip("netns", "add", name)
        self._namespaces.append(name)
        _ip("-n", name, "link", "set", "lo", "up")

    def add_host(self, name: str) -> Host:
        """A namespace with eth0 on the switch at the next free address (.10, .11, ...)."""
        index = len(self.hosts)
        host = Host(name, f"{self.tag}-{name}", f"{SUBNET}.{10 + index}")
        self._add_namespace(host.netns)
        port = f"p{index}"  # the switch's end; names only need to be unique in the switch
        veth = ("type", "veth", "peer", "eth0", "netns", host.netns)
        _ip("-n", self.switch, "link", "add", port, *veth)
        _ip("-n", self.switch, "link", "set", port, "master", "br0")
        _ip("-n", self.switch, "link", "set", port, "up")
        _ip("-n", host.netns, "addr", "add", f"{host.address}/24", "dev", "eth0")
        _ip("-n", host.netns, "link", "set", "eth0", "up")
        self.hosts[name] = host
        return host

    def start(
        self,
        host: Host,
        argv: Sequence[str],
        env: dict[str, str] | None = None,
        pipes: bool = False,
    ) -> HostProcess:
        """Runs argv inside the host's namespace; its output (stderr only, with `pipes`: then
        stdin and stdout are pipes to this process) goes to WORKDIR/<host>.log."""
        self.workdir.mkdir(parents=True, exist_ok=True)
        log_path = self.workdir / f"{host.name}.log"
        with log_path.open("ab") as log:
            process = subprocess.Popen(
                ["ip", "netns", "exec", host.netns, *argv],
                stdin=subprocess.PIPE if pipes else subprocess.DEVNULL,
                stdout=subprocess.PIPE if pipes else log,
                stderr=log if pipes else subprocess.STDOUT,
                env={**os.environ, **(env or {})},
                cwd=self.workdir,
            )
        started = HostProcess(host, process, log_path)
        self.processes.append(started)
        return started

    def close(self) -> list[str]:
        """Kills every process started here, then deletes every namespace; returns problems."""
        problems = []
        for started in self.processes:
            with contextlib.suppress(OSError, subprocess.TimeoutExpired):
                started.stop(signal.SIGKILL, timeout_s=10)
            for pipe in (started.process.stdin, started.process.stdout):
                if pipe is not None:
                    pipe.close()
        for name in reversed(self._namespaces):  # hosts first, the switch last
            try:
                _ip("netns", "del", name)
            except (TopologyError, subprocess.TimeoutExpired) as exc:
                problems.append(str(exc))
        self._namespaces.clear()
        return problems


def serve_argv(stage: str, host: Host, *args: str) -> list[str]:
    """`neuralir serve STAGE` on the host's address, fixed ports, JSON logs."""
    return [
        sys.executable, "-m", "neuralir.cli", "serve", stage,
        "--host", host.address, "--port", str(GRPC_PORT),
        "--metrics-port", str(METRICS_PORT), "--log-format", "json", *args,
    ]  # fmt: skip


class Driver:
    """A client process inside a namespace, answering one JSON request per line
    (`neuralir.benchmarks.netns_driver`): the test process itself stays outside."""

    def __init__(self, network: Network, host: Host) -> None:
        self._started = network.start(
            host,
            [sys.executable, "-u", "-m", "neuralir.benchmarks.netns_driver"],
            pipes=True,
        )

    def request(self, op: str, timeout_s: float = 120.0, **fields: Any) -> dict[str, Any]:
        process = self._started.process
        assert process.stdin is not None
        assert process.stdout is not None
        process.stdin.write((json.dumps({"op": op, **fields}) + "\n").encode())
        process.stdin.flush()
        # One request in flight at a time, so at most one line is ever waiting to be read.
        ready, _, _ = select.select([process.stdout], [], [], timeout_s)
        if not ready:
            raise TopologyError(f"the driver took over {timeout_s} s for {op}")
        line = process.stdout.readline()
        if not line:
            raise TopologyError(f"the driver exited ({process.poll()}) during {op}")
        reply: dict[str, Any] = json.loads(line)
        if "exception" in reply:
            raise TopologyError(f"driver {op} failed: {reply['exception']}")
        return reply
