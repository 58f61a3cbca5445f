"""The public work queue: put, lease, ack, nack, extend, stats and the dead-letter set.

:class:`Queue` is a thin asyncio shell. It validates input, encodes items (bytes as they are,
anything else as JSON; never pickle), reads the clock and the random source, asks the sans-IO
core (:mod:`podkit.batch.queue.states`) what a failure means, and hands the decision to the
backend chosen by the URL (:mod:`podkit.backends.queues`).

Delivery is at least once: an item is deleted only by an ack with the receipt of its current
lease. A worker that dies loses its leases when their visibility timeout passes, and the items
are delivered again, so handlers must tolerate running twice (use the item's id or ``key``).
"""

from __future__ import annotations

import json
import random
import secrets
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from types import TracebackType
from typing import Any

from podkit.backends.queues import (
    MAX_PRIORITY,
    DeadRecord,
    Encoding,
    LeasedRecord,
    NewItem,
    PutResult,
    QueueBackend,
    QueueStats,
    check_queue_name,
    open_backend,
)
from podkit.batch.queue.states import (
    DEFAULT_MAX_ATTEMPTS,
    DeadLetter,
    ItemState,
    RetryPolicy,
    decide_failure,
)
from podkit.errors import LeaseLost, UsageError

DEFAULT_VISIBILITY_TIMEOUT = 30.0  # seconds a lease lasts unless extended (SQS default)
DEFAULT_KEY_TTL = 86_400.0  # an acked item's idempotency key is remembered for a day
DEFAULT_MAX_ITEM_BYTES = 1024 * 1024  # 1 MiB: items carry references, not payloads (SQS: 256 KiB)
MAX_LEASE_BATCH = 1000  # items per lease call; bounds one backend transaction
MAX_ERROR_CHARS = 2000  # the stored failure reason is truncated to this


@dataclass(frozen=True, slots=True)
class Receipt:
    """Proof of one lease of one item; needed to ack, nack or extend it.

    Attributes:
        item_id: the item.
        token: unique per delivery; a receipt from an earlier delivery is refused.
        attempt: which delivery this is (1 for the first).
        max_attempts: deliveries allowed before the item is dead-lettered.
        deadline: when the lease runs out unless extended (seconds since the epoch).
    """

    item_id: str
    token: str
    attempt: int
    max_attempts: int
    deadline: float


@dataclass(frozen=True, slots=True)
class Item:
    """A leased work item."""

    id: str
    body: bytes
    encoding: Encoding
    key: str | None
    priority: int
    enqueued_at: float
    receipt: Receipt

    @property
    def attempt(self) -> int:
        return self.receipt.attempt

    @property
    def value(self) -> Any:
        """The item as it was put: bytes, or the decoded JSON value."""
        return decode_item(self.body, self.encoding)


@dataclass(frozen=True, slots=True)
class DeadItem:
    """An item in the dead-letter set, with the reason of its last failure."""

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

    @property
    def value(self) -> Any:
        return decode_item(self.body, self.encoding)


def encode_item(item: Any) -> tuple[bytes, Encoding]:
    """Bytes stay bytes; anything else is encoded as JSON.

    Raises:
        UsageError: the value is not JSON-serialisable.
    """
    if isinstance(item, bytes | bytearray | memoryview):
        return bytes(item), "bytes"
    try:
        return json.dumps(item, separators=(",", ":"), allow_nan=False).encode(), "json"
    except (TypeError, ValueError) as exc:
        raise UsageError(f"queue items are bytes or JSON values: {exc}") from exc


_last_id_ns = 0


def new_item_id() -> str:
    """A unique id that sorts by creation time (32 hex digits: nanoseconds, then random).

    Backends break ties between items that became visible in the same millisecond by id,
    so items put by one process in one batch keep their order.
    """
    global _last_id_ns
    ns = max(time.time_ns(), _last_id_ns + 1)
    _last_id_ns = ns
    return f"{ns:016x}{secrets.token_hex(8)}"


def decode_item(body: bytes, encoding: Encoding) -> Any:
    return json.loads(body) if encoding == "json" else body


@dataclass(frozen=True, slots=True)
class PutRequest:
    """One item for :meth:`Queue.put_many`, with the same options as :meth:`Queue.put`."""

    item: Any
    key: str | None = None
    priority: int = 0
    delay: float = 0.0
    max_attempts: int = DEFAULT_MAX_ATTEMPTS


