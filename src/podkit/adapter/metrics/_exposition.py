"""A metrics page built at scrape time and written in the Prometheus text format (0.0.4).

Sans-IO: the adapters add samples to a :class:`MetricsPage` and :meth:`MetricsPage.render`
returns the bytes. Samples of one family are written together under one ``# HELP`` and one
``# TYPE`` line whatever order they were added in; a name added again with another type is
refused (a page with two types for one name is invalid). Names and label names that come
from outside (a map file, a statsd packet, a JSON key) go through :func:`sanitize_name`.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Final, Literal

CONTENT_TYPE: Final = "text/plain; version=0.0.4; charset=utf-8"  # the format written here

MetricType = Literal["counter", "gauge", "histogram", "untyped"]
METRIC_TYPES: Final = ("counter", "gauge", "histogram", "untyped")

_NAME = re.compile(r"^[a-zA-Z_:][a-zA-Z0-9_:]*$")
_LABEL = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_]*$")
_BAD_CHARS = re.compile(r"[^a-zA-Z0-9_:]")


def sanitize_name(text: str) -> str:
    """A valid metric name from any text: other characters become ``_``; a leading digit is
    prefixed with ``_`` (``api.requests-total`` -> ``api_requests_total``)."""
    name = _BAD_CHARS.sub("_", text)
    if not name or name[0].isdigit():
        name = "_" + name
    return name


def sanitize_label(text: str) -> str:
    """A valid label name from any text (no ``:``; never the reserved ``__`` prefix)."""
    name = sanitize_name(text).replace(":", "_")
    while name.startswith("__"):
        name = name[1:]
    return name


def valid_name(name: str) -> bool:
    return bool(_NAME.match(name))


def format_value(value: float) -> str:
    """Prometheus' float text: integers without a fraction, ``+Inf``, ``-Inf``, ``NaN``."""
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    if value == int(value) and abs(value) < 1e15:
        return str(int(value))
    return repr(float(value))


def _escape_label(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _escape_help(text: str) -> str:
    return text.replace("\\", "\\\\").replace("\n", "\\n")


Labels = tuple[tuple[str, str], ...]


@dataclass(slots=True)
class Family:
    """One metric family: its samples are ``(sample name, labels, value)``."""

    name: str
    type: MetricType
    help: str
    samples: dict[tuple[str, Labels], float] = field(default_factory=dict)


class MetricsPage:
    """The families of one scrape, in the order they were first added."""

    def __init__(self) -> None:
        self._families: dict[str, Family] = {}

    def __contains__(self, name: str) -> bool:
        return name in self._families

    def family(self, name: str, type: MetricType, help: str) -> Family | None:
        """The family ``name``, created if new; None if it exists with another type.

        Raises:
            ValueError: ``name`` is not a valid metric name.
        """
        if not _NAME.match(name):
            raise ValueError(f"invalid metric name {name!r}")
        existing = self._families.get(name)
        if existing is None:
            existing = self._families[name] = Family(name, type, help or name)
        elif existing.type != type:
            return None
        return existing

    def add(
        self,
        name: str,
        value: float,
        *,
        type: MetricType = "gauge",
        help: str = "",
        labels: Mapping[str, str] | None = None,
    ) -> bool:
        """Add one sample (a later sample with the same labels replaces it).

        Returns:
            False when the name is taken by a family of another type (nothing added).
        """
        family = self.family(name, type, help)
        if family is None:
            return False
        family.samples[(name, _labels(labels))] = float(value)
        return True

    def add_histogram(
        self,
        name: str,
        buckets: Iterable[tuple[float, float]],
        total: float,
        count: float,
        *,
        help: str = "",
        labels: Mapping[str, str] | None = None,
    ) -> bool:
        """Add a histogram: cumulative ``(upper bound, count)`` buckets, sum and count."""
        family = self.family(name, "histogram", help)
        if family is None:
            return False
        base = dict(labels or {})
        for bound, cumulative in buckets:
            le = {**base, "le": format_value(bound)}
            family.samples[(f"{name}_bucket", _labels(le))] = cumulative
        family.samples[(f"{name}_bucket", _labels({**base, "le": "+Inf"}))] = count
        family.samples[(f"{name}_sum", _labels(base))] = total
        family.samples[(f"{name}_count", _labels(base))] = count
        return True

    def families(self) -> list[Family]:
        return list(self._families.values())

    def render(self) -> bytes:
        """The page in the Prometheus text format."""
        out: list[str] = []
        for family in self._families.values():
            out.append(f"# HELP {family.name} {_escape_help(family.help)}\n")
            out.append(f"# TYPE {family.name} {family.type}\n")
            for (sample, labels), value in family.samples.items():
                if labels:
                    text = ",".join(f'{k}="{_escape_label(v)}"' for k, v in labels)
                    out.append(f"{sample}{{{text}}} {format_value(value)}\n")
                else:
                    out.append(f"{sample} {format_value(value)}\n")
        return "".join(out).encode()


def _labels(labels: Mapping[str, str] | None) -> Labels:
    if not labels:
        return ()
    for key in labels:
        if not _LABEL.match(key):
            raise ValueError(f"invalid label name {key!r}")
    return tuple(sorted((k, str(v)) for k, v in labels.items()))
