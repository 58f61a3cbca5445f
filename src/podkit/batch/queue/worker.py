"""Workers: lease items, run a handler or a command once per item, ack or retry.

Theory of operation. One :class:`QueueWorker` runs ``concurrency`` items at a time in one
process, with four kinds of task in one task group:

* the *fetcher* leases as many items as there are free slots plus ``prefetch`` (one round
  trip for many items) into a local buffer; when the queue is empty it polls with a growing
  interval (``IDLE_POLL_MIN`` to ``IDLE_POLL_MAX``). Prefetching raises throughput for short
  items (fewer, larger lease calls) at the price of holding items a free worker elsewhere
  could take;
* ``concurrency`` *runners* take items from the buffer and run the handler; success queues
  the receipt for the acker, failure nacks at once (backoff and dead-lettering are decided by
  the queue);
* the *acker* acks finished items in batches: whatever finished while the previous batch was
  in flight goes in the next, so acks cost one round trip per batch, not per item;
* the *extender* extends the leases of held items every third of the visibility timeout,
  so an item that runs longer than the timeout is not delivered twice.

Stopping: :meth:`QueueWorker.serve` returns after ``stop`` is set, no new item is leased and
every held item (running or prefetched) has finished and been acked (the runtime's first
SIGTERM). Cancelling it (the second SIGTERM, or the drain timeout) stops at once: running
commands are killed and their leases expire, so the items are delivered again. Nothing is
lost either way; an item finished but not yet acked when the process dies is processed
twice (at least once). An item counts against ``concurrency + prefetch`` until its ack is
done, so one dead worker causes at most that many items to run again.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import inspect
import logging
import os
import sys
from collections.abc import Awaitable, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge

from podkit.backends.queues import QueueStats
from podkit.batch.queue.client import MAX_LEASE_BATCH, Item, Queue, Receipt
from podkit.batch.queue.states import ItemState
from podkit.errors import BackendError, PodkitError, UsageError

DEFAULT_CONCURRENCY = 1  # one item at a time: safe for commands that are not thread-safe
DEFAULT_PREFETCH = 0  # lease no item before a slot is free: nothing waits while others could run
IDLE_POLL_MIN = 0.01  # seconds between lease calls when the queue has just run dry
IDLE_POLL_MAX = 0.5  # the longest pause when idle: bounds the latency of a new item
BACKEND_RETRY_MAX = 5.0  # longest pause after the store failed, before trying again
EXTEND_FRACTION = 1 / 3  # extend leases when a third of the visibility timeout has passed
STATS_INTERVAL = 2.0  # seconds between backlog readings for the metrics

ItemHandler = Callable[[Item], Awaitable[Any]]


class CommandFailed(PodkitError):
    """A command run for an item exited with a non-zero status."""

    def __init__(self, argv: Sequence[str], returncode: int) -> None:
        self.returncode = returncode
        super().__init__(f"{argv[0]} exited with status {returncode}")


class CommandHandler:
    """Runs ``argv`` once per item: the body on stdin, ``PODKIT_ITEM_ID``,
    ``PODKIT_ATTEMPT`` and ``PODKIT_QUEUE`` in the environment. Exit 0 is success.

    Cancelling the call kills the command (a forced stop).
    """

    def __init__(self, argv: Sequence[str], *, queue_name: str = "") -> None:
        if not argv:
            raise UsageError("give a command after --")
        self.argv = list(argv)
        self.queue_name = queue_name

    async def __call__(self, item: Item) -> None:
        env = dict(os.environ)
        env.update(
            PODKIT_ITEM_ID=item.id,
            PODKIT_ATTEMPT=str(item.attempt),
            PODKIT_QUEUE=self.queue_name,
        )
        proc = await asyncio.create_subprocess_exec(
            *self.argv, stdin=asyncio.subprocess.PIPE, env=env
        )
        try:
            await _feed(proc, item.body)
            await proc.wait()
        finally:
            if proc.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
                # reap it so no zombie is left; the kill makes this quick
                await asyncio.shield(proc.wait())
        if proc.returncode != 0:
            raise CommandFailed(self.argv, proc.returncode or 0)


async def _feed(proc: asyncio.subprocess.Process, body: bytes) -> None:
    """Write the item to the command's stdin; a command that exits without reading it is
    not an error of the worker (its exit status decides)."""
    stdin = proc.stdin
    assert stdin is not None
    # uvloop reports a write to a closed pipe as RuntimeError, asyncio as BrokenPipeError
    with contextlib.suppress(BrokenPipeError, ConnectionResetError, RuntimeError):
        stdin.write(body)
        await stdin.drain()
    with contextlib.suppress(BrokenPipeError, ConnectionResetError, RuntimeError):
        stdin.close()


def python_handler(
    function: Callable[[Item], Any], *, executor: ThreadPoolExecutor | None = None
) -> ItemHandler:
    """Adapt a Python function to an item handler: coroutine functions are awaited, plain
    functions run on ``executor`` (a thread) so they cannot block the event loop."""
    if inspect.iscoroutinefunction(function):
        return function

    async def call(item: Item) -> Any:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(executor, function, item)

    return call


def load_handler(spec: str) -> Callable[[Item], Any]:
    """The function named ``module:function`` (dotted attribute paths allowed).

    The module is imported from the current directory first, then ``sys.path``, as
    Celery's ``-A`` does: ``podkit queue work ... --handler tasks:resize`` run beside
    ``tasks.py`` finds it, whether podkit was started as ``python -m podkit`` or through its
    console script (whose ``sys.path`` starts with the script's own directory).

    Raises:
        UsageError: the spec is malformed, the module cannot be imported or has no such
            callable.
    """
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise UsageError(f"handler {spec!r}: use module:function")
    cwd = os.getcwd()
    if cwd not in sys.path and "" not in sys.path:
        sys.path.insert(0, cwd)
    try:
        target: Any = importlib.import_module(module_name)
    except ImportError as exc:
        raise UsageError(f"handler {spec!r}: cannot import {module_name}: {exc}") from exc
    for part in attr.split("."):
        target = getattr(target, part, None)
    if not callable(target):
        raise UsageError(f"handler {spec!r}: {attr} is not a function in {module_name}")
    return target  # type: ignore[no-any-return]


class WorkerMetrics:
    """The worker's Prometheus metrics, labelled by queue."""

    def __init__(self, registry: CollectorRegistry, queue: str) -> None:
        def counter(name: str, doc: str) -> Any:
            return Counter(name, doc, ["queue"], registry=registry).labels(queue)

        def gauge(name: str, doc: str) -> Any:
            return Gauge(name, doc, ["queue"], registry=registry).labels(queue)

        self.processed = counter(
            "podkit_queue_items_processed", "Items processed and acked by this worker."
        )
        self.failed = counter("podkit_queue_items_failed", "Items whose handler failed.")
        self.dead = counter(
            "podkit_queue_items_dead", "Items this worker moved to the dead-letter set."
        )
        self.lost = counter(
            "podkit_queue_leases_lost", "Leases that expired before the item was acked."
        )
        self.running = gauge("podkit_queue_items_running", "Items being processed now.")
        self.backlog = gauge("podkit_queue_backlog", "Items ready to be leased (whole queue).")
        self.delayed = gauge("podkit_queue_delayed", "Items waiting for a delay or backoff.")
        self.leased = gauge("podkit_queue_leased", "Items leased by any worker.")
        self.dead_items = gauge("podkit_queue_dead", "Items in the dead-letter set.")

    def show(self, stats: QueueStats) -> None:
        self.backlog.set(stats.ready)
        self.delayed.set(stats.delayed)
        self.leased.set(stats.leased)
        self.dead_items.set(stats.dead)


class QueueWorker:
    """Processes items of ``queue`` with ``handler``, ``concurrency`` at a time.

    Args:
        queue: the queue to work on.
        handler: called once per item; returning means success, raising means failure.
        concurrency: items processed at the same time.
        visibility: lease length in seconds (extended while an item runs).
        metrics: where to count; optional.
        log: where to log; optional.
        on_health: called with a reason when leasing starts failing, with None when it
            works again (the worker component turns this into readiness).
    """

    def __init__(
        self,
        queue: Queue,
        handler: ItemHandler,
        *,
        concurrency: int = DEFAULT_CONCURRENCY,
        prefetch: int = DEFAULT_PREFETCH,
        visibility: float = 30.0,
        metrics: WorkerMetrics | None = None,
        log: logging.Logger | None = None,
        on_health: Callable[[str | None], None] | None = None,
    ) -> None:
        if concurrency < 1:
            raise UsageError("concurrency must be at least 1")
        if prefetch < 0:
            raise UsageError("prefetch must not be negative")
        if visibility <= 0:
            raise UsageError("visibility timeout must be positive")
        self.queue = queue
        self.handler = handler
        self.concurrency = concurrency
        self.prefetch = prefetch
        self.visibility = visibility
        self.metrics = metrics
        self.log = log or logging.getLogger("podkit.queue.worker")
        self.on_health = on_health
        self._unhealthy: str | None = None
        self.processed = 0
        self.failed = 0
        self.last_stats: QueueStats | None = None
        # every item leased and not done: in the buffer, running, or waiting for its ack
        self._held: dict[str, Receipt] = {}
        self._buffer: asyncio.Queue[Item | None] = asyncio.Queue()
        self._active = 0
        self._acks: list[Receipt] = []
        self._ack_wakeup = asyncio.Event()
        self._room = asyncio.Event()
        self._closing = False

    @property
    def running(self) -> int:
        """Items being processed now."""
        return self._active

    @property
    def held(self) -> int:
        """Items leased by this worker and not done: prefetched, running, or awaiting ack."""
        return len(self._held)

    async def serve(self, stop: asyncio.Event) -> None:
        """Work until ``stop`` is set, then finish the items held and return.

        Raises:
            ExceptionGroup: with the :class:`BackendError` when the store still fails after
                retries while the last items are acked (their leases expire and they are
                delivered again: nothing is lost), or with a bug's exception.
        """
        async with asyncio.TaskGroup() as tasks:
            acker = tasks.create_task(self._ack_loop(), name="queue-acker")
            extender = tasks.create_task(self._extend_loop(), name="queue-extender")
            watcher = tasks.create_task(self._stats_loop(), name="queue-stats")
            async with asyncio.TaskGroup() as runners:
                for i in range(self.concurrency):
                    runners.create_task(self._run_items(), name=f"queue-runner-{i}")
                try:
                    await self._fetch_loop(stop)
                finally:
                    # runners finish what is buffered, then meet one stop marker each
                    for _ in range(self.concurrency):
                        self._buffer.put_nowait(None)
                if self._held:
                    self.log.info("finishing held items", extra={"held": self.held})
            self._closing = True
            self._ack_wakeup.set()
            await acker
            extender.cancel()
            watcher.cancel()

    async def _fetch_loop(self, stop: asyncio.Event) -> None:
        capacity = self.concurrency + self.prefetch
        # with prefetch, wait until half the capacity is free so leases come in batches
        refill_at = max(1, capacity // 2) if self.prefetch else 1
        idle = IDLE_POLL_MIN
        failing = IDLE_POLL_MIN
        while not stop.is_set():
            room = capacity - len(self._held)
            if room <= 0 or (room < refill_at and not self._buffer.empty()):
                self._room.clear()
                await _wait_either(self._room, stop)
                continue
            try:
                leased = await self.queue.lease(min(room, MAX_LEASE_BATCH), self.visibility)
            except BackendError as exc:
                self.log.warning("lease failed", extra={"error": str(exc), "retry_in": failing})
                self._health(f"queue store failing: {exc}")
                await _wait_timeout(stop, failing)
                failing = min(failing * 2, BACKEND_RETRY_MAX)
                continue
            self._health(None)
            failing = IDLE_POLL_MIN
            if not leased:
                await _wait_timeout(stop, idle)
                idle = min(idle * 2, IDLE_POLL_MAX)
                continue
            idle = IDLE_POLL_MIN
            for item in leased:
                self._held[item.id] = item.receipt
                self._buffer.put_nowait(item)

    def _health(self, problem: str | None) -> None:
        """Report a change between healthy (None) and failing (a reason) to ``on_health``."""
        if problem == self._unhealthy:
            return
        self._unhealthy = problem
        if self.on_health is not None:
            self.on_health(problem)

    async def _run_items(self) -> None:
        while (item := await self._buffer.get()) is not None:
            await self._process(item)

    async def _process(self, item: Item) -> None:
        self._active += 1
        if self.metrics is not None:
            self.metrics.running.inc()
        try:
            await self.handler(item)
        except Exception as exc:
            await self._fail(item, exc)
            self._release(item.id)
        else:
            # the item stays held until its ack is done: what a crash can make run twice
            # is bounded by concurrency + prefetch
            self._acks.append(item.receipt)
            self._ack_wakeup.set()
        finally:
            self._active -= 1
            if self.metrics is not None:
                self.metrics.running.dec()

    def _release(self, item_id: str) -> None:
        self._held.pop(item_id, None)
        self._room.set()

    async def _fail(self, item: Item, exc: Exception) -> None:
        self.failed += 1
        error = str(exc) if isinstance(exc, PodkitError) else f"{type(exc).__name__}: {exc}"
        try:
            state = await self.queue.nack(item.receipt, error=error)
        except BackendError as nack_exc:
            # the lease will expire and the item comes back: nothing is lost
            self.log.warning("nack failed", extra={"item_id": item.id, "error": str(nack_exc)})
            return
        self.log.warning(
            "item failed",
            extra={
                "item_id": item.id,
                "attempt": item.attempt,
                "error": error,
                "next": state.value if state is not None else "lease lost",
            },
        )
        if self.metrics is not None:
            self.metrics.failed.inc()
            if state is ItemState.DEAD:
                self.metrics.dead.inc()

    async def _ack_loop(self) -> None:
        failing = IDLE_POLL_MIN
        while True:
            if not self._acks:
                if self._closing:
                    return
                self._ack_wakeup.clear()
                await self._ack_wakeup.wait()
                continue
            batch, self._acks = self._acks, []
            try:
                results = await self.queue.ack_many(batch)
            except BackendError as exc:
                if self._closing and failing >= BACKEND_RETRY_MAX:
                    # give up: the leases expire and the items are delivered again
                    for receipt in batch:
                        self._release(receipt.item_id)
                    raise
                self.log.warning("ack failed", extra={"error": str(exc), "retry_in": failing})
                self._acks = batch + self._acks
                await asyncio.sleep(failing)
                failing = min(failing * 2, BACKEND_RETRY_MAX)
                continue
            failing = IDLE_POLL_MIN
            for receipt in batch:
                self._release(receipt.item_id)
            done = sum(results)
            self.processed += done
            if self.metrics is not None:
                self.metrics.processed.inc(done)
            lost = len(results) - done
            if lost:
                self.log.warning("leases lost before ack", extra={"items": lost})
                if self.metrics is not None:
                    self.metrics.lost.inc(lost)

    async def _extend_loop(self) -> None:
        period = self.visibility * EXTEND_FRACTION
        while True:
            await asyncio.sleep(period)
            receipts = list(self._held.values())
            if not receipts:
                continue
            try:
                held = await self.queue.extend_many(receipts, self.visibility)
            except BackendError as exc:
                self.log.warning("extending leases failed", extra={"error": str(exc)})
                continue
            for receipt, ok in zip(receipts, held, strict=True):
                if not ok and receipt.item_id in self._held:
                    self.log.warning("lease lost while running", extra={"item_id": receipt.item_id})
                    if self.metrics is not None:
                        self.metrics.lost.inc()

    async def _stats_loop(self) -> None:
        while True:
            try:
                self.last_stats = await self.queue.stats()
            except BackendError as exc:
                self.log.warning("reading queue stats failed", extra={"error": str(exc)})
            else:
                if self.metrics is not None:
                    self.metrics.show(self.last_stats)
            await asyncio.sleep(STATS_INTERVAL)


async def _wait_timeout(event: asyncio.Event, seconds: float) -> None:
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(event.wait(), seconds)


async def _wait_either(first: asyncio.Event, second: asyncio.Event) -> None:
    waiters = [asyncio.ensure_future(first.wait()), asyncio.ensure_future(second.wait())]
    try:
        await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for waiter in waiters:
            waiter.cancel()
        await asyncio.gather(*waiters, return_exceptions=True)