class Queue:
    """A named work queue in the store at ``url`` (``sqlite:///path.db``, ``redis://h:p/db``).

    Args:
        url: where the queue lives.
        name: the queue's name (letters, digits, ``_.-``).
        retry: backoff for failed items.
        key_ttl: seconds an idempotency key is remembered after its item is acked.
        max_item_bytes: the largest encoded item accepted.
        clock: wall-clock source (seconds since the epoch); all processes must agree on it.
        rand: random source in [0, 1) for the jitter.
        backend: a backend to use instead of opening one from ``url``.
        read_only: only look (stats, dead letters): a SQLite file is opened read-only and
            never created; a missing one is a :class:`~podkit.errors.BackendError`.

    Raises:
        ConfigError: invalid URL or name.
    """

    def __init__(
        self,
        url: str,
        name: str,
        *,
        retry: RetryPolicy | None = None,
        key_ttl: float = DEFAULT_KEY_TTL,
        max_item_bytes: int = DEFAULT_MAX_ITEM_BYTES,
        clock: Callable[[], float] = time.time,
        rand: Callable[[], float] = random.random,
        backend: QueueBackend | None = None,
        read_only: bool = False,
    ) -> None:
        self.url = url
        self.name = check_queue_name(name)
        self.retry = retry or RetryPolicy()
        self.key_ttl = key_ttl
        self.max_item_bytes = max_item_bytes
        self.clock = clock
        self.rand = rand
        self.backend = backend if backend is not None else open_backend(url, read_only=read_only)

    async def __aenter__(self) -> Queue:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close the backend connection."""
        await self.backend.aclose()

    # -- producing ------------------------------------------------------------------------

    def _new_item(self, request: PutRequest, now: float) -> NewItem:
        body, encoding = encode_item(request.item)
        if len(body) > self.max_item_bytes:
            raise UsageError(
                f"item of {len(body)} bytes is larger than the limit of {self.max_item_bytes}"
            )
        if not -MAX_PRIORITY <= request.priority <= MAX_PRIORITY:
            raise UsageError(f"priority must be between -{MAX_PRIORITY} and {MAX_PRIORITY}")
        if request.max_attempts < 1:
            raise UsageError("max_attempts must be at least 1")
        if request.delay < 0:
            raise UsageError("delay must not be negative")
        if request.key is not None and not request.key:
            raise UsageError("an idempotency key must not be empty")
        return NewItem(
            id=new_item_id(),
            body=body,
            encoding=encoding,
            key=request.key,
            priority=request.priority,
            visible_at=now + request.delay,
            max_attempts=request.max_attempts,
        )

    async def put(
        self,
        item: Any,
        *,
        key: str | None = None,
        priority: int = 0,
        delay: float = 0.0,
        max_attempts: int = DEFAULT_MAX_ATTEMPTS,
    ) -> PutResult:
        """Add an item.

        Args:
            item: bytes, or a JSON-serialisable value.
            key: idempotency key: while an item with this key is known (queued, leased,
                dead, or acked less than ``key_ttl`` ago) a put with it is a no-op.
            priority: higher is leased first (-1000..1000).
            delay: seconds before the item can be leased.
            max_attempts: deliveries before the item is dead-lettered.

        Returns:
            The item's id and whether it was created (False: the key was known; the id is
            the existing item's).

        Raises:
            UsageError: invalid item or option.
            BackendError: the store failed.
        """
        request = PutRequest(item, key, priority, delay, max_attempts)
        (result,) = await self.put_many([request])
        return result

    async def put_many(self, requests: Iterable[PutRequest | Any]) -> list[PutResult]:
        """Add many items in one round trip (plain values get the default options)."""
        now = self.clock()
        items = [
            self._new_item(r if isinstance(r, PutRequest) else PutRequest(r), now) for r in requests
        ]
        if not items:
            return []
        return await self.backend.put(self.name, items, now=now)

    # -- consuming ------------------------------------------------------------------------

    async def lease(
        self, n: int = 1, visibility_timeout: float = DEFAULT_VISIBILITY_TIMEOUT
    ) -> list[Item]:
        """Lease up to ``n`` items for ``visibility_timeout`` seconds (an empty list when
        nothing is ready). Highest priority first, oldest first within a priority.

        Raises:
            UsageError: ``n`` or the timeout out of range.
            BackendError: the store failed.
        """
        if not 1 <= n <= MAX_LEASE_BATCH:
            raise UsageError(f"lease between 1 and {MAX_LEASE_BATCH} items at a time")
        if visibility_timeout <= 0:
            raise UsageError("visibility timeout must be positive")
        records = await self.backend.lease(
            self.name, n, now=self.clock(), visibility=visibility_timeout, token=uuid.uuid4().hex
        )
        return [_item(r) for r in records]

    async def ack(self, receipt: Receipt | Item) -> bool:
        """Mark an item done (it is deleted).

        Returns:
            False when the receipt is no longer valid: the lease expired and the item was
            delivered again (or already acked); the other delivery will finish it.
        """
        (ok,) = await self.ack_many([receipt])
        return ok

    async def ack_many(self, receipts: Sequence[Receipt | Item]) -> list[bool]:
        """Ack many items in one round trip; one bool per receipt as in :meth:`ack`."""
        pairs = [(r.item_id, r.token) for r in map(_receipt, receipts)]
        if not pairs:
            return []
        return await self.backend.ack(self.name, pairs, now=self.clock(), key_ttl=self.key_ttl)

    async def nack(
        self, receipt: Receipt | Item, delay: float | None = None, *, error: str = ""
    ) -> ItemState | None:
        """Report that processing failed.

        The item is retried after ``delay`` seconds, or after the retry policy's backoff
        when ``delay`` is None; when its attempts are used up it is dead-lettered.

        Returns:
            ``ItemState.FAILED`` (will be retried), ``ItemState.DEAD``, or None when the
            receipt was no longer valid.
        """
        r = _receipt(receipt)
        now = self.clock()
        decision = decide_failure(
            attempt=r.attempt,
            max_attempts=r.max_attempts,
            now=now,
            policy=self.retry,
            rand=self.rand(),
            delay=delay,
        )
        visible_at = None if isinstance(decision, DeadLetter) else decision.visible_at
        ok = await self.backend.nack(
            self.name,
            (r.item_id, r.token),
            now=now,
            visible_at=visible_at,
            error=error[:MAX_ERROR_CHARS],
        )
        return decision.state if ok else None

    async def extend(self, receipt: Receipt | Item, seconds: float) -> Receipt:
        """Keep a lease for ``seconds`` more from now.

        Returns:
            The receipt with the new deadline.

        Raises:
            LeaseLost: the receipt is no longer valid (the item was delivered again).
        """
        r = _receipt(receipt)
        deadline = self.clock() + seconds
        (ok,) = await self.backend.extend(self.name, [(r.item_id, r.token)], deadline=deadline)
        if not ok:
            raise LeaseLost(f"lease of item {r.item_id} is no longer held")
        return Receipt(r.item_id, r.token, r.attempt, r.max_attempts, deadline)

    async def extend_many(self, receipts: Sequence[Receipt], seconds: float) -> list[bool]:
        """Extend many leases in one round trip; False for those no longer held."""
        if not receipts:
            return []
        deadline = self.clock() + seconds
        pairs = [(r.item_id, r.token) for r in receipts]
        return await self.backend.extend(self.name, pairs, deadline=deadline)

    # -- watching -------------------------------------------------------------------------

    async def stats(self) -> QueueStats:
        """Counts (ready, delayed, leased, dead), rates per second over the last minute and
        totals."""
        return await self.backend.counts(self.name, now=self.clock())

    async def dead(self, limit: int = 100) -> list[DeadItem]:
        """The dead-letter set, oldest death first."""
        return [_dead(r) for r in await self.backend.dead(self.name, limit=limit)]

    async def retry_dead(self, ids: Sequence[str] | None = None) -> int:
        """Queue dead items again with fresh attempts (all when ``ids`` is None).

        Returns:
            How many items were requeued.
        """
        return await self.backend.requeue_dead(self.name, ids, now=self.clock())

    async def purge(self) -> None:
        """Delete every item, key and counter of this queue."""
        await self.backend.purge(self.name)


@asynccontextmanager
async def open_queue(url: str, name: str, **options: Any) -> AsyncIterator[Queue]:
    """``async with open_queue(url, name) as q:`` — a :class:`Queue` closed on exit."""
    queue = Queue(url, name, **options)
    try:
        yield queue
    finally:
        await queue.aclose()


def _receipt(value: Receipt | Item) -> Receipt:
    return value.receipt if isinstance(value, Item) else value


def _item(r: LeasedRecord) -> Item:
    return Item(
        id=r.id,
        body=r.body,
        encoding=r.encoding,
        key=r.key,
        priority=r.priority,
        enqueued_at=r.enqueued_at,
        receipt=Receipt(r.id, r.token, r.attempt, r.max_attempts, r.deadline),
    )


def _dead(r: DeadRecord) -> DeadItem:
    return DeadItem(
        id=r.id,
        body=r.body,
        encoding=r.encoding,
        key=r.key,
        priority=r.priority,
        attempts=r.attempts,
        max_attempts=r.max_attempts,
        enqueued_at=r.enqueued_at,
        died_at=r.died_at,
        error=r.error,
    )
