"""The lease state machine of one elector: sans-IO, time passed in.

Theory of operation (a lease in the sense of Gray & Cheriton, 1989). An elector is a
FOLLOWER, a CANDIDATE trying to take the lease, or the LEADER holding it. The caller asks
:meth:`LeaseElector.next` what to do at ``now`` and reports what happened; the elector never
reads a clock or does I/O.

Safety rests on one rule: the holder measures its lease from the moment *before it sent* the
request that granted or renewed it (``started``), and believes it leads only until
``started + ttl - safety_margin`` (``valid_until``). The backend keeps the lease for ``ttl``
from when it *received* that request, which is later; so the holder's belief always ends
before anyone else can be granted the lease, even when replies are slow or lost. The margin
covers clock-rate drift between machines and timer lateness. A renewal whose answer arrives
after ``valid_until`` extends nothing: the holder has already stepped down. ``ttl`` is the
ttl the backend *granted*: when it differs from the one asked for (etcd grants whole seconds,
shorter than the election's ttl), the term runs on :meth:`LeaseTiming.scaled` timing.

Liveness: the leader renews every ``renew_interval`` (well before expiry) and retries failed
renewals every ``retry_interval`` until ``valid_until``; a candidate tries every
``retry_interval`` (sooner when the backend reports a change). A candidate whose backend
cannot be reached backs off instead: ``retry_interval`` doubling per failure up to
:data:`MAX_UNREACHABLE_BACKOFF`, with jitter so that the candidates of a fleet do not retry in
step; any answer from the backend resets it.
"""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass

from podkit.errors import ConfigError, PodkitError

DEFAULT_TTL = 2.0  # seconds a lease lasts without renewal: the failover bound
RENEW_FRACTION = 1 / 3  # renew at a third of the ttl: two more tries fit before the deadline
RETRY_FRACTION = 1 / 10  # candidates and failed renewals retry ten times per ttl
MIN_RETRY_INTERVAL = 0.05  # never hammer the backend faster than 20 requests a second
MAX_RETRY_INTERVAL = 1.0  # a free lease is noticed within a second whatever the ttl
SAFETY_FRACTION = 0.1  # 10% of the ttl covers clock drift (ppm) and timer lateness (ms)
MAX_SAFETY_MARGIN = 1.0
MIN_TTL = 0.1  # below this, scheduling noise alone exceeds the safety margin
MAX_UNREACHABLE_BACKOFF = 5.0  # a backend that is back is tried within 5 s; a warning per 5 s
UNREACHABLE_JITTER = 0.2  # ±20 % on each backoff delay, so candidates do not retry in step


class Role(enum.Enum):
    """Where an elector is in the election."""

    FOLLOWER = "follower"
    CANDIDATE = "candidate"
    LEADER = "leader"


TRANSITIONS: dict[Role, frozenset[Role]] = {
    Role.FOLLOWER: frozenset({Role.CANDIDATE}),
    Role.CANDIDATE: frozenset({Role.LEADER, Role.FOLLOWER}),
    Role.LEADER: frozenset({Role.FOLLOWER}),
}


class IllegalTransition(PodkitError):
    """An elector was asked to move between roles the transition table does not allow."""


class Action(enum.Enum):
    """What the shell must do next."""

    WAIT = "wait"  # sleep until ``Decision.at`` (or a backend change)
    ACQUIRE = "acquire"  # send one acquire attempt, cut at ``Decision.timeout``
    RENEW = "renew"  # send one renewal, cut at ``Decision.timeout``
    STEP_DOWN = "step_down"  # leadership can no longer be guaranteed: set ``lost`` now


@dataclass(frozen=True, slots=True)
class Decision:
    """An action, when to do it (``at``) and how long its request may take (``timeout``)."""

    action: Action
    at: float
    timeout: float = 0.0


