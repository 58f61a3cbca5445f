"""The decorator pattern: behaviour added around a function without changing it.

Each wrapper takes the function (plain or ``async``) and returns an ``async`` function of the
same argument, so wrappers stack in any order; a plain function still runs in a thread.
Wrappers that look at the input use its *payload*: the JSON body of an HTTP request, the
``data`` of an event, the value of a queue item (:func:`payload_of`).

``@idempotent`` and ``@rate_limit`` keep their state in the app's backend (SQLite or Redis),
so they hold across processes; ``@rate_limit`` on Redis is global across machines.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import json
import random
import re
import secrets
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from pydantic import BaseModel, ValidationError

from podkit.errors import UsageError
from podkit.runtime.config import parse_duration
from podkit.serving.functions._cloudevents import CloudEvent
from podkit.serving.functions._context import call_handler, context, current
from podkit.serving.functions._errors import (
    FunctionError,
    FunctionTimeout,
    InProgress,
    InvalidInput,
    RateLimited,
)
from podkit.serving.functions._request import FunctionRequest

AsyncFn = Callable[..., Awaitable[Any]]
Wrapper = Callable[[Callable[..., Any]], AsyncFn]

DEFAULT_IDEMPOTENT_TTL = 3600.0  # how long a finished key's result is remembered
DEFAULT_IDEMPOTENT_LOCK = 60.0  # an in-progress key expires after this (a crashed holder)
DEFAULT_RETRY_ATTEMPTS = 3
DEFAULT_RETRY_BACKOFF = 0.1
DEFAULT_RETRY_CAP = 5.0
DEFAULT_RATE_WAIT = 30.0  # events and items wait at most this long for a turn (max_wait=)
_RATE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*/\s*(\d*)\s*(ms|s|m|h)\s*$")
_RATE_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}


def payload_of(arg: Any) -> Any:
    """The payload of a function's argument (request JSON, event data, item value)."""
    if isinstance(arg, FunctionRequest):
        return arg.json
    if isinstance(arg, CloudEvent):
        return arg.data
    return arg


def with_payload(arg: Any, payload: Any) -> Any:
    """``arg`` with its payload replaced."""
    if isinstance(arg, FunctionRequest):
        arg.json = payload
        return arg
    if isinstance(arg, CloudEvent):
        return dataclasses.replace(arg, data=payload)
    return payload


def _wraps(fn: Callable[..., Any], wrapper: AsyncFn) -> AsyncFn:
    functools.update_wrapper(wrapper, fn)
    # the trigger's spec belongs to the outermost function only
    wrapper.__dict__.pop("__podkit_function__", None)
    return wrapper


def _check_callable(fn: Any, decorator: str) -> None:
    if not callable(fn):
        raise UsageError(f"@{decorator} decorates a function, got {type(fn).__name__}")


def validate(schema: Any) -> Wrapper:
    """Check the payload against ``schema`` before the function runs.

    ``schema`` is a pydantic model (the payload becomes the validated model dumped to JSON
    values, defaults filled in), a dataclass, a mapping of field names to types (each
    required, checked with ``isinstance``), or a callable that returns the payload to use or
    raises ``ValueError``/``TypeError``.

    A payload that fails raises :class:`InvalidInput` (HTTP 422; an event or item goes to
    the dead-letter set without retries).
    """
    check = _schema_check(schema)

    def decorate(fn: Callable[..., Any]) -> AsyncFn:
        _check_callable(fn, "validate")

        async def wrapper(*args: Any) -> Any:
            if not args:
                return await call_handler(fn)
            arg = args[0]
            return await call_handler(fn, with_payload(arg, check(payload_of(arg))), *args[1:])

        return _wraps(fn, wrapper)

    return decorate


def _schema_check(schema: Any) -> Callable[[Any], Any]:
    if isinstance(schema, type) and issubclass(schema, BaseModel):
        model = schema

        def check_model(payload: Any) -> Any:
            try:
                return model.model_validate(payload).model_dump(mode="json")
            except ValidationError as exc:
                problems = "; ".join(
                    f"{'.'.join(str(p) for p in e['loc']) or 'payload'}: {e['msg']}"
                    for e in exc.errors()
                )
                raise InvalidInput(f"invalid input: {problems}") from exc

        return check_model
    if isinstance(schema, type) and dataclasses.is_dataclass(schema):
        cls = schema

        def check_dataclass(payload: Any) -> Any:
            if not isinstance(payload, Mapping):
                raise InvalidInput("invalid input: expected a JSON object")
            try:
                cls(**payload)
            except TypeError as exc:
                raise InvalidInput(f"invalid input: {exc}") from exc
            return payload

        return check_dataclass
    if isinstance(schema, Mapping):
        fields = dict(schema)

        def check_fields(payload: Any) -> Any:
            if not isinstance(payload, Mapping):
                raise InvalidInput("invalid input: expected a JSON object")
            for name, kind in fields.items():
                if name not in payload:
                    raise InvalidInput(f"invalid input: {name}: field required")
                if isinstance(kind, type | tuple) and not isinstance(payload[name], kind):
                    want = kind.__name__ if isinstance(kind, type) else str(kind)
                    raise InvalidInput(f"invalid input: {name}: expected {want}")
            return payload

        return check_fields
    if callable(schema):
        fn = schema

        def check_callable(payload: Any) -> Any:
            try:
                return fn(payload)
            except (ValueError, TypeError) as exc:
                raise InvalidInput(f"invalid input: {exc}") from exc

        return check_callable
    raise UsageError(
        f"@validate takes a pydantic model, a dataclass, a mapping or a callable, "
        f"got {type(schema).__name__}"
    )


