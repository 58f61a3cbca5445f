"""The life of a work item as a state machine, and the retry decision (sans-IO: no clock).

::

    QUEUED ──lease──► LEASED ──ack──► DONE
      ▲  ▲              │ │ │
      │  └───expire─────┘ │ └──dead_letter──► DEAD ──requeue──► QUEUED
      │                   nack
      │                   ▼
      └────due──────── FAILED  (waits for its backoff, then may be leased again)

An item is leased with a fresh receipt token and its attempt counter goes up by one. When the
lease runs out without an ack (the worker died or hung) the item is queued again at once; a
failure (``nack``) waits for an exponential backoff with jitter. When the attempts are used
up, a failure or an expired lease moves the item to the dead-letter set instead, where it
stays until someone requeues it.

Backends persist these states; they receive the decisions made here (the next visible time,
or "dead") as plain values, so the same rules hold on every backend. Time is always passed
in as ``now`` (seconds since the epoch) and randomness as a float in ``[0, 1)``.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from podkit.errors import PodkitError

DEFAULT_MAX_ATTEMPTS = 5  # enough for transient faults; a poison item reaches DEAD in minutes
DEFAULT_BACKOFF_BASE = 1.0  # seconds before the first retry
DEFAULT_BACKOFF_FACTOR = 2.0  # doubling: 1 s, 2 s, 4 s, 8 s...
DEFAULT_BACKOFF_CAP = 300.0  # five minutes: a retry later than that is better done by a person
DEFAULT_BACKOFF_JITTER = 0.5  # up to half the delay is random, so failed items spread out


class ItemState(enum.Enum):
    QUEUED = "queued"
    LEASED = "leased"
    DONE = "done"
    FAILED = "failed"
    DEAD = "dead"


class ItemEvent(enum.Enum):
    LEASE = "lease"
    EXTEND = "extend"
    ACK = "ack"
    NACK = "nack"
    EXPIRE = "expire"
    DEAD_LETTER = "dead_letter"
    DUE = "due"
    REQUEUE = "requeue"


TRANSITIONS: dict[tuple[ItemState, ItemEvent], ItemState] = {
    (ItemState.QUEUED, ItemEvent.LEASE): ItemState.LEASED,
    (ItemState.FAILED, ItemEvent.DUE): ItemState.QUEUED,
    # A failed item whose backoff has passed is leased directly (DUE then LEASE in one step).
    (ItemState.FAILED, ItemEvent.LEASE): ItemState.LEASED,
    (ItemState.LEASED, ItemEvent.EXTEND): ItemState.LEASED,
    (ItemState.LEASED, ItemEvent.ACK): ItemState.DONE,
    (ItemState.LEASED, ItemEvent.NACK): ItemState.FAILED,
    (ItemState.LEASED, ItemEvent.EXPIRE): ItemState.QUEUED,
    (ItemState.LEASED, ItemEvent.DEAD_LETTER): ItemState.DEAD,
    (ItemState.DEAD, ItemEvent.REQUEUE): ItemState.QUEUED,
}


class IllegalItemTransition(PodkitError):
    """An event that the item state machine does not allow in the current state (a bug)."""


def transition(state: ItemState, event: ItemEvent) -> ItemState:
    """The state after ``event``.

    Raises:
        IllegalItemTransition: ``event`` cannot happen in ``state``.
    """
    try:
        return TRANSITIONS[(state, event)]
    except KeyError:
        raise IllegalItemTransition(f"an item cannot {event.value} while {state.value}") from None


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """Exponential backoff with jitter: ``min(cap, base * factor**(attempt-1))``, of which up
    to ``jitter`` (a fraction) is taken off at random.

    Attributes:
        base: seconds before the first retry.
        factor: growth per attempt.
        cap: the longest delay.
        jitter: fraction of the delay that is random (0 = none, 1 = "full jitter").
    """

    base: float = DEFAULT_BACKOFF_BASE
    factor: float = DEFAULT_BACKOFF_FACTOR
    cap: float = DEFAULT_BACKOFF_CAP
    jitter: float = DEFAULT_BACKOFF_JITTER

    def __post_init__(self) -> None:
        if self.base < 0 or self.cap < 0:
            raise ValueError("backoff base and cap must not be negative")
        if self.factor < 1:
            raise ValueError("backoff factor must be at least 1")
        if not 0 <= self.jitter <= 1:
            raise ValueError("backoff jitter must be between 0 and 1")

    def delay(self, attempt: int, *, rand: float) -> float:
        """Seconds to wait after the ``attempt``-th (1-based) failure; ``rand`` in [0, 1)."""
        exponent = max(0, attempt - 1)
        # Bound the exponent so a huge attempt count cannot overflow the float.
        nominal = min(self.cap, self.base * self.factor ** min(exponent, 64))
        return nominal * (1.0 - self.jitter * rand)


@dataclass(frozen=True, slots=True)
class Retry:
    """Decision: the item goes to FAILED and becomes visible again at ``visible_at``."""

    visible_at: float
    state: ItemState = ItemState.FAILED


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """Decision: the item's attempts are used up; it goes to the dead-letter set."""

    state: ItemState = ItemState.DEAD


def decide_failure(
    *,
    attempt: int,
    max_attempts: int,
    now: float,
    policy: RetryPolicy,
    rand: float,
    delay: float | None = None,
) -> Retry | DeadLetter:
    """What happens to a leased item whose processing failed (``nack``).

    Args:
        attempt: the delivery that failed (1 for the first).
        max_attempts: deliveries allowed in total.
        now: the current time (seconds since the epoch).
        policy: the backoff to apply when ``delay`` is not given.
        rand: a random number in [0, 1) for the jitter.
        delay: an explicit delay chosen by the caller instead of the backoff.

    Returns:
        :class:`Retry` with the time the item is visible again, or :class:`DeadLetter`.
    """
    if attempt >= max_attempts:
        transition(ItemState.LEASED, ItemEvent.DEAD_LETTER)
        return DeadLetter()
    wait = policy.delay(attempt, rand=rand) if delay is None else max(0.0, delay)
    transition(ItemState.LEASED, ItemEvent.NACK)
    return Retry(visible_at=now + wait)


def decide_expiry(*, attempt: int, max_attempts: int) -> ItemState:
    """The state of an item whose lease ran out: QUEUED again, or DEAD when out of attempts.

    Backends that reclaim leases inside the store (the redis Lua scripts, the sqlite
    transaction) apply exactly this rule.
    """
    if attempt >= max_attempts:
        return transition(ItemState.LEASED, ItemEvent.DEAD_LETTER)
    return transition(ItemState.LEASED, ItemEvent.EXPIRE)
