"""Dynamic batching: concurrent requests are gathered into one model call, then split back.

A request is one or more chunks (the stage cuts large requests at the batch limits). A bounded
queue of requests feeds one worker, which forms each batch round-robin across the waiting
requests, one chunk of each in turn, until the batch holds `max_batch_items` items or
`max_batch_tokens` tokens, or `max_wait_us` has passed since it started; it runs the model
once on a dedicated thread and hands each chunk its own slice. So a 2-passage rerank waits for
at most one chunk of someone's 1,000-passage rerank, and a request whose caller has gone
(cancelled, deadline passed) stops within one chunk. Past `max_queue_items` queued items a
request is refused at once (load shedding) rather than left to wait for its deadline.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import dataclasses
import logging
import time
from collections import deque
from collections.abc import Callable, Sequence
from typing import Generic, TypeVar, cast

from neuralir.server.errors import NotReady, Overloaded

log = logging.getLogger(__name__)

Item = TypeVar("Item")
Result = TypeVar("Result")


@dataclasses.dataclass(frozen=True)
class BatchingSettings:
    enabled: bool = True
    # Most items (texts or pairs) one model call takes; larger requests are cut into chunks.
    max_batch_items: int = 64
    # How long a batch may wait for more requests once the first has arrived (microseconds).
    max_wait_us: int = 0
    # Items allowed to wait in the queue before new requests are shed.
    max_queue_items: int = 2048
    # Most padded tokens (rows x longest) one model call takes; 0 = no token limit. Time and
    # memory of a call grow with tokens: this bounds how long one chunk holds the model.
    max_batch_tokens: int = 0


@dataclasses.dataclass(frozen=True)
class BatchStats:
    queue_ns: int  # from submit to the start of the request's first model call
    run_ns: int  # the model calls of every batch the request's chunks rode in
    batch_items: int  # items in the largest batch the request rode in
    chunks: int = 1  # model batches the request took


def split_request(costs: Sequence[int], settings: BatchingSettings) -> list[tuple[int, int, int]]:
    """Cuts a request of items with the given token `costs` into consecutive chunks of at most
    `max_batch_items` items and `max_batch_tokens` padded tokens (rows x costliest): a list of
    (start, end, padded tokens). A single item over the token budget is a chunk alone."""
    chunks: list[tuple[int, int, int]] = []
    start, longest = 0, 0
    for index, cost in enumerate(costs):
        rows, widest = index - start, max(longest, cost)
        too_many = rows >= settings.max_batch_items
        too_costly = settings.max_batch_tokens and widest * (rows + 1) > settings.max_batch_tokens
        if rows and (too_many or too_costly):
            chunks.append((start, index, longest * rows))
            start, widest = index, cost
        longest = widest
    if start < len(costs):
        chunks.append((start, len(costs), longest * (len(costs) - start)))
    return chunks


class _Request(Generic[Item, Result]):
    """One caller's chunks, the results so far and its future."""

    def __init__(
        self,
        chunks: Sequence[Item],
        sizes: list[int],
        tokens: list[int],
        deadline_ns: int | None,
        future: asyncio.Future[tuple[list[Result], BatchStats]],
    ) -> None:
        self.chunks = list(chunks)
        self.sizes = sizes
        self.tokens = tokens
        self.deadline_ns = deadline_ns
        self.future = future
        self.enqueued_ns = time.perf_counter_ns()
        self.next = 0  # the next chunk to hand out
        self.results: list[Result | None] = [None] * len(self.chunks)
        self.unfinished = len(self.chunks)
        self.first_start_ns = 0
        self.run_ns = 0
        self.batch_items = 0
        self.batches = 0
        self.last_batch_ns = 0

    @property
    def untaken_items(self) -> int:
        return sum(self.sizes[self.next :])

    def expired(self, now_ns: int) -> bool:
        return self.deadline_ns is not None and now_ns >= self.deadline_ns


# run_batch gets every item of a batch and returns one result per item, in order.
BatchFunction = Callable[[list[Item]], Sequence[Result]]