def defaults(values: Mapping[str, Any] | None = None, /, **more: Any) -> Wrapper:
    """Fill the payload's missing fields (a missing or null payload becomes the defaults)."""
    filled = {**(values or {}), **more}

    def decorate(fn: Callable[..., Any]) -> AsyncFn:
        _check_callable(fn, "defaults")

        async def wrapper(*args: Any) -> Any:
            if not args:
                return await call_handler(fn)
            arg = args[0]
            payload = payload_of(arg)
            if payload is None:
                payload = dict(filled)
            elif isinstance(payload, Mapping):
                payload = {**filled, **payload}
            else:
                raise InvalidInput("invalid input: expected a JSON object")
            return await call_handler(fn, with_payload(arg, payload), *args[1:])

        return _wraps(fn, wrapper)

    return decorate


def timeout(duration: str | float) -> Wrapper:
    """Fail with :class:`FunctionTimeout` (HTTP 504) when the function runs longer.

    An ``async`` function is cancelled; a plain one cannot be stopped inside its thread,
    so it runs on unobserved while the invocation fails.
    """
    seconds = parse_duration(duration, field="timeout")
    if seconds <= 0:
        raise UsageError("@timeout must be positive")

    def decorate(fn: Callable[..., Any]) -> AsyncFn:
        _check_callable(fn, "timeout")

        async def wrapper(*args: Any) -> Any:
            try:
                return await asyncio.wait_for(call_handler(fn, *args), seconds)
            except TimeoutError as exc:
                if isinstance(exc, FunctionError):
                    raise
                raise FunctionTimeout(
                    f"{getattr(fn, '__name__', 'function')} took longer than {seconds:g}s"
                ) from exc

        return _wraps(fn, wrapper)

    return decorate


def retry(
    attempts: int = DEFAULT_RETRY_ATTEMPTS,
    *,
    backoff: str | float = DEFAULT_RETRY_BACKOFF,
    cap: str | float = DEFAULT_RETRY_CAP,
    on: type[BaseException] | tuple[type[BaseException], ...] = Exception,
) -> Wrapper:
    """Call again, in place, when the function raises one of ``on``: up to ``attempts``
    calls, waiting ``backoff`` doubled per attempt (up to ``cap``, with jitter).

    :class:`InvalidInput` is never retried. Events and items are also redelivered by the
    queue after this wrapper gives up.
    """
    if isinstance(attempts, bool) or not isinstance(attempts, int) or attempts < 1:
        raise UsageError("@retry attempts must be a whole number of at least 1")
    base = parse_duration(backoff, field="backoff")
    longest = parse_duration(cap, field="cap")

    def decorate(fn: Callable[..., Any]) -> AsyncFn:
        _check_callable(fn, "retry")

        async def wrapper(*args: Any) -> Any:
            for attempt in range(1, attempts + 1):
                try:
                    return await call_handler(fn, *args)
                except InvalidInput:
                    raise
                except on:
                    if attempt == attempts:
                        raise
                wait = min(longest, base * 2 ** (attempt - 1))
                await asyncio.sleep(wait * (1 - random.random() / 2))
            raise AssertionError("unreachable")  # pragma: no cover

        return _wraps(fn, wrapper)

    return decorate


def parse_rate(text: str) -> tuple[float, float]:
    """``"10/s"``, ``"100/m"``, ``"5/10s"`` as (calls, per seconds).

    Raises:
        UsageError: not that form.
    """
    match = _RATE.match(text)
    if match is None or float(match.group(1)) <= 0:
        raise UsageError(f"a rate is CALLS/UNIT such as 10/s, 100/m or 5/10s, got {text!r}")
    count = float(match.group(1))
    per = float(match.group(2) or 1) * _RATE_UNITS[match.group(3)]
    if per <= 0:
        raise UsageError(f"a rate's period must be positive, got {text!r}")
    return count, per


