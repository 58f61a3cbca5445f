"""The command-line options of every command that serves HTTP on the engine.

``podkit proxy``, ``podkit tls``, ``podkit balance`` and ``podkit cache`` accept the same
client-facing limits (:func:`server_limit_options`, folded into one
:class:`~podkit.engines.http.ServerLimits`) and the same two upstream timeouts
(:func:`upstream_timeout_options`), so a flag means the same thing, with the same default,
whichever of them runs.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Sequence
from typing import Any, TypeVar, cast

import click

from podkit.engines.http.access_log import FORMATS, AccessLogSettings
from podkit.engines.http.rules import (
    DEFAULT_BODY_TIMEOUT,
    DEFAULT_HEADER_TIMEOUT,
    DEFAULT_KEEPALIVE_TIMEOUT,
    DEFAULT_MAX_BODY_BYTES,
    DEFAULT_MAX_CONNECTIONS,
    DEFAULT_MAX_HEADER_BYTES,
    DEFAULT_MAX_HEADER_COUNT,
    DEFAULT_MAX_PIPELINE,
    DEFAULT_MAX_URI_BYTES,
    ServerLimits,
)
from podkit.errors import ConfigError
from podkit.runtime.cli_options import DURATION, SIZE
from podkit.runtime.config import format_duration, format_size

F = TypeVar("F", bound=Callable[..., Any])

# The keyword argument of each limit option, in the order the options are listed.
LIMIT_PARAMS: tuple[str, ...] = (
    "max_header_bytes",
    "max_header_count",
    "max_uri_bytes",
    "max_body_bytes",
    "header_timeout",
    "body_timeout",
    "keepalive_timeout",
    "max_connections",
    "max_pipeline",
    "underscores_in_headers",
)


def server_limits(
    *,
    max_header_bytes: int = DEFAULT_MAX_HEADER_BYTES,
    max_header_count: int = DEFAULT_MAX_HEADER_COUNT,
    max_uri_bytes: int = DEFAULT_MAX_URI_BYTES,
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
    header_timeout: float = DEFAULT_HEADER_TIMEOUT,
    body_timeout: float = DEFAULT_BODY_TIMEOUT,
    keepalive_timeout: float = DEFAULT_KEEPALIVE_TIMEOUT,
    max_connections: int = DEFAULT_MAX_CONNECTIONS,
    max_pipeline: int = DEFAULT_MAX_PIPELINE,
    underscores_in_headers: bool = False,
) -> ServerLimits:
    """Validated :class:`ServerLimits` from the values of :func:`server_limit_options`.

    Every size, count and timeout must be more than 0; only ``max_body_bytes`` may be 0
    (every request with a body is then answered 413).

    Raises:
        ConfigError: a value is out of range; its path is the flag, e.g. ``--max-header-bytes``.
    """
    positive: dict[str, float] = {
        "max_header_bytes": max_header_bytes,
        "max_header_count": max_header_count,
        "max_uri_bytes": max_uri_bytes,
        "header_timeout": header_timeout,
        "body_timeout": body_timeout,
        "keepalive_timeout": keepalive_timeout,
        "max_connections": max_connections,
        "max_pipeline": max_pipeline,
    }
    for name, value in positive.items():
        if not value > 0:
            raise ConfigError(f"must be more than 0, got {value:g}", path=_flag(name))
    if max_body_bytes < 0:
        raise ConfigError(f"must be 0 or more, got {max_body_bytes}", path=_flag("max_body_bytes"))
    return ServerLimits(
        max_header_bytes=max_header_bytes,
        max_header_count=max_header_count,
        max_uri_bytes=max_uri_bytes,
        max_body_bytes=max_body_bytes,
        header_timeout=header_timeout,
        body_timeout=body_timeout,
        keepalive_timeout=keepalive_timeout,
        max_connections=max_connections,
        max_pipeline=max_pipeline,
        underscores_in_headers=underscores_in_headers,
    )


def server_limit_options(func: F) -> F:
    """Add the engine's client-facing limits to a command (see :class:`ServerLimits`).

    ``--max-header-bytes``, ``--max-header-count``, ``--max-uri-bytes``, ``--max-body-bytes``,
    ``--header-timeout``, ``--body-timeout``, ``--keepalive-timeout``, ``--max-connections``,
    ``--max-pipeline`` and ``--underscores-in-headers`` reach the command folded into one
    ``limits: ServerLimits`` keyword argument, validated by :func:`server_limits` (a value
    out of range exits 2 with one line).
    """
    options = [
        click.option(
            "--max-header-bytes",
            type=SIZE,
            default=format_size(DEFAULT_MAX_HEADER_BYTES),
            show_default=True,
            help="Largest request head: request line and header fields (431 above it).",
        ),
        click.option(
            "--max-header-count",
            type=click.IntRange(min=1),
            default=DEFAULT_MAX_HEADER_COUNT,
            show_default=True,
            help="Most request header fields (431 above it).",
        ),
        click.option(
            "--max-uri-bytes",
            type=SIZE,
            default=format_size(DEFAULT_MAX_URI_BYTES),
            show_default=True,
            help="Longest request target (414 above it).",
        ),
        click.option(
            "--max-body-bytes",
            type=SIZE,
            default=format_size(DEFAULT_MAX_BODY_BYTES),
            show_default=True,
            help="Largest request body (413 above it; 0 refuses every body).",
        ),
        click.option(
            "--header-timeout",
            type=DURATION,
            default=format_duration(DEFAULT_HEADER_TIMEOUT),
            show_default=True,
            help="Time for a client to send a request head (408 after it).",
        ),
        click.option(
            "--body-timeout",
            type=DURATION,
            default=format_duration(DEFAULT_BODY_TIMEOUT),
            show_default=True,
            help="Silence allowed while a request body is received (408 after it).",
        ),
        click.option(
            "--keepalive-timeout",
            type=DURATION,
            default=format_duration(DEFAULT_KEEPALIVE_TIMEOUT),
            show_default=True,
            help="Idle time before a client keep-alive connection is closed.",
        ),
        click.option(
            "--max-connections",
            type=click.IntRange(min=1),
            default=DEFAULT_MAX_CONNECTIONS,
            show_default=True,
            help="Most client connections open at once (more are answered 503 and closed).",
        ),
        click.option(
            "--max-pipeline",
            type=click.IntRange(min=1),
            default=DEFAULT_MAX_PIPELINE,
            show_default=True,
            help="Pipelined requests queued per connection behind the one in progress "
            "(503 beyond).",
        ),
        click.option(
            "--underscores-in-headers/--no-underscores-in-headers",
            default=False,
            show_default=True,
            help="Keep request header fields whose names contain '_' (dropped by default, "
            "as nginx does: apps may read X_Client_Cert as X-Client-Cert).",
        ),
    ]

    def fold(kwargs: dict[str, Any]) -> None:
        values = {name: kwargs.pop(name) for name in LIMIT_PARAMS}
        kwargs["limits"] = server_limits(**values)

    return _folding(func, options, fold)


def parse_fraction(text: str, *, field: str) -> float:
    """``10%`` or ``0.1`` as 0.1.

    Raises:
        ConfigError: not a number or a percentage.
    """
    value = text.strip()
    try:
        number = float(value[:-1]) / 100 if value.endswith("%") else float(value)
    except ValueError:
        raise ConfigError(f"expected a percentage such as 10%, got {text!r}", path=field) from None
    return number


def access_log_options(func: F) -> F:
    """Add ``--access-log``, ``--access-log-format`` and ``--access-log-sample``.

    They reach the command folded into one ``access_log:``
    :class:`~podkit.engines.http.access_log.AccessLogSettings` keyword argument.
    """
    options = [
        click.option(
            "--access-log",
            "access_log_destination",
            default="-",
            show_default=True,
            metavar="off|FILE|-",
            help="Where to write one line per request: '-' (standard output), a file "
            "(appended to, reopened on SIGHUP) or 'off'.",
        ),
        click.option(
            "--access-log-format",
            type=click.Choice(list(FORMATS)),
            default="json",
            show_default=True,
            help="json: one object per line (time, client, method, target, status, bytes, "
            "duration, upstream, upstream_time, cache, request_id); combined: nginx's format.",
        ),
        click.option(
            "--access-log-sample",
            default="100%",
            show_default=True,
            help="Fraction of 1xx-3xx answers logged at high rates (every 4xx and 5xx is).",
        ),
    ]

    def fold(kwargs: dict[str, Any]) -> None:
        kwargs["access_log"] = AccessLogSettings(
            destination=kwargs.pop("access_log_destination"),
            format=kwargs.pop("access_log_format"),
            sample=parse_fraction(kwargs.pop("access_log_sample"), field="--access-log-sample"),
        )

    return _folding(func, options, fold)


def upstream_timeout_options(
    *, connect_timeout: float, response_timeout: float, peer: str = "upstream"
) -> Callable[[F], F]:
    """Add ``--connect-timeout`` and ``--timeout`` (the time allowed to the upstream), and
    ``--source-address`` (the local address connections to it leave from).

    Each command keeps its own defaults (``connect_timeout``, ``response_timeout`` in
    seconds) and names what it forwards to (``peer``: upstream, backend, origin). The command
    receives ``connect_timeout`` and ``response_timeout`` in seconds, both more than 0, and
    ``source_address`` (an IP address, or None for the system's choice).
    """
    options = [
        click.option(
            "--connect-timeout",
            type=DURATION,
            default=format_duration(connect_timeout),
            show_default=True,
            help=f"Time to connect to the {peer} (502 after it).",
        ),
        click.option(
            "--timeout",
            "response_timeout",
            type=DURATION,
            default=format_duration(response_timeout),
            show_default=True,
            help=f"Silence allowed from the {peer} while a response is awaited or "
            "streams (504 after it).",
        ),
        click.option(
            "--source-address",
            default=None,
            metavar="IP",
            help=f"Connect to the {peer} from this local address (nginx's proxy_bind); in a "
            "pod, the pod's own address, so the next hop can trust it.",
        ),
    ]

    def fold(kwargs: dict[str, Any]) -> None:
        for name, flag in (
            ("connect_timeout", "--connect-timeout"),
            ("response_timeout", "--timeout"),
        ):
            value = kwargs[name]
            if not value > 0:
                raise ConfigError(f"must be more than 0, got {value:g}", path=flag)
        source = kwargs["source_address"]
        if source is not None:
            try:
                kwargs["source_address"] = str(ipaddress.ip_address(source.strip()))
            except ValueError:
                raise ConfigError(
                    f"expected an IP address such as 127.0.1.1, got {source!r}",
                    path="--source-address",
                ) from None

    def decorate(func: F) -> F:
        return _folding(func, options, fold)

    return decorate


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _folding(
    func: F,
    options: Sequence[Callable[[Any], Any]],
    fold: Callable[[dict[str, Any]], None],
) -> F:
    """``func`` behind ``options``; ``fold`` rewrites the parsed keyword arguments first.

    Options already attached to ``func`` (by decorators below this one) are kept, so these
    decorators stack with each other and with :func:`podkit.runtime.cli_options.runtime_options`.
    """

    def call(ctx: click.Context, /, **kwargs: Any) -> Any:
        fold(kwargs)
        return ctx.invoke(func, **kwargs)

    wrapped: Any = click.pass_context(call)
    wrapped.__doc__ = func.__doc__
    wrapped.__name__ = func.__name__
    wrapped.__click_params__ = list(getattr(func, "__click_params__", []))
    for option in reversed(options):
        wrapped = option(wrapped)
    return cast(F, wrapped)


__all__ = [
    "LIMIT_PARAMS",
    "access_log_options",
    "parse_fraction",
    "server_limit_options",
    "server_limits",
    "upstream_timeout_options",
]
