"""Where worker processes keep a pipeline: topics, groups, accumulators, dead letters.

A store applies a worker's step as one atomic commit: the input messages are acknowledged
only if the worker still holds them, their outputs are appended to every subscription of
the output topics, the groups' counts move (done, failed, children added) and a barrier
stage's accumulators are written. So a step happens once or not at all: a worker killed
before its commit loses nothing (the messages are delivered again when their lease runs
out), and one killed after it repeats nothing. Handlers may run twice; their effects on the
store do not.

Each stage that reads a topic has its own *subscription* of it (``TOPIC>STAGE``), as each
consumer group of a Redis stream has its own position, so two stages reading one topic both
see every item.

Items travel in *packs*: a commit writes the outputs of one group for one subscription as
rows of up to ``pack`` items (``topics.batch``) and ``topics.pack_bytes``, each a JSON array,
so a row, its lease, its acknowledgement and its JSON cost once per pack, not once per item.
A lease takes whole packs (a pack is one unit of delivery: its items are delivered, retried
and dead-lettered after ``max_deliveries`` together); a worker that leased more items than
it wants hands the rest back in its commit (:attr:`Step.requeue`), which writes them as a new
pack. Items keep their own identity (``PACK:INDEX``) for dead letters and redrive.

Two stores pass one contract (``tests/pipeline/test_store.py``): SQLite (one machine, no
server) and Redis (streams with consumer groups, for many machines).
"""

from __future__ import annotations

import abc
import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from podkit.batch.pipeline.barrier import GroupState, Outcome
from podkit.batch.pipeline.model import DEFAULT_PACK_BYTES, PipelineSpec
from podkit.errors import ConfigError

DEFAULT_MAX_DELIVERIES = 10  # leases of one message without a commit (its workers died) before
# it is dead-lettered: a message that kills its worker must not kill every worker after it
MAX_ERROR_CHARS = 2000  # a dead letter's reason is cut to this


def sub_name(topic: str, stage: str) -> str:
    """The subscription of ``stage`` to ``topic``."""
    return f"{topic}>{stage}"


def encode(value: Any) -> str:
    """A value as stored: compact JSON."""
    return json.dumps(value, separators=(",", ":"), allow_nan=False)


def encode_acc(value: Any) -> str:
    """An accumulator as stored: :func:`encode`, with integers (a count, a sum) written
    directly, since a reduce writes one per key of every batch."""
    return str(value) if type(value) is int else encode(value)


def decode_acc(text: str) -> Any:
    """An accumulator written by :func:`encode_acc`."""
    if text.isascii() and (text.isdigit() or (text[:1] == "-" and text[1:].isdigit())):
        return int(text)
    return json.loads(text)


def pack(
    values: Sequence[Any], limit: int, max_bytes: int = DEFAULT_PACK_BYTES
) -> list[tuple[str, int]]:
    """Values as packs: ``(JSON array, count)`` of up to ``limit`` values and, unless one
    value alone is larger, ``max_bytes``. One ``json.dumps`` per pack in the usual case
    (small values); large ones are encoded one by one to be cut by size."""
    packs: list[tuple[str, int]] = []
    for start in range(0, len(values), limit):
        chunk = values[start : start + limit]
        body = encode(chunk)
        if len(body) <= max_bytes or len(chunk) == 1:
            packs.append((body, len(chunk)))
            continue
        parts: list[str] = []
        size = 0
        for value in chunk:
            text = encode(value)
            if parts and size + len(text) > max_bytes:
                packs.append((f"[{','.join(parts)}]", len(parts)))
                parts, size = [], 0
            parts.append(text)
            size += len(text) + 1
        packs.append((f"[{','.join(parts)}]", len(parts)))
    return packs


