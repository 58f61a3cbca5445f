"""The shell every component runs in: signals, lifecycle, admin endpoint and drain.

Theory of operation. A component is an async function ``main(rt)``. It starts its servers,
calls ``rt.set_ready()``, then waits for ``rt.wait_draining()`` and finishes its in-flight work.
:func:`run_component` owns everything around it:

* the first SIGTERM (or SIGINT) moves the lifecycle to DRAINING: ``/readyz`` answers 503 at
  once and ``rt.draining`` is set; ``main`` has ``drain_timeout`` seconds to return, after which
  it is cancelled;
* a second SIGTERM or SIGINT cancels ``main`` at once (a forced stop);
* SIGHUP runs the reload hooks registered with ``rt.on_reload``;
* the admin endpoint (``/healthz``, ``/readyz``, ``/metrics`` and extra routes a component adds)
  runs beside ``main`` for the whole life of the process.

A component never installs its own signal handlers or admin server.
"""

from __future__ import annotations

import asyncio
import inspect
import json
import signal
import sys
from collections.abc import Awaitable, Callable, Coroutine, Mapping
from dataclasses import dataclass
from typing import Any, get_args

from prometheus_client import CollectorRegistry, Gauge

from podkit.errors import ConfigError, PodkitError
from podkit.runtime.config import HostPort, parse_duration, parse_hostport
from podkit.runtime.httpserver import Handler, Request, Response, SimpleHTTPServer
from podkit.runtime.lifecycle import Lifecycle, Phase
from podkit.runtime.logging import LOG_LEVELS, LogFormat, configure_logging, get_logger
from podkit.runtime.metrics import CONTENT_TYPE_LATEST, new_registry, render

DEFAULT_DRAIN_TIMEOUT = 10.0  # below Kubernetes' 30 s terminationGracePeriodSeconds

ReloadHook = Callable[[], Awaitable[None] | None]
# A component's live figures for ``GET /status``: plain JSON values, and a one-line
# ``summary`` for people (``podkit status`` shows it).
StatusProvider = Callable[[], Mapping[str, Any]]


@dataclass(frozen=True, slots=True, init=False)
class RuntimeOptions:
    """What every component shares, parsed from ``--admin``, ``--drain-timeout``, ``--log-*``.

    Args:
        admin: where to serve the admin endpoint: a :class:`HostPort` or ``"HOST:PORT"``;
            None for no admin endpoint.
        drain_timeout: seconds, or a duration such as ``"10s"``.
        log_format: ``"json"`` or ``"text"``.
        log_level: ``"debug"``, ``"info"``, ``"warning"`` or ``"error"``.

    Raises:
        ConfigError: a value has the wrong form (naming the field).
    """

    admin: HostPort | None
    drain_timeout: float
    log_format: LogFormat
    log_level: str

    def __init__(
        self,
        admin: HostPort | str | None = None,
        drain_timeout: float | str = DEFAULT_DRAIN_TIMEOUT,
        log_format: LogFormat = "json",
        log_level: str = "info",
    ) -> None:
        if isinstance(admin, str):
            admin = parse_hostport(admin, field="admin", default_host=None)
        elif admin is not None and not isinstance(admin, HostPort):
            raise ConfigError(
                f"expected HOST:PORT or a HostPort, got {type(admin).__name__}", path="admin"
            )
        if log_format not in get_args(LogFormat):
            raise ConfigError(f"expected json or text, got {log_format!r}", path="log_format")
        if log_level not in LOG_LEVELS:
            raise ConfigError(
                f"expected one of {', '.join(LOG_LEVELS)}, got {log_level!r}", path="log_level"
            )
        object.__setattr__(self, "admin", admin)
        object.__setattr__(
            self, "drain_timeout", parse_duration(drain_timeout, field="drain_timeout")
        )
        object.__setattr__(self, "log_format", log_format)
        object.__setattr__(self, "log_level", log_level)


