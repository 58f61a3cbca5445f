"""The access log of the HTTP engine: one line per request, as operators of nginx expect.

Every component that serves HTTP on the engine (``proxy``, ``tls``, ``balance``, ``cache``)
writes one line per answered request: time, client, method, target, status, body bytes sent,
duration, upstream, upstream time, cache status and request id. JSON by default (one object
per line, the fields below), or nginx's ``combined`` format for tools that read it.

Lines are gathered in memory and written in one ``write`` per flush (at most every
:data:`FLUSH_INTERVAL`, or when :data:`FLUSH_BYTES` are waiting), so a busy server pays one
system call per batch, not per request; an append-mode file keeps whole lines when several
workers share it. With sampling, only that fraction of 1xx-3xx answers is written; every 4xx
and 5xx is. SIGHUP reopens the file (for logrotate).
"""

from __future__ import annotations

import contextlib
import json
import random
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TextIO

from podkit._pickling import reduce_dataclass
from podkit.errors import ConfigError

if TYPE_CHECKING:
    from podkit.engines.http.messages import Request, Response

FLUSH_INTERVAL = 1.0  # seconds a line may wait in memory (tail -f sees it within a second)
FLUSH_BYTES = 64 * 1024  # written at once beyond this, so memory stays bounded under load
FORMATS = ("json", "combined")
_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")


@dataclass(frozen=True, slots=True)
class AccessLogSettings:
    """Where and how the access log is written (``--access-log*`` flags).

    Attributes:
        destination: ``"-"`` (standard output), ``"off"``, or a file path (appended to).
        format: ``"json"`` or ``"combined"``.
        sample: the fraction of 1xx-3xx answers written (0 < sample <= 1); 4xx/5xx always.
        cache_header: a response field whose value is the cache status (``X-Cache``).
    """

    destination: str = "-"
    format: str = "json"
    sample: float = 1.0
    cache_header: str | None = None

    def __reduce__(self) -> tuple[Any, ...]:
        return reduce_dataclass(self)

    def __post_init__(self) -> None:
        if self.format not in FORMATS:
            raise ConfigError(
                f"must be one of {', '.join(FORMATS)}, got {self.format!r}",
                path="--access-log-format",
            )
        if not 0 < self.sample <= 1:
            raise ConfigError(
                f"must be more than 0% and at most 100%, got {self.sample:g}",
                path="--access-log-sample",
            )

    @property
    def enabled(self) -> bool:
        return self.destination != "off"

    def open(self, component: str) -> AccessLog | None:
        """The log these settings describe, or None when it is off."""
        return AccessLog(self, component=component) if self.enabled else None


