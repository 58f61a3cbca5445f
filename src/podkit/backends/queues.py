"""The queue backend interface, its records, and the URL that picks a backend.

A backend stores items and applies decisions; it does not make them. The public
:class:`podkit.queue.Queue` computes backoff and dead-lettering with the sans-IO core
(:mod:`podkit.batch.queue.states`) and passes plain values (``visible_at``, ``dead``) here.
The one rule a backend applies by itself is lease expiry, because it must be atomic with
leasing: an expired lease is queued again, or dead-lettered when its attempts are used up
(:func:`podkit.batch.queue.states.decide_expiry`).

Every operation takes ``now`` (seconds since the epoch) from the caller, so a test can drive
time and so all backends follow the same clock rules. Every backend passes the contract
suite in ``tests/queue/test_contract.py``.
"""

from __future__ import annotations

import abc
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal
from urllib.parse import urlsplit

from podkit.errors import ConfigError

Encoding = Literal["bytes", "json"]

QUEUE_NAME_PATTERN = re.compile(r"^[A-Za-z0-9_.\-]{1,128}$")
RATE_BUCKET_SECONDS = 10  # rates are counted in 10 s buckets...
RATE_WINDOW_BUCKETS = 6  # ...and reported over the last minute
MAX_PRIORITY = 1000  # |priority| bound; keeps redis' ready score exact in a double
RECLAIM_BATCH = 1000  # expired leases / due items moved per lease call (bounds one call's work)


@dataclass(frozen=True, slots=True)
class NewItem:
    """An item to store: its body and the decisions already made about it."""

    id: str
    body: bytes
    encoding: Encoding
    key: str | None
    priority: int
    visible_at: float
    max_attempts: int


@dataclass(frozen=True, slots=True)
class PutResult:
    """Outcome of a put: the item's id, and False when an item with the key already existed."""

    id: str
    created: bool


@dataclass(frozen=True, slots=True)
class LeasedRecord:
    """A stored item as handed out by ``lease``: fields plus the lease token and deadline."""

    id: str
    body: bytes
    encoding: Encoding
    key: str | None
    priority: int
    attempt: int
    max_attempts: int
    enqueued_at: float
    token: str
    deadline: float


@dataclass(frozen=True, slots=True)
class DeadRecord:
    """An item in the dead-letter set."""

    id: str
    body: bytes
    encoding: Encoding
    key: str | None
    priority: int
    attempts: int
    max_attempts: int
    enqueued_at: float
    died_at: float
    error: str


@dataclass(frozen=True, slots=True)
class QueueStats:
    """Counts and rates of one queue (a snapshot; not atomic across fields on redis).

    Attributes:
        ready: items that can be leased now.
        delayed: items waiting for their delay or backoff.
        leased: items held by a worker.
        dead: items in the dead-letter set.
        put_rate, ack_rate, fail_rate, dead_rate: per second over the last minute.
        put_total, ack_total, fail_total, dead_total: since the queue was created.
    """

    ready: int
    delayed: int
    leased: int
    dead: int
    put_rate: float
    ack_rate: float
    fail_rate: float
    dead_rate: float
    put_total: int
    ack_total: int
    fail_total: int
    dead_total: int


STAT_KINDS = ("put", "ack", "fail", "dead")


RATE_WINDOW_SECONDS = RATE_BUCKET_SECONDS * RATE_WINDOW_BUCKETS


def build_counts(
    ready: int,
    delayed: int,
    leased: int,
    dead: int,
    window: dict[str, int],
    totals: dict[str, int],
) -> QueueStats:
    """A :class:`QueueStats` from item counts and per-kind counters (window and totals)."""
    return QueueStats(
        ready=ready,
        delayed=delayed,
        leased=leased,
        dead=dead,
        put_rate=window.get("put", 0) / RATE_WINDOW_SECONDS,
        ack_rate=window.get("ack", 0) / RATE_WINDOW_SECONDS,
        fail_rate=window.get("fail", 0) / RATE_WINDOW_SECONDS,
        dead_rate=window.get("dead", 0) / RATE_WINDOW_SECONDS,
        put_total=totals.get("put", 0),
        ack_total=totals.get("ack", 0),
        fail_total=totals.get("fail", 0),
        dead_total=totals.get("dead", 0),
    )


