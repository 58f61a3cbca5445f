"""``podkit functions``: serve an app's functions, list them, invoke them, look at calls and
dead letters, and run dead letters again."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import json
import sys
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

import click

from podkit.batch.queue.client import DEFAULT_VISIBILITY_TIMEOUT
from podkit.cli import PodkitGroup
from podkit.engines.http import HTTPServer, ServerLimits
from podkit.engines.http.access_log import AccessLogSettings
from podkit.engines.http.cli_options import access_log_options, server_limit_options
from podkit.errors import PodkitError, UsageError
from podkit.runtime import (
    HostPort,
    Runtime,
    RuntimeOptions,
    format_duration,
    format_size,
    run_async,
    run_component,
)
from podkit.runtime.cli_options import DURATION, HOSTPORT, SIZE, runtime_options
from podkit.serving.functions._cloudevents import CloudEvent
from podkit.serving.functions._model import (
    MAX_WORKERS,
    FunctionApp,
    FunctionSpec,
    QueueTrigger,
    load_app,
)
from podkit.serving.functions._pool import (
    DEFAULT_IDLE,
    DEFAULT_START_TIMEOUT,
    DEFAULT_STOP_GRACE,
    DEFAULT_THREADS,
    DEFAULT_WORKERS,
    WorkerPools,
)
from podkit.serving.functions._request import encode_result
from podkit.serving.functions._runner import (
    DEFAULT_CALL_TTL,
    DEFAULT_CALLBACK_TIMEOUT,
    DEFAULT_MAX_BODY,
    FunctionRunner,
)

T = TypeVar("T")

DEFAULT_BACKEND = "sqlite:///functions.db"
MAX_THREADS_LIMIT = 10_000  # --max-threads above this is a typo, not a plan
DEFAULT_RELOAD_CHECK = 0.5  # seconds between looks at the app's files with --reload

_app_arg = click.argument("app", type=click.Path(dir_okay=False))
_backend = click.option(
    "--backend",
    default=DEFAULT_BACKEND,
    show_default=True,
    help="Where queues, calls and idempotency records live: sqlite:///path.db or redis://host:port/db.",
)
_json_flag = click.option("--json", "as_json", is_flag=True, help="Print JSON.")


def _with_runner(
    app: FunctionApp,
    backend: str,
    work: Callable[[FunctionRunner], Awaitable[T]],
    *,
    read_only: bool = False,
) -> T:
    async def main() -> T:
        async with FunctionRunner(app, backend=backend, read_only=read_only) as runner:
            return await work(runner)

    result: T = run_async(main())
    return result


def _parse_json(text: str | None, what: str) -> Any:
    if text is None:
        return None
    if text == "-":
        text = sys.stdin.read()
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise click.BadParameter(f"not JSON: {exc}", param_hint=what) from exc


def _queues(app: FunctionApp, name: str | None) -> list[tuple[FunctionSpec, str]]:
    specs = [app.get(name)] if name else list(app.functions.values())
    pairs = []
    for spec in specs:
        pairs.append((spec, spec.queue_name))
        pairs.extend((spec, t.queue) for t in spec.triggers if isinstance(t, QueueTrigger))
    return pairs


@click.group(name="functions", cls=PodkitGroup)
def group() -> None:
    """Functions run by HTTP requests, events, queue items and timers (APP is a Python file).

    Events and asynchronous calls go through the work queue of --backend, at least once,
    with retries and a dead-letter set.
    """


@group.command()
@_app_arg
@click.option(
    "--listen",
    type=HOSTPORT,
    default="127.0.0.1:8080",
    show_default=True,
    help="Address to serve the HTTP routes, POST /functions/NAME and GET /calls/ID on.",
)
@_backend
@click.option(
    "--visibility",
    type=DURATION,
    default=format_duration(DEFAULT_VISIBILITY_TIMEOUT),
    show_default=True,
    help="Lease of an event or item: a crashed process's events are delivered again after it.",
)
@click.option(
    "--isolation",
    type=click.Choice(["process", "inline"]),
    default="process",
    show_default=True,
    help="process: each function runs in its own worker processes (a crash stays there); "
    "inline: in this process (fastest, no isolation).",
)
@click.option(
    "--workers",
    type=click.IntRange(1, MAX_WORKERS),
    default=DEFAULT_WORKERS,
    show_default=True,
    help="Most worker processes of one function (a function's workers= overrides it).",
)
@click.option(
    "--idle",
    type=DURATION,
    default=format_duration(DEFAULT_IDLE),
    show_default=True,
    help="A worker with nothing to do for this long stops; the pool scales to zero.",
)
@click.option(
    "--max-request-body",
    type=SIZE,
    default=format_size(DEFAULT_MAX_BODY),
    show_default=True,
    help="Largest request body a function is given, in memory (413 above it).",
)
@click.option(
    "--call-ttl",
    type=DURATION,
    default=f"{DEFAULT_CALL_TTL / 3600:g}h",
    show_default=True,
    help="How long an asynchronous call's result is kept for GET /calls/ID.",
)
@click.option(
    "--callback-timeout",
    type=DURATION,
    default=format_duration(DEFAULT_CALLBACK_TIMEOUT),
    show_default=True,
    help="How long an X-Callback-Url has to accept a call's result (then it is logged, dropped).",
)
@click.option(
    "--worker-start-timeout",
    type=DURATION,
    default=format_duration(DEFAULT_START_TIMEOUT),
    show_default=True,
    help="A worker not ready by then fails its invocation (503).",
)
@click.option(
    "--worker-stop-grace",
    type=DURATION,
    default=format_duration(DEFAULT_STOP_GRACE),
    show_default=True,
    help="A stopped worker gets this long to exit after its invocations, then it is killed.",
)
@click.option(
    "--max-threads",
    type=click.IntRange(1, MAX_THREADS_LIMIT),
    default=DEFAULT_THREADS,
    show_default=True,
    help="Threads running plain (not async) functions at once, in each process.",
)
@click.option(
    "--reload",
    is_flag=True,
    help="When APP (or a Python file beside it) changes, serve its new routes, subscriptions, "
    "queues and timers and restart the workers on its new code (a file that fails to load "
    "changes nothing).",
)
@click.option(
    "--reload-check",
    type=DURATION,
    default=format_duration(DEFAULT_RELOAD_CHECK),
    show_default=True,
    help="How often --reload looks at the app's files.",
)
@access_log_options
@server_limit_options
@runtime_options
def serve(
    app: str,
    listen: HostPort,
    backend: str,
    visibility: float,
    isolation: str,
    workers: int,
    idle: float,
    max_request_body: int,
    call_ttl: float,
    callback_timeout: float,
    worker_start_timeout: float,
    worker_stop_grace: float,
    max_threads: int,
    reload: bool,
    reload_check: float,
    limits: ServerLimits,
    access_log: AccessLogSettings,
    runtime: RuntimeOptions,
) -> int:
    """Serve the functions of APP: HTTP routes on --listen, events, queues and timers.

    Routes are the functions' own, plus POST /functions/NAME (any function, JSON body) and
    GET /calls/ID (the result of an asynchronous call: a request with 'Prefer:
    respond-async' is answered 202 with a call id, and 'X-Callback-Url' gets the result).
    """
    if visibility <= 0:
        raise click.BadParameter("must be positive", param_hint="--visibility")
    for value, flag in [
        (idle, "--idle"),
        (call_ttl, "--call-ttl"),
        (callback_timeout, "--callback-timeout"),
        (worker_start_timeout, "--worker-start-timeout"),
        (reload_check, "--reload-check"),
    ]:
        if value <= 0:
            raise click.BadParameter("must be positive", param_hint=flag)
    functions = load_app(app)

    async def main(rt: Runtime) -> None:
        loop = asyncio.get_running_loop()
        loop.set_default_executor(
            ThreadPoolExecutor(max_workers=max_threads, thread_name_prefix="podkit-function")
        )
        async with contextlib.AsyncExitStack() as stack:
            pools = None
            if isolation == "process":
                pools = await stack.enter_async_context(
                    WorkerPools(
                        functions,
                        app_path=app,
                        backend=backend,
                        registry=rt.registry,
                        log=rt.log,
                        max_workers=workers,
                        idle=idle,
                        log_format=runtime.log_format,
                        log_level=runtime.log_level,
                        start_timeout=worker_start_timeout,
                        stop_grace=worker_stop_grace,
                        max_threads=max_threads,
                    )
                )
            runner = await stack.enter_async_context(
                FunctionRunner(
                    functions,
                    backend=backend,
                    visibility=visibility,
                    registry=rt.registry,
                    log=rt.log,
                    max_body=min(max_request_body, limits.max_body_bytes),
                    call_ttl=call_ttl,
                    callback_timeout=callback_timeout,
                    pools=pools,
                )
            )

            def status() -> dict[str, Any]:
                figures: dict[str, Any] = {
                    "summary": f"{len(runner.app.functions)} functions, "
                    f"{sum(runner.running.values())} running",
                    "running": dict(runner.running),
                }
                if pools is not None:
                    stats = {name: pool.statistics() for name, pool in pools.pools.items()}
                    figures["workers"] = {name: st.workers for name, st in stats.items()}
                    figures["worker_pids"] = {name: st.pids for name, st in stats.items()}
                    figures["cold_starts"] = {name: st.cold_starts for name, st in stats.items()}
                return figures

            rt.add_status(status)
            async with HTTPServer(
                runner.handle,
                host=listen.host,
                port=listen.port,
                limits=limits,
                registry=rt.registry,
                metrics_prefix="podkit_functions_http",
                name="functions",
                access_log=access_log,
            ) as server:
                rt.on_reload(server.reopen_access_log)
                rt.log.info(
                    "listening",
                    extra={
                        "listen": f"{listen.host}:{server.port}",
                        "functions": sorted(functions.functions),
                        "backend": backend,
                    },
                )
                stop = asyncio.Event()
                async with asyncio.TaskGroup() as tasks:
                    tasks.create_task(runner.serve_deliveries(stop), name="functions-deliveries")
                    if pools is not None:
                        tasks.create_task(pools.serve_reaper(stop), name="functions-reaper")
                    if reload:
                        tasks.create_task(
                            runner.serve_reload(app, stop, interval=reload_check),
                            name="functions-reload",
                        )

                    # What start-up made lives as long as the server: out of the collector's
                    # sight, a full collection (which in-flight invocations promoted to the
                    # oldest generation trigger every second or so under load) scans only
                    # what is new, in well under a millisecond instead of tens of them.
                    gc.freeze()
                    rt.set_ready()
                    await rt.wait_draining()
                    stop.set()
                    await server.drain(rt.drain_timeout)

    return run_component("functions", main, runtime)


def _describe(spec: FunctionSpec) -> dict[str, Any]:
    return {
        "name": spec.name,
        "triggers": [t.label for t in spec.triggers],
        "concurrency": spec.concurrency,
        "max_attempts": spec.max_attempts,
        "max_age": spec.max_age,
        "queue": spec.queue_name,
        "then": spec.then,
    }


@group.command(name="list")
@_app_arg
@_json_flag
def list_(app: str, as_json: bool) -> None:
    """List the functions of APP with their triggers."""
    functions = load_app(app)
    rows = [_describe(s) for s in sorted(functions.functions.values(), key=lambda s: s.name)]
    if as_json:
        click.echo(json.dumps(rows))
        return
    for row in rows:
        extra = f"  then {row['then']}" if row["then"] else ""
        click.echo(
            f"{row['name']}  {', '.join(row['triggers'])}  concurrency {row['concurrency']}{extra}"
        )


@group.command()
@_app_arg
@click.argument("name")
@click.argument("data", required=False)
@_backend
@click.option(
    "--async",
    "asynchronous",
    is_flag=True,
    help="Queue the call for a running 'serve' and print its id (see 'calls').",
)
def invoke(app: str, name: str, data: str | None, backend: str, asynchronous: bool) -> None:
    """Run function NAME of APP once with DATA (JSON text, '-' for stdin) and print its result.

    An HTTP function gets a POST request with DATA as its body, an event function an event
    with DATA, a queue function DATA itself. Events it emits go to --backend.
    """
    functions = load_app(app)
    spec = functions.get(name)
    payload = _parse_json(data, "DATA")

    async def work(runner: FunctionRunner) -> str:
        if asynchronous:
            return await runner.call_async(spec, {"payload": payload})
        try:
            result = await runner.invoke(spec, "call", *runner.argument(spec, payload))
        except PodkitError:
            raise
        except Exception as exc:
            raise PodkitError(f"{name} failed: {type(exc).__name__}: {exc}") from exc
        status, _headers, body = encode_result(result)
        return body.decode("utf-8", errors="replace") if status != 204 else ""

    output = _with_runner(functions, backend, work)
    if output:
        click.echo(output)


@group.command()
@_app_arg
@click.argument("type")
@click.argument("data", required=False)
@_backend
@click.option("--source", default="podkit/cli", show_default=True, help="The event's source.")
@click.option("--subject", default=None, help="The event's subject.")
@click.option("--id", "event_id", default=None, help="The event's id (default: a new one).")
def emit(
    app: str,
    type: str,
    data: str | None,
    backend: str,
    source: str,
    subject: str | None,
    event_id: str | None,
) -> None:
    """Publish an event of TYPE with DATA (JSON) to the functions of APP subscribed to it."""
    functions = load_app(app)
    payload = _parse_json(data, "DATA")

    async def work(runner: FunctionRunner) -> str:
        event = CloudEvent.create(
            type, payload, now=runner.clock(), source=source, subject=subject, id=event_id
        )
        count = await runner.publish(event)
        return f"{event.id} {count} subscriber{'s' if count != 1 else ''}"

    click.echo(_with_runner(functions, backend, work))


@group.command()
@_app_arg
@click.argument("call_id", required=False)
@_backend
@click.option(
    "--limit",
    type=click.IntRange(1, 10_000),
    default=100,
    show_default=True,
    help="Most calls listed.",
)
@_json_flag
def calls(app: str, call_id: str | None, backend: str, limit: int, as_json: bool) -> None:
    """List asynchronous calls (or show CALL_ID): state, function and result."""
    functions = load_app(app)

    async def work(runner: FunctionRunner) -> list[dict[str, Any]]:
        if call_id is not None:
            record = await runner.call_record(call_id)
            if record is None:
                raise UsageError(f"no call {call_id!r} (or it expired)")
            return [record]
        return await runner.calls(limit)

    records = _with_runner(functions, backend, work, read_only=True)
    if as_json or call_id is not None:
        click.echo(json.dumps(records[0] if call_id is not None else records))
        return
    for r in records:
        extra = f"  status {r['status']}" if "status" in r else ""
        error = f"  error {r['error']}" if r.get("state") in ("failed", "retrying") else ""
        click.echo(f"{r['id']}  {r.get('function')}  {r.get('state')}{extra}{error}")


@group.command()
@_app_arg
@click.argument("name", required=False)
@_backend
@click.option(
    "--limit",
    type=click.IntRange(1, 10_000),
    default=100,
    show_default=True,
    help="Most dead letters listed per function queue.",
)
@_json_flag
def dead(app: str, name: str | None, backend: str, limit: int, as_json: bool) -> None:
    """List the dead-letter set of every function of APP (or of function NAME)."""
    functions = load_app(app)

    async def work(runner: FunctionRunner) -> list[dict[str, Any]]:
        rows = []
        for spec, queue_name in _queues(functions, name):
            for item in await runner.queue(queue_name, spec).dead(limit):
                value = item.value
                kind = value.get("kind") if isinstance(value, dict) else "item"
                what: Any = value
                if kind == "event":
                    what = {k: value["event"].get(k) for k in ("type", "id", "data")}
                elif kind == "call":
                    what = {"call_id": value.get("call_id")}
                rows.append(
                    {
                        "function": spec.name,
                        "queue": queue_name,
                        "id": item.id,
                        "kind": kind,
                        "attempts": item.attempts,
                        "died_at": item.died_at,
                        "error": item.error,
                        "what": what,
                    }
                )
        return rows

    rows = _with_runner(functions, backend, work, read_only=True)
    if as_json:
        click.echo(json.dumps(rows))
        return
    for r in rows:
        click.echo(
            f"{r['function']}  {r['id']}  {r['kind']}  attempts {r['attempts']}  "
            f"error {r['error']}  {json.dumps(r['what'])}"
        )


@group.command()
@_app_arg
@click.argument("name", required=False)
@_backend
@click.option("--id", "ids", multiple=True, help="Only this dead item (repeatable).")
def redrive(app: str, name: str | None, backend: str, ids: tuple[str, ...]) -> None:
    """Deliver dead events, calls and items again (with fresh attempts): every function's,
    function NAME's, or the items named with --id."""
    functions = load_app(app)

    async def work(runner: FunctionRunner) -> int:
        total = 0
        for spec, queue_name in _queues(functions, name):
            total += await runner.queue(queue_name, spec).retry_dead(list(ids) or None)
        return total

    count = _with_runner(functions, backend, work)
    click.echo(f"{count} redriven")


__all__ = ["group"]
