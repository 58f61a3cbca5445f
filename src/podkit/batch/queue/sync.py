"""A synchronous facade of the work queue, for code without an event loop.

:class:`SyncQueue` owns a private event loop on a daemon thread (started when it is opened,
stopped when it is closed) and an async :class:`~podkit.batch.queue.client.Queue` living on
that loop. Each method submits the matching coroutine with
:func:`asyncio.run_coroutine_threadsafe` and waits for it, up to ``timeout`` seconds. The
methods have the signatures and return types of the async ones and raise the same
exceptions (the original exception object, not a wrapper).

Many threads may call one :class:`SyncQueue` at once (a threaded web server, a thread pool):
their calls run concurrently on the one loop, as they would with one async ``Queue``.

Calling it from a thread that runs an event loop is refused with :class:`UsageError`: the
call would block that loop (and deadlock, if it is the queue's own). Use the async ``Queue``
there.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import random
import threading
import time
from collections.abc import Callable, Coroutine, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from types import TracebackType
from typing import Any, TypeVar

from podkit.backends.queues import PutResult, QueueBackend, QueueStats
from podkit.batch.queue.client import (
    DEFAULT_KEY_TTL,
    DEFAULT_MAX_ITEM_BYTES,
    DEFAULT_VISIBILITY_TIMEOUT,
    DeadItem,
    Item,
    PutRequest,
    Queue,
    Receipt,
)
from podkit.batch.queue.states import DEFAULT_MAX_ATTEMPTS, ItemState, RetryPolicy
from podkit.batch.queue.worker import (
    DEFAULT_CONCURRENCY,
    DEFAULT_PREFETCH,
    QueueWorker,
    python_handler,
)
from podkit.errors import PodkitTimeout, UsageError

# Longest wait for one call, in seconds; longer than the SQLite store's 30 s busy timeout,
# so a store that is stuck reports its own error first.
DEFAULT_CALL_TIMEOUT = 60.0
DEFAULT_DRAIN_TIMEOUT = 10.0  # work(): how long held items may take after the stop
STOP_POLL_INTERVAL = 0.05  # work(): seconds between looks at the stop event

T = TypeVar("T")


def _refuse_in_event_loop(method: str) -> None:
    """Raise when the calling thread runs an event loop: a blocking call would stall it."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return
    if method == "__init__":
        what, hint = "SyncQueue()", "async with Queue(url, name) as queue"
    else:
        what, hint = f"SyncQueue.{method}()", f"await queue.{method}(...)"
    raise UsageError(
        f"{what} called from a thread that runs an event loop, where it would block the "
        f"loop (or deadlock); use the async podkit.queue.Queue there ({hint})"
    )


