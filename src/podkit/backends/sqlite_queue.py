"""Work queues in one SQLite file, safe for many processes on one machine.

Theory of operation. The file runs in WAL mode, so readers never block the writer, with a
busy timeout so concurrent writers wait for each other instead of failing. Every operation
that changes items is one ``BEGIN IMMEDIATE`` transaction: it takes the write lock first, so
the select-then-update of a lease cannot interleave with another process's lease and two
workers never get the same item. A process that dies mid-transaction leaves nothing behind
(SQLite rolls the journal back); a worker that dies holding leases leaves items whose
deadline passes, and the next lease call from anyone reclaims them.

Acked items are deleted; their idempotency key stays in a side table until it expires.
Calls run on one thread per backend (sqlite3 connections are not shared across threads).
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TypeVar, cast

from podkit.backends.queues import (
    RECLAIM_BATCH,
    STAT_KINDS,
    DeadRecord,
    Encoding,
    LeasedRecord,
    NewItem,
    PutResult,
    QueueBackend,
    QueueStats,
    build_counts,
    rate_buckets,
)
from podkit.errors import BackendError, BackendUnavailable

T = TypeVar("T")

DEFAULT_BUSY_TIMEOUT = 30.0  # seconds a writer waits for the lock before the call fails
_RATE_RETENTION_BUCKETS = 30  # rate rows older than this many buckets are deleted

_SCHEMA = """
CREATE TABLE IF NOT EXISTS podkit_queue_items (
    id TEXT PRIMARY KEY,
    queue TEXT NOT NULL,
    state TEXT NOT NULL,
    body BLOB NOT NULL,
    encoding TEXT NOT NULL,
    key TEXT,
    priority INTEGER NOT NULL,
    visible_at REAL NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    max_attempts INTEGER NOT NULL,
    token TEXT,
    deadline REAL,
    enqueued_at REAL NOT NULL,
    died_at REAL,
    error TEXT NOT NULL DEFAULT ''
);
CREATE INDEX IF NOT EXISTS podkit_queue_waiting
    ON podkit_queue_items (queue, priority DESC, visible_at, id)
    WHERE state IN ('queued', 'failed');
CREATE INDEX IF NOT EXISTS podkit_queue_leased
    ON podkit_queue_items (queue, deadline) WHERE state = 'leased';
CREATE INDEX IF NOT EXISTS podkit_queue_dead
    ON podkit_queue_items (queue, died_at) WHERE state = 'dead';
