"""Multi-process serving: N worker processes share one listening port (SO_REUSEPORT).

Theory of operation. The parent process is the component the runtime sees: it owns the admin
endpoint, the signals and the lifecycle. It starts ``count`` worker processes; each runs the
same ``main(rt)`` with a child runtime that has no admin endpoint and binds its listener with
``reuse_port=True``, so the kernel spreads new connections over the workers' accept queues.

Parent and worker talk over one Unix stream socket pair per worker (the worker's end is the
fd in ``PODKIT_WORKER_REPORT_FD``), in frames of ``!I`` length, one kind byte and a body:

* metric reports (kind 0: not ready yet, 1: ready; the body is Prometheus text without
  process metrics), sent by the worker every :data:`REPORT_INTERVAL` seconds. The parent's
  ``/metrics`` shows the sum over the workers' latest reports (counters and histograms add
  up; so do gauges such as open connections). The parent is ready once every worker
  reported ready. A report is skipped while the parent has not read the previous ones.
* commands (kind 2, a JSON object), both ways: ``{"id", "command", "payload"}`` asks, and
  ``{"id", "result"}`` or ``{"id", "error"}`` answers. The parent's :class:`WorkerPool`
  broadcasts a command to every worker that has reported and gathers the answers within a
  timeout (a worker that does not answer in time is named in the result, not waited for);
  a worker registers what it answers with :meth:`WorkerLink.handle` on
  :func:`worker_link`, and may ask the parent with :meth:`WorkerLink.request` (for example
  to have a command broadcast to the other workers). A worker sends a fresh metric report
  just before every answer and every request, so the parent's merged metrics already show
  what the worker did when its message arrives.

State set by hand through the parent (what :meth:`WorkerPool.replay_with` returns) reaches a
worker started later twice: in its start-up data, applied as ``main`` registers the command
(before it listens), and again after its first report, which covers a change made while it
was starting. Replayed commands must therefore set a state, not change one.

A worker that dies while the parent is not draining is started again. On SIGTERM the parent
forwards SIGTERM to every worker, waits for them to drain (``drain_timeout``), and kills what
is left. A worker whose parent is gone (its socket closes) stops.

A reload of the parent (SIGHUP or the admin ``POST /reload``) is forwarded as SIGHUP to every
live worker, whose runtime runs the component's own reload hooks. A worker that has not
reported yet may not have its signal handlers in place (SIGHUP's default action would end
it), so its reload is held back and sent with its first report; a worker that has not
reported yet has not loaded anything older than the reload either.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import inspect
import json
import os
import pickle
import signal
import socket
import struct
import subprocess
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Iterable
from dataclasses import dataclass, field
from typing import Any

from prometheus_client import generate_latest
from prometheus_client.core import Metric
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import Collector

from podkit.errors import PodkitError
from podkit.runtime import (
    Runtime,
    RuntimeOptions,
    configure_logging,
    format_duration,
    run_async,
    serve_component,
)
from podkit.runtime.logging import get_logger
from podkit.runtime.metrics import new_registry

REPORT_INTERVAL = 0.5  # seconds between worker metric reports: /metrics lags by at most this
RESTART_DELAY = 1.0  # a crashing worker is started again at most this often
DEFAULT_COMMAND_TIMEOUT = 2.0  # how long a broadcast waits for each worker's answer
REPLAY_TIMEOUT = 30.0  # how long the replay to a starting worker may wait for its ``main``
MAX_FRAME = 64 << 20  # a larger frame means the channel is broken
REPORT_BACKLOG = 1 << 20  # a worker skips a report while this many bytes are still unsent
_WORKER_ENV = "PODKIT_WORKER_REPORT_FD"
_SKIP_METRICS = frozenset({"podkit_lifecycle_phase"})  # per-process; the parent has its own
_KIND_REPORT, _KIND_READY, _KIND_COMMAND = 0, 1, 2

WorkerMain = Callable[[Runtime, Any], Coroutine[Any, Any, None]]
Payload = dict[str, Any]
CommandHandler = Callable[[Payload], Any]
"""What a worker runs for a command: payload in, a JSON value (or an awaitable of one) out."""
RequestHandler = Callable[[int, Payload], Awaitable[Any]]
"""What the parent runs for a worker's request: (worker index, payload) in, a JSON value out."""
Replay = Callable[[], list[tuple[str, Payload]]]

