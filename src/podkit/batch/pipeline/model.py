"""The pipeline file: inputs, topics, stages and outputs, validated once into frozen models.

A pipeline file is YAML::

    topics: {backend: "sqlite:///.podkit/pipe.db"}
    inputs:
      files: {dir: "{input}", glob: "**/*", group: wordcount}
    stages:
      lines: {from: files, splitter: {handler: "wc:lines"}, to: lines}
      words: {from: lines, map: {handler: "wc:words", concurrency: 4}, to: words}
      shard: {from: words, sharder: {key: "$.word", shards: 4}, to: "counts.{shard}"}
      count: {from: "counts.*", reduce: {handler: "wc:add", key: "$.word", initial: 0},
              to: totals}
    outputs:
      totals: {file: "{output}", fields: ["$.key", "$.value"]}

``{KEY}`` anywhere in a string is replaced by the value of ``--set KEY=VALUE`` before the
file is validated; ``{shard}`` in a sharder's ``to`` is the shard number and is left alone.
A ``from`` ending in ``*`` reads every topic that starts with what comes before it.
A reduce's ``group: "$.job"`` combines each item in the group its ``job`` field names (one
result per job) instead of its input's group.
Every error names the file and the field (``stages.words.map.concurrency``).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from podkit.batch.pipeline.retry import (
    DEFAULT_BACKOFF_MAX,
    DEFAULT_BACKOFF_MULTIPLIER,
    RetryPolicy,
)
from podkit.errors import ConfigError
from podkit.runtime.config import (
    load_yaml,
    parse_duration,
    parse_size,
    validation_error_to_config_error,
)

STAGE_KINDS = ("copier", "filter", "splitter", "sharder", "merger", "map", "join", "reduce")
BARRIER_KINDS = ("join", "reduce")

NAME_PATTERN = r"^[A-Za-z0-9_.\-]{1,64}$"  # topic, stage, input names: safe in queue names
MAX_SHARDS = 1024  # topics one sharder writes; more is a sign the key wants a database
MAX_CONCURRENCY = 1000  # items one map stage runs at once in one process
MAX_STAGES = 256  # stages in one file
MAX_INPUT_FILES = 1_000_000  # files one directory input lists; bounds the listing in memory
DEFAULT_MAX_ATTEMPTS = 3  # deliveries of one item to a stage before it is dead-lettered
MAX_RETRIES = 99  # retries of one item in one stage: more hides a bug behind a long wait
MAX_BACKOFF_MULTIPLIER = 10.0  # growth of the wait per retry
DEFAULT_MAX_PENDING = 10_000  # items waiting in one topic before producers wait (back-pressure)
DEFAULT_VISIBILITY = 30.0  # seconds a worker holds an item before another may take it
DEFAULT_BATCH = 100  # items a worker takes from a topic per call
DEFAULT_PACK_BYTES = 256 * 1024  # JSON of one pack of items between stages (store.py)
MIN_PACK_BYTES = 1024  # smaller packs are one item each anyway
MAX_PACK_BYTES = 64 * 1024 * 1024  # one pack is held in memory whole, twice while encoded
DEFAULT_GROUP = "default"  # the group of input items when the input names none

_PLACEHOLDER_RE = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\}")
RUNTIME_PLACEHOLDERS = frozenset({"shard"})  # filled while running, never by --set
_PATH_RE = re.compile(r"^\$(\.[A-Za-z0-9_\-]+)+$")


def _check_path_value(value: str) -> str:
    _check_path(value)
    return value


def _check_handler_value(value: str) -> str:
    _check_handler(value)
    return value


Handler = Annotated[str, AfterValidator(_check_handler_value)]
ItemPath = Annotated[str, AfterValidator(_check_path_value)]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


def _duration(value: Any) -> float:
    """A duration field (``500ms``, ``2s``, ``1m``); a ValueError names what was expected."""
    try:
        return parse_duration(value)
    except ConfigError as exc:  # pydantic names the field and the file
        raise ValueError(exc.reason) from None


def _check_path(value: str | None) -> str | None:
    if value is not None and not _PATH_RE.match(value):
        raise ValueError(f"expected a path into the item such as $.word, got {value!r}")
    return value


def _check_handler(value: str | None) -> str | None:
    if value is not None:
        module, sep, attr = value.partition(":")
        if not sep or not module or not attr:
            raise ValueError(f"expected module:function, got {value!r}")
    return value


class TopicsSpec(_Model):
    """Where topics live and how many items each may hold."""

    backend: str = "memory://"
    max_pending: int = Field(DEFAULT_MAX_PENDING, ge=1, le=100_000_000)
    visibility: float = DEFAULT_VISIBILITY
    batch: int = Field(DEFAULT_BATCH, ge=1, le=1000)
    pack_bytes: int = Field(DEFAULT_PACK_BYTES, ge=MIN_PACK_BYTES, le=MAX_PACK_BYTES)

    @field_validator("pack_bytes", mode="before")
    @classmethod
    def _size(cls, value: Any) -> int:
        try:
            return parse_size(value)
        except ConfigError as exc:  # pydantic names the field and the file
            raise ValueError(exc.reason) from None

    @field_validator("visibility", mode="before")
    @classmethod
    def _duration(cls, value: Any) -> float:
        seconds = _duration(value)
        if seconds <= 0:
            raise ValueError("expected a positive duration")
        return seconds

    @field_validator("backend")
    @classmethod
    def _backend(cls, value: str) -> str:
        if value == "memory://" or value.startswith(("sqlite:///", "redis://", "rediss://")):
            return value
        raise ValueError(
            f"expected memory://, sqlite:///path.db or redis://host:port/db, got {value!r}"
        )


class InputSpec(_Model):
    """Items that enter the pipeline: the files of a directory, literal values, or a stream.

    A ``stream: true`` input has no items of its own: ``podkit pipeline put`` adds them while
    the stage workers run, and its group stays open (it is never sealed, so a barrier over it
    never fires).
    """

    dir: str | None = None
    glob: str = "**/*"
    items: list[Any] | None = None
    stream: bool = False
    group: str = DEFAULT_GROUP

    @model_validator(mode="after")
    def _one_source(self) -> InputSpec:
        if sum((self.dir is not None, self.items is not None, self.stream)) != 1:
            raise ValueError("give exactly one of dir, items or stream: true")
        return self


class PolicyFields(_Model):
    """When a group's barrier fires: all children, all but N, or a share of them."""

    allow_failures: int | None = Field(None, ge=0)
    quorum: str | None = None

    @field_validator("quorum")
    @classmethod
    def _quorum(cls, value: str | None) -> str | None:
        if value is None:
            return None
        match = re.match(r"^\s*(\d+(?:\.\d+)?)\s*%\s*$", value)
        if not match or not 0 < float(match.group(1)) <= 100:
            raise ValueError(f"expected a share such as 90%, got {value!r}")
        return value

    @model_validator(mode="after")
    def _one_policy(self) -> PolicyFields:
        if self.allow_failures is not None and self.quorum is not None:
            raise ValueError("give allow_failures or quorum, not both")
        return self


