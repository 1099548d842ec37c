"""Load generators: closed loop (N callers back to back) and open loop (Poisson arrivals).

Closed loop: each of N callers sends its next request when the previous one returns, so the
offered load adapts to the server; it measures capacity, not queueing. Open loop: requests
are due at fixed-rate Poisson times whatever the server does, and each latency is measured
from the request's INTENDED send time, so a server (or a generator) that falls behind shows
its queueing delay instead of hiding it (coordinated omission). Both time with
`time.perf_counter_ns` and record into HDR histograms.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import random
import threading
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from neuralir.benchmarks.hdr import LatencyHistogram
from neuralir.client.types import StageTime


@dataclasses.dataclass(frozen=True)
class CallReport:
    """What one call tells the generator besides its latency."""

    items: int = 1  # texts, pairs or queries served by the call
    stages: Sequence[StageTime] = ()  # server-side timings from the response


AsyncCall = Callable[[], Awaitable[CallReport | None]]
SyncCall = Callable[[], CallReport | None]


@dataclasses.dataclass
class LoadResult:
    load: str  # "closed" or "open"
    concurrency: int | None = None
    rate: float | None = None  # offered requests/s (open loop)
    requests: int = 0  # completed and recorded
    errors: int = 0  # failed or unfinished at the end of the drain
    items: int = 0
    window_ns: int = 0  # measured window: first recorded start to last recorded end
    latency: LatencyHistogram = dataclasses.field(default_factory=LatencyHistogram)
    # Open loop only: from the actual send (what a generator without correction would show)
    # and the generator's own lag between intended and actual send.
    service: LatencyHistogram = dataclasses.field(default_factory=LatencyHistogram)
    send_lag: LatencyHistogram = dataclasses.field(default_factory=LatencyHistogram)
    error_kinds: dict[str, int] = dataclasses.field(default_factory=dict)  # status -> count
    error_examples: dict[str, str] = dataclasses.field(default_factory=dict)  # status -> message
    server_total: dict[str, LatencyHistogram] = dataclasses.field(default_factory=dict)
    server_queue: dict[str, LatencyHistogram] = dataclasses.field(default_factory=dict)
    batch_sums: dict[str, list[int]] = dataclasses.field(default_factory=dict)  # [sum, count]
    # items/s of each merged window (round), so a report can show how much rounds disagreed
    round_items_per_s: list[float] = dataclasses.field(default_factory=list)

    @property
    def elapsed_s(self) -> float:
        return self.window_ns / 1e9

    @property
    def throughput_rps(self) -> float:
        return self.requests / self.elapsed_s if self.window_ns > 0 else 0.0

    @property
    def items_per_s(self) -> float:
        return self.items / self.elapsed_s if self.window_ns > 0 else 0.0

    def record(
        self, latency_ns: int, report: CallReport | None, service_ns: int = 0, lag_ns: int = 0
    ) -> None:
        self.requests += 1
        self.latency.record_ns(latency_ns)
        if self.load == "open":
            self.service.record_ns(service_ns)
            self.send_lag.record_ns(max(0, lag_ns))
        if report is None:
            self.items += 1
            return
        self.items += report.items
        for stage in report.stages:
            self.server_total.setdefault(stage.stage, LatencyHistogram()).record_ms(stage.total_ms)
            self.server_queue.setdefault(stage.stage, LatencyHistogram()).record_ms(stage.queue_ms)
            sums = self.batch_sums.setdefault(stage.stage, [0, 0])
            sums[0] += stage.batch_size
            sums[1] += 1

    def fail(self, exc: BaseException) -> None:
        """Counts a failed call by its kind: the gRPC status name, else the exception type."""
        self.errors += 1
        code = getattr(exc, "code", None)
        kind = type(exc).__name__
        message = str(exc)
        if callable(code):
            with contextlib.suppress(Exception):  # not a gRPC error after all
                kind = code().name
                message = exc.details()  # type: ignore[attr-defined]
        self.error_kinds[kind] = self.error_kinds.get(kind, 0) + 1
        self.error_examples.setdefault(kind, str(message)[:200])

    def merge(self, other: LoadResult) -> None:
        """Adds another window of the same measurement (rounds interleaved with other variants,
        so slow drifts in machine load hit every variant alike)."""
        self.round_items_per_s = self.rounds() + other.rounds()
        self.requests += other.requests
        self.errors += other.errors
        self.items += other.items
        self.window_ns += other.window_ns
        self.latency.merge(other.latency)
        self.service.merge(other.service)
        self.send_lag.merge(other.send_lag)
        for kind, count in other.error_kinds.items():
            self.error_kinds[kind] = self.error_kinds.get(kind, 0) + count
        for kind, message in other.error_examples.items():
            self.error_examples.setdefault(kind, message)
        for stage, histogram in other.server_total.items():
            self.server_total.setdefault(stage, LatencyHistogram()).merge(histogram)
            self.server_queue.setdefault(stage, LatencyHistogram()).merge(other.server_queue[stage])
            sums = self.batch_sums.setdefault(stage, [0, 0])
            sums[0] += other.batch_sums[stage][0]
            sums[1] += other.batch_sums[stage][1]

    def rounds(self) -> list[float]:
        """items/s per measured window: one entry until windows are merged."""
        return list(self.round_items_per_s) or [self.items_per_s]

    def server_summary(self) -> dict[str, dict[str, float]]:
        """Server-side StageTiming per stage: total and queue p50/p99 (ms), mean batch size."""
        out: dict[str, dict[str, float]] = {}
        for stage, total in self.server_total.items():
            queue = self.server_queue[stage]
            batch_sum, batch_count = self.batch_sums[stage]
            out[stage] = {
                "p50": round(total.percentile_ms(50), 4),
                "p99": round(total.percentile_ms(99), 4),
                "queue_p50": round(queue.percentile_ms(50), 4),
                "queue_p99": round(queue.percentile_ms(99), 4),
                "mean_batch": round(batch_sum / batch_count, 2) if batch_count else 0.0,
            }
        return out


class _Window:
    """The measured window: recording starts after warm-up and stops at a time or count."""

    def __init__(
        self, warmup_s: float, duration_s: float, max_requests: int, min_requests: int = 1
    ) -> None:
        self.start_ns = time.perf_counter_ns()
        self.measure_from = self.start_ns + int(warmup_s * 1e9)
        self.stop_at = self.measure_from + int(duration_s * 1e9)
        self.max_requests = max_requests
        # At least this many recorded calls, even past stop_at (slow calls, long warm-ups).
        self.min_requests = min_requests
        self.started = 0
        self.first_start = 0
        self.last_end = 0

    def admit(self, now: int) -> bool | None:
        """None: stop calling; True: record this call; False: a warm-up call."""
        if self.max_requests and self.started >= self.max_requests:
            return None
        if now >= self.stop_at and self.started >= self.min_requests:
            return None
        if now < self.measure_from:
            return False
        if self.started == 0:
            self.first_start = now
        self.started += 1
        return True

    def finish(self, end: int) -> None:
        self.last_end = max(self.last_end, end)

    @property
    def window_ns(self) -> int:
        return max(0, self.last_end - self.first_start) if self.started else 0


def merge_round(store: dict[Any, LoadResult], key: Any, result: LoadResult) -> None:
    """Adds one round's window to the measurement stored under `key` (or starts it)."""
    if key in store:
        store[key].merge(result)
    else:
        store[key] = result