def step_outputs(step: Step) -> dict[tuple[str, str], list[Any]]:
    """The outputs of a step's finished messages by ``(topic, group)``, in order."""
    by_target: dict[tuple[str, str], list[Any]] = {}
    for m, outputs in step.done:
        group = m.group
        for topic, value in outputs:
            target = by_target.get((topic, group))
            if target is None:
                target = by_target[(topic, group)] = []
            target.append(value)
    return by_target


@dataclass(frozen=True, slots=True)
class Topology:
    """Which subscriptions each topic feeds and which topics are the pipeline's outputs."""

    subs: dict[str, list[str]]
    outputs: frozenset[str]
    pack: int = 100  # items of one pack (the pipeline's ``topics.batch``)
    pack_bytes: int = DEFAULT_PACK_BYTES  # JSON of one pack (``topics.pack_bytes``)

    @classmethod
    def of(cls, spec: PipelineSpec) -> Topology:
        return cls(
            pack=spec.topics.batch,
            pack_bytes=spec.topics.pack_bytes,
            subs={
                topic: [sub_name(topic, stage) for stage in spec.consumers(topic)]
                for topic in spec.produced_topics()
            },
            outputs=frozenset(spec.outputs),
        )

    def children(self, topic: str) -> int:
        """How many children one item put on ``topic`` adds to its group."""
        return len(self.subs.get(topic, ()))


# Not frozen: a frozen dataclass's __init__ costs about five times as much, and a lease makes
# one Message per item. Treat it as read-only all the same.
@dataclass(slots=True)
class Message:
    """A leased item of one subscription (``id`` is ``PACK:INDEX``, ``pack`` its pack);
    read-only."""

    sub: str
    id: str
    group: str
    value: Any
    delivery: int
    token: str
    pack: str = ""


@dataclass(slots=True)
class Step:
    """What a worker did with the messages of one lease, to commit at once.

    Attributes:
        done: each finished message with its outputs ``(topic, value)``.
        dead: each message given up on, with the reason.
        retries: failed attempts that were retried in the worker.
        accumulators: a barrier stage's new accumulators by ``(group, key)``.
        absorbed: a barrier stage's new item counts by group.
        requeue: leased messages the worker did not take on (a pack larger than it wanted):
            the commit puts them back as a new pack.
    """

    done: list[tuple[Message, list[tuple[str, Any]]]] = field(default_factory=list)
    dead: list[tuple[Message, str]] = field(default_factory=list)
    retries: int = 0
    accumulators: dict[tuple[str, str], Any] = field(default_factory=dict)
    absorbed: dict[str, int] = field(default_factory=dict)
    requeue: list[Message] = field(default_factory=list)

    def messages(self) -> list[Message]:
        """Every message the step covers (done, dead, handed back)."""
        return [m for m, _ in self.done] + [m for m, _ in self.dead] + self.requeue


@dataclass(frozen=True, slots=True)
class DeadRecord:
    """A dead letter."""

    stage: str
    sub: str
    id: str
    group: str
    value: Any
    error: str
    died_at: float


@dataclass(frozen=True, slots=True)
class StageCounts:
    """Counts of one stage, as the store knows them."""

    stage: str
    items_in: int = 0
    items_out: int = 0
    retries: int = 0
    dead: int = 0
    fired: int = 0
    pending: int = 0
    leased: int = 0


class Conflict(Exception):
    """A barrier's accumulators changed between read and commit; read and combine again."""


Results = Callable[[str, Outcome, list[tuple[str, Any]], dict[str, int]], list[Any]]