class CopierSpec(_Model):
    """Every output topic gets each item."""


class MergerSpec(_Model):
    """Items of every input topic go to the one output topic."""


class FilterSpec(_Model):
    """Items for which the handler returns true pass; the others are dropped."""

    handler: Handler


class SplitterSpec(_Model):
    """One item in, any number out; ``Emit(topic, value)`` picks one of the stage's topics."""

    handler: Handler


class SharderSpec(_Model):
    """Each item goes to topic ``{shard}`` chosen by consistent hashing of its key."""

    key: ItemPath
    shards: int = Field(ge=1, le=MAX_SHARDS)


class MapSpec(_Model):
    """A Python handler (a generator yields many outputs) or a command per item."""

    handler: Handler | None = None
    command: list[str] | None = None
    concurrency: int = Field(1, ge=1, le=MAX_CONCURRENCY)

    @model_validator(mode="after")
    def _one_of(self) -> MapSpec:
        if (self.handler is None) == (self.command is None):
            raise ValueError("give exactly one of handler or command")
        if self.command is not None and not self.command:
            raise ValueError("command must name a program")
        return self


class JoinSpec(PolicyFields):
    """A barrier: one item per group when the group completes."""


class ReduceSpec(PolicyFields):
    """An incremental combine per group (and per ``key`` within it), emitted on completion.

    ``group`` (a path such as ``$.job``) takes the group an item is combined in from the item
    itself instead of from the input it came from; the barrier still waits for the input's
    group, and then emits one result per group value (and key) it saw.
    """

    handler: Handler
    key: ItemPath | None = None
    group: ItemPath | None = None
    initial: Any = None