CREATE TABLE IF NOT EXISTS podkit_queue_keys (
    queue TEXT NOT NULL,
    key TEXT NOT NULL,
    item_id TEXT NOT NULL,
    expires_at REAL,
    PRIMARY KEY (queue, key)
);
CREATE TABLE IF NOT EXISTS podkit_queue_counters (
    queue TEXT NOT NULL,
    bucket INTEGER NOT NULL,
    kind TEXT NOT NULL,
    count INTEGER NOT NULL,
    PRIMARY KEY (queue, bucket, kind)
);
"""

# bucket -1 holds the totals since the queue was created
_TOTAL_BUCKET = -1


class SqliteQueueBackend(QueueBackend):
    """Queues in the SQLite file at ``path`` (created with its schema when missing).

    Args:
        read_only: open the file read-only and never create it (for commands that only
            look: ``podkit queue stats``, ``dead``); a missing file is a :class:`BackendError`
            and writes fail.
    """

    def __init__(
        self, path: str, *, busy_timeout: float = DEFAULT_BUSY_TIMEOUT, read_only: bool = False
    ) -> None:
        self.path = path
        self.busy_timeout = busy_timeout
        self.read_only = read_only
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="podkit-sqlite")
        self._conn: sqlite3.Connection | None = None
        self._closed = False

    # -- plumbing -------------------------------------------------------------------------

    def _connect_read_only(self) -> sqlite3.Connection:
        if not Path(self.path).is_file():
            raise BackendError(
                f"sqlite queue {self.path}: no such database (this command only reads; "
                "it never creates one)"
            )
        conn = sqlite3.connect(
            Path(self.path).resolve().as_uri() + "?mode=ro",
            uri=True,
            timeout=self.busy_timeout,
            isolation_level=None,
            check_same_thread=False,
        )
        conn.execute(f"PRAGMA busy_timeout={int(self.busy_timeout * 1000)}")
        return conn

    def _connect(self) -> sqlite3.Connection:
        if self._conn is None and self.read_only:
            self._conn = self._connect_read_only()
        if self._conn is None:
            parent = Path(self.path).parent
            if not parent.exists():
                raise BackendUnavailable(f"sqlite queue {self.path}: directory {parent} missing")
            conn = sqlite3.connect(
                self.path, timeout=self.busy_timeout, isolation_level=None, check_same_thread=False
            )
            conn.execute("PRAGMA journal_mode=WAL")
            # NORMAL in WAL mode survives any process crash; only an OS crash or power loss
            # may lose the last transactions.
            conn.execute("PRAGMA synchronous=NORMAL")
            conn.execute(f"PRAGMA busy_timeout={int(self.busy_timeout * 1000)}")
            conn.execute("BEGIN IMMEDIATE")
            try:
                for statement in _SCHEMA.split(";"):
                    if statement.strip():
                        conn.execute(statement)
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            self._conn = conn
        return self._conn

    async def _run(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        if self._closed:
            raise BackendError("sqlite queue backend is closed")

        def call() -> T:
            conn = self._connect()
            try:
                conn.execute("BEGIN" if self.read_only else "BEGIN IMMEDIATE")
                try:
                    result = fn(conn)
                except BaseException:
                    conn.execute("ROLLBACK")
                    raise
                conn.execute("COMMIT")
                return result
            except sqlite3.OperationalError as exc:
                raise BackendUnavailable(f"sqlite queue {self.path}: {exc}") from exc
            except sqlite3.Error as exc:
                raise BackendError(f"sqlite queue {self.path}: {exc}") from exc

        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, call)

    @staticmethod
    def _count(conn: sqlite3.Connection, queue: str, kind: str, n: int, now: float) -> None:
        if n <= 0:
            return
        bucket, _ = rate_buckets(now)
        for b in (bucket, _TOTAL_BUCKET):
            conn.execute(
                "INSERT INTO podkit_queue_counters (queue, bucket, kind, count) VALUES (?,?,?,?)"
                " ON CONFLICT (queue, bucket, kind) DO UPDATE SET count = count + excluded.count",
                (queue, b, kind, n),
            )

    # -- operations -----------------------------------------------------------------------

    async def put(self, queue: str, items: Sequence[NewItem], *, now: float) -> list[PutResult]:
        def op(conn: sqlite3.Connection) -> list[PutResult]:
            results: list[PutResult] = []
            created = 0
            for item in items:
                if item.key is not None:
                    row = conn.execute(
                        "SELECT item_id FROM podkit_queue_keys WHERE queue=? AND key=?"
                        " AND (expires_at IS NULL OR expires_at > ?)",
                        (queue, item.key, now),
                    ).fetchone()
                    if row is not None:
                        results.append(PutResult(row[0], False))
                        continue
                    conn.execute(
                        "INSERT OR REPLACE INTO podkit_queue_keys (queue, key, item_id, expires_at)"
                        " VALUES (?,?,?,NULL)",
                        (queue, item.key, item.id),
                    )
                state = "queued"
                conn.execute(
                    "INSERT INTO podkit_queue_items (id, queue, state, body, encoding, key,"
                    " priority, visible_at, max_attempts, enqueued_at)"
                    " VALUES (?,?,?,?,?,?,?,?,?,?)",
                    (
                        item.id,
                        queue,
                        state,
                        item.body,
                        item.encoding,
                        item.key,
                        item.priority,
                        item.visible_at,
                        item.max_attempts,
                        now,
                    ),
                )
                created += 1
                results.append(PutResult(item.id, True))
            self._count(conn, queue, "put", created, now)
            return results

        return await self._run(op)

    async def lease(
        self, queue: str, n: int, *, now: float, visibility: float, token: str
    ) -> list[LeasedRecord]:
        deadline = now + visibility

        def op(conn: sqlite3.Connection) -> list[LeasedRecord]:
            self._reclaim(conn, queue, now)
            rows = conn.execute(
                "SELECT id, body, encoding, key, priority, attempts, max_attempts, enqueued_at"
                " FROM podkit_queue_items WHERE queue=? AND state IN ('queued', 'failed')"
                " AND visible_at <= ? ORDER BY priority DESC, visible_at, id LIMIT ?",
                (queue, now, n),
            ).fetchall()
            leased: list[LeasedRecord] = []
            for i, row in enumerate(rows):
                tok = f"{token}:{i}"
                conn.execute(
                    "UPDATE podkit_queue_items SET state='leased', attempts=attempts+1,"
                    " token=?, deadline=? WHERE id=?",
                    (tok, deadline, row[0]),
                )
                leased.append(
                    LeasedRecord(
                        id=row[0],
                        body=bytes(row[1]),
                        encoding=cast(Encoding, row[2]),
                        key=row[3],
                        priority=row[4],
                        attempt=row[5] + 1,
                        max_attempts=row[6],
                        enqueued_at=row[7],
                        token=tok,
                        deadline=deadline,
                    )
                )
            return leased

        return await self._run(op)

    def _reclaim(self, conn: sqlite3.Connection, queue: str, now: float) -> None:
        """Queue again (or dead-letter) items whose lease deadline has passed."""
        expired = conn.execute(
            "SELECT id, attempts, max_attempts FROM podkit_queue_items WHERE queue=?"
            " AND state='leased' AND deadline < ? LIMIT ?",
            (queue, now, RECLAIM_BATCH),
        ).fetchall()
        dead = 0
        for item_id, attempts, max_attempts in expired:
            # decide_expiry(): out of attempts -> DEAD, else QUEUED again at once
            if attempts >= max_attempts:
                dead += 1
                conn.execute(
                    "UPDATE podkit_queue_items SET state='dead', token=NULL, deadline=NULL,"
                    " died_at=?, error='lease expired' WHERE id=?",
                    (now, item_id),
                )
            else:
                conn.execute(
                    "UPDATE podkit_queue_items SET state='queued', token=NULL, deadline=NULL,"
                    " visible_at=?, error='lease expired' WHERE id=?",
                    (now, item_id),
                )
        self._count(conn, queue, "dead", dead, now)

    async def ack(
        self, queue: str, receipts: Sequence[tuple[str, str]], *, now: float, key_ttl: float
    ) -> list[bool]:
        def op(conn: sqlite3.Connection) -> list[bool]:
            results: list[bool] = []
            for item_id, token in receipts:
                row = conn.execute(
                    "DELETE FROM podkit_queue_items WHERE id=? AND queue=? AND state='leased'"
                    " AND token=? RETURNING key",
                    (item_id, queue, token),
                ).fetchone()
                if row is None:
                    results.append(False)
                    continue
                results.append(True)
                if row[0] is not None:
                    conn.execute(
                        "UPDATE podkit_queue_keys SET expires_at=? WHERE queue=? AND key=?"
                        " AND item_id=?",
                        (now + key_ttl, queue, row[0], item_id),
                    )
            self._count(conn, queue, "ack", sum(results), now)
            return results

        return await self._run(op)

    async def nack(
        self,
        queue: str,
        receipt: tuple[str, str],
        *,
        now: float,
        visible_at: float | None,
        error: str,
    ) -> bool:
        item_id, token = receipt

        def op(conn: sqlite3.Connection) -> bool:
            if visible_at is None:
                cur = conn.execute(
                    "UPDATE podkit_queue_items SET state='dead', token=NULL, deadline=NULL,"
                    " died_at=?, error=? WHERE id=? AND queue=? AND state='leased' AND token=?",
                    (now, error, item_id, queue, token),
                )
                kind = "dead"
            else:
                cur = conn.execute(
                    "UPDATE podkit_queue_items SET state='failed', token=NULL, deadline=NULL,"
                    " visible_at=?, error=? WHERE id=? AND queue=? AND state='leased' AND token=?",
                    (visible_at, error, item_id, queue, token),
                )
                kind = "fail"
            if cur.rowcount != 1:
                return False
            self._count(conn, queue, "fail", 1, now)
            if kind == "dead":
                self._count(conn, queue, "dead", 1, now)
            return True

        return await self._run(op)

    async def extend(
        self, queue: str, receipts: Sequence[tuple[str, str]], *, deadline: float
    ) -> list[bool]:
        def op(conn: sqlite3.Connection) -> list[bool]:
            return [
                conn.execute(
                    "UPDATE podkit_queue_items SET deadline=? WHERE id=? AND queue=?"
                    " AND state='leased' AND token=?",
                    (deadline, item_id, queue, token),
                ).rowcount
                == 1
                for item_id, token in receipts
            ]

        return await self._run(op)

    async def counts(self, queue: str, *, now: float) -> QueueStats:
        def op(conn: sqlite3.Connection) -> QueueStats:
            ready = delayed = leased = dead = 0
            for state, due, count in conn.execute(
                "SELECT state, visible_at <= ?, COUNT(*) FROM podkit_queue_items WHERE queue=?"
                " GROUP BY state, visible_at <= ?",
                (now, queue, now),
            ):
                if state == "leased":
                    leased += count
                elif state == "dead":
                    dead += count
                elif due:
                    ready += count
                else:
                    delayed += count
            current, window = rate_buckets(now)
            rates = dict.fromkeys(STAT_KINDS, 0)
            totals = dict.fromkeys(STAT_KINDS, 0)
            for bucket, kind, count in conn.execute(
                "SELECT bucket, kind, count FROM podkit_queue_counters WHERE queue=?"
                " AND (bucket = ? OR bucket BETWEEN ? AND ?)",
                (queue, _TOTAL_BUCKET, window[0], window[-1]),
            ):
                target = totals if bucket == _TOTAL_BUCKET else rates
                target[kind] = target.get(kind, 0) + count
            if not self.read_only:  # housekeeping; a reader leaves it to the writers
                conn.execute(
                    "DELETE FROM podkit_queue_counters WHERE queue=? AND bucket >= 0"
                    " AND bucket < ?",
                    (queue, current - _RATE_RETENTION_BUCKETS),
                )
            return build_counts(ready, delayed, leased, dead, rates, totals)

        return await self._run(op)

    async def dead(self, queue: str, *, limit: int) -> list[DeadRecord]:
        def op(conn: sqlite3.Connection) -> list[DeadRecord]:
            return [
                DeadRecord(
                    id=row[0],
                    body=bytes(row[1]),
                    encoding=cast(Encoding, row[2]),
                    key=row[3],
                    priority=row[4],
                    attempts=row[5],
                    max_attempts=row[6],
                    enqueued_at=row[7],
                    died_at=row[8],
                    error=row[9],
                )
                for row in conn.execute(
                    "SELECT id, body, encoding, key, priority, attempts, max_attempts,"
                    " enqueued_at, died_at, error FROM podkit_queue_items WHERE queue=?"
                    " AND state='dead' ORDER BY died_at LIMIT ?",
                    (queue, limit),
                )
            ]

        return await self._run(op)

    async def requeue_dead(self, queue: str, ids: Sequence[str] | None, *, now: float) -> int:
        def op(conn: sqlite3.Connection) -> int:
            sql = (
                "UPDATE podkit_queue_items SET state='queued', attempts=0, visible_at=?,"
                " died_at=NULL WHERE queue=? AND state='dead'"
            )
            if ids is None:
                return conn.execute(sql, (now, queue)).rowcount
            return sum(conn.execute(sql + " AND id=?", (now, queue, i)).rowcount for i in ids)

        return await self._run(op)

    async def purge(self, queue: str) -> None:
        def op(conn: sqlite3.Connection) -> None:
            for table in ("podkit_queue_items", "podkit_queue_keys", "podkit_queue_counters"):
                conn.execute(f"DELETE FROM {table} WHERE queue=?", (queue,))

        await self._run(op)

    async def aclose(self) -> None:
        if self._closed:
            return
        self._closed = True

        def close() -> None:
            if self._conn is not None:
                self._conn.close()
                self._conn = None

        loop = asyncio.get_running_loop()
        await loop.run_in_executor(self._executor, close)
        self._executor.shutdown(wait=False)


__all__ = ["DEFAULT_BUSY_TIMEOUT", "SqliteQueueBackend"]