log = get_logger("workers")


class CommandError(PodkitError):
    """The other side answered a command with an error (or does not know it)."""


@dataclass(frozen=True, slots=True)
class WorkerAnswer:
    """One worker's answer to a broadcast command.

    Attributes:
        index, pid: which worker.
        result: what its handler returned (None when it failed).
        error: None when it answered; otherwise why not (no answer in time, exited, or the
            error its handler raised).
    """

    index: int
    pid: int
    result: Any = None
    error: str | None = None

    @property
    def ok(self) -> bool:
        """Whether the worker answered."""
        return self.error is None

    def describe(self) -> str:
        """``worker 1 (pid 4242): no answer within 2s`` and the like."""
        text = f"worker {self.index} (pid {self.pid})"
        return f"{text}: {self.error}" if self.error is not None else text


def _frame(kind: int, body: bytes) -> bytes:
    return struct.pack("!IB", len(body) + 1, kind) + body


async def _frames(reader: asyncio.StreamReader) -> AsyncIterator[tuple[int, bytes]]:
    """The frames on ``reader`` until it ends (EOF or a reset connection)."""
    while True:
        try:
            head = await reader.readexactly(5)
            size, kind = struct.unpack("!IB", head)
            if not 1 <= size <= MAX_FRAME:
                raise PodkitError(f"broken worker channel: a frame of {size} bytes")
            body = await reader.readexactly(size - 1)
        except (asyncio.IncompleteReadError, ConnectionError):
            return
        yield kind, body


class _Link:
    """One end of a parent-worker channel: commands with answers, both ways."""

    def __init__(
        self,
        writer: asyncio.StreamWriter,
        dispatch: Callable[[str, Payload], Awaitable[Any]],
        *,
        fresh_report: Callable[[], None] | None = None,
    ) -> None:
        self.writer = writer
        self.dispatch = dispatch
        self.fresh_report = fresh_report
        self.pending: dict[int, asyncio.Future[Any]] = {}
        self.tasks: set[asyncio.Task[None]] = set()
        self.next_id = 0
        self.closed = False

    def send(self, kind: int, body: bytes) -> None:
        if not self.closed and not self.writer.is_closing():
            self.writer.write(_frame(kind, body))

    def backlog(self) -> int:
        return self.writer.transport.get_write_buffer_size()

    async def request(self, command: str, payload: Payload, timeout: float) -> Any:
        """Ask the other side; its result.

        Raises:
            TimeoutError: no answer within ``timeout``.
            CommandError: the other side answered with an error.
            ConnectionError: the channel closed first.
        """
        if self.closed:
            raise ConnectionError("exited")
        ident = self.next_id
        self.next_id += 1
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self.pending[ident] = future
        try:
            if self.fresh_report is not None:
                self.fresh_report()
            message = {"id": ident, "command": command, "payload": payload}
            self.send(_KIND_COMMAND, json.dumps(message).encode())
            async with asyncio.timeout(timeout):
                return await future
        finally:
            self.pending.pop(ident, None)

    def received(self, body: bytes) -> None:
        try:
            message = json.loads(body)
        except ValueError:
            log.warning("unreadable command frame dropped")
            return
        if not isinstance(message, dict):
            return
        if "command" in message:
            task = asyncio.create_task(self._answer(message))
            self.tasks.add(task)
            task.add_done_callback(self.tasks.discard)
            return
        future = self.pending.get(message.get("id", -1))
        if future is None or future.done():
            return  # answered after its asker gave up
        if "error" in message:
            future.set_exception(CommandError(str(message["error"])))
        else:
            future.set_result(message.get("result"))

    async def _answer(self, message: dict[str, Any]) -> None:
        reply: dict[str, Any] = {"id": message.get("id")}
        payload = message.get("payload")
        try:
            reply["result"] = await self.dispatch(
                str(message["command"]), payload if isinstance(payload, dict) else {}
            )
        except Exception as exc:  # the asker gets the error; this side keeps serving
            reply["error"] = str(exc) or type(exc).__name__
        if self.fresh_report is not None:
            self.fresh_report()
        try:
            body = json.dumps(reply).encode()
        except (TypeError, ValueError) as exc:
            body = json.dumps({"id": reply["id"], "error": f"unencodable answer: {exc}"}).encode()
        self.send(_KIND_COMMAND, body)

    def close(self) -> None:
        """Fail what is still asked, stop answering, close the socket."""
        self.closed = True
        for future in self.pending.values():
            if not future.done():
                future.set_exception(ConnectionError("exited"))
        for task in list(self.tasks):
            task.cancel()
        self.writer.close()


