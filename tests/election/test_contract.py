"""The lease contract every backend passes: SQLite file, real redis-server, real etcd."""

from __future__ import annotations

import asyncio
import itertools
import json
import random
import signal
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from podkit.backends.leases import LeaseBackend
from podkit.election import Election, Lock, Term
from podkit.testing import ServerProcess
from tests.election.conftest import BackendTarget

TTL = 1.0
TERMS = 12  # handovers to watch in the never-two-leaders test
HOLDER = Path(__file__).with_name("holder_child.py")


async def wait_until(predicate: Any, *, timeout: float, what: str) -> None:
    """Poll a (sync) predicate without blocking the event loop; fail after ``timeout``."""
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out after {timeout}s waiting for {what}"
        await asyncio.sleep(0.02)


def events(process: ServerProcess) -> list[dict[str, Any]]:
    lines = [line for line in process.output().splitlines() if line.startswith("{")]
    return [json.loads(line) for line in lines]


def assert_never_two_leaders(intervals: list[tuple[float, float, int]]) -> None:
    """Belief intervals ``(start, end, token)`` never overlap and tokens rise with time."""
    ordered = sorted(intervals)
    for (_, end, token), (start, _, next_token) in itertools.pairwise(ordered):
        assert end <= start, f"term {token} still led when term {next_token} began"
        assert token < next_token, f"token {next_token} follows {token}"


async def test_a_free_lease_is_granted_and_a_held_one_is_refused(backend: LeaseBackend) -> None:
    first = await backend.acquire("job", identity="alpha", ttl=5.0)
    assert first.grant is not None
    assert first.grant.token > 0
    second = await backend.acquire("job", identity="beta", ttl=5.0)
    assert second.grant is None
    assert second.holder is not None
    assert (second.holder.identity, second.holder.token) == ("alpha", first.grant.token)
    holder = await backend.leader("job")
    assert holder is not None
    assert (holder.identity, holder.token) == ("alpha", first.grant.token)
    assert holder.expires_in is not None
    assert 0 <= holder.expires_in <= 5.0


async def test_fencing_tokens_strictly_increase_with_every_new_holder(
    backend: LeaseBackend,
) -> None:
    tokens = []
    for round_ in range(6):
        result = await backend.acquire("job", identity=f"node-{round_ % 2}", ttl=5.0)
        assert result.grant is not None
        tokens.append(result.grant.token)
        assert await backend.release(result.grant)
    assert tokens == sorted(set(tokens)), tokens
    assert await backend.leader("job") is None


async def test_renew_and_release_never_touch_a_lease_we_do_not_hold(
    backend: LeaseBackend,
) -> None:
    mine = await backend.acquire("job", identity="alpha", ttl=5.0)
    assert mine.grant is not None
    assert await backend.renew(mine.grant, ttl=5.0)
    forged = replace(mine.grant, token=mine.grant.token + 1000)
    assert not await backend.renew(forged, ttl=5.0)
    assert not await backend.release(forged)
    holder = await backend.leader("job")
    assert holder is not None
    assert holder.token == mine.grant.token
    assert await backend.release(mine.grant)
    assert not await backend.release(mine.grant)
    assert not await backend.renew(mine.grant, ttl=5.0)


async def test_an_expired_holder_cannot_renew_or_release_its_successors_lease(
    backend: LeaseBackend,
) -> None:
    old = await backend.acquire("job", identity="alpha", ttl=TTL)
    assert old.grant is not None
    claim = 0
    new_grant = None
    deadline = time.monotonic() + 10
    while new_grant is None:
        assert time.monotonic() < deadline, "the expired lease was never granted again"
        result = await backend.acquire("job", identity="beta", ttl=30.0, claim=claim)
        claim, new_grant = result.claim, result.grant
        if new_grant is None:
            await backend.wait_for_change("job", timeout=0.1)
    assert new_grant.token > old.grant.token
    assert not await backend.renew(old.grant, ttl=30.0)
    assert not await backend.release(old.grant)
    holder = await backend.leader("job")
    assert holder is not None
    assert (holder.identity, holder.token) == ("beta", new_grant.token)


async def test_elections_never_have_two_leaders_while_leadership_changes_hands(
    target: BackendTarget,
) -> None:
    """Three electors take turns (leaving, resigning); their terms never overlap."""
    intervals: list[tuple[float, float, int]] = []
    give_up = time.monotonic() + 30.0
    rng = random.Random(5)

    async def elector(index: int) -> None:
        async with target.open() as backend:
            election = Election(backend, "job", identity=f"node-{index}", ttl=TTL)
            while len(intervals) < TERMS and time.monotonic() < give_up:
                async with election.leadership() as term:
                    start = time.monotonic()
                    await asyncio.sleep(rng.uniform(0.02, 0.15))  # the work of the term
                    # The belief ends here (resign() and leaving the block stop leading
                    # before the lease is released), or at the lease deadline if the event
                    # loop was too busy to renew in time.
                    end = min(time.monotonic(), term.valid_until)
                    intervals.append((start, end, term.fencing_token))
                    if rng.random() < 0.5:
                        await election.resign()
                        assert term.lost.is_set()

    async with asyncio.TaskGroup() as group:
        for index in range(3):
            group.create_task(elector(index))
    assert len(intervals) >= TERMS, intervals
    assert_never_two_leaders(intervals)


