"""``ShardedClient``: the router of ``podkit shard`` as a library, with no proxy hop.

It places every key exactly where ``podkit shard`` places it with the same shard names and
options (it is the same :class:`~podkit.ambassador.shard.ShardRouter`), over one pymemcache
or redis-py client per shard. Failures follow the proxy's rules: a shard that fails
``fail_limit`` times in a row is ejected for ``retry_after`` and its keys go to the next
shard; with ``replicas`` a write goes to the key's first R shards and a read fails over to
the next. Hot-key spreading is the proxy's alone (it needs the traffic of every client).

Example::

    from podkit.shard import ShardedClient
    cache = ShardedClient({"a": "10.0.0.1:11211", "b": "10.0.0.2:11211"})
    cache.set("user:42", b"...", expire=60)
    cache.get_many(["user:42", "user:43"])
"""

from __future__ import annotations

import importlib
import time
from collections.abc import Callable, Iterable, Mapping
from functools import partial
from typing import Any

from podkit.ambassador.shard._router import (
    DEFAULT_FAIL_LIMIT,
    DEFAULT_REPLICAS,
    DEFAULT_RETRY_AFTER,
    ShardRouter,
)
from podkit.errors import PodkitError, UsageError
from podkit.runtime.config import parse_hostport

DEFAULT_TIMEOUT = 1.0  # the proxy's --timeout default
DEFAULT_CONNECT_TIMEOUT = 1.0

KeyLike = str | bytes


class ShardError(PodkitError):
    """Root of the errors of :class:`ShardedClient`."""


class ShardUnavailable(ShardError):
    """No shard could serve the key (every candidate is ejected or failed).

    Attributes:
        shard: the last shard tried, or None when none was available.
    """

    def __init__(self, message: str, *, shard: str | None = None) -> None:
        self.shard = shard
        super().__init__(message)


def _key(key: KeyLike) -> bytes:
    return key.encode() if isinstance(key, str) else bytes(key)


class _Backend:
    """One protocol's calls over its client library."""

    connection_errors: tuple[type[BaseException], ...] = (OSError,)

    def connect(self, host: str, port: int, *, timeout: float, connect_timeout: float) -> Any:
        raise NotImplementedError

    def get_many(self, client: Any, keys: list[bytes]) -> dict[bytes, bytes]:
        raise NotImplementedError

    def set(self, client: Any, key: bytes, value: bytes, expire: int) -> bool:
        raise NotImplementedError

    def delete(self, client: Any, key: bytes) -> bool:
        raise NotImplementedError

    def incr(self, client: Any, key: bytes, delta: int) -> int | None:
        raise NotImplementedError

    def close(self, client: Any) -> None:
        raise NotImplementedError


def _require(module: str) -> Any:
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise UsageError(
            f"podkit.shard.ShardedClient needs {module}: pip install 'podkit[shard]'"
        ) from exc


class _Memcache(_Backend):
    def __init__(self) -> None:
        base = _require("pymemcache.client.base")
        exceptions = _require("pymemcache.exceptions")
        self._client_class = base.Client
        self.connection_errors = (
            OSError,
            exceptions.MemcacheUnexpectedCloseError,
            exceptions.MemcacheServerError,
        )

    def connect(self, host: str, port: int, *, timeout: float, connect_timeout: float) -> Any:
        return self._client_class(
            (host, port), timeout=timeout, connect_timeout=connect_timeout, default_noreply=False
        )

    def get_many(self, client: Any, keys: list[bytes]) -> dict[bytes, bytes]:
        found = client.get_many(keys)
        return {_key(k): v for k, v in found.items()}

    def set(self, client: Any, key: bytes, value: bytes, expire: int) -> bool:
        return bool(client.set(key, value, expire=expire, noreply=False))

    def delete(self, client: Any, key: bytes) -> bool:
        return bool(client.delete(key, noreply=False))

    def incr(self, client: Any, key: bytes, delta: int) -> int | None:
        value = client.incr(key, delta, noreply=False)
        return None if value is None else int(value)

    def close(self, client: Any) -> None:
        client.close()


