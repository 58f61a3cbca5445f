"""Handlers of the word count pipeline (pipeline.yaml)."""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

WORD = re.compile(r"[a-z0-9]+")


def lines(item: dict[str, Any]) -> Iterator[str]:
    """Splitter: a file's lines, one item each."""
    with open(item["path"], encoding="utf-8", errors="replace") as fh:
        yield from fh


def words(line: str) -> Iterator[dict[str, Any]]:
    """Map (a generator: many outputs): one item per distinct word of a line, with its count."""
    counts: dict[str, int] = {}
    for word in WORD.findall(line.lower()):
        counts[word] = counts.get(word, 0) + 1
    for word, n in counts.items():
        yield {"word": word, "n": n}


def add(total: int, item: dict[str, Any]) -> int:
    """Reduce: the running count of one word."""
    return total + int(item["n"])