@dataclass(frozen=True, slots=True)
class LeaseTiming:
    """The timing of a lease. Build it with :meth:`for_ttl` unless you need to tune it.

    Raises:
        ConfigError: the values cannot be safe or live (e.g. renewing after the deadline).
    """

    ttl: float
    renew_interval: float
    retry_interval: float
    safety_margin: float

    def __post_init__(self) -> None:
        if not math.isfinite(self.ttl) or self.ttl < MIN_TTL:
            raise ConfigError(f"the ttl must be at least {MIN_TTL}s", path="ttl")
        if self.safety_margin <= 0 or self.safety_margin >= self.ttl / 2:
            raise ConfigError("the safety margin must be above 0 and below ttl/2", path="ttl")
        if not 0 < self.renew_interval < self.ttl - self.safety_margin:
            raise ConfigError(
                "the renew interval must be shorter than the ttl minus the safety margin",
                path="renew_interval",
            )
        if not 0 < self.retry_interval < self.ttl:
            raise ConfigError("the retry interval must be shorter than the ttl", path="retry")

    @classmethod
    def for_ttl(
        cls,
        ttl: float,
        *,
        renew_interval: float | None = None,
        retry_interval: float | None = None,
        safety_margin: float | None = None,
    ) -> LeaseTiming:
        """Defaults derived from ``ttl``: renew at ttl/3, retry at ttl/10 (50 ms to 1 s),
        a safety margin of ttl/10 (at most 1 s)."""
        if not math.isfinite(ttl) or ttl < MIN_TTL:
            raise ConfigError(f"the ttl must be at least {MIN_TTL}s", path="ttl")
        retry = retry_interval or min(
            MAX_RETRY_INTERVAL, max(MIN_RETRY_INTERVAL, ttl * RETRY_FRACTION)
        )
        return cls(
            ttl=ttl,
            renew_interval=renew_interval or ttl * RENEW_FRACTION,
            retry_interval=min(retry, ttl / 2),
            safety_margin=safety_margin or min(MAX_SAFETY_MARGIN, ttl * SAFETY_FRACTION),
        )

    def scaled(self, ttl: float) -> LeaseTiming:
        """This timing for a lease the backend granted for ``ttl`` seconds instead of
        ``self.ttl``: every interval and the margin scale in proportion, so the holder renews
        as many times per lease and steps down at the same fraction of it.

        Raises:
            ConfigError: ``ttl`` is below :data:`MIN_TTL`.
        """
        if ttl == self.ttl:
            return self
        if not math.isfinite(ttl) or ttl < MIN_TTL:
            raise ConfigError(f"the ttl must be at least {MIN_TTL}s", path="ttl")
        factor = ttl / self.ttl
        return LeaseTiming(
            ttl=ttl,
            renew_interval=self.renew_interval * factor,
            retry_interval=self.retry_interval * factor,
            safety_margin=self.safety_margin * factor,
        )


