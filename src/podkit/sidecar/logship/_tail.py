"""Which bytes of which files to read next, across rotations and restarts (sans-IO).

Theory of operation. The unit of tailing is a *stream*: the content of one log file from its
first byte, read up to ``read_offset`` and acknowledged by the sink up to ``committed``.
A stream is bound to the file (device, inode) that currently holds that content, which is
not always the file it started in:

* **rotation by rename** (``app.log`` → ``app.log.1``, a new ``app.log`` created): the inode
  keeps the content, so the stream follows the inode and records the new path; the new
  ``app.log`` is a new stream read from 0. A file that no glob matches any more is still read
  to its end, then closed once it has not grown for ``close_after`` seconds;
* **copy-truncate** (the content is copied to ``app.log.1``, then ``app.log`` truncated):
  the inode now holds new content. Seen as a size below ``read_offset`` or a changed
  *fingerprint* (a digest of the first line). The stream is re-bound to the copy — a file
  with the same fingerprint and at least ``read_offset`` bytes — and continues there from
  the same offset; the truncated inode becomes a new stream read from 0. A matched file with
  the fingerprint of a live stream is a copy too and stays *dormant* (unread), so a copy
  made before the truncation is noticed is not shipped twice. Lines written between the
  copy and the truncation are lost by copy-truncate itself; that is why rename is better;
* **restart**: the checkpoint lists (path, device, inode, fingerprint, committed offset) per
  stream; each is re-bound to the file with that inode and fingerprint, or failing that to a
  file with that fingerprint (a copy made while the shipper was down).

When no matched file fits, the tracker asks the shell to look in the stream's directory
(:class:`Seek`) and the shell answers with :meth:`TailTracker.resolve`. The tracker never
touches the file system and never reads a clock: the shell passes listings and ``now``.
"""

from __future__ import annotations

import enum
import hashlib
import os
from dataclasses import dataclass, field
from typing import Final

DEFAULT_CLOSE_AFTER: Final = 5.0  # a writer reopens its log within seconds of a rotation signal
DEFAULT_MAX_LINE_BYTES: Final = 1 << 20  # longer lines are cut: memory stays bounded per file
FINGERPRINT_MAX_BYTES: Final = 4096  # a first line longer than this is fingerprinted by prefix


@dataclass(frozen=True, slots=True)
class FileStat:
    """What the shell saw of one file: where, which inode, how big, and its fingerprint.

    ``fingerprint`` is None while the file has no complete first line (see
    :func:`fingerprint_of`).
    """

    path: str
    dev: int
    ino: int
    size: int
    fingerprint: str | None

    @property
    def key(self) -> tuple[int, int]:
        return (self.dev, self.ino)


@dataclass(frozen=True, slots=True)
class CheckpointEntry:
    """One stream as stored in the state file: resume ``path``'s content at ``offset``."""

    path: str
    dev: int
    ino: int
    fingerprint: str | None
    offset: int


class StreamState(enum.Enum):
    PENDING = "pending"  # restored from a checkpoint, not yet found
    BOUND = "bound"  # reading from a file
    ORPHAN = "orphan"  # its file now holds other content; looking for a copy
    CLOSED = "closed"  # no more input; kept until every line read was acknowledged


_TRANSITIONS: Final[dict[StreamState, frozenset[StreamState]]] = {
    StreamState.PENDING: frozenset({StreamState.BOUND, StreamState.ORPHAN, StreamState.CLOSED}),
    StreamState.BOUND: frozenset({StreamState.BOUND, StreamState.ORPHAN, StreamState.CLOSED}),
    StreamState.ORPHAN: frozenset({StreamState.BOUND, StreamState.CLOSED}),
    StreamState.CLOSED: frozenset(),
}


class IllegalStreamTransition(RuntimeError):
    """A bug: the tracker tried a transition its table forbids."""


