"""The function runner: invocations from HTTP requests, events, queue items and timers.

Theory of operation. HTTP routes are served by the engine (:class:`HTTPServer` with
:meth:`FunctionRunner.handle` as its handler). Everything else is delivered through the work
queue (:mod:`podkit.batch.queue`), so it is at least once and survives a crash of any
process: each function has its own queue, ``fn.NAME``, holding the events it subscribed to
and its asynchronous calls; ``emit`` puts one item per subscriber (fan-out), keyed by the
event id so a repeated publication is stored once. A :class:`QueueWorker` per queue leases
items, runs the function and acks; a failure is retried with the queue's backoff and
dead-lettered after the function's ``max_attempts``; an event older than its ``max_age``
and an input that fails validation go to the dead-letter set at once. Functions triggered by
a user's queue (``on_queue``) get a worker on that queue.

Each function has ``concurrency`` slots in a process: an HTTP request that finds them taken is
answered 429 at once; events and items wait for a slot (the queue holds the backlog).

A reload swaps the app (:meth:`FunctionRunner.replace_app`): its routes answer from the next
request, and :meth:`FunctionRunner.serve_deliveries` starts the queue workers and timers of
the new version while those of the old one finish what they hold.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import secrets
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, TypeVar

import httpx
from prometheus_client import CollectorRegistry

from podkit.batch.queue.client import DEFAULT_VISIBILITY_TIMEOUT, Item, PutRequest, Queue
from podkit.batch.queue.states import RetryPolicy
from podkit.batch.queue.worker import QueueWorker
from podkit.engines.http import EMPTY_BODY, Request, Response
from podkit.errors import BackendError, ConfigError, PodkitError, UsageError
from podkit.serving.functions._cloudevents import CloudEvent
from podkit.serving.functions._context import (
    InvocationContext,
    Kind,
    call_handler,
    current,
    is_async,
)
from podkit.serving.functions._errors import FunctionError, Overloaded, RateLimited
from podkit.serving.functions._model import (
    EventTrigger,
    FunctionApp,
    FunctionSpec,
    HttpTrigger,
    QueueTrigger,
    TimerTrigger,
    app_fingerprint,
    load_app,
)
from podkit.serving.functions._pool import WorkerPools
from podkit.serving.functions._request import FunctionRequest, encode_outcome
from podkit.serving.functions._stats import FunctionStats, Slots
from podkit.serving.functions._store import FunctionStore, open_store
from podkit.serving.functions._timers import next_interval
from podkit.serving.functions._wire import (
    Outcome,
    RemoteError,
    decode_error,
    encode_args,
)

T = TypeVar("T")

DEFAULT_CALL_TTL = 86400.0  # an asynchronous call's result is kept this long
DEFAULT_MAX_BODY = 1 << 20  # 1 MiB: the largest request body a function is given
DEFAULT_CALLBACK_TIMEOUT = 10.0  # a callback URL has this long to take a call's result
PUBLISH_ATTEMPTS = 3  # a publication that fails (store unavailable) is tried this often
# Puts in flight at once from one process: a function that emits thousands of events at
# once must not open a store connection for each (redis-py's pool refuses past its limit).
MAX_CONCURRENT_PUTS = 32
MAX_PUT_BATCH = 500  # items in one put_many: one SQLite transaction or one Redis script
CALL_ID_BYTES = 16
ASYNC_PREFERENCE = "respond-async"  # RFC 7240: Prefer: respond-async asks for a 202


def _json_response(
    status: int, body: Any, headers: list[tuple[bytes, bytes]] | None = None
) -> Response:
    fields = [(b"Content-Type", b"application/json"), *(headers or [])]
    return Response(status, fields, json.dumps(body, separators=(",", ":")).encode() + b"\n")


def _error_response(exc: BaseException) -> Response:
    if isinstance(exc, RemoteError) and not exc.public:
        return _json_response(exc.status, {"error": "the function failed"})
    if isinstance(exc, FunctionError):
        headers: list[tuple[bytes, bytes]] = []
        if isinstance(exc, RateLimited):
            headers.append((b"Retry-After", str(max(1, round(exc.retry_after))).encode()))
        return _json_response(exc.status, {"error": str(exc)}, headers)
    if isinstance(exc, UsageError):
        return _json_response(400, {"error": str(exc)})
    return _json_response(500, {"error": "the function failed"})


class FunctionRunner:
    """Runs the functions of an app: ``async with FunctionRunner(app, backend=url) as r:``.

    Args:
        app: the functions.
        backend: the store of queues and state: ``sqlite:///path.db`` or ``redis://h:p/db``.
        visibility: lease length of an event or item; a crashed process's items are
            delivered again after it.
        registry: a Prometheus registry for the metrics (None: a private one).
        clock: seconds since the epoch.
        log: where to log.
        max_body: the largest request body passed to a function (413 above it).
        call_ttl: how long an asynchronous call's result is kept.
        callback_timeout: how long a callback URL has to accept an asynchronous call's
            result.
        pools: run each function in its worker processes (None: in this process).
        read_only: only look (calls, dead letters): a SQLite file is opened read-only and
            never created.
    """

    def __init__(
        self,
        app: FunctionApp,
        *,
        backend: str,
        visibility: float = DEFAULT_VISIBILITY_TIMEOUT,
        registry: CollectorRegistry | None = None,
        clock: Callable[[], float] = time.time,
        log: logging.Logger | None = None,
        max_body: int = DEFAULT_MAX_BODY,
        call_ttl: float = DEFAULT_CALL_TTL,
        callback_timeout: float = DEFAULT_CALLBACK_TIMEOUT,
        pools: WorkerPools | None = None,
        read_only: bool = False,
    ) -> None:
        if visibility <= 0:
            raise UsageError("visibility must be positive")
        self.app = app
        self.backend = backend
        self.visibility = visibility
        self.clock = clock
        self.log = log or logging.getLogger("podkit.functions")
        self.max_body = max_body
        self.call_ttl = call_ttl
        self.callback_timeout = callback_timeout
        self.pools = pools
        self._puts = asyncio.Semaphore(MAX_CONCURRENT_PUTS)
        self._batches: dict[str, list[tuple[PutRequest, asyncio.Future[None]]]] = {}
        self.slots = {name: Slots(s.concurrency) for name, s in app.functions.items()}
        self.metrics = FunctionStats(self.slots, registry)
        self.read_only = read_only
        self.store: FunctionStore = open_store(backend, read_only=read_only)
        self.queues: dict[str, Queue] = {}
        self.loop: asyncio.AbstractEventLoop
        self._opened = False
        self._app_changed = asyncio.Event()
        self._stale_queues: list[Queue] = []

    async def __aenter__(self) -> FunctionRunner:
        """Check that the backend answers (a missing SQLite directory, a Redis that cannot
        be reached: an error now rather than at the first event)."""
        self.loop = asyncio.get_running_loop()
        try:
            await self.store.get("ping", now=self.clock())
        except BaseException:
            await self.store.aclose()
            raise
        self._opened = True
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close the queues and the store."""
        queues, self.queues = [*self.queues.values(), *self._stale_queues], {}
        self._stale_queues = []
        try:
            for queue in queues:
                await queue.aclose()
        finally:
            await self.store.aclose()

    def queue(self, name: str, spec: FunctionSpec | None = None) -> Queue:
        """The work queue ``name`` (opened once; retries follow ``spec``'s backoff)."""
        queue = self.queues.get(name)
        if queue is None:
            retry = RetryPolicy(base=spec.backoff, cap=spec.backoff_cap) if spec else None
            queue = Queue(
                self.backend, name, retry=retry, clock=self.clock, read_only=self.read_only
            )
            self.queues[name] = queue
        return queue

    def function_queue(self, spec: FunctionSpec) -> Queue:
        return self.queue(spec.queue_name, spec)

    # -- invoking -------------------------------------------------------------------------

    @property
    def running(self) -> dict[str, int]:
        """Invocations running now, by function."""
        return {name: slots.used for name, slots in self.slots.items()}

    async def _take_slot(self, spec: FunctionSpec, kind: Kind, wait: bool) -> Slots:
        slots = self.slots[spec.name]
        if wait:
            await slots.take()
        elif not slots.take_now():
            self.metrics.invoked(spec.name, kind, "rejected", 0.0)
            raise Overloaded(f"{spec.name} runs {spec.concurrency} calls already")
        return slots

    async def _in_slot(
        self, spec: FunctionSpec, kind: Kind, wait: bool, run: Callable[[], Awaitable[T]]
    ) -> T:
        """``await run()`` in one of ``spec``'s slots, counted in the metrics."""
        slots = await self._take_slot(spec, kind, wait)
        started = time.perf_counter()
        outcome = "error"
        try:
            result = await run()
            outcome = "ok"
            return result
        finally:
            slots.give()
            self.metrics.invoked(spec.name, kind, outcome, time.perf_counter() - started)

    async def invoke(self, spec: FunctionSpec, kind: Kind, *args: Any, wait: bool = True) -> Any:
        """Run ``spec``'s function with ``args`` in this process, in one of its slots.

        With ``wait`` False, a function whose slots are all taken raises
        :class:`Overloaded` at once instead of waiting. Publications made by the function
        (``emit``) are finished before this returns.

        Returns:
            What the function returned.

        Raises:
            Overloaded: no free slot and ``wait`` is False.
            Exception: whatever the function raised.
        """
        return await self._in_slot(spec, kind, wait, lambda: self.run_local(spec, kind, args))

    async def execute(
        self, spec: FunctionSpec, kind: Kind, args: tuple[Any, ...], *, wait: bool = True
    ) -> Outcome:
        """Run ``spec``'s function in one of its slots, in its worker pool when the runner
        has pools (else in this process), and return its result as an HTTP answer.

        Raises:
            Overloaded: no free slot and ``wait`` is False.
            FunctionError: the function failed (a :class:`RemoteError` from a worker, or
                :class:`WorkerCrashed` when its process died).
            Exception: in this process, whatever the function raised.
        """
        slots = self.slots[spec.name]
        if wait or not slots.take_now():  # (the common case costs no extra coroutine)
            slots = await self._take_slot(spec, kind, wait)
        started = time.perf_counter()
        outcome = "error"
        try:
            if self.pools is None:
                result = Outcome(*encode_outcome(await self.run_local(spec, kind, args)))
            else:
                reply = await self.pools.get(spec.name).call(kind, encode_args(args))
                _, status, fields, body = reply
                if not status:
                    raise decode_error(fields)
                result = Outcome(status, fields, body)
            outcome = "ok"
            return result
        finally:
            slots.give()
            self.metrics.invoked(spec.name, kind, outcome, time.perf_counter() - started)

    async def run_local(self, spec: FunctionSpec, kind: Kind, args: tuple[Any, ...]) -> Any:
        """Run the function here, now (no slot): its events are published before it returns,
        and with ``then`` its result too."""
        ctx = InvocationContext(spec.name, kind, self)
        handler = spec.handler
        token = current.set(ctx)
        try:
            if is_async(handler):  # awaited here: one coroutine fewer per invocation
                result = await handler(*args)
            else:
                result = await call_handler(handler, *args)
        finally:
            current.reset(token)
            if ctx.pending:
                # the function's events are stored before its invocation counts as done
                await asyncio.gather(*ctx.pending)
        if spec.then is not None and kind != "http":
            await self.publish(
                CloudEvent.create(
                    spec.then, result, now=self.clock(), source=f"podkit/functions/{spec.name}"
                )
            )
        return result

    async def publish(self, event: CloudEvent) -> int:
        """Put ``event`` in the queue of every function subscribed to it (fan-out).

        Returns:
            How many subscriptions it reached.

        Raises:
            BackendError: the store still failed after ``PUBLISH_ATTEMPTS`` tries.
        """
        body = {"kind": "event", "event": event.to_json()}
        targets = []
        for spec, trigger in self.app.subscribers(event.type):
            if event.matches(trigger.filters) and spec not in targets:
                targets.append(spec)
        for spec in targets:
            await self._put(
                spec, PutRequest(body, key=f"event:{event.id}", max_attempts=spec.max_attempts)
            )
        self.metrics.publish(event.type)
        return len(targets)

    async def _put(self, spec: FunctionSpec, request: PutRequest) -> None:
        """Put one item in ``spec``'s queue, batched with the other puts of this turn of the
        event loop: the first one waits one turn, then writes them all in one round trip."""
        name = spec.queue_name
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        batch = self._batches.get(name)
        if batch is not None:
            batch.append((request, future))
            await future
            return
        batch = self._batches[name] = [(request, future)]
        try:
            await asyncio.sleep(0)  # the other publications of this turn join the batch
        except BaseException:
            self._batches.pop(name, None)
            for _, waiting in batch[1:]:
                if not waiting.done():
                    waiting.set_exception(BackendError("publication cancelled"))
            raise
        self._batches.pop(name, None)
        try:
            queue = self.function_queue(spec)
            for start in range(0, len(batch), MAX_PUT_BATCH):
                chunk = batch[start : start + MAX_PUT_BATCH]
                await self._put_many(queue, [r for r, _ in chunk])
                for _, waiting in chunk:
                    if not waiting.done():
                        waiting.set_result(None)
        except BaseException as exc:
            failure = exc if isinstance(exc, Exception) else BackendError("publication cancelled")
            for _, waiting in batch:
                if not waiting.done():
                    waiting.set_exception(failure)
            raise
        await future

    async def _put_many(self, queue: Queue, requests: list[PutRequest]) -> None:
        for attempt in range(1, PUBLISH_ATTEMPTS + 1):
            try:
                async with self._puts:
                    await queue.put_many(requests)
                return
            except BackendError:
                if attempt == PUBLISH_ATTEMPTS:
                    raise
                await asyncio.sleep(0.05 * attempt)

    def event_for(self, spec: FunctionSpec, data: Any) -> CloudEvent:
        """An event that invokes ``spec`` directly (``invoke``, ``POST /functions/NAME``)."""
        etype = next(
            (t.type for t in spec.triggers if isinstance(t, EventTrigger)), "podkit.invoke"
        )
        return CloudEvent.create(etype, data, now=self.clock(), source="podkit/functions/invoke")

    def argument(self, spec: FunctionSpec, payload: Any) -> tuple[Any, ...]:
        """The arguments a direct invocation of ``spec`` with ``payload`` passes."""
        kinds = {type(t) for t in spec.triggers}
        if kinds == {TimerTrigger}:
            return ()
        if EventTrigger in kinds:
            return (self.event_for(spec, payload),)
        if QueueTrigger in kinds:
            return (payload,)
        body = b"" if payload is None else json.dumps(payload).encode()
        return (FunctionRequest("POST", f"/functions/{spec.name}", body=body),)

    # -- HTTP -----------------------------------------------------------------------------

    async def handle(self, request: Request) -> Response:
        """The engine handler: routes, ``POST /functions/NAME`` and ``GET /calls/ID``."""
        path = request.path
        try:
            if path.startswith("/calls/"):
                return await self._get_call(request, path[len("/calls/") :])
            if path.startswith("/functions/"):
                return await self._invoke_by_name(request, path[len("/functions/") :])
            found = self.app.route(request.method, path)
            if found is None:
                allowed = self.app.allowed_methods(path)
                if allowed:
                    return _json_response(
                        405,
                        {"error": f"use {', '.join(allowed)}"},
                        [(b"Allow", ", ".join(allowed).encode())],
                    )
                return _json_response(404, {"error": "no function serves this path"})
            spec, params = found
            if request.body is EMPTY_BODY:
                body = b""
            else:
                body = await request.read(self.max_body)
            freq = FunctionRequest(
                request.method,
                path,
                raw_headers=request.headers,
                query=request.query_string,
                body=body,
                params=params,
                request_id=request.request_id.decode("latin-1"),
            )
            if _wants_async(request):
                return await self._accept_call(spec, {"request": freq.to_json()}, request)
            return await self._answer(spec, "http", (freq,))
        except PodkitError as exc:
            status = getattr(exc, "status", None)
            if isinstance(status, int) and not isinstance(exc, FunctionError):
                return _json_response(status, {"error": str(exc)})
            return _error_response(exc)

    async def _answer(self, spec: FunctionSpec, kind: Kind, args: tuple[Any, ...]) -> Response:
        try:
            outcome = await self.execute(spec, kind, args, wait=False)
        except Exception as exc:
            if not isinstance(exc, FunctionError | UsageError):
                self.log.exception("function failed", extra={"function": spec.name})
            return _error_response(exc)
        return Response(outcome.status, outcome.fields, outcome.body)

    async def _invoke_by_name(self, request: Request, name: str) -> Response:
        if request.method != "POST":
            return _json_response(405, {"error": "use POST"}, [(b"Allow", b"POST")])
        spec = self.app.functions.get(name)
        if spec is None:
            return _json_response(404, {"error": f"no function named {name!r}"})
        body = await request.read(self.max_body)
        try:
            payload = json.loads(body) if body.strip() else None
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            return _json_response(400, {"error": f"the body is not JSON: {exc}"})
        if _wants_async(request):
            return await self._accept_call(spec, {"payload": payload}, request)
        return await self._answer(spec, "call", self.argument(spec, payload))

    # -- asynchronous calls ---------------------------------------------------------------

    async def call_async(
        self, spec: FunctionSpec, what: Mapping[str, Any], *, callback: str | None = None
    ) -> str:
        """Queue a call of ``spec``; its result is kept under the returned call id.

        ``what`` is ``{"request": ...}`` (an HTTP request's JSON form) or
        ``{"payload": ...}``.
        """
        call_id = secrets.token_hex(CALL_ID_BYTES)
        now = self.clock()
        record = {"id": call_id, "function": spec.name, "state": "queued", "created": now}
        await self.store.set(f"call:{call_id}", json.dumps(record), ttl=self.call_ttl, now=now)
        item = {"kind": "call", "call_id": call_id, "callback": callback, **what}
        await self.function_queue(spec).put(
            item, key=f"call:{call_id}", max_attempts=spec.max_attempts
        )
        return call_id

    async def _accept_call(
        self, spec: FunctionSpec, what: Mapping[str, Any], request: Request
    ) -> Response:
        callback = request.header("x-callback-url")
        if callback is not None and not callback.startswith(("http://", "https://")):
            return _json_response(400, {"error": "X-Callback-Url must be an http(s) URL"})
        call_id = await self.call_async(spec, what, callback=callback)
        location = f"/calls/{call_id}"
        return _json_response(
            202,
            {"call_id": call_id, "status": "queued", "location": location},
            [(b"Location", location.encode())],
        )

    async def call_record(self, call_id: str) -> dict[str, Any] | None:
        """The record of an asynchronous call, None when unknown or expired."""
        found = await self.store.get(f"call:{call_id}", now=self.clock())
        if found is None:
            return None
        record: dict[str, Any] = json.loads(found)
        return record

    async def calls(self, limit: int = 100) -> list[dict[str, Any]]:
        """Recent asynchronous calls (by id)."""
        rows = await self.store.scan("call:", now=self.clock(), limit=limit)
        return [json.loads(value) for _, value in rows]

    async def _get_call(self, request: Request, call_id: str) -> Response:
        if request.method not in ("GET", "HEAD"):
            return _json_response(405, {"error": "use GET"}, [(b"Allow", b"GET")])
        record = await self.call_record(call_id)
        if record is None:
            return _json_response(404, {"error": f"no call {call_id!r} (or it expired)"})
        return _json_response(200, record)

    async def _save_call(self, call_id: str, **changes: Any) -> dict[str, Any]:
        record = await self.call_record(call_id) or {"id": call_id}
        record.update(changes)
        await self.store.set(
            f"call:{call_id}", json.dumps(record), ttl=self.call_ttl, now=self.clock()
        )
        return record

    async def _run_call(self, spec: FunctionSpec, item: Item, body: Mapping[str, Any]) -> None:
        call_id = str(body["call_id"])
        if "request" in body:
            args: tuple[Any, ...] = (FunctionRequest.from_json(body["request"]),)
        else:
            args = self.argument(spec, body.get("payload"))
        await self._save_call(call_id, state="running", attempt=item.attempt)
        try:
            outcome = await self.execute(spec, "call", args)
            status, headers, data = outcome.status, outcome.headers, outcome.body
        except Exception as exc:
            last = item.attempt >= item.receipt.max_attempts or (
                isinstance(exc, FunctionError) and not exc.retryable
            )
            record = await self._save_call(
                call_id,
                state="failed" if last else "retrying",
                error=f"{type(exc).__name__}: {exc}",
                finished=self.clock(),
            )
            if last:
                await self._callback(body.get("callback"), record)
            raise
        text = data.decode("utf-8", errors="replace")
        content_type = {k.lower(): v for k, v in headers}.get("content-type", "")
        result_json = json.loads(data) if content_type == "application/json" else None
        record = await self._save_call(
            call_id,
            state="done",
            status=status,
            headers=dict(headers),
            body=text,
            result=result_json,
            finished=self.clock(),
        )
        await self._callback(body.get("callback"), record)

    async def _callback(self, url: Any, record: Mapping[str, Any]) -> None:
        if not isinstance(url, str) or not url:
            return
        try:
            async with httpx.AsyncClient(timeout=self.callback_timeout) as client:
                await client.post(url, json=record)
        except httpx.HTTPError as exc:
            self.log.warning("callback failed", extra={"url": url, "error": str(exc)})

    # -- deliveries -----------------------------------------------------------------------

    async def _dead_letter(
        self, spec: FunctionSpec, queue_name: str, item: Item, reason: str, error: str
    ) -> None:
        """Move ``item`` to the dead-letter set now (its remaining attempts cannot help)."""
        last = dataclasses.replace(item.receipt, max_attempts=item.attempt)
        await self.queue(queue_name, spec).nack(last, error=error)
        self.metrics.dead_lettered(spec.name, reason)
        self.log.warning(
            "dead-lettered", extra={"function": spec.name, "item_id": item.id, "error": error}
        )

    def _delivery_handler(self, spec: FunctionSpec, queue_name: str) -> Callable[[Item], Any]:
        async def handle(item: Item) -> None:
            try:
                await self._deliver(spec, queue_name, item)
            except Exception as exc:
                if item.attempt >= item.receipt.max_attempts:
                    self.metrics.dead_lettered(spec.name, "attempts")
                self.log.warning(
                    "delivery failed",
                    extra={
                        "function": spec.name,
                        "item_id": item.id,
                        "attempt": item.attempt,
                        "error": f"{type(exc).__name__}: {exc}",
                    },
                )
                raise

        return handle

    async def _deliver(self, spec: FunctionSpec, queue_name: str, item: Item) -> None:
        if queue_name != spec.queue_name:  # a user's queue: the function gets the value
            try:
                await self.execute(spec, "queue", (item.value,))
            except FunctionError as exc:
                if exc.retryable:
                    raise
                await self._dead_letter(spec, queue_name, item, "invalid", str(exc))
            return
        body = item.value
        if not isinstance(body, dict):
            await self._dead_letter(spec, queue_name, item, "invalid", "not a function queue item")
            return
        if body.get("kind") == "call":
            try:
                await self._run_call(spec, item, body)
            except FunctionError as exc:
                if exc.retryable:
                    raise
                await self._dead_letter(spec, queue_name, item, "invalid", str(exc))
            return
        try:
            event = CloudEvent.from_json(body.get("event") or {})
            age = self.clock() - event.timestamp
        except UsageError as exc:
            await self._dead_letter(spec, queue_name, item, "invalid", str(exc))
            return
        if age > spec.max_age:
            await self._dead_letter(
                spec,
                queue_name,
                item,
                "max_age",
                f"event older than max age ({age:.1f}s > {spec.max_age:g}s)",
            )
            return
        try:
            await self.execute(spec, "event", (event,))
        except FunctionError as exc:
            if exc.retryable:
                raise
            await self._dead_letter(spec, queue_name, item, "invalid", str(exc))

    def delivery_queues(self, app: FunctionApp | None = None) -> list[tuple[FunctionSpec, str]]:
        """The (function, queue) pairs a runner works on (for ``app``, default its own)."""
        pairs: list[tuple[FunctionSpec, str]] = []
        for spec in (app or self.app).functions.values():
            kinds = {type(t) for t in spec.triggers}
            if kinds & {EventTrigger, HttpTrigger}:
                pairs.append((spec, spec.queue_name))
            pairs.extend((spec, t.queue) for t in spec.triggers if isinstance(t, QueueTrigger))
        return pairs

    async def serve_deliveries(self, stop: asyncio.Event) -> None:
        """Work on every function's queue and run the timers until ``stop`` is set; then
        finish the invocations held and return.

        When :meth:`replace_app` swaps the app, the queue workers and timers of the old one
        stop taking work (they finish what they hold, in the background) and those of the
        new one start at once.
        """
        async with asyncio.TaskGroup() as tasks:
            while True:
                self._app_changed.clear()
                generation = asyncio.Event()
                tasks.create_task(
                    self._serve_generation(self.app, generation), name="functions-generation"
                )
                await _wait_either(stop, self._app_changed)
                generation.set()
                if stop.is_set():
                    return

    async def _serve_generation(self, app: FunctionApp, stop: asyncio.Event) -> None:
        async with asyncio.TaskGroup() as tasks:
            for spec, queue_name in self.delivery_queues(app):
                queue = self.queue(queue_name, spec)
                worker = QueueWorker(
                    queue,
                    self._delivery_handler(spec, queue_name),
                    concurrency=spec.concurrency,
                    visibility=self.visibility,
                    log=self.log,
                )
                tasks.create_task(worker.serve(stop), name=f"functions-{queue_name}")
            for spec in app.functions.values():
                for trigger in spec.triggers:
                    if isinstance(trigger, TimerTrigger):
                        tasks.create_task(
                            self._serve_timer(spec, trigger, stop), name=f"timer-{spec.name}"
                        )

    async def serve_reload(self, path: str, stop: asyncio.Event, *, interval: float) -> None:
        """Reload the app (:meth:`reload_app`) each time its file, or a Python file beside
        it, changes; look every ``interval`` seconds until ``stop`` is set."""
        seen = await asyncio.to_thread(app_fingerprint, path)
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), interval)
            now = await asyncio.to_thread(app_fingerprint, path)
            if now != seen and not stop.is_set():
                seen = now
                await self.reload_app(path)

    async def reload_app(self, path: str) -> bool:
        """Read the app file again and serve what it declares now: routes, subscriptions,
        queues and timers (:meth:`replace_app`), with the workers restarted on its new code.

        A file that fails to load changes nothing: the last good version serves on, and the
        reason is logged once.

        Returns:
            Whether the new version is served.
        """
        try:
            app = await asyncio.to_thread(load_app, path)
        except (Exception, SystemExit) as exc:  # the app's own code ran: anything may come
            reason = str(exc) if isinstance(exc, ConfigError) else f"{type(exc).__name__}: {exc}"
            self.log.error(
                "app reload failed: the last good version serves on",
                extra={"app": path, "error": reason},
            )
            return False
        before = self.app
        self.replace_app(app)
        if self.pools is not None:
            self.pools.replace_app(app)
        self.log.info(
            "app reloaded",
            extra={
                "app": path,
                "functions": sorted(app.functions),
                "added": sorted(set(app.functions) - set(before.functions)),
                "removed": sorted(set(before.functions) - set(app.functions)),
                "triggers": sorted(t.label for s in app.functions.values() for t in s.triggers),
            },
        )
        return True

    def replace_app(self, app: FunctionApp) -> None:
        """Serve ``app`` from now on: its routes answer, its subscriptions, queues and
        timers are worked on (:meth:`serve_deliveries` restarts them). A function that is
        gone keeps its slot counter, so invocations still running finish as they started."""
        self.app = app
        for name, spec in app.functions.items():
            slots = self.slots.get(name)
            if slots is None:
                self.slots[name] = Slots(spec.concurrency)
            else:
                slots.resize(spec.concurrency)
            for queue_name in [spec.queue_name] + [
                t.queue for t in spec.triggers if isinstance(t, QueueTrigger)
            ]:
                queue = self.queues.get(queue_name)
                policy = RetryPolicy(base=spec.backoff, cap=spec.backoff_cap)
                if queue is not None and queue.retry != policy:
                    # the old generation may still use it: closed with the runner
                    self._stale_queues.append(self.queues.pop(queue_name))
        self._app_changed.set()

    async def _serve_timer(
        self, spec: FunctionSpec, trigger: TimerTrigger, stop: asyncio.Event
    ) -> None:
        last = self.clock()
        while not stop.is_set():
            now = self.clock()
            if trigger.cron is not None:
                due = trigger.cron.next_after(last)
            else:
                assert trigger.every is not None
                due = next_interval(max(last, now), trigger.every)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), max(0.0, due - self.clock()))
                return
            last = due
            # one process of the backend runs each firing
            claim = f"timer:{spec.name}:{trigger.label}:{due:.3f}"
            lifetime = max(60.0, trigger.every or 60.0)
            try:
                if not await self.store.add(claim, "1", ttl=lifetime, now=self.clock()):
                    continue
                await self.execute(spec, "timer", ())
            except Exception as exc:
                self.log.warning(
                    "timer function failed",
                    extra={"function": spec.name, "error": f"{type(exc).__name__}: {exc}"},
                )


async def _wait_either(first: asyncio.Event, second: asyncio.Event) -> None:
    """Return when either event is set."""
    if first.is_set() or second.is_set():
        return
    waits = [asyncio.ensure_future(first.wait()), asyncio.ensure_future(second.wait())]
    try:
        await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for wait in waits:
            wait.cancel()


def _wants_async(request: Request) -> bool:
    """Whether a ``Prefer`` field of the request asks for ``respond-async``."""
    for name, value in request.headers:
        if len(name) == 6 and name.lower() == b"prefer":
            text = value.decode("latin-1")
            if any(p.strip().lower() == ASYNC_PREFERENCE for p in text.split(",")):
                return True
    return False


__all__ = ["FunctionRunner"]