class Runtime:
    """The handle a component's ``main`` receives."""

    def __init__(
        self, name: str, options: RuntimeOptions, *, registry: CollectorRegistry | None = None
    ) -> None:
        self.name = name
        self.options = options
        self.registry = registry if registry is not None else new_registry()
        self.lifecycle = Lifecycle()
        self.log = get_logger(name)
        self.draining = asyncio.Event()
        self._reload_hooks: list[ReloadHook] = []
        self._routes: dict[str, Handler] = {}
        self._status: list[StatusProvider] = []
        self._phase_gauge = Gauge(
            "podkit_lifecycle_phase",
            "Current lifecycle phase of the component (1 for the current phase).",
            ["component", "phase"],
            registry=self.registry,
        )
        self._show_phase()
        self.admin_server: SimpleHTTPServer | None = None

    @property
    def drain_timeout(self) -> float:
        return self.options.drain_timeout

    def _show_phase(self) -> None:
        for phase in Phase:
            self._phase_gauge.labels(self.name, phase.value).set(
                1 if phase is self.lifecycle.phase else 0
            )

    def set_ready(self) -> None:
        """Enter rotation: ``/readyz`` answers 200."""
        if self.lifecycle.ready():
            self.log.info("ready")
            self._show_phase()

    def set_not_ready(self, reason: str) -> None:
        """Leave rotation: ``/readyz`` answers 503 with ``reason``."""
        if self.lifecycle.not_ready(reason):
            self.log.warning("not ready", extra={"reason": reason})
            self._show_phase()

    def begin_drain(self, reason: str = "draining") -> None:
        """Start draining (what the first SIGTERM does)."""
        if self.lifecycle.drain(reason):
            self.log.info("draining", extra={"drain_timeout": self.drain_timeout})
            self._show_phase()
        self.draining.set()

    async def wait_draining(self) -> None:
        """Return when the component must stop taking new work."""
        await self.draining.wait()

    def on_reload(self, hook: ReloadHook) -> None:
        """Call ``hook`` on SIGHUP (or an admin ``POST /reload``)."""
        self._reload_hooks.append(hook)

    def add_status(self, provider: StatusProvider) -> None:
        """Add the figures ``provider()`` returns to ``GET /status`` (called per request).

        By convention a ``summary`` key holds one short line for people, such as
        ``backends 3/3 ready``; the other keys are the figures as plain JSON values.
        """
        self._status.append(provider)

    def status(self) -> dict[str, Any]:
        """The body of ``GET /status``: the lifecycle phase and every provider's figures."""
        snap = self.lifecycle.statistics()
        body: dict[str, Any] = {
            "component": self.name,
            "phase": snap.phase.value,
            "reason": snap.reason,
        }
        for provider in self._status:
            try:
                body.update(provider())
            except Exception:
                self.log.exception("status figures failed")
        return body

    def add_route(self, path: str, handler: Handler) -> None:
        """Serve ``handler`` on the admin endpoint at ``path`` (exact match)."""
        self._routes[path] = handler

    async def reload(self) -> None:
        """Run every reload hook; a failing hook is logged and the others still run."""
        self.log.info("reloading")
        for hook in self._reload_hooks:
            try:
                result = hook()
                if inspect.isawaitable(result):
                    await result
            except Exception:
                self.log.exception("reload hook failed")

    async def handle_admin(self, request: Request) -> Response:
        path = request.path
        if path == "/healthz":
            return Response.text(200, "ok\n")
        if path == "/readyz":
            snap = self.lifecycle.statistics()
            if snap.ready:
                return Response.text(200, "ready\n")
            return Response.text(503, f"not ready: {snap.reason}\n")
        if path == "/metrics":
            return Response(200, [("Content-Type", CONTENT_TYPE_LATEST)], render(self.registry))
        if path == "/reload" and request.method == "POST":
            await self.reload()
            return Response.text(200, "reloaded\n")
        if path == "/status":
            return Response.json(200, json.dumps(self.status()))
        handler = self._routes.get(path)
        if handler is not None:
            return await handler(request)
        return Response.text(404, "not found\n")


ComponentMain = Callable[[Runtime], Coroutine[Any, Any, None]]