@dataclass(slots=True)
class Stream:
    """One file's content as it is being shipped."""

    id: int
    path: str
    dev: int
    ino: int
    fingerprint: str | None
    read_offset: int
    committed: int
    state: StreamState
    matched: bool = True
    unmatched_since: float | None = None
    at_eof: bool = False

    @property
    def key(self) -> tuple[int, int]:
        return (self.dev, self.ino)

    def move(self, target: StreamState) -> None:
        if target not in _TRANSITIONS[self.state]:
            raise IllegalStreamTransition(f"stream {self.id}: {self.state.value} -> {target.value}")
        self.state = target


@dataclass(frozen=True, slots=True)
class Open:
    """Open ``path`` (check it is still ``dev``/``ino``) for ``stream`` and read from ``offset``.

    If the stream already had a file open, close that one first.
    """

    stream: int
    path: str
    dev: int
    ino: int
    offset: int


@dataclass(frozen=True, slots=True)
class Close:
    """Close the file of ``stream``: it will not be read again."""

    stream: int
    path: str


@dataclass(frozen=True, slots=True)
class Seek:
    """Look in ``directory`` for the content of ``stream`` and answer with ``resolve``.

    Prefer the file with inode ``dev``/``ino`` if it still has ``fingerprint``; else take a
    file with ``fingerprint`` and at least ``min_size`` bytes that no stream is reading.
    """

    stream: int
    directory: str
    dev: int
    ino: int
    fingerprint: str | None
    min_size: int


@dataclass(frozen=True, slots=True)
class Rotated:
    """``stream`` moved: renamed (``how="rename"``) or continued in a copy (``"copy"``)."""

    stream: int
    old_path: str
    new_path: str
    how: str


@dataclass(frozen=True, slots=True)
class Truncated:
    """The file at ``path`` was truncated; ``copy_found`` tells whether its content went on."""

    stream: int
    path: str
    copy_found: bool


Action = Open | Close | Seek | Rotated | Truncated


