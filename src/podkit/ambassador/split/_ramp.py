"""Progressive delivery: step a candidate's weight up while it behaves, roll it back when not.

Theory of operation (the analysis Flagger and Argo Rollouts run beside nginx or Envoy, here in
the splitter itself). The ramp walks ``steps`` (``5%, 25%, 50%, 100%``), one per window of
``every`` seconds. During a window it compares the candidate with the primary over the same
requests-in-time, by the rules of ``--rollback-on``:

* ``5xx>1%``: the candidate's share of 5xx answers (errors that reached no answer count as
  5xx) exceeds the primary's by more than one percentage point;
* ``p99>1.5x``: the candidate's 99th percentile latency exceeds 1.5 times the primary's (and
  by more than ``p99_floor`` seconds, so that 0.4 ms against 0.2 ms is not a breach), judged
  over the whole window only;
* ``diff>0.5%``: the candidate's noise-corrected response mismatch rate exceeds 0.5 %.

A rule is judged only once it has ``min_requests`` observations on each side it reads; until
then it has *no data*. A breach (of ``5xx`` and ``diff``, checked at every tick; of
``p99``, at the end of the window, since a percentile of part of a window is noise) rolls
back at once: weight 0, state ``rolled-back``, and the reason in the trace. At the end
of a window with data for every rule and no breach, the ramp promotes to the next step; a
window that ended without enough data *holds*: the weight stays and a new window starts, so
the ramp never promotes or fails on no data. Reaching the last step completes the ramp.

The core is sans-IO: the shell feeds it observations and ``now`` and applies the weight it
returns.
"""

from __future__ import annotations

import enum
import itertools
import math
import random
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from podkit.ambassador.split._assign import format_percent, parse_percent
from podkit.errors import ConfigError, PodkitError

DEFAULT_MIN_REQUESTS = 20  # fewer than this in a window is noise, not evidence
DEFAULT_P99_FLOOR = 0.005  # latency differences under 5 ms are scheduling jitter on one host
MAX_WINDOW_SAMPLES = 10_000  # latencies kept per arm and window (a uniform sample beyond)
MAX_TRACE = 100  # decisions kept for /split
MAX_STEPS = 100  # more ramp steps than this is a typo

RuleKind = Literal["5xx", "p99", "diff"]


class RampState(enum.Enum):
    """Where a ramp is."""

    RAMPING = "ramping"
    COMPLETE = "complete"
    ROLLED_BACK = "rolled-back"
    STOPPED = "stopped"  # the weight was set by hand


TRANSITIONS: dict[RampState, frozenset[RampState]] = {
    RampState.RAMPING: frozenset(
        {RampState.RAMPING, RampState.COMPLETE, RampState.ROLLED_BACK, RampState.STOPPED}
    ),
    RampState.COMPLETE: frozenset(),
    RampState.ROLLED_BACK: frozenset(),
    RampState.STOPPED: frozenset(),
}


class IllegalRampTransition(PodkitError):
    """A ramp was asked to move where its state machine does not go."""


@dataclass(frozen=True, slots=True)
class RollbackRule:
    """One rule of ``--rollback-on``: ``kind`` and its threshold (a fraction for ``5xx`` and
    ``diff``, a factor for ``p99``)."""

    kind: RuleKind
    threshold: float

    def __str__(self) -> str:
        if self.kind == "p99":
            return f"p99>{self.threshold:g}x"
        return f"{self.kind}>{format_percent(self.threshold)}"


def parse_rollback_rules(text: str, *, field: str = "--rollback-on") -> tuple[RollbackRule, ...]:
    """Parse ``'5xx>1%,p99>1.5x,diff>0.5%'``.

    Raises:
        ConfigError: an unknown rule, a missing ``>`` or a bad threshold.
    """
    rules: list[RollbackRule] = []
    for part in text.split(","):
        part = part.strip()
        if not part:
            continue
        name, sep, value = part.partition(">")
        name, value = name.strip().lower(), value.strip()
        if not sep or not value:
            raise ConfigError(
                f"expected rules such as '5xx>1%,p99>1.5x,diff>0.5%', got {part!r}", path=field
            )
        if name == "p99":
            try:
                factor = float(value.removesuffix("x"))
            except ValueError:
                raise ConfigError(
                    f"p99 takes a factor such as 1.5x, got {value!r}", path=field
                ) from None
            if not factor >= 1.0 or math.isinf(factor):
                raise ConfigError(f"p99 factor must be 1x or more, got {value!r}", path=field)
            rules.append(RollbackRule("p99", factor))
        elif name in ("5xx", "diff"):
            kind: RuleKind = "5xx" if name == "5xx" else "diff"
            rules.append(RollbackRule(kind, parse_percent(value, field=field)))
        else:
            raise ConfigError(f"unknown rule {name!r}: expected 5xx, p99 or diff", path=field)
    if len({r.kind for r in rules}) != len(rules):
        raise ConfigError("a rule is given twice", path=field)
    return tuple(rules)


