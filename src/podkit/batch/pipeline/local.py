"""The in-process runner: every stage in one process, topics as in-memory queues.

For tests and jobs that fit one process. It is the same pipeline as the worker runner (the
same stage logic, the same barrier), without a store: each stage that reads a topic has its
own queue of it (as a consumer group has its own position in a stream), the runner always
works on the stage furthest downstream that has items (so at most one chunk's fan-out waits
in memory), the items of a batch that raise are retried together, after the stage's
backoff, up to its attempts and then dead-lettered, and a group's barrier fires when
:func:`~podkit.batch.pipeline.barrier.decide` says so, once per barrier stage.

Outputs of a fired barrier form a new group, ``GROUP/STAGE``, sealed at once, so a barrier
further down waits for them.
"""

from __future__ import annotations

import json
import random
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from podkit.batch.pipeline.barrier import GroupState, Outcome, decide
from podkit.batch.pipeline.model import MAX_INPUT_FILES, InputSpec, PipelineSpec
from podkit.batch.pipeline.stages import (
    StageLogic,
    build_stages,
    item_path,
    key_text,
    path_getter,
)
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


def _line_formatter(fields: list[str] | None) -> Callable[[Any], str]:
    """:func:`format_output` for one output's fields, its paths looked up once."""
    if not fields:
        return _text
    getters = [path_getter(f) for f in fields]
    if len(getters) == 2:
        first, second = getters
        return lambda value: f"{_text(first(value))} {_text(second(value))}"
    return lambda value: " ".join(_text(get(value)) for get in getters)


def _text(value: Any) -> str:
    kind = type(value)
    if kind is str:
        return value  # type: ignore[no-any-return]
    if kind is int:
        return str(value)  # JSON's form of an int (a bool is not an int here)
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
        line = _line_formatter(output.fields)
        with target.open("w", encoding="utf-8") as fh:
            fh.writelines(f"{line(value)}\n" for value in outputs.get(topic, []))
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