async def _open_link(sock: socket.socket) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.open_unix_connection(sock=sock, limit=1 << 16)


@dataclass
class _Worker:
    index: int
    process: subprocess.Popen[bytes] | None = None
    link: _Link | None = None
    reading: asyncio.Task[None] | None = None
    report: bytes | None = None
    ready: bool = False
    reload_pending: bool = False
    exited: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None


class WorkerPool:
    """The parent's side of the command channel to its workers (see the module docstring).

    Create it before :func:`serve_workers` and pass it in; until the workers are started,
    :meth:`broadcast` reaches no one.
    """

    def __init__(self, *, timeout: float = DEFAULT_COMMAND_TIMEOUT) -> None:
        if timeout <= 0:
            raise ValueError("the command timeout must be positive")
        self.timeout = timeout
        self._workers: list[_Worker] = []
        self._handlers: dict[str, RequestHandler] = {}
        self._replay: Replay | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    def on_request(self, command: str, handler: RequestHandler) -> None:
        """Answer a worker's ``request(command, payload)`` with ``handler(index, payload)``."""
        self._handlers[command] = handler

    def replay_with(self, replay: Replay) -> None:
        """Commands that bring a newly started worker to the state set by hand so far."""
        self._replay = replay

    def replayed(self) -> list[tuple[str, Payload]]:
        return self._replay() if self._replay is not None else []

    async def broadcast(
        self,
        command: str,
        payload: Payload,
        *,
        exclude: int | None = None,
        timeout: float | None = None,
    ) -> list[WorkerAnswer]:
        """Send ``command`` to every live worker that has reported (but ``exclude``) and
        gather their answers, waiting at most ``timeout`` (the pool's) for each.

        A worker still starting is not asked: it gets :meth:`replay_with`'s commands instead.
        """
        wait = self.timeout if timeout is None else timeout

        async def ask(worker: _Worker, link: _Link, pid: int) -> WorkerAnswer:
            try:
                result = await link.request(command, payload, wait)
            except TimeoutError:
                return WorkerAnswer(
                    worker.index, pid, error=f"no answer within {format_duration(wait)}"
                )
            except CommandError as exc:
                return WorkerAnswer(worker.index, pid, error=str(exc))
            except ConnectionError:
                return WorkerAnswer(worker.index, pid, error="exited")
            return WorkerAnswer(worker.index, pid, result=result)

        asked = [
            ask(worker, worker.link, worker.process.pid)
            for worker in self._workers
            if worker.index != exclude
            and worker.link is not None
            and worker.report is not None
            and worker.process is not None
            and worker.alive
        ]
        return list(await asyncio.gather(*asked))

    async def _dispatch(self, worker: _Worker, command: str, payload: Payload) -> Any:
        handler = self._handlers.get(command)
        if handler is None:
            raise CommandError(f"the parent has no command {command!r}")
        return await handler(worker.index, payload)

    def _replay_to(self, worker: _Worker) -> None:
        link = worker.link
        if link is None:
            return
        for command, payload in self.replayed():

            async def send(command: str = command, payload: Payload = payload) -> None:
                try:
                    await link.request(command, payload, REPLAY_TIMEOUT)
                except (TimeoutError, CommandError, ConnectionError) as exc:
                    log.warning(
                        "replay to a new worker failed",
                        extra={"worker": worker.index, "command": command, "error": str(exc)},
                    )

            task = asyncio.create_task(send())
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)