def parse_steps(text: str | Sequence[str | float], *, field: str = "--ramp") -> tuple[float, ...]:
    """Parse ``'5%,25%,50%,100%'``: increasing weights.

    Raises:
        ConfigError: a bad percentage, or steps that do not increase.
    """
    parts = text.split(",") if isinstance(text, str) else list(text)
    steps = tuple(
        parse_percent(p.strip() if isinstance(p, str) else p, field=field)
        for p in parts
        if not isinstance(p, str) or p.strip()
    )
    if not steps:
        raise ConfigError("give at least one step such as 5%,25%,50%,100%", path=field)
    if len(steps) > MAX_STEPS:
        raise ConfigError(f"at most {MAX_STEPS} steps", path=field)
    if any(b <= a for a, b in itertools.pairwise(steps)):
        raise ConfigError("steps must increase, such as 5%,25%,50%,100%", path=field)
    return steps


@dataclass(slots=True)
class WindowStats:
    """One arm's observations in the current window."""

    requests: int = 0
    errors_5xx: int = 0
    seen_latencies: int = 0
    latencies: list[float] = field(default_factory=list)

    def add(self, status: int, seconds: float, rng: random.Random) -> None:
        self.requests += 1
        if status >= 500:
            self.errors_5xx += 1
        self.seen_latencies += 1
        if len(self.latencies) < MAX_WINDOW_SAMPLES:
            self.latencies.append(seconds)
        else:  # reservoir sampling: every latency equally likely to be kept
            slot = rng.randrange(self.seen_latencies)
            if slot < MAX_WINDOW_SAMPLES:
                self.latencies[slot] = seconds

    @property
    def rate_5xx(self) -> float:
        return self.errors_5xx / self.requests if self.requests else 0.0

    def quantile(self, q: float) -> float:
        """The ``q`` quantile of the sampled latencies (nearest rank); 0 when none."""
        if not self.latencies:
            return 0.0
        ordered = sorted(self.latencies)
        rank = max(0, math.ceil(q * len(ordered)) - 1)
        return ordered[rank]


@dataclass(frozen=True, slots=True)
class RampDecision:
    """What a tick decided: ``action`` is ``start``, ``promote``, ``hold``, ``complete`` or
    ``rollback``; ``weight`` is the candidate's weight to apply."""

    at: float
    action: str
    weight: float
    reason: str
    rules: tuple[str, ...] = ()  # the rules breached, for a rollback

    def as_json(self) -> dict[str, Any]:
        return {
            "at": round(self.at, 3),
            "action": self.action,
            "weight": format_percent(self.weight),
            "reason": self.reason,
            **({"rules": list(self.rules)} if self.rules else {}),
        }


