"""The contract every queue backend keeps, run against a SQLite file and a real redis-server.

Time is a manual clock passed to the queue, so delays, backoff and lease expiry are tested
exactly and without sleeping.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from podkit.errors import ConfigError, LeaseLost, UsageError
from podkit.queue import ItemState, PutRequest, Queue, RetryPolicy

from .conftest import ManualClock

NO_JITTER = RetryPolicy(base=1.0, factor=2.0, cap=60.0, jitter=0.0)


@pytest.fixture
async def queue(queue_url: str, clock: ManualClock) -> AsyncIterator[Queue]:
    q = Queue(queue_url, "jobs", clock=clock, retry=NO_JITTER, key_ttl=100.0)
    try:
        yield q
    finally:
        await q.aclose()


async def test_a_put_item_is_leased_once_and_gone_after_ack(queue: Queue) -> None:
    put = await queue.put(b"hello")
    assert put.created
    (item,) = await queue.lease(5, 30)
    assert (item.id, item.value, item.attempt, item.encoding) == (put.id, b"hello", 1, "bytes")
    assert await queue.lease(5, 30) == []
    assert await queue.ack(item)
    stats = await queue.stats()
    assert (stats.ready, stats.leased, stats.delayed, stats.dead) == (0, 0, 0, 0)
    assert (stats.put_total, stats.ack_total) == (1, 1)


async def test_json_values_round_trip_and_bytes_stay_bytes(queue: Queue) -> None:
    await queue.put({"a": [1, 2, "x"]})
    await queue.put("text")
    await queue.put(b"\x00\xff")
    values = [item.value for item in await queue.lease(3, 30)]
    assert values == [{"a": [1, 2, "x"]}, "text", b"\x00\xff"]


async def test_unserialisable_values_are_refused_never_pickled(queue: Queue) -> None:
    with pytest.raises(UsageError):
        await queue.put(object())
    with pytest.raises(UsageError):
        await queue.put({1, 2})


async def test_an_expired_lease_is_redelivered_and_the_old_receipt_is_refused(
    queue: Queue, clock: ManualClock
) -> None:
    await queue.put(b"job")
    (first,) = await queue.lease(1, 10)
    clock.advance(9)
    assert await queue.lease(1, 10) == []
    clock.advance(2)
    (second,) = await queue.lease(1, 10)
    assert second.id == first.id
    assert second.attempt == 2
    assert not await queue.ack(first)
    assert await queue.nack(first) is None
    assert await queue.ack(second)


async def test_an_idempotency_key_makes_a_second_put_a_no_op_while_the_first_is_known(
    queue: Queue, clock: ManualClock
) -> None:
    one = await queue.put(b"a", key="k1")
    two = await queue.put(b"b", key="k1")
    assert one.created
    assert not two.created
    assert two.id == one.id
    (item,) = await queue.lease(10, 30)
    assert item.value == b"a"
    await queue.ack(item)
    # acked, but the key is remembered for key_ttl (100 s)
    assert not (await queue.put(b"c", key="k1")).created
    assert await queue.lease(10, 30) == []
    clock.advance(101)
    again = await queue.put(b"d", key="k1")
    assert again.created
    assert again.id != one.id


async def test_keys_in_one_batch_are_deduplicated_too(queue: Queue) -> None:
    results = await queue.put_many(
        [PutRequest(b"x", key="same"), PutRequest(b"y", key="same"), PutRequest(b"z")]
    )
    assert [r.created for r in results] == [True, False, True]
    assert (await queue.stats()).ready == 2


async def test_a_delayed_item_is_invisible_until_its_time(queue: Queue, clock: ManualClock) -> None:
    await queue.put(b"later", delay=10)
    assert await queue.lease(1, 30) == []
    stats = await queue.stats()
    assert (stats.ready, stats.delayed) == (0, 1)
    clock.advance(10)
    assert (await queue.stats()).ready == 1
    (item,) = await queue.lease(1, 30)
    assert item.value == b"later"


async def test_higher_priority_is_leased_first_then_oldest_first(
    queue: Queue, clock: ManualClock
) -> None:
    for value, priority in [(b"a", 0), (b"b", 5), (b"c", 0), (b"d", -1), (b"e", 5)]:
        await queue.put(value, priority=priority)
        clock.advance(0.001)
    order = [item.value for item in await queue.lease(10, 30)]
    assert order == [b"b", b"e", b"a", b"c", b"d"]


async def test_a_failed_item_is_retried_after_exponential_backoff(
    queue: Queue, clock: ManualClock
) -> None:
    await queue.put(b"flaky", max_attempts=5)
    (item,) = await queue.lease(1, 30)
    assert await queue.nack(item, error="boom") is ItemState.FAILED
    assert (await queue.stats()).delayed == 1
    clock.advance(0.9)
    assert await queue.lease(1, 30) == []
    clock.advance(0.2)  # base 1 s after the first failure
    (item,) = await queue.lease(1, 30)
    assert item.attempt == 2
    await queue.nack(item)
    clock.advance(1.9)
    assert await queue.lease(1, 30) == []
    clock.advance(0.2)  # 2 s after the second failure
    (item,) = await queue.lease(1, 30)
    assert item.attempt == 3
    stats = await queue.stats()
    assert stats.fail_total == 2


async def test_jitter_shortens_the_backoff_by_at_most_its_fraction(
    queue_url: str, clock: ManualClock
) -> None:
    policy = RetryPolicy(base=10.0, factor=2.0, cap=60.0, jitter=0.5)
    async with Queue(queue_url, "jit", clock=clock, retry=policy, rand=lambda: 0.999) as q:
        await q.put(b"x")
        (item,) = await q.lease(1, 30)
        await q.nack(item)
        clock.advance(5.0)  # 10 s * (1 - 0.5 * 0.999) = 5.005 s
        assert await q.lease(1, 30) == []
        clock.advance(0.01)
        assert len(await q.lease(1, 30)) == 1


async def test_nack_with_an_explicit_delay_overrides_the_backoff(
    queue: Queue, clock: ManualClock
) -> None:
    await queue.put(b"x")
    (item,) = await queue.lease(1, 30)
    await queue.nack(item, delay=0)
    (again,) = await queue.lease(1, 30)
    assert again.attempt == 2


async def test_an_item_out_of_attempts_is_dead_lettered_and_can_be_requeued(
    queue: Queue, clock: ManualClock
) -> None:
    put = await queue.put({"n": 1}, max_attempts=2)
    (item,) = await queue.lease(1, 30)
    assert await queue.nack(item, delay=0, error="first") is ItemState.FAILED
    (item,) = await queue.lease(1, 30)
    assert await queue.nack(item, error="second failure") is ItemState.DEAD
    clock.advance(1000)
    assert await queue.lease(1, 30) == []
    (dead,) = await queue.dead()
    assert (dead.id, dead.value, dead.attempts) == (put.id, {"n": 1}, 2)
    assert dead.error == "second failure"
    stats = await queue.stats()
    assert (stats.dead, stats.dead_total) == (1, 1)
    assert await queue.retry_dead() == 1
    (item,) = await queue.lease(1, 30)
    assert (item.id, item.attempt) == (put.id, 1)
    assert await queue.dead() == []


async def test_an_expired_lease_out_of_attempts_is_dead_lettered(
    queue: Queue, clock: ManualClock
) -> None:
    await queue.put(b"poison", max_attempts=1)
    await queue.lease(1, 5)
    clock.advance(6)
    assert await queue.lease(1, 5) == []
    (dead,) = await queue.dead()
    assert dead.error == "lease expired"


async def test_retry_dead_by_id_requeues_only_those(queue: Queue) -> None:
    ids = [(await queue.put(v, max_attempts=1)).id for v in (b"1", b"2")]
    for item in await queue.lease(2, 30):
        await queue.nack(item)
    assert await queue.retry_dead([ids[1], "missing"]) == 1
    (item,) = await queue.lease(5, 30)
    assert item.id == ids[1]


async def test_extend_keeps_a_lease_and_a_lost_lease_cannot_be_extended(
    queue: Queue, clock: ManualClock
) -> None:
    await queue.put(b"long")
    (item,) = await queue.lease(1, 10)
    clock.advance(8)
    receipt = await queue.extend(item, 10)
    assert receipt.deadline == clock.now + 10
    clock.advance(5)  # past the first deadline, within the extended one
    assert await queue.lease(1, 10) == []
    clock.advance(6)  # past the extended deadline
    (again,) = await queue.lease(1, 10)
    with pytest.raises(LeaseLost):
        await queue.extend(receipt, 10)
    assert await queue.extend_many([receipt, again.receipt], 10) == [False, True]


async def test_concurrent_leasers_never_get_the_same_item(queue_url: str) -> None:
    """Eight clients with their own connections race to lease 300 items."""
    async with Queue(queue_url, "race") as producer:
        await producer.put_many([f"item-{i}".encode() for i in range(300)])
    clients = [Queue(queue_url, "race") for _ in range(8)]
    seen: list[str] = []

    async def drain(q: Queue) -> None:
        while items := await q.lease(7, 30):
            seen.extend(item.id for item in items)
            await asyncio.sleep(0)

    try:
        await asyncio.gather(*(drain(q) for q in clients))
    finally:
        for q in clients:
            await q.aclose()
    assert len(seen) == 300
    assert len(set(seen)) == 300


async def test_stats_report_counts_and_rates(queue: Queue, clock: ManualClock) -> None:
    await queue.put_many([b"1", b"2", b"3"])
    await queue.put(b"later", delay=60)
    items = await queue.lease(2, 30)
    await queue.ack(items[0])
    clock.advance(10)  # the counters' bucket is now complete and inside the rate window
    stats = await queue.stats()
    assert (stats.ready, stats.delayed, stats.leased, stats.dead) == (1, 1, 1, 0)
    assert stats.put_rate == pytest.approx(4 / 60)
    assert stats.ack_rate == pytest.approx(1 / 60)


async def test_queues_with_different_names_are_separate(queue_url: str) -> None:
    async with Queue(queue_url, "a") as a, Queue(queue_url, "b") as b:
        await a.put(b"for-a")
        assert await b.lease(1, 30) == []
        await b.purge()
        assert len(await a.lease(1, 30)) == 1
        await a.purge()
        assert (await a.stats()).leased == 0


async def test_bad_options_are_refused_with_a_clear_error(queue: Queue, queue_url: str) -> None:
    with pytest.raises(UsageError, match="priority"):
        await queue.put(b"x", priority=5000)
    with pytest.raises(UsageError, match="max_attempts"):
        await queue.put(b"x", max_attempts=0)
    with pytest.raises(UsageError, match="larger than the limit"):
        await queue.put(b"x" * (queue.max_item_bytes + 1))
    with pytest.raises(UsageError):
        await queue.lease(0, 30)
    with pytest.raises(ConfigError, match="queue name"):
        Queue(queue_url, "no spaces")
    with pytest.raises(ConfigError, match="unknown queue URL"):
        Queue("ftp://x", "q")


LEASER = """
import asyncio, os, sys
from podkit.queue import Queue