class DynamicBatcher(Generic[Item, Result]):
    def __init__(
        self,
        name: str,
        run_batch: BatchFunction[Item, Result],
        item_size: Callable[[Item], int],
        settings: BatchingSettings,
        item_tokens: Callable[[Item], int] | None = None,
    ) -> None:
        self.name = name
        self._run_batch = run_batch
        self._item_size = item_size
        self._item_tokens = item_tokens
        self._settings = settings
        # Requests with chunks not yet handed out, in round-robin order.
        self._queue: deque[_Request[Item, Result]] = deque()
        self._queued_items = 0
        self._wakeup = asyncio.Event()
        # One model thread per batcher: model calls never overlap, the event loop never blocks.
        self._executor = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix=name)
        self._worker: asyncio.Task[None] | None = None
        self._running = False
        self.shed_total = 0
        # Requests dropped (wholly or their remaining chunks) because their caller gave up.
        self.cancelled_total = 0
        self.expired_total = 0  # of those, requests whose deadline passed between chunks
        # Observers for metrics: on_batch(items, queue_ns, run_ns), on_shed(), on_cancelled().
        self.on_batch: Callable[[int, int, int], None] | None = None
        self.on_shed: Callable[[], None] | None = None
        self.on_cancelled: Callable[[], None] | None = None

    @property
    def queued_items(self) -> int:
        return self._queued_items

    def start(self) -> None:
        if self._worker is None:
            self._worker = asyncio.get_running_loop().create_task(self._work(), name=self.name)

    async def stop(self) -> None:
        if self._worker is not None:
            self._worker.cancel()
            await asyncio.gather(self._worker, return_exceptions=True)
            self._worker = None
        for pending in self._queue:
            if not pending.future.done():
                pending.future.set_exception(NotReady(f"{self.name} is shutting down"))
        self._queue.clear()
        self._executor.shutdown(wait=True)

    @property
    def busy(self) -> bool:
        """Whether any chunk is queued or running (tests: the stage is idle once False)."""
        return bool(self._queue) or self._running

    async def submit(self, item: Item) -> tuple[Result, BatchStats]:
        """One chunk; see submit_chunks."""
        results, stats = await self.submit_chunks([item])
        return results[0], stats

    async def submit_chunks(
        self, chunks: Sequence[Item], timeout_s: float | None = None
    ) -> tuple[list[Result], BatchStats]:
        """Runs `chunks` (one request) and returns one result per chunk, in order.

        Other requests' chunks interleave with these. Before each chunk starts, a request
        whose caller was cancelled is dropped, and one past `timeout_s` (from now) fails with
        TimeoutError (DEADLINE_EXCEEDED): neither holds the model beyond the chunk running.
        """
        if self._worker is None:
            raise NotReady(f"{self.name} is not running")
        if not chunks:
            return [], BatchStats(0, 0, 0, 0)
        sizes = [max(1, self._item_size(c)) for c in chunks]
        tokens = [self._item_tokens(c) if self._item_tokens else 0 for c in chunks]
        size = sum(sizes)
        limit = self._settings.max_queue_items
        if self._queued_items + size > limit:
            self.shed_total += 1
            if self.on_shed is not None:
                self.on_shed()
            raise Overloaded(
                f"{self.name} queue is full ({self._queued_items} items waiting, limit {limit}): "
                "retry with backoff"
            )
        future: asyncio.Future[tuple[list[Result], BatchStats]] = (
            asyncio.get_running_loop().create_future()
        )
        deadline = None if timeout_s is None else time.perf_counter_ns() + int(timeout_s * 1e9)
        self._queue.append(_Request(chunks, sizes, tokens, deadline, future))
        self._queued_items += size
        self._wakeup.set()
        return await future

    def _drop(self, request: _Request[Item, Result], now_ns: int) -> bool:
        """Drops a request whose caller gave up; True if it was dropped."""
        if request.future.done():  # cancelled by its caller (or failed in an earlier batch)
            gone = request.future.cancelled()
        elif request.expired(now_ns):
            request.future.set_exception(TimeoutError(f"{self.name}: deadline passed"))
            self.expired_total += 1
            gone = True
        else:
            return False
        self._queued_items -= request.untaken_items
        request.next = len(request.chunks)
        if gone:
            self.cancelled_total += 1
            if self.on_cancelled is not None:
                self.on_cancelled()
        return True

    def _take_batch(self) -> list[tuple[_Request[Item, Result], int]]:
        """Chunks for one model call, round-robin across requests, skipping callers that gave
        up. Requests that gave a chunk go to the back of the turn, in the order they gave."""
        s = self._settings
        max_items = s.max_batch_items if s.enabled else 1
        max_tokens = s.max_batch_tokens if s.enabled else 0
        now = time.perf_counter_ns()
        alive = [r for r in self._queue if not self._drop(r, now)]
        self._queue.clear()
        # Requests not yet started go first, so a new caller waits for at most the chunk
        # running now; started ones take turns behind them.
        waiting = [r for r in alive if r.next == 0] + [r for r in alive if r.next > 0]
        batch: list[tuple[_Request[Item, Result], int]] = []
        served: list[_Request[Item, Result]] = []
        items = tokens = 0
        progress = True
        while progress:
            progress = False
            for request in waiting:
                if request.next >= len(request.chunks):
                    continue
                size, cost = request.sizes[request.next], request.tokens[request.next]
                if batch and (
                    not s.enabled
                    or items + size > max_items
                    or (max_tokens and tokens + cost > max_tokens)
                ):
                    continue
                batch.append((request, request.next))
                request.next += 1
                self._queued_items -= size
                items, tokens = items + size, tokens + cost
                progress = True
                if request not in served:
                    served.append(request)
        left = [r for r in waiting if r not in served] + served
        self._queue.extend(r for r in left if r.next < len(r.chunks))
        return batch

    async def _fill_window(self) -> None:
        """Waits up to max_wait_us for more requests while the batch is not full."""
        if not self._settings.enabled or self._settings.max_wait_us <= 0:
            return
        deadline = time.perf_counter_ns() + self._settings.max_wait_us * 1000
        while self._queued_items < self._settings.max_batch_items:
            remaining = deadline - time.perf_counter_ns()
            if remaining <= 0:
                return
            self._wakeup.clear()
            try:
                await asyncio.wait_for(self._wakeup.wait(), remaining / 1e9)
            except TimeoutError:
                return

    async def _work(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            if not self._queue:
                self._wakeup.clear()
                await self._wakeup.wait()
                continue
            await self._fill_window()
            batch = self._take_batch()
            if not batch:
                continue
            start = time.perf_counter_ns()
            self._running = True
            try:
                results = await loop.run_in_executor(
                    self._executor, self._run_batch, [r.chunks[i] for r, i in batch]
                )
            except asyncio.CancelledError:  # stop(): callers of the batch in flight must not hang
                for request, _ in batch:
                    if not request.future.done():
                        request.future.set_exception(NotReady(f"{self.name} is shutting down"))
                raise
            except Exception as exc:  # the model failed: every caller in the batch learns why
                log.exception("%s: batch of %d chunks failed", self.name, len(batch))
                for request, _ in batch:
                    if not request.future.done():
                        request.future.set_exception(exc)
                continue
            finally:
                self._running = False
            run_ns = time.perf_counter_ns() - start
            items = sum(r.sizes[i] for r, i in batch)
            if self.on_batch is not None:
                self.on_batch(items, start - batch[0][0].enqueued_ns, run_ns)
            for (request, index), result in zip(batch, results, strict=True):
                self._record(request, index, result, start, run_ns, items)

    @staticmethod
    def _record(
        request: _Request[Item, Result],
        index: int,
        result: Result,
        start_ns: int,
        run_ns: int,
        items: int,
    ) -> None:
        if request.future.done():
            return
        if not request.first_start_ns:
            request.first_start_ns = start_ns
        request.results[index] = result
        request.unfinished -= 1
        if request.last_batch_ns != start_ns:  # two chunks in one batch ride it once
            request.last_batch_ns = start_ns
            request.run_ns += run_ns
            request.batch_items = max(request.batch_items, items)
            request.batches += 1
        if request.unfinished == 0:
            stats = BatchStats(
                request.first_start_ns - request.enqueued_ns,
                request.run_ns,
                request.batch_items,
                request.batches,
            )
            request.future.set_result((cast(list[Result], request.results), stats))