class LeaseElector:
    """The state of one elector in one election (see the module's theory of operation)."""

    def __init__(self, timing: LeaseTiming) -> None:
        self.timing = timing
        # The timing of the lease actually held: the backend may grant another ttl than
        # asked (etcd: whole seconds, chosen for its expiry sweep), and the deadline must
        # come from what was granted.
        self.term_timing = timing
        self.role = Role.FOLLOWER
        self.token: int | None = None
        self.valid_until = -math.inf
        self.lost_reason: str | None = None
        self._next_attempt = -math.inf
        self._next_renew = math.inf
        self.unreachable_in_a_row = 0

    def _move(self, role: Role) -> None:
        if role not in TRANSITIONS[self.role]:
            raise IllegalTransition(f"elector cannot go from {self.role.value} to {role.value}")
        self.role = role

    # -- commands ------------------------------------------------------------------------

    def campaign(self, now: float) -> None:
        """Start trying to take the lease (FOLLOWER → CANDIDATE)."""
        self._move(Role.CANDIDATE)
        self._next_attempt = now
        self.lost_reason = None

    def withdraw(self) -> None:
        """Stop campaigning (CANDIDATE → FOLLOWER)."""
        self._move(Role.FOLLOWER)

    def step_down(self, reason: str) -> int | None:
        """Stop leading now (LEADER → FOLLOWER); returns the token of the term that ended."""
        self._move(Role.FOLLOWER)
        token, self.token = self.token, None
        self.valid_until = -math.inf
        self._next_renew = math.inf
        self.lost_reason = reason
        self.term_timing = self.timing
        return token

    # -- decisions -----------------------------------------------------------------------

    def leads(self, now: float) -> bool:
        """True while leadership is guaranteed at ``now``."""
        return self.role is Role.LEADER and now < self.valid_until

    def next(self, now: float) -> Decision:
        """What to do at ``now``."""
        if self.role is Role.LEADER:
            if now >= self.valid_until:
                return Decision(Action.STEP_DOWN, now)
            if now >= self._next_renew:
                return Decision(Action.RENEW, now, timeout=self.valid_until - now)
            return Decision(Action.WAIT, min(self._next_renew, self.valid_until))
        if self.role is Role.CANDIDATE:
            if now >= self._next_attempt:
                # An answer later than this could not leave a usable lease behind.
                limit = self.timing.ttl - self.timing.safety_margin
                return Decision(Action.ACQUIRE, now, timeout=limit)
            return Decision(Action.WAIT, self._next_attempt)
        return Decision(Action.WAIT, math.inf)

    # -- outcomes ------------------------------------------------------------------------

    def acquired(self, *, token: int, started: float, now: float, ttl: float | None = None) -> bool:
        """The attempt sent at ``started`` was granted ``token``.

        Args:
            token: the fencing token of the grant.
            started: when the attempt was sent (before sending).
            now: when its answer arrived.
            ttl: the ttl the backend granted when it differs from ``timing.ttl``; the
                deadline and the renew interval of this term follow it.

        Returns:
            True if we now lead; False if the answer came too late to be safe (the caller
            must release the grant and stays a candidate).
        """
        if self.role is not Role.CANDIDATE:
            raise IllegalTransition(f"acquired while {self.role.value}")
        self.unreachable_in_a_row = 0
        timing = self.timing if ttl is None else self.timing.scaled(ttl)
        valid_until = started + timing.ttl - timing.safety_margin
        if now >= valid_until:
            self._next_attempt = now + self.timing.retry_interval
            return False
        self._move(Role.LEADER)
        self.term_timing = timing
        self.token = token
        self.valid_until = valid_until
        self._next_renew = started + timing.renew_interval
        return True

    def rejected(self, *, now: float, soon: bool = False) -> None:
        """The attempt found the lease held by someone else."""
        self.unreachable_in_a_row = 0
        if self.role is Role.CANDIDATE:
            self._next_attempt = now if soon else now + self.timing.retry_interval

    def wake(self, *, now: float) -> None:
        """A wait ended (its time came, or the backend reported a change): try at ``now``."""
        if self.role is Role.CANDIDATE:
            self._next_attempt = min(self._next_attempt, now)

    def unreachable(self, *, now: float, rand: float, not_after: float = math.inf) -> float:
        """The attempt got no answer (backend down, timed out): back off.

        Args:
            rand: a uniform random number in ``[0, 1)`` for the jitter.
            not_after: the latest time for the next attempt (the caller's deadline: the
                last attempt is made at it, not a backoff later).

        Returns:
            The seconds until the next attempt: ``retry_interval * 2**(n-1)`` for the n-th
            failure in a row, at most :data:`MAX_UNREACHABLE_BACKOFF`, ±20 %.
        """
        self.unreachable_in_a_row += 1
        if self.role is not Role.CANDIDATE:
            return 0.0
        exponent = min(self.unreachable_in_a_row - 1, 32)  # 2**32 is past any cap
        base = min(MAX_UNREACHABLE_BACKOFF, self.timing.retry_interval * 2.0**exponent)
        delay = base * (1 + UNREACHABLE_JITTER * (2 * rand - 1))
        self._next_attempt = max(now, min(now + delay, not_after))
        return self._next_attempt - now

    def renewed(self, *, started: float, now: float) -> bool:
        """The renewal sent at ``started`` succeeded.

        Returns:
            True if leadership is extended; False if it came after ``valid_until`` (we have
            stepped down or must now).
        """
        if self.role is not Role.LEADER or now >= self.valid_until:
            return False
        timing = self.term_timing
        self.valid_until = max(self.valid_until, started + timing.ttl - timing.safety_margin)
        self._next_renew = started + timing.renew_interval
        return True

    def renew_failed(self, *, now: float, definite: bool) -> None:
        """The renewal failed: ``definite`` when the backend says the lease is not ours,
        otherwise (unreachable, timed out) it is retried until ``valid_until``."""
        if self.role is not Role.LEADER:
            return
        if definite:
            self.valid_until = now  # next() answers STEP_DOWN
            self.lost_reason = "the lease is held by someone else"
        else:
            self._next_renew = now + self.term_timing.retry_interval
