"""Container logs kept by the supervisor: one file per container, rotated by size.

Theory of operation. The supervisor writes every line a container prints to
``logs/POD-R.CONTAINER.log`` under the state directory, each line led by the time it was read
(UTC, ISO 8601 with microseconds, fixed width, then one space)::

    2026-12-07T03:04:01.123456Z {"ts": ..., "msg": "listening"}

When a write would take the file past ``max_bytes``, the file is renamed to ``.log.1``
(replacing the previous one) and a new file begins, as Docker's ``json-file`` driver does with
``max-size`` and ``max-file: 2``: a container keeps at most twice ``max_bytes`` on disk.

Because every stamp has the same width and the same zone, lines compare by time as plain
strings: ``--since`` is a string comparison, and lines of several containers merge in order by
sorting on the stamp. ``podkit logs`` reads the files directly, so it works while the pods run
and after they stopped; ``-f`` follows a file through rotation by keeping the old one open
until it has read it to the end.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import IO

from podkit.errors import ConfigError, UsageError
from podkit.runtime.config import parse_duration

DEFAULT_LOG_MAX_BYTES = 10 << 20  # per container and file; Docker users set max-size 10m most
ROTATED_SUFFIX = ".1"
STAMP_WIDTH = len("2026-12-07T03:04:01.123456Z")
LOG_SUFFIX = ".log"


def stamp(wall: float) -> str:
    """The fixed-width UTC time that leads each stored line."""
    return datetime.fromtimestamp(wall, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def log_name(pod: str, replica: int, container: str) -> str:
    """The file name of one container's log: ``web-2.app.log``."""
    return f"{pod}-{replica}.{container}{LOG_SUFFIX}"


