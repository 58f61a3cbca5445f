"""The log shipper's shell: poll the globs, read new lines, parse, batch, deliver, checkpoint.

Theory of operation. Two tasks share a bounded queue of batches. The *reader* polls the globs
every ``poll`` seconds, hands the listing to the :class:`~._tail.TailTracker` (which decides
what to open, follow or close), reads every open file to its end in chunks, parses each line
into one JSON record and cuts batches by size or age. When the queue is full the reader waits:
reading pauses instead of memory growing. The *sender* delivers one batch at a time, retrying
with exponential backoff, and only after the sink acknowledged a batch moves the checkpoint
(``--state``, replaced atomically) to the end of that batch. So after a crash at most the
batch in flight, acknowledged but not yet checkpointed, is sent again; nothing read is lost.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import glob
import json
import os
import random
import stat as stat_module
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from fnmatch import fnmatch
from pathlib import Path
from typing import Any, Final

from prometheus_client import CollectorRegistry, Counter, Gauge

from podkit.adapter.logs.parsers import FORMATS, Parser, make_parser, parse_line
from podkit.adapter.logs.schema import rfc3339, to_ecs, to_otel
from podkit.errors import ConfigError
from podkit.runtime.logging import get_logger
from podkit.sidecar._files import atomic_write
from podkit.sidecar._retry import Backoff
from podkit.sidecar.logship._batch import (
    DEFAULT_BATCH_LINES,
    DEFAULT_BUFFER_BATCHES,
    DEFAULT_FLUSH_AFTER,
    Batch,
    Batcher,
)
from podkit.sidecar.logship._sinks import (
    DEFAULT_SINK_TIMEOUT,
    Sink,
    SinkRejected,
    SinkUnavailable,
)
from podkit.sidecar.logship._tail import (
    DEFAULT_CLOSE_AFTER,
    DEFAULT_MAX_LINE_BYTES,
    FINGERPRINT_MAX_BYTES,
    CheckpointEntry,
    Close,
    FileStat,
    LineSplitter,
    Open,
    Rotated,
    Seek,
    StreamState,
    TailTracker,
    Truncated,
    fingerprint_of,
)

DEFAULT_POLL: Final = 0.25  # new lines are seen within a quarter second
READ_CHUNK: Final = 1 << 20  # 1 MiB per read: large enough to amortise, small enough to share
SKIPPED_SUFFIXES: Final = (".gz", ".bz2", ".xz", ".zst", ".zip", ".lz4")  # rotated+compressed
STATE_VERSION: Final = 1

try:  # orjson is an optional accelerator (``podkit[fast]``); the output is the same JSON
    import orjson

    def _encode(record: dict[str, Any]) -> bytes:
        return orjson.dumps(record, option=orjson.OPT_NON_STR_KEYS)

    ENCODER = "orjson"
except ImportError:  # pragma: no cover - depends on the installed extras
    _json_encode = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), default=str).encode

    def _encode(record: dict[str, Any]) -> bytes:
        return _json_encode(record).encode()

    ENCODER = "json"


SCHEMAS: Final = ("podkit", "otel", "ecs")


@dataclass(frozen=True, slots=True)
class LogshipConfig:
    """Everything ``podkit logship`` is told on its command line.

    Attributes:
        paths: globs of the files to tail (``**`` matches directories recursively).
        format: a parser name from :data:`~podkit.adapter.logs.parsers.FORMATS`.
        state: checkpoint file; None keeps offsets in memory only.
        batch: records per batch. flush: seconds before a partial batch is sent.
        poll: seconds between looks at the globs once every file is read to its end.
        buffer_batches: full batches that may wait for the sink before reading pauses.
        close_after: seconds a file no glob matches is kept open after its end.
        give_up_after: seconds a batch is retried before it is dropped (and counted);
            None retries forever.
        backoff: delays between retries of a batch (``--retry-max`` is its cap).
        schema: ``podkit`` (the record below), ``otel`` (OpenTelemetry log data model) or
            ``ecs`` (Elastic Common Schema), as ``podkit adapt logs`` writes them, with the
            file in ``log.file.path`` and the offset in ``log.offset``.
    """

    paths: tuple[str, ...]
    format: str = "auto"
    state: str | None = None
    batch: int = DEFAULT_BATCH_LINES
    flush: float = DEFAULT_FLUSH_AFTER
    poll: float = DEFAULT_POLL
    buffer_batches: int = DEFAULT_BUFFER_BATCHES
    close_after: float = DEFAULT_CLOSE_AFTER
    max_line: int = DEFAULT_MAX_LINE_BYTES
    give_up_after: float | None = None
    sink_timeout: float = DEFAULT_SINK_TIMEOUT
    backoff: Backoff = field(default_factory=Backoff)
    schema: str = "podkit"

    def __post_init__(self) -> None:
        if self.schema not in SCHEMAS:
            raise ConfigError(
                f"unknown schema {self.schema!r}: expected one of {', '.join(SCHEMAS)}",
                path="--schema",
            )
        if not self.paths:
            raise ConfigError("give at least one --path GLOB", path="--path")
        for pattern in self.paths:
            if not glob.has_magic(pattern) and os.path.isdir(pattern):
                example = os.path.join(pattern, "*.log")
                raise ConfigError(
                    f"{pattern} is a directory: give a glob of its files, such as {example!r}",
                    path="--path",
                )
        if self.format not in FORMATS:
            raise ConfigError(
                f"unknown format {self.format!r}: expected one of {', '.join(FORMATS)}",
                path="--format",
            )
        if self.batch < 1:
            raise ConfigError("must be at least 1", path="--batch")
        if self.buffer_batches < 1:
            raise ConfigError("must be at least 1", path="--buffer-batches")
        if self.poll <= 0:
            raise ConfigError("must be more than 0", path="--poll")
        if self.backoff.maximum <= 0:
            raise ConfigError("must be more than 0", path="--retry-max")


@dataclass(frozen=True, slots=True)
class StreamInfo:
    path: str
    state: str
    read_offset: int
    committed: int


@dataclass(frozen=True, slots=True)
class LogshipStatistics:
    """A snapshot of the shipper."""

    lines_read: int
    lines_shipped: int
    lines_dropped: int
    batches_buffered: int
    sink_up: bool
    last_error: str | None
    streams: tuple[StreamInfo, ...]
    retry_delay: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "lines_read": self.lines_read,
            "lines_shipped": self.lines_shipped,
            "lines_dropped": self.lines_dropped,
            "batches_buffered": self.batches_buffered,
            "sink_up": self.sink_up,
            "last_error": self.last_error,
            "retry_delay": self.retry_delay,
            "streams": [
                {
                    "path": s.path,
                    "state": s.state,
                    "read_offset": s.read_offset,
                    "committed": s.committed,
                }
                for s in self.streams
            ],
        }


class _Metrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.read = Counter("logship_lines_read", "Lines read from files.", registry=registry)
        self.shipped = Counter(
            "logship_lines_shipped", "Lines the sink acknowledged.", registry=registry
        )
        self.batches = Counter(
            "logship_batches_shipped", "Batches the sink acknowledged.", registry=registry
        )
        self.failures = Counter(
            "logship_send_failures",
            "Failed deliveries of a batch, by kind (unavailable: retried; rejected: dropped).",
            ["kind"],
            registry=registry,
        )
        self.dropped = Counter(
            "logship_lines_dropped",
            "Lines given up on, by reason (rejected by the sink, retried past --give-up-after).",
            ["reason"],
            registry=registry,
        )
        self.unparsed = Counter(
            "logship_lines_unparsed", "Lines no parser understood (shipped raw).", registry=registry
        )
        self.cut = Counter(
            "logship_lines_cut", "Lines longer than the limit, cut in pieces.", registry=registry
        )
        self.rotations = Counter(
            "logship_rotations",
            "Files followed through rotation, by how.",
            ["how"],
            registry=registry,
        )
        self.truncations = Counter(
            "logship_truncations",
            "Files found truncated, by whether their content was found in a copy.",
            ["copy_found"],
            registry=registry,
        )
        self.checkpoint_failures = Counter(
            "logship_checkpoint_failures",
            "Checkpoint writes that failed (a restart then re-sends more than one batch).",
            registry=registry,
        )
        self.buffered = Gauge(
            "logship_buffered_batches", "Batches waiting for the sink.", registry=registry
        )
        self.open_files = Gauge("logship_open_files", "Files being read.", registry=registry)
        self.sink_up = Gauge(
            "logship_sink_up", "1 when the last delivery succeeded.", registry=registry
        )
        self.retry_delay = Gauge(
            "logship_retry_delay_seconds",
            "Seconds the batch being retried waits before its next attempt (0: none failing).",
            registry=registry,
        )
        self.lag = Gauge(
            "logship_unacknowledged_bytes",
            "Bytes read from files but not yet acknowledged by the sink.",
            registry=registry,
        )


def read_checkpoint(path: str) -> list[CheckpointEntry]:
    """The streams stored in a state file (an absent file is an empty checkpoint).

    Raises:
        ConfigError: the file exists but is not a checkpoint written by logship.
    """
    try:
        raw = Path(path).read_bytes()
    except FileNotFoundError:
        return []
    except OSError as exc:
        raise ConfigError(f"cannot read: {exc.strerror or exc}", source=path) from exc
    try:
        data = json.loads(raw)
        if data.get("version") != STATE_VERSION:
            raise ValueError(f"unknown version {data.get('version')!r}")
        return [
            CheckpointEntry(
                path=str(item["path"]),
                dev=int(item["dev"]),
                ino=int(item["ino"]),
                fingerprint=None if item["fingerprint"] is None else str(item["fingerprint"]),
                offset=int(item["offset"]),
            )
            for item in data["files"]
        ]
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise ConfigError(f"not a logship state file: {exc}", source=path) from exc


def write_checkpoint(path: str, entries: list[CheckpointEntry]) -> None:
    """Replace the state file atomically with ``entries``."""
    body = {
        "version": STATE_VERSION,
        "files": [
            {
                "path": e.path,
                "dev": e.dev,
                "ino": e.ino,
                "fingerprint": e.fingerprint,
                "offset": e.offset,
            }
            for e in entries
        ],
    }
    atomic_write(path, json.dumps(body, indent=1).encode() + b"\n")


def why_unmatched(pattern: str) -> str | None:
    """Why the glob ``pattern`` matches no regular file now (None when it matches one): the
    directory it looks in is missing, or nothing there matches yet."""
    for path in glob.iglob(pattern, recursive=True):
        if os.path.isfile(path):
            return None
    parts = Path(pattern).parts
    fixed = Path(*parts[: next((i for i, p in enumerate(parts) if glob.has_magic(p)), -1)])
    if glob.has_magic(pattern) and str(fixed) not in ("", ".") and not fixed.is_dir():
        return f"its directory {fixed} does not exist"
    if not glob.has_magic(pattern) and not Path(pattern).parent.is_dir():
        return f"its directory {Path(pattern).parent} does not exist"
    return "no file matches it yet"


def _stat_file(path: str) -> FileStat | None:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    except OSError:
        return None
    try:
        info = os.fstat(fd)
        if not stat_module.S_ISREG(info.st_mode):
            return None
        head = os.pread(fd, FINGERPRINT_MAX_BYTES, 0)
    except OSError:
        return None
    finally:
        os.close(fd)
    return FileStat(path, info.st_dev, info.st_ino, info.st_size, fingerprint_of(head))


class LogShipper:
    """Tails files into a sink with checkpointed offsets.

    Args:
        config: what to tail and how.
        sink: where batches go (see :func:`~._sinks.open_sink`); closed by the caller.
        registry: where to register metrics (a private registry when None).
        clock: monotonic clock (injectable for tests).
    """

    def __init__(
        self,
        config: LogshipConfig,
        sink: Sink,
        *,
        registry: CollectorRegistry | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.config = config
        self.sink = sink
        self.clock = clock
        # Source times without a zone (RFC 3164 syslog) are this machine's local time.
        self._zone = datetime.datetime.now().astimezone().tzinfo or datetime.UTC
        self.log = get_logger("podkit.logship")
        self.metrics = _Metrics(registry if registry is not None else CollectorRegistry())
        self.tracker = TailTracker(close_after=config.close_after)
        self.batcher = Batcher(size=config.batch, flush_after=config.flush)
        self.queue: asyncio.Queue[Batch | None] = asyncio.Queue(maxsize=config.buffer_batches)
        self._fds: dict[int, int] = {}
        self._splitters: dict[int, LineSplitter] = {}
        self._parsers: dict[int, Parser] = {}
        self._lines_read = 0
        self._lines_shipped = 0
        self._lines_dropped = 0
        self._sink_up = True
        self._last_error: str | None = None
        self._retry_delay = 0.0
        self._wakeup = asyncio.Event()
        self._random = random.Random()
        if config.state is not None:
            self.tracker.restore(read_checkpoint(config.state))

    # -- public -------------------------------------------------------------------------

    def statistics(self) -> LogshipStatistics:
        """A snapshot of counters and of every stream's offsets."""
        return LogshipStatistics(
            lines_read=self._lines_read,
            lines_shipped=self._lines_shipped,
            lines_dropped=self._lines_dropped,
            batches_buffered=self.queue.qsize(),
            sink_up=self._sink_up,
            last_error=self._last_error,
            streams=tuple(
                StreamInfo(s.path, s.state.value, s.read_offset, s.committed)
                for s in self.tracker.streams.values()
            ),
            retry_delay=self._retry_delay,
        )

    async def serve(self, stopping: asyncio.Event) -> None:
        """Ship until ``stopping`` is set, then send what was read and return.

        On cancellation (a drain that took too long) every batch acknowledged so far is
        already checkpointed; the rest is sent again by the next run.
        """
        try:
            async with asyncio.TaskGroup() as group:
                group.create_task(self._read_loop(stopping), name="logship-reader")
                group.create_task(self._send_loop(), name="logship-sender")
        finally:
            for fd in self._fds.values():
                os.close(fd)
            self._fds.clear()
            self.metrics.open_files.set(0)

    # -- reader -------------------------------------------------------------------------

    async def _read_loop(self, stopping: asyncio.Event) -> None:
        while not stopping.is_set():
            await self._look()
            progressed = await self._read_all()
            now = self.clock()
            due = self.batcher.due_at()
            if due is not None and now >= due:
                await self._emit(self.batcher.cut())
                due = None
            if progressed:
                continue
            timeout = self.config.poll
            if due is not None:
                timeout = max(0.0, min(timeout, due - now))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stopping.wait(), timeout)
        await self._emit(self.batcher.cut())
        await self.queue.put(None)

    async def _emit(self, batch: Batch | None) -> None:
        if batch is None:
            return
        await self.queue.put(batch)  # waits while the buffer is full: back-pressure
        self.metrics.buffered.set(self.queue.qsize())

    def _listing(self) -> list[FileStat]:
        seen: set[str] = set()
        out: list[FileStat] = []
        for pattern in self.config.paths:
            for path in sorted(glob.iglob(pattern, recursive=True)):
                if path in seen or path.endswith(SKIPPED_SUFFIXES):
                    continue
                seen.add(path)
                found = _stat_file(path)
                if found is not None:
                    out.append(found)
        return out

    def _seek(self, action: Seek) -> tuple[FileStat | None, bool]:
        """Look in a directory for a stream's content (see :class:`~._tail.Seek`)."""
        taken = self.tracker.bound_keys()
        try:
            entries = list(os.scandir(action.directory))
        except OSError:
            return None, False
        by_fingerprint: FileStat | None = None
        for entry in entries:
            try:
                if not entry.is_file(follow_symlinks=False):
                    continue
                inode = entry.inode()
            except OSError:
                continue
            if inode == action.ino:
                found = _stat_file(entry.path)
                if (
                    found is not None
                    and found.key == (action.dev, action.ino)
                    and (action.fingerprint is None or found.fingerprint == action.fingerprint)
                    and found.size >= action.min_size
                    and found.key not in taken
                ):
                    return found, self._matched(found.path)
                continue
            if action.fingerprint is None or by_fingerprint is not None:
                continue
            found = _stat_file(entry.path)
            if (
                found is not None
                and found.fingerprint == action.fingerprint
                and found.size >= action.min_size
                and found.key not in taken
            ):
                by_fingerprint = found
        if by_fingerprint is None:
            return None, False
        return by_fingerprint, self._matched(by_fingerprint.path)

    def _matched(self, path: str) -> bool:
        return any(fnmatch(path, pattern) for pattern in self.config.paths)

    async def _look(self) -> None:
        actions = list(self.tracker.observe(self._listing(), now=self.clock()))
        while actions:
            action = actions.pop(0)
            if isinstance(action, Seek):
                found, matched = self._seek(action)
                actions[0:0] = self.tracker.resolve(action.stream, found, matched=matched)
            elif isinstance(action, Open):
                self._open(action)
            elif isinstance(action, Close):
                await self._close(action)
            elif isinstance(action, Rotated):
                self.metrics.rotations.labels(action.how).inc()
                self.log.info(
                    "file rotated",
                    extra={"old_path": action.old_path, "path": action.new_path, "how": action.how},
                )
            elif isinstance(action, Truncated):
                self.metrics.truncations.labels(str(action.copy_found).lower()).inc()
                if action.copy_found:
                    self.log.info(
                        "file truncated; reading the rest from its copy",
                        extra={"path": action.path},
                    )
                else:
                    self.log.warning(
                        "file truncated and no copy of it found: unread lines may be lost",
                        extra={"path": action.path},
                    )
        self.metrics.open_files.set(len(self._fds))

    def _open(self, action: Open) -> None:
        old = self._fds.pop(action.stream, None)
        if old is not None:
            os.close(old)
        try:
            fd = os.open(action.path, os.O_RDONLY | os.O_NONBLOCK)
        except OSError:
            self.tracker.unbind(action.stream)
            return
        info = os.fstat(fd)
        if (info.st_dev, info.st_ino) != (action.dev, action.ino):
            os.close(fd)  # replaced between the look and the open: look again next time
            self.tracker.unbind(action.stream)
            return
        self._fds[action.stream] = fd
        splitter = self._splitters.get(action.stream)
        if splitter is None:
            self._splitters[action.stream] = LineSplitter(max_line=self.config.max_line)
        else:
            splitter.reset()
        if action.stream not in self._parsers:
            self._parsers[action.stream] = make_parser(
                self.config.format, year=time.gmtime().tm_year
            )
        if action.offset == 0:
            self.log.info("reading new file", extra={"path": action.path})
        else:
            self.log.info("resuming file", extra={"path": action.path, "offset": action.offset})

    async def _close(self, action: Close) -> None:
        fd = self._fds.pop(action.stream, None)
        if fd is not None:
            os.close(fd)
        splitter = self._splitters.pop(action.stream, None)
        stream = self.tracker.streams.get(action.stream)
        if stream is not None and stream.state is StreamState.CLOSED and splitter is not None:
            # The file will not grow: its unfinished last line is a line.
            rest = splitter.flush()
            if rest:
                await self._process_many(
                    action.stream, stream.path, rest, stream.read_offset, last_unterminated=True
                )
        self._parsers.pop(action.stream, None)

    async def _read_all(self) -> bool:
        progressed = False
        for stream in self.tracker.reading():
            fd = self._fds.get(stream.id)
            if fd is None:
                continue
            splitter = self._splitters[stream.id]
            position = stream.read_offset + len(splitter.pending)
            try:
                data = os.pread(fd, READ_CHUNK, position)
            except OSError as exc:
                self.log.warning("read failed", extra={"path": stream.path, "error": str(exc)})
                continue
            if not data:
                self.tracker.advance(stream.id, stream.read_offset, at_eof=True)
                continue
            progressed = True
            cut_before = splitter.cut_lines
            lines = splitter.feed(data)
            cut_last = splitter.cut_lines != cut_before
            if cut_last:
                self.metrics.cut.inc()
            await self._process_many(
                stream.id, stream.path, lines, stream.read_offset, last_unterminated=cut_last
            )
            await asyncio.sleep(0)  # let the sender run between chunks
        return progressed

    async def _process_many(
        self,
        stream_id: int,
        path: str,
        lines: list[bytes],
        offset: int,
        *,
        last_unterminated: bool,
    ) -> None:
        """Parse ``lines`` (which start at ``offset`` of the stream) into batches.

        ``last_unterminated``: the last line has no newline in the file (it was cut, or it
        is the unfinished end of a file that was closed).
        """
        parser = self._parsers[stream_id]
        batcher = self.batcher
        encode = _encode
        metrics = self.metrics
        unparsed = 0
        last = len(lines) - 1
        schema = self.config.schema
        to_schema = to_otel if schema == "otel" else to_ecs
        observed = rfc3339(time.time()) if schema != "podkit" else ""
        batcher.note_start(self.clock())
        out = batcher.current.lines
        for index, raw in enumerate(lines):
            start = offset
            offset += len(raw) if last_unterminated and index == last else len(raw) + 1
            if raw.endswith(b"\r"):
                raw = raw[:-1]
            entry = parse_line(raw.decode("utf-8", "replace"), parser)
            if entry.format == "raw":
                unparsed += 1
            if schema != "podkit":
                out.append(
                    encode(
                        to_schema(
                            entry,
                            observed=observed,
                            zone=self._zone,
                            attributes={"log.file.path": path, "log.offset": start},
                        )
                    )
                )
            else:
                out.append(
                    encode(
                        {
                            "timestamp": entry.timestamp,
                            "level": entry.level,
                            "message": entry.message,
                            "fields": entry.fields,
                            "format": entry.format,
                            "source": path,
                            "offset": start,
                        }
                    )
                )
            if len(out) >= batcher.size:
                batcher.current.marks[stream_id] = offset
                self.tracker.advance(stream_id, offset, at_eof=False)
                await self._emit(batcher.cut())
                batcher.note_start(self.clock())
                out = batcher.current.lines
        if lines:
            batcher.current.marks[stream_id] = offset
            self.tracker.advance(stream_id, offset, at_eof=False)
        self._lines_read += len(lines)
        metrics.read.inc(len(lines))
        if unparsed:
            metrics.unparsed.inc(unparsed)

    # -- sender -------------------------------------------------------------------------

    async def _send_loop(self) -> None:
        while True:
            batch = await self.queue.get()
            self.metrics.buffered.set(self.queue.qsize())
            if batch is None:
                return
            await self._deliver(batch)
            self.tracker.commit(batch.marks)
            if self.config.state is not None:
                try:
                    write_checkpoint(self.config.state, self.tracker.checkpoint())
                except OSError as exc:
                    # Shipping goes on; a restart before the next good write re-sends more.
                    self.metrics.checkpoint_failures.inc()
                    self.log.error(
                        "cannot write the checkpoint",
                        extra={"state": self.config.state, "error": exc.strerror or str(exc)},
                    )
            self.metrics.lag.set(
                sum(s.read_offset - s.committed for s in self.tracker.streams.values())
            )

    async def _deliver(self, batch: Batch) -> None:
        attempt = 0
        first_failure: float | None = None
        while True:
            try:
                await self.sink.send(batch.lines)
            except SinkRejected as exc:
                self.metrics.failures.labels("rejected").inc()
                self._drop(batch, "rejected", str(exc))
                return
            except SinkUnavailable as exc:
                self.metrics.failures.labels("unavailable").inc()
                now = self.clock()
                if first_failure is None:
                    first_failure = now
                if self._sink_up or self._last_error != str(exc):
                    self.log.warning(
                        "sink unavailable; retrying",
                        extra={"sink": self.sink.description, "error": str(exc)},
                    )
                self._sink_up = False
                self._last_error = str(exc)
                self.metrics.sink_up.set(0)
                give_up = self.config.give_up_after
                if give_up is not None and now - first_failure >= give_up:
                    self._retry_delay = 0.0
                    self.metrics.retry_delay.set(0)
                    self._drop(batch, "retries_exhausted", str(exc))
                    return
                delay = self.config.backoff.delay(attempt, rand=self._random.random())
                self._retry_delay = delay
                self.metrics.retry_delay.set(delay)
                await asyncio.sleep(delay)
                attempt += 1
                continue
            self._retry_delay = 0.0
            self.metrics.retry_delay.set(0)
            if not self._sink_up:
                self.log.info("sink is back", extra={"sink": self.sink.description})
            self._sink_up = True
            self.metrics.sink_up.set(1)
            self._lines_shipped += len(batch.lines)
            self.metrics.shipped.inc(len(batch.lines))
            self.metrics.batches.inc()
            return

    def _drop(self, batch: Batch, reason: str, error: str) -> None:
        self._lines_dropped += len(batch.lines)
        self._last_error = error
        self.metrics.dropped.labels(reason).inc(len(batch.lines))
        self.log.error(
            "batch dropped",
            extra={"reason": reason, "lines": len(batch.lines), "error": error},
        )
