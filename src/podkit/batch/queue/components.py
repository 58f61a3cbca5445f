"""The processes of the work queue pattern, run inside the foundation runtime.

* :func:`serve_worker` — one worker process (``podkit queue work``);
* :func:`serve_pool` — a supervisor that keeps between ``--min`` and ``--max`` worker
  processes running, following the backlog (``podkit queue work --min N --max M``);
* :func:`serve_source` — the book's source container: runs a command periodically and puts
  each line of its output as an item, de-duplicated by a content key
  (``podkit queue source``).

Each exposes health, readiness and metrics on the admin endpoint and a JSON view of the
queue at ``/queue``.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hashlib
import json
import os
import signal
import sys
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from prometheus_client import Counter, Gauge

from podkit.backends.queues import QueueStats
from podkit.batch.queue.client import PutRequest, Queue
from podkit.batch.queue.scaling import Autoscaler, ScalePolicy
from podkit.batch.queue.states import DEFAULT_BACKOFF_BASE, DEFAULT_BACKOFF_CAP, RetryPolicy
from podkit.batch.queue.worker import (
    CommandHandler,
    ItemHandler,
    QueueWorker,
    WorkerMetrics,
    load_handler,
    python_handler,
)
from podkit.errors import BackendError
from podkit.runtime import Request, Response, Runtime

PARENT_CHECK_INTERVAL = 1.0  # seconds between checks that a pool worker's supervisor lives
DEFAULT_SCALE_INTERVAL = 2.0  # seconds between the pool's backlog readings
CHILD_STOP_GRACE = 5.0  # seconds a forced-stopped worker gets before SIGKILL
MAX_SOURCE_LINES = 100_000  # lines taken from one run of a source command (bounds memory)
SOURCE_PUT_BATCH = 500  # items per put round trip


def content_key(line: bytes) -> str:
    """The idempotency key of a source line: its SHA-256."""
    return "sha256:" + hashlib.sha256(line).hexdigest()


def _stats_json(stats: QueueStats | None, **extra: Any) -> Response:
    body: dict[str, Any] = dict(extra)
    if stats is not None:
        body["stats"] = dataclasses.asdict(stats)
    return Response.json(200, json.dumps(body))


def queue_status(
    stats: QueueStats | None, *, workers: int, queue: str, running: int | None = None
) -> dict[str, Any]:
    """The queue's figures for ``GET /status``: depth (items ready), leased, workers."""
    body: dict[str, Any] = {"queue": queue, "workers": workers}
    busy = f", {running} running" if running is not None else ""
    if stats is None:
        body["summary"] = f"{queue}: depth not read yet; {workers} workers{busy}"
        return body
    body.update(depth=stats.ready, leased=stats.leased, delayed=stats.delayed, dead=stats.dead)
    body["summary"] = (
        f"{queue}: depth {stats.ready}, {stats.leased} leased, {stats.delayed} delayed, "
        f"{stats.dead} dead; {workers} workers{busy}"
    )
    return body


@dataclasses.dataclass(frozen=True, slots=True)
class WorkerSettings:
    """What ``podkit queue work`` runs: the handler, the pace and the pool bounds."""

    url: str
    name: str
    concurrency: int
    visibility: float
    handler: str | None = None
    command: tuple[str, ...] = ()
    prefetch: int = 0
    backoff: float = DEFAULT_BACKOFF_BASE
    backoff_cap: float = DEFAULT_BACKOFF_CAP
    parent_pid: int | None = None


def build_handler(settings: WorkerSettings, executor: ThreadPoolExecutor) -> ItemHandler:
    if settings.handler is not None:
        return python_handler(load_handler(settings.handler), executor=executor)
    return CommandHandler(settings.command, queue_name=settings.name)


