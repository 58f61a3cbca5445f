"""The open barrier: groups that grow while they run fire exactly once, as their policy says."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from fractions import Fraction

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from podkit.batch.pipeline.barrier import (
    BarrierPolicy,
    GroupState,
    IllegalGroupStep,
    Outcome,
    decide,
)


@dataclass
class Node:
    """A child: whether it fails for good, and the children it adds when it finishes."""

    ok: bool
    children: list[Node] = field(default_factory=list)

    def size(self) -> int:
        return 1 + sum(c.size() for c in self.children)

    def failures(self) -> int:
        return (0 if self.ok else 1) + sum(c.failures() for c in self.children)


nodes = st.recursive(
    st.builds(Node, ok=st.booleans() | st.just(True)),
    lambda inner: st.builds(
        Node, ok=st.booleans() | st.just(True), children=st.lists(inner, max_size=4)
    ),
    max_leaves=30,
)
policies = st.one_of(
    st.just(BarrierPolicy()),
    st.integers(0, 5).map(lambda n: BarrierPolicy(allow_failures=n)),
    st.integers(1, 100).map(lambda p: BarrierPolicy(quorum=Fraction(p, 100))),
)


@dataclass
class Store:
    """A store as the worker runner keeps it: counts, the ids of applied steps, fired flags.

    A step is applied in one transaction with the record of its id, so a duplicate delivery
    of the same child is recognised and applied once; the fired flag is written with the
    barrier's result.
    """

    state: GroupState = field(default_factory=GroupState)
    applied: set[int] = field(default_factory=set)
    fired: list[Outcome] = field(default_factory=list)
    fired_at: list[GroupState] = field(default_factory=list)

    def commit(self, child_id: int, ok: bool, children: int, policy: BarrierPolicy) -> None:
        if child_id in self.applied:
            return
        self.applied.add(child_id)
        self.state = self.state.finish(ok=ok, children=children)
        self.check(policy)

    def check(self, policy: BarrierPolicy) -> None:
        if self.fired:
            return
        outcome = decide(self.state, policy)
        if outcome is not None:
            self.fired.append(outcome)
            self.fired_at.append(self.state)


@settings(max_examples=300, deadline=None)
@given(roots=st.lists(nodes, min_size=0, max_size=6), policy=policies, data=st.data())
def test_a_growing_group_fires_once_with_the_policys_outcome(
    roots: list[Node], policy: BarrierPolicy, data: st.DataObject
) -> None:
    """Children add grandchildren, deliveries repeat and workers crash between a child's work
    and its commit; the barrier still fires exactly once and never early."""
    store = Store()
    ids = iter(range(1_000_000))
    outstanding: list[tuple[int, Node]] = []
    to_add = list(roots)
    sealed = False
    total = sum(r.size() for r in roots)
    failures = sum(r.failures() for r in roots)
    finished: dict[int, Node] = {}
    while to_add or not sealed or outstanding:
        moves = []
        if to_add:
            moves.append("add")
        elif not sealed:
            moves.append("seal")
        if outstanding:
            moves += ["work", "work", "crash", "duplicate"]
        move = data.draw(st.sampled_from(moves))
        if move == "add":
            node = to_add.pop(0)
            store.state = store.state.add(1)
            outstanding.append((next(ids), node))
        elif move == "seal":
            sealed = True
            store.state = store.state.seal()
            store.check(policy)
        elif move == "crash":
            pass  # the worker died after running the child, before committing: redelivered later
        else:
            index = data.draw(st.integers(0, len(outstanding) - 1))
            child_id, node = outstanding[index]
            store.commit(child_id, node.ok, len(node.children), policy)
            if move == "duplicate":
                store.commit(child_id, node.ok, len(node.children), policy)  # redelivered
            outstanding.pop(index)
            finished[child_id] = node
            outstanding.extend((next(ids), c) for c in node.children)
        # Never early: success under all/allow_failures only once everything has finished.
        if store.fired == [Outcome.SUCCEEDED] and policy.quorum is None:
            assert store.fired_at[0].complete
    assert store.state.complete
    assert store.state.created == total
    assert store.state.failed == failures
    assert len(store.fired) == 1, store.fired
    outcome, at = store.fired[0], store.fired_at[0]
    if policy.quorum is None:
        expected = Outcome.SUCCEEDED if failures <= policy.allow_failures else Outcome.FAILED
        assert outcome is expected
        if outcome is Outcome.FAILED:
            assert at.failed == policy.allow_failures + 1  # fired at the first failure too many
    elif outcome is Outcome.SUCCEEDED:
        assert at.sealed
        assert at.done >= math.ceil(policy.quorum * at.created)
    else:
        assert at.complete
        assert at.done < math.ceil(policy.quorum * at.created)


def test_an_empty_sealed_group_succeeds_at_once() -> None:
    assert decide(GroupState().seal()) is Outcome.SUCCEEDED


def test_an_open_group_does_not_fire_even_when_its_children_are_done() -> None:
    state = GroupState().add(2).finish(ok=True).finish(ok=True)
    assert decide(state) is None
    assert decide(state.seal()) is Outcome.SUCCEEDED


def test_a_child_adding_children_keeps_the_group_open() -> None:
    state = GroupState().add(1).seal().finish(ok=True, children=3)
    assert state.outstanding == 3
    assert decide(state) is None


def test_allow_failures_fails_at_the_first_failure_too_many() -> None:
    policy = BarrierPolicy.parse(allow_failures=1)
    state = GroupState().add(5).finish(ok=False)
    assert decide(state, policy) is None
    assert decide(state.finish(ok=False), policy) is Outcome.FAILED


def test_quorum_succeeds_without_waiting_for_stragglers() -> None:
    policy = BarrierPolicy.parse(quorum="90%")
    state = GroupState().add(10).seal().finish_many(done=9, failed=0, children=0)
    assert decide(state, policy) is Outcome.SUCCEEDED
    short = GroupState().add(10).seal().finish_many(done=8, failed=2, children=0)
    assert decide(short, policy) is Outcome.FAILED


def test_illegal_steps_are_errors() -> None:
    with pytest.raises(IllegalGroupStep):
        GroupState().finish(ok=True)
    with pytest.raises(IllegalGroupStep):
        GroupState().seal().add(1)
    with pytest.raises(IllegalGroupStep):
        GroupState().add(1).finish_many(done=2, failed=0, children=0)


@pytest.mark.parametrize("bad", [{"quorum": "0%"}, {"quorum": "abc"}, {"allow_failures": -1}])
def test_bad_policies_are_refused(bad: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        BarrierPolicy.parse(**bad)  # type: ignore[arg-type]
