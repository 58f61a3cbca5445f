"""``podkit adapt logs``: heterogeneous log lines in, one schema out (OpenTelemetry or ECS)."""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import gc
import json
import os
import random
import sys
import threading
import time
import zoneinfo
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Final

import click

from podkit.adapter.logs.multiline import DEFAULT_MAX_RECORD_LINES
from podkit.adapter.logs.normaliser import LogNormaliser
from podkit.adapter.logs.parsers import FORMATS
from podkit.adapter.logs.schema import SCHEMAS, rfc3339
from podkit.errors import ConfigError, PodkitError
from podkit.runtime import Runtime, RuntimeOptions, run_component
from podkit.runtime.cli_options import DURATION, SIZE, runtime_options
from podkit.runtime.config import format_duration
from podkit.runtime.metrics import Counter
from podkit.sidecar._retry import Backoff
from podkit.sidecar.logship._sinks import (
    DEFAULT_SINK_TIMEOUT,
    Sink,
    SinkRejected,
    SinkUnavailable,
    close_quietly,
    open_sink,
)

READ_CHUNK: Final = 128 * 1024  # bytes per read: whole lines in bulk, in memory malloc reuses
DEFAULT_FLUSH_AFTER: Final = 1.0  # a record waiting for continuation lines goes after this
DEFAULT_BATCH: Final = 1000  # records per HTTP POST or Redis pipeline
DEFAULT_MAX_LINE: Final = 1 << 20  # longer lines are cut, as logship does
GC_THRESHOLD: Final = 20_000  # allocations between collector passes (CPython's default: 700)
_QUEUED_CHUNKS: Final = 4  # read-ahead: the reader waits when the writer is this far behind

try:  # orjson is an optional accelerator (``podkit[fast]``); the output is the same JSON
    import orjson

    def encode(record: dict[str, Any]) -> bytes:
        try:
            return orjson.dumps(record)
        except TypeError:  # a key that is not a string (rare): the slower option
            return orjson.dumps(record, option=orjson.OPT_NON_STR_KEYS, default=str)

except ImportError:  # pragma: no cover - installed with the dev extra
    _json_encode = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), default=str).encode

    def encode(record: dict[str, Any]) -> bytes:
        return _json_encode(record).encode()


def parse_zone(text: str) -> datetime.tzinfo:
    """``local``, ``UTC``, an IANA name (``Europe/Paris``) or an offset (``+02:00``).

    Raises:
        ConfigError: none of those.
    """
    if text == "local":
        local = datetime.datetime.now().astimezone().tzinfo
        assert local is not None
        return local
    if text.upper() in ("UTC", "Z"):
        return datetime.UTC
    if text[:1] in "+-":
        try:
            offset = datetime.datetime.strptime(text.replace(":", ""), "%z").utcoffset()
        except ValueError as exc:
            raise ConfigError(f"expected an offset such as +02:00, got {text!r}") from exc
        assert offset is not None
        return datetime.timezone(offset)
    try:
        return zoneinfo.ZoneInfo(text)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError) as exc:
        raise ConfigError(
            f"unknown time zone {text!r}: expected local, UTC, +HH:MM or a name such as "
            "Europe/Paris"
        ) from exc


class OutputClosed(PodkitError):
    """The reader of standard output went away (``| head``): there is no one to write for."""


class StdoutSink:
    """JSON lines on standard output."""

    description = "stdout"

    async def send(self, lines: list[bytes]) -> None:
        if not lines:
            return
        try:
            sys.stdout.buffer.write(b"\n".join(lines) + b"\n")
            sys.stdout.buffer.flush()
        except BrokenPipeError as exc:
            # Nothing more can be written; the interpreter's own flush at exit must not fail.
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
            os.close(devnull)
            raise OutputClosed("standard output was closed") from exc

    async def aclose(self) -> None:
        with contextlib.suppress(OSError):
            sys.stdout.buffer.flush()


def open_output(target: str, *, timeout: float) -> Sink:
    """``-`` (stdout), a file path, or a logship sink URL (file://, http(s)://, redis://).

    Raises:
        ConfigError: a URL of another kind.
    """
    if target == "-":
        return StdoutSink()
    if "://" in target:
        return open_sink(target, timeout=timeout)
    return open_sink("file://" + str(Path(target).resolve()), timeout=timeout)


def _split_lines(buffer: bytearray, data: bytes, max_line: int) -> Iterator[str]:
    """Complete lines of ``buffer + data``; what follows the last newline stays in buffer."""
    buffer += data
    end = buffer.rfind(b"\n")
    if end < 0:
        if len(buffer) >= max_line:  # no newline for too long: cut, as logship does
            text = bytes(buffer).decode("utf-8", "replace")
            buffer.clear()
            yield text
        return
    block = bytes(buffer[:end])
    del buffer[: end + 1]
    for raw in block.split(b"\n"):
        if raw.endswith(b"\r"):
            raw = raw[:-1]
        if len(raw) > max_line:
            raw = raw[:max_line]
        yield raw.decode("utf-8", "replace")


