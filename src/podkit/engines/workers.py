"""Multi-process serving: N worker processes share one listening port (SO_REUSEPORT).

Theory of operation. The parent process is the component the runtime sees: it owns the admin
endpoint, the signals and the lifecycle. It starts ``count`` worker processes; each runs the
same ``main(rt)`` with a child runtime that has no admin endpoint and binds its listener with
``reuse_port=True``, so the kernel spreads new connections over the workers' accept queues.

Each worker sends its metrics (Prometheus text, without process metrics) to the parent over a
pipe every :data:`REPORT_INTERVAL` seconds; the parent's ``/metrics`` shows the sum over the
workers' latest reports (counters and histograms add up; so do gauges such as open
connections). The parent is ready once every worker reported once. A worker that dies while
the parent is not draining is started again. On SIGTERM the parent forwards SIGTERM to every
worker, waits for them to drain (``drain_timeout``), and kills what is left.

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
import os
import pickle
import signal
import struct
import subprocess
import sys
from collections.abc import Callable, Coroutine, Iterable
from dataclasses import dataclass, field
from typing import Any

from prometheus_client import generate_latest
from prometheus_client.core import Metric
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import Collector

from podkit.errors import PodkitError
from podkit.runtime import Runtime, RuntimeOptions, configure_logging, run_async, serve_component
from podkit.runtime.metrics import new_registry

REPORT_INTERVAL = 0.5  # seconds between worker metric reports: /metrics lags by at most this
RESTART_DELAY = 1.0  # a crashing worker is started again at most this often
_WORKER_ENV = "PODKIT_WORKER_REPORT_FD"
_SKIP_METRICS = frozenset({"podkit_lifecycle_phase"})  # per-process; the parent has its own

WorkerMain = Callable[[Runtime, Any], Coroutine[Any, Any, None]]


@dataclass
class _Worker:
    index: int
    process: subprocess.Popen[bytes] | None = None
    read_fd: int = -1
    buffer: bytearray = field(default_factory=bytearray)
    report: bytes | None = None
    ready: bool = False
    reload_pending: bool = False
    exited: asyncio.Event = field(default_factory=asyncio.Event)


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
    rt: Runtime, *, count: int, main: WorkerMain, settings: Any, name: str
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

    Raises:
        PodkitError: a worker could not be started, or every worker exited at start.
    """
    payload = pickle.dumps((worker_target(main), settings, rt.options, name))
    workers = [_Worker(index) for index in range(count)]
    collector = _MergedCollector(workers)
    rt.registry.register(collector)
    loop = asyncio.get_running_loop()
    ready = asyncio.Event()

    def on_readable(worker: _Worker) -> None:
        try:
            data = os.read(worker.read_fd, 1 << 20)
        except OSError:
            data = b""
        if not data:
            loop.remove_reader(worker.read_fd)
            return
        worker.buffer += data
        while len(worker.buffer) >= 4:
            (size,) = struct.unpack("!I", worker.buffer[:4])
            if len(worker.buffer) < 4 + size:
                break
            frame = bytes(worker.buffer[4 : 4 + size])
            del worker.buffer[: 4 + size]
            first = worker.report is None
            worker.report = frame[1:]
            worker.ready = worker.ready or frame[0] == 1
            if first and worker.reload_pending:
                # Reports start inside the worker's runtime: its SIGHUP handler is in place.
                send_reload(worker)
        if not ready.is_set() and all(w.ready for w in workers):
            ready.set()

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

    def start(worker: _Worker) -> None:
        read_fd, write_fd = os.pipe()
        env = dict(os.environ)
        env[_WORKER_ENV] = str(write_fd)
        try:
            worker.process = subprocess.Popen(
                [sys.executable, "-c", "from podkit.engines.workers import _child; _child()"],
                stdin=subprocess.PIPE,
                env=env,
                pass_fds=(write_fd,),
            )
        except OSError as exc:
            os.close(read_fd)
            os.close(write_fd)
            raise PodkitError(f"cannot start worker {worker.index}: {exc}") from exc
        os.close(write_fd)
        assert worker.process.stdin is not None
        worker.process.stdin.write(struct.pack("!I", worker.index) + payload)
        worker.process.stdin.close()
        worker.read_fd = read_fd
        worker.buffer.clear()
        worker.reload_pending = False  # a new process reads its configuration afresh
        worker.exited = asyncio.Event()
        os.set_blocking(read_fd, False)
        loop.add_reader(read_fd, on_readable, worker)
        rt.log.info("worker started", extra={"worker": worker.index, "pid": worker.process.pid})

    async def supervise(worker: _Worker) -> None:
        while True:
            process = worker.process
            assert process is not None
            code = await asyncio.to_thread(process.wait)
            with contextlib.suppress(ValueError, OSError):
                loop.remove_reader(worker.read_fd)
            with contextlib.suppress(OSError):
                os.close(worker.read_fd)
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
            start(worker)

    try:
        async with asyncio.TaskGroup() as group:
            for worker in workers:
                start(worker)
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
                if worker.process is not None and worker.process.poll() is None:
                    worker.process.send_signal(signal.SIGTERM)
            try:
                async with asyncio.timeout(rt.drain_timeout + 1.0):
                    for worker in workers:
                        await worker.exited.wait()
            except TimeoutError:
                for worker in workers:
                    if worker.process is not None and worker.process.poll() is None:
                        worker.process.kill()
    finally:
        for worker in workers:
            if worker.process is not None and worker.process.poll() is None:
                worker.process.kill()
        with contextlib.suppress(KeyError):
            rt.registry.unregister(collector)


def _child() -> None:
    """The entry point of a worker process (started by :func:`serve_workers`)."""
    report_fd = int(os.environ.pop(_WORKER_ENV))
    os.set_blocking(report_fd, False)
    raw = sys.stdin.buffer.read()
    (index,) = struct.unpack("!I", raw[:4])
    target, settings, options, name = pickle.loads(raw[4:])
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

    async def run() -> int:
        runtime = Runtime(name, child_options, registry=new_registry(process_metrics=False))
        runtime.log = runtime.log.getChild(f"worker{index}")

        async def report() -> None:
            # Fast until the worker is ready (the parent's readiness waits on it), then calm.
            while True:
                ready = runtime.lifecycle.statistics().ready
                data = generate_latest(runtime.registry)
                frame = struct.pack("!IB", len(data) + 1, 1 if ready else 0) + data
                with contextlib.suppress(BlockingIOError):
                    os.write(report_fd, frame)  # a report the parent is too slow for is dropped
                await asyncio.sleep(REPORT_INTERVAL if ready else 0.02)

        async def worker_main(rt: Runtime) -> None:
            async with asyncio.TaskGroup() as group:
                reporter = group.create_task(report())
                try:
                    await main(rt, settings)
                finally:
                    reporter.cancel()

        code: int = await serve_component(name, worker_main, child_options, runtime=runtime)
        return code

    code = run_async(run())
    os.close(report_fd)
    sys.exit(code)


__all__ = ["REPORT_INTERVAL", "WorkerMain", "serve_workers", "worker_target"]
