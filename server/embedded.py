"""Run a server on a background thread with its own event loop: for tests, eval and benchmarks.

with EmbeddedServer(settings) as server:
    client = NeuralIRClient(target=server.address)
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
from collections.abc import Coroutine
from types import TracebackType
from typing import Any, TypeVar

from neuralir.server.app import Server, build_server
from neuralir.server.settings import ServerSettings

T = TypeVar("T")


class EmbeddedServer:
    def __init__(self, settings: ServerSettings, ready_timeout_s: float = 120.0) -> None:
        self.settings = settings
        self._ready_timeout_s = ready_timeout_s
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True, name="grpc")
        self.server: Server | None = None
        self.port = 0

    @property
    def address(self) -> str:
        return f"{self.settings.host}:{self.port}"

    def _run(self, coro: Coroutine[Any, Any, T], timeout: float | None = None) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout)

    def start(self, wait_ready: bool = True) -> EmbeddedServer:
        self._thread.start()

        async def create() -> tuple[Server, int]:
            return build_server(self.settings)

        server, self.port = self._run(create())
        self.server = server
        self._starting = asyncio.run_coroutine_threadsafe(server.start(), self._loop)
        if wait_ready:
            self.wait_ready()
        return self

    def wait_ready(self) -> None:
        """Blocks until every stage is loaded and warm (re-raises a failed start)."""
        try:
            self._starting.result(self._ready_timeout_s)
        except concurrent.futures.TimeoutError as exc:
            raise TimeoutError(f"server not ready after {self._ready_timeout_s} s") from exc

    def stop(self, grace: float | None = 1.0) -> None:
        if self.server is not None:
            self._starting.cancel()
            self._run(self.server.stop(grace), timeout=60)
            self.server = None
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)
        self._loop.close()

    def __enter__(self) -> EmbeddedServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
