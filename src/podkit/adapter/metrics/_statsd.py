"""statsd and DogStatsD lines to Prometheus metrics, as statsd_exporter (sans-IO).

Theory of operation. A UDP packet holds lines ``name:value|type[|@rate][|#tag:v,tag2:v]``
(the Etsy statsd protocol with DogStatsD's tags). :class:`StatsdAggregator` keeps state
between scrapes:

* ``c`` counters add ``value / rate`` and are exported as counters (``_total`` appended);
* ``g`` gauges are set (``+N``/``-N`` change them);
* ``ms`` timers and ``h``/``d`` histograms/distributions are observed into a histogram; timer
  values are milliseconds and are observed in seconds;
* ``s`` sets are not supported and counted as ignored.

A dotted name is matched against the map file's rules (statsd_exporter's glob mapping: ``*``
matches one dotted component, captured as ``$1``, ``$2``...); the first match gives the
metric name, labels, type and help, or ``action: drop``. Unmatched names become metric
names with dots and other characters as ``_``. Tags become labels. The number of distinct
series is bounded (``max_series``); lines beyond it are dropped and counted.
"""

from __future__ import annotations

import bisect
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Final, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from podkit.adapter.metrics._exposition import (
    MetricsPage,
    sanitize_label,
    sanitize_name,
    valid_name,
)

DEFAULT_MAX_SERIES = 10_000  # distinct name+labels; statsd_exporter has no limit, memory does
DEFAULT_BUCKETS: Final = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
MAX_PACKET_BYTES = 65_535  # the largest UDP datagram

Kind = Literal["counter", "gauge", "histogram"]
_TYPES: Final[dict[str, Kind]] = {
    "c": "counter",
    "g": "gauge",
    "ms": "histogram",
    "h": "histogram",
    "d": "histogram",
}


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class StatsdMapping(_Model):
    """One rule: a dotted glob and what a matching name becomes."""

    match: str = Field(min_length=1)
    name: str | None = None
    labels: dict[str, str] = Field(default_factory=dict)
    type: Literal["counter", "gauge", "histogram"] | None = None
    help: str = ""
    action: Literal["map", "drop"] = "map"

    @field_validator("match")
    @classmethod
    def _glob(cls, value: str) -> str:
        if not re.fullmatch(r"[A-Za-z0-9_*\-]+(\.[A-Za-z0-9_*\-]+)*", value):
            raise ValueError("a glob of dotted components: letters, digits, '_', '-', '*'")
        return value


class StatsdMap(_Model):
    """The map file of ``--statsd``."""

    mappings: list[StatsdMapping] = Field(default_factory=list)
    buckets: list[float] = Field(default_factory=lambda: list(DEFAULT_BUCKETS), min_length=1)

    @field_validator("buckets")
    @classmethod
    def _sorted(cls, value: list[float]) -> list[float]:
        if value != sorted(set(value)):
            raise ValueError("buckets must be increasing")
        return value


@dataclass(frozen=True, slots=True)
class StatsdSample:
    """One parsed line."""

    name: str
    value: float
    kind: Kind
    relative: bool = False
    rate: float = 1.0
    tags: tuple[tuple[str, str], ...] = ()
    milliseconds: bool = False


def parse_line(line: str) -> StatsdSample | None:
    """One statsd line, or None when it is not one (or is a type podkit does not take)."""
    name, sep, rest = line.partition(":")
    if not sep or not name:
        return None
    parts = rest.split("|")
    if len(parts) < 2:
        return None
    value_text, kind_text = parts[0], parts[1]
    kind = _TYPES.get(kind_text)
    if kind is None:
        return None
    rate = 1.0
    tags: list[tuple[str, str]] = []
    for extra in parts[2:]:
        if extra.startswith("@"):
            try:
                rate = float(extra[1:])
            except ValueError:
                return None
            if not 0 < rate <= 1:
                return None
        elif extra.startswith("#"):
            for tag in extra[1:].split(","):
                key, _, tag_value = tag.partition(":")
                if key:
                    tags.append((sanitize_label(key), tag_value))
    try:
        number = float(value_text)
    except ValueError:
        return None
    relative = kind == "gauge" and value_text[:1] in "+-"
    return StatsdSample(
        name, number, kind, relative, rate, tuple(tags), milliseconds=kind_text == "ms"
    )


@dataclass(slots=True)
class _Histogram:
    counts: list[int]
    total: float = 0.0
    count: int = 0


@dataclass(slots=True)
class _Series:
    kind: Kind
    help: str
    value: float = 0.0
    histogram: _Histogram | None = None


