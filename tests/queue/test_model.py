"""Random sequences of queue operations against a plain model, on both backends.

Hypothesis drives put, lease, ack, nack, extend and the clock; after every step the backend
must agree with the model on what was leased, what a receipt is still worth and the counts.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Coroutine
from dataclasses import dataclass
from typing import Any, TypeVar

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule, run_state_machine_as_test

from podkit.queue import ItemState, Queue, Receipt, RetryPolicy

from .conftest import ManualClock

T = TypeVar("T")
KEY_TTL = 20.0
POLICY = RetryPolicy(base=1.0, factor=2.0, cap=8.0, jitter=0.0)


@dataclass
class Model:
    id: str
    priority: int
    key: str | None
    max_attempts: int
    state: str = "queued"  # queued | failed | leased | dead | done
    visible_at: float = 0.0
    deadline: float = 0.0
    attempts: int = 0
    token: str = ""
    done_at: float = 0.0


class QueueMachine(RuleBasedStateMachine):
    def __init__(self, url: str) -> None:
        super().__init__()
        self.loop = asyncio.new_event_loop()
        self.clock = ManualClock()
        self.queue = Queue(
            url, f"m-{uuid.uuid4().hex[:8]}", clock=self.clock, retry=POLICY, key_ttl=KEY_TTL
        )
        self.items: dict[str, Model] = {}
        self.held: dict[str, Receipt] = {}  # receipts of the current deliveries we hold
        self.stale: list[Receipt] = []

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        return self.loop.run_until_complete(coro)

    def teardown(self) -> None:
        self.run(self.queue.purge())
        self.run(self.queue.aclose())
        self.loop.close()

    # -- model helpers ---------------------------------------------------------------------

    def reclaim(self) -> None:
        now = self.clock.now
        for m in self.items.values():
            if m.state == "leased" and m.deadline < now:
                m.state = "dead" if m.attempts >= m.max_attempts else "queued"
                m.visible_at = now
                receipt = self.held.pop(m.id, None)
                if receipt is not None:
                    self.stale.append(receipt)

    def visible(self) -> list[Model]:
        now = self.clock.now
        return [
            m
            for m in self.items.values()
            if m.state in ("queued", "failed") and m.visible_at <= now
        ]

    def key_known(self, key: str) -> Model | None:
        for m in self.items.values():
            if m.key != key:
                continue
            if m.state != "done" or m.done_at + KEY_TTL > self.clock.now:
                return m
        return None

    # -- rules -----------------------------------------------------------------------------

    @rule(
        priority=st.integers(-2, 2),
        delay=st.sampled_from([0.0, 0.5, 3.0]),
        key=st.sampled_from([None, "a", "b"]),
        max_attempts=st.integers(1, 3),
    )
    def put(self, priority: int, delay: float, key: str | None, max_attempts: int) -> None:
        known = self.key_known(key) if key is not None else None
        result = self.run(
            self.queue.put(b"x", key=key, priority=priority, delay=delay, max_attempts=max_attempts)
        )
        if known is not None:
            assert not result.created
            assert result.id == known.id
            return
        assert result.created
        self.items[result.id] = Model(
            result.id, priority, key, max_attempts, visible_at=self.clock.now + delay
        )

    @rule(n=st.integers(1, 4), visibility=st.sampled_from([1.0, 5.0]))
    def lease(self, n: int, visibility: float) -> None:
        self.reclaim()
        candidates = self.visible()
        leased = self.run(self.queue.lease(n, visibility))
        assert len(leased) == min(n, len(candidates))
        ids = {item.id for item in leased}
        assert ids <= {m.id for m in candidates}
        top = sorted((m.priority for m in candidates), reverse=True)[: len(leased)]
        assert sorted((item.priority for item in leased), reverse=True) == top
        for item in leased:
            m = self.items[item.id]
            # within a priority, nothing visible that waited longer was passed over
            passed = [
                c
                for c in candidates
                if c.id not in ids and c.priority == m.priority and c.visible_at < m.visible_at
            ]
            assert not passed
            m.state = "leased"
            m.attempts += 1
            m.deadline = self.clock.now + visibility
            assert item.attempt == m.attempts
            self.held[item.id] = item.receipt

    @rule(data=st.data())
    def ack(self, data: st.DataObject) -> None:
        if not self.held:
            return
        item_id = data.draw(st.sampled_from(sorted(self.held)))
        receipt = self.held.pop(item_id)
        assert self.run(self.queue.ack(receipt))
        m = self.items[item_id]
        m.state = "done"
        m.done_at = self.clock.now

    @rule(data=st.data())
    def ack_stale(self, data: st.DataObject) -> None:
        if not self.stale:
            return
        receipt = data.draw(st.sampled_from(self.stale))
        m = self.items[receipt.item_id]
        if m.state == "leased" and self.held.get(m.id) == receipt:
            return
        assert not self.run(self.queue.ack(receipt))

    @rule(data=st.data())
    def nack(self, data: st.DataObject) -> None:
        if not self.held:
            return
        item_id = data.draw(st.sampled_from(sorted(self.held)))
        receipt = self.held.pop(item_id)
        self.stale.append(receipt)
        state = self.run(self.queue.nack(receipt, error="no"))
        m = self.items[item_id]
        if m.attempts >= m.max_attempts:
            assert state is ItemState.DEAD
            m.state = "dead"
        else:
            assert state is ItemState.FAILED
            m.state = "failed"
            m.visible_at = self.clock.now + min(8.0, 2.0 ** (m.attempts - 1))

    @rule(data=st.data(), seconds=st.sampled_from([1.0, 5.0]))
    def extend(self, data: st.DataObject, seconds: float) -> None:
        if not self.held:
            return
        item_id = data.draw(st.sampled_from(sorted(self.held)))
        receipt = self.run(self.queue.extend(self.held[item_id], seconds))
        self.held[item_id] = receipt
        self.items[item_id].deadline = self.clock.now + seconds

    @rule(seconds=st.sampled_from([0.3, 1.0, 2.5, 6.0]))
    def advance(self, seconds: float) -> None:
        self.clock.advance(seconds)

    @invariant()
    def counts_agree(self) -> None:
        stats = self.run(self.queue.stats())
        now = self.clock.now
        waiting = [m for m in self.items.values() if m.state in ("queued", "failed")]
        expected = (
            sum(m.visible_at <= now for m in waiting),
            sum(m.visible_at > now for m in waiting),
            sum(m.state == "leased" for m in self.items.values()),
            sum(m.state == "dead" for m in self.items.values()),
        )
        assert (stats.ready, stats.delayed, stats.leased, stats.dead) == expected


MODEL_SETTINGS = settings(max_examples=25, stateful_step_count=30, deadline=None)


def test_the_sqlite_backend_follows_the_model(tmp_path: Any) -> None:
    url = f"sqlite:///{tmp_path}/model.db"
    run_state_machine_as_test(lambda: QueueMachine(url), settings=MODEL_SETTINGS)


def test_the_redis_backend_follows_the_model(redis_server: Any) -> None:
    run_state_machine_as_test(lambda: QueueMachine(redis_server.url), settings=MODEL_SETTINGS)
