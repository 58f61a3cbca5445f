"""Worker pools: each function runs in its own processes, started on demand, stopped when idle.

Theory of operation. A :class:`FunctionPool` per function places each invocation with
:func:`~podkit.serving.functions._scaling.place`: on a worker with room, on a new worker
(the invocation is held while it starts: a *cold start*, measured and exported), or it waits.
A reaper stops workers idle for ``idle`` seconds, down to zero. A worker that dies fails only
its own invocations (:class:`WorkerCrashed`; events and items are delivered again) and the
next invocation starts a fresh one: a crashing function never takes down the others.
:class:`Spawner` owns the zygote and the Unix socket workers connect back to.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging
import os
import secrets
import signal
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from podkit.serving.functions._errors import FunctionError
from podkit.serving.functions._model import FunctionApp, FunctionSpec
from podkit.serving.functions._scaling import (
    Placement,
    WorkerLoad,
    idle_workers,
    per_worker_limit,
    place,
)
from podkit.serving.functions._wire import FrameProtocol, WorkerCrashed

DEFAULT_WORKERS = 4  # processes of one function at most (--workers)
DEFAULT_IDLE = 300.0  # a worker with nothing to do for this long stops (--idle)
DEFAULT_START_TIMEOUT = 30.0  # a worker not ready by then failed (--worker-start-timeout)
DEFAULT_STOP_GRACE = 5.0  # a hung-up worker not gone by then is killed (--worker-stop-grace)
DEFAULT_THREADS = 256  # threads for plain (not async) functions in one process (--max-threads)
COLD_START_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.2, 0.3, 0.5, 1.0, 2.0, 5.0)


class FunctionGone(FunctionError):
    """The function of an invocation was removed from the app by a reload."""

    status = 503


class WorkerStartFailed(FunctionError):
    """A worker process could not start (its app file fails to import, or it timed out)."""

    status = 503


class WorkerProcess:
    """One worker process of a function, seen through its connection.

    The connection says ``hello`` (its spawn token and pid), then ``ready`` (the app loaded)
    or ``failed``; after that it carries replies to invocations.
    """

    def __init__(
        self,
        lookup: Callable[[str], asyncio.Future[WorkerProcess] | None],
        *,
        stop_grace: float = DEFAULT_STOP_GRACE,
    ) -> None:
        self.protocol = FrameProtocol(self._on_message, self._on_close)
        self.stop_grace = stop_grace
        self.pid = 0
        self.inflight: dict[int, asyncio.Future[tuple[Any, ...]]] = {}
        self.last_used = 0.0
        self.closed = False
        self.on_exit: Callable[[WorkerProcess], None] | None = None
        self._lookup = lookup
        self._starting: asyncio.Future[WorkerProcess] | None = None
        self._serving = False
        self._ids = itertools.count(1)
        self._idle = asyncio.Event()
        self._idle.set()
        self._gone = asyncio.Event()
        self._loop = asyncio.get_running_loop()

    def _on_message(self, message: Any) -> None:
        if self._serving:
            reply = self.inflight.get(message[0])
            if reply is not None and not reply.done():
                reply.set_result(message)
            return
        if self._starting is None:
            future = self._lookup(str(message.get("hello")))
            if future is None or future.done():
                self._abort()
                return
            self._starting = future
            self.pid = int(message.get("pid", 0))
            return
        if "ready" in message:
            self._serving = True
            self.last_used = time.monotonic()
            if not self._starting.done():
                self._starting.set_result(self)
            else:  # the spawner gave up waiting
                self._abort()
            return
        reason = message.get("failed", "it said something else than ready")
        if not self._starting.done():
            self._starting.set_exception(WorkerStartFailed(f"worker failed to start: {reason}"))
        self._abort()

    def _abort(self) -> None:
        if self.protocol.transport is not None:
            self.protocol.transport.close()

    def _on_close(self) -> None:
        self.closed = True
        for future in self.inflight.values():
            if not future.done():
                future.set_exception(WorkerCrashed(f"worker {self.pid} died"))
        if self._starting is not None and not self._starting.done():
            self._starting.set_exception(
                WorkerStartFailed("worker failed to start: it exited while starting")
            )
        self._idle.set()
        self._gone.set()
        if self._serving and self.on_exit is not None:
            self.on_exit(self)

    async def call(self, kind: str, function: str, arg: Any) -> tuple[Any, ...]:
        """Send one invocation; its reply ``(id, status, fields, body)`` (status 0: fields
        is the error).

        Raises:
            WorkerCrashed: the process died before answering.
        """
        if self.closed:
            raise WorkerCrashed(f"worker {self.pid} of {function} has exited")
        call_id = next(self._ids)
        future: asyncio.Future[tuple[Any, ...]] = self._loop.create_future()
        self.inflight[call_id] = future
        self._idle.clear()
        self.protocol.send((call_id, kind, function, arg))
        try:
            return await future
        finally:
            self.inflight.pop(call_id, None)
            if not self.inflight:
                self._idle.set()

    async def wait_idle(self) -> None:
        """Return when no invocation is in flight (or the worker has exited)."""
        await self._idle.wait()

    async def aclose(self) -> None:
        """Hang up (the worker exits when its invocations are done); kill it if it lingers."""
        self.closed = True
        transport = self.protocol.transport
        if transport is not None and not transport.is_closing():
            with contextlib.suppress(OSError, RuntimeError):
                transport.write_eof()
        try:
            await asyncio.wait_for(self._gone.wait(), self.stop_grace)
        except TimeoutError:
            if self.pid:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(self.pid, signal.SIGKILL)
        finally:
            self._abort()


class Spawner:
    """The zygote process and the Unix socket its children connect to."""

    def __init__(
        self,
        *,
        app_path: str,
        backend: str,
        log_format: str = "json",
        log_level: str = "info",
        start_timeout: float = DEFAULT_START_TIMEOUT,
        stop_grace: float = DEFAULT_STOP_GRACE,
        max_threads: int = DEFAULT_THREADS,
    ) -> None:
        self.app_path = str(Path(app_path).resolve())
        self.start_timeout = start_timeout
        self.stop_grace = stop_grace
        self.max_threads = max_threads
        self.backend = backend
        self.log_format = log_format
        self.log_level = log_level
        self._dir: tempfile.TemporaryDirectory[str] | None = None
        self.socket_path = ""
        self._server: asyncio.Server | None = None
        self._zygote: asyncio.subprocess.Process | None = None
        self._pending: dict[str, asyncio.Future[WorkerProcess]] = {}

    async def start(self) -> None:
        self._dir = tempfile.TemporaryDirectory(prefix="podkit-functions-")
        self.socket_path = str(Path(self._dir.name) / "workers.sock")
        loop = asyncio.get_running_loop()
        self._server = await loop.create_unix_server(
            lambda: WorkerProcess(self._pending.get, stop_grace=self.stop_grace).protocol,
            self.socket_path,
        )
        await self._start_zygote()

    async def _start_zygote(self) -> None:
        self._zygote = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "podkit.serving.functions._worker",
            stdin=asyncio.subprocess.PIPE,
            stdout=sys.stderr.fileno(),  # what functions print goes to the log
        )

    async def spawn(self, function: str) -> WorkerProcess:
        """Fork a worker of ``function`` and wait for it to be ready.

        Raises:
            WorkerStartFailed: the app failed to load in it, or it did not connect in time.
        """
        if self._zygote is None or self._zygote.returncode is not None:
            await self._start_zygote()
        assert self._zygote is not None
        assert self._zygote.stdin is not None
        token = secrets.token_hex(16)
        future: asyncio.Future[WorkerProcess] = asyncio.get_running_loop().create_future()
        self._pending[token] = future
        request = {
            "token": token,
            "socket": self.socket_path,
            "app": self.app_path,
            "function": function,
            "backend": self.backend,
            "log_format": self.log_format,
            "log_level": self.log_level,
            "max_threads": self.max_threads,
        }
        try:
            self._zygote.stdin.write(json.dumps(request).encode() + b"\n")
            await self._zygote.stdin.drain()
            return await asyncio.wait_for(future, self.start_timeout)
        except TimeoutError as exc:
            raise WorkerStartFailed(f"a worker of {function} did not start in time") from exc
        except (BrokenPipeError, ConnectionResetError) as exc:
            raise WorkerStartFailed(f"the zygote is gone: {exc}") from exc
        finally:
            self._pending.pop(token, None)

    async def aclose(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
        if self._zygote is not None and self._zygote.returncode is None:
            assert self._zygote.stdin is not None
            self._zygote.stdin.close()
            try:
                await asyncio.wait_for(self._zygote.wait(), self.stop_grace)
            except TimeoutError:
                self._zygote.kill()
                await self._zygote.wait()
        if self._dir is not None:
            self._dir.cleanup()


class PoolMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.workers = Gauge(
            "podkit_functions_workers",
            "Worker processes running, by function.",
            ["function"],
            registry=registry,
        )
        self.cold_start = Histogram(
            "podkit_functions_cold_start_seconds",
            "Time from an invocation finding no worker to its worker being ready.",
            ["function"],
            buckets=COLD_START_BUCKETS,
            registry=registry,
        )
        self.crashes = Counter(
            "podkit_functions_worker_crashes",
            "Worker processes that died while they were wanted, by function.",
            ["function"],
            registry=registry,
        )
        self.stopped_idle = Counter(
            "podkit_functions_workers_stopped_idle",
            "Worker processes stopped after their idle time, by function.",
            ["function"],
            registry=registry,
        )


@dataclass(slots=True)
class PoolStatistics:
    workers: int
    starting: int
    inflight: int
    cold_starts: int
    last_cold_start: float | None
    pids: list[int]


class FunctionPool:
    """The worker processes of one function."""

    def __init__(
        self,
        spec: FunctionSpec,
        spawner: Spawner,
        *,
        max_workers: int,
        idle: float,
        metrics: PoolMetrics,
        log: logging.Logger,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.spec = spec
        self.spawner = spawner
        self.max_workers = max_workers
        self.per_worker = per_worker_limit(spec.concurrency, max_workers)
        self.idle = idle
        self.metrics = metrics
        self.log = log
        self.clock = clock
        self.workers: list[WorkerProcess] = []
        self.starting = 0
        self.cold_starts = 0
        self.last_cold_start: float | None = None
        self._room = asyncio.Event()
        self._closing: set[asyncio.Task[None]] = set()

    def configure(self, spec: FunctionSpec, *, max_workers: int, idle: float) -> None:
        """Take the (reloaded) declaration of the function: its limits apply from now on."""
        self.spec = spec
        self.max_workers = max_workers
        self.per_worker = per_worker_limit(spec.concurrency, max_workers)
        self.idle = idle
        self._room.set()

    def _live(self) -> list[WorkerProcess]:
        self.workers = [w for w in self.workers if not w.closed]
        return self.workers

    def _show(self) -> None:
        self.metrics.workers.labels(self.spec.name).set(len(self.workers))

    async def call(self, kind: str, arg: Any) -> tuple[Any, ...]:
        """Run one invocation on a worker (starting one if needed); its reply."""
        workers = self.workers
        if (
            len(workers) == 1  # what place() decides for a lone worker with room, at less cost
            and not (worker := workers[0]).closed
            and len(worker.inflight) < self.per_worker
        ):
            return await self._call_on(worker, kind, arg)
        while True:
            live = self._live()
            decision = place(
                [WorkerLoad(len(w.inflight), w.last_used) for w in live],
                starting=self.starting,
                per_worker=self.per_worker,
                max_workers=self.max_workers,
            )
            if isinstance(decision, int):
                worker = live[decision]
                break
            if decision is Placement.SPAWN:
                worker = await self._spawn()
                break
            self._room.clear()
            await self._room.wait()
        return await self._call_on(worker, kind, arg)

    async def _call_on(self, worker: WorkerProcess, kind: str, arg: Any) -> tuple[Any, ...]:
        worker.last_used = self.clock()
        try:
            return await worker.call(kind, self.spec.name, arg)
        finally:
            worker.last_used = self.clock()
            self._room.set()

    async def _spawn(self) -> WorkerProcess:
        self.starting += 1
        started = time.perf_counter()
        try:
            worker = await self.spawner.spawn(self.spec.name)
        finally:
            self.starting -= 1
            self._room.set()
        seconds = time.perf_counter() - started
        self.cold_starts += 1
        self.last_cold_start = seconds
        self.metrics.cold_start.labels(self.spec.name).observe(seconds)
        worker.on_exit = self._exited
        self.workers.append(worker)
        self._show()
        self.log.info(
            "worker started",
            extra={"function": self.spec.name, "pid": worker.pid, "cold_start": round(seconds, 4)},
        )
        return worker

    def _exited(self, worker: WorkerProcess) -> None:
        if worker in self.workers:  # not closed by us: it died
            self.workers.remove(worker)
            self.metrics.crashes.labels(self.spec.name).inc()
            self.log.warning("worker died", extra={"function": self.spec.name, "pid": worker.pid})
            self._show()
        self._room.set()

    def _retire(self, worker: WorkerProcess) -> None:
        if worker in self.workers:
            self.workers.remove(worker)
        task = asyncio.get_running_loop().create_task(self._close_when_done(worker))
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)
        self._show()

    async def _close_when_done(self, worker: WorkerProcess) -> None:
        await worker.wait_idle()
        await worker.aclose()

    def reap(self) -> int:
        """Stop the workers idle for ``idle`` seconds; how many."""
        live = self._live()
        loads = [WorkerLoad(len(w.inflight), w.last_used) for w in live]
        victims = [live[i] for i in idle_workers(loads, now=self.clock(), idle=self.idle)]
        for worker in victims:
            self.metrics.stopped_idle.labels(self.spec.name).inc()
            self.log.info(
                "worker idle: stopping", extra={"function": self.spec.name, "pid": worker.pid}
            )
            self._retire(worker)
        return len(victims)

    def restart(self) -> None:
        """Retire every worker (each finishes its invocations); new ones load the app anew."""
        for worker in list(self._live()):
            self._retire(worker)

    def statistics(self) -> PoolStatistics:
        live = self._live()
        return PoolStatistics(
            workers=len(live),
            starting=self.starting,
            inflight=sum(len(w.inflight) for w in live),
            cold_starts=self.cold_starts,
            last_cold_start=self.last_cold_start,
            pids=[w.pid for w in live],
        )

    async def aclose(self) -> None:
        workers, self.workers = list(self.workers), []
        await asyncio.gather(*(w.aclose() for w in workers), return_exceptions=True)
        await asyncio.gather(*self._closing, return_exceptions=True)
        self._show()


class WorkerPools:
    """The pools of every function of an app, their spawner and reaper.

    Use as ``async with WorkerPools(app, app_path=..., backend=...) as pools:``.
    """

    def __init__(
        self,
        app: FunctionApp,
        *,
        app_path: str,
        backend: str,
        registry: CollectorRegistry,
        log: logging.Logger,
        max_workers: int = DEFAULT_WORKERS,
        idle: float = DEFAULT_IDLE,
        log_format: str = "json",
        log_level: str = "info",
        start_timeout: float = DEFAULT_START_TIMEOUT,
        stop_grace: float = DEFAULT_STOP_GRACE,
        max_threads: int = DEFAULT_THREADS,
    ) -> None:
        self.spawner = Spawner(
            app_path=app_path,
            backend=backend,
            log_format=log_format,
            log_level=log_level,
            start_timeout=start_timeout,
            stop_grace=stop_grace,
            max_threads=max_threads,
        )
        self.metrics = PoolMetrics(registry)
        self.log = log
        self.idle = idle
        self.max_workers = max_workers
        self.pools = {name: self._pool(spec) for name, spec in app.functions.items()}
        self._removed: list[FunctionPool] = []  # pools of functions a reload removed

    def _pool(self, spec: FunctionSpec) -> FunctionPool:
        return FunctionPool(
            spec,
            self.spawner,
            max_workers=spec.workers or self.max_workers,
            idle=spec.idle if spec.idle is not None else self.idle,
            metrics=self.metrics,
            log=self.log,
        )

    async def __aenter__(self) -> WorkerPools:
        await self.spawner.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        try:
            pools = [*self.pools.values(), *self._removed]
            await asyncio.gather(*(p.aclose() for p in pools), return_exceptions=True)
        finally:
            await self.spawner.aclose()

    def get(self, name: str) -> FunctionPool:
        """The pool of function ``name``.

        Raises:
            FunctionGone: a reload removed the function (an invocation that started
                before it is retried, and finds no function then either).
        """
        pool = self.pools.get(name)
        if pool is None:
            raise FunctionGone(f"{name} is no longer served (the app was reloaded)")
        return pool

    def replace_app(self, app: FunctionApp) -> None:
        """Serve ``app``'s functions: a pool per new function, the workers of every other
        one retired (each finishes its invocations; new ones load the app anew), and the
        pools of removed functions emptied."""
        for name, spec in app.functions.items():
            pool = self.pools.get(name)
            if pool is None:
                self.pools[name] = self._pool(spec)
            else:
                pool.configure(
                    spec,
                    max_workers=spec.workers or self.max_workers,
                    idle=spec.idle if spec.idle is not None else self.idle,
                )
                pool.restart()
        for name in [n for n in self.pools if n not in app.functions]:
            pool = self.pools.pop(name)
            pool.restart()
            self._removed.append(pool)

    async def serve_reaper(self, stop: asyncio.Event) -> None:
        """Stop idle workers until ``stop`` is set."""
        while not stop.is_set():
            # read each turn: a reload may add a function with a shorter idle
            shortest = min((p.idle for p in self.pools.values()), default=self.idle)
            interval = max(0.02, min(1.0, shortest / 4))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), interval)
            for pool in self.pools.values():
                pool.reap()