@dataclass(slots=True)
class StatsdStatistics:
    lines: int = 0
    bad_lines: int = 0
    dropped_by_map: int = 0
    dropped_over_limit: int = 0
    type_clashes: int = 0


@dataclass(slots=True)
class StatsdAggregator:
    """Accumulates statsd lines between scrapes."""

    mapping: StatsdMap = field(default_factory=StatsdMap)
    max_series: int = DEFAULT_MAX_SERIES
    stats: StatsdStatistics = field(default_factory=StatsdStatistics)
    _series: dict[tuple[str, tuple[tuple[str, str], ...]], _Series] = field(default_factory=dict)
    _globs: list[tuple[re.Pattern[str], StatsdMapping]] = field(default_factory=list)
    _kinds: dict[str, Kind] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for rule in self.mapping.mappings:
            pattern = (
                "^"
                + r"\.".join(
                    "([^.]+)" if part == "*" else re.escape(part) for part in rule.match.split(".")
                )
                + "$"
            )
            self._globs.append((re.compile(pattern), rule))

    def feed_packet(self, data: bytes) -> None:
        """Take one datagram: lines separated by newlines."""
        for line in data.decode("utf-8", errors="replace").splitlines():
            if line.strip():
                self.feed_line(line.strip())

    def _resolve(self, sample: StatsdSample) -> tuple[str, dict[str, str], Kind, str] | None:
        for pattern, rule in self._globs:
            match = pattern.match(sample.name)
            if match is None:
                continue
            if rule.action == "drop":
                return None
            groups = match.groups()

            def expand(text: str, groups: Sequence[str] = groups) -> str:
                return re.sub(r"\$(\d+)", lambda m: _group(groups, int(m.group(1))), text)

            name = sanitize_name(expand(rule.name)) if rule.name else sanitize_name(sample.name)
            labels = {key: expand(value) for key, value in rule.labels.items()}
            return name, labels, rule.type or sample.kind, rule.help
        return sanitize_name(sample.name), {}, sample.kind, ""

    def feed_line(self, line: str) -> bool:
        """Take one line. Returns False when it was not used (bad, dropped or over limits)."""
        self.stats.lines += 1
        sample = parse_line(line)
        if sample is None:
            self.stats.bad_lines += 1
            return False
        resolved = self._resolve(sample)
        if resolved is None:
            self.stats.dropped_by_map += 1
            return False
        name, labels, kind, help = resolved
        if kind == "counter" and not name.endswith("_total"):
            name += "_total"
        if not valid_name(name):
            self.stats.bad_lines += 1
            return False
        if self._kinds.setdefault(name, kind) != kind:
            self.stats.type_clashes += 1
            return False
        labels.update(sample.tags)
        key = (name, tuple(sorted(labels.items())))
        series = self._series.get(key)
        if series is None:
            if len(self._series) >= self.max_series:
                self.stats.dropped_over_limit += 1
                return False
            series = self._series[key] = _Series(kind, help or f"statsd {sample.name}")
            if kind == "histogram":
                series.histogram = _Histogram([0] * len(self.mapping.buckets))
        value = sample.value / 1000 if sample.milliseconds else sample.value
        if kind == "counter":
            series.value += value / sample.rate
        elif kind == "gauge":
            series.value = series.value + value if sample.relative else value
        else:
            histogram = series.histogram
            assert histogram is not None
            weight = round(1 / sample.rate)
            index = bisect.bisect_left(self.mapping.buckets, value)
            if index < len(histogram.counts):
                histogram.counts[index] += weight
            histogram.total += value * weight
            histogram.count += weight
        return True

    def series_count(self) -> int:
        return len(self._series)

    def render_into(self, page: MetricsPage, *, prefix: str = "") -> None:
        """Add every series to ``page`` (``prefix_`` in front of each name when given)."""
        for (name, labels), series in self._series.items():
            full = f"{prefix}_{name}" if prefix else name
            if series.histogram is None:
                page.add(
                    full, series.value, type=series.kind, help=series.help, labels=dict(labels)
                )
                continue
            cumulative = 0
            buckets = []
            for bound, count in zip(self.mapping.buckets, series.histogram.counts, strict=True):
                cumulative += count
                buckets.append((bound, float(cumulative)))
            page.add_histogram(
                full,
                buckets,
                series.histogram.total,
                float(series.histogram.count),
                help=series.help,
                labels=dict(labels),
            )


def _group(groups: Sequence[str], index: int) -> str:
    return groups[index - 1] if 0 < index <= len(groups) else ""
