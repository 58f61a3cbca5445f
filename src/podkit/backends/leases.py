"""Leases: the one interface every coordination backend implements for ownership election.

Theory of operation. A lease is a named record ``(holder, fencing token)`` that a backend
keeps for ``ttl`` seconds after each grant or renewal, judged by the backend's own clock.
Every operation that changes a lease is a compare-and-set on the holder's token, so a
process can only renew or release a lease it still holds, never one that expired and was
granted to somebody else. Each new grant carries a fencing token larger than every token
granted before under that name.

The backend never decides *when* a holder must stop acting: the election core does that on
the holder's own monotonic clock (see :mod:`podkit.serving.election`). The contract that
makes this safe is that a backend keeps a lease for **at least** ``ttl`` seconds after it
received the request, which is never earlier than the moment the holder sent it. A backend
may grant another ttl than asked (etcd does, see :mod:`podkit.backends.etcd_leases`); it then
says so in :attr:`Grant.ttl`, and that is the ttl the holder's deadline is computed from.

URLs (:func:`open_lease_backend`):

* ``sqlite:///relative/path.db`` or ``sqlite:////absolute/path.db`` — processes on one machine;
* ``redis://host:port/db`` (``rediss://`` for TLS, credentials as in redis-py) — Redis;
* ``etcd://host:port`` — etcd v3 through its JSON gateway, using etcd's own election recipe.
"""

from __future__ import annotations

import abc
import asyncio
from dataclasses import dataclass
from types import TracebackType
from typing import Self
from urllib.parse import urlsplit

from podkit.errors import ConfigError

MAX_NAME_LENGTH = 200  # names become keys in every backend; etcd and Redis keys stay short

SCHEMES = ("sqlite", "redis", "rediss", "etcd")


@dataclass(frozen=True, slots=True)
class Holder:
    """Who holds a lease, as the backend sees it.

    Attributes:
        identity: the holder's identity (``--id``).
        token: the fencing token of the holder's term.
        expires_in: seconds left on the lease by the backend's clock, when it is known.
    """

    identity: str
    token: int
    expires_in: float | None = None


@dataclass(frozen=True, slots=True)
class Grant:
    """A lease this process holds: what renew and release compare against.

    Attributes:
        name: the lease (election) name.
        identity: our identity.
        token: the fencing token of this term.
        lease_id: the backend's own lease handle (etcd lease id); 0 where there is none.
        ttl: seconds the backend keeps this lease after each grant or renewal when that
            differs from the ttl asked for (etcd grants whole seconds of its own choosing);
            None when it is the ttl asked for. The holder's deadline follows it.
    """

    name: str
    identity: str
    token: int
    lease_id: int = 0
    ttl: float | None = None


@dataclass(frozen=True, slots=True)
class AcquireResult:
    """The answer to one acquire attempt.

    Attributes:
        grant: set when this caller holds the lease now.
        holder: the current holder when it is somebody else (None if there is none or it is
            unknown).
        claim: a backend handle to pass to the next attempt so the caller keeps its place in
            line (etcd: the lease of our queued key); 0 where backends keep no queue.
    """

    grant: Grant | None
    holder: Holder | None = None
    claim: int = 0