class _Reader(threading.Thread):
    """Reads the input in a thread of its own (stdin cannot be read without blocking), and
    hands chunks to the event loop; a daemon, so a blocked read never holds the exit."""

    def __init__(self, fd: int, queue: asyncio.Queue[bytes | OSError], loop: Any) -> None:
        super().__init__(name="adapt-logs-reader", daemon=True)
        self.fd = fd
        self.queue = queue
        self.loop = loop

    def run(self) -> None:
        while True:
            try:
                data: bytes | OSError = os.read(self.fd, READ_CHUNK)
            except OSError as exc:
                data = exc
            try:
                asyncio.run_coroutine_threadsafe(self.queue.put(data), self.loop).result()
            except RuntimeError:  # the loop has closed: nobody is reading any more
                return
            if not isinstance(data, bytes) or not data:
                return


async def _deliver(rt: Runtime, sink: Sink, lines: list[bytes], batch: int) -> int:
    """Send ``lines`` in batches, retrying what may work later; returns lines dropped."""
    dropped = 0
    backoff = Backoff()
    for start in range(0, len(lines), batch):
        part = lines[start : start + batch]
        attempt = 0
        while True:
            try:
                await sink.send(part)
                break
            except SinkRejected as exc:
                rt.log.error(
                    "sink rejected a batch", extra={"error": str(exc), "records": len(part)}
                )
                dropped += len(part)
                break
            except SinkUnavailable as exc:
                if rt.draining.is_set() and attempt > 0:
                    raise PodkitError(f"{sink.description}: {exc}") from exc
                delay = backoff.delay(attempt, rand=random.random())
                rt.log.warning("sink unavailable", extra={"error": str(exc), "retry_in": delay})
                attempt += 1
                await asyncio.sleep(delay)
    return dropped


async def serve_logs(
    rt: Runtime,
    normaliser: LogNormaliser,
    *,
    source: str,
    sink: Sink,
    flush_after: float = DEFAULT_FLUSH_AFTER,
    batch: int = DEFAULT_BATCH,
    max_line: int = DEFAULT_MAX_LINE,
) -> None:
    """Normalise ``source`` (a path or ``-``) to ``sink`` until its end or a drain."""
    records = Counter("adapt_logs_records", "Records written.", ["schema"], registry=rt.registry)
    lines_read = Counter("adapt_logs_lines", "Lines read.", registry=rt.registry)
    unparsed = Counter(
        "adapt_logs_unparsed_records", "Records no parser understood.", registry=rt.registry
    )
    dropped = Counter(
        "adapt_logs_dropped_records", "Records a sink rejected.", registry=rt.registry
    )
    schema = "otel" if normaliser.schema.__name__ == "to_otel" else "ecs"
    try:
        fd = 0 if source == "-" else os.open(source, os.O_RDONLY)
    except OSError as exc:
        raise PodkitError(f"cannot read {source}: {exc.strerror or exc}") from exc
    # Records hold no reference cycles: the cyclic collector's passes over the millions of
    # short-lived dicts are pure cost. Objects made so far are set aside, passes are rarer.
    gc.freeze()
    gc.set_threshold(GC_THRESHOLD, *gc.get_threshold()[1:])
    queue: asyncio.Queue[bytes | OSError] = asyncio.Queue(maxsize=_QUEUED_CHUNKS)
    reader = _Reader(fd, queue, asyncio.get_running_loop())
    reader.start()
    buffer = bytearray()
    rt.set_ready()
    rt.log.info("normalising", extra={"in": source, "out": sink.description, "schema": schema})
    try:
        while True:
            try:
                data = await asyncio.wait_for(queue.get(), timeout=flush_after)
            except TimeoutError:
                out = normaliser.flush(rfc3339(time.time()))
                if out:
                    dropped.inc(await _deliver(rt, sink, [encode(r) for r in out], batch))
                    records.labels(schema).inc(len(out))
                if rt.draining.is_set():
                    break
                continue
            if isinstance(data, OSError):
                raise PodkitError(f"cannot read {source}: {data.strerror or data}")
            observed = rfc3339(time.time())
            before = normaliser.stats.lines
            unparsed_before = normaliser.stats.unparsed
            if data:
                lines = _split_lines(buffer, data, max_line)
                encoded = [encode(r) for r in normaliser.iter_records(lines, observed)]
            else:  # the end: the unterminated last line, then the record in progress
                tail = [bytes(buffer).decode("utf-8", "replace")] if buffer else []
                done = normaliser.feed(tail, observed) + normaliser.flush(observed)
                encoded = [encode(r) for r in done]
            lines_read.inc(normaliser.stats.lines - before)
            unparsed.inc(normaliser.stats.unparsed - unparsed_before)
            if encoded:
                dropped.inc(await _deliver(rt, sink, encoded, batch))
                records.labels(schema).inc(len(encoded))
            if not data or rt.draining.is_set():
                break
        if rt.draining.is_set():
            out = normaliser.flush(rfc3339(time.time()))
            if out:
                await _deliver(rt, sink, [encode(r) for r in out], batch)
    except OutputClosed:
        rt.log.info("standard output closed: stopping")
    else:
        stats = normaliser.stats
        rt.log.info(
            "done",
            extra={"lines": stats.lines, "records": stats.records, "unparsed": stats.unparsed},
        )
    finally:
        if fd != 0:
            os.close(fd)


