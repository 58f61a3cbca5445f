"""Handlers of issue #21's pipeline file (pipeline.yaml): word counts per job.

The job of a file is the name of the directory it is in. ``lines`` cuts a file into texts of
up to LINES_PER_ITEM lines, ``words`` yields each distinct word of one text with its count
(MapReduce's combiner), and the reduce groups by ``$.job``: ``add`` folds every word item of a
job into one ``{word: count}`` accumulator. A word is ``re.findall(r"[a-z0-9]+", line.lower())``.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterator
from itertools import islice
from pathlib import Path
from typing import Any

WORD = re.compile(r"[a-z0-9]+")
LINES_PER_ITEM = 50  # small, so a test corpus makes many items and batches


def lines(item: dict[str, Any]) -> Iterator[dict[str, str]]:
    """Splitter: a file's lines, LINES_PER_ITEM at a time, with the file's job."""
    job = Path(item["path"]).parent.name
    with open(item["path"], encoding="utf-8") as fh:
        while chunk := list(islice(fh, LINES_PER_ITEM)):
            yield {"job": job, "text": "".join(chunk)}


def words(item: dict[str, str]) -> Iterator[dict[str, Any]]:
    """Map (a generator): each distinct word of one text, with its count and job."""
    for word, n in Counter(WORD.findall(item["text"].lower())).items():
        yield {"job": item["job"], "word": word, "n": n}


def add(counts: dict[str, int] | None, item: dict[str, Any]) -> dict[str, int]:
    """Reduce: a job's counts so far (None before its first word) plus one word's count."""
    counts = {} if counts is None else counts
    counts[item["word"]] = counts.get(item["word"], 0) + int(item["n"])
    return counts
