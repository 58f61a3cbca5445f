"""``podkit queue``: put items, run workers and sources, look at stats and dead letters."""

from __future__ import annotations

import base64
import dataclasses
import datetime
import json
import os
import shutil
import sys
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import click

from podkit.backends.queues import check_queue_name, check_queue_url
from podkit.batch.queue.client import (
    DEFAULT_VISIBILITY_TIMEOUT,
    DeadItem,
    PutRequest,
    Queue,
)
from podkit.batch.queue.components import (
    DEFAULT_SCALE_INTERVAL,
    WorkerSettings,
    serve_pool,
    serve_source,
    serve_worker,
)
from podkit.batch.queue.components import content_key as make_content_key
from podkit.batch.queue.scaling import DEFAULT_SCALE_DOWN_AFTER, ScalePolicy
from podkit.batch.queue.states import (
    DEFAULT_BACKOFF_BASE,
    DEFAULT_BACKOFF_CAP,
    DEFAULT_MAX_ATTEMPTS,
)
from podkit.batch.queue.worker import DEFAULT_CONCURRENCY, DEFAULT_PREFETCH, load_handler
from podkit.cli import BytesArgument, PodkitGroup
from podkit.runtime import Runtime, RuntimeOptions, format_duration, run_async, run_component
from podkit.runtime.cli_options import DURATION, runtime_options

T = TypeVar("T")

MAX_CONCURRENCY = 1000  # items at once in one worker process; more wants more processes
MAX_POOL_WORKERS = 256  # worker processes of one pool on one machine

_url = click.argument("url")
_name = click.argument("name")


def _run(
    make: Callable[[Queue], Awaitable[T]], url: str, name: str, *, read_only: bool = False
) -> T:
    async def main() -> T:
        async with Queue(url, name, read_only=read_only) as queue:
            return await make(queue)

    result: T = run_async(main())
    return result


@click.group(name="queue", cls=PodkitGroup)
def group() -> None:
    """Work queues: a source lists work, workers process it, at least once.

    URL is sqlite:///path.db (one machine, no server) or redis://host:port/db.
    """


@group.command()
@_url
@_name
@click.argument("item", required=False, cls=BytesArgument)
@click.option("--key", default=None, help="Idempotency key: a put with a known key is a no-op.")
@click.option(
    "--content-key",
    is_flag=True,
    help="Use the SHA-256 of each item as its key (de-duplicates identical items).",
)
@click.option(
    "--priority",
    type=click.IntRange(-1000, 1000),
    default=0,
    show_default=True,
    help="Higher is leased first.",
)
@click.option(
    "--delay",
    type=DURATION,
    default="0s",
    show_default=True,
    help="Time before the item can be leased, e.g. 500ms, 2s, 1m.",
)
@click.option(
    "--max-attempts",
    type=click.IntRange(1),
    default=DEFAULT_MAX_ATTEMPTS,
    show_default=True,
    help="Deliveries before the item goes to the dead-letter set.",
)
@click.option(
    "--json",
    "as_json",
    is_flag=True,
    help="The item is JSON text: validate it and store it as a JSON value.",
)
def put(
    url: str,
    name: str,
    item: str | None,
    key: str | None,
    content_key: bool,
    priority: int,
    delay: float,
    max_attempts: int,
    as_json: bool,
) -> None:
    """Put ITEM into queue NAME, or one item per line of stdin with `-`.

    Prints the id of each item (the existing item's id when its key was known).
    """
    if item is None:
        raise click.UsageError("give an ITEM, or - to read one item per line from stdin")
    if item == "-":
        raw = [line.rstrip(b"\r\n") for line in sys.stdin.buffer]
        bodies = [line for line in raw if line]
        if key is not None and len(bodies) > 1:
            raise click.UsageError("--key names one item; use --content-key with -")
    else:
        bodies = [os.fsencode(item)]  # the bytes given, even when they are not UTF-8
    values: list[Any] = []
    for body in bodies:
        if as_json:
            try:
                values.append(json.loads(body))
            except ValueError as exc:
                raise click.UsageError(f"item is not JSON: {exc}") from exc
        else:
            values.append(body)
    requests = [
        PutRequest(
            value,
            key=make_content_key(body) if content_key else key,
            priority=priority,
            delay=delay,
            max_attempts=max_attempts,
        )
        for value, body in zip(values, bodies, strict=True)
    ]

    async def act(queue: Queue) -> None:
        for i in range(0, len(requests), 500):
            for result in await queue.put_many(requests[i : i + 500]):
                click.echo(result.id if result.created else f"{result.id} exists")

    _run(act, url, name)


