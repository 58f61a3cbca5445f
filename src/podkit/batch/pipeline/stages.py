"""What each stage kind does to one item: the logic every runner shares.

A stage turns one input value into a list of ``(topic, value)`` outputs (copier, filter,
splitter, sharder, merger, map), or folds it into a group's state (join, reduce). Handlers
are plain Python functions named ``module:function``, imported from the pipeline file's
directory first:

* filter: ``handler(value) -> bool``;
* splitter: ``handler(value)`` yields values, or :class:`Emit` to pick one of the stage's
  topics;
* map: ``handler(value) -> value`` (None: no output); a generator function yields any
  number of outputs. A ``command`` runs once per item with the item as JSON on stdin; each
  non-empty line it prints is one output (JSON when it parses, else the text);
* reduce: ``handler(accumulator, value) -> accumulator``, starting from ``initial``, one
  accumulator per group (the item's ``group`` field when the stage names one) and ``key``.

An exception (or a command's non-zero exit) fails the item: it is retried, then dead-lettered.
"""

from __future__ import annotations

import inspect
import json
import operator
import subprocess
import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from podkit.batch.pipeline.barrier import BarrierPolicy
from podkit.batch.pipeline.model import (
    FilterSpec,
    JoinSpec,
    MapSpec,
    PipelineSpec,
    ReduceSpec,
    SharderSpec,
    SplitterSpec,
)
from podkit.batch.queue.worker import load_handler
from podkit.errors import PodkitError
from podkit.hashing import jump_hash, key_hash

COMMAND_TIMEOUT = 300.0  # seconds one command of a map stage may run before it fails the item
MAX_COMMAND_OUTPUT = 16 * 1024 * 1024  # bytes of output one command may print for one item
SHARD_CACHE_SIZE = 65_536  # keys whose shard a sharder remembers (hashing is most of its work)


class ItemError(PodkitError):
    """An item cannot be processed by a stage (a missing field, a failed command)."""


@dataclass(frozen=True, slots=True)
class Emit:
    """A splitter's output for one named topic of its stage (instead of all of them)."""

    topic: str
    value: Any


def item_path(value: Any, path: str) -> Any:
    """The field at ``$.a.b`` of a value.

    Raises:
        ItemError: the value has no such field.
    """
    current = value
    for part in path[2:].split("."):
        if not isinstance(current, dict) or part not in current:
            raise ItemError(f"item has no field {path}")
        current = current[part]
    return current


def path_getter(path: str) -> Callable[[Any], Any]:
    """A fast function for ``item_path(value, path)`` (the hot path of sharders and reduces).

    The function raises :class:`ItemError` for a value without the field.
    """
    parts = path[2:].split(".")
    if len(parts) > 1:
        return lambda value: item_path(value, path)
    part = parts[0]

    def get(value: Any) -> Any:
        try:
            return value[part]
        except (KeyError, TypeError, IndexError):
            raise ItemError(f"item has no field {path}") from None

    return get


def raw_getter(path: str) -> Callable[[Any], Any]:
    """The fastest getter of ``$.field`` (``operator.itemgetter``), for hot loops that hand a
    failing item to :func:`path_getter`'s form for its error: a missing field raises
    ``KeyError`` or ``TypeError`` here, not :class:`ItemError`."""
    parts = path[2:].split(".")
    if len(parts) > 1:
        return path_getter(path)
    return operator.itemgetter(parts[0])


def key_text(key: Any) -> str:
    """A key as text: strings as they are, anything else as compact JSON."""
    if isinstance(key, str):
        return key
    return json.dumps(key, separators=(",", ":"), sort_keys=True)


Outputs = list[tuple[str, Any]]
Recover = Callable[[Any, Exception], Outputs | None]
"""Called with an item that raised: its outputs after retries, or None when it is dead."""