@dataclass(slots=True)
class TailTracker:
    """The streams being shipped and what to do when the shell sees the files again.

    Args:
        close_after: seconds a file no glob matches any more is kept open after its end.
    """

    close_after: float = DEFAULT_CLOSE_AFTER
    streams: dict[int, Stream] = field(default_factory=dict)
    dormant: dict[tuple[int, int], int] = field(default_factory=dict)
    _next_id: int = 1

    def _new_stream(
        self, stat: FileStat, *, offset: int, state: StreamState = StreamState.BOUND
    ) -> Stream:
        stream = Stream(
            id=self._next_id,
            path=stat.path,
            dev=stat.dev,
            ino=stat.ino,
            fingerprint=stat.fingerprint,
            read_offset=offset,
            committed=offset,
            state=state,
        )
        self._next_id += 1
        self.streams[stream.id] = stream
        return stream

    def restore(self, entries: list[CheckpointEntry]) -> None:
        """Load a checkpoint: each entry becomes a PENDING stream resumed at its offset."""
        for entry in entries:
            stat = FileStat(entry.path, entry.dev, entry.ino, 0, entry.fingerprint)
            self._new_stream(stat, offset=entry.offset, state=StreamState.PENDING)

    def observe(self, listing: list[FileStat], *, now: float) -> list[Action]:
        """Compare what the globs match now with the streams and decide what to open/close.

        Args:
            listing: every file the globs match now (one entry per path).
            now: the shell's monotonic clock, for ``close_after``.

        Returns:
            Actions for the shell, in order.
        """
        actions: list[Action] = []
        by_key: dict[tuple[int, int], FileStat] = {}
        for stat in listing:
            by_key.setdefault(stat.key, stat)
        claimed: set[tuple[int, int]] = set()

        # 1. Bound streams: follow renames, notice truncation, age unmatched files.
        for stream in list(self.streams.values()):
            if stream.state is not StreamState.BOUND:
                continue
            seen = by_key.get(stream.key)
            if seen is None:
                stream.matched = False
                if stream.unmatched_since is None:
                    stream.unmatched_since = now
                elif stream.at_eof and now - stream.unmatched_since >= self.close_after:
                    stream.move(StreamState.CLOSED)
                    actions.append(Close(stream.id, stream.path))
                continue
            stat = seen
            stream.matched = True
            stream.unmatched_since = None
            content_changed = (
                stream.fingerprint is not None and stat.fingerprint != stream.fingerprint
            )
            if content_changed or stat.size < stream.read_offset:
                stream.move(StreamState.ORPHAN)
                actions.append(Close(stream.id, stream.path))
                continue  # the file is left unclaimed: step 3 makes it a new stream
            claimed.add(stat.key)
            if stream.fingerprint is None:
                stream.fingerprint = stat.fingerprint
            if stat.path != stream.path:
                actions.append(Rotated(stream.id, stream.path, stat.path, "rename"))
                stream.path = stat.path

        # 2. Streams without a file: the same inode and content, else a copy of the content.
        for stream in list(self.streams.values()):
            if stream.state not in (StreamState.PENDING, StreamState.ORPHAN):
                continue
            was_orphan = stream.state is StreamState.ORPHAN
            old_path = stream.path
            found = self._find(stream, by_key, claimed)
            if found is not None:
                claimed.add(found.key)
                self.dormant.pop(found.key, None)
                actions.extend(self._bind(stream, found))
                if was_orphan:
                    actions.append(Truncated(stream.id, old_path, copy_found=True))
            else:
                actions.append(
                    Seek(
                        stream.id,
                        os.path.dirname(stream.path) or ".",
                        stream.dev,
                        stream.ino,
                        stream.fingerprint,
                        stream.read_offset,
                    )
                )

        # 3. Files no stream holds: copies of a live stream stay dormant; the rest are new.
        live = {
            s.fingerprint: s.id
            for s in self.streams.values()
            if s.state is StreamState.BOUND and s.fingerprint is not None
        }
        tracked = {s.key for s in self.streams.values() if s.state is StreamState.BOUND}
        for stat in listing:
            if stat.key in claimed or stat.key in tracked:
                continue
            claimed.add(stat.key)
            if stat.fingerprint is not None and stat.fingerprint in live:
                self.dormant[stat.key] = live[stat.fingerprint]
                continue
            if stat.key in self.dormant:
                continue
            stream = self._new_stream(stat, offset=0)
            actions.append(Open(stream.id, stat.path, stat.dev, stat.ino, 0))
        listed = set(by_key)
        for key in list(self.dormant):
            if key not in listed:
                del self.dormant[key]
        return actions

    def _find(
        self,
        stream: Stream,
        by_key: dict[tuple[int, int], FileStat],
        claimed: set[tuple[int, int]],
    ) -> FileStat | None:
        same = by_key.get(stream.key)
        if (
            same is not None
            and same.key not in claimed
            and stream.state is StreamState.PENDING
            and same.size >= stream.read_offset
            and (stream.fingerprint is None or same.fingerprint == stream.fingerprint)
        ):
            return same
        if stream.fingerprint is None:
            return None
        for stat in by_key.values():
            if (
                stat.key not in claimed
                and stat.key != stream.key
                and stat.fingerprint == stream.fingerprint
                and stat.size >= stream.read_offset
            ):
                return stat
        return None

    def _bind(self, stream: Stream, stat: FileStat) -> list[Action]:
        actions: list[Action] = []
        if stat.key != stream.key:
            actions.append(Rotated(stream.id, stream.path, stat.path, "copy"))
        elif stat.path != stream.path:
            actions.append(Rotated(stream.id, stream.path, stat.path, "rename"))
        stream.move(StreamState.BOUND)
        stream.path, stream.dev, stream.ino = stat.path, stat.dev, stat.ino
        stream.fingerprint = stream.fingerprint or stat.fingerprint
        stream.matched = True
        stream.unmatched_since = None
        stream.at_eof = False
        actions.append(Open(stream.id, stat.path, stat.dev, stat.ino, stream.read_offset))
        return actions

    def resolve(self, stream_id: int, found: FileStat | None, *, matched: bool) -> list[Action]:
        """Answer a :class:`Seek`: the file that holds the stream's content, or None.

        Args:
            matched: whether a glob matches ``found`` (if not, it is read to its end and closed).

        Returns:
            Actions for the shell: open the file, or nothing when the content is gone.
        """
        stream = self.streams.get(stream_id)
        if stream is None or stream.state not in (StreamState.PENDING, StreamState.ORPHAN):
            return []
        was_orphan = stream.state is StreamState.ORPHAN
        old_path = stream.path
        if found is None:
            stream.move(StreamState.CLOSED)
            return [Truncated(stream.id, old_path, copy_found=False)] if was_orphan else []
        actions = self._bind(stream, found)
        stream.matched = matched
        if not matched:
            stream.unmatched_since = None  # aged from the next observe on
        if was_orphan:
            actions.append(Truncated(stream.id, old_path, copy_found=True))
        return actions

    def bound_keys(self) -> set[tuple[int, int]]:
        """The (device, inode) of every file a stream is reading."""
        return {s.key for s in self.streams.values() if s.state is StreamState.BOUND}

    def unbind(self, stream_id: int) -> None:
        """The shell could not open the file it was told to (it moved meanwhile): look again."""
        stream = self.streams.get(stream_id)
        if stream is not None and stream.state is StreamState.BOUND:
            stream.move(StreamState.ORPHAN)

    def advance(self, stream_id: int, offset: int, *, at_eof: bool) -> None:
        """The shell handed every line up to ``offset`` to the pipeline."""
        stream = self.streams[stream_id]
        stream.read_offset = offset
        stream.at_eof = at_eof

    def commit(self, marks: dict[int, int]) -> None:
        """The sink acknowledged every line up to ``marks[stream]`` of each stream."""
        for stream_id, offset in marks.items():
            stream = self.streams.get(stream_id)
            if stream is not None and offset > stream.committed:
                stream.committed = offset
        for stream in list(self.streams.values()):
            if stream.state is StreamState.CLOSED and stream.committed >= stream.read_offset:
                del self.streams[stream.id]

    def reading(self) -> list[Stream]:
        """The streams with an open file, in the order they were found."""
        return [s for s in self.streams.values() if s.state is StreamState.BOUND]

    def checkpoint(self) -> list[CheckpointEntry]:
        """The state file's content: each stream's file and its acknowledged offset."""
        return [
            CheckpointEntry(s.path, s.dev, s.ino, s.fingerprint, s.committed)
            for s in self.streams.values()
            if not (s.state is StreamState.CLOSED and s.committed >= s.read_offset)
        ]