class _MergedCollector(Collector):
    """The sum of the workers' latest metric reports."""

    def __init__(self, workers: list[_Worker]) -> None:
        self.workers = workers

    def collect(self) -> Iterable[Metric]:
        families: dict[str, Metric] = {}
        values: dict[str, dict[tuple[str, tuple[tuple[str, str], ...]], float]] = {}
        for worker in self.workers:
            if worker.report is None:
                continue
            for family in text_string_to_metric_families(worker.report.decode("utf-8")):
                if family.name in _SKIP_METRICS:
                    continue
                if family.name not in families:
                    families[family.name] = Metric(family.name, family.documentation, family.type)
                    values[family.name] = {}
                merged = values[family.name]
                for sample in family.samples:
                    key = (sample.name, tuple(sorted(sample.labels.items())))
                    merged[key] = merged.get(key, 0.0) + sample.value
        for name, metric in families.items():
            for (sample_name, labels), value in values[name].items():
                metric.add_sample(sample_name, dict(labels), value)
            yield metric


def worker_target(main: WorkerMain) -> str:
    """The import path of ``main``; workers import it by name."""
    return f"{main.__module__}:{main.__qualname__}"


async def serve_workers(
    rt: Runtime,
    *,
    count: int,
    main: WorkerMain,
    settings: Any,
    name: str,
    pool: WorkerPool | None = None,
) -> None:
    """Run ``main(child_rt, settings)`` in ``count`` worker processes until the parent drains.

    A reload of the parent (SIGHUP, admin ``POST /reload``) reaches every worker as SIGHUP,
    which runs the hooks ``main`` registered with ``child_rt.on_reload``.

    Args:
        rt: the parent's runtime (admin endpoint, signals, lifecycle).
        count: the number of worker processes.
        main: a module-level async function; it must listen with ``reuse_port=True``.
        settings: a picklable value passed to every worker's ``main``.
        name: the component name (logs and metrics).
        pool: the command channel to the workers (see :class:`WorkerPool`); one with the
            default timeout and no commands when not given.

    Raises:
        PodkitError: a worker could not be started, or every worker exited at start.
    """
    pool = pool if pool is not None else WorkerPool()
    target = worker_target(main)
    workers = [_Worker(index) for index in range(count)]
    pool._workers = workers
    collector = _MergedCollector(workers)
    rt.registry.register(collector)
    ready = asyncio.Event()

    def reported(worker: _Worker, kind: int, body: bytes) -> None:
        first = worker.report is None
        worker.report = body
        worker.ready = worker.ready or kind == _KIND_READY
        if first:
            # Reports start inside the worker's runtime: its SIGHUP handler is in place.
            if worker.reload_pending:
                send_reload(worker)
            pool._replay_to(worker)
        if not ready.is_set() and all(w.ready for w in workers):
            ready.set()

    async def read(worker: _Worker, reader: asyncio.StreamReader, link: _Link) -> None:
        try:
            async for kind, body in _frames(reader):
                if kind == _KIND_COMMAND:
                    link.received(body)
                elif kind in (_KIND_REPORT, _KIND_READY):
                    reported(worker, kind, body)
        except PodkitError as exc:
            # A broken channel: the worker is started again with a new one.
            rt.log.error(str(exc), extra={"worker": worker.index})
            if worker.alive:
                assert worker.process is not None
                worker.process.kill()

    def send_reload(worker: _Worker) -> None:
        worker.reload_pending = False
        process = worker.process
        if process is None or process.poll() is not None:
            return  # exited: its replacement loads everything afresh at start
        with contextlib.suppress(ProcessLookupError):
            process.send_signal(signal.SIGHUP)
        rt.log.info("reload sent to worker", extra={"worker": worker.index, "pid": process.pid})

    def forward_reload() -> None:
        for worker in workers:
            if worker.report is None:
                worker.reload_pending = True
            else:
                send_reload(worker)

    rt.on_reload(forward_reload)

    async def start(worker: _Worker) -> None:
        reader, writer = await _open_link(spawn(worker))

        async def dispatch(command: str, payload: Payload) -> Any:
            return await pool._dispatch(worker, command, payload)

        assert worker.process is not None
        worker.link = _Link(writer, dispatch)
        worker.reading = asyncio.create_task(read(worker, reader, worker.link))
        rt.log.info("worker started", extra={"worker": worker.index, "pid": worker.process.pid})

    def spawn(worker: _Worker) -> socket.socket:
        """Start the worker's process; the parent's end of its channel."""
        # Before any await: a reload that arrives from here on is held for the first report.
        worker.reload_pending = False  # a new process reads its configuration afresh
        worker.exited = asyncio.Event()
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        env = dict(os.environ)
        env[_WORKER_ENV] = str(theirs.fileno())
        startup = (target, settings, rt.options, name, pool.timeout, pool.replayed())
        try:
            worker.process = subprocess.Popen(
                [sys.executable, "-c", "from podkit.engines.workers import _child; _child()"],
                stdin=subprocess.PIPE,
                env=env,
                pass_fds=(theirs.fileno(),),
            )
        except OSError as exc:
            ours.close()
            raise PodkitError(f"cannot start worker {worker.index}: {exc}") from exc
        finally:
            theirs.close()
        assert worker.process.stdin is not None
        worker.process.stdin.write(struct.pack("!I", worker.index) + pickle.dumps(startup))
        worker.process.stdin.close()
        return ours

    def close_link(worker: _Worker) -> None:
        if worker.reading is not None:
            worker.reading.cancel()
            worker.reading = None
        if worker.link is not None:
            worker.link.close()
            worker.link = None

    async def supervise(worker: _Worker) -> None:
        while True:
            process = worker.process
            assert process is not None
            code = await asyncio.to_thread(process.wait)
            close_link(worker)
            worker.exited.set()
            if rt.draining.is_set():
                return
            rt.log.error(
                "worker exited; starting it again", extra={"worker": worker.index, "code": code}
            )
            worker.report = None
            worker.ready = False
            await asyncio.sleep(RESTART_DELAY)
            if rt.draining.is_set():
                return
            await start(worker)

    try:
        async with asyncio.TaskGroup() as group:
            for worker in workers:
                await start(worker)
            for worker in workers:
                group.create_task(supervise(worker))

            async def wait_ready() -> None:
                await ready.wait()
                rt.set_ready()
                rt.log.info("workers ready", extra={"workers": count})

            ready_task = group.create_task(wait_ready())
            await rt.wait_draining()
            ready_task.cancel()
            for worker in workers:
                if worker.alive:
                    assert worker.process is not None
                    worker.process.send_signal(signal.SIGTERM)
            try:
                async with asyncio.timeout(rt.drain_timeout + 1.0):
                    for worker in workers:
                        await worker.exited.wait()
            except TimeoutError:
                for worker in workers:
                    if worker.alive:
                        assert worker.process is not None
                        worker.process.kill()
    finally:
        for worker in workers:
            if worker.alive:
                assert worker.process is not None
                worker.process.kill()
            close_link(worker)
        pool._workers = []
        with contextlib.suppress(KeyError):
            rt.registry.unregister(collector)