async def serve_worker(rt: Runtime, settings: WorkerSettings) -> None:
    """Process items until the runtime drains; then finish the running ones."""
    executor = ThreadPoolExecutor(
        max_workers=settings.concurrency, thread_name_prefix="podkit-handler"
    )
    handler = build_handler(settings, executor)
    try:
        retry = RetryPolicy(base=settings.backoff, cap=settings.backoff_cap)
        async with Queue(settings.url, settings.name, retry=retry) as queue:
            worker = QueueWorker(
                queue,
                handler,
                concurrency=settings.concurrency,
                prefetch=settings.prefetch,
                visibility=settings.visibility,
                metrics=WorkerMetrics(rt.registry, settings.name),
                log=rt.log,
                on_health=lambda problem: (
                    rt.set_ready() if problem is None else rt.set_not_ready(problem)
                ),
            )

            async def view(request: Request) -> Response:
                return _stats_json(
                    worker.last_stats,
                    queue=settings.name,
                    running=worker.running,
                    held=worker.held,
                    processed=worker.processed,
                    failed=worker.failed,
                )

            rt.add_route("/queue", view)
            rt.add_status(
                lambda: queue_status(
                    worker.last_stats, workers=1, running=worker.running, queue=settings.name
                )
            )
            stop = asyncio.Event()
            async with asyncio.TaskGroup() as tasks:
                serving = tasks.create_task(worker.serve(stop))
                drain = tasks.create_task(_on_drain(rt, stop))
                parent = None
                if settings.parent_pid is not None:
                    parent = tasks.create_task(_watch_parent(rt, settings.parent_pid))
                rt.log.info(
                    "working",
                    extra={
                        "queue": settings.name,
                        "concurrency": settings.concurrency,
                        "visibility": settings.visibility,
                    },
                )
                rt.set_ready()
                await serving
                drain.cancel()
                if parent is not None:
                    parent.cancel()
            rt.log.info(
                "worker stopped", extra={"processed": worker.processed, "failed": worker.failed}
            )
    finally:
        executor.shutdown(wait=False, cancel_futures=True)


async def _on_drain(rt: Runtime, stop: asyncio.Event) -> None:
    await rt.wait_draining()
    rt.log.info("stopped taking items")
    stop.set()


async def _watch_parent(rt: Runtime, parent_pid: int) -> None:
    """A pool worker drains when its supervisor is gone (it must not outlive it)."""
    while True:
        # polling: there is no portable event for "my parent died"
        await asyncio.sleep(PARENT_CHECK_INTERVAL)
        if os.getppid() != parent_pid:
            break
    rt.begin_drain("supervisor exited")


def worker_argv(settings: WorkerSettings, rt: Runtime) -> list[str]:
    """The command line of one pool worker process."""
    argv = [
        sys.executable,
        "-m",
        "podkit",
        "queue",
        "work",
        settings.url,
        settings.name,
        "--concurrency",
        str(settings.concurrency),
        "--prefetch",
        str(settings.prefetch),
        "--backoff",
        f"{settings.backoff}s",
        "--backoff-cap",
        f"{settings.backoff_cap}s",
        "--visibility",
        f"{settings.visibility}s",
        "--drain-timeout",
        f"{rt.drain_timeout}s",
        "--log-format",
        rt.options.log_format,
        "--log-level",
        rt.options.log_level,
        "--parent-pid",
        str(os.getpid()),
    ]
    if settings.handler is not None:
        argv += ["--handler", settings.handler]
    else:
        argv += ["--", *settings.command]
    return argv


class _Pool:
    """The worker processes of a pool (decide in :class:`Autoscaler`, act here)."""

    def __init__(self, rt: Runtime, argv: Sequence[str]) -> None:
        self.rt = rt
        self.argv = list(argv)
        self.active: list[asyncio.subprocess.Process] = []
        self.stopping: list[asyncio.subprocess.Process] = []

    async def start_one(self) -> None:
        # Each worker leads its own session: a signal to the supervisor's group (a
        # terminal's Ctrl-C) reaches the workers once, through the supervisor.
        proc = await asyncio.create_subprocess_exec(*self.argv, start_new_session=True)
        self.active.append(proc)
        self.rt.log.info("worker started", extra={"pid": proc.pid, "workers": len(self.active)})

    def stop_one(self) -> None:
        proc = self.active.pop()
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGTERM)
        self.stopping.append(proc)
        self.rt.log.info("worker stopping", extra={"pid": proc.pid, "workers": len(self.active)})

    def reap(self) -> None:
        for proc in [p for p in self.active if p.returncode is not None]:
            self.active.remove(proc)
            self.rt.log.warning(
                "worker exited unexpectedly", extra={"pid": proc.pid, "code": proc.returncode}
            )
        self.stopping = [p for p in self.stopping if p.returncode is None]

    def signal_all(self, signum: int) -> None:
        for proc in self.active + self.stopping:
            if proc.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    proc.send_signal(signum)

    async def wait_all(self) -> None:
        await asyncio.gather(*(p.wait() for p in self.active + self.stopping))