class Ramp:
    """The ramp of one candidate arm (see the module).

    Args:
        steps: the weights to walk, increasing.
        every: seconds per window.
        rules: the rollback rules.
        min_requests: observations a rule needs on each side it reads before it is judged.
        p99_floor: seconds the candidate's p99 must also exceed the primary's by.
        rng: the random source of latency sampling.
    """

    def __init__(
        self,
        steps: Sequence[float],
        every: float,
        rules: Sequence[RollbackRule] = (),
        *,
        min_requests: int = DEFAULT_MIN_REQUESTS,
        p99_floor: float = DEFAULT_P99_FLOOR,
        rng: random.Random | None = None,
    ) -> None:
        if not steps:
            raise ValueError("a ramp needs at least one step")
        if every <= 0:
            raise ValueError("every must be positive")
        self.steps = tuple(steps)
        self.every = every
        self.rules = tuple(rules)
        self.min_requests = max(1, min_requests)
        self.p99_floor = p99_floor
        self.rng = rng if rng is not None else random.Random()
        self.state = RampState.RAMPING
        self.step = 0
        self.window_start = 0.0
        self.started = False
        self.primary = WindowStats()
        self.candidate = WindowStats()
        self.diff_compared = 0
        self.diff_regressions = 0
        self.trace: deque[RampDecision] = deque(maxlen=MAX_TRACE)
        self.reason = ""

    @property
    def weight(self) -> float:
        """The candidate's weight the ramp wants now."""
        if self.state is RampState.ROLLED_BACK:
            return 0.0
        return self.steps[self.step]

    def _move(self, target: RampState) -> None:
        if target not in TRANSITIONS[self.state]:
            raise IllegalRampTransition(f"ramp cannot go from {self.state.value} to {target.value}")
        self.state = target

    def _new_window(self, now: float) -> None:
        self.window_start = now
        self.primary = WindowStats()
        self.candidate = WindowStats()
        self.diff_compared = 0
        self.diff_regressions = 0

    def _decide(
        self, now: float, action: str, reason: str, rules: tuple[str, ...] = ()
    ) -> RampDecision:
        decision = RampDecision(now, action, self.weight, reason, rules)
        self.trace.append(decision)
        self.reason = reason
        return decision

    def start(self, now: float) -> RampDecision:
        """Begin at the first step."""
        self.started = True
        self._new_window(now)
        if len(self.steps) == 1:
            self._move(RampState.COMPLETE)
            return self._decide(now, "complete", "a single step: nothing to ramp")
        return self._decide(now, "start", f"first step {format_percent(self.steps[0])}")

    def stop(self, now: float, reason: str) -> RampDecision:
        """End the ramp where it is (a weight set by hand takes over)."""
        self._move(RampState.STOPPED)
        return self._decide(now, "stop", reason)

    def observe(self, arm: Literal["primary", "candidate"], status: int, seconds: float) -> None:
        """One answered request (status 502-504 for one that got no answer)."""
        if self.state is not RampState.RAMPING:
            return
        stats = self.candidate if arm == "candidate" else self.primary
        stats.add(status, seconds, self.rng)

    def observe_diff(self, regression: bool) -> None:
        """One compared pair of the candidate (or shadow) against the primary."""
        if self.state is not RampState.RAMPING:
            return
        self.diff_compared += 1
        if regression:
            self.diff_regressions += 1

    def judge(self, *, window_end: bool = True) -> tuple[list[str], list[str]]:
        """The breaches and the rules without enough data, in the current window.

        Before the window's end (``window_end=False``) the p99 rule is left out: a
        percentile of part of a window is noise (a few slow requests make it), while a 5xx
        rate or a mismatch rate above its threshold is already evidence.
        """
        breaches: list[str] = []
        no_data: list[str] = []
        enough = self.min_requests
        cand, prim = self.candidate, self.primary
        for rule in self.rules:
            if rule.kind == "p99" and not window_end:
                continue
            if rule.kind == "5xx":
                if cand.requests < enough:
                    no_data.append(f"5xx: {cand.requests}/{enough} candidate requests")
                    continue
                base = prim.rate_5xx if prim.requests >= enough else 0.0
                if cand.rate_5xx > base + rule.threshold:
                    breaches.append(
                        f"5xx {format_percent(cand.rate_5xx)} of {cand.requests} candidate "
                        f"requests against {format_percent(base)} on the primary "
                        f"(allowed +{format_percent(rule.threshold)})"
                    )
            elif rule.kind == "p99":
                if cand.requests < enough or prim.requests < enough:
                    no_data.append(
                        f"p99: {cand.requests}/{enough} candidate and "
                        f"{prim.requests}/{enough} primary requests"
                    )
                    continue
                c99, p99 = cand.quantile(0.99), prim.quantile(0.99)
                if c99 > rule.threshold * p99 and c99 - p99 > self.p99_floor:
                    breaches.append(
                        f"p99 {c99 * 1000:.1f}ms against {p99 * 1000:.1f}ms on the primary "
                        f"(allowed {rule.threshold:g}x)"
                    )
            else:
                if self.diff_compared < enough:
                    no_data.append(f"diff: {self.diff_compared}/{enough} compared responses")
                    continue
                rate = self.diff_regressions / self.diff_compared
                if rate > rule.threshold:
                    breaches.append(
                        f"diff mismatch {format_percent(rate)} of {self.diff_compared} "
                        f"compared responses (allowed {format_percent(rule.threshold)})"
                    )
        if not self.rules and cand.requests < enough:
            no_data.append(f"{cand.requests}/{enough} candidate requests")
        return breaches, no_data

    def tick(self, now: float) -> RampDecision | None:
        """Check the rules and the window; returns a decision when the weight or state
        changes, or the window held."""
        if self.state is not RampState.RAMPING or not self.started:
            return None
        window_end = now - self.window_start >= self.every
        breaches, no_data = self.judge(window_end=window_end)
        if breaches:
            self._move(RampState.ROLLED_BACK)
            kinds = tuple(b.split(" ", 1)[0] for b in breaches)
            return self._decide(now, "rollback", "; ".join(breaches), kinds)
        if not window_end:
            return None
        if no_data:
            self._new_window(now)
            return self._decide(
                now,
                "hold",
                f"window without enough data, staying at {format_percent(self.weight)}: "
                + "; ".join(no_data),
            )
        self.step += 1
        self._new_window(now)
        if self.step == len(self.steps) - 1:
            self._move(RampState.COMPLETE)
            return self._decide(now, "complete", f"reached {format_percent(self.weight)}")
        self._move(RampState.RAMPING)
        return self._decide(
            now, "promote", f"window passed every rule: up to {format_percent(self.weight)}"
        )

    def statistics(self, now: float) -> dict[str, Any]:
        """The ramp's state for ``/split`` as plain JSON values."""
        return {
            "state": self.state.value,
            "step": self.step,
            "steps": [format_percent(s) for s in self.steps],
            "every": self.every,
            "weight": format_percent(self.weight),
            "rollback_on": [str(r) for r in self.rules],
            "min_requests": self.min_requests,
            "window": {
                "elapsed": round(max(0.0, now - self.window_start), 3),
                "primary_requests": self.primary.requests,
                "candidate_requests": self.candidate.requests,
                "primary_5xx": self.primary.errors_5xx,
                "candidate_5xx": self.candidate.errors_5xx,
                "diff_compared": self.diff_compared,
                "diff_regressions": self.diff_regressions,
            },
            "reason": self.reason,
            "trace": [d.as_json() for d in self.trace],
        }