def rate_limit(
    rate: str,
    *,
    burst: int | None = None,
    key: str | None = None,
    max_wait: str | float = DEFAULT_RATE_WAIT,
) -> Wrapper:
    """Allow at most ``rate`` calls (``"10/s"``), with bursts of up to ``burst`` (default:
    the calls of one period) — counted in the app's backend, so the limit is shared by every
    process on the backend (global across machines on Redis).

    An HTTP call over the limit gets 429 with ``Retry-After``; an event or queue item waits
    for its turn (back-pressure), up to ``max_wait`` (30 s), then fails and is retried.
    """
    longest_wait = parse_duration(max_wait, field="max_wait")
    count, per = parse_rate(rate)
    interval = per / count
    allowed = burst if burst is not None else max(1, int(count))
    if allowed < 1:
        raise UsageError("@rate_limit burst must be at least 1")
    cells = allowed - 1  # GCRA's tolerance: calls allowed ahead of the steady rate

    def decorate(fn: Callable[..., Any]) -> AsyncFn:
        _check_callable(fn, "rate_limit")
        name = key or fn.__qualname__

        async def wrapper(*args: Any) -> Any:
            ctx = context()
            runner = ctx.runner
            deadline = time.monotonic() + longest_wait
            while True:
                wait = await runner.store.gcra(
                    f"rate:{name}", interval=interval, burst=cells, now=runner.clock()
                )
                if wait <= 0:
                    return await call_handler(fn, *args)
                if ctx.kind == "http" or time.monotonic() + wait > deadline:
                    raise RateLimited(f"rate limit {rate} reached", retry_after=wait)
                await asyncio.sleep(wait)

        return _wraps(fn, wrapper)

    return decorate


def _key_getter(key: str | Callable[[Any], Any]) -> Callable[[Any], str]:
    if callable(key):
        fn = key
        return lambda payload: str(fn(payload))
    if not key.startswith("$"):
        raise UsageError(f"an idempotency key is a path like $.id or $.user.email, got {key!r}")
    parts = [p for p in key[1:].split(".") if p]

    def get(payload: Any) -> str:
        value = payload
        for part in parts:
            if isinstance(value, Mapping) and part in value:
                value = value[part]
            elif isinstance(value, list) and part.isdigit() and int(part) < len(value):
                value = value[int(part)]
            else:
                raise InvalidInput(f"invalid input: the idempotency key {key} is missing")
        if isinstance(value, Mapping | list):
            return json.dumps(value, sort_keys=True, separators=(",", ":"))
        return str(value)

    return get


def idempotent(
    key: str | Callable[[Any], Any] = "$.id",
    *,
    ttl: str | float = DEFAULT_IDEMPOTENT_TTL,
    lock: str | float = DEFAULT_IDEMPOTENT_LOCK,
) -> Wrapper:
    """Run the body once per key: the first call holds an in-progress lock (expiring after
    ``lock``, so a crashed holder does not block the key forever); later calls with the key
    get the first call's result for ``ttl``, or :class:`InProgress` (HTTP 409; an event is
    retried later) while it runs.

    ``key`` is a path into the payload (``"$.id"``, ``"$.user.email"``) or a callable of
    the payload. The result is remembered when it is a JSON value (else None is).
    """
    get_key = _key_getter(key)
    keep = parse_duration(ttl, field="ttl")
    hold = parse_duration(lock, field="lock")
    if keep <= 0 or hold <= 0:
        raise UsageError("@idempotent ttl and lock must be positive")

    def decorate(fn: Callable[..., Any]) -> AsyncFn:
        _check_callable(fn, "idempotent")
        scope = fn.__qualname__

        async def wrapper(*args: Any) -> Any:
            runner = context().runner
            store = runner.store
            record_key = f"idem:{scope}:{get_key(payload_of(args[0]) if args else None)}"
            running = json.dumps({"state": "running", "token": secrets.token_hex(8)})
            for _ in range(2):  # a key that expired between add and get is tried again
                if await store.add(record_key, running, ttl=hold, now=runner.clock()):
                    break
                found = await store.get(record_key, now=runner.clock())
                if found is None:
                    continue
                record = json.loads(found)
                if record.get("state") == "done":
                    return record.get("result")
                raise InProgress(f"another call with this key is running ({record_key})")
            else:
                raise InProgress(f"the key is contended ({record_key})")
            try:
                result = await call_handler(fn, *args)
            except BaseException:
                await asyncio.shield(store.delete_if(record_key, running))
                raise
            try:
                done = json.dumps({"state": "done", "result": result})
            except (TypeError, ValueError):
                done = json.dumps({"state": "done", "result": None})
            await store.set(record_key, done, ttl=keep, now=runner.clock())
            return result

        return _wraps(fn, wrapper)

    return decorate


__all__ = [
    "current",
    "defaults",
    "idempotent",
    "parse_rate",
    "payload_of",
    "rate_limit",
    "retry",
    "timeout",
    "validate",
    "with_payload",
]