StageOptions = (
    CopierSpec
    | FilterSpec
    | SplitterSpec
    | SharderSpec
    | MergerSpec
    | MapSpec
    | JoinSpec
    | ReduceSpec
)


class BackoffSpec(_Model):
    """The waits between a stage's attempts at one item: ``backoff: 500ms`` or a mapping."""

    initial: float
    max: float = DEFAULT_BACKOFF_MAX
    multiplier: float = Field(DEFAULT_BACKOFF_MULTIPLIER, ge=1.0, le=MAX_BACKOFF_MULTIPLIER)

    @field_validator("initial", "max", mode="before")
    @classmethod
    def _positive(cls, value: Any) -> float:
        seconds = _duration(value)
        if seconds <= 0:
            raise ValueError(f"expected a positive duration such as 500ms, got {value!r}")
        return seconds

    @model_validator(mode="after")
    def _order(self) -> BackoffSpec:
        if self.max < self.initial:
            raise ValueError("max must be at least initial")
        return self


class StageSpec(_Model):
    """One stage: the topics it reads, what it does, the topics it writes."""

    from_: list[str] = Field(alias="from")
    to: list[str] = Field(default_factory=list)
    copier: CopierSpec | None = None
    filter: FilterSpec | None = None
    splitter: SplitterSpec | None = None
    sharder: SharderSpec | None = None
    merger: MergerSpec | None = None
    map: MapSpec | None = None
    join: JoinSpec | None = None
    reduce: ReduceSpec | None = None
    max_attempts: int = Field(DEFAULT_MAX_ATTEMPTS, ge=1, le=MAX_RETRIES + 1)
    retries: int | None = Field(None, ge=0, le=MAX_RETRIES)
    backoff: BackoffSpec | None = None
    workers: int = Field(1, ge=1, le=64)

    @field_validator("backoff", mode="before")
    @classmethod
    def _backoff_shorthand(cls, value: Any) -> Any:
        # `backoff: 500ms` is the first wait, with the default growth and cap.
        if isinstance(value, str | int | float) and not isinstance(value, bool):
            return {"initial": value}
        return value

    @field_validator("from_", "to", mode="before")
    @classmethod
    def _listify(cls, value: Any) -> Any:
        return [value] if isinstance(value, str) else value

    @model_validator(mode="before")
    @classmethod
    def _empty_options(cls, data: Any) -> Any:
        # `copier: {}` and `copier:` (null) both mean "a copier with no options".
        if isinstance(data, dict):
            data = dict(data)
            for kind in ("copier", "merger", "join"):
                if kind in data and data[kind] is None:
                    data[kind] = {}
        return data

    @model_validator(mode="after")
    def _one_kind(self) -> StageSpec:
        kinds = [k for k in STAGE_KINDS if getattr(self, k) is not None]
        if len(kinds) != 1:
            raise ValueError(
                f"give exactly one stage kind of {', '.join(STAGE_KINDS)}"
                + (f" (found {', '.join(kinds)})" if kinds else "")
            )
        if not self.from_:
            raise ValueError("from: name at least one topic")
        if self.retries is not None and "max_attempts" in self.model_fields_set:
            raise ValueError(
                "give retries or max_attempts, not both (retries: N is N + 1 attempts)"
            )
        return self

    @property
    def attempts(self) -> int:
        """Tries of one item in all: ``retries + 1``, else ``max_attempts``."""
        return self.retries + 1 if self.retries is not None else self.max_attempts

    @property
    def retry_policy(self) -> RetryPolicy:
        """The stage's attempts and the waits between them (none without ``backoff``)."""
        if self.backoff is None:
            return RetryPolicy(attempts=self.attempts)
        return RetryPolicy(
            attempts=self.attempts,
            initial=self.backoff.initial,
            multiplier=self.backoff.multiplier,
            cap=self.backoff.max,
        )

    @property
    def kind(self) -> str:
        return next(k for k in STAGE_KINDS if getattr(self, k) is not None)

    @property
    def options(self) -> StageOptions:
        value: StageOptions = getattr(self, self.kind)
        return value


class OutputSpec(_Model):
    """A topic written to a file when the run ends: one line per item."""

    file: str
    fields: list[str] | None = None

    @field_validator("fields")
    @classmethod
    def _paths(cls, value: list[str] | None) -> list[str] | None:
        for item in value or []:
            _check_path(item)
        return value


