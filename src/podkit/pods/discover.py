"""``podkit discover``: the ready replicas behind a DNS name, as a backends file.

In a cluster, a headless Service's DNS name answers with the address of every *ready* pod
behind it. ``podkit discover`` resolves that name every ``--interval`` and keeps a file in the
format of the supervisor's discovery files (``docs/pods.md``: a comment line, then one
``SCHEME://ADDRESS:PORT`` per line), so ``podkit balance --backends-file`` follows the pods
there exactly as it follows the replicas on one machine. The file is replaced atomically
(write, then rename) and only when the set changes.

:func:`render_backends` is the pure part; :func:`serve_discovery` the loop.
"""

from __future__ import annotations

import asyncio
import ipaddress
import os
import socket
from collections.abc import Iterable
from pathlib import Path

import click

from podkit.cli import PodkitCommand
from podkit.runtime import Runtime, RuntimeOptions, run_component
from podkit.runtime.cli_options import DURATION, runtime_options
from podkit.runtime.config import format_duration

DEFAULT_INTERVAL = 2.0  # a new pod is in rotation within a couple of seconds
DEFAULT_RESOLVE_TIMEOUT = 2.0  # a resolver slower than this leaves the file as it was
HEADER = "# podkit discovery: ready addresses of {name} on port {port}, one per line\n"


def render_backends(name: str, port: int, scheme: str, addresses: Iterable[str]) -> str:
    """The backends file for ``addresses`` (sorted, each once; IPv6 in brackets)."""
    lines = [HEADER.format(name=name, port=port)]
    for address in sorted(set(addresses), key=_sort_key):
        host = f"[{address}]" if ":" in address else address
        lines.append(f"{scheme}://{host}:{port}\n")
    return "".join(lines)


def _sort_key(address: str) -> tuple[int, int | str]:
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return (2, address)
    return (ip.version, int(ip))


async def resolve(name: str, port: int, *, timeout: float) -> list[str]:
    """Every address ``name`` resolves to (A and AAAA), or [] when it has none.

    Raises:
        TimeoutError: the resolver did not answer within ``timeout``.
    """
    loop = asyncio.get_running_loop()
    try:
        infos = await asyncio.wait_for(
            loop.getaddrinfo(name, port, type=socket.SOCK_STREAM), timeout
        )
    except socket.gaierror:
        return []  # no ready pod: the headless Service has no address
    return [str(info[4][0]) for info in infos]


def write_atomic(path: Path, text: str) -> None:
    """Replace ``path`` with ``text`` (write a temporary file, then rename)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


async def serve_discovery(
    rt: Runtime, *, name: str, port: int, scheme: str, out: Path, interval: float
) -> None:
    """Resolve ``name`` every ``interval`` and keep ``out`` current until drained."""
    last: str | None = None
    count = 0
    rt.add_status(lambda: {"backends": count, "summary": f"{count} addresses of {name}"})
    while True:
        try:
            addresses = await resolve(name, port, timeout=DEFAULT_RESOLVE_TIMEOUT)
        except TimeoutError:
            rt.log.warning("resolver timed out", extra={"dns": name})
        else:
            text = render_backends(name, port, scheme, addresses)
            if text != last:
                write_atomic(out, text)
                last = text
                count = len(set(addresses))
                rt.log.info("backends changed", extra={"dns": name, "backends": count})
            rt.set_ready()
        try:
            await asyncio.wait_for(rt.wait_draining(), interval)
        except TimeoutError:
            continue
        return


@click.command(cls=PodkitCommand)
@click.option("--dns", "name", required=True, help="The DNS name to resolve (a headless Service).")
@click.option("--port", type=click.IntRange(1, 65535), required=True, help="The backends' port.")
@click.option(
    "--scheme",
    type=click.Choice(["http", "https", "tcp"]),
    default="http",
    show_default=True,
    help="The scheme of each line.",
)
@click.option(
    "--out",
    type=click.Path(dir_okay=False, path_type=Path),
    required=True,
    help="The backends file to keep current.",
)
@click.option(
    "--interval",
    type=DURATION,
    default=format_duration(DEFAULT_INTERVAL),
    show_default=True,
    help="Time between two resolutions.",
)
@runtime_options
def command(
    name: str, port: int, scheme: str, out: Path, interval: float, runtime: RuntimeOptions
) -> int:
    """Keep a backends file of the addresses a DNS name resolves to.

    In a cluster, a headless Service's name lists its ready pods: `podkit render kubernetes`
    runs this beside a `podkit balance` that follows another pod.
    """
    if interval <= 0:
        raise click.BadParameter("must be positive", param_hint="--interval")

    async def main(rt: Runtime) -> None:
        await serve_discovery(rt, name=name, port=port, scheme=scheme, out=out, interval=interval)

    return run_component("discover", main, runtime)
