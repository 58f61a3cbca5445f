"""SyncQueue on both backends: the blocking twin of Queue, used from plain threads."""

from __future__ import annotations

import asyncio
import inspect
import signal
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from podkit.errors import ConfigError, LeaseLost, PodkitTimeout, UsageError
from podkit.queue import (
    Item,
    ItemState,
    PutRequest,
    Queue,
    RetryPolicy,
    SyncQueue,
    open_sync_queue,
)
from podkit.testing.net import wait_for

from .conftest import ManualClock

FAST_RETRY = RetryPolicy(base=0.0, jitter=0.0)


def queue_threads() -> list[threading.Thread]:
    """Threads a SyncQueue starts: its loop, the SQLite store's and handler threads."""
    prefixes = ("podkit-sync-queue", "podkit-sqlite", "podkit-queue-handler")
    return [t for t in threading.enumerate() if t.name.startswith(prefixes)]


def test_every_public_queue_method_has_a_blocking_twin_with_its_signature() -> None:
    methods = [
        name
        for name, fn in inspect.getmembers(Queue, inspect.iscoroutinefunction)
        if not name.startswith("_") and name != "aclose"
    ]
    assert {"put", "put_many", "lease", "ack", "nack", "extend", "stats", "dead"} <= set(methods)
    for name in methods:
        twin = getattr(SyncQueue, name)
        assert not inspect.iscoroutinefunction(twin), name
        assert inspect.signature(twin) == inspect.signature(getattr(Queue, name)), name
    assert callable(SyncQueue.close)


def test_put_lease_ack_round_trip(queue_url: str) -> None:
    with SyncQueue(queue_url, "jobs") as q:
        first = q.put({"image": "a.png"}, key="a")
        assert first.created
        assert q.put({"image": "a.png"}, key="a") == type(first)(first.id, False)
        q.put_many([b"raw", PutRequest("x", priority=1)])
        items = q.lease(10, visibility_timeout=30)
        assert [i.value for i in items] == ["x", {"image": "a.png"}, b"raw"]
        assert all(isinstance(i, Item) for i in items)
        assert q.ack(items[0]) is True
        assert q.ack(items[0]) is False  # already done
        assert q.ack_many([i.receipt for i in items[1:]]) == [True, True]
        stats = q.stats()
        assert (stats.ready, stats.leased, stats.ack_total) == (0, 0, 3)
        assert q.lease() == []


def test_priorities_and_delays_behave_as_in_the_async_api(
    queue_url: str, clock: ManualClock
) -> None:
    with open_sync_queue(queue_url, "jobs", clock=clock) as q:
        q.put("low", priority=-5)
        q.put("later", priority=100, delay=60)
        q.put("high", priority=5)
        q.put("normal")
        assert [i.value for i in q.lease(10, 600)] == ["high", "normal", "low"]
        assert q.stats().delayed == 1
        clock.advance(61)
        (later,) = q.lease(10)
        assert later.value == "later"
        receipt = q.extend(later, 120)
        assert receipt.deadline == clock() + 120
        assert q.extend_many([receipt], 10) == [True]


def test_a_failed_item_is_leased_again_then_dead_lettered(
    queue_url: str, clock: ManualClock
) -> None:
    with SyncQueue(queue_url, "jobs", clock=clock, retry=FAST_RETRY) as q:
        q.put("job", max_attempts=2)
        (first,) = q.lease()
        assert q.nack(first, error="boom") is ItemState.FAILED
        assert q.nack(first) is None  # a stale receipt
        (second,) = q.lease()
        assert (second.id, second.attempt) == (first.id, 2)
        assert q.nack(second, error="boom again") is ItemState.DEAD
        (dead,) = q.dead()
        assert (dead.id, dead.value, dead.error) == (first.id, "job", "boom again")
        assert q.retry_dead() == 1
        (third,) = q.lease()
        assert third.attempt == 1
        q.purge()
        assert q.stats().ready == 0


def test_many_threads_share_one_queue_and_every_item_is_delivered_once(queue_url: str) -> None:
    threads, per_thread = 8, 200
    with SyncQueue(queue_url, "jobs") as q:

        def produce(t: int) -> None:
            for i in range(per_thread):
                q.put(f"{t}-{i}")

        with ThreadPoolExecutor(threads) as pool:
            list(pool.map(produce, range(threads)))
        assert q.stats().ready == threads * per_thread

        def consume(_: int) -> list[str]:
            got: list[str] = []
            while items := q.lease(25):
                got += [item.value for item in items]
                assert q.ack_many(items) == [True] * len(items)
            return got

        with ThreadPoolExecutor(threads) as pool:
            delivered = [v for got in pool.map(consume, range(threads)) for v in got]
        expected = [f"{t}-{i}" for t in range(threads) for i in range(per_thread)]
        assert sorted(delivered) == sorted(expected)  # all of them, none twice
        stats = q.stats()
        assert (stats.ready, stats.leased, stats.ack_total) == (0, 0, threads * per_thread)


def test_close_is_idempotent_and_leaves_no_thread(queue_url: str) -> None:
    assert queue_threads() == []
    q = SyncQueue(queue_url, "jobs")
    q.put("x")
    assert [t.name for t in queue_threads() if t.name == "podkit-sync-queue"]
    q.close()
    q.close()
    assert q.closed
    wait_for(lambda: queue_threads() == [], timeout=5, what="queue threads to end")
    with pytest.raises(UsageError, match="closed"):
        q.put("y")