def closed_loop_sync(
    call: SyncCall, duration_s: float, warmup_s: float = 0.0, max_requests: int = 0
) -> LoadResult:
    """One caller in a plain loop: the in-process floor, with no event loop in the way."""
    result = LoadResult(load="closed", concurrency=1)
    window = _Window(warmup_s, duration_s, max_requests)
    while (recording := window.admit(time.perf_counter_ns())) is not None:
        start = time.perf_counter_ns()
        try:
            report = call()
        except Exception as exc:
            if recording:
                result.fail(exc)
            continue
        end = time.perf_counter_ns()
        if recording:
            window.finish(end)
            result.record(end - start, report)
    result.window_ns = window.window_ns
    return result


async def closed_loop(
    call: AsyncCall,
    concurrency: int,
    duration_s: float,
    warmup_s: float = 0.0,
    max_requests: int = 0,
) -> LoadResult:
    """`concurrency` callers, each sending its next request when the previous one returns."""
    result = LoadResult(load="closed", concurrency=concurrency)
    window = _Window(warmup_s, duration_s, max_requests)

    async def caller() -> None:
        while (recording := window.admit(time.perf_counter_ns())) is not None:
            start = time.perf_counter_ns()
            try:
                report = await call()
            except Exception as exc:
                if recording:
                    result.fail(exc)
                continue
            end = time.perf_counter_ns()
            if recording:
                window.finish(end)
                result.record(end - start, report)

    await asyncio.gather(*(caller() for _ in range(concurrency)))
    result.window_ns = window.window_ns
    return result