class SyncQueue:
    """A named work queue with blocking methods; see :class:`~podkit.batch.queue.client.Queue`.

    Args:
        url: where the queue lives (``sqlite:///path.db``, ``redis://h:p/db``).
        name: the queue's name (letters, digits, ``_.-``).
        timeout: the longest wait for one call, in seconds; a call that takes longer is
            cancelled and raises :class:`PodkitTimeout` (a put or ack may or may not have
            happened then, as with any lost reply).
        retry, key_ttl, max_item_bytes, clock, rand, backend: as for ``Queue``.

    Raises:
        ConfigError: invalid URL or name.
        UsageError: ``timeout`` not positive, or called from a thread running an event loop.
    """

    def __init__(
        self,
        url: str,
        name: str,
        *,
        timeout: float = DEFAULT_CALL_TIMEOUT,
        retry: RetryPolicy | None = None,
        key_ttl: float = DEFAULT_KEY_TTL,
        max_item_bytes: int = DEFAULT_MAX_ITEM_BYTES,
        clock: Callable[[], float] = time.time,
        rand: Callable[[], float] = random.random,
        backend: QueueBackend | None = None,
    ) -> None:
        _refuse_in_event_loop("__init__")
        if not timeout > 0:
            raise UsageError("timeout must be positive")
        self.timeout = timeout
        self._lock = threading.Lock()
        self._closed = False
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._run_loop, name="podkit-sync-queue", daemon=True
        )
        self._thread.start()

        async def make() -> Queue:
            return Queue(
                url,
                name,
                retry=retry,
                key_ttl=key_ttl,
                max_item_bytes=max_item_bytes,
                clock=clock,
                rand=rand,
                backend=backend,
            )

        self._queue: Queue | None = None
        try:
            # built on the loop: a backend may bind to the loop it is created on
            self._queue = self._call("__init__", make())
        except BaseException:
            self.close()
            raise

    def _run_loop(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._loop.run_forever()

    @property
    def queue(self) -> Queue:
        """The async queue on the private loop (use it only through this object's loop)."""
        assert self._queue is not None
        return self._queue

    @property
    def url(self) -> str:
        return self.queue.url

    @property
    def name(self) -> str:
        return self.queue.name

    @property
    def closed(self) -> bool:
        return self._closed

    def _submit(self, method: str, coro: Coroutine[Any, Any, T]) -> concurrent.futures.Future[T]:
        try:
            _refuse_in_event_loop(method)
            with self._lock:
                if self._closed:
                    raise UsageError(f"SyncQueue.{method}(): the queue is closed")
                return asyncio.run_coroutine_threadsafe(coro, self._loop)
        except BaseException:
            coro.close()  # never started: no "never awaited" warning
            raise

    def _call(self, method: str, coro: Coroutine[Any, Any, T]) -> T:
        future = self._submit(method, coro)
        try:
            done, _ = concurrent.futures.wait([future], timeout=self.timeout)
        except BaseException:  # KeyboardInterrupt while waiting: do not leave it running
            future.cancel()
            raise
        if not done:
            future.cancel()
            raise PodkitTimeout(
                f"queue {self._queue.name if self._queue else '?'}: {method}() took longer "
                f"than {self.timeout:g}s"
            )
        return _result(method, future)

    # -- closing --------------------------------------------------------------------------

    def __enter__(self) -> SyncQueue:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        """Close the backend connection and stop the loop's thread (calls still running are
        cancelled and raise :class:`UsageError`). Closing again does nothing."""
        _refuse_in_event_loop("close")
        with self._lock:
            if self._closed:
                return
            self._closed = True
        loop = self._loop
        # runs after every call submitted before the flag was set has become a task
        future = asyncio.run_coroutine_threadsafe(self._shutdown(), loop)
        try:
            future.result(self.timeout)
        finally:
            loop.call_soon_threadsafe(loop.stop)
            self._thread.join()
            loop.close()

    async def _shutdown(self) -> None:
        current = asyncio.current_task()
        pending = [task for task in asyncio.all_tasks() if task is not current]
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
        loop = asyncio.get_running_loop()
        try:
            if self._queue is not None:
                await self._queue.aclose()
        finally:
            await loop.shutdown_asyncgens()
            await loop.shutdown_default_executor()

    # -- producing ------------------------------------------------------------------------

    def put(
        self,
        item: Any,
        *,
        key: str | None = None,
        priority: int = 0,
        delay: float = 0.0,
        max_attempts: int = DEFAULT_MAX_ATTEMPTS,
    ) -> PutResult:
        """Add an item; see :meth:`Queue.put`."""
        return self._call(
            "put",
            self.queue.put(
                item, key=key, priority=priority, delay=delay, max_attempts=max_attempts
            ),
        )

    def put_many(self, requests: Iterable[PutRequest | Any]) -> list[PutResult]:
        """Add many items in one round trip; see :meth:`Queue.put_many`."""
        return self._call("put_many", self.queue.put_many(list(requests)))

    # -- consuming ------------------------------------------------------------------------

    def lease(
        self, n: int = 1, visibility_timeout: float = DEFAULT_VISIBILITY_TIMEOUT
    ) -> list[Item]:
        """Lease up to ``n`` items; see :meth:`Queue.lease`."""
        return self._call("lease", self.queue.lease(n, visibility_timeout))

    def ack(self, receipt: Receipt | Item) -> bool:
        """Mark an item done; see :meth:`Queue.ack`."""
        return self._call("ack", self.queue.ack(receipt))

    def ack_many(self, receipts: Sequence[Receipt | Item]) -> list[bool]:
        """Ack many items in one round trip; see :meth:`Queue.ack_many`."""
        return self._call("ack_many", self.queue.ack_many(receipts))

    def nack(
        self, receipt: Receipt | Item, delay: float | None = None, *, error: str = ""
    ) -> ItemState | None:
        """Report that processing failed; see :meth:`Queue.nack`."""
        return self._call("nack", self.queue.nack(receipt, delay, error=error))

    def extend(self, receipt: Receipt | Item, seconds: float) -> Receipt:
        """Keep a lease for ``seconds`` more; see :meth:`Queue.extend`."""
        return self._call("extend", self.queue.extend(receipt, seconds))

    def extend_many(self, receipts: Sequence[Receipt], seconds: float) -> list[bool]:
        """Extend many leases in one round trip; see :meth:`Queue.extend_many`."""
        return self._call("extend_many", self.queue.extend_many(receipts, seconds))

    # -- watching -------------------------------------------------------------------------

    def stats(self) -> QueueStats:
        """Counts, rates and totals; see :meth:`Queue.stats`."""
        return self._call("stats", self.queue.stats())

    def dead(self, limit: int = 100) -> list[DeadItem]:
        """The dead-letter set, oldest death first; see :meth:`Queue.dead`."""
        return self._call("dead", self.queue.dead(limit))

    def retry_dead(self, ids: Sequence[str] | None = None) -> int:
        """Queue dead items again; see :meth:`Queue.retry_dead`."""
        return self._call("retry_dead", self.queue.retry_dead(ids))

    def purge(self) -> None:
        """Delete every item, key and counter of this queue; see :meth:`Queue.purge`."""
        return self._call("purge", self.queue.purge())

    # -- working --------------------------------------------------------------------------

    def work(
        self,
        handler: Callable[[Item], Any],
        *,
        concurrency: int = DEFAULT_CONCURRENCY,
        prefetch: int = DEFAULT_PREFETCH,
        visibility: float = DEFAULT_VISIBILITY_TIMEOUT,
        stop: threading.Event | None = None,
        drain_timeout: float = DEFAULT_DRAIN_TIMEOUT,
    ) -> int:
        """Process items with ``handler`` until ``stop`` is set (or Ctrl-C).

        The worker of ``podkit queue work --handler`` (:class:`QueueWorker`): ``handler`` is
        called with each :class:`Item` in a pool of ``concurrency`` threads; returning acks
        the item, raising nacks it (retried after the retry policy's backoff, dead-lettered
        when its attempts are used up). Leases are extended while an item runs.

        When ``stop`` is set (or on KeyboardInterrupt) no new item is leased and the items
        held are finished and acked; after ``drain_timeout`` seconds the rest are abandoned
        (their leases expire and they are delivered again). Other threads may use the queue
        meanwhile.

        Returns:
            How many items were processed and acked.

        Raises:
            UsageError: invalid option, or the queue was closed while working.
        """
        if drain_timeout < 0:
            raise UsageError("drain timeout must not be negative")
        if concurrency < 1:
            raise UsageError("concurrency must be at least 1")
        stop = stop if stop is not None else threading.Event()
        future = self._submit(
            "work", self._work(handler, concurrency, prefetch, visibility, stop, drain_timeout)
        )
        try:
            concurrent.futures.wait([future])
        except KeyboardInterrupt:
            stop.set()  # drain as for the first SIGTERM; a second Ctrl-C stops at once
            try:
                concurrent.futures.wait([future])
            finally:
                future.cancel()
            raise
        return _result("work", future)

    async def _work(
        self,
        handler: Callable[[Item], Any],
        concurrency: int,
        prefetch: int,
        visibility: float,
        stop: threading.Event,
        drain_timeout: float,
    ) -> int:
        executor = ThreadPoolExecutor(
            max_workers=concurrency, thread_name_prefix="podkit-queue-handler"
        )
        worker = QueueWorker(
            self.queue,
            python_handler(handler, executor=executor),
            concurrency=concurrency,
            prefetch=prefetch,
            visibility=visibility,
        )
        stopping = asyncio.Event()
        serving = asyncio.create_task(worker.serve(stopping))
        try:
            while not serving.done() and not stop.is_set():
                await asyncio.wait([serving], timeout=STOP_POLL_INTERVAL)
            stopping.set()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(serving), drain_timeout)
            if not serving.done():
                worker.log.warning("drain timeout passed", extra={"held": worker.held})
                serving.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await serving
            elif serving.exception() is not None:
                await serving  # raise it
        finally:
            if not serving.done():
                serving.cancel()
                await asyncio.gather(serving, return_exceptions=True)
            # threads still running a handler finish on their own; nothing waits for them
            executor.shutdown(wait=False, cancel_futures=True)
        return worker.processed


def _result(method: str, future: concurrent.futures.Future[T]) -> T:
    """The future's result, or its original exception; a call cancelled by :meth:`close`
    raises :class:`UsageError`."""
    try:
        return future.result()
    except concurrent.futures.CancelledError:
        raise UsageError(f"SyncQueue.{method}(): the queue was closed during the call") from None


@contextlib.contextmanager
def open_sync_queue(url: str, name: str, **options: Any) -> Iterator[SyncQueue]:
    """``with open_sync_queue(url, name) as q:`` — a :class:`SyncQueue` closed on exit."""
    queue = SyncQueue(url, name, **options)
    try:
        yield queue
    finally:
        queue.close()