@group.command(context_settings={"ignore_unknown_options": True})
@_url
@_name
@click.argument("command", nargs=-1, type=click.UNPROCESSED, cls=BytesArgument)
@click.option(
    "--handler",
    default=None,
    help="Python function module:function called with each item (instead of a command).",
)
@click.option(
    "--concurrency",
    type=click.IntRange(1, MAX_CONCURRENCY),
    default=DEFAULT_CONCURRENCY,
    show_default=True,
    help="Items processed at the same time by one worker process.",
)
@click.option(
    "--prefetch",
    type=click.IntRange(0, MAX_CONCURRENCY),
    default=DEFAULT_PREFETCH,
    show_default=True,
    help="Items leased ahead of free slots: faster for short items, held longer on a crash.",
)
@click.option(
    "--visibility",
    type=DURATION,
    default=format_duration(DEFAULT_VISIBILITY_TIMEOUT),
    show_default=True,
    help="Lease length; extended while an item runs, redelivered if the worker dies.",
)
@click.option(
    "--backoff",
    type=DURATION,
    default=format_duration(DEFAULT_BACKOFF_BASE),
    show_default=True,
    help="Wait before the first retry of a failed item; doubles per attempt (with jitter).",
)
@click.option(
    "--backoff-cap",
    type=DURATION,
    default=format_duration(DEFAULT_BACKOFF_CAP),
    show_default=True,
    help="The longest wait between retries.",
)
@click.option(
    "--min",
    "min_workers",
    type=click.IntRange(0, MAX_POOL_WORKERS),
    default=None,
    help="Run a pool of worker processes, at least this many (with --max).",
)
@click.option(
    "--max",
    "max_workers",
    type=click.IntRange(1, MAX_POOL_WORKERS),
    default=None,
    help="Run a pool of worker processes that grows with the backlog up to this many.",
)
@click.option(
    "--scale-down-after",
    type=DURATION,
    default=format_duration(DEFAULT_SCALE_DOWN_AFTER),
    show_default=True,
    help="With --min/--max: how long fewer workers must suffice before some are stopped.",
)
@click.option(
    "--scale-interval",
    type=DURATION,
    default=format_duration(DEFAULT_SCALE_INTERVAL),
    show_default=True,
    help="With --min/--max: time between backlog readings.",
)
@click.option("--parent-pid", type=int, default=None, hidden=True)
@runtime_options
def work(
    url: str,
    name: str,
    command: tuple[str, ...],
    handler: str | None,
    concurrency: int,
    prefetch: int,
    visibility: float,
    backoff: float,
    backoff_cap: float,
    min_workers: int | None,
    max_workers: int | None,
    scale_down_after: float,
    scale_interval: float,
    parent_pid: int | None,
    runtime: RuntimeOptions,
) -> int:
    """Process items of queue NAME: `--handler module:function` or `-- COMMAND ARGS...`.

    A command runs once per item with the item on stdin and PODKIT_ITEM_ID, PODKIT_ATTEMPT
    and PODKIT_QUEUE in its environment; exit 0 acks, anything else retries with backoff.
    A running item's lease is extended while it runs. The first SIGTERM stops taking items
    and finishes the running ones; the second stops now (the items are redelivered).
    """
    if (handler is None) == (not command):
        raise click.UsageError("give either --handler module:function or -- COMMAND ARGS...")
    if command and shutil.which(command[0]) is None:
        raise click.UsageError(f"command not found: {command[0]}")
    if handler is not None:
        load_handler(handler)  # fail now, with a clear message, not on the first item
    if visibility <= 0:
        raise click.UsageError("--visibility must be positive")
    settings = WorkerSettings(
        url=url,
        name=name,
        concurrency=concurrency,
        prefetch=prefetch,
        visibility=visibility,
        backoff=backoff,
        backoff_cap=backoff_cap,
        handler=handler,
        command=command,
        parent_pid=parent_pid,
    )
    check_queue_url(url)
    check_queue_name(name)
    if min_workers is None and max_workers is None:

        async def main(rt: Runtime) -> None:
            await serve_worker(rt, settings)

        return run_component("queue-worker", main, runtime)
    if min_workers is None or max_workers is None:
        raise click.UsageError("--min and --max go together")
    try:
        policy = ScalePolicy(
            min_workers=min_workers,
            max_workers=max_workers,
            items_per_worker=concurrency,
            scale_down_after=scale_down_after,
        )
    except ValueError as exc:
        raise click.UsageError(str(exc)) from exc

    async def pool_main(rt: Runtime) -> None:
        await serve_pool(rt, settings, policy, interval=scale_interval)

    return run_component("queue-pool", pool_main, runtime)