async def test_a_holder_frozen_past_its_ttl_finds_out_it_lost(
    target: BackendTarget, backend: LeaseBackend
) -> None:
    """A leader stopped with SIGSTOP longer than its ttl is replaced, and on SIGCONT it sets
    ``lost`` instead of renewing; its belief ended before the successor was granted."""
    argv = [sys.executable, str(HOLDER), target.url, "job", "frozen", str(TTL)]
    with ServerProcess(argv, cwd=Path(__file__).parents[2], name="holder") as child:
        await wait_until(
            lambda: any(e["event"] == "leading" for e in events(child)),
            timeout=20,
            what="the child to lead",
        )
        first = next(e for e in events(child) if e["event"] == "leading")
        child.signal(signal.SIGSTOP)
        try:
            # The successor's own ttl is long: only the frozen holder's expiry is under test.
            election = Election(backend, "job", identity="successor", ttl=5.0)
            async with election.leadership() as term:
                granted_at = time.monotonic()
                assert term.fencing_token > first["token"]
                child.signal(signal.SIGCONT)
                await wait_until(
                    lambda: any(e["event"] == "believes_lost" for e in events(child)),
                    timeout=10,
                    what="the resumed child to notice it lost",
                )
                child_events = events(child)
                holder = await backend.leader("job")
                assert holder is not None
                assert holder.identity == "successor"
        finally:
            child.signal(signal.SIGCONT)
    believed_until = max(e["valid_until"] for e in child_events if "valid_until" in e)
    assert believed_until <= granted_at
    lost = next(e for e in child_events if e["event"] == "lost")
    assert "renew" in lost["reason"] or "someone else" in lost["reason"]


@pytest.mark.parametrize("target", ["redis", "etcd"], indirect=True)  # SQLite has no server
async def test_a_backend_restart_never_yields_two_leaders_and_a_leader_returns(
    target: BackendTarget,
) -> None:
    records: list[list[Any]] = []  # [start, end or None, term]

    async def elector(index: int) -> None:
        async with target.open() as backend:
            election = Election(backend, "job", identity=f"node-{index}", ttl=TTL)
            while True:
                async with election.leadership() as term:
                    record = [time.monotonic(), None, term]
                    records.append(record)
                    await term.wait_lost()
                    record[1] = min(time.monotonic(), term.valid_until)

    def leading() -> list[Term]:
        return [term for _, end, term in records if end is None]

    async with asyncio.TaskGroup() as group:
        tasks = [group.create_task(elector(index)) for index in range(2)]
        await wait_until(lambda: len(leading()) == 1, timeout=20, what="a first leader")
        first_token = leading()[0].fencing_token
        await asyncio.to_thread(target.restart)
        await wait_until(
            lambda: len(leading()) == 1 and not leading()[0].lost.is_set(),
            timeout=30,
            what="a leader after the restart",
        )
        term = leading()[0]
        assert term.fencing_token >= first_token
        async with target.open() as observer:
            holder = await observer.leader("job")
            assert holder is not None
            assert holder.token == term.fencing_token
        now = time.monotonic()
        intervals = [
            (start, end or min(now, term.valid_until), term.fencing_token)
            for start, end, term in records
        ]
        for task in tasks:
            task.cancel()
    assert_never_two_leaders(intervals)


async def test_leader_reports_the_term_while_it_lasts_and_nobody_after(
    backend: LeaseBackend,
) -> None:
    # A long ttl: this test is about reporting, not expiry, and must not race a busy machine.
    election = Election(backend, "job", identity="alpha", ttl=10.0)
    observer = Election(backend, "job", identity="observer", ttl=10.0)
    async with election.leadership() as term:
        holder = await observer.leader()
        assert holder is not None
        assert (holder.identity, holder.token) == ("alpha", term.fencing_token)
        assert election.statistics().role == "leader"
    assert term.lost.is_set()
    assert await observer.leader() is None
    assert observer.statistics().terms == 0


async def test_a_lock_admits_one_holder_at_a_time_with_rising_tokens(
    target: BackendTarget,
) -> None:
    """Three workers take a lock three times each; the holds (each until it ends or its
    lease deadline passes) never overlap and every hold has a larger token."""
    holds: list[tuple[float, float, int]] = []

    async def worker(index: int) -> None:
        async with target.open() as backend:
            lock = Lock(backend, "critical", TTL, identity=f"worker-{index}")
            for _ in range(3):
                async with lock as term:
                    start = time.monotonic()
                    assert lock.fencing_token == term.fencing_token
                    await asyncio.sleep(0.01)  # the critical section's work
                    end = min(time.monotonic(), term.valid_until)
                    holds.append((start, end, lock.fencing_token))

    async with asyncio.TaskGroup() as group:
        for index in range(3):
            group.create_task(worker(index))
    assert len(holds) == 9
    assert_never_two_leaders(holds)
