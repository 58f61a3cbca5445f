"""The checks the health adapter runs: parsed from ``NAME=TARGET`` once, run by the shell.

Targets:

* ``redis://[USER:PASSWORD@]HOST[:PORT][/DB][?role=master|replica]`` — ``PING`` answers
  ``PONG``; with ``role``, ``ROLE`` must report it (``slave`` counts as ``replica``);
* ``postgresql://USER[:PASSWORD]@HOST[:PORT]/DB[?query=SQL]`` — ``SELECT 1``, or the query,
  runs; a query whose first value is false or NULL, or that returns no row, fails;
* ``tcp://HOST:PORT`` — a connection is accepted;
* ``http(s)://HOST[:PORT]/PATH`` — ``GET`` answers 200-399 (as Kubernetes' httpGet probe);
* ``cmd:COMMAND`` — ``/bin/sh -c COMMAND`` exits 0 (stdin closed, output kept for the error).

Each run has the adapter's timeout; a command still running then is killed with its
process group.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from urllib.parse import parse_qs, urlsplit, urlunsplit

import httpx

from podkit.adapter._postgres import fetch, split_dsn
from podkit.adapter._resp import RedisAddress, open_redis
from podkit.errors import ConfigError, PodkitError

MAX_OUTPUT_BYTES = 4096  # the end of a command's output, kept for the error message
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")
_ROLES = {"master": "master", "primary": "master", "replica": "slave", "slave": "slave"}


class CheckFailed(PodkitError):
    """A check ran and did not pass; the message is the reason shown in ``/checks``."""


@dataclass(frozen=True, slots=True)
class CheckSpec:
    """One ``--check NAME=TARGET``.

    Attributes:
        name: how the check is shown and named in ``--ready-requires``.
        kind: ``redis``, ``postgresql``, ``tcp``, ``http`` or ``cmd``.
        target: what it checks, as given.
    """

    name: str
    kind: str
    target: str

    @property
    def display(self) -> str:
        """The target with any password hidden."""
        if self.kind == "cmd":
            return self.target
        parts = urlsplit(self.target)
        if parts.password is None:
            return self.target
        netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
        return urlunsplit(parts._replace(netloc=netloc))


def parse_check(text: str) -> CheckSpec:
    """Parse ``NAME=TARGET``.

    Raises:
        ConfigError: no name, a bad name, or a target of no known kind.
    """
    name, sep, target = text.partition("=")
    name = name.strip()
    if not sep or not target:
        raise ConfigError(f"expected NAME=TARGET, got {text!r}")
    if not _NAME.match(name):
        raise ConfigError(f"bad check name {name!r}: letters, digits, '_', '.', '-' (max 63)")
    if target.startswith("cmd:"):
        if not target[4:].strip():
            raise ConfigError(f"check {name}: cmd: needs a command")
        return CheckSpec(name, "cmd", target[4:])
    scheme = urlsplit(target).scheme
    if scheme == "redis":
        address = RedisAddress.parse(target)
        role = parse_qs(address.query).get("role", [None])[0]
        if role is not None and role not in _ROLES:
            raise ConfigError(f"check {name}: role must be master or replica, got {role!r}")
        return CheckSpec(name, "redis", target)
    if scheme in ("postgresql", "postgres"):
        split_dsn(target)
        return CheckSpec(name, "postgresql", target)
    if scheme == "tcp":
        parts = urlsplit(target)
        try:
            port = parts.port
        except ValueError:
            port = None
        if not parts.hostname or port is None:
            raise ConfigError(f"check {name}: expected tcp://HOST:PORT, got {target!r}")
        return CheckSpec(name, "tcp", target)
    if scheme in ("http", "https"):
        if not urlsplit(target).hostname:
            raise ConfigError(f"check {name}: no host in {target!r}")
        return CheckSpec(name, "http", target)
    raise ConfigError(
        f"check {name}: unknown target {target!r}: expected redis://, postgresql://, tcp://, "
        "http(s):// or cmd:COMMAND"
    )


async def _check_redis(spec: CheckSpec, timeout: float) -> None:
    address = RedisAddress.parse(spec.target)
    role = parse_qs(address.query).get("role", [None])[0]
    async with open_redis(address) as conn:
        reply = await conn.call("PING")
        if reply != "PONG":
            raise CheckFailed(f"PING answered {reply!r}")
        if role is not None:
            actual = await conn.call("ROLE")
            have = actual[0] if isinstance(actual, list) and actual else actual
            if have != _ROLES[role]:
                raise CheckFailed(f"role is {have}, expected {role}")


async def _check_postgresql(spec: CheckSpec, timeout: float) -> None:
    dsn, own = split_dsn(spec.target)
    rows = await fetch(dsn, own.get("query") or "SELECT 1", timeout=timeout)
    if not rows:
        raise CheckFailed("the query returned no row")
    first = next(iter(rows[0].values()), True)
    if first is None or first is False:
        raise CheckFailed(f"the query returned {first}")


async def _check_tcp(spec: CheckSpec, timeout: float) -> None:
    parts = urlsplit(spec.target)
    _, writer = await asyncio.open_connection(parts.hostname, parts.port)
    writer.close()
    with contextlib.suppress(OSError):
        await writer.wait_closed()


async def _check_http(spec: CheckSpec, timeout: float) -> None:
    async with httpx.AsyncClient(timeout=timeout, follow_redirects=False) as client:
        response = await client.get(spec.target)
    if not 200 <= response.status_code < 400:
        raise CheckFailed(f"HTTP {response.status_code}")


async def _check_cmd(spec: CheckSpec, timeout: float) -> None:
    proc = await asyncio.create_subprocess_exec(
        "/bin/sh",
        "-c",
        spec.target,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        start_new_session=True,
    )
    assert proc.stdout is not None
    output = b""
    try:
        # Only the end of the output is kept (for the reason): a chatty command costs no memory.
        while chunk := await proc.stdout.read(64 * 1024):
            output = (output + chunk)[-MAX_OUTPUT_BYTES:]
        await proc.wait()
    finally:
        if proc.returncode is None:  # cancelled by the timeout: the whole group goes
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            await proc.wait()
    if proc.returncode != 0:
        text = output.decode(errors="replace").strip()
        last = text.splitlines()[-1] if text else ""
        raise CheckFailed(f"exit status {proc.returncode}" + (f": {last}" if last else ""))


_RUNNERS: dict[str, Callable[[CheckSpec, float], Awaitable[None]]] = {
    "redis": _check_redis,
    "postgresql": _check_postgresql,
    "tcp": _check_tcp,
    "http": _check_http,
    "cmd": _check_cmd,
}


async def run_check(spec: CheckSpec, *, timeout: float) -> None:
    """Run one check within ``timeout`` seconds.

    Raises:
        CheckFailed: it did not pass; the message says why (a timeout included).
    """
    try:
        async with asyncio.timeout(timeout):
            await _RUNNERS[spec.kind](spec, timeout)
    except CheckFailed:
        raise
    except TimeoutError as exc:
        raise CheckFailed(f"timed out after {timeout:g}s") from exc
    except (OSError, asyncio.IncompleteReadError, httpx.HTTPError, PodkitError) as exc:
        raise CheckFailed(_describe(exc)) from exc


def _describe(exc: BaseException) -> str:
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused"
    if isinstance(exc, asyncio.IncompleteReadError):
        return "connection closed"
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror.lower()
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
