"""The in-process runner: every stage in one process, topics as in-memory queues.

For tests and jobs that fit one process. It is the same pipeline as the worker runner (the
same stage logic, the same barrier), without a store: each stage that reads a topic has its
own queue of it (as a consumer group has its own position in a stream), the runner always
works on the stage furthest downstream that has items (so at most one chunk's fan-out waits
in memory), an item that raises is retried at once up to the stage's ``max_attempts`` and
then dead-lettered, and a group's barrier fires when :func:`~podkit.batch.pipeline.barrier.
decide` says so, once per barrier stage.

Outputs of a fired barrier form a new group, ``GROUP/STAGE``, sealed at once, so a barrier
further down waits for them.
"""

from __future__ import annotations

import json
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from podkit.batch.pipeline.barrier import GroupState, Outcome, decide
from podkit.batch.pipeline.model import MAX_INPUT_FILES, InputSpec, PipelineSpec
from podkit.batch.pipeline.stages import StageLogic, build_stages, item_path, key_text
from podkit.errors import ConfigError

LOCAL_CHUNK = 1000  # items one stage takes at a time; bounds what waits downstream
MAX_ERROR_CHARS = 2000  # a dead letter's reason is cut to this


@dataclass(slots=True)
class StageStats:
    """Counts of one stage since the run started."""

    name: str
    kind: str
    items_in: int = 0
    items_out: int = 0
    retries: int = 0
    dead: int = 0
    pending: int = 0
    fired: int = 0

    def as_dict(self) -> dict[str, Any]:
        return {
            "stage": self.name,
            "kind": self.kind,
            "in": self.items_in,
            "out": self.items_out,
            "pending": self.pending,
            "retries": self.retries,
            "dead": self.dead,
            "fired": self.fired,
        }


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """An item a stage gave up on."""

    stage: str
    group: str
    value: Any
    error: str
    attempts: int


@dataclass(slots=True)
class RunResult:
    """What a run did: per-stage counts, dead letters, groups and what the outputs got."""

    stages: dict[str, StageStats]
    dead: list[DeadLetter]
    groups: dict[str, GroupState]
    outcomes: dict[tuple[str, str], Outcome]
    outputs: dict[str, list[Any]] = field(default_factory=dict)
    seconds: float = 0.0


def list_input(name: str, spec: InputSpec, *, source: str) -> Iterator[Any]:
    """The items of an input: its literal values, or ``{"path": ...}`` per file of ``dir``
    (a stream input has none: ``podkit pipeline put`` adds them).

    Raises:
        ConfigError: the directory does not exist or holds too many files.
    """
    if spec.stream:
        return
    if spec.items is not None:
        yield from spec.items
        return
    assert spec.dir is not None
    root = Path(spec.dir)
    if not root.is_dir():
        raise ConfigError(
            f"{spec.dir!r} is not a directory", source=source, path=f"inputs.{name}.dir"
        )
    count = 0
    for path in sorted(root.glob(spec.glob)):
        if path.is_file():
            count += 1
            if count > MAX_INPUT_FILES:
                raise ConfigError(
                    f"more than {MAX_INPUT_FILES} files match", source=source, path=f"inputs.{name}"
                )
            yield {"path": str(path)}


def format_output(value: Any, fields: list[str] | None) -> str:
    """One line of an output file: the fields joined by a space, or the value (text or JSON)."""
    if fields:
        return " ".join(_text(item_path(value, f)) for f in fields)
    return _text(value)


def _text(value: Any) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, bytes):
        return value.decode(errors="replace")
    return json.dumps(value, separators=(",", ":"))


def write_outputs(spec: PipelineSpec, outputs: dict[str, list[Any]]) -> None:
    """Write each output topic's items to its file.

    A regular file is replaced whole, never half-written (written beside it, then renamed);
    anything else that exists already (``/dev/null``, a FIFO, a terminal) is written to as it
    is: renaming over it would replace the device with a file.
    """
    for topic, output in spec.outputs.items():
        path = Path(output.file)
        if path.parent and not path.parent.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
        special = path.exists() and not path.is_file()
        target = path if special else path.with_name(f".{path.name}.tmp")
        with target.open("w", encoding="utf-8") as fh:
            for value in outputs.get(topic, []):
                fh.write(format_output(value, output.fields))
                fh.write("\n")
        if not special:
            target.replace(path)


def stage_order(spec: PipelineSpec) -> list[str]:
    """Stages from upstream to downstream (a stage after every stage that feeds it)."""
    writers: dict[str, set[str]] = {}
    for name in spec.stages:
        for topic in spec.stage_outputs(name):
            writers.setdefault(topic, set()).add(name)
    order: list[str] = []
    placed: set[str] = set()
    remaining = list(spec.stages)
    while remaining:
        for name in remaining:
            feeders = {w for t in spec.stage_inputs(name) for w in writers.get(t, set())}
            if feeders <= placed:
                order.append(name)
                placed.add(name)
                remaining.remove(name)
                break
        else:  # a cycle: the model refuses them, keep file order for the rest
            order.extend(remaining)
            break
    return order