def rate_buckets(now: float) -> tuple[int, list[int]]:
    """The current rate bucket and the complete buckets that make up the rate window."""
    current = int(now // RATE_BUCKET_SECONDS)
    return current, list(range(current - RATE_WINDOW_BUCKETS, current))


class QueueBackend(abc.ABC):
    """Storage of work items for any number of named queues.

    Receipts are ``(item_id, token)`` pairs; a token is valid while the item is leased under
    it (even past its deadline, until another lease call reclaims the item).
    """

    @abc.abstractmethod
    async def put(self, queue: str, items: Sequence[NewItem], *, now: float) -> list[PutResult]:
        """Store items; an item whose key is known keeps the existing item (no-op)."""

    @abc.abstractmethod
    async def lease(
        self, queue: str, n: int, *, now: float, visibility: float, token: str
    ) -> list[LeasedRecord]:
        """Reclaim expired leases, then lease up to ``n`` visible items, highest priority
        first and oldest first within a priority. Atomic: no item is leased twice at once.
        Tokens are ``f"{token}:{i}"`` so every receipt is unique."""

    @abc.abstractmethod
    async def ack(
        self, queue: str, receipts: Sequence[tuple[str, str]], *, now: float, key_ttl: float
    ) -> list[bool]:
        """Finish leased items. False for a receipt that is no longer valid. The item's
        idempotency key is remembered for ``key_ttl`` seconds more."""

    @abc.abstractmethod
    async def nack(
        self,
        queue: str,
        receipt: tuple[str, str],
        *,
        now: float,
        visible_at: float | None,
        error: str,
    ) -> bool:
        """Fail a leased item: visible again at ``visible_at``, or dead when it is None."""

    @abc.abstractmethod
    async def extend(
        self, queue: str, receipts: Sequence[tuple[str, str]], *, deadline: float
    ) -> list[bool]:
        """Move the deadline of leased items; False for receipts no longer valid."""

    @abc.abstractmethod
    async def counts(self, queue: str, *, now: float) -> QueueStats:
        """Counts and rates of the queue."""

    @abc.abstractmethod
    async def dead(self, queue: str, *, limit: int) -> list[DeadRecord]:
        """Dead items, oldest death first."""

    @abc.abstractmethod
    async def requeue_dead(self, queue: str, ids: Sequence[str] | None, *, now: float) -> int:
        """Queue dead items again with fresh attempts (all of them when ``ids`` is None)."""

    @abc.abstractmethod
    async def purge(self, queue: str) -> None:
        """Delete everything of the queue (items, keys, counters)."""

    @abc.abstractmethod
    async def aclose(self) -> None:
        """Release connections. Idempotent."""


def check_queue_name(name: str) -> str:
    """Return ``name`` if it is a valid queue name.

    Raises:
        ConfigError: it is empty, too long or has characters other than letters, digits, ``_.-``.
    """
    if not QUEUE_NAME_PATTERN.match(name):
        raise ConfigError(
            f"invalid queue name {name!r}: use 1-128 letters, digits, '_', '.' or '-'"
        )
    return name


def check_queue_url(url: str) -> str:
    """Return ``url`` if a backend exists for it (without connecting).

    Raises:
        ConfigError: the scheme is unknown or a sqlite URL has no path.
    """
    scheme = urlsplit(url).scheme
    if scheme == "sqlite":
        sqlite_path(url)
    elif scheme not in ("redis", "rediss", "unix"):
        raise ConfigError(
            f"unknown queue URL {url!r}: use sqlite:///path.db or redis://host:port/db"
        )
    return url


def open_backend(url: str, *, read_only: bool = False) -> QueueBackend:
    """The backend for ``url``.

    ``sqlite:///relative/path.db`` or ``sqlite:////absolute/path.db`` (as in SQLAlchemy) and
    ``redis://host:port/db`` (``rediss://`` and ``unix://`` too). ``read_only``: a SQLite
    file is opened read-only and never created (Redis creates nothing by reading anyway).

    Raises:
        ConfigError: the scheme is unknown or the URL has no path.
    """
    scheme = urlsplit(url).scheme
    if scheme == "sqlite":
        from podkit.backends.sqlite_queue import SqliteQueueBackend

        return SqliteQueueBackend(sqlite_path(url), read_only=read_only)
    if scheme in ("redis", "rediss", "unix"):
        from podkit.backends.redis_queue import RedisQueueBackend

        return RedisQueueBackend(url)
    raise ConfigError(f"unknown queue URL {url!r}: use sqlite:///path.db or redis://host:port/db")


def sqlite_path(url: str) -> str:
    """The file path of a ``sqlite:///...`` URL (one leading slash belongs to the URL)."""
    if not url.startswith("sqlite:///") or len(url) <= len("sqlite:///"):
        raise ConfigError(f"invalid sqlite URL {url!r}: use sqlite:///path.db")
    return url[len("sqlite:///") :]