async def open_loop(
    call: AsyncCall,
    rate: float,
    duration_s: float,
    warmup_s: float = 0.0,
    seed: int = 0,
    drain_timeout_s: float = 30.0,
) -> LoadResult:
    """Poisson arrivals at `rate`/s; latency runs from each request's intended send time.

    A pacing thread sleeps until each due time (time.sleep is precise to ~0.1 ms, where
    asyncio's timer rounds up to whole milliseconds) and hands the request to the event loop.
    If the loop is busy the request starts late: that lag is reported apart (`send_lag`) and
    always counted in the latency, as is any wait behind the server's queue.
    """
    if rate <= 0:
        raise ValueError("rate must be positive")
    result = LoadResult(load="open", rate=rate)
    rng = random.Random(seed)
    window = _Window(warmup_s, duration_s, 0, 0)
    in_flight: set[asyncio.Task[None]] = set()
    loop = asyncio.get_running_loop()
    paced: asyncio.Future[None] = loop.create_future()

    async def send(intended: int, recording: bool) -> None:
        sent = time.perf_counter_ns()
        try:
            report = await call()
        except Exception as exc:
            if recording:
                result.fail(exc)
            return
        end = time.perf_counter_ns()
        if recording:
            window.finish(end)
            result.record(end - intended, report, service_ns=end - sent, lag_ns=sent - intended)

    def start(intended: int) -> None:  # runs on the event loop
        recording = intended >= window.measure_from
        if recording:
            if window.started == 0:
                window.first_start = intended
            window.started += 1
        task = loop.create_task(send(intended, recording))
        in_flight.add(task)
        task.add_done_callback(in_flight.discard)

    def pace() -> None:  # runs on its own thread; sleeps, never spins
        intended = window.start_ns
        try:
            while True:
                intended += max(1, int(rng.expovariate(rate) * 1e9))
                if intended >= window.stop_at:
                    break
                delay = intended - time.perf_counter_ns()
                if delay > 0:
                    time.sleep(delay / 1e9)
                loop.call_soon_threadsafe(start, intended)
        finally:
            loop.call_soon_threadsafe(paced.set_result, None)

    pacer = threading.Thread(target=pace, name="open-loop-pacer", daemon=True)
    pacer.start()
    await paced
    pacer.join()
    if in_flight:
        _, unfinished = await asyncio.wait(set(in_flight), timeout=drain_timeout_s)
        for task in unfinished:
            task.cancel()
        await asyncio.gather(*unfinished, return_exceptions=True)
        if unfinished:
            result.errors += len(unfinished)
            result.error_kinds["UNFINISHED"] = len(unfinished)
    result.window_ns = window.window_ns
    return result
