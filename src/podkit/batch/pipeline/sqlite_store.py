"""The SQLite pipeline store: one file, many worker processes on one machine.

Every operation that changes state is one ``BEGIN IMMEDIATE`` transaction (SQLite's write
lock, taken before anything is read), so a commit's lease check, its outputs, the group
counts and a barrier's accumulators are read and written by one process at a time, and a
process killed in the middle leaves the file as it was before the transaction (WAL mode).
A row of ``packs`` is one pack of items (a JSON array of ``n`` values, see
:mod:`~podkit.batch.pipeline.store`): one insert, one lease update and one delete per pack.
The body is the row's last column, so reading the other columns never walks its overflow
pages, and the index holds ``n``, so counting a backlog reads the index alone.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from podkit.batch.pipeline.barrier import GroupState, Outcome
from podkit.batch.pipeline.store import (
    DEFAULT_MAX_DELIVERIES,
    MAX_ERROR_CHARS,
    Conflict,
    DeadRecord,
    Message,
    PipelineStore,
    Results,
    StageCounts,
    Step,
    Topology,
    decode_acc,
    encode,
    encode_acc,
    pack,
    step_outputs,
)
from podkit.errors import BackendError

BUSY_TIMEOUT = 30.0  # seconds a transaction waits for another process's write lock

_SCHEMA = """
CREATE TABLE IF NOT EXISTS packs (p TEXT, sub TEXT, seq INTEGER PRIMARY KEY AUTOINCREMENT,
  grp TEXT, n INTEGER, delivery INTEGER DEFAULT 0, token TEXT, deadline REAL, body TEXT);
CREATE INDEX IF NOT EXISTS packs_ready ON packs (p, sub, token, seq, n);
CREATE TABLE IF NOT EXISTS dead (p TEXT, stage TEXT, sub TEXT, id TEXT, grp TEXT, body TEXT,
  error TEXT, died_at REAL, PRIMARY KEY (p, sub, id));
CREATE TABLE IF NOT EXISTS groups (p TEXT, name TEXT, created INTEGER, done INTEGER,
  failed INTEGER, sealed INTEGER, PRIMARY KEY (p, name));
CREATE TABLE IF NOT EXISTS fired (p TEXT, stage TEXT, grp TEXT, outcome TEXT,
  PRIMARY KEY (p, stage, grp));