class StageLogic:
    """One stage's behaviour, handlers loaded.

    Args:
        spec: the pipeline.
        name: the stage.

    Raises:
        UsageError: a handler cannot be imported.
    """

    def __init__(self, spec: PipelineSpec, name: str) -> None:
        self.name = name
        self.stage = spec.stages[name]
        self.kind = self.stage.kind
        self.inputs = spec.stage_inputs(name)
        self.outputs = spec.stage_outputs(name)
        self.max_attempts = self.stage.attempts
        self.retry = self.stage.retry_policy
        self.barrier = self.kind in ("join", "reduce")
        self.policy = BarrierPolicy()
        self.concurrency = 1
        self._handler: Callable[..., Any] | None = None
        self._generator = False
        self._command: list[str] | None = None
        options = self.stage.options
        if isinstance(options, FilterSpec | SplitterSpec | ReduceSpec):
            self._handler = _load(options.handler, spec.base_dir)
        if isinstance(options, MapSpec):
            self.concurrency = options.concurrency
            if options.handler is not None:
                self._handler = _load(options.handler, spec.base_dir)
                self._generator = inspect.isgeneratorfunction(self._handler)
            else:
                self._command = list(options.command or [])
        if isinstance(options, JoinSpec | ReduceSpec):
            self.policy = BarrierPolicy.parse(
                allow_failures=options.allow_failures, quorum=options.quorum
            )
        self._shards = options.shards if isinstance(options, SharderSpec) else 0
        self._shard_key = path_getter(options.key if isinstance(options, SharderSpec) else "$.")
        self._shard_key_raw = raw_getter(options.key if isinstance(options, SharderSpec) else "$.")
        self._shard_cache: dict[str, int] = {}
        self.reduce_key = options.key if isinstance(options, ReduceSpec) else None
        self._reduce_key = path_getter(self.reduce_key or "$.")
        self.reduce_group = options.group if isinstance(options, ReduceSpec) else None
        self._reduce_group = path_getter(self.reduce_group or "$.")
        self.initial = options.initial if isinstance(options, ReduceSpec) else None
        self.apply: Callable[[Any], Outputs] = self._pick_apply()

    @property
    def runs_commands(self) -> bool:
        return self._command is not None

    def _pick_apply(self) -> Callable[[Any], Outputs]:
        kind = self.kind
        if kind in ("copier", "merger"):
            return self._copy
        if kind == "filter":
            return self._filter
        if kind == "splitter":
            return self._split
        if kind == "sharder":
            return self._shard
        if kind == "map":
            return self._run_command if self._command is not None else self._map
        return self._not_direct

    def _copy(self, value: Any) -> Outputs:
        return [(topic, value) for topic in self.outputs]

    def _filter(self, value: Any) -> Outputs:
        assert self._handler is not None
        return self._copy(value) if self._handler(value) else []

    def _split(self, value: Any) -> Outputs:
        assert self._handler is not None
        out: Outputs = []
        for produced in self._handler(value) or ():
            if isinstance(produced, Emit):
                if produced.topic not in self.outputs:
                    raise ItemError(
                        f"splitter {self.name} emitted to topic {produced.topic!r}, "
                        f"not one of its topics {self.outputs}"
                    )
                out.append((produced.topic, produced.value))
            else:
                out.extend((topic, produced) for topic in self.outputs)
        return out

    def shard_of(self, value: Any) -> int:
        """The shard number of a value (jump consistent hash of its key)."""
        key = self._shard_key(value)
        text = key if isinstance(key, str) else key_text(key)
        shard = self._shard_cache.get(text)
        if shard is None:
            if len(self._shard_cache) >= SHARD_CACHE_SIZE:
                self._shard_cache.clear()
            shard = self._shard_cache[text] = jump_hash(key_hash(text), self._shards)
        return shard

    def _shard(self, value: Any) -> Outputs:
        key = self._shard_key(value)
        if type(key) is str:
            shard = self._shard_cache.get(key)
            if shard is not None:
                return [(self.outputs[shard], value)]
        return [(self.outputs[self.shard_of(value)], value)]

    def _map(self, value: Any) -> Outputs:
        assert self._handler is not None
        result = self._handler(value)
        if self._generator:
            if len(self.outputs) == 1:
                topic = self.outputs[0]
                return [(topic, v) for v in result]
            return [(topic, v) for v in result for topic in self.outputs]
        if result is None:
            return []
        return [(topic, result) for topic in self.outputs]

    def _run_command(self, value: Any) -> Outputs:
        assert self._command is not None
        data = value if isinstance(value, bytes) else json.dumps(value).encode()
        try:
            done = subprocess.run(
                self._command,
                input=data,
                capture_output=True,
                timeout=COMMAND_TIMEOUT,
                check=False,
            )
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise ItemError(f"command {self._command[0]}: {exc}") from exc
        if done.returncode != 0:
            tail = done.stderr[-500:].decode(errors="replace").strip()
            raise ItemError(f"command exited with status {done.returncode}: {tail}")
        if len(done.stdout) > MAX_COMMAND_OUTPUT:
            raise ItemError(f"command printed more than {MAX_COMMAND_OUTPUT} bytes")
        out: Outputs = []
        for raw in done.stdout.decode(errors="replace").splitlines():
            line = raw.strip()
            if not line:
                continue
            try:
                produced: Any = json.loads(line)
            except ValueError:
                produced = line
            out.extend((topic, produced) for topic in self.outputs)
        return out

    # -- batches ----------------------------------------------------------------------------

    def run_batch(self, values: list[Any], recover: Recover) -> tuple[list[list[Any]], int]:
        """Run the stage over a batch of items, the hot path of a runner.

        Handlers run in one tight loop per batch, and each output topic gets one list: no
        ``(topic, value)`` pair per item. Outputs keep the order of their inputs.

        Args:
            values: the items (of one group).
            recover: called with an item that raised and its exception; returns the item's
                outputs after its retries, or None when it is given up on.

        Returns:
            The outputs per topic of :attr:`outputs` (the same list for every topic when
            each item goes to all of them: never mutate one) and how many items were given
            up on.
        """
        kind = self.kind
        if kind == "sharder":
            return self._shard_batch(values, recover)
        if kind == "splitter":
            return self._split_batch(values, recover)
        if kind in ("copier", "merger"):
            return [values] * len(self.outputs), 0
        if kind not in ("filter", "map"):
            raise TypeError(f"stage {self.name} is a {self.kind}: it folds items into groups")
        out: list[Any] = []
        failed = 0
        handler = self._handler
        first = self.outputs[0] if self.outputs else None  # None: a stage that only acts
        if handler is None:  # a command per item
            for value in values:
                try:
                    produced: Outputs | None = self._run_command(value)
                except Exception as exc:  # the item's failure, never the runner's
                    produced = recover(value, exc)
                if produced is None:
                    failed += 1
                else:
                    out.extend(v for t, v in produced if t == first)
            return [out] * len(self.outputs), failed
        if kind == "filter":
            append = out.append
            for value in values:
                try:
                    if handler(value):
                        append(value)
                except Exception as exc:  # the item's failure
                    failed += self._recovered(out, recover(value, exc))
        elif self._generator:
            extend = out.extend
            for value in values:
                mark = len(out)
                try:
                    extend(handler(value))
                except Exception as exc:  # the item's failure: drop what it yielded
                    del out[mark:]
                    failed += self._recovered(out, recover(value, exc))
        else:
            append = out.append
            for value in values:
                try:
                    result = handler(value)
                except Exception as exc:  # the item's failure
                    failed += self._recovered(out, recover(value, exc))
                    continue
                if result is not None:
                    append(result)
        return [out] * len(self.outputs), failed

    def _recovered(self, out: list[Any], produced: Outputs | None) -> int:
        """Add a retried item's outputs (for the first topic: each goes to all); 1 if dead."""
        if produced is None:
            return 1
        if self.outputs:
            first = self.outputs[0]
            out.extend(v for t, v in produced if t == first)
        return 0

    def _split_batch(self, values: list[Any], recover: Recover) -> tuple[list[list[Any]], int]:
        assert self._handler is not None
        handler = self._handler
        outputs = self.outputs
        index = {topic: i for i, topic in enumerate(outputs)}
        lists: list[list[Any]] = [[] for _ in outputs]
        failed = 0
        for value in values:
            marks = [len(out) for out in lists]
            try:
                for produced in handler(value) or ():
                    if isinstance(produced, Emit):
                        i = index.get(produced.topic)
                        if i is None:
                            raise ItemError(
                                f"splitter {self.name} emitted to topic {produced.topic!r}, "
                                f"not one of its topics {outputs}"
                            )
                        lists[i].append(produced.value)
                    else:
                        for out in lists:
                            out.append(produced)
            except Exception as exc:  # the item's failure: drop what it yielded
                for out, mark in zip(lists, marks, strict=True):
                    del out[mark:]
                retried = recover(value, exc)
                if retried is None:
                    failed += 1
                else:
                    for topic, v in retried:
                        lists[index[topic]].append(v)
        return lists, failed

    def _shard_batch(self, values: list[Any], recover: Recover) -> tuple[list[list[Any]], int]:
        lists: list[list[Any]] = [[] for _ in self.outputs]
        appends = [out.append for out in lists]
        get_key = self._shard_key_raw
        cached = self._shard_cache.get
        failed = 0
        for value in values:
            try:
                key = get_key(value)
            except Exception:  # no key field: the item's failure, with its ItemError
                try:
                    key = self._shard_key(value)
                except Exception as exc:  # the item's failure, never the runner's
                    retried = recover(value, exc)
                    if retried is None:
                        failed += 1
                    else:
                        for topic, v in retried:
                            lists[self.outputs.index(topic)].append(v)
                    continue
            shard = cached(key) if type(key) is str else None
            if shard is None:
                shard = self.shard_of(value)
            appends[shard](value)
        return lists, failed

    def _not_direct(self, value: Any) -> Outputs:
        raise TypeError(f"stage {self.name} is a {self.kind}: it folds items into groups")

    # -- barriers ---------------------------------------------------------------------------

    def accumulator_key(self, value: Any) -> str:
        """The key a reduce combines ``value`` under within its group ("" without ``key``).

        With ``group``, the key names the item's own group too: ``["GROUP", "KEY"]`` as JSON
        (``["GROUP", null]`` without ``key``), which :meth:`results` takes apart again.

        Raises:
            ItemError: the value has no ``key`` or ``group`` field.
        """
        if self.reduce_group is not None:
            group = key_text(self._reduce_group(value))
            key = None if self.reduce_key is None else key_text(self._reduce_key(value))
            return json.dumps([group, key], ensure_ascii=False, separators=(",", ":"))
        if self.reduce_key is None:
            return ""
        key = self._reduce_key(value)
        return key if isinstance(key, str) else key_text(key)

    def fast_fold(self) -> tuple[Callable[[Any], Any] | None, Callable[[Any, Any], Any] | None]:
        """The raw key getter (None without ``key`` or ``group``) and handler (None for a
        join), for a runner's hot loop: keys that are not strings still go through
        :func:`key_text`, and an item whose getter raises goes through
        :meth:`accumulator_key` for its error."""
        if self.reduce_group is not None:
            return self.accumulator_key, self._handler
        getter = raw_getter(self.reduce_key) if self.reduce_key is not None else None
        return getter, self._handler

    def combine(self, accumulator: Any, value: Any) -> Any:
        """Fold one value into an accumulator (a join only counts)."""
        if self._handler is None:
            return None
        return self._handler(accumulator, value)

    def results(
        self,
        group: str,
        outcome: str,
        accumulators: Iterable[tuple[str, Any]],
        counts: dict[str, int],
    ) -> list[Any]:
        """The values a fired barrier emits: a join one summary, a reduce one value per key
        (or one value without ``key``), and with ``group`` one per group value and key, whose
        ``group`` field is that value; a failed reduce emits nothing."""
        if self.kind == "join":
            return [{"group": group, "outcome": outcome, **counts}]
        if outcome != "succeeded":
            return []
        if self.reduce_group is not None:
            out: list[Any] = []
            for pair, acc in accumulators:
                own_group, key = json.loads(pair)
                if key is None:
                    out.append({"group": own_group, "value": acc})
                else:
                    out.append({"group": own_group, "key": key, "value": acc})
            return out
        if self.reduce_key is None:
            return [{"group": group, "value": acc} for _, acc in accumulators]
        return [{"group": group, "key": k, "value": acc} for k, acc in accumulators]


def _load(spec: str, base_dir: str) -> Callable[..., Any]:
    # Handlers beside the pipeline file are found wherever the command runs from.
    if base_dir not in sys.path:
        sys.path.insert(0, base_dir)
    return load_handler(spec)


def build_stages(spec: PipelineSpec) -> dict[str, StageLogic]:
    """Every stage's logic, in file order."""
    return {name: StageLogic(spec, name) for name in spec.stages}