class RotatingLog:
    """Appends stamped lines to one container's log file, rotating it by size.

    Args:
        path: the log file (created if missing; appended to if it exists).
        max_bytes: the size at which the file is moved to ``PATH.1`` and a new one begins.
    """

    def __init__(self, path: Path, *, max_bytes: int = DEFAULT_LOG_MAX_BYTES) -> None:
        self.path = path
        self.max_bytes = max_bytes
        self._file: IO[bytes] | None = None
        self._size = 0

    def write(self, line: str, *, wall: float) -> None:
        """Store ``line`` (without its newline) read at ``wall`` (seconds since the epoch)."""
        data = f"{stamp(wall)} {line}\n".encode("utf-8", errors="replace")
        if self._file is None:
            self._open()
        if self._size and self._size + len(data) > self.max_bytes:
            self._rotate()
        assert self._file is not None
        self._file.write(data)
        self._file.flush()
        self._size += len(data)

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None

    def _open(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file = self.path.open("ab")
        self._size = self._file.tell()

    def _rotate(self) -> None:
        self.close()
        os.replace(self.path, self.path.with_name(self.path.name + ROTATED_SUFFIX))
        self._open()

    def __enter__(self) -> RotatingLog:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@dataclass(frozen=True, slots=True, order=True)
class LogSource:
    """One container's log file in the state directory."""

    pod: str
    replica: int
    container: str
    path: Path

    @property
    def label(self) -> str:
        """The prefix ``podkit logs`` shows when it shows several containers."""
        return f"{self.pod}-{self.replica}/{self.container}"


def log_sources(logs_dir: Path) -> list[LogSource]:
    """Every container log in ``logs_dir``, in pod, replica, container order."""
    found: list[LogSource] = []
    try:
        entries = list(logs_dir.iterdir())
    except FileNotFoundError:
        return []
    for entry in entries:
        name = entry.name
        if not name.endswith(LOG_SUFFIX):
            continue
        replica_part, dot, container = name[: -len(LOG_SUFFIX)].partition(".")
        pod, dash, number = replica_part.rpartition("-")
        if not (dot and dash and number.isdigit() and container):
            continue
        found.append(LogSource(pod, int(number), container, entry))
    return sorted(found)


def select_sources(sources: Iterable[LogSource], target: str | None) -> list[LogSource]:
    """The logs a ``podkit logs`` target names: ``POD``, ``POD-R``, ``POD/C`` or ``POD-R/C``.

    A pod name wins over a replica name (a pod may be called ``web-2``).

    Raises:
        UsageError: the target names no container that has a log.
    """
    sources = list(sources)
    if target is None:
        return sources
    who, _, container = target.partition("/")
    pods = {s.pod for s in sources}
    if who in pods:
        chosen = [s for s in sources if s.pod == who]
    else:
        chosen = [s for s in sources if f"{s.pod}-{s.replica}" == who]
    if container:
        chosen = [s for s in chosen if s.container == container]
    if not chosen:
        known = ", ".join(sorted({s.label for s in sources})) or "none yet"
        raise UsageError(f"no logs for {target!r} (containers with logs: {known})")
    return chosen


def split_stamp(raw: str) -> tuple[str, str]:
    """``(stamp, text)`` of a stored line; a line without a stamp sorts first."""
    if len(raw) > STAMP_WIDTH and raw[STAMP_WIDTH] == " " and raw[STAMP_WIDTH - 1] == "Z":
        return raw[:STAMP_WIDTH], raw[STAMP_WIDTH + 1 :]
    return "", raw


def read_lines(source: LogSource, *, since: str = "") -> Iterator[tuple[str, str]]:
    """``(stamp, text)`` of every stored line of ``source`` at or after ``since``, oldest first.

    Reads the rotated file first, then the current one.
    """
    for path in (source.path.with_name(source.path.name + ROTATED_SUFFIX), source.path):
        try:
            with path.open("rb") as file:
                for raw in file:
                    when, text = split_stamp(raw.decode("utf-8", errors="replace").rstrip("\n"))
                    if when >= since:
                        yield when, text
        except FileNotFoundError:
            continue


def merged(
    sources: Iterable[LogSource], *, since: str = "", tail: int | None = None
) -> list[tuple[str, LogSource, str]]:
    """The stored lines of several containers, in time order (each container's own order kept).

    Args:
        tail: keep only the last ``tail`` lines of each container.
    """
    rows: list[tuple[str, int, LogSource, str]] = []
    for source in sources:
        lines = list(read_lines(source, since=since))
        if tail is not None:
            lines = lines[-tail:] if tail else []
        rows += [(when, i, source, text) for i, (when, text) in enumerate(lines)]
    rows.sort(key=lambda row: (row[0], row[2], row[1]))
    return [(when, source, text) for when, _, source, text in rows]


class LogFollower:
    """Reads what is appended to one container's log, across rotations (``podkit logs -f``).

    Start it at the end of the file (after printing what was there); :meth:`read_new` returns
    the complete lines written since. When the file was rotated, the old file (still open) is
    read to its end before the new one is opened.
    """

    def __init__(self, source: LogSource, *, at_end: bool = True) -> None:
        self.source = source
        self._file: IO[bytes] | None = None
        self._inode: int | None = None
        self._partial = b""
        self._open(at_end=at_end)

    def _open(self, *, at_end: bool) -> None:
        try:
            file = self.source.path.open("rb")
        except FileNotFoundError:
            return
        self._file = file
        self._inode = os.fstat(file.fileno()).st_ino
        if at_end:
            file.seek(0, os.SEEK_END)

    def read_new(self) -> list[tuple[str, str]]:
        """``(stamp, text)`` of each complete line written since the last call."""
        lines: list[tuple[str, str]] = []
        if self._file is None:
            self._open(at_end=False)
            if self._file is None:
                return lines
        lines += self._drain()
        try:
            inode = self.source.path.stat().st_ino
        except FileNotFoundError:
            inode = None
        if inode is not None and inode != self._inode:
            # Rotated: the old file is complete now; read its rest, then begin the new one.
            lines += self._drain()
            self.close()
            self._partial = b""
            self._open(at_end=False)
            if self._file is not None:
                lines += self._drain()
        return lines

    def _drain(self) -> list[tuple[str, str]]:
        assert self._file is not None
        data = self._partial + self._file.read()
        *complete, self._partial = data.split(b"\n")
        return [split_stamp(raw.decode("utf-8", errors="replace")) for raw in complete]

    def close(self) -> None:
        if self._file is not None:
            with contextlib.suppress(OSError):
                self._file.close()
            self._file = None


def parse_since(text: str, *, now: float) -> str:
    """The stamp ``--since`` stands for: a duration back from ``now`` (``5m``) or a time
    (``2026-12-07T03:04:01Z``, ``2026-12-07 03:04``; without a zone, UTC).

    Raises:
        UsageError: neither a duration nor a time.
    """
    try:
        return stamp(now - parse_duration(text))
    except ConfigError:
        pass
    try:
        when = datetime.fromisoformat(text.strip())
    except ValueError:
        raise UsageError(
            f"--since: expected a duration such as 30s or 5m, or a time such as "
            f"2026-12-07T03:04:00Z, got {text!r}"
        ) from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return stamp(when.timestamp())
