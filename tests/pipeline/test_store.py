"""The store contract: SQLite and Redis commit a step at once, or not at all."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from podkit.batch.pipeline.barrier import BarrierPolicy, Outcome, decide
from podkit.batch.pipeline.model import DEFAULT_PACK_BYTES, parse_pipeline
from podkit.batch.pipeline.store import (
    Conflict,
    Message,
    PipelineStore,
    Step,
    Topology,
    decode_acc,
    encode_acc,
    open_store,
    pack,
)
from podkit.testing import RedisServer

SPEC = parse_pipeline(
    {
        "inputs": {"nums": {"items": [1, 2, 3], "group": "g"}},
        "stages": {
            "double": {"from": "nums", "map": {"handler": "m:f"}, "to": "doubled"},
            "sum": {"from": "doubled", "reduce": {"handler": "m:add"}, "to": "total"},
        },
        "outputs": {"total": {"file": "/dev/null"}},
    }
)
IN = "nums>double"
MID = "doubled>sum"


@pytest.fixture(params=["sqlite", "redis"])
def url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "redis":
        with RedisServer() as server:
            yield server.url
    else:
        yield f"sqlite:///{tmp_path}/p.db"


@pytest.fixture
def store(url: str) -> Iterator[PipelineStore]:
    s = open_store(url, "t", Topology.of(SPEC))
    yield s
    s.close()


@pytest.fixture
def other(url: str) -> Iterator[PipelineStore]:
    """The same pipeline as another worker process sees it."""
    s = open_store(url, "t", Topology.of(SPEC))
    yield s
    s.close()


def lease_when_expired(store: PipelineStore, n: int, **options: Any) -> list[Message]:
    """Lease until the messages of an expired lease come back (Redis counts idle time on the
    server's clock, SQLite on the callers')."""
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        got = store.lease([IN], 10, now=time.time(), **options)
        if len(got) >= n:
            return got
        assert not got
        time.sleep(0.02)
    raise AssertionError("the lease did not expire")


def feed(store: PipelineStore) -> None:
    assert store.feed([("nums", "g", v) for v in (1, 2, 3)], ["g"])


def test_feeding_twice_is_a_no_op(store: PipelineStore) -> None:
    feed(store)
    assert not store.feed([("nums", "g", 9)], ["g"])
    assert store.backlog([IN]) == 3
    state = store.group("g")
    assert state is not None
    assert (state.created, state.sealed) == (3, True)


def test_a_commit_moves_outputs_and_group_counts_at_once(store: PipelineStore) -> None:
    feed(store)
    batch = store.lease([IN], 10, now=100.0, visibility=30, token="a")
    assert [m.value for m in batch] == [1, 2, 3]
    assert store.lease([IN], 10, now=101.0, visibility=30, token="b") == []
    step = Step(
        done=[(m, [("doubled", m.value * 2)]) for m in batch[:2]], dead=[(batch[2], "boom")]
    )
    assert store.commit("double", step, now=102.0)
    assert store.backlog([IN]) == 0
    assert store.backlog([MID]) == 2
    state = store.group("g")
    assert state is not None
    assert (state.created, state.done, state.failed) == (5, 2, 1)
    dead = store.dead()
    assert [(d.stage, d.value, d.error) for d in dead] == [("double", 3, "boom")]
    counts = {c.stage: c for c in store.counts(["double"], {"double": [IN]})}
    assert (counts["double"].items_in, counts["double"].items_out, counts["double"].dead) == (
        3,
        2,
        1,
    )


def test_a_commit_after_the_lease_was_taken_again_changes_nothing(
    store: PipelineStore, other: PipelineStore
) -> None:
    feed(store)
    first = store.lease([IN], 10, now=time.time(), visibility=0.1, token="a")
    second = lease_when_expired(other, 3, visibility=0.1, token="b")
    assert {m.value for m in second} == {1, 2, 3}
    assert all(m.delivery == 2 for m in second)
    stale = Step(done=[(m, [("doubled", 0)]) for m in first])
    assert not store.commit("double", stale, now=time.time())
    assert store.backlog([MID]) == 0
    fresh = Step(done=[(m, [("doubled", m.value)]) for m in second])
    assert other.commit("double", fresh, now=time.time())
    assert store.backlog([MID]) == 3


def test_a_message_leased_too_often_is_dead_lettered(store: PipelineStore) -> None:
    feed(store)
    assert len(store.lease([IN], 10, now=time.time(), visibility=0.05, token="t")) == 3
    for _ in range(2):
        lease_when_expired(store, 3, visibility=0.05, token="t")
    deadline = time.monotonic() + 10
    while len(store.dead()) < 3 and time.monotonic() < deadline:
        assert (
            store.lease([IN], 10, now=time.time(), visibility=1, token="x", max_deliveries=3) == []
        )
        time.sleep(0.02)
    assert len(store.dead()) == 3
    assert "without a commit" in store.dead()[0].error
    state = store.group("g")
    assert state is not None
    assert state.failed == 3
    assert store.redrive("double") == 3
    state = store.group("g")
    assert state is not None
    assert state.failed == 0
    assert store.backlog([IN]) == 3
    assert store.dead() == []


def test_a_barrier_combines_with_versions_and_fires_once(store: PipelineStore) -> None:
    feed(store)
    batch = store.lease([IN], 10, now=100.0, visibility=30, token="a")
    store.commit("double", Step(done=[(m, [("doubled", m.value * 2)]) for m in batch]), now=100.0)
    mids = store.lease([MID], 10, now=100.0, visibility=30, token="b")
    accs, version = store.accumulators("sum", [("g", "")])
    assert accs == {}
    step = Step(
        done=[(m, []) for m in mids],
        accumulators={("g", ""): sum(m.value for m in mids)},
        absorbed={"g": len(mids)},
    )
    with pytest.raises(Conflict):
        store.commit("sum", step, now=100.0, version=version + 1)
    assert store.commit("sum", step, now=100.0, version=version)
    assert store.accumulators("sum", [("g", "")])[0] == {("g", ""): 12}
    assert store.open_barriers("sum") == ["g"]

    def results(
        group: str, outcome: Outcome, accs: list[tuple[str, object]], counts: dict[str, int]
    ) -> list[object]:
        return [{"group": group, "value": accs[0][1], **counts}]

    policy = BarrierPolicy()
    fire = lambda: store.fire(  # noqa: E731
        "sum", "g", decide=lambda s: decide(s, policy), results=results, outputs=["total"]
    )
    assert fire() is Outcome.SUCCEEDED
    assert fire() is None
    assert store.outputs("total") == [
        {"group": "g", "value": 12, "items": 3, "done": 6, "failed": 0}
    ]
    assert store.open_barriers("sum") == []
    derived = store.group("g/sum")
    assert derived is not None
    assert derived.sealed


def test_reset_forgets_the_pipeline(store: PipelineStore) -> None:
    feed(store)
    store.reset()
    assert store.backlog([IN]) == 0
    assert store.groups() == {}
    feed(store)


def test_items_handed_back_in_a_commit_are_leased_again_and_count_once(
    store: PipelineStore,
) -> None:
    feed(store)
    first = store.lease([IN], 1, now=100.0, visibility=30, token="a")
    assert first
    taken, rest = first[:1], first[1:]
    step = Step(done=[(m, [("doubled", m.value * 2)]) for m in taken], requeue=rest)
    assert store.commit("double", step, now=100.0)
    seen = [m.value for m in taken]
    while batch := store.lease([IN], 1, now=101.0, visibility=30, token="b"):
        seen.extend(m.value for m in batch)
        assert store.commit("double", Step(done=[(m, []) for m in batch]), now=101.0)
    assert sorted(seen) == [1, 2, 3]
    state = store.group("g")
    assert state is not None
    assert (state.created, state.done) == (4, 3)
    counts = {c.stage: c for c in store.counts(["double"], {"double": [IN]})}
    assert counts["double"].items_in == 3


def test_many_outputs_are_leased_in_batches_of_at_most_n_and_each_once(
    store: PipelineStore,
) -> None:
    feed(store)
    batch = store.lease([IN], 10, now=100.0, visibility=30, token="a")
    outputs = [(m, [("doubled", m.value * 1000 + i) for i in range(850)]) for m in batch]
    assert store.commit("double", Step(done=outputs), now=100.0)
    assert store.backlog([MID]) == 3 * 850
    seen: list[int] = []
    while mids := store.lease([MID], 250, now=101.0, visibility=30, token="b"):
        assert 1 <= len(mids) <= 250
        assert len({m.id for m in mids}) == len(mids)
        seen.extend(m.value for m in mids)
        step = Step(done=[(m, []) for m in mids], absorbed={"g": len(mids)})
        assert store.commit("sum", step, now=101.0)
    assert sorted(seen) == sorted(v * 1000 + i for v in (1, 2, 3) for i in range(850))
    assert store.backlog([MID]) == 0


def test_dead_letters_of_one_pack_are_redriven_one_by_one(store: PipelineStore) -> None:
    feed(store)
    batch = store.lease([IN], 10, now=100.0, visibility=30, token="a")
    step = Step(dead=[(m, f"bad {m.value}") for m in batch])
    assert store.commit("double", step, now=100.0)
    dead = store.dead()
    assert sorted(d.value for d in dead) == [1, 2, 3]
    assert len({d.id for d in dead}) == 3
    two = next(d for d in dead if d.value == 2)
    assert two.error == "bad 2"
    assert store.redrive(ids=[two.id]) == 1
    assert sorted(d.value for d in store.dead()) == [1, 3]
    assert [m.value for m in store.lease([IN], 10, now=101.0, visibility=30, token="b")] == [2]
    state = store.group("g")
    assert state is not None
    assert state.failed == 2


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(), inner, max_size=3),
    max_leaves=8,
)


@given(json_values)
def test_an_accumulator_reads_back_as_it_was_written(value: Any) -> None:
    assert decode_acc(encode_acc(value)) == value
    assert type(decode_acc(encode_acc(value))) is type(value)


@given(
    st.lists(st.text(max_size=300_000 // 50), max_size=60),
    st.integers(1, 20),
    st.sampled_from([1024, 10_000, DEFAULT_PACK_BYTES]),
)
def test_packs_hold_every_value_once_in_order_within_their_limits(
    values: list[str], limit: int, max_bytes: int
) -> None:
    packs = pack(values, limit, max_bytes)
    assert [v for body, _ in packs for v in json.loads(body)] == values
    for body, n in packs:
        assert 1 <= n <= limit
        assert len(json.loads(body)) == n
        assert n == 1 or len(body) <= max_bytes


def test_pending_and_leased_count_items_not_packs(store: PipelineStore) -> None:
    feed(store)
    subs = {"double": [IN]}
    counts = {c.stage: c for c in store.counts(["double"], subs)}
    assert (counts["double"].pending, counts["double"].leased) == (3, 0)
    batch = store.lease([IN], 10, now=100.0, visibility=30, token="a")
    counts = {c.stage: c for c in store.counts(["double"], subs)}
    assert (counts["double"].pending, counts["double"].leased) == (0, 3)
    assert store.commit("double", Step(done=[(m, []) for m in batch]), now=100.0)
    counts = {c.stage: c for c in store.counts(["double"], subs)}
    assert (counts["double"].pending, counts["double"].leased) == (0, 0)


def test_put_adds_children_to_an_open_group(store: PipelineStore, other: PipelineStore) -> None:
    """Items put while the pipeline runs are leased like fed ones; their group stays open."""
    assert store.put([("nums", "s", 5), ("nums", "s", 6)]) == 2
    got = other.lease([IN], 10, now=time.time(), visibility=30.0, token="w")
    assert sorted(m.value for m in got) == [5, 6]
    state = store.groups()["s"]
    assert state.created == 2
    assert not state.sealed