class PipelineSpec(_Model):
    """A whole pipeline file. Build it with :func:`load_pipeline` or :func:`parse_pipeline`."""

    topics: TopicsSpec = Field(default_factory=TopicsSpec)  # type: ignore[arg-type]
    inputs: dict[str, InputSpec] = Field(default_factory=dict)
    stages: dict[str, StageSpec]
    outputs: dict[str, OutputSpec] = Field(default_factory=dict)
    name: str = Field("pipeline", pattern=NAME_PATTERN)
    source: str = "<pipeline>"
    base_dir: str = "."

    @model_validator(mode="after")
    def _graph(self) -> PipelineSpec:
        names = re.compile(NAME_PATTERN)
        if len(self.stages) > MAX_STAGES:
            raise ValueError(f"at most {MAX_STAGES} stages")
        if not self.stages:
            raise ValueError("stages: name at least one stage")
        for name in [*self.inputs, *self.stages, *self.outputs]:
            if not names.match(name):
                raise ValueError(f"{name!r} is not a valid name: use 1-64 of A-Z a-z 0-9 _ . -")
        return self

    def stage_outputs(self, name: str) -> list[str]:
        """The concrete topics stage ``name`` writes (a sharder's ``{shard}`` expanded)."""
        stage = self.stages[name]
        if isinstance(stage.sharder, SharderSpec):
            return [stage.to[0].replace("{shard}", str(i)) for i in range(stage.sharder.shards)]
        return list(stage.to)

    def produced_topics(self) -> list[str]:
        """Every topic something writes: inputs first, then stage outputs in file order."""
        seen: dict[str, None] = dict.fromkeys(self.inputs)
        for name in self.stages:
            seen.update(dict.fromkeys(self.stage_outputs(name)))
        return list(seen)

    def stage_inputs(self, name: str) -> list[str]:
        """The concrete topics stage ``name`` reads (``prefix*`` matched against produced)."""
        produced = self.produced_topics()
        topics: dict[str, None] = {}
        for pattern in self.stages[name].from_:
            if pattern.endswith("*"):
                topics.update(dict.fromkeys(t for t in produced if t.startswith(pattern[:-1])))
            else:
                topics[pattern] = None
        return list(topics)

    def consumers(self, topic: str) -> list[str]:
        """The stages that read ``topic``."""
        return [name for name in self.stages if topic in self.stage_inputs(name)]


def substitute(data: Any, values: Mapping[str, str], *, path: str = "") -> Any:
    """Fill ``{KEY}`` in every string of ``data`` from ``values``.

    Raises:
        ConfigError: a placeholder names no ``--set`` value (path names the field).
    """
    if isinstance(data, str):

        def fill(match: re.Match[str]) -> str:
            key = match.group(1)
            if key in values:
                return values[key]
            if key in RUNTIME_PLACEHOLDERS:
                return match.group(0)
            raise ConfigError(
                f"{{{key}}} has no value: run with --set {key}=VALUE", path=path or None
            )

        return _PLACEHOLDER_RE.sub(fill, data)
    if isinstance(data, dict):
        return {
            k: substitute(v, values, path=f"{path}.{k}" if path else str(k))
            for k, v in data.items()
        }
    if isinstance(data, list):
        return [substitute(v, values, path=f"{path}[{i}]") for i, v in enumerate(data)]
    return data


