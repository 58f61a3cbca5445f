"""Click parameter types and the options every component shares.

Durations (``500ms``, ``2s``, ``1m``), sizes (``64KiB``, ``256MiB``) and addresses
(``HOST:PORT``) are parsed here, once, at the edge.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar, cast

import click

from podkit.errors import ConfigError
from podkit.runtime.component import DEFAULT_DRAIN_TIMEOUT, RuntimeOptions
from podkit.runtime.config import (
    HostPort,
    format_duration,
    parse_duration,
    parse_hostport,
    parse_size,
)
from podkit.runtime.logging import LOG_LEVELS

F = TypeVar("F", bound=Callable[..., Any])


class DurationType(click.ParamType):  # type: ignore[type-arg]  # generic only from click 8.2
    """A duration such as ``500ms``, ``2s``, ``1m``; converts to seconds (float)."""

    name = "duration"

    def convert(
        self, value: Any, param: click.Parameter | None, ctx: click.Context | None
    ) -> float:
        if isinstance(value, float):
            return value
        try:
            return parse_duration(value)
        except ConfigError as exc:
            self.fail(exc.reason, param, ctx)


class SizeType(click.ParamType):  # type: ignore[type-arg]  # generic only from click 8.2
    """A size such as ``64KiB`` or ``256MiB``; converts to bytes (int)."""

    name = "size"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> int:
        if isinstance(value, int):
            return value
        try:
            return parse_size(value)
        except ConfigError as exc:
            self.fail(exc.reason, param, ctx)


class HostPortType(click.ParamType):  # type: ignore[type-arg]  # generic only from click 8.2
    """An address ``HOST:PORT``; converts to :class:`HostPort`. The host is required: ``:8090``
    is an error that shows both ``127.0.0.1:8090`` and ``0.0.0.0:8090``."""

    name = "host:port"

    def convert(
        self, value: Any, param: click.Parameter | None, ctx: click.Context | None
    ) -> HostPort:
        if isinstance(value, HostPort):
            return value
        try:
            return parse_hostport(value, default_host=None)
        except ConfigError as exc:
            self.fail(exc.reason, param, ctx)


DURATION = DurationType()
SIZE = SizeType()
HOSTPORT = HostPortType()


def runtime_options(func: F) -> F:
    """Add ``--admin``, ``--drain-timeout``, ``--log-format`` and ``--log-level`` to a command.

    The command receives them folded into one ``runtime: RuntimeOptions`` keyword argument.
    """

    def fold(ctx: click.Context, /, **kwargs: Any) -> Any:
        runtime = RuntimeOptions(
            admin=kwargs.pop("admin"),
            drain_timeout=kwargs.pop("drain_timeout"),
            log_format=kwargs.pop("log_format"),
            log_level=kwargs.pop("log_level"),
        )
        return ctx.invoke(func, runtime=runtime, **kwargs)

    wrapped = click.pass_context(fold)
    wrapped.__doc__ = func.__doc__
    wrapped.__name__ = func.__name__
    options = [
        click.option(
            "--admin",
            type=HOSTPORT,
            default=None,
            help="Serve /healthz, /readyz and /metrics on HOST:PORT (off when not given).",
        ),
        click.option(
            "--drain-timeout",
            type=DURATION,
            default=format_duration(DEFAULT_DRAIN_TIMEOUT),
            show_default=True,
            help="On SIGTERM, how long in-flight work may take before it is stopped.",
        ),
        click.option(
            "--log-format",
            type=click.Choice(["json", "text"]),
            default="json",
            show_default=True,
            help="One JSON object per line, or plain text for people.",
        ),
        click.option(
            "--log-level",
            type=click.Choice(list(LOG_LEVELS)),
            default="info",
            show_default=True,
            help="The least severe level that is logged.",
        ),
    ]
    for option in reversed(options):
        wrapped = option(wrapped)
    return cast(F, wrapped)
