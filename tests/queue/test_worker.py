"""QueueWorker in-process on both backends: concurrency, prefetch, stop, failures, extension."""

from __future__ import annotations

import asyncio

from podkit.batch.queue.worker import QueueWorker, python_handler
from podkit.queue import Item, Queue, RetryPolicy

FAST_RETRY = RetryPolicy(base=0.0, jitter=0.0)


async def wait_until(predicate: object, timeout: float = 10.0) -> None:
    """Wait for ``predicate()`` on the event loop (the async twin of ``wait_for``)."""
    assert callable(predicate)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not predicate():
        assert loop.time() < deadline, "condition not reached in time"
        await asyncio.sleep(0.01)


async def test_a_worker_runs_concurrency_items_at_once_and_holds_prefetch_more(
    queue_url: str,
) -> None:
    release = asyncio.Event()
    started: list[bytes] = []

    async def handler(item: Item) -> None:
        started.append(item.body)
        await release.wait()

    async with Queue(queue_url, "jobs") as queue:
        await queue.put_many([str(i).encode() for i in range(10)])
        worker = QueueWorker(queue, handler, concurrency=2, prefetch=3, visibility=30)
        stop = asyncio.Event()
        serving = asyncio.create_task(worker.serve(stop))
        try:
            await wait_until(lambda: worker.running == 2 and worker.held == 5)
            stats = await queue.stats()
            assert (stats.leased, stats.ready) == (5, 5)
            stop.set()  # stop taking items: the five held ones are still finished
            release.set()
            await asyncio.wait_for(serving, 10)
        finally:
            stop.set()
            release.set()
            await asyncio.gather(serving, return_exceptions=True)
        assert sorted(started) == [b"0", b"1", b"2", b"3", b"4"]
        stats = await queue.stats()
        assert (stats.ready, stats.leased, stats.ack_total) == (5, 0, 5)
        assert worker.processed == 5


async def test_a_failing_handler_is_retried_until_it_succeeds(queue_url: str) -> None:
    attempts: list[int] = []

    def handler(item: Item) -> None:
        attempts.append(item.attempt)
        if item.attempt < 3:
            raise ValueError("not yet")

    async with Queue(queue_url, "jobs", retry=FAST_RETRY) as queue:
        await queue.put(b"x")
        worker = QueueWorker(queue, python_handler(handler), visibility=30)
        stop = asyncio.Event()
        serving = asyncio.create_task(worker.serve(stop))
        await wait_until(lambda: worker.processed == 1)
        stop.set()
        await serving
        assert attempts == [1, 2, 3]
        assert worker.failed == 2
        assert (await queue.stats()).fail_total == 2


async def test_a_long_item_keeps_its_lease_while_it_runs(queue_url: str) -> None:
    async def handler(item: Item) -> None:
        await asyncio.sleep(2.0)

    async with Queue(queue_url, "jobs") as queue, Queue(queue_url, "jobs") as other:
        await queue.put(b"long")
        worker = QueueWorker(queue, handler, visibility=0.6)
        stop = asyncio.Event()
        serving = asyncio.create_task(worker.serve(stop))
        await wait_until(lambda: worker.running == 1)
        # another client polls through several visibility timeouts and never gets the item
        for _ in range(10):
            assert await other.lease(1, 30) == []
            await asyncio.sleep(0.15)
        stop.set()
        await serving
        assert worker.processed == 1
