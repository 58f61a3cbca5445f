"""The small key-value state functions share: idempotency records, call results, rate limits.

Two stores behind one interface, picked by the app's backend URL like the work queue's:
``sqlite:///path.db`` (the same file as the queue; one table, one transaction per call, safe
for many processes on one machine) and ``redis://host:port/db`` (every operation is one
command or Lua script, so it is atomic across machines).

Rate limits use GCRA (the generic cell rate algorithm of ATM networks, as in redis-cell):
one stored time per key, the "theoretical arrival time"; a call is allowed when it is not
more than ``burst`` intervals ahead of now. Time is passed in by the caller.
"""

from __future__ import annotations

import abc
import asyncio
import sqlite3
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar, cast
from urllib.parse import urlsplit

from podkit.backends.queues import sqlite_path
from podkit.errors import BackendError, BackendUnavailable, ConfigError

T = TypeVar("T")
KEY_PREFIX = "podkit:fn:"
BUSY_TIMEOUT = 30.0  # seconds a SQLite writer waits for the lock (as the queue backend does)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS podkit_fn_kv (
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL,
    expires REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS podkit_fn_kv_expires ON podkit_fn_kv (expires);
"""


class FunctionStore(abc.ABC):
    """Keys with values (text) that expire; every method takes ``now`` from the caller."""

    @abc.abstractmethod
    async def get(self, key: str, *, now: float) -> str | None:
        """The value of ``key``, None when absent or expired."""

    @abc.abstractmethod
    async def set(self, key: str, value: str, *, ttl: float, now: float) -> None:
        """Store ``value`` for ``ttl`` seconds."""

    @abc.abstractmethod
    async def add(self, key: str, value: str, *, ttl: float, now: float) -> bool:
        """Store ``value`` only when ``key`` is absent (or expired); whether it was stored."""

    @abc.abstractmethod
    async def delete_if(self, key: str, value: str) -> bool:
        """Delete ``key`` if it still holds ``value`` (releasing one's own lock)."""

    @abc.abstractmethod
    async def scan(self, prefix: str, *, now: float, limit: int) -> list[tuple[str, str]]:
        """Up to ``limit`` live keys starting with ``prefix``, with their values."""

    @abc.abstractmethod
    async def gcra(self, key: str, *, interval: float, burst: int, now: float) -> float:
        """Take one call from the rate limit ``key``: 0.0 when allowed, else seconds to wait."""

    @abc.abstractmethod
    async def aclose(self) -> None:
        """Release connections."""


def open_store(url: str, *, read_only: bool = False) -> FunctionStore:
    """The store for a backend URL (``read_only``: a SQLite file is never created).

    Raises:
        ConfigError: the scheme is neither sqlite nor redis.
    """
    scheme = urlsplit(url).scheme
    if scheme == "sqlite":
        return SqliteFunctionStore(sqlite_path(url), read_only=read_only)
    if scheme in ("redis", "rediss", "unix"):
        return RedisFunctionStore(url)
    raise ConfigError(f"unknown backend URL {url!r}: use sqlite:///path.db or redis://host:port/db")


class SqliteFunctionStore(FunctionStore):
    """The store in one SQLite file (calls run on one thread; the connection is its own)."""

    def __init__(self, path: str, *, read_only: bool = False) -> None:
        self.path = path
        self.read_only = read_only
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="podkit-fn-store")
        self._db: sqlite3.Connection | None = None

    def _connect(self) -> sqlite3.Connection:
        if self._db is None:
            if self.read_only:
                if not Path(self.path).is_file():
                    raise BackendError(
                        f"sqlite {self.path}: no such database (this command only reads; "
                        "it never creates one)"
                    )
                uri = Path(self.path).resolve().as_uri() + "?mode=ro"
                self._db = sqlite3.connect(
                    uri, uri=True, timeout=BUSY_TIMEOUT, isolation_level=None
                )
                return self._db
            parent = Path(self.path).parent
            if not parent.is_dir():
                raise ConfigError(f"no such directory for the SQLite file: {parent}")
            db = sqlite3.connect(self.path, timeout=BUSY_TIMEOUT, isolation_level=None)
            db.execute("PRAGMA journal_mode=WAL")
            db.executescript(_SCHEMA)
            self._db = db
        return self._db

    async def _run(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        def work() -> T:
            db = self._connect()
            try:
                db.execute("BEGIN" if self.read_only else "BEGIN IMMEDIATE")
                try:
                    result = fn(db)
                except sqlite3.OperationalError as exc:
                    db.execute("ROLLBACK")
                    if self.read_only and "no such table" in str(exc):
                        # a file no function has written to yet: nothing stored
                        return cast("T", None)
                    raise
                except BaseException:
                    db.execute("ROLLBACK")
                    raise
                db.execute("COMMIT")
                return result
            except sqlite3.OperationalError as exc:
                raise BackendUnavailable(f"sqlite {self.path}: {exc}") from exc
            except sqlite3.Error as exc:
                raise BackendError(f"sqlite {self.path}: {exc}") from exc

        return await asyncio.get_running_loop().run_in_executor(self._executor, work)

    async def get(self, key: str, *, now: float) -> str | None:
        def op(db: sqlite3.Connection) -> str | None:
            row = db.execute(
                "SELECT value FROM podkit_fn_kv WHERE key = ? AND expires > ?", (key, now)
            ).fetchone()
            return None if row is None else str(row[0])

        return await self._run(op)

    async def set(self, key: str, value: str, *, ttl: float, now: float) -> None:
        def op(db: sqlite3.Connection) -> None:
            db.execute(
                "INSERT OR REPLACE INTO podkit_fn_kv (key, value, expires) VALUES (?, ?, ?)",
                (key, value, now + ttl),
            )

        await self._run(op)

    async def add(self, key: str, value: str, *, ttl: float, now: float) -> bool:
        def op(db: sqlite3.Connection) -> bool:
            db.execute("DELETE FROM podkit_fn_kv WHERE key = ? AND expires <= ?", (key, now))
            cursor = db.execute(
                "INSERT OR IGNORE INTO podkit_fn_kv (key, value, expires) VALUES (?, ?, ?)",
                (key, value, now + ttl),
            )
            return cursor.rowcount == 1

        return await self._run(op)

    async def delete_if(self, key: str, value: str) -> bool:
        def op(db: sqlite3.Connection) -> bool:
            cursor = db.execute(
                "DELETE FROM podkit_fn_kv WHERE key = ? AND value = ?", (key, value)
            )
            return cursor.rowcount == 1

        return await self._run(op)

    async def scan(self, prefix: str, *, now: float, limit: int) -> list[tuple[str, str]]:
        def op(db: sqlite3.Connection) -> list[tuple[str, str]]:
            if not self.read_only:  # housekeeping; a reader leaves it to the writers
                db.execute("DELETE FROM podkit_fn_kv WHERE expires <= ?", (now,))
            rows = db.execute(
                "SELECT key, value FROM podkit_fn_kv WHERE substr(key, 1, ?) = ? "
                "AND expires > ? ORDER BY key LIMIT ?",
                (len(prefix), prefix, now, limit),
            ).fetchall()
            return [(str(k), str(v)) for k, v in rows]

        return await self._run(op) or []

    async def gcra(self, key: str, *, interval: float, burst: int, now: float) -> float:
        def op(db: sqlite3.Connection) -> float:
            row = db.execute(
                "SELECT value FROM podkit_fn_kv WHERE key = ? AND expires > ?", (key, now)
            ).fetchone()
            tat = max(float(row[0]) if row else now, now)
            allowed_at = tat - burst * interval
            if allowed_at > now:
                return allowed_at - now
            new_tat = tat + interval
            db.execute(
                "INSERT OR REPLACE INTO podkit_fn_kv (key, value, expires) VALUES (?, ?, ?)",
                (key, repr(new_tat), new_tat + interval),
            )
            return 0.0

        return await self._run(op)

    async def aclose(self) -> None:
        def close() -> None:
            if self._db is not None:
                self._db.close()
                self._db = None

        await asyncio.get_running_loop().run_in_executor(self._executor, close)
        self._executor.shutdown(wait=False)


# In whole microseconds: exact in a double (epoch microseconds are below 2**53), so a
# call is never both refused and counted by a rounding of the stored time.
_GCRA = """
local now = tonumber(ARGV[1])
local interval = tonumber(ARGV[2])
local burst = tonumber(ARGV[3])
local tat = tonumber(redis.call('GET', KEYS[1]) or '0')
if tat < now then tat = now end
local allowed_at = tat - burst * interval
if allowed_at > now then return allowed_at - now end
local new_tat = tat + interval
redis.call('SET', KEYS[1], string.format('%d', new_tat), 'PX',
           math.ceil((new_tat - now + interval) / 1000))
return 0
"""

_DELETE_IF = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


class RedisFunctionStore(FunctionStore):
    """The store in a redis server (keys under ``podkit:fn:``)."""

    def __init__(self, url: str) -> None:
        try:
            import redis.asyncio as aioredis
        except ImportError as exc:  # pragma: no cover - redis is in the [redis] extra
            raise ConfigError(
                "redis:// backends need the redis package: pip install podkit[redis]"
            ) from exc
        self.url = url
        try:
            self._redis: Any = aioredis.from_url(url, decode_responses=True)
        except ValueError as exc:
            raise ConfigError(f"invalid redis URL {url!r}: {exc}") from exc
        self._gcra = self._redis.register_script(_GCRA)
        self._delete_if = self._redis.register_script(_DELETE_IF)

    async def _do(self, call: Callable[[], Any]) -> Any:
        import redis.exceptions as rex

        try:
            return await call()
        except (rex.ConnectionError, rex.TimeoutError) as exc:
            raise BackendUnavailable(f"redis {self.url}: {exc}") from exc
        except rex.RedisError as exc:
            raise BackendError(f"redis {self.url}: {exc}") from exc

    @staticmethod
    def _ms(ttl: float) -> int:
        return max(1, int(ttl * 1000))

    async def get(self, key: str, *, now: float) -> str | None:
        value = await self._do(lambda: self._redis.get(KEY_PREFIX + key))
        return None if value is None else str(value)

    async def set(self, key: str, value: str, *, ttl: float, now: float) -> None:
        await self._do(lambda: self._redis.set(KEY_PREFIX + key, value, px=self._ms(ttl)))

    async def add(self, key: str, value: str, *, ttl: float, now: float) -> bool:
        done = await self._do(
            lambda: self._redis.set(KEY_PREFIX + key, value, px=self._ms(ttl), nx=True)
        )
        return bool(done)

    async def delete_if(self, key: str, value: str) -> bool:
        done = await self._do(lambda: self._delete_if(keys=[KEY_PREFIX + key], args=[value]))
        return bool(done)

    async def scan(self, prefix: str, *, now: float, limit: int) -> list[tuple[str, str]]:
        async def run() -> list[tuple[str, str]]:
            pattern = KEY_PREFIX + prefix + "*"
            keys: list[str] = [k async for k in self._redis.scan_iter(match=pattern, count=500)]
            keys.sort()
            keys = keys[:limit]
            if not keys:
                return []
            values = await self._redis.mget(keys)
            return [
                (k[len(KEY_PREFIX) :], v)
                for k, v in zip(keys, values, strict=True)
                if v is not None
            ]

        result: list[tuple[str, str]] = await self._do(run)
        return result

    async def gcra(self, key: str, *, interval: float, burst: int, now: float) -> float:
        now_us, interval_us = int(now * 1_000_000), max(1, round(interval * 1_000_000))
        wait_us = await self._do(
            lambda: self._gcra(keys=[KEY_PREFIX + key], args=[now_us, interval_us, burst])
        )
        return int(wait_us) / 1_000_000

    async def aclose(self) -> None:
        await self._redis.aclose()