def _resource(values: tuple[str, ...]) -> dict[str, str]:
    out = {}
    for value in values:
        key, sep, text = value.partition("=")
        if not sep or not key:
            raise click.BadParameter(
                f"expected KEY=VALUE, got {value!r}", param_hint="'--resource'"
            )
        out[key] = text
    return out


@click.command(name="logs")
@click.option(
    "--in",
    "source",
    default="-",
    show_default=True,
    metavar="PATH|-",
    help="The log to read to its end ('-': standard input, as lines arrive).",
)
@click.option(
    "--format",
    "log_format_name",
    type=click.Choice(FORMATS),
    default="auto",
    show_default=True,
    help="How to parse each record's first line; a record nothing understands is kept "
    "whole with a parse error.",
)
@click.option(
    "--schema",
    type=click.Choice(SCHEMAS),
    default="otel",
    show_default=True,
    help="otel: the OpenTelemetry log data model; ecs: Elastic Common Schema.",
)
@click.option(
    "--out",
    "target",
    default="-",
    show_default=True,
    metavar="-|PATH|URL",
    help="'-' (standard output), a file (appended), or http(s)://HOST:PORT/PATH (POST of "
    "JSON lines) or redis://HOST:PORT/DB/STREAM (XADD).",
)
@click.option(
    "--timezone",
    "zone_name",
    default="local",
    show_default=True,
    metavar="ZONE",
    help="The zone of source times that carry none: local, UTC, +HH:MM or an IANA name.",
)
@click.option(
    "--multiline/--no-multiline",
    default=True,
    show_default=True,
    help="Join tracebacks, stack traces and indented lines to the record before them.",
)
@click.option(
    "--max-record-lines",
    type=click.IntRange(min=1),
    default=DEFAULT_MAX_RECORD_LINES,
    show_default=True,
    help="The most lines one joined record holds.",
)
@click.option(
    "--flush",
    "flush_after",
    type=DURATION,
    default=format_duration(DEFAULT_FLUSH_AFTER),
    show_default=True,
    help="A record waiting for more lines is written after this quiet spell.",
)
@click.option(
    "--max-line",
    type=SIZE,
    default="1MiB",
    show_default=True,
    help="Longer lines are cut into pieces of this size.",
)
@click.option(
    "--batch",
    type=click.IntRange(min=1),
    default=DEFAULT_BATCH,
    show_default=True,
    help="Records per HTTP POST or Redis pipeline.",
)
@click.option(
    "--sink-timeout",
    type=DURATION,
    default=format_duration(DEFAULT_SINK_TIMEOUT),
    show_default=True,
    help="A delivery that takes longer fails and is retried.",
)
@click.option(
    "--resource",
    "resource_values",
    multiple=True,
    metavar="KEY=VALUE",
    help="Add to every record's Resource (ECS: the field), e.g. service.name=shop (repeatable).",
)
@runtime_options
def command(
    source: str,
    log_format_name: str,
    schema: str,
    target: str,
    zone_name: str,
    multiline: bool,
    max_record_lines: int,
    flush_after: float,
    max_line: int,
    batch: int,
    sink_timeout: float,
    resource_values: tuple[str, ...],
    runtime: RuntimeOptions,
) -> int:
    """Turn heterogeneous log lines into one structured record each, in one schema.

    nginx, apache, syslog (RFC 3164/5424), logfmt, JSON and Python logging lines, with
    tracebacks and indented continuations joined, become OpenTelemetry log records (or ECS
    documents): RFC 3339 UTC timestamps honouring the source's zone, severities mapped, and
    every record kept, a line nothing understands as the Body with podkit.parse_error.
    """
    try:
        zone = parse_zone(zone_name)
        sink = open_output(target, timeout=sink_timeout)
    except ConfigError as exc:
        raise click.UsageError(exc.reason) from exc
    if source != "-" and (not Path(source).exists() or Path(source).is_dir()):
        raise click.BadParameter(f"no such file: {source}", param_hint="'--in'")
    attributes = {"log.file.path": str(Path(source).resolve())} if source != "-" else {}
    normaliser = LogNormaliser(
        format=log_format_name,
        schema="otel" if schema == "otel" else "ecs",
        year=time.gmtime().tm_year,
        zone=zone,
        multiline=multiline,
        max_lines=max_record_lines,
        resource=_resource(resource_values),
        attributes=attributes,
    )

    async def main(rt: Runtime) -> None:
        try:
            await serve_logs(
                rt,
                normaliser,
                source=source,
                sink=sink,
                flush_after=flush_after,
                batch=batch,
                max_line=max_line,
            )
        finally:
            await close_quietly(sink)

    return run_component("adapt-logs", main, runtime)
