"""The pool: membership, health and picking for one balancer, without I/O.

Theory of operation. :class:`EndpointPool` owns the :class:`Endpoint` objects and a
:class:`Picker`. The shell asks it to :meth:`~EndpointPool.choose` an endpoint for each
attempt (excluding those the request already tried), reports how each attempt ended and what
each probe saw, and hands it the configured membership whenever it changes. Each call returns
the state transitions it caused, so the shell can log them and update metrics (decide, then
act). ``now`` is always passed in.

Two pool-wide rules sit above the per-endpoint state machine:

* at most ``max_ejected_fraction`` of the endpoints may be ejected at once (at least one),
  like Envoy's ``max_ejection_percent``: passive detection must not empty a pool because a
  shared dependency failed;
* an endpoint removed from membership is DRAINING until its in-flight requests finish and is
  then forgotten; one drained by hand (admin) stays listed until it is restored.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from podkit.serving.balance._backends_file import BackendSpec
from podkit.serving.balance._endpoint import (
    Endpoint,
    EndpointSnapshot,
    EndpointState,
    HealthPolicy,
    Outcome,
)
from podkit.serving.balance._pickers import Picker

DEFAULT_MAX_EJECTED_FRACTION = 0.5  # never let passive detection eject more than half


@dataclass(frozen=True, slots=True)
class Transition:
    """One endpoint changed state (for logs and metrics)."""

    url: str
    source: EndpointState | None  # None: the endpoint was just added
    target: EndpointState | None  # None: the endpoint was forgotten
    reason: str


@dataclass(frozen=True, slots=True)
class PoolStatistics:
    """A frozen view of the pool."""

    endpoints: tuple[EndpointSnapshot, ...]
    ready: int
    total: int


class EndpointPool:
    """Membership, health and picking for one balancer.

    Args:
        picker: chooses among READY candidates.
        policy: health thresholds for every endpoint.
        probed: whether active probes run (if not, endpoints start READY).
        max_ejected_fraction: share of the endpoints that may be ejected at once.
    """

    def __init__(
        self,
        picker: Picker,
        *,
        policy: HealthPolicy | None = None,
        probed: bool = True,
        max_ejected_fraction: float = DEFAULT_MAX_EJECTED_FRACTION,
    ) -> None:
        if not 0.0 <= max_ejected_fraction <= 1.0:
            raise ValueError("max_ejected_fraction must be within 0..1")
        self.picker = picker
        self.policy = policy if policy is not None else HealthPolicy()
        self.probed = probed
        self.max_ejected_fraction = max_ejected_fraction
        self._endpoints: dict[str, Endpoint] = {}
        self._configured: set[str] = set()
        self._manual_drain: set[str] = set()
        self._started = False  # the first update() is the initial membership
        # READY endpoints, kept until any endpoint changes state or weight: pickers are
        # handed the same tuple while it holds, and may cache what they derive from it.
        self._ready: tuple[Endpoint, ...] | None = None

    def _changed(self) -> None:
        self._ready = None

    def __len__(self) -> int:
        return len(self._endpoints)

    def __contains__(self, url: object) -> bool:
        return url in self._endpoints

    def get(self, url: str) -> Endpoint | None:
        """The endpoint with this URL, if the pool holds it."""
        return self._endpoints.get(url)

    @property
    def endpoints(self) -> list[Endpoint]:
        """Every endpoint the pool holds, in the order they were added."""
        return list(self._endpoints.values())

    def probe_targets(self) -> list[Endpoint]:
        """Endpoints that active probes should check (all but those being drained)."""
        return [e for e in self._endpoints.values() if e.state is not EndpointState.DRAINING]

    # -- membership -----------------------------------------------------------------------

    def update(self, specs: Iterable[BackendSpec], now: float) -> list[Transition]:
        """Make the pool's membership match ``specs``.

        New URLs are added (UNKNOWN until probed, or READY without probes); weights of
        known ones are updated; missing ones start draining. Returns the transitions.
        """
        wanted = {spec.url: spec for spec in specs}
        events: list[Transition] = []
        for url, spec in wanted.items():
            endpoint = self._endpoints.get(url)
            if endpoint is None:
                endpoint = Endpoint(
                    url,
                    weight=spec.weight,
                    policy=self.policy,
                    now=now,
                    probed=self.probed,
                    initial=not self._started,
                )
                endpoint.on_move = self._changed
                self._endpoints[url] = endpoint
                events.append(Transition(url, None, endpoint.state, "added"))
                continue
            endpoint.weight = spec.weight
            if url not in self._configured and url not in self._manual_drain:
                before = endpoint.state
                if endpoint.restore(now):
                    events.append(Transition(url, before, endpoint.state, "added back"))
        for url in self._configured - set(wanted):
            endpoint = self._endpoints.get(url)
            if endpoint is None:
                continue
            before = endpoint.state
            if endpoint.drain(now):
                events.append(Transition(url, before, endpoint.state, "removed"))
        self._configured = set(wanted)
        self._started = True
        self._ready = None  # weights may have changed
        events.extend(self._forget_drained())
        return events

    @property
    def drained_by_hand(self) -> frozenset[str]:
        """The endpoints drained by hand (and not taken back)."""
        return frozenset(self._manual_drain)

    def drain(self, url: str, now: float) -> list[Transition]:
        """Drain one endpoint by hand: no new requests until :meth:`undrain`.

        Raises:
            KeyError: the pool has no such endpoint.
        """
        endpoint = self._endpoints[url]
        self._manual_drain.add(url)
        before = endpoint.state
        if endpoint.drain(now):
            return [Transition(url, before, endpoint.state, "drained by hand")]
        return []

    def undrain(self, url: str, now: float) -> list[Transition]:
        """Take back an endpoint drained by hand (it is probed again from UNKNOWN).

        Raises:
            KeyError: the pool has no such endpoint.
        """
        endpoint = self._endpoints[url]
        self._manual_drain.discard(url)
        if url not in self._configured:
            return []
        before = endpoint.state
        if endpoint.restore(now):
            return [Transition(url, before, endpoint.state, "restored by hand")]
        return []

    def _forget_drained(self) -> list[Transition]:
        events = []
        for url, endpoint in list(self._endpoints.items()):
            if endpoint.drained and url not in self._configured:
                del self._endpoints[url]
                self._ready = None
                self._manual_drain.discard(url)
                forget = getattr(self.picker, "forget", None)
                if forget is not None:
                    forget(url)
                events.append(Transition(url, EndpointState.DRAINING, None, "drained"))
        return events

    # -- picking --------------------------------------------------------------------------

    def expire_ejections(self, now: float) -> list[Transition]:
        """Return ejected endpoints whose interval has passed to rotation."""
        return [
            Transition(endpoint.url, EndpointState.EJECTED, endpoint.state, "ejection over")
            for endpoint in self._endpoints.values()
            if endpoint.ejection_expired(now)
        ]

    def candidates(self, *, exclude: Sequence[str] = ()) -> Sequence[Endpoint]:
        """READY endpoints not in ``exclude``.

        Without ``exclude`` this is one tuple that stays the same object until an endpoint
        changes state or weight (pickers may cache what they compute from it).
        """
        if not exclude:
            ready = self._ready
            if ready is None:
                ready = self._ready = tuple(e for e in self._endpoints.values() if e.available)
            return ready
        return [e for e in self._endpoints.values() if e.available and e.url not in exclude]

    def choose(
        self, *, now: float, key: str | None = None, exclude: Sequence[str] = ()
    ) -> Endpoint | None:
        """Pick an endpoint for one attempt, or None when no READY endpoint is left.

        Call :meth:`expire_ejections` first (the shell does it on a timer or per request).
        """
        candidates = self.candidates(exclude=exclude)
        if not candidates:
            return None
        return self.picker.pick(candidates, now=now, key=key)

    # -- outcomes -------------------------------------------------------------------------

    def begin(self, endpoint: Endpoint) -> None:
        """An attempt is being sent to ``endpoint``."""
        endpoint.begin_request()

    def end(self, endpoint: Endpoint, outcome: Outcome, now: float) -> list[Transition]:
        """An attempt on ``endpoint`` ended with ``outcome``."""
        if outcome is Outcome.SUCCESS:  # the common case, without the general bookkeeping
            if endpoint.in_flight > 0:
                endpoint.in_flight -= 1
            endpoint.request_failures = 0
            if endpoint.state is EndpointState.DRAINING and endpoint.in_flight == 0:
                return self._forget_drained()
            return []
        before = endpoint.state
        events = []
        may_eject = outcome not in (Outcome.SUCCESS, Outcome.ABANDONED) and self._may_eject()
        if endpoint.end_request(outcome, now, may_eject=may_eject):
            events.append(
                Transition(endpoint.url, before, endpoint.state, f"ejected ({outcome.value})")
            )
        if endpoint.drained:
            events.extend(self._forget_drained())
        return events

    def _may_eject(self) -> bool:
        ejected = sum(1 for e in self._endpoints.values() if e.state is EndpointState.EJECTED)
        allowed = max(1, math.floor(self.max_ejected_fraction * len(self._endpoints)))
        return self.max_ejected_fraction > 0 and ejected < allowed

    def probe_result(self, url: str, ok: bool, now: float) -> list[Transition]:
        """Record an active probe's result (ignored when the endpoint has left)."""
        endpoint = self._endpoints.get(url)
        if endpoint is None or endpoint.state is EndpointState.DRAINING:
            return []
        before = endpoint.state
        changed = endpoint.probe_passed(now) if ok else endpoint.probe_failed(now)
        if not changed:
            return []
        reason = "probes passed" if ok else "probes failed"
        return [Transition(url, before, endpoint.state, reason)]

    def statistics(self, now: float) -> PoolStatistics:
        """A frozen snapshot of every endpoint."""
        snaps = tuple(e.statistics(now) for e in self._endpoints.values())
        ready = sum(1 for s in snaps if s.state is EndpointState.READY)
        return PoolStatistics(endpoints=snaps, ready=ready, total=len(snaps))