def test_an_invalid_url_raises_config_error_and_leaves_no_thread(tmp_path: Path) -> None:
    with pytest.raises(ConfigError):
        SyncQueue("nosuch://x", "jobs")
    with pytest.raises(ConfigError):
        SyncQueue(f"sqlite:///{tmp_path}/q.db", "bad name!")
    wait_for(lambda: queue_threads() == [], timeout=5, what="queue threads to end")


async def test_using_it_inside_a_running_event_loop_is_refused(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/q.db"
    with pytest.raises(UsageError, match=r"event loop.*use the async podkit\.queue\.Queue"):
        SyncQueue(url, "jobs")
    q = await asyncio.to_thread(SyncQueue, url, "jobs")  # opened outside the loop's thread
    try:
        with pytest.raises(UsageError, match=r"await queue\.put\(\.\.\.\)"):
            q.put("x")
        with pytest.raises(UsageError, match="event loop"):
            q.close()
        assert await asyncio.to_thread(q.stats) is not None  # other threads may use it
    finally:
        await asyncio.to_thread(q.close)


def test_exceptions_keep_their_original_type(queue_url: str) -> None:
    with SyncQueue(queue_url, "jobs") as q:
        with pytest.raises(UsageError, match="priority must be between"):
            q.put("x", priority=5000)
        with pytest.raises(UsageError, match="JSON"):
            q.put(object())
        with pytest.raises(UsageError, match="lease between"):
            q.lease(0)
        q.put("x")
        (item,) = q.lease(visibility_timeout=30)
        q.ack(item)
        with pytest.raises(LeaseLost) as caught:
            q.extend(item, 10)
        assert type(caught.value) is LeaseLost


def test_a_call_longer_than_the_timeout_raises_and_the_queue_still_closes(
    tmp_path: Path,
) -> None:
    release = threading.Event()
    blocked = threading.Event()

    def clock() -> float:
        if blocked.is_set():
            release.wait(10)
        return 1_700_000_000.0

    with pytest.raises(UsageError, match="timeout must be positive"):
        SyncQueue(f"sqlite:///{tmp_path}/q.db", "jobs", timeout=0)
    q = SyncQueue(f"sqlite:///{tmp_path}/q.db", "jobs", clock=clock, timeout=0.2)
    try:
        blocked.set()
        with pytest.raises(PodkitTimeout, match=r"put\(\) took longer than 0.2s"):
            q.put("x")
        blocked.clear()
        release.set()
        q.timeout = 10
        assert q.put("y").created
    finally:
        release.set()
        q.close()
    wait_for(lambda: queue_threads() == [], timeout=5, what="queue threads to end")


def test_work_runs_a_plain_function_per_item_retrying_failures(queue_url: str) -> None:
    seen: list[tuple[int, int]] = []
    lock = threading.Lock()

    def handler(item: Item) -> None:
        with lock:
            seen.append((item.value, item.attempt))
        if item.value % 3 == 0 and item.attempt == 1:
            raise ValueError("first try fails")

    stop = threading.Event()
    with SyncQueue(queue_url, "jobs", retry=FAST_RETRY) as q:
        q.put_many(range(10))
        with ThreadPoolExecutor(1) as pool:
            working = pool.submit(q.work, handler, concurrency=4, stop=stop)
            q.put_many(range(10, 20))  # other threads may use the queue meanwhile
            wait_for(lambda: q.stats().ack_total == 20, timeout=10, what="all items acked")
            stop.set()
            assert working.result(10) == 20
        retried = sorted(v for v, attempt in seen if attempt == 2)
        assert retried == [v for v in range(20) if v % 3 == 0]
        stats = q.stats()
        assert (stats.ready, stats.leased, stats.dead) == (0, 0, 0)
    wait_for(lambda: queue_threads() == [], timeout=5, what="queue threads to end")


def test_closing_the_queue_stops_a_running_work_loop(tmp_path: Path) -> None:
    ran = threading.Event()
    q = SyncQueue(f"sqlite:///{tmp_path}/q.db", "jobs")
    q.put("x")
    with ThreadPoolExecutor(1) as pool:
        working = pool.submit(q.work, lambda item: ran.set())
        assert ran.wait(10)
        q.close()
        with pytest.raises(UsageError, match="closed during the call"):
            working.result(10)
    wait_for(lambda: queue_threads() == [], timeout=5, what="queue threads to end")


def test_work_refuses_invalid_options(tmp_path: Path) -> None:
    with SyncQueue(f"sqlite:///{tmp_path}/q.db", "jobs") as q:
        with pytest.raises(UsageError, match="concurrency"):
            q.work(lambda item: None, concurrency=0)
        with pytest.raises(UsageError, match="prefetch"):
            q.work(lambda item: None, prefetch=-1)


def test_a_handler_may_use_the_queue_and_ctrl_c_drains_the_work_loop(tmp_path: Path) -> None:
    if threading.current_thread() is not threading.main_thread():
        pytest.skip("SIGINT is handled on the main thread")
    done: list[str] = []

    def handler(item: Item) -> None:
        if item.value == "parent":
            q.put("child")  # from a handler thread, while work() runs
        else:
            done.append(item.value)
            # Ctrl-C while the worker waits: the held item is still finished and acked
            signal.pthread_kill(threading.main_thread().ident or 0, signal.SIGINT)

    with SyncQueue(f"sqlite:///{tmp_path}/q.db", "jobs") as q:
        q.put("parent")
        with pytest.raises(KeyboardInterrupt):
            q.work(handler)
        assert done == ["child"]
        stats = q.stats()
        assert (stats.ready, stats.leased, stats.ack_total) == (0, 0, 2)