def _check_topics(spec: PipelineSpec, source: str) -> None:
    produced = set(spec.produced_topics())
    for name, stage in spec.stages.items():
        where = f"stages.{name}"
        worst = stage.retry_policy.worst_case()
        if worst > spec.topics.visibility / 2:
            # A worker holds its batch's lease while it waits: the waits must fit in it.
            raise ConfigError(
                f"the waits between attempts add up to {worst:g}s, more than half of "
                f"topics.visibility ({spec.topics.visibility:g}s): lower the backoff or the "
                "retries, or raise topics.visibility",
                source=source,
                path=f"{where}.backoff",
            )
        for pattern in stage.from_:
            if pattern.endswith("*"):
                if not any(t.startswith(pattern[:-1]) for t in produced):
                    raise ConfigError(
                        f"no input or stage writes a topic matching {pattern!r}",
                        source=source,
                        path=f"{where}.from",
                    )
            elif pattern not in produced:
                raise ConfigError(
                    f"no input or stage writes topic {pattern!r}",
                    source=source,
                    path=f"{where}.from",
                )
        kind = stage.kind
        if kind == "sharder":
            if len(stage.to) != 1 or "{shard}" not in stage.to[0]:
                raise ConfigError(
                    'a sharder writes one topic name with {shard} in it, e.g. "counts.{shard}"',
                    source=source,
                    path=f"{where}.to",
                )
        elif kind in ("copier",) and len(stage.to) < 1:
            raise ConfigError(
                "a copier writes at least one topic", source=source, path=f"{where}.to"
            )
        elif kind in ("merger", "filter", "map", "join", "reduce") and len(stage.to) > 1:
            raise ConfigError(
                f"a {kind} writes at most one topic (use a copier to fan out)",
                source=source,
                path=f"{where}.to",
            )
        elif kind == "merger" and len(spec.stage_inputs(name)) < 1:
            raise ConfigError(
                "a merger reads at least one topic", source=source, path=f"{where}.from"
            )
        for topic in stage.to:
            if kind != "sharder" and "{" in topic:
                raise ConfigError(
                    f"topic {topic!r}: only a sharder's topic may hold {{shard}}",
                    source=source,
                    path=f"{where}.to",
                )
            if not re.match(NAME_PATTERN, topic.replace("{shard}", "0")):
                raise ConfigError(
                    f"{topic!r} is not a valid topic name: use 1-64 of A-Z a-z 0-9 _ . -",
                    source=source,
                    path=f"{where}.to",
                )
            if topic in spec.inputs:
                raise ConfigError(
                    f"topic {topic!r} is an input; stages write other topics",
                    source=source,
                    path=f"{where}.to",
                )
    for name in spec.outputs:
        if name not in produced:
            raise ConfigError(
                f"no input or stage writes topic {name!r}", source=source, path=f"outputs.{name}"
            )
    _check_acyclic(spec, source)


def _check_acyclic(spec: PipelineSpec, source: str) -> None:
    # A topic read by a stage that (through later stages) writes it again would never drain.
    writes = {name: set(spec.stage_outputs(name)) for name in spec.stages}
    reads = {name: set(spec.stage_inputs(name)) for name in spec.stages}
    for start in spec.stages:
        frontier, seen = set(writes[start]), set[str]()
        while frontier:
            topic = frontier.pop()
            if topic in reads[start]:
                raise ConfigError(
                    f"stage {start!r} reads topic {topic!r} that it writes (through the stages "
                    "after it): a pipeline has no cycles",
                    source=source,
                    path=f"stages.{start}.to",
                )
            if topic in seen:
                continue
            seen.add(topic)
            for name in spec.stages:
                if topic in reads[name]:
                    frontier |= writes[name]


def parse_pipeline(
    data: Any,
    *,
    source: str = "<pipeline>",
    values: Mapping[str, str] | None = None,
    base_dir: str = ".",
) -> PipelineSpec:
    """Validate a pipeline given as plain data (as read from YAML).

    Raises:
        ConfigError: naming ``source``, the field and what was expected.
    """
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError("expected a mapping with stages", source=source)
    try:
        filled = substitute(data, values or {})
    except ConfigError as exc:
        raise ConfigError(exc.reason, source=source, path=exc.path) from exc
    try:
        spec = PipelineSpec.model_validate({**filled, "source": source, "base_dir": base_dir})
    except ValidationError as exc:
        raise validation_error_to_config_error(exc, source=source) from exc
    _check_topics(spec, source)
    return spec


def load_pipeline(path: str | Path, values: Mapping[str, str] | None = None) -> PipelineSpec:
    """Read and validate a pipeline file, filling ``{KEY}`` from ``values``.

    Raises:
        ConfigError: the file cannot be read, is not valid YAML, or a field is invalid.
    """
    data = load_yaml(path)
    if isinstance(data, dict) and "name" not in data:
        data = {**data, "name": Path(path).stem}
    return parse_pipeline(
        data, source=str(path), values=values, base_dir=str(Path(path).resolve().parent)
    )


def parse_set(pairs: list[str] | tuple[str, ...]) -> dict[str, str]:
    """``["input=data", "output=out.txt"]`` -> a dict.

    Raises:
        ConfigError: a pair has no ``=`` or its key is not a name.
    """
    values: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not re.match(r"^[A-Za-z_][A-Za-z0-9_]*$", key):
            raise ConfigError(f"expected KEY=VALUE, got {pair!r}", path="--set")
        if key in RUNTIME_PLACEHOLDERS:
            raise ConfigError(f"{{{key}}} is filled while running, not by --set", path="--set")
        values[key] = value
    return values
