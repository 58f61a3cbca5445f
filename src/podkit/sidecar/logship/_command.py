"""``podkit logship``: the command line of the log shipper."""

from __future__ import annotations

import json

import click

from podkit.adapter.logs.parsers import FORMATS
from podkit.cli import PodkitCommand
from podkit.runtime import Request, Response, Runtime, RuntimeOptions, run_component
from podkit.runtime.cli_options import DURATION, SIZE, runtime_options
from podkit.runtime.config import format_duration
from podkit.sidecar._retry import DEFAULT_BACKOFF_MAX, Backoff
from podkit.sidecar.logship._batch import (
    DEFAULT_BATCH_LINES,
    DEFAULT_BUFFER_BATCHES,
    DEFAULT_FLUSH_AFTER,
)
from podkit.sidecar.logship._shipper import (
    DEFAULT_POLL,
    LogshipConfig,
    LogShipper,
    why_unmatched,
)
from podkit.sidecar.logship._sinks import DEFAULT_SINK_TIMEOUT, close_quietly, open_sink
from podkit.sidecar.logship._tail import DEFAULT_CLOSE_AFTER, DEFAULT_MAX_LINE_BYTES


async def serve_logship(rt: Runtime, config: LogshipConfig, *, to: str) -> None:
    """Ship logs until the runtime drains; ``/logship`` on the admin endpoint shows offsets.

    Raises:
        ConfigError: ``to`` is not a sink URL.
    """
    sink = open_sink(to, timeout=config.sink_timeout)
    try:
        shipper = LogShipper(config, sink, registry=rt.registry)

        async def status(_: Request) -> Response:
            return Response.json(200, json.dumps(shipper.statistics().to_dict()))

        rt.add_route("/logship", status)
        rt.log.info(
            "shipping",
            extra={"paths": list(config.paths), "sink": sink.description, "format": config.format},
        )
        for pattern in config.paths:
            why = why_unmatched(pattern)
            if why is not None:
                # Not an error: an application often creates its log after its sidecar starts.
                rt.log.warning(
                    "--path matches no file; waiting for one to appear",
                    extra={"path": pattern, "reason": why},
                )
        rt.set_ready()
        await shipper.serve(rt.draining)
    finally:
        await close_quietly(sink)


@click.command(cls=PodkitCommand)
@click.option(
    "--path",
    "paths",
    multiple=True,
    required=True,
    help="Glob of files to tail (repeatable; ** matches directories). New files are picked up.",
)
@click.option(
    "--to",
    required=True,
    help="Sink: file:///PATH[?fsync=1], http(s)://HOST:PORT/PATH or "
    "redis://HOST:PORT/DB/STREAM[?maxlen=N].",
)
@click.option(
    "--format",
    "log_format_name",
    type=click.Choice(FORMATS),
    default="auto",
    show_default=True,
    help="How to parse each line; a line the parser does not understand is shipped raw.",
)
@click.option(
    "--schema",
    type=click.Choice(["podkit", "otel", "ecs"]),
    default="podkit",
    show_default=True,
    help="Record schema: podkit's own, the OpenTelemetry log data model, or Elastic Common "
    "Schema (as podkit adapt logs writes them).",
)
@click.option(
    "--state",
    default=None,
    help="Checkpoint file of read offsets, written after each acknowledged batch "
    "(none: start over on restart).",
)
@click.option(
    "--batch",
    type=click.IntRange(min=1),
    default=DEFAULT_BATCH_LINES,
    show_default=True,
    help="Records per batch.",
)
@click.option(
    "--flush",
    type=DURATION,
    default=format_duration(DEFAULT_FLUSH_AFTER),
    show_default=True,
    help="Send a partial batch once its first record is this old.",
)
@click.option(
    "--poll",
    type=DURATION,
    default=format_duration(DEFAULT_POLL),
    show_default=True,
    help="How often to look for new lines and files once everything is read.",
)
@click.option(
    "--buffer-batches",
    type=click.IntRange(min=1),
    default=DEFAULT_BUFFER_BATCHES,
    show_default=True,
    help="Full batches that may wait for the sink before reading pauses.",
)
@click.option(
    "--close-after",
    type=DURATION,
    default=format_duration(DEFAULT_CLOSE_AFTER),
    show_default=True,
    help="Keep a rotated-away file open this long after its end, for late writes.",
)
@click.option(
    "--max-line",
    type=SIZE,
    default="1MiB",
    show_default=True,
    help="Longer lines are cut into pieces of this size.",
)
@click.option(
    "--give-up-after",
    type=DURATION,
    default=None,
    help="Drop a batch (counted in logship_lines_dropped) after retrying it this long "
    "[default: retry forever].",
)
@click.option(
    "--sink-timeout",
    type=DURATION,
    default=format_duration(DEFAULT_SINK_TIMEOUT),
    show_default=True,
    help="A delivery that takes longer fails and is retried.",
)
@click.option(
    "--retry-max",
    type=DURATION,
    default=format_duration(DEFAULT_BACKOFF_MAX),
    show_default=True,
    help="Longest wait between retries of a batch (the backoff doubles from 100ms up to it).",
)
@runtime_options
def command(
    paths: tuple[str, ...],
    to: str,
    log_format_name: str,
    schema: str,
    state: str | None,
    batch: int,
    flush: float,
    poll: float,
    buffer_batches: int,
    close_after: float,
    max_line: int,
    give_up_after: float | None,
    sink_timeout: float,
    retry_max: float,
    runtime: RuntimeOptions,
) -> int:
    """Tail log files (through rotation) and ship them as structured records to a sink.

    Each line becomes one JSON record: timestamp, level, message, fields, format, source
    file and offset. Offsets are checkpointed in --state only after the sink acknowledged a
    batch, so a restart neither loses lines nor sends again more than the last batch.
    """
    config = LogshipConfig(
        paths=paths,
        format=log_format_name,
        schema=schema,
        state=state,
        batch=batch,
        flush=flush,
        poll=poll,
        buffer_batches=buffer_batches,
        close_after=close_after,
        max_line=max_line or DEFAULT_MAX_LINE_BYTES,
        give_up_after=give_up_after,
        sink_timeout=sink_timeout,
        backoff=Backoff(maximum=retry_max),
    )

    async def main(rt: Runtime) -> None:
        await serve_logship(rt, config, to=to)

    return run_component("logship", main, runtime)