async def serve_component(
    name: str, main: ComponentMain, options: RuntimeOptions, *, runtime: Runtime | None = None
) -> int:
    """Run ``main`` inside the runtime until it returns, drains or is forced to stop.

    Returns:
        The process exit code: 0 after a clean run or drain, 1 if ``main`` failed.

    Raises:
        PodkitError: the admin endpoint could not be started (e.g. its port is in use).
    """
    rt = runtime or Runtime(name, options)
    loop = asyncio.get_running_loop()
    signals_seen = 0
    main_task: asyncio.Task[None] | None = None
    forced = False

    def on_stop_signal(signum: int) -> None:
        nonlocal signals_seen, forced
        signals_seen += 1
        signame = signal.Signals(signum).name
        if signals_seen == 1:
            rt.log.info("stop signal received", extra={"signal": signame})
            rt.begin_drain(f"{signame} received")
        else:
            rt.log.warning("second stop signal: stopping now", extra={"signal": signame})
            forced = True
            if main_task is not None:
                main_task.cancel()

    def on_hup() -> None:
        reload_task = loop.create_task(rt.reload())
        reload_tasks.add(reload_task)
        reload_task.add_done_callback(reload_tasks.discard)

    reload_tasks: set[asyncio.Task[None]] = set()
    installed: list[signal.Signals] = []
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, on_stop_signal, sig)
        installed.append(sig)
    loop.add_signal_handler(signal.SIGHUP, on_hup)
    installed.append(signal.SIGHUP)

    admin: SimpleHTTPServer | None = None
    try:
        if options.admin is not None:
            admin = SimpleHTTPServer(
                rt.handle_admin, options.admin.host, options.admin.port, name="admin"
            )
            await admin.start()
            rt.admin_server = admin
            rt.log.info(
                "admin endpoint listening", extra={"admin": f"{options.admin.host}:{admin.port}"}
            )
        main_task = loop.create_task(main(rt), name=f"{name}-main")

        async def drain_watchdog() -> None:
            await rt.wait_draining()
            await asyncio.sleep(rt.drain_timeout)
            if main_task is not None and not main_task.done():
                rt.log.warning("drain timeout passed: stopping now")
                main_task.cancel()

        watchdog = loop.create_task(drain_watchdog())
        try:
            await main_task
            code = 0
        except asyncio.CancelledError:
            if not (forced or rt.draining.is_set()):
                raise
            code = 0
        except PodkitError:
            raise
        except Exception as exc:
            known = _podkit_error_in(exc)
            if known is not None:
                # A TaskGroup wrapped it (a server that could not listen, a backend that
                # cannot be reached): the CLI prints it as its one line.
                raise known from exc
            rt.log.exception("component failed")
            code = 1
        finally:
            watchdog.cancel()
            await asyncio.gather(watchdog, return_exceptions=True)
        rt.lifecycle.stop()
        rt._show_phase()
        rt.log.info("stopped")
        return code
    finally:
        for sig in installed:
            loop.remove_signal_handler(sig)
        for task in list(reload_tasks):
            task.cancel()
        if admin is not None:
            await admin.aclose()


def _podkit_error_in(exc: BaseException) -> PodkitError | None:
    """The first :class:`PodkitError` of an exception group made only of them, else None."""
    if not isinstance(exc, BaseExceptionGroup):
        return None
    leaves: list[BaseException] = []
    pending: list[BaseException] = [exc]
    while pending:
        item = pending.pop(0)
        if isinstance(item, BaseExceptionGroup):
            pending.extend(item.exceptions)
        else:
            leaves.append(item)
    if leaves and all(isinstance(leaf, PodkitError) for leaf in leaves):
        first = leaves[0]
        assert isinstance(first, PodkitError)
        return first
    return None


def run_component(name: str, main: ComponentMain, options: RuntimeOptions) -> int:
    """Configure logging, start an event loop (uvloop where available) and serve the component.

    Returns:
        The exit code for the process.
    """
    configure_logging(name, log_format=options.log_format, level=options.log_level)
    code: int = run_async(serve_component(name, main, options))
    return code


def run_async(coro: Awaitable[Any]) -> Any:
    """Run ``coro`` on uvloop when it is installed, else on the default asyncio loop."""

    async def wrapper() -> Any:
        return await coro

    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency on every supported platform
        return asyncio.run(wrapper())
    if sys.version_info >= (3, 12):  # pragma: no cover
        return uvloop.run(wrapper())
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(wrapper())
