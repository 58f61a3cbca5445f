"""Leases in a SQLite file: the embedded default for processes on one machine, no server.

Theory of operation. Every operation is one ``BEGIN IMMEDIATE`` transaction, so SQLite's
write lock makes it a compare-and-set. Expiry times are taken from ``CLOCK_MONOTONIC``
(``time.monotonic()``), which every process on a Linux machine shares and which NTP never
steps; each lease also records the boot it was written in, so a lease left in the file before
a reboot (when the monotonic clock starts again from zero) counts as expired. The fencing
token comes from a per-name counter in the same file that only ever grows.

All SQLite calls run on one worker thread per backend, keeping the event loop free while
another process holds the write lock.
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TypeVar

from podkit.backends.leases import AcquireResult, Grant, Holder, LeaseBackend, check_name
from podkit.errors import BackendError, BackendUnavailable

T = TypeVar("T")

BUSY_TIMEOUT_MS = 1000  # a writer holds the lock for microseconds; a longer wait means trouble

_SCHEMA = """
CREATE TABLE IF NOT EXISTS podkit_leases (
    name TEXT PRIMARY KEY,
    holder TEXT NOT NULL,
    token INTEGER NOT NULL,
    expires REAL NOT NULL,
    boot TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS podkit_lease_tokens (
    name TEXT PRIMARY KEY,
    last INTEGER NOT NULL
);
"""


def _boot_id() -> str:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:  # not Linux: the monotonic clock is still machine-wide until reboot
        return "unknown"


class SQLiteLeaseBackend(LeaseBackend):
    """Leases in the SQLite file at ``path`` (created with its parent directory if needed).

    Args:
        read_only: open the file read-only and never create it (``podkit elect status``); a
            missing file is a :class:`BackendError`.
    """

    def __init__(
        self,
        path: str | Path,
        *,
        clock: Callable[[], float] = time.monotonic,
        read_only: bool = False,
    ) -> None:
        self.path = Path(path)
        self.read_only = read_only
        self.url = f"sqlite:///{path}"
        self._clock = clock
        self._boot = _boot_id()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="podkit-sqlite")
        self._conn: sqlite3.Connection | None = None
        self._closed = False

    def _connect(self) -> sqlite3.Connection:
        if self._conn is None and self.read_only:
            if not self.path.is_file():
                raise BackendError(
                    f"{self.path}: no such database (this command only reads; it never creates one)"
                )
            self._conn = sqlite3.connect(
                self.path.resolve().as_uri() + "?mode=ro",
                uri=True,
                timeout=BUSY_TIMEOUT_MS / 1000,
                isolation_level=None,
            )
        if self._conn is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            conn = sqlite3.connect(self.path, timeout=BUSY_TIMEOUT_MS / 1000, isolation_level=None)
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")
            conn.executescript(_SCHEMA)
            self._conn = conn
        return self._conn

    async def _run(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        if self._closed:
            raise BackendError("the SQLite lease backend is closed")

        def call() -> T:
            conn = self._connect()
            conn.execute("BEGIN" if self.read_only else "BEGIN IMMEDIATE")
            try:
                result = fn(conn)
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")
            return result

        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(self._executor, call)
        except sqlite3.OperationalError as exc:
            if "locked" in str(exc) or "busy" in str(exc):
                raise BackendUnavailable(f"{self.path}: {exc}") from exc
            raise BackendError(f"{self.path}: {exc}") from exc
        except sqlite3.Error as exc:
            raise BackendError(f"{self.path}: {exc}") from exc
        except OSError as exc:
            raise BackendUnavailable(f"{self.path}: {exc}") from exc

    def _live(self, row: tuple[str, int, float, str] | None, now: float) -> bool:
        return row is not None and row[3] == self._boot and row[2] > now

    async def acquire(
        self, name: str, *, identity: str, ttl: float, claim: int = 0
    ) -> AcquireResult:
        check_name(name)

        def op(conn: sqlite3.Connection) -> AcquireResult:
            row = conn.execute(
                "SELECT holder, token, expires, boot FROM podkit_leases WHERE name = ?", (name,)
            ).fetchone()
            now = self._clock()
            if row is not None and self._live(row, now):
                return AcquireResult(None, Holder(row[0], row[1], row[2] - now))
            last = conn.execute(
                "SELECT last FROM podkit_lease_tokens WHERE name = ?", (name,)
            ).fetchone()
            token = max(last[0] if last else 0, row[1] if row else 0) + 1
            conn.execute(
                "INSERT INTO podkit_lease_tokens (name, last) VALUES (?, ?) "
                "ON CONFLICT(name) DO UPDATE SET last = excluded.last",
                (name, token),
            )
            conn.execute(
                "INSERT OR REPLACE INTO podkit_leases (name, holder, token, expires, boot) "
                "VALUES (?, ?, ?, ?, ?)",
                (name, identity, token, now + ttl, self._boot),
            )
            return AcquireResult(Grant(name, identity, token))

        return await self._run(op)

    async def renew(self, grant: Grant, *, ttl: float) -> bool:
        def op(conn: sqlite3.Connection) -> bool:
            now = self._clock()
            cursor = conn.execute(
                "UPDATE podkit_leases SET expires = ? WHERE name = ? AND holder = ? "
                "AND token = ? AND boot = ? AND expires > ?",
                (now + ttl, grant.name, grant.identity, grant.token, self._boot, now),
            )
            return cursor.rowcount == 1

        return await self._run(op)

    async def release(self, grant: Grant) -> bool:
        def op(conn: sqlite3.Connection) -> bool:
            cursor = conn.execute(
                "DELETE FROM podkit_leases WHERE name = ? AND holder = ? AND token = ?",
                (grant.name, grant.identity, grant.token),
            )
            return cursor.rowcount == 1

        return await self._run(op)

    async def leader(self, name: str) -> Holder | None:
        check_name(name)

        def op(conn: sqlite3.Connection) -> Holder | None:
            row = conn.execute(
                "SELECT holder, token, expires, boot FROM podkit_leases WHERE name = ?", (name,)
            ).fetchone()
            now = self._clock()
            if row is None or not self._live(row, now):
                return None
            return Holder(row[0], row[1], row[2] - now)

        return await self._run(op)

    async def aclose(self) -> None:
        if self._closed:
            return
        self._closed = True

        def close() -> None:
            if self._conn is not None:
                self._conn.close()
                self._conn = None

        loop = asyncio.get_running_loop()
        try:
            await loop.run_in_executor(self._executor, close)
        finally:
            self._executor.shutdown(wait=False)
