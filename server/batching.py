"""Dynamic batching: concurrent requests are gathered into one model call, then split back.

A bounded queue feeds one worker. The worker takes the oldest request, then keeps taking
queued requests until the batch holds `max_batch_items` items or `max_wait_us` has passed
since the batch started, runs the model once on a dedicated thread, and hands each caller
its own slice. Past `max_queue_items` queued items a request is refused at once
(load shedding) rather than left to wait for its deadline.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import dataclasses
import logging
import time
from collections import deque
from collections.abc import Callable, Sequence
from typing import Generic, TypeVar

from neuralir.server.errors import NotReady, Overloaded

log = logging.getLogger(__name__)

Item = TypeVar("Item")
Result = TypeVar("Result")


@dataclasses.dataclass(frozen=True)
class BatchingSettings:
    enabled: bool = True
    # Most items (texts or pairs) one model call takes; one larger request still runs alone.
    max_batch_items: int = 64
    # How long a batch may wait for more requests once the first has arrived (microseconds).
    max_wait_us: int = 0
    # Items allowed to wait in the queue before new requests are shed.
    max_queue_items: int = 2048


@dataclasses.dataclass(frozen=True)
class BatchStats:
    queue_ns: int  # from submit to the start of the model call
    run_ns: int  # the model call for the whole batch
    batch_items: int  # items in the batch this request rode in


@dataclasses.dataclass
class _Pending(Generic[Item, Result]):
    item: Item
    size: int
    enqueued_ns: int
    future: asyncio.Future[tuple[Result, BatchStats]]


# run_batch gets every item of a batch and returns one result per item, in order.
BatchFunction = Callable[[list[Item]], Sequence[Result]]


class DynamicBatcher(Generic[Item, Result]):
    def __init__(
        self,
        name: str,
        run_batch: BatchFunction[Item, Result],
        item_size: Callable[[Item], int],
        settings: BatchingSettings,
    ) -> None:
        self.name = name
        self._run_batch = run_batch
        self._item_size = item_size
        self._settings = settings
        self._queue: deque[_Pending[Item, Result]] = deque()
        self._queued_items = 0
        self._wakeup = asyncio.Event()
        # One model thread per batcher: model calls never overlap, the event loop never blocks.
        self._executor = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix=name)
        self._worker: asyncio.Task[None] | None = None
        self.shed_total = 0
        # Requests dropped unrun because their caller gave up (cancelled, deadline passed).
        self.cancelled_total = 0
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

    async def submit(self, item: Item) -> tuple[Result, BatchStats]:
        if self._worker is None:
            raise NotReady(f"{self.name} is not running")
        size = max(1, self._item_size(item))
        limit = self._settings.max_queue_items
        if self._queued_items + size > limit:
            self.shed_total += 1
            if self.on_shed is not None:
                self.on_shed()
            raise Overloaded(
                f"{self.name} queue is full ({self._queued_items} items waiting, limit {limit}): "
                "retry with backoff"
            )
        future: asyncio.Future[tuple[Result, BatchStats]] = (
            asyncio.get_running_loop().create_future()
        )
        self._queue.append(_Pending(item, size, time.perf_counter_ns(), future))
        self._queued_items += size
        self._wakeup.set()
        return await future

    def _take_batch(self) -> list[_Pending[Item, Result]]:
        """Pops queued requests up to the batch limit, skipping callers that gave up."""
        limit = self._settings.max_batch_items if self._settings.enabled else 1
        batch: list[_Pending[Item, Result]] = []
        items = 0
        while self._queue:
            head = self._queue[0]
            if head.future.cancelled():
                self._queue.popleft()
                self._queued_items -= head.size
                self.cancelled_total += 1
                if self.on_cancelled is not None:
                    self.on_cancelled()
                continue
            if batch and (items + head.size > limit or not self._settings.enabled):
                break
            self._queue.popleft()
            self._queued_items -= head.size
            batch.append(head)
            items += head.size
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
            try:
                results = await loop.run_in_executor(
                    self._executor, self._run_batch, [p.item for p in batch]
                )
            except asyncio.CancelledError:  # stop(): callers of the batch in flight must not hang
                for pending in batch:
                    if not pending.future.done():
                        pending.future.set_exception(NotReady(f"{self.name} is shutting down"))
                raise
            except Exception as exc:  # the model failed: every caller in the batch learns why
                log.exception("%s: batch of %d requests failed", self.name, len(batch))
                for pending in batch:
                    if not pending.future.done():
                        pending.future.set_exception(exc)
                continue
            run_ns = time.perf_counter_ns() - start
            items = sum(p.size for p in batch)
            if self.on_batch is not None:
                self.on_batch(items, start - batch[0].enqueued_ns, run_ns)
            for pending, result in zip(batch, results, strict=True):
                if not pending.future.done():
                    stats = BatchStats(start - pending.enqueued_ns, run_ns, items)
                    pending.future.set_result((result, stats))
