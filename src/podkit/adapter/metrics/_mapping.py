"""Map a JSON document (an HTTP endpoint's or a command's output) to metrics, as json_exporter.

The map file (YAML)::

    metrics:
      - name: app_requests_total     # the metric (the adapter's --prefix goes in front)
        path: stats.requests         # dotted path; a number indexes a list
        type: counter                # gauge (default), counter or untyped
        help: Requests served.
      - name: app_queue_depth
        path: queues.*               # '*': every element of a list or value of a mapping
        value: depth                 # path from each element to the number (default: itself)
        labels:
          queue: "{name}"            # a path from the element, in braces...
          id: "{@key}"               # ...or the element's key (mapping) or index (list)
          env: production            # or a literal

A value is a number, a boolean (1/0) or a string holding a number; anything else is skipped
and counted in ``<prefix>_mapping_skipped_total``. A command's output that is not JSON is
read as ``key=value`` (or ``key: value``) lines, one flat mapping, so ``path: queue.depth``
finds the key ``queue.depth`` whole.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from podkit.adapter.metrics._exposition import MetricsPage, valid_name

MAX_MAPPINGS = 1000  # metrics in one map file
MAX_SAMPLES = 100_000  # samples one scrape may produce from a map (a runaway '*' stops here)


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class MetricMapping(_Model):
    """One metric taken from the document."""

    name: str = Field(description="Metric name (the --prefix goes in front).")
    path: str = Field(min_length=1, description="Dotted path; '*' iterates.")
    value: str | None = Field(default=None, description="Path from each element to the value.")
    type: Literal["gauge", "counter", "untyped"] = "gauge"
    help: str = ""
    labels: dict[str, str] = Field(default_factory=dict)

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        if not valid_name(value):
            raise ValueError("a metric name is letters, digits, '_' and ':' (not first a digit)")
        return value

    @field_validator("labels")
    @classmethod
    def _labels(cls, value: dict[str, str]) -> dict[str, str]:
        for key in value:
            if not key.replace("_", "a").isalnum() or key[0].isdigit() or key.startswith("__"):
                raise ValueError(f"bad label name {key!r}")
        return value


class MetricsMap(_Model):
    """The map file of ``--json`` and ``--command``."""

    metrics: list[MetricMapping] = Field(min_length=1, max_length=MAX_MAPPINGS)


def parse_output(text: str) -> Any:
    """A command's output: JSON when it parses, else ``key=value`` / ``key: value`` lines."""
    stripped = text.strip()
    if stripped.startswith(("{", "[")):
        try:
            return json.loads(stripped)
        except ValueError:
            pass
    out: dict[str, str] = {}
    for line in stripped.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        for sep in ("=", ":"):
            key, found, value = line.partition(sep)
            if found and key.strip():
                out[key.strip()] = value.strip()
                break
    return out


def _walk(node: Any, parts: list[str], key: str | None) -> Iterator[tuple[Any, str | None]]:
    """Every ``(element, its key)`` that ``parts`` leads to from ``node``."""
    if not parts:
        yield node, key
        return
    if isinstance(node, dict):
        whole = ".".join(parts)
        if len(parts) > 1 and whole in node:  # a flat key with dots in it
            yield node[whole], whole
            return
    head, rest = parts[0], parts[1:]
    if head == "*":
        if isinstance(node, dict):
            for k, v in node.items():
                yield from _walk(v, rest, str(k))
        elif isinstance(node, list):
            for i, v in enumerate(node):
                yield from _walk(v, rest, str(i))
        return
    if isinstance(node, dict) and head in node:
        yield from _walk(node[head], rest, head)
    elif isinstance(node, list) and head.lstrip("-").isdigit():
        index = int(head)
        if -len(node) <= index < len(node):
            yield from _walk(node[index], rest, head)


def _split(path: str) -> list[str]:
    path = path.strip().removeprefix("$").lstrip(".")
    return [p for p in path.replace("[", ".").replace("]", "").split(".") if p]


def _first(node: Any, path: str) -> Any:
    return next(iter(_walk(node, _split(path), None)), (None, None))[0]


def as_number(value: Any) -> float | None:
    """A sample value from JSON: numbers, booleans and numeric strings."""
    if isinstance(value, bool):
        return 1.0 if value else 0.0
    if isinstance(value, int | float):
        return float(value)
    if isinstance(value, str):
        try:
            return float(value.strip())
        except ValueError:
            return None
    return None


def map_document(page: MetricsPage, document: Any, mapping: MetricsMap, *, prefix: str) -> int:
    """Add the mapped metrics of ``document`` to ``page``.

    Returns:
        How many values were skipped (not numbers, or a name clash of types).
    """
    skipped = 0
    samples = 0
    for metric in mapping.metrics:
        name = f"{prefix}_{metric.name}" if prefix else metric.name
        for element, key in _walk(document, _split(metric.path), None):
            if samples >= MAX_SAMPLES:
                return skipped + 1
            raw = element if metric.value is None else _first(element, metric.value)
            value = as_number(raw)
            if value is None:
                skipped += 1
                continue
            labels: dict[str, str] = {}
            for label, template in metric.labels.items():
                if template == "{@key}":
                    labels[label] = key or ""
                elif template.startswith("{") and template.endswith("}"):
                    found = _first(element, template[1:-1])
                    labels[label] = "" if found is None else str(found)
                else:
                    labels[label] = template
            if page.add(name, value, type=metric.type, help=metric.help, labels=labels):
                samples += 1
            else:
                skipped += 1
    return skipped
