"""One backend's health as a state machine: active probes, passive ejection, slow start.

Theory of operation. An :class:`Endpoint` is in one of five states (:class:`EndpointState`);
the legal moves are the data in :data:`TRANSITIONS` and any other move raises
:class:`IllegalTransition`. Three inputs move it, each with ``now`` passed in (this module
never reads a clock):

* **Active probes** (HAProxy's ``rise``/``fall``): ``rise`` consecutive passing probes bring
  an UNKNOWN or DOWN endpoint into rotation (READY); ``fall`` consecutive failures take a
  READY or EJECTED one out (DOWN).
* **Passive outlier detection** (Envoy's ``consecutive_5xx``): ``eject_after`` consecutive
  failed requests (connection errors, timeouts, 5xx answers) eject a READY endpoint for an
  interval that grows with each ejection (``base * n``, capped at ``max``) and shrinks again
  while the endpoint behaves. After the interval it returns to READY on its own; earlier
  when active probes saw it fail and then pass ``rise`` times (it was restarted), as Envoy's
  ``successful_active_health_check_uneject_host`` does. Probes that never failed do not cut
  an ejection short: a backend can pass its probe and still fail real requests.
* **Membership**: an endpoint removed from the configuration is DRAINING: it takes no new
  requests, finishes those in flight and is then forgotten.

An endpoint that re-enters READY, or joins after the initial membership, ramps its share of
traffic linearly over ``slow_start`` seconds from ``SLOW_START_MIN_FRACTION`` to its full
weight, so a cold replica is not flooded.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from podkit._pickling import reduce_dataclass
from podkit.errors import PodkitError

DEFAULT_RISE = 2  # HAProxy's default: two passing checks to come up
DEFAULT_FALL = 3  # HAProxy's default: three failing checks to go down
DEFAULT_EJECT_AFTER = 5  # Envoy's consecutive_5xx default
DEFAULT_BASE_EJECTION = 30.0  # Envoy's base_ejection_time
DEFAULT_MAX_EJECTION = 300.0  # Envoy's max_ejection_time
DEFAULT_EJECTION_DECAY = 30.0  # one healthy period forgives one past ejection
DEFAULT_SLOW_START = 0.0  # off unless asked: most replicas are warm when they pass a probe
SLOW_START_MIN_FRACTION = 0.1  # Envoy's min_weight_percent: a new endpoint still gets some load
MAX_WEIGHT = 10_000  # beyond this, ratios are finer than anyone can observe


class EndpointState(enum.Enum):
    """Where an endpoint stands; only READY endpoints receive new requests."""

    UNKNOWN = "unknown"  # not yet probed enough to decide
    READY = "ready"  # in rotation
    DOWN = "down"  # active probes failed ``fall`` times
    EJECTED = "ejected"  # passive outlier detection took it out for a while
    DRAINING = "draining"  # removed from membership (or drained by hand); finishing in-flight


S = EndpointState
TRANSITIONS: dict[EndpointState, frozenset[EndpointState]] = {
    S.UNKNOWN: frozenset({S.READY, S.DOWN, S.DRAINING}),
    S.READY: frozenset({S.DOWN, S.EJECTED, S.DRAINING}),
    S.DOWN: frozenset({S.READY, S.DRAINING}),
    S.EJECTED: frozenset({S.READY, S.DOWN, S.DRAINING}),
    # Re-adding a drained endpoint starts it over as if it were new.
    S.DRAINING: frozenset({S.UNKNOWN}),
}


class IllegalTransition(PodkitError):
    """A state change that the endpoint transition table does not allow (a bug in the caller)."""

    def __init__(self, name: str, source: EndpointState, target: EndpointState) -> None:
        self.source = source
        self.target = target
        super().__init__(f"endpoint {name}: illegal transition {source.value} -> {target.value}")


class Outcome(enum.Enum):
    """How one forwarded request ended, as seen by passive health checking."""

    SUCCESS = "success"
    CONNECT_FAILURE = "connect_failure"  # nothing reached the backend
    FAILURE = "failure"  # reset or timeout after the request was (maybe) sent
    SERVER_ERROR = "server_error"  # the backend answered 5xx
    ABANDONED = "abandoned"  # the client went away first: says nothing about the backend


@dataclass(frozen=True, slots=True)
class HealthPolicy:
    """Thresholds shared by all endpoints of a balancer.

    Attributes:
        rise: consecutive passing probes that bring an endpoint into rotation.
        fall: consecutive failing probes that take it out.
        eject_after: consecutive failed requests that eject it (0 turns ejection off).
        base_ejection: seconds of the first ejection; the n-th lasts ``n * base_ejection``.
        max_ejection: upper bound of one ejection.
        ejection_decay: every this many seconds without an ejection forgive one past ejection.
        slow_start: seconds over which a newly ready endpoint ramps up to its full weight.
    """

    rise: int = DEFAULT_RISE
    fall: int = DEFAULT_FALL
    eject_after: int = DEFAULT_EJECT_AFTER
    base_ejection: float = DEFAULT_BASE_EJECTION
    max_ejection: float = DEFAULT_MAX_EJECTION
    ejection_decay: float = DEFAULT_EJECTION_DECAY
    slow_start: float = DEFAULT_SLOW_START

    def __reduce__(self) -> tuple[Any, ...]:
        return reduce_dataclass(self)  # picklable when compiled (see podkit._pickling)

    def __post_init__(self) -> None:
        if self.rise < 1 or self.fall < 1:
            raise ValueError("rise and fall must be at least 1")
        if self.eject_after < 0:
            raise ValueError("eject_after must be 0 (off) or more")
        if self.base_ejection <= 0 or self.max_ejection < self.base_ejection:
            raise ValueError("need 0 < base_ejection <= max_ejection")
        if self.slow_start < 0 or self.ejection_decay <= 0:
            raise ValueError("slow_start must be >= 0 and ejection_decay > 0")


@dataclass(frozen=True, slots=True)
class EndpointSnapshot:
    """A frozen view of one endpoint, for the admin endpoint and metrics."""

    url: str
    state: EndpointState
    weight: int
    effective_weight: float
    in_flight: int
    consecutive_probe_passes: int
    consecutive_probe_failures: int
    consecutive_request_failures: int
    ejections: int
    ejected_until: float | None
    last_probe_ok: bool | None
    requests: int
    errors: int


class Endpoint:
    """One backend: its URL, weight, state and counters. Time is always passed in.

    Args:
        url: the backend's base URL, e.g. ``http://127.0.0.1:8001``.
        weight: its relative share of traffic (1..MAX_WEIGHT).
        policy: thresholds.
        now: the current time (seconds, any monotonic origin).
        probed: when False the endpoint has no active probe and starts READY.
        initial: part of the balancer's first membership: its first entry into rotation is
            not ramped by slow start (there are no warm peers to protect it from; every
            endpoint would ramp together). Endpoints added later, and every re-entry, ramp.
    """

    def __init__(
        self,
        url: str,
        *,
        weight: int = 1,
        policy: HealthPolicy,
        now: float,
        probed: bool = True,
        initial: bool = False,
    ) -> None:
        if not 1 <= weight <= MAX_WEIGHT:
            raise ValueError(f"weight must be 1..{MAX_WEIGHT}, got {weight}")
        self.url = url
        self.weight = weight
        self.policy = policy
        self.state = EndpointState.UNKNOWN
        self.in_flight = 0
        self.probe_passes = 0
        self.probe_failures = 0
        self.request_failures = 0
        self.ejections = 0
        self.ejected_until: float | None = None
        self.last_ejection_end: float | None = None
        self.ready_since: float | None = None
        self.last_probe_ok: bool | None = None
        self.probe_failed_while_ejected = False
        self.requests = 0
        self.errors = 0
        self.probed = probed
        self._skip_first_ramp = initial
        self.on_move: Callable[[], None] | None = None  # told after every state change
        if not probed:
            self._move(EndpointState.READY, now)  # without probes there is nothing to wait for

    def __repr__(self) -> str:
        return f"Endpoint({self.url!r}, {self.state.value}, weight={self.weight})"

    @property
    def available(self) -> bool:
        """Whether new requests may be sent to this endpoint."""
        return self.state is EndpointState.READY

    def _move(self, target: EndpointState, now: float) -> None:
        if target not in TRANSITIONS[self.state]:
            raise IllegalTransition(self.url, self.state, target)
        self.state = target
        if target is EndpointState.READY:
            self.ready_since = None if self._skip_first_ramp else now
            self._skip_first_ramp = False
        if self.on_move is not None:
            self.on_move()

    def effective_weight(self, now: float) -> float:
        """The weight the pickers use: ``weight`` scaled by the slow-start ramp."""
        ramp = self.policy.slow_start
        if ramp <= 0 or self.ready_since is None:
            return float(self.weight)
        elapsed = now - self.ready_since
        if elapsed >= ramp:
            return float(self.weight)
        fraction = max(SLOW_START_MIN_FRACTION, elapsed / ramp)
        return self.weight * fraction

    def ramped(self, now: float) -> bool:
        """Whether slow start is over (or never applied): the effective weight is the weight."""
        ramp = self.policy.slow_start
        return ramp <= 0 or self.ready_since is None or now - self.ready_since >= ramp

    # -- active probes --------------------------------------------------------------------

    def probe_passed(self, now: float) -> bool:
        """Record a passing probe. Returns True when the state changed."""
        self.last_probe_ok = True
        self.probe_failures = 0
        self.probe_passes += 1
        if self.probe_passes < self.policy.rise:
            return False
        if self.state in (EndpointState.UNKNOWN, EndpointState.DOWN) or (
            self.state is EndpointState.EJECTED and self.probe_failed_while_ejected
        ):
            self.request_failures = 0
            self.ejected_until = None
            self._move(EndpointState.READY, now)
            return True
        return False

    def probe_failed(self, now: float) -> bool:
        """Record a failing probe. Returns True when the state changed."""
        self.last_probe_ok = False
        self.probe_passes = 0
        self.probe_failures += 1
        if self.state is EndpointState.EJECTED:
            self.probe_failed_while_ejected = True
        if (
            self.state in (EndpointState.UNKNOWN, EndpointState.READY, EndpointState.EJECTED)
            and self.probe_failures >= self.policy.fall
        ):
            self.ejected_until = None
            self._move(EndpointState.DOWN, now)
            return True
        return False

    # -- passive outcomes -----------------------------------------------------------------

    def begin_request(self) -> None:
        """Count a request sent to this endpoint (call :meth:`end_request` when it ends)."""
        self.in_flight += 1
        self.requests += 1

    def end_request(self, outcome: Outcome, now: float, *, may_eject: bool = True) -> bool:
        """Record how a request ended. Returns True when it ejected the endpoint.

        Args:
            outcome: how the request ended.
            now: the current time.
            may_eject: False when the pool already has as many endpoints ejected as it allows.
        """
        self.in_flight = max(0, self.in_flight - 1)
        if outcome is Outcome.ABANDONED:
            return False
        if outcome is Outcome.SUCCESS:
            self.request_failures = 0
            return False
        self.errors += 1
        self.request_failures += 1
        if (
            may_eject
            and self.policy.eject_after > 0
            and self.state is EndpointState.READY
            and self.request_failures >= self.policy.eject_after
        ):
            self._eject(now)
            return True
        return False

    def _eject(self, now: float) -> None:
        if self.last_ejection_end is not None and self.ejections > 0:
            forgiven = math.floor((now - self.last_ejection_end) / self.policy.ejection_decay)
            self.ejections = max(0, self.ejections - forgiven)
        self.ejections += 1
        duration = min(self.policy.base_ejection * self.ejections, self.policy.max_ejection)
        self.ejected_until = now + duration
        self.request_failures = 0
        self.probe_failed_while_ejected = False
        self._move(EndpointState.EJECTED, now)

    def ejection_expired(self, now: float) -> bool:
        """Return an EJECTED endpoint to READY once its interval has passed.

        Returns:
            True when the endpoint went back into rotation.
        """
        if self.state is not EndpointState.EJECTED or self.ejected_until is None:
            return False
        if now < self.ejected_until:
            return False
        self.ejected_until = None
        self.last_ejection_end = now
        self._move(EndpointState.READY, now)
        return True

    # -- membership -----------------------------------------------------------------------

    def drain(self, now: float) -> bool:
        """Stop sending new requests here. Returns True when the state changed."""
        if self.state is EndpointState.DRAINING:
            return False
        self.ejected_until = None
        self._move(EndpointState.DRAINING, now)
        return True

    def restore(self, now: float) -> bool:
        """Take back a DRAINING endpoint (it was re-added); it starts over as UNKNOWN.

        Returns:
            True when the state changed.
        """
        if self.state is not EndpointState.DRAINING:
            return False
        self.probe_passes = self.probe_failures = self.request_failures = 0
        self._move(EndpointState.UNKNOWN, now)
        if not self.probed:
            self._move(EndpointState.READY, now)
        return True

    @property
    def drained(self) -> bool:
        """True once a DRAINING endpoint has nothing in flight and can be forgotten."""
        return self.state is EndpointState.DRAINING and self.in_flight == 0

    def statistics(self, now: float) -> EndpointSnapshot:
        """A frozen snapshot of this endpoint."""
        return EndpointSnapshot(
            url=self.url,
            state=self.state,
            weight=self.weight,
            effective_weight=self.effective_weight(now) if self.available else 0.0,
            in_flight=self.in_flight,
            consecutive_probe_passes=self.probe_passes,
            consecutive_probe_failures=self.probe_failures,
            consecutive_request_failures=self.request_failures,
            ejections=self.ejections,
            ejected_until=self.ejected_until,
            last_probe_ok=self.last_probe_ok,
            requests=self.requests,
            errors=self.errors,
        )