class WorkerLink:
    """A worker's side of the command channel to its parent (see :func:`worker_link`)."""

    def __init__(self, index: int, timeout: float, startup: list[tuple[str, Payload]]) -> None:
        self.index = index
        self.timeout = timeout  # the parent's broadcast timeout
        self._handlers: dict[str, CommandHandler] = {}
        self._registered: dict[str, asyncio.Event] = {}
        self._startup = list(startup)
        self._link: _Link | None = None
        self._tasks: set[asyncio.Task[Any]] = set()

    def handle(self, command: str, handler: CommandHandler) -> None:
        """Answer the parent's ``command`` with ``handler(payload)``; the start-up replay of
        this command (state set by hand before this worker started) is applied at once."""
        self._handlers[command] = handler
        for queued, payload in self._startup:
            if queued == command:
                result = handler(payload)
                if inspect.isawaitable(result):
                    task = asyncio.ensure_future(result)
                    self._tasks.add(task)
                    task.add_done_callback(self._tasks.discard)
        self._startup = [(c, p) for c, p in self._startup if c != command]
        self._event(command).set()

    def _event(self, command: str) -> asyncio.Event:
        event = self._registered.get(command)
        if event is None:
            event = self._registered[command] = asyncio.Event()
        return event

    async def request(self, command: str, payload: Payload, *, timeout: float | None = None) -> Any:
        """Ask the parent (a command it registered with :meth:`WorkerPool.on_request`).

        Raises:
            TimeoutError: no answer within ``timeout`` (the broadcast timeout and a second).
            CommandError: the parent answered with an error.
            ConnectionError: the channel is closed.
        """
        if self._link is None:
            raise ConnectionError("no channel to the parent")
        wait = self.timeout + 1.0 if timeout is None else timeout
        return await self._link.request(command, payload, wait)

    async def _dispatch(self, command: str, payload: Payload) -> Any:
        # A command may arrive before ``main`` got to register it (a replay right after the
        # first report): it waits for that, as long as a replay may.
        try:
            async with asyncio.timeout(REPLAY_TIMEOUT):
                await self._event(command).wait()
        except TimeoutError:
            raise CommandError(f"worker {self.index} has no command {command!r}") from None
        result = self._handlers[command](payload)
        if inspect.isawaitable(result):
            result = await result
        return result


