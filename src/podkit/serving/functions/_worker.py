"""Worker processes of functions, forked from a zygote so a cold start is short.

Theory of operation. Starting a Python process and importing podkit takes most of a second
on a busy machine, too long for a cold start. The runner therefore starts one *zygote* at
start-up (``python -m podkit.serving.functions._worker``): it imports podkit, the queue
backends and the event loop, then waits on its stdin for spawn requests. For each one it
forks; the child imports the app file (so a worker started after an edit runs the new
code), connects to the runner's Unix socket, says hello with its token and serves
invocations (:mod:`~podkit.serving.functions._wire` frames) until the runner closes the
connection. The zygote ignores its children's exits (the kernel reaps them); the runner sees a
worker die as the end of its connection.

Workers ignore SIGINT and SIGTERM: the runner drains them by closing their connections, and
if the runner itself dies they see the end of the connection and exit.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import gc
import json
import os
import signal
import sys
from collections.abc import Coroutine, Generator
from concurrent.futures import ThreadPoolExecutor
from typing import Any


def _quiet_signals() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)


async def serve_worker(request: dict[str, Any]) -> None:
    """Connect to the runner and run invocations of one function until it hangs up."""
    from podkit.errors import PodkitError
    from podkit.serving.functions._errors import FunctionError
    from podkit.serving.functions._model import load_app
    from podkit.serving.functions._request import encode_outcome
    from podkit.serving.functions._runner import FunctionRunner
    from podkit.serving.functions._wire import FrameProtocol, decode_args, encode_error

    loop = asyncio.get_running_loop()
    loop.set_default_executor(
        ThreadPoolExecutor(max_workers=request["max_threads"], thread_name_prefix="podkit-function")
    )
    hung_up = asyncio.Event()
    # the runner sends invocations only after "ready", when on_message is set below
    protocol = FrameProtocol(lambda message: None, hung_up.set)
    await loop.create_unix_connection(lambda: protocol, request["socket"])
    protocol.send({"hello": request["token"], "pid": os.getpid()})
    try:
        app = load_app(request["app"])
        spec = app.get(request["function"])
    except PodkitError as exc:
        protocol.send({"failed": str(exc)})
        protocol.flush()
        return
    async with FunctionRunner(app, backend=request["backend"]) as runner:
        log = runner.log
        send = protocol.send
        run_local = runner.run_local

        async def handle(call_id: int, kind: Any, arg: Any) -> None:
            try:
                result = await run_local(spec, kind, decode_args(arg))
                send((call_id, *encode_outcome(result)))
            except Exception as exc:
                if not isinstance(exc, FunctionError):
                    log.exception("function failed", extra={"function": spec.name})
                send((call_id, 0, encode_error(exc), b""))

        async with asyncio.TaskGroup() as tasks:

            def start(message: tuple[Any, ...]) -> None:
                call_id, kind, _function, arg = message
                start_eagerly(tasks, handle(call_id, kind, arg))

            protocol.on_message = start
            gc.freeze()  # the app and podkit stay: full collections scan only what is new
            protocol.send({"ready": True})
            await hung_up.wait()


def start_eagerly(tasks: asyncio.TaskGroup, coro: Coroutine[Any, Any, None]) -> None:
    """Run ``coro`` now, up to its first suspension; a task continues it from there.

    Most invocations of an ``async`` function finish without suspending: they then cost no
    task and no turn of the event loop (what ``asyncio.eager_task_factory`` does from Python
    3.12). The first step runs in a copy of the context, the one the task then keeps, so
    context variables behave as in a task started the ordinary way.
    """
    context = contextvars.copy_context()
    try:
        yielded = context.run(coro.send, None)
    except StopIteration:
        return
    tasks.create_task(_resume(coro, yielded), context=context)


async def _resume(coro: Coroutine[Any, Any, None], yielded: Any) -> None:
    await _Suspended(coro, yielded)


class _Suspended:
    """An awaitable that continues a coroutine stopped at ``yielded``: each value the task
    sends or throws in goes on to the coroutine, as ``await coro`` would have done."""

    __slots__ = ("coro", "yielded")

    def __init__(self, coro: Coroutine[Any, Any, None], yielded: Any) -> None:
        self.coro = coro
        self.yielded = yielded

    def __await__(self) -> Generator[Any, Any, None]:
        coro, pending = self.coro, self.yielded
        while True:
            try:
                sent = yield pending
            except GeneratorExit:
                coro.close()
                raise
            except BaseException as exc:  # cancellation and the like go on to the coroutine
                try:
                    pending = coro.throw(exc)
                except StopIteration:
                    return
            else:
                try:
                    pending = coro.send(sent)
                except StopIteration:
                    return


def _worker_child(request: dict[str, Any]) -> None:
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    code = 0
    try:
        from podkit.runtime.component import run_async
        from podkit.runtime.logging import configure_logging

        configure_logging(
            "functions",
            log_format=request.get("log_format", "json"),
            level=request.get("log_level", "info"),
        )
        run_async(serve_worker(request))
    except BaseException:  # the child must never return into the zygote's loop
        import traceback

        traceback.print_exc()
        code = 1
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


def zygote_main() -> None:
    """Import what workers need, then fork one worker per spawn request on stdin."""
    _quiet_signals()
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # children are reaped by the kernel
    # what every worker needs, imported once here instead of once per cold start
    import podkit.backends.sqlite_queue
    import podkit.functions
    import podkit.serving.functions._runner
    import podkit.serving.functions._wire

    with contextlib.suppress(ImportError):  # redis is an extra
        import podkit.backends.redis_queue  # noqa: F401
    stdin = sys.stdin.buffer
    for line in stdin:
        request = json.loads(line)
        pid = os.fork()
        if pid == 0:
            stdin.close()
            _worker_child(request)
    # stdin closed: the runner is gone; running workers leave when their connections close


if __name__ == "__main__":
    zygote_main()
