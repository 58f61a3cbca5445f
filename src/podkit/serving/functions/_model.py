"""Functions and their triggers: what the ``on_*`` decorators record, and the app that holds them.

A trigger decorator does not wrap the function: it attaches a :class:`FunctionSpec` to it
(``__podkit_function__``) and returns it unchanged, so stacking ``on_http`` and ``on_event``
on one function gives it two triggers. :func:`load_app` imports ``app.py`` and collects every
module-level object that carries a spec; nothing is registered in a global.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import importlib.util
import re
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from podkit.errors import ConfigError, UsageError
from podkit.runtime.config import parse_duration
from podkit.runtime.files import FileStamp, file_stamp
from podkit.serving.functions._timers import CronSchedule

F = TypeVar("F", bound=Callable[..., Any])

SPEC_ATTRIBUTE = "__podkit_function__"
DEFAULT_CONCURRENCY = 8  # invocations of one function at a time in one process
MAX_CONCURRENCY = 1000
MAX_WORKERS = 256  # processes of one function on one machine
DEFAULT_MAX_ATTEMPTS = 5  # deliveries of an event or item before it is dead-lettered
DEFAULT_MAX_AGE = 3600.0  # an event older than this is dead-lettered without running
DEFAULT_BACKOFF = 1.0  # first retry waits this long, doubling per attempt (with jitter)
DEFAULT_BACKOFF_CAP = 300.0
METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")
RESERVED_PREFIXES = ("/calls/", "/functions/")  # served by the runner itself
_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_.\-]{0,100}$")
_SEGMENT_PARAM = re.compile(r"^\{([A-Za-z_][A-Za-z0-9_]*)\}$")


@dataclass(frozen=True, slots=True)
class HttpTrigger:
    """``METHOD /path``; segments written ``{name}`` match one segment each."""

    method: str
    path: str

    def match(self, method: str, path: str) -> dict[str, str] | None:
        """The path parameters when ``method`` and ``path`` match, else None."""
        if method != self.method and not (method == "HEAD" and self.method == "GET"):
            return None
        want = self.path.strip("/").split("/")
        got = path.strip("/").split("/")
        if len(want) != len(got):
            return None
        params: dict[str, str] = {}
        for pattern, segment in zip(want, got, strict=True):
            param = _SEGMENT_PARAM.match(pattern)
            if param is not None:
                if not segment:
                    return None
                params[param.group(1)] = segment
            elif pattern != segment:
                return None
        return params

    @property
    def label(self) -> str:
        return f"{self.method} {self.path}"


@dataclass(frozen=True, slots=True)
class EventTrigger:
    """Events of ``type`` whose other attributes equal ``filters``."""

    type: str
    filters: Mapping[str, str] = field(default_factory=dict)

    @property
    def label(self) -> str:
        extra = "".join(f" {k}={v}" for k, v in sorted(self.filters.items()))
        return f"event {self.type}{extra}"


@dataclass(frozen=True, slots=True)
class QueueTrigger:
    """Items of the work queue ``queue`` (in the app's backend)."""

    queue: str

    @property
    def label(self) -> str:
        return f"queue {self.queue}"


@dataclass(frozen=True, slots=True)
class TimerTrigger:
    """Every ``every`` seconds, or at the minutes a cron expression names."""

    every: float | None = None
    cron: CronSchedule | None = None

    @property
    def label(self) -> str:
        if self.cron is not None:
            return f"timer cron {self.cron.expression}"
        return f"timer every {self.every:g}s"


Trigger = HttpTrigger | EventTrigger | QueueTrigger | TimerTrigger


@dataclass(frozen=True, slots=True)
class FunctionSpec:
    """A function with its triggers and delivery settings.

    Attributes:
        name: unique in the app (the Python name unless given).
        handler: the function as decorated (plain or ``async``; wrappers included).
        triggers: where its invocations come from.
        concurrency: invocations at a time; more HTTP requests get 429, more events wait.
        max_attempts: deliveries of one event or item before it is dead-lettered.
        max_age: seconds after which an undelivered event is dead-lettered unrun.
        backoff, backoff_cap: the retry policy of events and items.
        then: a sequence: the function's result is emitted as an event of this type.
        workers: the most worker processes of the function (None: the runner's --workers).
        idle: seconds a worker may do nothing before it stops (None: the runner's --idle).
    """

    name: str
    handler: Callable[..., Any]
    triggers: tuple[Trigger, ...] = ()
    concurrency: int = DEFAULT_CONCURRENCY
    max_attempts: int = DEFAULT_MAX_ATTEMPTS
    max_age: float = DEFAULT_MAX_AGE
    backoff: float = DEFAULT_BACKOFF
    backoff_cap: float = DEFAULT_BACKOFF_CAP
    then: str | None = None
    workers: int | None = None
    idle: float | None = None

    @property
    def queue_name(self) -> str:
        """The work queue that holds this function's events and asynchronous calls."""
        return f"fn.{self.name}"

    @property
    def delivered(self) -> bool:
        """Whether invocations arrive through its work queue (events, queue items)."""
        return any(isinstance(t, EventTrigger | QueueTrigger) for t in self.triggers)


def spec_of(obj: Any) -> FunctionSpec | None:
    """The spec a trigger decorator attached to ``obj``, if any."""
    spec = getattr(obj, SPEC_ATTRIBUTE, None)
    return spec if isinstance(spec, FunctionSpec) else None


def _positive_int(value: int, what: str, upper: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= upper:
        raise UsageError(f"{what} must be a whole number from 1 to {upper}, got {value!r}")
    return value


def _options(**options: Any) -> dict[str, Any]:
    """The options given (not None), checked and with durations in seconds.

    Raises:
        UsageError, ConfigError: a value out of range or malformed.
    """
    changes: dict[str, Any] = {k: v for k, v in options.items() if v is not None}
    if "concurrency" in changes:
        _positive_int(changes["concurrency"], "concurrency", MAX_CONCURRENCY)
    if "max_attempts" in changes:
        _positive_int(changes["max_attempts"], "max_attempts", 1000)
    if "workers" in changes:
        _positive_int(changes["workers"], "workers", MAX_WORKERS)
    for key in ("max_age", "backoff", "backoff_cap", "idle"):
        if key in changes:
            changes[key] = parse_duration(changes[key], field=key)
    return changes


def _add_trigger(
    fn: F,
    trigger: Trigger,
    *,
    name: str | None,
    options: Mapping[str, Any],
) -> F:
    if not callable(fn):
        raise UsageError(f"a trigger decorates a function, got {type(fn).__name__}")
    default_name = str(getattr(fn, "__name__", "function"))
    spec = spec_of(fn) or FunctionSpec(name=name or default_name, handler=fn)
    if name is not None:
        spec = dataclasses.replace(spec, name=name)
    if not _NAME.match(spec.name):
        raise UsageError(f"function names are letters, digits and _.- : {spec.name!r}")
    spec = dataclasses.replace(spec, triggers=(*spec.triggers, trigger), **options)
    try:
        setattr(fn, SPEC_ATTRIBUTE, spec)
    except AttributeError as exc:
        raise UsageError(f"cannot attach a trigger to {fn!r}") from exc
    return fn


def on_http(
    route: str,
    *,
    name: str | None = None,
    concurrency: int | None = None,
    workers: int | None = None,
    idle: str | float | None = None,
) -> Callable[[F], F]:
    """Serve the function at ``route`` (``"POST /signup"``, ``"GET /users/{id}"``).

    The handler gets a :class:`~podkit.functions.FunctionRequest` and returns a dict or list
    (JSON), ``bytes``/``str``, a :class:`~podkit.functions.FunctionResponse`, or None (204).

    Raises:
        UsageError: the route is not ``METHOD /path``.
    """
    method, _, path = route.strip().partition(" ")
    if not path:
        method, path = "GET", method
    method, path = method.upper(), path.strip()
    if method not in METHODS or not path.startswith("/") or " " in path:
        raise UsageError(f"a route is 'METHOD /path' (e.g. 'POST /signup'), got {route!r}")
    if path.startswith(RESERVED_PREFIXES):
        raise UsageError(f"routes under {', '.join(RESERVED_PREFIXES)} are the runner's: {route!r}")
    trigger = HttpTrigger(method, path)
    options = _options(concurrency=concurrency, workers=workers, idle=idle)
    return lambda fn: _add_trigger(fn, trigger, name=name, options=options)


def on_event(
    type: str,
    *,
    name: str | None = None,
    filters: Mapping[str, str] | None = None,
    concurrency: int | None = None,
    max_attempts: int | None = None,
    max_age: str | float | None = None,
    backoff: str | float | None = None,
    backoff_cap: str | float | None = None,
    then: str | None = None,
    workers: int | None = None,
    idle: str | float | None = None,
) -> Callable[[F], F]:
    """Run the function for each event of ``type`` (a CloudEvent; its payload is ``.data``).

    Delivery is at least once through the function's work queue; a raising function is
    retried with backoff and dead-lettered after ``max_attempts``; an event older than
    ``max_age`` is dead-lettered without running. With ``then``, the result is emitted as an
    event of that type (a sequence of functions).
    """
    if not type:
        raise UsageError("on_event needs an event type")
    trigger = EventTrigger(type, dict(filters or {}))
    options = _options(
        concurrency=concurrency,
        max_attempts=max_attempts,
        max_age=max_age,
        backoff=backoff,
        backoff_cap=backoff_cap,
        then=then,
        workers=workers,
        idle=idle,
    )
    return lambda fn: _add_trigger(fn, trigger, name=name, options=options)


def on_queue(
    queue: str,
    *,
    name: str | None = None,
    concurrency: int | None = None,
    max_attempts: int | None = None,
    backoff: str | float | None = None,
    backoff_cap: str | float | None = None,
    workers: int | None = None,
    idle: str | float | None = None,
) -> Callable[[F], F]:
    """Run the function for each item of the work queue ``queue`` (it gets the item's value)."""
    from podkit.backends.queues import QUEUE_NAME_PATTERN

    if not QUEUE_NAME_PATTERN.match(queue):
        raise UsageError(f"queue names are 1-128 letters, digits and _.- : {queue!r}")
    options = _options(
        concurrency=concurrency,
        max_attempts=max_attempts,
        backoff=backoff,
        backoff_cap=backoff_cap,
        workers=workers,
        idle=idle,
    )
    return lambda fn: _add_trigger(fn, QueueTrigger(queue), name=name, options=options)


def on_timer(
    *,
    every: str | float | None = None,
    cron: str | None = None,
    name: str | None = None,
    workers: int | None = None,
    idle: str | float | None = None,
) -> Callable[[F], F]:
    """Run the function every ``every`` (``"30s"``) or at the minutes of ``cron``
    (``"*/5 * * * *"``, UTC). The function takes no argument."""
    if (every is None) == (cron is None):
        raise UsageError("on_timer takes one of every= or cron=")
    if every is not None:
        seconds = parse_duration(every, field="every")
        if seconds <= 0:
            raise UsageError("on_timer every= must be positive")
        trigger = TimerTrigger(every=seconds)
    else:
        assert cron is not None
        trigger = TimerTrigger(cron=CronSchedule.parse(cron))
    options = _options(workers=workers, idle=idle)
    return lambda fn: _add_trigger(fn, trigger, name=name, options=options)


@dataclass(frozen=True, slots=True)
class FunctionApp:
    """The functions of one app file, by name.

    Raises:
        ConfigError: two functions share a name, or two routes are the same.
    """

    functions: Mapping[str, FunctionSpec]
    source: str = "<app>"
    # routes without {parameters}, by (method, path): found without matching each route
    static_routes: Mapping[tuple[str, str], FunctionSpec] = field(default_factory=dict)

    @classmethod
    def from_specs(cls, specs: list[FunctionSpec], *, source: str = "<app>") -> FunctionApp:
        by_name: dict[str, FunctionSpec] = {}
        routes: dict[tuple[str, str], str] = {}
        for spec in specs:
            other = by_name.get(spec.name)
            if other is not None and other.handler is not spec.handler:
                raise ConfigError(f"two functions are named {spec.name!r}", source=source)
            by_name[spec.name] = spec
            for trigger in spec.triggers:
                if isinstance(trigger, HttpTrigger):
                    key = (trigger.method, trigger.path)
                    if key in routes and routes[key] != spec.name:
                        raise ConfigError(
                            f"route {trigger.label} is served by {routes[key]!r} and {spec.name!r}",
                            source=source,
                        )
                    routes[key] = spec.name
        static = {
            (t.method, t.path): spec
            for spec in by_name.values()
            for t in spec.triggers
            if isinstance(t, HttpTrigger) and "{" not in t.path
        }
        for (method, path), spec in list(static.items()):
            if method == "GET":
                static.setdefault(("HEAD", path), spec)
        return cls(by_name, source, static)

    @classmethod
    def collect(cls, *functions: Callable[..., Any], source: str = "<app>") -> FunctionApp:
        """An app of the given decorated functions (for embedding and tests).

        Raises:
            UsageError: a function carries no trigger.
            ConfigError: two functions share a name or a route.
        """
        specs = []
        for fn in functions:
            spec = spec_of(fn)
            if spec is None:
                raise UsageError(f"{fn!r} has no trigger (on_http, on_event, on_queue, on_timer)")
            specs.append(spec)
        return cls.from_specs(specs, source=source)

    def get(self, name: str) -> FunctionSpec:
        """The function named ``name``.

        Raises:
            UsageError: no such function.
        """
        try:
            return self.functions[name]
        except KeyError:
            known = ", ".join(sorted(self.functions)) or "none"
            raise UsageError(f"no function named {name!r} (known: {known})") from None

    def route(self, method: str, path: str) -> tuple[FunctionSpec, dict[str, str]] | None:
        """The function serving ``method path`` and its path parameters."""
        spec = self.static_routes.get((method, path))
        if spec is not None:
            return spec, {}
        for spec in self.functions.values():
            for trigger in spec.triggers:
                if isinstance(trigger, HttpTrigger):
                    params = trigger.match(method, path)
                    if params is not None:
                        return spec, params
        return None

    def allowed_methods(self, path: str) -> list[str]:
        """Methods some route serves at ``path`` (for a 405's ``Allow``)."""
        found = {
            trigger.method
            for spec in self.functions.values()
            for trigger in spec.triggers
            if isinstance(trigger, HttpTrigger) and trigger.match(trigger.method, path) is not None
        }
        return sorted(found)

    def subscribers(self, event_type: str) -> list[tuple[FunctionSpec, EventTrigger]]:
        """Functions subscribed to events of ``event_type`` (filters still to check)."""
        return [
            (spec, trigger)
            for spec in self.functions.values()
            for trigger in spec.triggers
            if isinstance(trigger, EventTrigger) and trigger.type == event_type
        ]


def load_app(path: str | Path) -> FunctionApp:
    """Import ``path`` (a Python file) and collect its functions.

    The file's directory goes first on ``sys.path`` so it can import its neighbours.

    Raises:
        ConfigError: the file cannot be read or imported, or defines no function.
    """
    file = Path(path)
    if not file.is_file():
        raise ConfigError("no such file", source=str(path))
    digest = hashlib.sha256(str(file.resolve()).encode()).hexdigest()[:16]
    module_name = f"podkit_functions_app_{digest}"
    spec = importlib.util.spec_from_file_location(module_name, file)
    if spec is None or spec.loader is None:
        raise ConfigError("not a Python file", source=str(path))
    module = importlib.util.module_from_spec(spec)
    directory = str(file.resolve().parent)
    if directory not in sys.path:
        sys.path.insert(0, directory)
    sys.modules[module_name] = module
    try:
        spec.loader.exec_module(module)
    except (UsageError, ConfigError) as exc:
        raise ConfigError(str(exc), source=str(path)) from exc
    except Exception as exc:
        sys.modules.pop(module_name, None)
        raise ConfigError(f"import failed: {type(exc).__name__}: {exc}", source=str(path)) from exc
    specs = [s for obj in vars(module).values() if (s := spec_of(obj)) is not None]
    if not specs:
        raise ConfigError(
            "defines no function (decorate one with on_http, on_event, on_queue or on_timer)",
            source=str(path),
        )
    return FunctionApp.from_specs(specs, source=str(path))


def app_fingerprint(path: str | Path) -> tuple[tuple[str, FileStamp | None], ...]:
    """What identifies a version of the app: the stamps of the Python files beside ``path``
    (the app file and the modules it may import from its directory)."""
    directory = Path(path).resolve().parent
    with contextlib.suppress(OSError):
        return tuple((f.name, file_stamp(f)) for f in sorted(directory.glob("*.py")))
    return ()
