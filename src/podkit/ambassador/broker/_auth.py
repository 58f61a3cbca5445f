"""Credentials the broker presents on the app's behalf, so secrets stay out of the app.

Redis: on each new upstream connection, before any byte of the client flows, the broker
sends ``AUTH [user] password`` (RESP) and reads the reply; ``+OK`` lets the connection
through, anything else closes the client (counted). The app connects without a password.

PostgreSQL is not done: its authentication (SCRAM-SHA-256, MD5) runs inside the startup
exchange the *client* begins, keyed to the user the client names, so injecting it means
terminating the protocol (reading the client's StartupMessage, authenticating upstream,
then replaying the server's ParameterStatus and BackendKeyData) rather than forwarding bytes.
Use ``pg_hba.conf`` trust for the broker's address, or a client-side ``.pgpass``.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from podkit.engines.http import Upstream
from podkit.errors import ConfigError, PodkitError

MAX_AUTH_REPLY = 512  # "+OK\r\n" or a one-line error; more is not a Redis AUTH reply


class AuthFailed(PodkitError):
    """The upstream refused the credentials the broker presented."""


@dataclass(frozen=True, slots=True)
class RedisCredentials:
    """A Redis user (empty: the default user) and password."""

    password: str
    user: str = ""

    def command(self) -> bytes:
        """The RESP ``AUTH`` command."""
        args = ["AUTH", *([self.user] if self.user else []), self.password]
        parts = [f"*{len(args)}\r\n".encode()]
        for arg in args:
            data = arg.encode()
            parts.append(b"$%d\r\n%s\r\n" % (len(data), data))
        return b"".join(parts)


def parse_redis_auth(
    text: str, *, environ: Mapping[str, str], field: str = "--redis-auth"
) -> tuple[str, RedisCredentials]:
    """``ENV=[USER@]env:VAR`` or ``ENV=[USER@]file:PATH``: the password is read from a
    variable or a file (never given on the command line, where ``ps`` shows it).

    Raises:
        ConfigError: a bad form, an unset variable or an unreadable file.
    """
    env, sep, rest = text.partition("=")
    env, rest = env.strip(), rest.strip()
    user = ""
    if "@" in rest.split(":", 1)[0]:
        user, _, rest = rest.partition("@")
    if not sep or not env or not (rest.startswith(("env:", "file:"))):
        raise ConfigError(
            f"expected ENV=[USER@]env:VAR or ENV=[USER@]file:PATH, got {text!r}", path=field
        )
    kind, _, where = rest.partition(":")
    if kind == "env":
        password = environ.get(where)
        if password is None:
            raise ConfigError(f"{env}: variable {where} is not set", path=field)
    else:
        try:
            password = Path(where).read_text(encoding="utf-8").strip()
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"{env}: cannot read {where}: {exc}", path=field) from exc
    return env, RedisCredentials(password=password, user=user.strip())


async def redis_auth(
    sock: socket.socket, credentials: RedisCredentials, upstream: Upstream
) -> None:
    """Authenticate on a connected non-blocking socket.

    Raises:
        AuthFailed: the reply was not ``+OK``.
        OSError: the connection failed.
    """
    loop = asyncio.get_running_loop()
    await loop.sock_sendall(sock, credentials.command())
    reply = b""
    while b"\r\n" not in reply:
        chunk = await loop.sock_recv(sock, MAX_AUTH_REPLY)
        if not chunk:
            raise OSError(f"{upstream.authority} closed the connection during AUTH")
        reply += chunk
        if len(reply) > MAX_AUTH_REPLY:
            break
    line = reply.split(b"\r\n", 1)[0]
    if line != b"+OK":
        raise AuthFailed(
            f"{upstream.authority} refused AUTH: {line.decode('utf-8', 'replace')[:200]}"
        )