class PipelineStore(abc.ABC):
    """The state of one pipeline (its name scopes every key or table)."""

    @abc.abstractmethod
    def feed(self, items: Sequence[tuple[str, str, Any]], groups: Sequence[str]) -> bool:
        """Put the inputs' items ``(topic, group, value)`` and seal ``groups``, at once.
        False (and nothing done) when the pipeline was fed already."""

    @abc.abstractmethod
    def put(self, items: Sequence[tuple[str, str, Any]]) -> int:
        """Put items ``(topic, group, value)`` on input topics while the pipeline runs, at
        once; their groups count them as children and stay open (a stream input).

        Returns:
            The children created (one per stage that reads each item's topic).
        """

    @abc.abstractmethod
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
        """Lease up to ``n`` messages of the subscriptions (expired leases first taken back;
        a message leased ``max_deliveries`` times is dead-lettered instead)."""

    @abc.abstractmethod
    def commit(self, stage: str, step: Step, *, now: float, version: int | None = None) -> bool:
        """Apply a step atomically; False (nothing done) when a message's lease was lost.

        Raises:
            Conflict: ``version`` is given and the stage's accumulators changed since.
        """

    @abc.abstractmethod
    def accumulators(
        self, stage: str, pairs: Sequence[tuple[str, str]]
    ) -> tuple[dict[tuple[str, str], Any], int]:
        """The stored accumulators of ``(group, key)`` pairs and the stage's version."""

    @abc.abstractmethod
    def open_barriers(self, stage: str) -> list[str]:
        """Groups that reached the barrier ``stage`` and did not fire there."""

    @abc.abstractmethod
    def group(self, name: str) -> GroupState | None:
        """A group's counts."""

    @abc.abstractmethod
    def fire(
        self,
        stage: str,
        group: str,
        *,
        decide: Callable[[GroupState], Outcome | None],
        results: Results,
        outputs: Sequence[str],
    ) -> Outcome | None:
        """Fire the barrier of ``stage`` for ``group`` if ``decide`` says so and it has not
        fired: the results go to ``outputs`` as a new sealed group ``GROUP/STAGE``, at once
        with the fired mark. Returns the outcome, or None."""

    @abc.abstractmethod
    def backlog(self, subs: Sequence[str]) -> int:
        """Messages waiting or leased in the subscriptions."""

    @abc.abstractmethod
    def counts(self, stages: Sequence[str], subs: Mapping[str, Sequence[str]]) -> list[StageCounts]:
        """Per-stage counts (``subs``: each stage's subscriptions)."""

    @abc.abstractmethod
    def groups(self) -> dict[str, GroupState]:
        """Every group's counts."""

    @abc.abstractmethod
    def dead(self, stage: str | None = None, *, limit: int = 100) -> list[DeadRecord]:
        """Dead letters, oldest first (of one stage, or all)."""

    @abc.abstractmethod
    def redrive(self, stage: str | None = None, ids: Sequence[str] | None = None) -> int:
        """Put dead letters back on their subscriptions (their groups count them as
        outstanding again); returns how many."""

    @abc.abstractmethod
    def outputs(self, topic: str) -> list[Any]:
        """The items that reached an output topic, in order."""

    @abc.abstractmethod
    def heartbeat(self, worker: str, pid: int, *, now: float) -> None:
        """Record that a worker process is alive."""

    @abc.abstractmethod
    def workers(self) -> dict[str, tuple[int, float]]:
        """Worker name -> (pid, last heartbeat)."""

    @abc.abstractmethod
    def reset(self) -> None:
        """Delete everything of this pipeline."""

    @abc.abstractmethod
    def close(self) -> None:
        """Release connections (idempotent)."""


def open_store(
    url: str, name: str, topology: Topology, *, read_only: bool = False
) -> PipelineStore:
    """The store at ``url`` for the pipeline ``name``.

    Raises:
        ConfigError: the URL names no store that worker processes can share.
    """
    if url.startswith("sqlite:///"):
        from podkit.batch.pipeline.sqlite_store import SqlitePipelineStore

        return SqlitePipelineStore(url[len("sqlite:///") :], name, topology, read_only=read_only)
    if url.startswith(("redis://", "rediss://")):
        from podkit.batch.pipeline.redis_store import RedisPipelineStore

        return RedisPipelineStore(url, name, topology)
    raise ConfigError(
        "worker processes need a shared store: sqlite:///path.db or redis://host:port/db, "
        f"not {url!r}",
        path="topics.backend",
    )