@group.command(context_settings={"ignore_unknown_options": True})
@_url
@_name
@click.argument("command", nargs=-1, required=True, type=click.UNPROCESSED, cls=BytesArgument)
@click.option(
    "--every",
    type=DURATION,
    default="10s",
    show_default=True,
    help="Time between runs of the command (the first run is at start).",
)
@click.option(
    "--priority",
    type=click.IntRange(-1000, 1000),
    default=0,
    show_default=True,
    help="Priority of the items put.",
)
@click.option(
    "--max-attempts",
    type=click.IntRange(1),
    default=DEFAULT_MAX_ATTEMPTS,
    show_default=True,
    help="Deliveries of each item before it is dead-lettered.",
)
@click.option(
    "--key-ttl",
    type=DURATION,
    default="24h",  # DEFAULT_KEY_TTL
    show_default=True,
    help="How long a processed line is remembered (and not queued again).",
)
@runtime_options
def source(
    url: str,
    name: str,
    command: tuple[str, ...],
    every: float,
    priority: int,
    max_attempts: int,
    key_ttl: float,
    runtime: RuntimeOptions,
) -> int:
    """Run `-- COMMAND ARGS...` periodically; each output line becomes an item of NAME.

    Lines are keyed by their content (SHA-256): a line already queued, or processed less
    than --key-ttl ago, is not queued again.
    """
    if shutil.which(command[0]) is None:
        raise click.UsageError(f"command not found: {command[0]}")
    if every <= 0:
        raise click.UsageError("--every must be positive")
    check_queue_url(url)
    check_queue_name(name)

    async def main(rt: Runtime) -> None:
        await serve_source(
            rt,
            url=url,
            name=name,
            argv=command,
            every=every,
            priority=priority,
            max_attempts=max_attempts,
            key_ttl=key_ttl,
        )

    return run_component("queue-source", main, runtime)


@group.command()
@_url
@_name
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
def stats(url: str, name: str, as_json: bool) -> None:
    """Counts of queue NAME (ready, delayed, leased, dead), rates per second and totals."""
    result = _run(lambda q: q.stats(), url, name, read_only=True)
    if as_json:
        click.echo(json.dumps({"queue": name, **dataclasses.asdict(result)}))
        return
    click.echo(
        f"ready {result.ready}  delayed {result.delayed}  leased {result.leased}"
        f"  dead {result.dead}"
    )
    click.echo(
        f"per second (last minute): put {result.put_rate:.2f}  ack {result.ack_rate:.2f}"
        f"  fail {result.fail_rate:.2f}  dead {result.dead_rate:.2f}"
    )
    click.echo(
        f"totals: put {result.put_total}  ack {result.ack_total}  fail {result.fail_total}"
        f"  dead {result.dead_total}"
    )


def _dead_json(item: DeadItem) -> dict[str, Any]:
    try:
        body: dict[str, str] = {"body": item.body.decode()}
    except UnicodeDecodeError:
        body = {"body_base64": base64.b64encode(item.body).decode()}
    return {
        "id": item.id,
        **body,
        "encoding": item.encoding,
        "key": item.key,
        "priority": item.priority,
        "attempts": item.attempts,
        "died_at": item.died_at,
        "error": item.error,
    }


@group.command()
@_url
@_name
@click.option("--retry", is_flag=True, help="Requeue the dead items (all, or those of --id).")
@click.option("--id", "ids", multiple=True, help="With --retry: only this item (repeatable).")
@click.option(
    "--limit",
    type=click.IntRange(1),
    default=100,
    show_default=True,
    help="Most items listed.",
)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object per line.")
def dead(url: str, name: str, retry: bool, ids: tuple[str, ...], limit: int, as_json: bool) -> None:
    """List the dead-letter set of queue NAME, or requeue it with --retry."""
    if ids and not retry:
        raise click.UsageError("--id goes with --retry")
    if retry:
        moved = _run(lambda q: q.retry_dead(list(ids) if ids else None), url, name)
        click.echo(f"requeued {moved}")
        return
    items = _run(lambda q: q.dead(limit), url, name, read_only=True)
    for item in items:
        if as_json:
            click.echo(json.dumps(_dead_json(item)))
            continue
        died = datetime.datetime.fromtimestamp(item.died_at, datetime.UTC)
        text = item.body.decode(errors="replace")
        if len(text) > 60:
            text = text[:57] + "..."
        click.echo(
            f"{item.id}  attempts={item.attempts}  died={died:%Y-%m-%dT%H:%M:%SZ}"
            f"  error={item.error!r}  item={text!r}"
        )


__all__ = ["group"]
