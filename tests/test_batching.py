"""Dynamic batching: the DynamicBatcher alone, then the encoder and reranker under concurrency."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Coroutine, Iterator, Sequence
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import pytest
from servers import embedded, server_settings

from neuralir.client import AsyncNeuralIRClient
from neuralir.models.cross_encoder import CrossEncoder
from neuralir.models.encoder import Encoder
from neuralir.server.batching import BatchingSettings, BatchStats, DynamicBatcher, split_request
from neuralir.server.embedded import EmbeddedServer
from neuralir.server.errors import NotReady, Overloaded

T = TypeVar("T")


def run(coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(asyncio.wait_for(coro, timeout=60))


class Recorder:
    """A batch function that doubles numbers (or sums lists) and records every batch it ran.

    Runs on the batcher's model thread; `hold()` makes it block until `release()`.
    """

    def __init__(self, fail_on: object = None) -> None:
        self.batches: list[list[Any]] = []
        self.fail_on = fail_on
        self.started = threading.Event()
        self._gate = threading.Event()
        self._gate.set()

    def hold(self) -> None:
        self._gate.clear()

    def release(self) -> None:
        self._gate.set()

    def __call__(self, items: list[Any]) -> list[Any]:
        self.batches.append(list(items))
        self.started.set()
        self._gate.wait(30)
        if self.fail_on is not None and self.fail_on in items:
            raise ValueError(f"cannot process {self.fail_on!r}")
        return [sum(item) if isinstance(item, list) else item * 2 for item in items]


def _size(item: Any) -> int:
    return len(item) if isinstance(item, list) else 1


def make_batcher(
    recorder: Recorder, size: Callable[[Any], int] = _size, **settings: Any
) -> DynamicBatcher[Any, Any]:
    values = {"max_batch_items": 64, "max_wait_us": 20_000, "max_queue_items": 1000} | settings
    batcher: DynamicBatcher[Any, Any] = DynamicBatcher(
        "test", recorder, size, BatchingSettings(**values)
    )
    batcher.start()
    return batcher


async def _started(recorder: Recorder) -> None:
    """Waits (without blocking the loop) until the batch function has been entered."""
    assert await asyncio.to_thread(recorder.started.wait, 30)


async def _submit_all(batcher: DynamicBatcher[Any, Any], items: Sequence[Any]) -> list[Any]:
    return list(await asyncio.gather(*(batcher.submit(item) for item in items)))


# ---------------------------------------------------------------- DynamicBatcher alone


def test_concurrent_requests_share_one_batch_and_get_their_own_results() -> None:
    recorder = Recorder()

    async def scenario() -> list[tuple[int, BatchStats]]:
        batcher = make_batcher(recorder)
        try:
            return await _submit_all(batcher, list(range(10)))
        finally:
            await batcher.stop()

    results = run(scenario())
    assert [value for value, _ in results] == [2 * i for i in range(10)]
    assert recorder.batches == [list(range(10))]
    assert all(stats.batch_items == 10 for _, stats in results)
    assert all(stats.queue_ns >= 0 and stats.run_ns > 0 for _, stats in results)


def test_batches_respect_max_batch_items() -> None:
    recorder = Recorder()
    items = [[i, i, i] for i in range(10)]  # 3 items each

    async def scenario() -> list[tuple[int, BatchStats]]:
        batcher = make_batcher(recorder, max_batch_items=7)
        try:
            return await _submit_all(batcher, items)
        finally:
            await batcher.stop()

    results = run(scenario())
    assert [value for value, _ in results] == [3 * i for i in range(10)]
    sizes = [sum(len(item) for item in batch) for batch in recorder.batches]
    assert max(sizes) <= 7
    assert sum(sizes) == 30
    # order is kept across batches: first come, first served
    assert [item for batch in recorder.batches for item in batch] == items


def test_a_request_larger_than_the_batch_runs_alone() -> None:
    recorder = Recorder()
    big = list(range(20))

    async def scenario() -> list[tuple[int, BatchStats]]:
        batcher = make_batcher(recorder, max_batch_items=8)
        try:
            return await _submit_all(batcher, [[1], big, [2]])
        finally:
            await batcher.stop()

    results = run(scenario())
    assert [value for value, _ in results] == [1, sum(big), 2]
    assert [big] in recorder.batches
    assert results[1][1].batch_items == 20


def test_disabled_batching_runs_one_request_per_call() -> None:
    recorder = Recorder()

    async def scenario() -> list[tuple[int, BatchStats]]:
        batcher = make_batcher(recorder, enabled=False)
        try:
            return await _submit_all(batcher, [1, 2, 3, 4])
        finally:
            await batcher.stop()

    results = run(scenario())
    assert [value for value, _ in results] == [2, 4, 6, 8]
    assert recorder.batches == [[1], [2], [3], [4]]
    assert all(stats.batch_items == 1 for _, stats in results)


def test_full_queue_sheds_at_once() -> None:
    recorder = Recorder()

    async def scenario() -> tuple[list[Any], int]:
        batcher = make_batcher(recorder, max_queue_items=5, max_wait_us=0)
        recorder.hold()
        try:
            running = asyncio.ensure_future(batcher.submit(100))
            await _started(recorder)  # the worker is busy with 100; the queue is empty
            queued = [asyncio.ensure_future(batcher.submit(i)) for i in range(5)]
            await asyncio.sleep(0)
            assert batcher.queued_items == 5
            # refused at once: were it queued, it would wait for the held batch forever
            with pytest.raises(Overloaded, match="queue is full"):
                await batcher.submit(99)
            with pytest.raises(Overloaded):
                await batcher.submit([1, 2])  # also too big for what is left
            assert batcher.shed_total == 2
            recorder.release()
            results = await asyncio.gather(running, *queued)
            return results, batcher.queued_items
        finally:
            recorder.release()
            await batcher.stop()

    results, left = run(scenario())
    assert [value for value, _ in results] == [200, 0, 2, 4, 6, 8]
    assert left == 0
    assert 99 not in [item for batch in recorder.batches for item in batch]


def test_cancelled_callers_are_skipped() -> None:
    recorder = Recorder()

    async def scenario() -> list[Any]:
        batcher = make_batcher(recorder, max_wait_us=0)
        recorder.hold()
        try:
            first = asyncio.ensure_future(batcher.submit(1))
            await _started(recorder)
            waiting = {i: asyncio.ensure_future(batcher.submit(i)) for i in (2, 3, 4)}
            await asyncio.sleep(0)
            waiting[3].cancel()  # the caller gave up (deadline, disconnect)
            recorder.release()
            results = await asyncio.gather(first, waiting[2], waiting[4])
            assert waiting[3].cancelled()
            assert batcher.queued_items == 0
            return list(results)
        finally:
            recorder.release()
            await batcher.stop()

    results = run(scenario())
    assert [value for value, _ in results] == [2, 4, 8]
    assert [item for batch in recorder.batches for item in batch] == [1, 2, 4]


def test_a_failing_batch_fails_its_callers_and_the_worker_lives_on() -> None:
    recorder = Recorder(fail_on=13)

    async def scenario() -> tuple[list[Any], list[Any]]:
        batcher = make_batcher(recorder)
        try:
            failed = await asyncio.gather(
                *(batcher.submit(i) for i in (11, 12, 13)), return_exceptions=True
            )
            after = await _submit_all(batcher, [5, 6])
            return failed, after
        finally:
            await batcher.stop()

    failed, after = run(scenario())
    assert recorder.batches[0] == [11, 12, 13]
    assert all(isinstance(e, ValueError) and "13" in str(e) for e in failed)
    assert [value for value, _ in after] == [10, 12]


def test_submit_before_start_and_after_stop_is_refused() -> None:
    recorder = Recorder()

    async def scenario() -> None:
        batcher: DynamicBatcher[Any, Any] = DynamicBatcher(
            "test", recorder, _size, BatchingSettings()
        )
        with pytest.raises(NotReady):
            await batcher.submit(1)
        batcher.start()
        assert (await batcher.submit(1))[0] == 2
        await batcher.stop()
        with pytest.raises(NotReady):
            await batcher.submit(1)

    run(scenario())


def test_stop_fails_running_and_queued_callers() -> None:
    """On stop, callers whose batch is running and callers still queued are told at once."""
    recorder = Recorder()

    async def scenario() -> list[Any]:
        batcher = make_batcher(recorder, max_wait_us=0)
        recorder.hold()
        running = asyncio.ensure_future(batcher.submit(1))
        await _started(recorder)
        queued = asyncio.ensure_future(batcher.submit(2))
        await asyncio.sleep(0)
        # stop() waits for the model thread; let the held batch end a little later.
        threading.Timer(0.2, recorder.release).start()
        await batcher.stop()
        return list(await asyncio.gather(running, queued, return_exceptions=True))

    outcomes = run(scenario())
    assert [type(o) for o in outcomes] == [NotReady, NotReady], outcomes
    assert recorder.batches == [[1]]


# ---------------------------------------------------------------- through gRPC, concurrently

TEXTS = [
    f"{subject} {aspect}"
    for subject in ("library catalogues", "boundary layers", "aspirin trials", "json parsing")
    for aspect in (
        "history",
        "evaluation methods and measures",
        "in practice",
        "for beginners",
        "recent results of large studies over many years",
        "costs",
        "open problems",
        "tools",
    )
]


@pytest.fixture(scope="module")
def fp32_stages(
    fp32_bi_encoder_dir: Path,
    fp32_cross_encoder_dir: Path,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[EmbeddedServer]:
    """Encoder and reranker with fp32 models (batching changes nothing in fp32, so batched
    results must equal unbatched ones to float precision) and a 5 ms batching window."""
    settings = server_settings(
        fp32_bi_encoder_dir,
        [("default", fp32_cross_encoder_dir)],
        tmp_path_factory.mktemp("unused-index"),
        services=("encoder", "rerank"),
        encoder_batching=BatchingSettings(max_batch_items=64, max_wait_us=5000),
        rerank_batching=BatchingSettings(max_batch_items=128, max_wait_us=5000),
    )
    with embedded(settings) as server:
        yield server


async def _encode_concurrently(address: str, texts: Sequence[str]) -> list[Any]:
    async with AsyncNeuralIRClient(target=address, max_attempts=1, timeout_s=60) as client:
        return list(await asyncio.gather(*(client.encode([t]) for t in texts)))


def test_concurrent_encodes_get_their_own_embeddings(
    fp32_stages: EmbeddedServer, fp32_bi_encoder_dir: Path
) -> None:
    assert len(TEXTS) == 32
    results = run(_encode_concurrently(fp32_stages.address, TEXTS))
    reference = Encoder(fp32_bi_encoder_dir)
    for text, result in zip(TEXTS, results, strict=True):
        assert result.embeddings.shape == (1, 384)
        np.testing.assert_allclose(result.embeddings[0], reference.encode([text])[0], atol=1e-5)
    sizes = [r.timing.batch_size for r in results]
    assert max(sizes) > 1, f"no batch formed: {sizes}"
    assert sum(1 for s in sizes if s > 1) >= len(TEXTS) // 2


def test_concurrent_encodes_on_the_int8_server(
    all_in_one: EmbeddedServer, encoder_int8: Encoder
) -> None:
    """The served int8 model: batch neighbours move embeddings a little (run-time activation
    quantization), but each caller still gets the embedding of its own text."""
    results = run(_encode_concurrently(all_in_one.address, TEXTS))
    got = np.concatenate([r.embeddings for r in results])
    alone = np.stack([encoder_int8.encode([t])[0] for t in TEXTS])
    assert (got * alone).sum(axis=1).min() > 0.97
    assert list((got @ alone.T).argmax(axis=1)) == list(range(len(TEXTS)))
    assert max(r.timing.batch_size for r in results) > 1


@pytest.fixture(scope="module")
def encoder_int8(bi_encoder_dir: Path) -> Encoder:
    return Encoder(bi_encoder_dir)


RERANK_QUERIES = [
    "how are library catalogues evaluated",
    "aspirin and heart attacks",
    "parsing json documents",
    "boundary layer transition",
    "history of information retrieval",
    "costs of clinical trials",
    "open problems in fluid dynamics",
    "tools for text processing",
]


def test_concurrent_reranks_get_their_own_scores(
    fp32_stages: EmbeddedServer, fp32_cross_encoder_dir: Path
) -> None:
    requests = [
        (query, [(f"p{j}", TEXTS[(i * 3 + j) % len(TEXTS)]) for j in range(2 + i % 3)])
        for i, query in enumerate(RERANK_QUERIES * 2)
    ]

    async def scenario() -> list[Any]:
        address = fp32_stages.address
        async with AsyncNeuralIRClient(target=address, max_attempts=1, timeout_s=60) as client:
            return list(await asyncio.gather(*(client.rerank(q, ps) for q, ps in requests)))

    results = run(scenario())
    reference = CrossEncoder(fp32_cross_encoder_dir)
    for (query, passages), result in zip(requests, results, strict=True):
        expected = reference.score(query, [text for _, text in passages])
        by_id = {p.id: p.cross_encoder_score for p in result.passages}
        assert sorted(by_id) == sorted(pid for pid, _ in passages)
        got = np.array([by_id[pid] for pid, _ in passages])
        np.testing.assert_allclose(got, expected, atol=1e-4)
        assert [p.id for p in result.passages] == [
            passages[i][0] for i in np.argsort(-expected, kind="stable")
        ]
    sizes = [r.timing.batch_size for r in results]
    own = [len(ps) for _, ps in requests]
    assert all(size >= n for size, n in zip(sizes, own, strict=True))
    assert any(size > n for size, n in zip(sizes, own, strict=True)), f"no batch formed: {sizes}"


# ---------------------------------------------------------------- chunked requests


def test_split_request_keeps_items_and_tokens_under_the_limits() -> None:
    settings = BatchingSettings(max_batch_items=4, max_batch_tokens=100)
    costs = [10, 10, 10, 10, 10, 40, 40, 200, 5]
    chunks = split_request(costs, settings)
    assert [(s, e) for s, e, _ in chunks] == [(0, 4), (4, 6), (6, 7), (7, 8), (8, 9)]
    for start, end, tokens in chunks:
        assert tokens == max(costs[start:end]) * (end - start)
        assert end - start <= 4
        assert tokens <= 100 or end - start == 1  # one item over the budget runs alone


def test_chunks_of_callers_interleave_round_robin() -> None:
    """A small request waits for at most one chunk of a big one, not for all of it."""
    recorder = Recorder()

    async def scenario() -> tuple[Any, Any]:
        batcher = make_batcher(recorder, max_batch_items=4, max_wait_us=0)
        recorder.hold()
        try:
            big = asyncio.ensure_future(batcher.submit_chunks([[1] * 4] * 10))
            await _started(recorder)  # chunk 1 of 10 runs
            small = asyncio.ensure_future(batcher.submit_chunks([[7, 7]]))
            await asyncio.sleep(0)
            recorder.release()
            return await big, await small
        finally:
            recorder.release()
            await batcher.stop()

    (big_results, big_stats), (small_results, small_stats) = run(scenario())
    assert big_results == [4] * 10
    assert small_results == [14]
    assert (big_stats.chunks, small_stats.chunks) == (10, 1)
    assert recorder.batches[1] == [[7, 7]], recorder.batches[:3]  # right after the running one


def test_a_request_stops_between_chunks_when_cancelled_or_past_its_deadline() -> None:
    recorder = Recorder()

    async def scenario() -> None:
        batcher = make_batcher(recorder, max_batch_items=1, max_wait_us=0)
        recorder.hold()
        try:
            cancelled = asyncio.ensure_future(batcher.submit_chunks([1, 2, 3, 4]))
            await _started(recorder)
            cancelled.cancel()
            recorder.release()
            await asyncio.gather(cancelled, return_exceptions=True)
            expired = batcher.submit_chunks([10, 20, 30], timeout_s=0.05)
            recorder.hold()
            task = asyncio.ensure_future(expired)
            await asyncio.sleep(0.01)
            await asyncio.sleep(0.1)  # the deadline passes while chunk 10 runs
            recorder.release()
            with pytest.raises(TimeoutError):
                await task
            for _ in range(50):
                if not batcher.busy:
                    break
                await asyncio.sleep(0.01)
            assert (batcher.busy, batcher.queued_items) == (False, 0)
            assert (batcher.cancelled_total, batcher.expired_total) == (2, 1)
        finally:
            recorder.release()
            await batcher.stop()

    run(scenario())
    ran = [item for batch in recorder.batches for item in batch]
    assert ran[0] == 1
    assert ran[-1] == 10  # running when its deadline passed
    assert not {4, 20, 30} & set(ran)


@pytest.fixture(scope="module")
def fp32_chunking(
    fp32_bi_encoder_dir: Path,
    fp32_cross_encoder_dir: Path,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[EmbeddedServer]:
    """fp32 models with tiny batch limits: every request below is cut into many chunks."""
    settings = server_settings(
        fp32_bi_encoder_dir,
        [("default", fp32_cross_encoder_dir)],
        tmp_path_factory.mktemp("unused-index"),
        services=("encoder", "rerank"),
        encoder_batching=BatchingSettings(max_batch_items=3, max_batch_tokens=64),
        rerank_batching=BatchingSettings(max_batch_items=3, max_batch_tokens=200),
    )
    with embedded(settings) as server:
        yield server


def test_chunked_results_equal_unchunked_ones(
    fp32_chunking: EmbeddedServer, fp32_bi_encoder_dir: Path, fp32_cross_encoder_dir: Path
) -> None:
    texts = [t * (1 + i % 4) for i, t in enumerate(TEXTS)]  # 32 texts of mixed length

    async def scenario() -> tuple[Any, Any]:
        address = fp32_chunking.address
        async with AsyncNeuralIRClient(target=address, max_attempts=1, timeout_s=60) as client:
            encoded = await client.encode(texts, kind="passage")
            passages = [(f"p{i}", text) for i, text in enumerate(texts)]
            return encoded, await client.rerank(RERANK_QUERIES[0], passages)

    encoded, reranked = run(scenario())
    assert encoded.timing.batch_size <= 3
    np.testing.assert_allclose(
        encoded.embeddings, Encoder(fp32_bi_encoder_dir).encode(texts, "passage"), atol=1e-5
    )
    expected = CrossEncoder(fp32_cross_encoder_dir).score(RERANK_QUERIES[0], texts)
    by_id = {p.id: p.cross_encoder_score for p in reranked.passages}
    got = np.array([by_id[f"p{i}"] for i in range(len(texts))])
    np.testing.assert_allclose(got, expected, atol=1e-4)
