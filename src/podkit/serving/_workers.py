"""What the serving components share when they run as several worker processes.

With ``--workers N`` a component runs on :func:`podkit.engines.workers.serve_workers`: the
parent owns the admin endpoint and merges the workers' metric reports. The parent holds the
listening address bound (with SO_REUSEPORT, never listening) so that port 0 becomes one port
every worker shares, and it builds its JSON admin views from the merged metrics, the only
thing the workers tell it.
"""

from __future__ import annotations

import contextlib
import socket
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, TypeVar

import click
from prometheus_client import CollectorRegistry

from podkit.engines.workers import DEFAULT_COMMAND_TIMEOUT
from podkit.errors import ListenError
from podkit.runtime import format_duration
from podkit.runtime.cli_options import DURATION

F = TypeVar("F", bound=Callable[..., Any])


def workers_timeout_option(waits_for: str) -> Callable[[F], F]:
    """``--workers-timeout D``: how long the parent's admin endpoint waits for every worker to
    confirm a command (``waits_for`` names it in the help) before it answers 503."""

    def positive(ctx: click.Context, param: click.Parameter, value: float) -> float:
        if value <= 0:
            raise click.BadParameter("must be more than 0", ctx=ctx, param=param)
        return value

    return click.option(
        "--workers-timeout",
        type=DURATION,
        default=format_duration(DEFAULT_COMMAND_TIMEOUT),
        show_default=True,
        callback=positive,
        help=f"With --workers: how long {waits_for} waits for each worker to confirm before "
        "the answer is 503.",
    )


@contextlib.contextmanager
def reserve_port(host: str, port: int) -> Iterator[int]:
    """Bind (not listen) a SO_REUSEPORT socket on ``host:port``; yields the bound port.

    Raises:
        PodkitError: the address cannot be bound.
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        try:
            sock.bind((host, port))
        except OSError as exc:
            raise ListenError(host, port, exc.strerror or str(exc)) from exc
        yield int(sock.getsockname()[1])
    finally:
        sock.close()


@dataclass(frozen=True, slots=True)
class Sample:
    """One merged sample: its name (with ``_total`` etc.), labels and value."""

    name: str
    labels: dict[str, str]
    value: float


def merged_samples(registry: CollectorRegistry, prefix: str) -> list[Sample]:
    """Every sample in ``registry`` whose name starts with ``prefix`` (at collection time)."""
    return [
        Sample(sample.name, dict(sample.labels), sample.value)
        for family in registry.collect()
        if family.name.startswith(prefix)
        for sample in family.samples
        if sample.name.startswith(prefix)
    ]


__all__ = ["Sample", "merged_samples", "reserve_port"]