class _Redis(_Backend):
    def __init__(self) -> None:
        redis = _require("redis")
        self._redis = redis
        self.connection_errors = (
            OSError,
            redis.exceptions.ConnectionError,
            redis.exceptions.TimeoutError,
        )

    def connect(self, host: str, port: int, *, timeout: float, connect_timeout: float) -> Any:
        return self._redis.Redis(
            host=host, port=port, socket_timeout=timeout, socket_connect_timeout=connect_timeout
        )

    def get_many(self, client: Any, keys: list[bytes]) -> dict[bytes, bytes]:
        values = client.mget(keys)
        return {k: v for k, v in zip(keys, values, strict=True) if v is not None}

    def set(self, client: Any, key: bytes, value: bytes, expire: int) -> bool:
        return bool(client.set(key, value, ex=expire or None))

    def delete(self, client: Any, key: bytes) -> bool:
        return bool(client.delete(key))

    def incr(self, client: Any, key: bytes, delta: int) -> int | None:
        return int(client.incrby(key, delta))

    def close(self, client: Any) -> None:
        client.close()


class ShardedClient:
    """A client that shards keys over memcached or Redis servers like ``podkit shard``.

    Args:
        shards: ``{name: "HOST:PORT"}``, or a list of ``"NAME=HOST:PORT"`` / ``"HOST:PORT"``
            (the name is what keys hash to: the same as ``--shard`` takes).
        protocol: ``memcached`` (pymemcache) or ``redis`` (redis-py).
        algorithm: ``ring`` (ketama), ``maglev``, ``jump`` or ``rendezvous``.
        key_hash: ``md5``, ``fnv1a_64``, ``crc32`` or ``xxh3``.
        hash_tag: two characters such as ``"{}"``, or empty.
        replicas: shards each write goes to.
        fail_limit: failures in a row that eject a shard.
        retry_after: seconds before an ejected shard is tried again.
        timeout: socket timeout of each request.
        connect_timeout: time to connect to a shard.
        clock: the time source (seconds), for tests.

    Raises:
        UsageError: the client library is not installed, or an option is invalid.
    """

    def __init__(
        self,
        shards: Mapping[str, str] | Iterable[str],
        *,
        protocol: str = "memcached",
        algorithm: str = "ring",
        key_hash: str = "md5",
        hash_tag: str = "",
        replicas: int = DEFAULT_REPLICAS,
        fail_limit: int = DEFAULT_FAIL_LIMIT,
        retry_after: float = DEFAULT_RETRY_AFTER,
        timeout: float = DEFAULT_TIMEOUT,
        connect_timeout: float = DEFAULT_CONNECT_TIMEOUT,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if protocol not in ("memcached", "redis"):
            raise UsageError(f"protocol is memcached or redis, not {protocol!r}")
        if isinstance(shards, Mapping):
            named = dict(shards)
        else:
            named = {}
            for text in shards:
                name, sep, address = text.partition("=")
                named[name if sep else text] = address if sep else text
        try:
            self.router = ShardRouter(
                list(named),
                algorithm=algorithm,
                key_hash=key_hash,
                hash_tag=hash_tag.encode(),
                replicas=replicas,
                fail_limit=fail_limit,
                retry_after=retry_after,
            )
        except ValueError as exc:
            raise UsageError(str(exc)) from exc
        self._backend: _Backend = _Memcache() if protocol == "memcached" else _Redis()
        self._clock = clock
        self.clients: dict[str, Any] = {}
        for name, address in named.items():
            where = parse_hostport(address, field=f"shard {name}")
            self.clients[name] = self._backend.connect(
                where.host, where.port, timeout=timeout, connect_timeout=connect_timeout
            )

    def shard_for(self, key: KeyLike) -> str:
        """The key's own shard (where ``podkit shard`` puts it)."""
        return self.router.shard_of(_key(key))

    def client_for(self, key: KeyLike) -> Any:
        """The pymemcache or redis-py client of the first available shard of ``key``, for
        commands this class does not wrap.

        Raises:
            ShardUnavailable: every shard is ejected.
        """
        targets = self.router.read_targets(_key(key), self._clock(), count=False)
        if not targets:
            raise ShardUnavailable("no shard available")
        return self.clients[targets[0]]

    def _call(self, shard: str, call: Callable[[Any], Any]) -> Any:
        backend = self._backend
        try:
            result = call(self.clients[shard])
        except backend.connection_errors as exc:
            self.router.record_failure(shard, self._clock())
            raise ShardUnavailable(f"shard {shard} unavailable: {exc}", shard=shard) from exc
        self.router.record_success(shard, self._clock())
        return result

    def get(self, key: KeyLike) -> bytes | None:
        """The value of ``key``, or None.

        Raises:
            ShardUnavailable: no shard holding the key answered.
        """
        return self.get_many([key]).get(_key(key))

    def get_many(self, keys: Iterable[KeyLike]) -> dict[bytes, bytes]:
        """The values of the keys that exist (one request per shard), keyed by bytes.

        Raises:
            ShardUnavailable: a key's every candidate shard failed.
        """
        wanted = list(dict.fromkeys(_key(k) for k in keys))
        candidates = {k: self.router.read_targets(k, self._clock()) for k in wanted}
        found: dict[bytes, bytes] = {}
        while candidates:
            groups: dict[str, list[bytes]] = {}
            for key, cands in candidates.items():
                if not cands:
                    raise ShardUnavailable(f"no shard available for {key!r}")
                groups.setdefault(cands[0], []).append(key)
            retry: dict[bytes, list[str]] = {}
            last: ShardUnavailable | None = None
            for shard, part in groups.items():
                try:
                    found.update(self._call(shard, partial(self._backend.get_many, keys=part)))
                except ShardUnavailable as exc:
                    last = exc
                    for key in part:
                        retry[key] = candidates[key][1:]
                        if not retry[key]:
                            raise exc
            if last is None:
                break
            candidates = retry
        return found

    def _write(self, key: KeyLike, call: Callable[[Any, bytes], Any]) -> list[Any]:
        data = _key(key)
        targets = self.router.write_targets(data, self._clock())
        if not targets:
            raise ShardUnavailable("no shard available")
        results: list[Any] = []
        failure: ShardUnavailable | None = None
        for shard in targets:
            try:
                results.append(self._call(shard, lambda c: call(c, data)))
            except ShardUnavailable as exc:
                failure = failure or exc
        if not results and failure is not None:
            raise failure
        return results

    def set(self, key: KeyLike, value: bytes | str, *, expire: int = 0) -> bool:
        """Store ``value`` under ``key`` on its shards (``expire`` seconds, 0: never).

        Raises:
            ShardUnavailable: none of the key's shards answered.
        """
        data = value.encode() if isinstance(value, str) else value
        return all(self._write(key, lambda c, k: self._backend.set(c, k, data, expire)))

    def set_many(self, items: Mapping[KeyLike, bytes | str], *, expire: int = 0) -> None:
        """Store every item (one write per key and shard)."""
        for key, value in items.items():
            self.set(key, value, expire=expire)

    def delete(self, key: KeyLike) -> bool:
        """Delete ``key`` from its shards; True when a shard held it."""
        return any(self._write(key, lambda c, k: self._backend.delete(c, k)))

    def incr(self, key: KeyLike, delta: int = 1) -> int | None:
        """Add ``delta`` to a counter; None when a memcached key does not exist."""
        results = self._write(key, lambda c, k: self._backend.incr(c, k, delta))
        value: int | None = results[0]
        return value

    def close(self) -> None:
        """Close every shard's connection."""
        for client in self.clients.values():
            self._backend.close(client)

    def __enter__(self) -> ShardedClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
