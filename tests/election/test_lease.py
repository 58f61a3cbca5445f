"""The sans-IO lease state machine: transitions, timing, and safety under any delays."""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from podkit.election import Term
from podkit.errors import ConfigError, LeaseLost
from podkit.serving.election.lease import (
    MAX_UNREACHABLE_BACKOFF,
    Action,
    Decision,
    IllegalTransition,
    LeaseElector,
    LeaseTiming,
    Role,
)

TIMING = LeaseTiming.for_ttl(2.0)


def test_default_timing_renews_well_before_the_deadline() -> None:
    assert TIMING.renew_interval == pytest.approx(2.0 / 3)
    assert TIMING.safety_margin == pytest.approx(0.2)
    assert TIMING.retry_interval == pytest.approx(0.2)
    assert TIMING.renew_interval < TIMING.ttl - TIMING.safety_margin


@pytest.mark.parametrize(("ttl", "renew"), [(0.01, None), (math.inf, None), (2.0, 1.9), (2.0, 5.0)])
def test_timing_that_cannot_be_safe_is_refused(ttl: float, renew: float | None) -> None:
    with pytest.raises(ConfigError):
        LeaseTiming.for_ttl(ttl, renew_interval=renew)


def test_illegal_transitions_raise() -> None:
    elector = LeaseElector(TIMING)
    with pytest.raises(IllegalTransition):
        elector.step_down("not leading")
    with pytest.raises(IllegalTransition):
        elector.acquired(token=1, started=0.0, now=0.1)
    elector.campaign(0.0)
    with pytest.raises(IllegalTransition):
        elector.campaign(0.0)


def test_a_leader_is_valid_until_its_send_time_plus_ttl_minus_the_margin() -> None:
    elector = LeaseElector(TIMING)
    elector.campaign(10.0)
    assert elector.next(10.0).action is Action.ACQUIRE
    assert elector.acquired(token=7, started=10.0, now=10.5)
    assert elector.role is Role.LEADER
    assert elector.valid_until == pytest.approx(10.0 + 2.0 - 0.2)
    assert elector.next(10.5).action is Action.WAIT
    renew = elector.next(10.0 + TIMING.renew_interval)
    assert renew.action is Action.RENEW
    assert renew.timeout == pytest.approx(11.8 - (10.0 + TIMING.renew_interval))


def test_a_grant_that_arrives_after_its_safe_window_is_not_leadership() -> None:
    elector = LeaseElector(TIMING)
    elector.campaign(0.0)
    assert not elector.acquired(token=1, started=0.0, now=1.9)
    assert elector.role is Role.CANDIDATE


def test_a_renewal_answered_after_the_deadline_extends_nothing() -> None:
    elector = LeaseElector(TIMING)
    elector.campaign(0.0)
    assert elector.acquired(token=1, started=0.0, now=0.1)
    assert not elector.renewed(started=1.0, now=1.8)
    assert elector.next(1.8).action is Action.STEP_DOWN


def test_failed_renewals_are_retried_until_the_deadline_then_step_down() -> None:
    elector = LeaseElector(TIMING)
    elector.campaign(0.0)
    assert elector.acquired(token=1, started=0.0, now=0.0)
    now = TIMING.renew_interval
    while elector.next(now).action is not Action.STEP_DOWN:
        decision = elector.next(now)
        if decision.action is Action.RENEW:
            elector.renew_failed(now=now, definite=False)
        now = max(now + 0.01, elector.next(now).at)
    assert now == pytest.approx(1.8, abs=0.01)


def test_a_definite_renewal_failure_steps_down_at_once() -> None:
    elector = LeaseElector(TIMING)
    elector.campaign(0.0)
    assert elector.acquired(token=1, started=0.0, now=0.0)
    elector.renew_failed(now=0.7, definite=True)
    assert elector.next(0.7).action is Action.STEP_DOWN
    assert elector.step_down("lost") == 1
    assert elector.role is Role.FOLLOWER


@dataclass
class Server:
    """A lease server judging expiry on true time, from when a request arrives."""

    ttl: float
    holder: int | None = None
    token: int = 0
    expires: float = -math.inf

    def acquire(self, who: int, at: float) -> int | None:
        if self.holder is not None and at < self.expires:
            return None
        self.token += 1
        self.holder, self.expires = who, at + self.ttl
        return self.token

    def renew(self, who: int, token: int, at: float) -> bool:
        if self.holder == who and self.token == token and at < self.expires:
            self.expires = at + self.ttl
            return True
        return False


steps = st.lists(
    st.tuples(
        st.integers(0, 2),  # which elector acts
        st.floats(0, 3.0),  # request delay (network, a frozen sender)
        st.floats(0, 3.0),  # reply delay (network, a frozen receiver)
        st.floats(0, 1.0),  # idle time before the next step
    ),
    max_size=80,
)