_LINK: WorkerLink | None = None


def worker_link() -> WorkerLink | None:
    """This worker's channel to its parent; None outside a worker of :func:`serve_workers`."""
    return _LINK


def _child() -> None:
    """The entry point of a worker process (started by :func:`serve_workers`)."""
    global _LINK
    channel = socket.socket(fileno=int(os.environ.pop(_WORKER_ENV)))
    raw = sys.stdin.buffer.read()
    (index,) = struct.unpack("!I", raw[:4])
    target, settings, options, name, timeout, startup = pickle.loads(raw[4:])
    module_name, _, attr = target.partition(":")
    main: WorkerMain = getattr(importlib.import_module(module_name), attr)
    child_options = RuntimeOptions(
        admin=None,
        drain_timeout=options.drain_timeout,
        log_format=options.log_format,
        log_level=options.log_level,
    )
    configure_logging(name, log_format=options.log_format, level=options.log_level)
    # Ctrl-C reaches the whole process group; the parent decides, the workers follow SIGTERM.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    link = _LINK = WorkerLink(index, timeout, startup)

    async def run() -> int:
        runtime = Runtime(name, child_options, registry=new_registry(process_metrics=False))
        runtime.log = runtime.log.getChild(f"worker{index}")
        reader, writer = await _open_link(channel)

        def send_report() -> None:
            ready = runtime.lifecycle.statistics().ready
            data = generate_latest(runtime.registry)
            channel_link.send(_KIND_READY if ready else _KIND_REPORT, data)

        channel_link = link._link = _Link(writer, link._dispatch, fresh_report=send_report)

        async def report() -> None:
            # Fast until the worker is ready (the parent's readiness waits on it), then calm.
            while True:
                if channel_link.backlog() < REPORT_BACKLOG:
                    send_report()  # a report the parent is too slow for is skipped
                ready = runtime.lifecycle.statistics().ready
                await asyncio.sleep(REPORT_INTERVAL if ready else 0.02)

        async def listen() -> None:
            async for kind, body in _frames(reader):
                if kind == _KIND_COMMAND:
                    channel_link.received(body)
            raise PodkitError("the parent process is gone")

        async def worker_main(rt: Runtime) -> None:
            async with asyncio.TaskGroup() as group:
                reporter = group.create_task(report())
                listener = group.create_task(listen())
                try:
                    await main(rt, settings)
                finally:
                    reporter.cancel()
                    listener.cancel()

        try:
            code: int = await serve_component(name, worker_main, child_options, runtime=runtime)
        finally:
            channel_link.close()
        return code

    code = run_async(run())
    sys.exit(code)


__all__ = [
    "DEFAULT_COMMAND_TIMEOUT",
    "REPORT_INTERVAL",
    "CommandError",
    "WorkerAnswer",
    "WorkerLink",
    "WorkerMain",
    "WorkerPool",
    "serve_workers",
    "worker_link",
    "worker_target",
]