class LocalRunner:
    """Run a pipeline in this process.

    Args:
        spec: the validated pipeline.
        on_progress: called with the per-stage counts every ``interval`` seconds and at the end.
        interval: seconds between progress calls.
        clock: a monotonic clock for the progress interval.
        sleep: how to wait between attempts at a failed item (tests pass a fake).
        random: uniform numbers in ``[0, 1)`` for the backoff's jitter.
    """

    def __init__(
        self,
        spec: PipelineSpec,
        *,
        on_progress: Callable[[list[StageStats]], None] | None = None,
        interval: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
        random: Callable[[], float] = random.random,
    ) -> None:
        self.spec = spec
        self.sleep = sleep
        self.random = random
        self.logic = build_stages(spec)
        self.order = stage_order(spec)
        self.on_progress = on_progress
        self.interval = interval
        self.clock = clock
        # Each queue holds batches of one group: (group, values), never mutated once queued.
        self.inbox: dict[str, deque[tuple[str, list[Any]]]] = {
            name: deque() for name in spec.stages
        }
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

    def _emit(self, topic: str, group: str, values: list[Any]) -> int:
        """Queue a batch of one group on a topic; the children it adds to the group."""
        if not values:
            return 0
        children = 0
        for name in self.consumers.get(topic, ()):
            self.inbox[name].append((group, values))
            children += len(values)
        collected = self.collected.get(topic)
        if collected is not None:
            collected.extend(values)
        return children

    def _feed_inputs(self) -> None:
        for name, input_spec in self.spec.inputs.items():
            group = input_spec.group
            values = list(list_input(name, input_spec, source=self.spec.source))
            children = 0
            for start in range(0, len(values), LOCAL_CHUNK):
                children += self._emit(name, group, values[start : start + LOCAL_CHUNK])
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
            stats.pending = sum(len(values) for _, values in self.inbox[name])
        return [self.stats[name] for name in self.order]

    def _take(self, name: str) -> list[tuple[str, list[Any]]]:
        """Batches of the stage's queue, LOCAL_CHUNK items or a little more; a batch larger
        than that is cut and its rest stays first in the queue."""
        inbox = self.inbox[name]
        taken: list[tuple[str, list[Any]]] = []
        count = 0
        while inbox and count < LOCAL_CHUNK:
            group, values = inbox.popleft()
            if len(values) > LOCAL_CHUNK:
                # Cut once into chunks (cutting the rest again each time is quadratic).
                cuts = range(LOCAL_CHUNK, len(values), LOCAL_CHUNK)
                inbox.extendleft((group, values[i : i + LOCAL_CHUNK]) for i in reversed(cuts))
                values = values[:LOCAL_CHUNK]
            taken.append((group, values))
            count += len(values)
        return taken

    def _process(self, name: str) -> set[str]:
        logic = self.logic[name]
        stats = self.stats[name]
        batches = self._take(name)
        if logic.barrier:
            return self._absorb_batches(logic, batches)
        consumers = [
            ([self.inbox[c] for c in self.consumers.get(topic, ())], self.collected.get(topic))
            for topic in logic.outputs
        ]
        index = {topic: i for i, topic in enumerate(logic.outputs)}
        touched: set[str] = set()
        for group, values in batches:
            stats.items_in += len(values)
            failing: list[tuple[Any, Exception]] = []

            def defer(
                value: Any, exc: Exception, failing: list[tuple[Any, Exception]] = failing
            ) -> list[tuple[str, Any]]:
                failing.append((value, exc))
                return []  # retried after the batch, in rounds

            outs, failed = logic.run_batch(values, defer)
            if failing:
                extra: list[tuple[str, Any]] = []

                def attempt(
                    value: Any, logic: StageLogic = logic, sink: list[tuple[str, Any]] = extra
                ) -> None:
                    sink.extend(logic.apply(value))

                failed += self._retry_rounds(logic, stats, group, failing, attempt)
                outs = [list(out) for out in outs]
                for topic, value in extra:
                    outs[index[topic]].append(value)
            children = produced = 0
            # Topics may share one list (each item to all of them): queued lists are never
            # mutated, a cut makes new ones.
            for out, (queues, collected) in zip(outs, consumers, strict=True):
                if not out:
                    continue
                produced += len(out)
                for queue in queues:
                    queue.append((group, out))
                    children += len(out)
                if collected is not None:
                    collected.extend(out)
            stats.items_out += produced
            self.groups[group] = self.groups[group].finish_many(
                done=len(values) - failed, failed=failed, children=children
            )
            touched.add(group)
        return touched

    def _wait(self, logic: StageLogic, retry: int) -> None:
        delay = logic.retry.delay(retry, self.random())
        if delay > 0:
            self.sleep(delay)

    def _retry_rounds(
        self,
        logic: StageLogic,
        stats: StageStats,
        group: str,
        failing: list[tuple[Any, Exception]],
        attempt: Callable[[Any], None],
    ) -> int:
        """Try the failed items of a batch again together with ``attempt``, waiting the
        stage's backoff before each round; dead-letter what still fails and return how many."""
        for retry in range(1, logic.max_attempts):
            if not failing:
                break
            self._wait(logic, retry)
            stats.retries += len(failing)
            still: list[tuple[Any, Exception]] = []
            for value, _ in failing:
                try:
                    attempt(value)
                except Exception as exc:  # the item's failure, never the runner's
                    still.append((value, exc))
            failing = still
        for value, error in failing:
            self._bury(logic.name, stats, group, value, error, logic.max_attempts)
        return len(failing)

    def _bury(
        self, name: str, stats: StageStats, group: str, value: Any, exc: Exception, attempts: int
    ) -> None:
        error = f"{type(exc).__name__}: {exc}"[:MAX_ERROR_CHARS]
        self.dead.append(DeadLetter(name, group, value, error, attempts))
        stats.dead += 1

    def _absorb_batches(self, logic: StageLogic, batches: list[tuple[str, list[Any]]]) -> set[str]:
        name = logic.name
        stats = self.stats[name]
        get_key, handler = logic.fast_fold()
        initial = logic.initial
        touched: set[str] = set()
        for group, values in batches:
            stats.items_in += len(values)
            touched.add(group)
            if (name, group) in self.outcomes:
                # A straggler after the barrier fired (quorum) is counted, not folded.
                self.groups[group] = self.groups[group].finish_many(
                    done=len(values), failed=0, children=0
                )
                continue
            accs = self.accumulators.setdefault((name, group), {})
            counts = self.barrier_counts.setdefault((name, group), {"items": 0})
            failing: list[tuple[Any, Exception]] = []
            if get_key is None and handler is None:
                accs[""] = None
            elif get_key is None:
                assert handler is not None
                acc = accs.get("", initial)
                for value in values:
                    try:
                        acc = handler(acc, value)
                    except Exception as exc:  # the item's failure, as in _process
                        failing.append((value, exc))
                accs[""] = acc
            else:
                lookup = accs.get
                for value in values:
                    try:
                        key = get_key(value)
                        if type(key) is not str:
                            key = key_text(key)
                        accs[key] = handler(lookup(key, initial), value) if handler else None
                    except Exception as exc:  # the item's failure, as in _process
                        failing.append((value, exc))
            failed = 0
            if failing:

                def fold(
                    value: Any, logic: StageLogic = logic, accs: dict[str, Any] = accs
                ) -> None:
                    key = logic.accumulator_key(value)
                    accs[key] = logic.combine(accs.get(key, logic.initial), value)

                failed = self._retry_rounds(logic, stats, group, failing, fold)
            counts["items"] += len(values) - failed
            self.groups[group] = self.groups[group].finish_many(
                done=len(values) - failed, failed=failed, children=0
            )
        return touched

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
                values = logic.results(group, outcome.value, accs.items(), counts)
                for topic in logic.outputs:
                    for start in range(0, len(values), LOCAL_CHUNK):
                        children += self._emit(topic, derived, values[start : start + LOCAL_CHUNK])
                    emitted += len(values)
                self.stats[name].items_out += emitted
                self.groups[derived] = GroupState(created=children, sealed=True)
                pending.add(derived)