def _value_appender(target: list[Any]) -> Callable[[Any], None]:
    """An append for queue entries ``(group, value)`` that keeps only the value."""

    def append(item: tuple[str, Any]) -> None:
        target.append(item[1])

    return append


class LocalRunner:
    """Run a pipeline in this process.

    Args:
        spec: the validated pipeline.
        on_progress: called with the per-stage counts every ``interval`` seconds and at the end.
        interval: seconds between progress calls.
        clock: a monotonic clock for the progress interval.
    """

    def __init__(
        self,
        spec: PipelineSpec,
        *,
        on_progress: Callable[[list[StageStats]], None] | None = None,
        interval: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.spec = spec
        self.logic = build_stages(spec)
        self.order = stage_order(spec)
        self.on_progress = on_progress
        self.interval = interval
        self.clock = clock
        self.inbox: dict[str, deque[tuple[str, Any]]] = {name: deque() for name in spec.stages}
        self.consumers: dict[str, list[str]] = {
            topic: spec.consumers(topic) for topic in spec.produced_topics()
        }
        self.collected: dict[str, list[Any]] = {topic: [] for topic in spec.outputs}
        self.groups: dict[str, GroupState] = {}
        self.stats = {name: StageStats(name, self.logic[name].kind) for name in spec.stages}
        self.dead: list[DeadLetter] = []
        self.accumulators: dict[tuple[str, str], dict[str, Any]] = {}
        self.barrier_counts: dict[tuple[str, str], dict[str, int]] = {}
        self.outcomes: dict[tuple[str, str], Outcome] = {}
        self._route_cache: dict[str, dict[str, tuple[list[Callable[[Any], None]], int]]] = {}

    def _emit(self, topic: str, group: str, value: Any) -> int:
        children = 0
        for name in self.consumers.get(topic, ()):
            self.inbox[name].append((group, value))
            children += 1
        collected = self.collected.get(topic)
        if collected is not None:
            collected.append(value)
        return children

    def _feed_inputs(self) -> None:
        for name, input_spec in self.spec.inputs.items():
            group = input_spec.group
            children = 0
            for value in list_input(name, input_spec, source=self.spec.source):
                children += self._emit(name, group, value)
            state = self.groups.get(group, GroupState())
            self.groups[group] = state.add(children)
        for input_spec in self.spec.inputs.values():
            self.groups[input_spec.group] = self.groups[input_spec.group].seal()

    def run(self) -> RunResult:
        """Run until every topic is empty; write the outputs.

        Raises:
            ConfigError: an input directory is missing.
            UsageError: a handler cannot be imported (raised when the runner is built).
        """
        started = self.clock()
        next_progress = started + self.interval
        self._feed_inputs()
        self._fire_ready(set(self.groups))
        order = list(reversed(self.order))
        while True:
            for name in order:
                if self.inbox[name]:
                    touched = self._process(name)
                    self._fire_ready(touched)
                    break
            else:
                break
            if self.on_progress is not None and self.clock() >= next_progress:
                next_progress = self.clock() + self.interval
                self.on_progress(self.snapshot())
        write_outputs(self.spec, self.collected)
        if self.on_progress is not None:
            self.on_progress(self.snapshot())
        return RunResult(
            stages=self.stats,
            dead=self.dead,
            groups=self.groups,
            outcomes=self.outcomes,
            outputs=self.collected,
            seconds=self.clock() - started,
        )

    def snapshot(self) -> list[StageStats]:
        """Per-stage counts now, in stage order."""
        for name, stats in self.stats.items():
            stats.pending = len(self.inbox[name])
        return [self.stats[name] for name in self.order]

    def _routes(self, logic: StageLogic) -> dict[str, tuple[list[Callable[[Any], None]], int]]:
        """For each output topic: the append functions of its queues and how many children
        one item on it adds to its group."""
        routes: dict[str, tuple[list[Callable[[Any], None]], int]] = {}
        for topic in logic.outputs:
            appends: list[Callable[[Any], None]] = [
                self.inbox[c].append for c in self.consumers.get(topic, ())
            ]
            children = len(appends)
            collected = self.collected.get(topic)
            if collected is not None:
                appends.append(_value_appender(collected))
            routes[topic] = (appends, children)
        return routes

    def _process(self, name: str) -> set[str]:
        logic = self.logic[name]
        inbox = self.inbox[name]
        stats = self.stats[name]
        chunk = [inbox.popleft() for _ in range(min(LOCAL_CHUNK, len(inbox)))]
        stats.items_in += len(chunk)
        if logic.barrier:
            return self._absorb_chunk(logic, chunk)
        routes = self._route_cache.get(name)
        if routes is None:
            routes = self._route_cache[name] = self._routes(logic)
        apply = logic.apply
        deltas: dict[str, list[int]] = {}
        out = 0
        current_group: str | None = None
        delta = [0, 0, 0]
        for group, value in chunk:
            if group != current_group:
                delta = deltas.setdefault(group, [0, 0, 0])
                current_group = group
            try:
                outputs = apply(value)
            except Exception as exc:  # a handler's failure is the item's, never the runner's
                retried = self._retry(logic, stats, group, value, exc)
                if retried is None:
                    delta[1] += 1
                    continue
                outputs = retried
            children = 0
            for topic, produced in outputs:
                appends, n = routes[topic]
                item = (group, produced)
                for append in appends:
                    append(item)
                children += n
            out += len(outputs)
            delta[0] += 1
            delta[2] += children
        stats.items_out += out
        for group, (done, failed, children) in deltas.items():
            self.groups[group] = self.groups[group].finish_many(
                done=done, failed=failed, children=children
            )
        return set(deltas)

    def _retry(
        self, logic: StageLogic, stats: StageStats, group: str, value: Any, exc: Exception
    ) -> list[tuple[str, Any]] | None:
        """Run a failed item again up to the stage's attempts; None when it is dead."""
        attempt = 1
        while attempt < logic.max_attempts:
            attempt += 1
            stats.retries += 1
            try:
                return logic.apply(value)
            except Exception as again:  # the item's failure, as above
                exc = again
        self._bury(logic.name, stats, group, value, exc, attempt)
        return None

    def _bury(
        self, name: str, stats: StageStats, group: str, value: Any, exc: Exception, attempts: int
    ) -> None:
        error = f"{type(exc).__name__}: {exc}"[:MAX_ERROR_CHARS]
        self.dead.append(DeadLetter(name, group, value, error, attempts))
        stats.dead += 1

    def _absorb_chunk(self, logic: StageLogic, chunk: list[tuple[str, Any]]) -> set[str]:
        name = logic.name
        stats = self.stats[name]
        get_key, handler = logic.fast_fold()
        initial = logic.initial
        deltas: dict[str, list[int]] = {}
        current_group: str | None = None
        delta = [0, 0, 0]
        accs: dict[str, Any] = {}
        counts: dict[str, int] = {}
        late = False
        for group, value in chunk:
            if group != current_group:
                current_group = group
                delta = deltas.setdefault(group, [0, 0, 0])
                # A straggler after the barrier fired (quorum) is counted, not folded.
                late = (name, group) in self.outcomes
                if not late:
                    accs = self.accumulators.setdefault((name, group), {})
                    counts = self.barrier_counts.setdefault((name, group), {"items": 0})
            if late:
                delta[0] += 1
                continue
            try:
                if get_key is None:
                    key = ""
                else:
                    key = get_key(value)
                    if type(key) is not str:
                        key = key_text(key)
                accs[key] = handler(accs.get(key, initial), value) if handler else None
            except Exception as exc:  # the item's failure, as in _process
                if not self._absorb_again(logic, stats, group, value, accs, exc):
                    delta[1] += 1
                    continue
            counts["items"] += 1
            delta[0] += 1
        for group, (done, failed, children) in deltas.items():
            self.groups[group] = self.groups[group].finish_many(
                done=done, failed=failed, children=children
            )
        return set(deltas)

    def _absorb_again(
        self,
        logic: StageLogic,
        stats: StageStats,
        group: str,
        value: Any,
        accs: dict[str, Any],
        exc: Exception,
    ) -> bool:
        """Fold a failed item again up to the stage's attempts; False when it is dead."""
        attempt = 1
        while attempt < logic.max_attempts:
            attempt += 1
            stats.retries += 1
            try:
                key = logic.accumulator_key(value)
                accs[key] = logic.combine(accs.get(key, logic.initial), value)
            except Exception as again:  # the item's failure
                exc = again
            else:
                return True
        self._bury(logic.name, stats, group, value, exc, attempt)
        return False

    def _fire_ready(self, groups: set[str]) -> None:
        pending = set(groups)
        while pending:
            group = pending.pop()
            state = self.groups.get(group)
            if state is None:
                continue
            for name in self.order:
                logic = self.logic[name]
                if not logic.barrier or (name, group) in self.outcomes:
                    continue
                if (name, group) not in self.barrier_counts:
                    continue  # no item of the group reached this barrier
                outcome = decide(state, logic.policy)
                if outcome is None:
                    continue
                self.outcomes[(name, group)] = outcome
                self.stats[name].fired += 1
                counts = {
                    **self.barrier_counts.pop((name, group)),
                    "done": state.done,
                    "failed": state.failed,
                }
                accs = self.accumulators.pop((name, group), {})
                derived = f"{group}/{name}"
                children = emitted = 0
                for value in logic.results(group, outcome.value, accs.items(), counts):
                    for topic in logic.outputs:
                        children += self._emit(topic, derived, value)
                        emitted += 1
                self.stats[name].items_out += emitted
                self.groups[derived] = GroupState(created=children, sealed=True)
                pending.add(derived)