async def serve_pool(
    rt: Runtime,
    settings: WorkerSettings,
    policy: ScalePolicy,
    *,
    interval: float = DEFAULT_SCALE_INTERVAL,
) -> None:
    """Keep between ``policy.min_workers`` and ``policy.max_workers`` worker processes,
    following the backlog; on drain, drain the workers and wait for them."""
    autoscaler = Autoscaler(policy)
    pool = _Pool(rt, worker_argv(settings, rt))
    workers_gauge = Gauge(
        "podkit_queue_workers", "Worker processes running.", ["queue"], registry=rt.registry
    ).labels(settings.name)
    demand_gauge = Gauge(
        "podkit_queue_backlog",
        "Items ready to be leased (whole queue).",
        ["queue"],
        registry=rt.registry,
    ).labels(settings.name)
    last: dict[str, Any] = {"stats": None}

    async def view(request: Request) -> Response:
        return _stats_json(last["stats"], queue=settings.name, workers=len(pool.active))

    rt.add_route("/queue", view)
    rt.add_status(
        lambda: queue_status(last["stats"], workers=len(pool.active), queue=settings.name)
    )
    async with Queue(settings.url, settings.name) as queue:
        rt.set_ready()
        try:
            while not rt.draining.is_set():
                pool.reap()
                try:
                    stats = await queue.stats()
                except BackendError as exc:
                    rt.log.warning("reading queue stats failed", extra={"error": str(exc)})
                    stats = None
                if stats is not None:
                    last["stats"] = stats
                    demand_gauge.set(stats.ready)
                    target = autoscaler.decide(
                        demand=stats.ready + stats.leased,
                        current=len(pool.active),
                        now=time.monotonic(),
                    )
                else:
                    target = max(len(pool.active), policy.min_workers)
                while len(pool.active) < target:
                    await pool.start_one()
                while len(pool.active) > target:
                    pool.stop_one()
                workers_gauge.set(len(pool.active))
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(rt.wait_draining(), interval)
            rt.log.info("draining workers", extra={"workers": len(pool.active)})
            pool.signal_all(signal.SIGTERM)
            await pool.wait_all()
        finally:
            # a forced stop (second SIGTERM, drain timeout): tell the workers to stop now
            pool.signal_all(signal.SIGTERM)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(pool.wait_all()), CHILD_STOP_GRACE)
            pool.signal_all(signal.SIGKILL)
            workers_gauge.set(0)


async def serve_source(
    rt: Runtime,
    *,
    url: str,
    name: str,
    argv: Sequence[str],
    every: float,
    priority: int,
    max_attempts: int,
    key_ttl: float,
) -> None:
    """Run ``argv`` every ``every`` seconds; each output line becomes an item, keyed by its
    content so a line already known is not queued twice."""
    items_counter = Counter(
        "podkit_queue_source_items",
        "Lines seen by the source, by outcome (new, known).",
        ["queue", "outcome"],
        registry=rt.registry,
    )
    runs_counter = Counter(
        "podkit_queue_source_runs",
        "Runs of the source command, by outcome (ok, failed).",
        ["queue", "outcome"],
        registry=rt.registry,
    )
    async with Queue(url, name, key_ttl=key_ttl) as queue:
        rt.set_ready()
        while not rt.draining.is_set():
            started = time.monotonic()
            lines = await _run_source(rt, argv)
            runs_counter.labels(name, "ok" if lines is not None else "failed").inc()
            if lines:
                try:
                    new = known = 0
                    for i in range(0, len(lines), SOURCE_PUT_BATCH):
                        results = await queue.put_many(
                            PutRequest(
                                line,
                                key=content_key(line),
                                priority=priority,
                                max_attempts=max_attempts,
                            )
                            for line in lines[i : i + SOURCE_PUT_BATCH]
                        )
                        created = sum(r.created for r in results)
                        new += created
                        known += len(results) - created
                    items_counter.labels(name, "new").inc(new)
                    items_counter.labels(name, "known").inc(known)
                    rt.log.info("source ran", extra={"new": new, "known": known})
                except BackendError as exc:
                    rt.log.warning("putting items failed", extra={"error": str(exc)})
            pause = max(0.0, every - (time.monotonic() - started))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(rt.wait_draining(), pause)


async def _run_source(rt: Runtime, argv: Sequence[str]) -> list[bytes] | None:
    """The non-empty lines the command printed, or None when it failed."""
    try:
        proc = await asyncio.create_subprocess_exec(
            *argv, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE
        )
    except OSError as exc:
        rt.log.warning("source command failed to start", extra={"error": str(exc)})
        return None
    try:
        out, _ = await proc.communicate()
    finally:
        if proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await asyncio.shield(proc.wait())
    if proc.returncode != 0:
        rt.log.warning("source command failed", extra={"code": proc.returncode})
        return None
    lines = [line.rstrip(b"\r") for line in out.split(b"\n")]
    return [line for line in lines if line][:MAX_SOURCE_LINES]