@settings(max_examples=300, deadline=None)
@given(steps=steps, offsets=st.lists(st.floats(-100, 100), min_size=3, max_size=3))
def test_no_two_electors_ever_believe_they_lead_at_once(
    steps: list[tuple[int, float, float, float]], offsets: list[float]
) -> None:
    """Whatever the delays, each elector's belief (leads(now) on its own clock) ends before
    the server grants the lease to anyone else, and tokens rise with time."""
    server = Server(TIMING.ttl)
    electors = [LeaseElector(TIMING) for _ in range(3)]
    beliefs: list[list[float]] = []  # [start, end, who, token] in true time
    open_belief: dict[int, list[float]] = {}
    t = 0.0

    def clock(who: int, at: float) -> float:
        return at + offsets[who]

    def close(who: int) -> None:
        belief = open_belief.pop(who, None)
        if belief is not None:
            elector = electors[who]
            belief[1] = min(belief[1], elector.valid_until - offsets[who])

    for who, there, back, idle in steps:
        elector = electors[who]
        now = clock(who, t)
        if elector.role is Role.FOLLOWER:
            elector.campaign(now)
        decision = elector.next(now)
        if decision.action is Action.STEP_DOWN:
            belief = open_belief.pop(who)
            belief[1] = min(belief[1], elector.valid_until - offsets[who], t)
            elector.step_down("deadline")
        elif decision.action in (Action.ACQUIRE, Action.RENEW):
            started, arrive, reply = now, t + there, t + there + back
            if decision.action is Action.ACQUIRE:
                token = server.acquire(who, arrive)
                if token is None:
                    elector.rejected(now=clock(who, reply))
                elif elector.acquired(token=token, started=started, now=clock(who, reply)):
                    open_belief[who] = [reply, math.inf, who, token]
                    beliefs.append(open_belief[who])
            else:
                assert elector.token is not None
                if server.renew(who, elector.token, arrive):
                    elector.renewed(started=started, now=clock(who, reply))
                else:
                    elector.renew_failed(now=clock(who, reply), definite=True)
            t = reply
        t += idle
        # A belief's end is where the elector's deadline lies now (it may still move out).
        for other in list(open_belief):
            open_belief[other][1] = electors[other].valid_until - offsets[other]
    for who in list(open_belief):
        close(who)
    ordered = sorted(beliefs)
    for first, second in itertools.pairwise(ordered):
        assert first[1] <= second[0], (first, second)
        assert first[3] < second[3]


def test_a_term_past_its_deadline_is_lost_even_before_its_timer_fires() -> None:
    now = [5.0]
    term = Term("job", "alpha", 3, valid_until=10.0, clock=lambda: now[0])
    assert term.leads()
    term.check()
    now[0] = 10.0
    assert not term.leads()
    assert term.lost.is_set()
    with pytest.raises(LeaseLost, match="deadline"):
        term.check()


def test_a_lease_granted_for_another_ttl_sets_the_deadline_and_renewals_from_that_ttl() -> None:
    """A backend granting 1 s for a 2 s election (etcd) gets a 0.9 s deadline, renewals
    every third of a second, and the requested timing back once the term ends."""
    elector = LeaseElector(TIMING)
    elector.campaign(0.0)
    assert elector.acquired(token=3, started=10.0, now=10.1, ttl=1.0)
    assert elector.valid_until == pytest.approx(10.0 + 1.0 - 0.1)
    assert elector.next(10.2).at == pytest.approx(10.0 + 1.0 / 3)
    assert elector.renewed(started=10.4, now=10.45)
    assert elector.valid_until == pytest.approx(10.4 + 0.9)
    elector.step_down("done")
    assert elector.term_timing is TIMING


def test_a_grant_for_a_shorter_ttl_that_arrives_after_its_own_window_is_refused() -> None:
    elector = LeaseElector(TIMING)
    elector.campaign(0.0)
    assert not elector.acquired(token=1, started=0.0, now=0.95, ttl=1.0)
    assert elector.role is Role.CANDIDATE


def test_an_unreachable_backend_is_retried_with_capped_exponential_backoff_and_jitter() -> None:
    """The n-th failure in a row waits retry_interval * 2**(n-1), ±20 %, at most 5 s: a dead
    backend costs a warning every few seconds, not five a second."""
    elector = LeaseElector(TIMING)
    elector.campaign(0.0)
    retry = TIMING.retry_interval
    now = 0.0
    delays = []
    for _ in range(12):
        decision = elector.next(now)
        assert decision.action is Action.ACQUIRE
        delays.append(elector.unreachable(now=now, rand=0.5))  # no jitter at the middle
        assert elector.next(now).action is Action.WAIT
        now += delays[-1]
    assert delays[:3] == pytest.approx([retry, 2 * retry, 4 * retry])
    assert max(delays) == pytest.approx(MAX_UNREACHABLE_BACKOFF)
    assert delays[-1] == pytest.approx(MAX_UNREACHABLE_BACKOFF)
    assert elector.unreachable(now=now, rand=0.0) == pytest.approx(0.8 * MAX_UNREACHABLE_BACKOFF)
    assert elector.unreachable(now=now, rand=0.999999) == pytest.approx(
        1.2 * MAX_UNREACHABLE_BACKOFF, rel=1e-5
    )


def test_any_answer_resets_the_backoff_and_a_deadline_caps_the_next_attempt() -> None:
    elector = LeaseElector(TIMING)
    elector.campaign(0.0)
    for _ in range(5):
        elector.unreachable(now=0.0, rand=0.5)
    assert elector.unreachable_in_a_row == 5
    elector.rejected(now=1.0)  # the backend answered: someone else holds the lease
    assert elector.unreachable_in_a_row == 0
    assert elector.unreachable(now=1.0, rand=0.5) == pytest.approx(TIMING.retry_interval)
    for _ in range(6):
        elector.unreachable(now=1.0, rand=0.5)
    assert elector.unreachable(now=1.0, rand=0.5, not_after=1.5) == pytest.approx(0.5)
    assert elector.next(1.2) == Decision(Action.WAIT, 1.5)
    # Waking early (the backend reported a change) tries at once; waking late changes nothing.
    elector.wake(now=1.1)
    assert elector.next(1.1).action is Action.ACQUIRE
