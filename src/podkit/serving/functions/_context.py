"""The invocation context: what ``emit`` and the wrappers reach while a function runs.

The runner sets a :class:`InvocationContext` in a context variable around each invocation;
``asyncio.to_thread`` copies it into the thread that runs a plain function, so ``emit`` works
from plain and ``async`` functions alike.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import inspect
from collections.abc import Callable, Generator
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

from podkit.errors import UsageError
from podkit.serving.functions._cloudevents import CloudEvent
from podkit.serving.functions._store import FunctionStore

Kind = Literal["http", "event", "queue", "timer", "call"]


class Publisher(Protocol):
    """What the context needs of the runner."""

    loop: asyncio.AbstractEventLoop
    store: FunctionStore
    clock: Callable[[], float]

    async def publish(self, event: CloudEvent) -> int:
        """Deliver ``event`` to its subscribers; how many subscriptions it reached."""


@dataclass(slots=True)
class InvocationContext:
    """One running invocation: which function, how it was triggered, and its runner."""

    function: str
    kind: Kind
    runner: Publisher
    pending: list[asyncio.Future[int]] = field(default_factory=list)


current: contextvars.ContextVar[InvocationContext | None] = contextvars.ContextVar(
    "podkit_function_invocation", default=None
)


def context() -> InvocationContext:
    """The running invocation.

    Raises:
        UsageError: called outside a function run by ``podkit functions``.
    """
    ctx = current.get()
    if ctx is None:
        raise UsageError(
            "no function is running here: emit() and @idempotent/@rate_limit work inside "
            "functions run by 'podkit functions serve' or FunctionRunner"
        )
    return ctx


@functools.lru_cache(maxsize=4096)
def is_async(fn: Callable[..., Any]) -> bool:
    return inspect.iscoroutinefunction(fn)


async def call_handler(fn: Callable[..., Any], *args: Any) -> Any:
    """Call a plain function in a thread (with this context) or await an ``async`` one."""
    if is_async(fn):
        return await fn(*args)
    result = await asyncio.to_thread(fn, *args)
    if inspect.isawaitable(result):
        result = await result
    return result


class Emitted:
    """The result of :func:`emit`: await it for the number of subscriptions reached.

    The event is published as soon as ``emit`` is called; the runner waits for every
    publication of an invocation before answering or acking it, so awaiting is optional.
    """

    __slots__ = ("_count", "_future", "event")

    def __init__(self, event: CloudEvent, future: asyncio.Future[int] | None, count: int = 0):
        self.event = event
        self._future = future
        self._count = count

    @property
    def id(self) -> str:
        """The event's id."""
        return self.event.id

    def __await__(self) -> Generator[Any, None, int]:
        if self._future is None:
            return self._count
        return (yield from self._future.__await__())


def emit(
    type: str,
    data: Any = None,
    *,
    source: str | None = None,
    subject: str | None = None,
    id: str | None = None,
    extensions: dict[str, str] | None = None,
) -> Emitted:
    """Publish a CloudEvent of ``type`` with ``data`` (a JSON value) to its subscribers.

    Delivery is at least once, through each subscriber's work queue. From an ``async``
    function ``await emit(...)``; from a plain one call it (it blocks until the event is
    stored).

    Raises:
        UsageError: outside a running function, or an invalid attribute.
    """
    ctx = context()
    runner = ctx.runner
    event = CloudEvent.create(
        type,
        data,
        now=runner.clock(),
        source=source or f"podkit/functions/{ctx.function}",
        subject=subject,
        id=id,
        extensions=extensions,
    )
    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:
        loop = None
    if loop is runner.loop:
        future = asyncio.ensure_future(runner.publish(event))
        ctx.pending.append(future)
        return Emitted(event, future)
    if loop is not None:
        raise UsageError("emit() from a foreign event loop: call it from the function itself")
    count = asyncio.run_coroutine_threadsafe(runner.publish(event), runner.loop).result()
    return Emitted(event, None, count)