CREATE TABLE IF NOT EXISTS acc_values (p TEXT, stage TEXT, grp TEXT, key TEXT, value TEXT,
  ver INTEGER, PRIMARY KEY (p, stage, grp, key)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS barrier (p TEXT, stage TEXT, grp TEXT, items INTEGER,
  PRIMARY KEY (p, stage, grp));
CREATE TABLE IF NOT EXISTS versions (p TEXT, stage TEXT, version INTEGER,
  PRIMARY KEY (p, stage));
CREATE TABLE IF NOT EXISTS stats (p TEXT, stage TEXT, items_in INTEGER DEFAULT 0,
  items_out INTEGER DEFAULT 0, retries INTEGER DEFAULT 0, dead INTEGER DEFAULT 0,
  fired INTEGER DEFAULT 0, PRIMARY KEY (p, stage));
CREATE TABLE IF NOT EXISTS out_packs (p TEXT, topic TEXT, seq INTEGER PRIMARY KEY AUTOINCREMENT,
  body TEXT);
CREATE TABLE IF NOT EXISTS meta (p TEXT, key TEXT, value TEXT, PRIMARY KEY (p, key));
CREATE TABLE IF NOT EXISTS workers (p TEXT, name TEXT, pid INTEGER, beat REAL,
  PRIMARY KEY (p, name));
"""


class _Lost(Exception):
    pass


def _stage_of(sub: str) -> str:
    return sub.rpartition(">")[2]


class SqlitePipelineStore(PipelineStore):
    """The pipeline ``name`` in the SQLite file ``path``.

    Raises:
        BackendError: the file cannot be opened (or, ``read_only``, does not exist).
    """

    def __init__(
        self, path: str, name: str, topology: Topology, *, read_only: bool = False
    ) -> None:
        self.path = path
        self.name = name
        self.topology = topology
        try:
            if read_only:
                if not Path(path).exists():
                    raise BackendError(f"no such database: {path}")
                self.db = sqlite3.connect(
                    f"file:{path}?mode=ro", uri=True, isolation_level=None, timeout=BUSY_TIMEOUT
                )
            else:
                if Path(path).parent != Path():
                    Path(path).parent.mkdir(parents=True, exist_ok=True)
                self.db = sqlite3.connect(path, isolation_level=None, timeout=BUSY_TIMEOUT)
                self.db.execute("PRAGMA journal_mode=WAL")
                self.db.execute("PRAGMA synchronous=NORMAL")
                self.db.executescript(_SCHEMA)
        except sqlite3.Error as exc:
            raise BackendError(f"cannot open {path}: {exc}") from exc
        self._closed = False

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        try:
            self.db.execute("BEGIN IMMEDIATE")
        except sqlite3.Error as exc:
            raise BackendError(f"{self.path}: {exc}") from exc
        try:
            yield self.db
        except sqlite3.Error as exc:
            self.db.execute("ROLLBACK")
            raise BackendError(f"{self.path}: {exc}") from exc
        except BaseException:
            self.db.execute("ROLLBACK")
            raise
        else:
            try:
                self.db.execute("COMMIT")
            except sqlite3.Error as exc:
                raise BackendError(f"{self.path}: {exc}") from exc

    # -- writing ------------------------------------------------------------------------------

    def _put(self, db: sqlite3.Connection, topic: str, group: str, values: Sequence[Any]) -> int:
        """Append values of one group to a topic (as packs); the children they add."""
        subs = self.topology.subs.get(topic, ())
        packs = pack(values, self.topology.pack, self.topology.pack_bytes) if values else []
        if subs:
            db.executemany(
                "INSERT INTO packs (p, sub, grp, body, n) VALUES (?, ?, ?, ?, ?)",
                [(self.name, sub, group, body, n) for sub in subs for body, n in packs],
            )
        if topic in self.topology.outputs:
            db.executemany(
                "INSERT INTO out_packs (p, topic, body) VALUES (?, ?, ?)",
                [(self.name, topic, body) for body, _ in packs],
            )
        return len(subs) * len(values)

    def _group_delta(
        self,
        db: sqlite3.Connection,
        group: str,
        *,
        created: int = 0,
        done: int = 0,
        failed: int = 0,
    ) -> None:
        db.execute(
            "INSERT INTO groups (p, name, created, done, failed, sealed) VALUES (?, ?, ?, ?, ?, 0) "
            "ON CONFLICT (p, name) DO UPDATE SET created = created + excluded.created, "
            "done = done + excluded.done, failed = failed + excluded.failed",
            (self.name, group, created, done, failed),
        )

    def _stat(self, db: sqlite3.Connection, stage: str, **deltas: int) -> None:
        columns = ", ".join(deltas)
        marks = ", ".join("?" for _ in deltas)
        updates = ", ".join(f"{c} = {c} + excluded.{c}" for c in deltas)
        db.execute(
            f"INSERT INTO stats (p, stage, {columns}) VALUES (?, ?, {marks}) "
            f"ON CONFLICT (p, stage) DO UPDATE SET {updates}",
            (self.name, stage, *deltas.values()),
        )

    def feed(self, items: Sequence[tuple[str, str, Any]], groups: Sequence[str]) -> bool:
        with self._tx() as db:
            if db.execute(
                "SELECT 1 FROM meta WHERE p = ? AND key = 'fed'", (self.name,)
            ).fetchone():
                return False
            created: dict[str, int] = dict.fromkeys(groups, 0)
            by_target: dict[tuple[str, str], list[Any]] = {}
            for topic, group, value in items:
                by_target.setdefault((topic, group), []).append(value)
            for (topic, group), values in by_target.items():
                created[group] = created.get(group, 0) + self._put(db, topic, group, values)
            for group, n in created.items():
                self._group_delta(db, group, created=n)
                db.execute(
                    "UPDATE groups SET sealed = 1 WHERE p = ? AND name = ?", (self.name, group)
                )
            db.execute("INSERT INTO meta (p, key, value) VALUES (?, 'fed', '1')", (self.name,))
        return True

    def put(self, items: Sequence[tuple[str, str, Any]]) -> int:
        created: dict[str, int] = {}
        by_target: dict[tuple[str, str], list[Any]] = {}
        for topic, group, value in items:
            by_target.setdefault((topic, group), []).append(value)
        with self._tx() as db:
            for (topic, group), values in by_target.items():
                created[group] = created.get(group, 0) + self._put(db, topic, group, values)
            for group, n in created.items():
                self._group_delta(db, group, created=n)
        return sum(created.values())

    def lease(
        self,
        subs: Sequence[str],
        n: int,
        *,
        now: float,
        visibility: float,
        token: str,
        max_deliveries: int = DEFAULT_MAX_DELIVERIES,
    ) -> list[Message]:
        if not subs:
            return []
        marks = ",".join("?" for _ in subs)
        with self._tx() as db:
            db.execute(
                f"UPDATE packs SET token = NULL WHERE p = ? AND sub IN ({marks}) "
                "AND token IS NOT NULL AND deadline < ?",
                (self.name, *subs, now),
            )
            # The heads first, without bodies (sorting several subscriptions' packs by seq
            # must not read every body), at most n of them: a pack holds one item or more.
            heads = db.execute(
                f"SELECT seq, sub, grp, delivery, n FROM packs WHERE p = ? "
                f"AND sub IN ({marks}) AND token IS NULL ORDER BY seq LIMIT ?",
                (self.name, *subs, n),
            ).fetchall()
            chosen: list[tuple[int, str, str, int]] = []
            buried: list[tuple[int, str, str, int]] = []
            taken = 0
            # Whole packs in order, as many as fit in n (at least one).
            for seq, sub, grp, delivery, count in heads:
                if delivery >= max_deliveries:
                    buried.append((seq, sub, grp, delivery))
                    continue
                if taken and taken + count > n:
                    break
                chosen.append((seq, sub, grp, delivery))
                taken += count
                if taken >= n:
                    break
            wanted = [seq for seq, *_ in chosen] + [seq for seq, *_ in buried]
            bodies: dict[int, str] = {}
            if wanted:
                bodies = dict(
                    db.execute(
                        f"SELECT seq, body FROM packs WHERE seq IN ({','.join('?' * len(wanted))})",
                        wanted,
                    ).fetchall()
                )
            messages: list[Message] = []
            for seq, sub, grp, delivery in chosen:
                row = str(seq)
                messages.extend(
                    Message(sub, f"{row}:{i}", grp, v, delivery + 1, token, row)
                    for i, v in enumerate(json.loads(bodies[seq]))
                )
            for seq, sub, grp, delivery in buried:
                error = f"leased {delivery} times without a commit (its workers died)"
                self._bury_pack(db, seq, sub, grp, bodies[seq], error, now)
            leased = [seq for seq, *_ in chosen]
            if leased:
                db.execute(
                    "UPDATE packs SET token = ?, deadline = ?, delivery = delivery + 1 "
                    f"WHERE seq IN ({','.join('?' * len(leased))})",
                    (token, now + visibility, *leased),
                )
        return messages

    def _bury_pack(
        self,
        db: sqlite3.Connection,
        seq: int,
        sub: str,
        grp: str,
        body: str,
        error: str,
        now: float,
    ) -> None:
        """Dead-letter every item of a pack (one dead letter per item, ``PACK:INDEX``)."""
        stage = _stage_of(sub)
        values = json.loads(body)
        db.execute("DELETE FROM packs WHERE seq = ?", (seq,))
        db.executemany(
            "INSERT OR REPLACE INTO dead (p, stage, sub, id, grp, body, error, died_at) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            [
                (self.name, stage, sub, f"{seq}:{i}", grp, encode(v), error[:MAX_ERROR_CHARS], now)
                for i, v in enumerate(values)
            ],
        )
        self._group_delta(db, grp, failed=len(values))
        self._stat(db, stage, dead=len(values))

    def commit(self, stage: str, step: Step, *, now: float, version: int | None = None) -> bool:
        try:
            self._commit(stage, step, now=now, version=version)
        except _Lost:
            return False
        return True

    def _commit(self, stage: str, step: Step, *, now: float, version: int | None) -> None:
        messages = step.messages()
        by_token: dict[str, dict[int, int]] = {}
        for m in messages:
            covered = by_token.setdefault(m.token, {})
            seq = int(m.pack)
            covered[seq] = covered.get(seq, 0) + 1
        with self._tx() as db:
            for token, covered in by_token.items():
                seqs = list(covered)
                held = db.execute(
                    f"SELECT seq, n FROM packs WHERE seq IN ({','.join('?' * len(seqs))}) "
                    "AND token = ?",
                    (*seqs, token),
                ).fetchall()
                if len(held) != len(seqs):
                    raise _Lost
                for seq, count in held:
                    if covered[seq] != count:
                        raise ValueError(
                            f"a step covers {covered[seq]} of the {count} items of pack {seq}"
                        )
            current = self._version(db, stage)
            if version is not None and version != current:
                self._check_unchanged(db, stage, step, version, current)
            all_seqs = [seq for covered in by_token.values() for seq in covered]
            if all_seqs:
                db.execute(
                    f"DELETE FROM packs WHERE seq IN ({','.join('?' * len(all_seqs))})", all_seqs
                )
            deltas: dict[str, list[int]] = {}
            out = 0
            for (topic, group), values in step_outputs(step).items():
                children = self._put(db, topic, group, values)
                deltas.setdefault(group, [0, 0, 0])[2] += children
                out += len(values)
            for m, _ in step.done:
                d = deltas.get(m.group)
                if d is None:
                    d = deltas[m.group] = [0, 0, 0]
                d[0] += 1
            requeued: dict[tuple[str, str], list[Any]] = {}
            for m in step.requeue:
                requeued.setdefault((m.sub, m.group), []).append(m.value)
            for (sub, group), values in requeued.items():
                db.executemany(
                    "INSERT INTO packs (p, sub, grp, body, n) VALUES (?, ?, ?, ?, ?)",
                    [(self.name, sub, group, body, n) for body, n in pack(values, len(values))],
                )
            for m, error in step.dead:
                db.execute(
                    "INSERT OR REPLACE INTO dead (p, stage, sub, id, grp, body, error, died_at) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                    (
                        self.name, stage, m.sub, m.id, m.group, encode(m.value),
                        error[:MAX_ERROR_CHARS], now,
                    ),
                )  # fmt: skip
                deltas.setdefault(m.group, [0, 0, 0])[1] += 1
            for group, (done, failed, children) in deltas.items():
                self._group_delta(db, group, created=children, done=done, failed=failed)
            fired = self._fired_groups(
                db, stage, {g for g, _ in step.accumulators} | set(step.absorbed)
            )
            db.executemany(
                "INSERT OR REPLACE INTO acc_values (p, stage, grp, key, value, ver) "
                "VALUES (?, ?, ?, ?, ?, ?)",
                [
                    (self.name, stage, group, key, encode_acc(value), current + 1)
                    for (group, key), value in step.accumulators.items()
                    if group not in fired
                ],
            )
            for group, items in step.absorbed.items():
                if group not in fired:
                    db.execute(
                        "INSERT INTO barrier (p, stage, grp, items) VALUES (?, ?, ?, ?) "
                        "ON CONFLICT (p, stage, grp) DO UPDATE SET items = items + excluded.items",
                        (self.name, stage, group, items),
                    )
            if step.accumulators or step.absorbed:
                db.execute(
                    "INSERT INTO versions (p, stage, version) VALUES (?, ?, 1) "
                    "ON CONFLICT (p, stage) DO UPDATE SET version = version + 1",
                    (self.name, stage),
                )
            self._stat(
                db,
                stage,
                items_in=len(messages) - len(step.requeue),
                items_out=out,
                retries=step.retries,
                dead=len(step.dead),
            )

    def _check_unchanged(
        self, db: sqlite3.Connection, stage: str, step: Step, version: int, current: int
    ) -> None:
        """Raise Conflict when an accumulator of the step was written after ``version`` (the
        stage's version when the worker read them): commits of other keys do not conflict."""
        if version > current:
            raise Conflict(stage)
        by_group: dict[str, list[str]] = {}
        for group, key in step.accumulators:
            by_group.setdefault(group, []).append(key)
        for group, keys in by_group.items():
            for start in range(0, len(keys), 500):
                part = keys[start : start + 500]
                if db.execute(
                    "SELECT 1 FROM acc_values WHERE p = ? AND stage = ? AND grp = ? AND ver > ? "
                    f"AND key IN ({','.join('?' * len(part))}) LIMIT 1",
                    (self.name, stage, group, version, *part),
                ).fetchone():
                    raise Conflict(stage)

    def _fired_groups(self, db: sqlite3.Connection, stage: str, groups: set[str]) -> set[str]:
        return {
            g
            for g in groups
            if db.execute(
                "SELECT 1 FROM fired WHERE p = ? AND stage = ? AND grp = ?", (self.name, stage, g)
            ).fetchone()
        }

    def _version(self, db: sqlite3.Connection, stage: str) -> int:
        row = db.execute(
            "SELECT version FROM versions WHERE p = ? AND stage = ?", (self.name, stage)
        ).fetchone()
        return int(row[0]) if row else 0

    def accumulators(
        self, stage: str, pairs: Sequence[tuple[str, str]]
    ) -> tuple[dict[tuple[str, str], Any], int]:
        found: dict[tuple[str, str], Any] = {}
        by_group: dict[str, list[str]] = {}
        for group, key in pairs:
            by_group.setdefault(group, []).append(key)
        # Plain reads, no write lock: the version is read first, so accumulators newer than
        # it make the commit fail with Conflict and the worker read again.
        db = self.db
        version = self._version(db, stage)
        for group, keys in by_group.items():
            for key, value in db.execute(
                "SELECT key, value FROM acc_values WHERE p = ? AND stage = ? AND grp = ? "
                f"AND key IN ({','.join('?' * len(keys))})",
                (self.name, stage, group, *keys),
            ):
                found[(group, key)] = decode_acc(value)
        return found, version

    def open_barriers(self, stage: str) -> list[str]:
        rows = self.db.execute(
            "SELECT grp FROM barrier WHERE p = ? AND stage = ?", (self.name, stage)
        ).fetchall()
        return [r[0] for r in rows]

    def _group_state(self, db: sqlite3.Connection, name: str) -> GroupState | None:
        row = db.execute(
            "SELECT created, done, failed, sealed FROM groups WHERE p = ? AND name = ?",
            (self.name, name),
        ).fetchone()
        if row is None:
            return None
        return GroupState(created=row[0], done=row[1], failed=row[2], sealed=bool(row[3]))

    def group(self, name: str) -> GroupState | None:
        return self._group_state(self.db, name)

    def fire(
        self,
        stage: str,
        group: str,
        *,
        decide: Callable[[GroupState], Outcome | None],
        results: Results,
        outputs: Sequence[str],
    ) -> Outcome | None:
        # A look without the write lock first: most calls find the group still running.
        state = self._group_state(self.db, group)
        if state is None or decide(state) is None:
            return None
        with self._tx() as db:
            if self._fired_groups(db, stage, {group}):
                return None
            state = self._group_state(db, group)
            if state is None:
                return None
            outcome = decide(state)
            if outcome is None:
                return None
            row = db.execute(
                "SELECT items FROM barrier WHERE p = ? AND stage = ? AND grp = ?",
                (self.name, stage, group),
            ).fetchone()
            counts = {
                "items": int(row[0]) if row else 0,
                "done": state.done,
                "failed": state.failed,
            }
            accs = [
                (k, decode_acc(v))
                for k, v in db.execute(
                    "SELECT key, value FROM acc_values WHERE p = ? AND stage = ? AND grp = ? "
                    "ORDER BY key",
                    (self.name, stage, group),
                )
            ]
            derived = f"{group}/{stage}"
            children = emitted = 0
            values = results(group, outcome, accs, counts)
            for topic in outputs:
                children += self._put(db, topic, derived, values)
                emitted += len(values)
            self._group_delta(db, derived, created=children)
            db.execute(
                "UPDATE groups SET sealed = 1 WHERE p = ? AND name = ?", (self.name, derived)
            )
            db.execute(
                "INSERT INTO fired (p, stage, grp, outcome) VALUES (?, ?, ?, ?)",
                (self.name, stage, group, outcome.value),
            )
            db.execute(
                "DELETE FROM acc_values WHERE p = ? AND stage = ? AND grp = ?",
                (self.name, stage, group),
            )
            db.execute(
                "DELETE FROM barrier WHERE p = ? AND stage = ? AND grp = ?",
                (self.name, stage, group),
            )
            self._stat(db, stage, fired=1, items_out=emitted)
        return outcome

    # -- reading ------------------------------------------------------------------------------

    def backlog(self, subs: Sequence[str]) -> int:
        if not subs:
            return 0
        marks = ",".join("?" for _ in subs)
        row = self.db.execute(
            f"SELECT COALESCE(SUM(n), 0) FROM packs WHERE p = ? AND sub IN ({marks})",
            (self.name, *subs),
        ).fetchone()
        return int(row[0])

    def counts(self, stages: Sequence[str], subs: Mapping[str, Sequence[str]]) -> list[StageCounts]:
        rows = {
            r[0]: r[1:]
            for r in self.db.execute(
                "SELECT stage, items_in, items_out, retries, dead, fired FROM stats WHERE p = ?",
                (self.name,),
            )
        }
        pending: dict[str, tuple[int, int]] = {}
        for sub, total, leased in self.db.execute(
            "SELECT sub, SUM(n), SUM(CASE WHEN token IS NULL THEN 0 ELSE n END) FROM packs "
            "WHERE p = ? GROUP BY sub",
            (self.name,),
        ):
            stage = _stage_of(sub)
            p, le = pending.get(stage, (0, 0))
            pending[stage] = (p + total - leased, le + leased)
        result = []
        for stage in stages:
            items_in, items_out, retries, dead, fired = rows.get(stage, (0, 0, 0, 0, 0))
            waiting, leased = pending.get(stage, (0, 0))
            result.append(
                StageCounts(stage, items_in, items_out, retries, dead, fired, waiting, leased)
            )
        return result

    def groups(self) -> dict[str, GroupState]:
        return {
            name: GroupState(created=c, done=d, failed=f, sealed=bool(s))
            for name, c, d, f, s in self.db.execute(
                "SELECT name, created, done, failed, sealed FROM groups WHERE p = ? ORDER BY name",
                (self.name,),
            )
        }

    def dead(self, stage: str | None = None, *, limit: int = 100) -> list[DeadRecord]:
        query = "SELECT stage, sub, id, grp, body, error, died_at FROM dead WHERE p = ?"
        args: list[Any] = [self.name]
        if stage is not None:
            query += " AND stage = ?"
            args.append(stage)
        query += " ORDER BY died_at, id LIMIT ?"
        args.append(limit)
        return [
            DeadRecord(st, sub, id_, grp, json.loads(body), error, died)
            for st, sub, id_, grp, body, error, died in self.db.execute(query, args)
        ]

    def redrive(self, stage: str | None = None, ids: Sequence[str] | None = None) -> int:
        with self._tx() as db:
            query = "SELECT sub, id, grp, body FROM dead WHERE p = ?"
            args: list[Any] = [self.name]
            if stage is not None:
                query += " AND stage = ?"
                args.append(stage)
            rows = db.execute(query, args).fetchall()
            wanted = set(ids) if ids is not None else None
            moved = 0
            for sub, id_, grp, body in rows:
                if wanted is not None and id_ not in wanted:
                    continue
                db.execute(
                    "DELETE FROM dead WHERE p = ? AND sub = ? AND id = ?", (self.name, sub, id_)
                )
                db.execute(
                    "INSERT INTO packs (p, sub, grp, body, n) VALUES (?, ?, ?, ?, 1)",
                    (self.name, sub, grp, f"[{body}]"),
                )
                self._group_delta(db, grp, failed=-1)
                moved += 1
        return moved

    def outputs(self, topic: str) -> list[Any]:
        return [
            value
            for (body,) in self.db.execute(
                "SELECT body FROM out_packs WHERE p = ? AND topic = ? ORDER BY seq",
                (self.name, topic),
            )
            for value in json.loads(body)
        ]

    def heartbeat(self, worker: str, pid: int, *, now: float) -> None:
        with self._tx() as db:
            db.execute(
                "INSERT OR REPLACE INTO workers (p, name, pid, beat) VALUES (?, ?, ?, ?)",
                (self.name, worker, pid, now),
            )

    def workers(self) -> dict[str, tuple[int, float]]:
        return {
            name: (pid, beat)
            for name, pid, beat in self.db.execute(
                "SELECT name, pid, beat FROM workers WHERE p = ?", (self.name,)
            )
        }

    def reset(self) -> None:
        with self._tx() as db:
            for table in (
                "packs", "dead", "groups", "fired", "acc_values", "barrier", "versions", "stats",
                "out_packs", "meta", "workers",
            ):  # fmt: skip
                db.execute(f"DELETE FROM {table} WHERE p = ?", (self.name,))

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self.db.close()
