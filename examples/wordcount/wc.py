"""Handlers of the word count pipeline (pipeline.yaml).

A word is ``re.findall(r"[a-z0-9]+", line.lower())``. The splitter cuts each file into items
of up to LINES_PER_ITEM lines, and the map counts the words of one item before they are
sharded (MapReduce's combiner), so a word travels once per item, not once per occurrence.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterator
from itertools import islice
from typing import Any

WORD = re.compile(r"[a-z0-9]+")
LINES_PER_ITEM = 10_000  # lines of one "lines" item: fewer, larger items cost less to move


def lines(item: dict[str, Any]) -> Iterator[str]:
    """Splitter: a file's lines, LINES_PER_ITEM at a time, as one text each."""
    with open(item["path"], encoding="utf-8", errors="replace") as fh:
        while chunk := list(islice(fh, LINES_PER_ITEM)):
            yield "".join(chunk)


def words(text: str) -> Iterator[dict[str, Any]]:
    """Map (a generator: many outputs): each distinct word of some lines, with its count."""
    for word, n in Counter(WORD.findall(text.lower())).items():
        yield {"word": word, "n": n}


def add(total: int, item: dict[str, Any]) -> int:
    """Reduce: the running count of one word."""
    return total + int(item["n"])
