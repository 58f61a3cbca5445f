"""Handlers of the pipeline benchmarks (bench/pipeline_fanin.py)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any


def fan(seed: dict[str, Any]) -> Iterator[int]:
    """Splitter: ``seed["n"]`` children."""
    yield from range(seed["n"])