class LineSplitter:
    """Cuts a byte stream into lines, keeping the unfinished last line for the next chunk.

    Args:
        max_line: a line that grows past this many bytes is cut there (and counted).
    """

    __slots__ = ("cut_lines", "max_line", "pending")

    def __init__(self, *, max_line: int = DEFAULT_MAX_LINE_BYTES) -> None:
        self.max_line = max_line
        self.pending = b""
        self.cut_lines = 0

    def feed(self, data: bytes) -> list[bytes]:
        """Complete lines (without ``\\n``) in ``pending + data``."""
        if self.pending:
            data = self.pending + data
        lines = data.split(b"\n")
        self.pending = lines.pop()
        if len(self.pending) >= self.max_line:
            lines.append(self.pending)
            self.pending = b""
            self.cut_lines += 1
        return lines

    def flush(self) -> list[bytes]:
        """The unfinished last line, as a line (its file will not grow any more)."""
        rest, self.pending = self.pending, b""
        return [rest] if rest else []

    def reset(self) -> None:
        self.pending = b""


def fingerprint_of(head: bytes) -> str | None:
    """The fingerprint of a file whose first bytes are ``head`` (at least up to the first
    newline, or :data:`FINGERPRINT_MAX_BYTES`): its first line, hex-encoded digest.

    Returns:
        None while the file has no complete first line and is shorter than the limit.
    """
    end = head.find(b"\n")
    if end < 0:
        if len(head) < FINGERPRINT_MAX_BYTES:
            return None
        end = FINGERPRINT_MAX_BYTES
    return hashlib.blake2b(head[: end + 1], digest_size=12).hexdigest()