class LeaseBackend(abc.ABC):
    """Leases with fencing tokens on one coordination service.

    Implementations translate their client's exceptions into :class:`BackendUnavailable`
    (could not reach the service: try again) or :class:`BackendError` (anything else).
    """

    url: str = ""

    @abc.abstractmethod
    async def acquire(
        self, name: str, *, identity: str, ttl: float, claim: int = 0
    ) -> AcquireResult:
        """Try once to take lease ``name`` for ``ttl`` seconds.

        Args:
            name: the lease name.
            identity: who asks; stored as the holder.
            ttl: seconds the backend keeps the lease without renewal (at least).
            claim: the ``claim`` of the previous attempt's result (0 the first time).

        Returns:
            The grant if we hold the lease now, else who holds it.

        Raises:
            BackendUnavailable: the backend could not be reached.
            BackendError: the backend failed otherwise.
        """

    @abc.abstractmethod
    async def renew(self, grant: Grant, *, ttl: float) -> bool:
        """Extend our lease by ``ttl`` from now, only if we still hold it (compare-and-set).

        Returns:
            True if renewed; False if the lease is no longer ours (a definite loss).

        Raises:
            BackendUnavailable: the backend could not be reached (the lease may still be ours).
            BackendError: the backend failed otherwise.
        """

    @abc.abstractmethod
    async def release(self, grant: Grant) -> bool:
        """Give the lease up at once, only if we still hold it (compare-and-set).

        Returns:
            True if it was ours and is released; False if it was no longer ours.

        Raises:
            BackendUnavailable: the backend could not be reached.
            BackendError: the backend failed otherwise.
        """

    async def withdraw(self, name: str, claim: int) -> None:  # noqa: B027 - optional hook
        """Leave the line of candidates (the ``claim`` of an earlier attempt); a no-op where
        backends keep no queue."""

    @abc.abstractmethod
    async def leader(self, name: str) -> Holder | None:
        """The current holder of lease ``name``, or None when nobody holds it.

        Raises:
            BackendUnavailable: the backend could not be reached.
            BackendError: the backend failed otherwise.
        """

    async def wait_for_change(self, name: str, *, timeout: float) -> None:
        """Return after at most ``timeout`` seconds, earlier when the backend can tell that
        lease ``name`` changed. Backends without notifications just wait."""
        await asyncio.sleep(max(0.0, timeout))

    @abc.abstractmethod
    async def aclose(self) -> None:
        """Close connections and threads. Closing twice is allowed."""

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()


def check_name(name: str) -> str:
    """Validate a lease name.

    Raises:
        ConfigError: it is empty, too long or holds a control character.
    """
    if not name:
        raise ConfigError("the name must not be empty", path="name")
    if len(name) > MAX_NAME_LENGTH:
        raise ConfigError(f"the name is longer than {MAX_NAME_LENGTH} characters", path="name")
    if any(ord(ch) < 32 or ord(ch) == 127 for ch in name):
        raise ConfigError("the name must not contain control characters", path="name")
    return name


def open_lease_backend(url: str, *, read_only: bool = False) -> LeaseBackend:
    """The lease backend a URL names (connections open lazily, on first use).

    Args:
        url: ``sqlite:///path.db``, ``redis://host:port/db`` or ``etcd://host:port``.
        read_only: for commands that only look: a SQLite file is opened read-only and never
            created (Redis and etcd create nothing by reading).

    Raises:
        ConfigError: the URL is malformed, names an unknown scheme, or its client library is
            not installed (the message names the extra to install).
    """
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme == "sqlite":
        from podkit.backends.sqlite_leases import SQLiteLeaseBackend

        path = url[len("sqlite:///") :] if url.lower().startswith("sqlite:///") else ""
        if not path:
            raise ConfigError(
                "a SQLite URL names a file: sqlite:///relative.db or sqlite:////abs/path.db",
                path="backend",
            )
        return SQLiteLeaseBackend(path, read_only=read_only)
    if scheme in ("redis", "rediss"):
        try:
            from podkit.backends.redis_leases import RedisLeaseBackend
        except ImportError as exc:  # pragma: no cover - redis is a dev dependency
            raise ConfigError(
                "the redis backend needs redis-py: pip install 'podkit[redis]'", path="backend"
            ) from exc
        if not parts.hostname:
            raise ConfigError("a Redis URL names a host: redis://host:port/db", path="backend")
        return RedisLeaseBackend(url)
    if scheme == "etcd":
        from podkit.backends.etcd_leases import EtcdLeaseBackend

        if not parts.hostname:
            raise ConfigError("an etcd URL names a host: etcd://host:port", path="backend")
        try:
            port = parts.port or 2379
        except ValueError as exc:
            raise ConfigError(f"bad port in {url!r}", path="backend") from exc
        return EtcdLeaseBackend(f"http://{parts.hostname}:{port}", url=url)
    raise ConfigError(
        f"unknown backend {url!r}: expected one of sqlite:///path.db, redis://host:port/db, "
        "etcd://host:port",
        path="backend",
    )
