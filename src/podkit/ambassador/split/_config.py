"""The split's table from flags or from a YAML file (``--config``), validated once.

The file names the arms (the primary first), their weights, the sticky key and the match
rules::

    primary: http://127.0.0.1:8001
    candidates:                 # in order: the first owns the lowest points (see _assign)
      candidate: http://127.0.0.1:8002
      green: http://127.0.0.1:8003
    weights: {candidate: 10%, green: 5%}
    sticky: cookie:user
    routes:
      - header:X-Canary=1 -> candidate
      - path:/beta -> green
    diff:                       # the bounds of --diff (DiffLimits); flags win over these
      max_routes: 64
      examples: 5
      max_body: 1MiB

SIGHUP and a change of the file re-read it; a file with an error is refused whole (the
previous table stays) and the error names the file and the field. The ``diff`` bounds are
read at start (they size what the diffs keep), not on a reload.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from podkit.ambassador.split._assign import PRIMARY, RouteRule, SplitTable, StickyKey, parse_percent
from podkit.ambassador.split._diff import DiffLimits
from podkit.engines.http import Upstream
from podkit.errors import ConfigError
from podkit.runtime import load_model, parse_size


@dataclass(frozen=True, slots=True)
class ArmSpec:
    """One arm: its name and URL."""

    name: str
    url: str


@dataclass(frozen=True, slots=True)
class TableSpec:
    """What a :class:`SplitTable` is built from."""

    arms: tuple[ArmSpec, ...]
    weights: Mapping[str, float] = field(default_factory=dict)
    routes: tuple[RouteRule, ...] = ()
    sticky: StickyKey | None = None
    diff_limits: Mapping[str, int] = field(default_factory=dict)  # the file's diff: section

    def validate(self, *, source: str | None = None) -> TableSpec:
        """Check the table builds (arm names, weights, routes); returns itself.

        Raises:
            ConfigError: naming ``source`` and the field.
        """
        try:
            SplitTable([a.name for a in self.arms], self.weights, routes=self.routes)
            for arm in self.arms:
                Upstream.parse(arm.url)
        except ConfigError as exc:
            raise ConfigError(exc.reason, source=source, path=exc.path) from exc
        return self


class DiffSection(BaseModel):
    """The ``diff:`` section: :class:`DiffLimits` by field name (sizes as ``2KiB`` or bytes)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    max_routes: int | None = None
    max_paths: int | None = None
    examples: int | None = None
    example_body: str | int | None = None
    max_differences: int | None = None
    max_depth: int | None = None
    max_body: str | int | None = None


SIZE_LIMITS = frozenset({"example_body", "max_body"})


class SplitFile(BaseModel):
    """The YAML file of ``podkit split --config``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    primary: str
    candidates: dict[str, str] = Field(default_factory=dict)
    weights: dict[str, str | float] = Field(default_factory=dict)
    sticky: str | None = None
    routes: list[str] = Field(default_factory=list)
    diff: DiffSection | None = None


def diff_limits(
    values: Mapping[str, int], *, fields: Mapping[str, str], source: str | None = None
) -> DiffLimits:
    """:class:`DiffLimits` with ``values`` over the defaults, each checked against its range.

    Args:
        values: limits by field name.
        fields: how to name each field in an error (``--diff-max-routes``, ``diff.max_routes``).
        source: the file they came from, if any.

    Raises:
        ConfigError: a value out of range, naming the flag or the file and key.
    """
    limits = DiffLimits(**values)
    for name, reason in limits.problems():
        raise ConfigError(reason, source=source, path=fields.get(name, name))
    return limits


def _diff_section(section: DiffSection, *, source: str) -> dict[str, int]:
    values: dict[str, int] = {}
    for name, value in section.model_dump(exclude_none=True).items():
        key = f"diff.{name}"
        if name in SIZE_LIMITS:
            try:
                values[name] = parse_size(value, field=key)
            except ConfigError as exc:
                raise ConfigError(exc.reason, source=source, path=key) from exc
        else:
            values[name] = int(value)
    diff_limits(values, fields={n: f"diff.{n}" for n in values}, source=source)
    return values


def check_url(url: str, *, field: str, source: str | None = None) -> str:
    """An arm's URL, written with its scheme.

    Raises:
        ConfigError: no scheme, or not an http(s) upstream.
    """
    text = url.strip()
    if "://" not in text:
        raise ConfigError(
            f"expected a URL with its scheme such as http://{text}, got {url!r}",
            source=source,
            path=field,
        )
    try:
        Upstream.parse(text)
    except ConfigError as exc:
        raise ConfigError(exc.reason, source=source, path=field) from exc
    return text


def table_from_file(data: SplitFile, *, source: str) -> TableSpec:
    """The table a parsed file describes.

    Raises:
        ConfigError: naming the file and the field.
    """
    arms = [ArmSpec(PRIMARY, check_url(data.primary, field="primary", source=source))]
    for name, url in data.candidates.items():
        if not name or name == PRIMARY:
            raise ConfigError(
                f"a candidate cannot be named {name!r}", source=source, path="candidates"
            )
        arms.append(ArmSpec(name, check_url(url, field=f"candidates.{name}", source=source)))
    try:
        weights = {
            arm: parse_percent(value, field=f"weights.{arm}") for arm, value in data.weights.items()
        }
        routes = tuple(
            RouteRule.parse(text, field=f"routes[{i}]") for i, text in enumerate(data.routes)
        )
        sticky = StickyKey.parse(data.sticky, field="sticky") if data.sticky else None
    except ConfigError as exc:
        raise ConfigError(exc.reason, source=source, path=exc.path) from exc
    limits = _diff_section(data.diff, source=source) if data.diff is not None else {}
    return TableSpec(tuple(arms), weights, routes, sticky, limits).validate(source=source)


def read_split_config(path: Path) -> TableSpec:
    """Read and validate the ``--config`` file.

    Raises:
        ConfigError: the file cannot be read or is invalid (naming the file and field).
    """
    data = load_model(SplitFile, path)
    return table_from_file(data, source=str(path))


def table_from_flags(
    *,
    primary: str,
    candidate: str | None,
    weight: float,
    routes: tuple[str, ...],
    sticky: str | None,
) -> TableSpec:
    """The table ``--primary``, ``--candidate``, ``--weight``, ``--route`` and ``--sticky``
    describe.

    Raises:
        ConfigError: naming the flag.
    """
    arms = [ArmSpec(PRIMARY, check_url(primary, field="--primary"))]
    weights: dict[str, float] = {}
    if candidate is not None:
        arms.append(ArmSpec("candidate", check_url(candidate, field="--candidate")))
        weights["candidate"] = weight
    parsed = tuple(RouteRule.parse(text) for text in routes)
    spec = TableSpec(
        tuple(arms),
        weights,
        parsed,
        StickyKey.parse(sticky) if sticky else None,
    )
    try:
        SplitTable([a.name for a in arms], weights, routes=parsed)
    except ConfigError as exc:
        raise ConfigError(exc.reason, path="--route" if exc.path == "routes" else exc.path) from exc
    return spec


def describe(spec: TableSpec) -> dict[str, Any]:
    """The table as plain JSON values (for logs)."""
    return {
        "arms": {a.name: a.url for a in spec.arms},
        "weights": dict(spec.weights),
        "routes": [str(r) for r in spec.routes],
        "sticky": str(spec.sticky) if spec.sticky else None,
    }