async def main():
    async with Queue(sys.argv[1], "procs") as q:
        print("ready", flush=True)
        for _ in range(3000):  # start together: wait for the go file
            if os.path.exists(sys.argv[2]):
                break
            await asyncio.sleep(0.01)
        while items := await q.lease(5, 60):
            for item in items:
                print(item.id, flush=True)
            await q.ack_many(items)

asyncio.run(main())
"""


async def test_leasing_processes_never_get_the_same_item(queue_url: str, tmp_path: Path) -> None:
    """Four processes, each with its own connection, drain 400 items at once; none twice."""
    go = tmp_path / "go"
    async with Queue(queue_url, "procs") as producer:
        await producer.put_many([f"{i}".encode() for i in range(400)])
    procs = [
        await asyncio.create_subprocess_exec(
            sys.executable, "-c", LEASER, queue_url, str(go), stdout=asyncio.subprocess.PIPE
        )
        for _ in range(4)
    ]
    for proc in procs:
        assert proc.stdout is not None
        assert await asyncio.wait_for(proc.stdout.readline(), 30) == b"ready\n"
    go.touch()
    outputs = await asyncio.wait_for(asyncio.gather(*(p.communicate() for p in procs)), 60)
    assert [p.returncode for p in procs] == [0, 0, 0, 0]
    ids = [line for out, _ in outputs for line in out.decode().split()]
    assert len(ids) == 400
    assert len(set(ids)) == 400
    assert sum(1 for out, _ in outputs if out.strip()) >= 2, "the processes did not overlap"
    async with Queue(queue_url, "procs") as q:
        assert (await q.stats()).ack_total == 400