class AccessLog:
    """Formats and writes access-log lines (see the module docstring).

    Args:
        settings: destination, format, sampling.
        component: the component's name, in each JSON line.
        stream: write here instead of the destination (tests).
    """

    def __init__(
        self, settings: AccessLogSettings, *, component: str, stream: TextIO | None = None
    ) -> None:
        self.settings = settings
        self.component = component
        self._cache_header = (
            settings.cache_header.lower().encode("latin-1") if settings.cache_header else None
        )
        self._stream = stream
        self._own_stream = False
        self._pending: list[str] = []
        self._pending_bytes = 0
        self._last_flush = time.monotonic()
        self._random = random.Random()
        self.written = 0
        self.failed = 0
        if stream is None:
            self._open()

    def _open(self) -> None:
        destination = self.settings.destination
        if destination == "-":
            self._stream = sys.stdout
            self._own_stream = False
            return
        try:
            self._stream = open(destination, "a", encoding="utf-8", buffering=1)  # noqa: SIM115
        except OSError as exc:
            raise ConfigError(
                f"cannot open {destination}: {exc.strerror or exc}", path="--access-log"
            ) from exc
        self._own_stream = True

    def reopen(self) -> None:
        """Write what waits, then open the file again (after logrotate moved it)."""
        self.flush()
        if self._own_stream and self._stream is not None:
            self._stream.close()
            self._open()

    def close(self) -> None:
        self.flush()
        if self._own_stream and self._stream is not None:
            self._stream.close()
            self._stream = None

    def record(
        self,
        request: Request | None,
        status: int,
        *,
        duration: float,
        sent: int,
        response: Response | None = None,
        client: str = "",
    ) -> None:
        """Log one answered request (``request`` None: refused before it was parsed)."""
        sample = self.settings.sample
        if status < 400 and sample < 1.0 and self._random.random() >= sample:
            return
        now = time.time()
        cache = None
        if self._cache_header is not None and response is not None:
            for name, value in reversed(response.headers):
                if name.lower() == self._cache_header:
                    cache = value.decode("latin-1")
                    break
        if request is not None:
            method, target = request.method, request.target
            client = request.client[0]
            request_id = request.request_id.decode("latin-1")
            upstream, upstream_time = request.upstream, request.upstream_time
            version = request.http_version
        else:
            method, target, request_id, upstream, upstream_time = "-", "-", "", None, None
            version = "1.1"
        if self.settings.format == "json":
            record: dict[str, Any] = {
                "ts": _iso(now),
                "component": self.component,
                "client": client,
                "method": method,
                "target": target,
                "status": status,
                "bytes": sent,
                "duration": round(duration, 6),
                "upstream": upstream,
                "upstream_time": None if upstream_time is None else round(upstream_time, 6),
                "cache": cache,
                "request_id": request_id or None,
            }
            if request is not None:
                record["user_agent"] = request.header("user-agent")
            line = json.dumps(record, ensure_ascii=False, separators=(",", ":"))
        else:
            referer = user_agent = None
            if request is not None:
                referer = request.header("referer")
                user_agent = request.header("user-agent")
            line = (
                f'{client or "-"} - - [{_clf_time(now)}] "{_quote(method)} {_quote(target)} '
                f'HTTP/{version}" {status} {sent} "{_quote(referer or "-")}" '
                f'"{_quote(user_agent or "-")}"'
            )
        self._pending.append(line + "\n")
        self._pending_bytes += len(line) + 1
        if (
            self._pending_bytes >= FLUSH_BYTES
            or time.monotonic() - self._last_flush >= FLUSH_INTERVAL
        ):
            self.flush()

    def flush(self) -> None:
        """Write the waiting lines in one call."""
        self._last_flush = time.monotonic()
        if not self._pending or self._stream is None:
            return
        text = "".join(self._pending)
        count = len(self._pending)
        self._pending = []
        self._pending_bytes = 0
        try:
            self._stream.write(text)
            self._stream.flush()
        except (OSError, ValueError):
            self.failed += count  # a full disk or a closed pipe loses log lines, not requests
            return
        self.written += count


def _iso(now: float) -> str:
    whole = int(now)
    t = time.gmtime(whole)
    millis = int((now - whole) * 1000)
    return (
        f"{t.tm_year:04d}-{t.tm_mon:02d}-{t.tm_mday:02d}T"
        f"{t.tm_hour:02d}:{t.tm_min:02d}:{t.tm_sec:02d}.{millis:03d}Z"
    )


def _clf_time(now: float) -> str:
    t = time.localtime(now)
    offset = t.tm_gmtoff or 0
    sign = "+" if offset >= 0 else "-"
    offset = abs(offset) // 60
    return (
        f"{t.tm_mday:02d}/{_MONTHS[t.tm_mon - 1]}/{t.tm_year:04d}:"
        f"{t.tm_hour:02d}:{t.tm_min:02d}:{t.tm_sec:02d} {sign}{offset // 60:02d}{offset % 60:02d}"
    )


def _quote(text: str) -> str:
    """Escape a value for a quoted field of the combined format (as nginx escapes)."""
    if text.isprintable() and '"' not in text and "\\" not in text:
        return text
    out: list[str] = []
    for char in text:
        if char in '"\\' or not char.isprintable() or ord(char) > 126:
            out.extend(f"\\x{byte:02X}" for byte in char.encode("utf-8"))
        else:
            out.append(char)
    return "".join(out)


@contextlib.contextmanager
def opened_access_log(
    settings: AccessLogSettings,
    *,
    component: str,
    on_reload: Callable[[Callable[[], None]], object] | None = None,
) -> Iterator[AccessLog | None]:
    """The access log ``settings`` describe (None when off), closed (flushed) at the end.

    ``on_reload`` registers a hook, e.g. ``rt.on_reload``: the file is reopened on SIGHUP.
    """
    access_log = settings.open(component)
    if access_log is not None and on_reload is not None:
        on_reload(access_log.reopen)
    try:
        yield access_log
    finally:
        if access_log is not None:
            access_log.close()


def new_request_id() -> bytes:
    """A fresh request id: 32 hex digits, as nginx's ``$request_id``.

    From the ``random`` module's generator (seeded from the OS, and re-seeded in a forked
    child), not ``os.urandom``: a system call per request cost several percent of a proxy's
    time, and an id identifies a request, it is no secret.
    """
    return b"%032x" % random.getrandbits(128)


__all__ = ["FORMATS", "AccessLog", "AccessLogSettings", "new_request_id", "opened_access_log"]
