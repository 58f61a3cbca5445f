"""Messages between the runner and its worker processes: length-prefixed ``marshal`` frames.

A frame is a 4-byte big-endian length and that many bytes of :mod:`marshal` data: the list
of the messages one side sent in one turn of its event loop (one encoding and one parse per
batch, not per message; marshal writes a string repeated in the batch once). Both ends
are processes of this code on one machine, connected through a Unix socket in a directory
only this user can enter, and every connection starts with its spawn token: marshal is the
cheapest encoding CPython has for its own values (bytes stay bytes: no base64, no latin-1
text, no JSON parser on either side).

The hot path carries tuples:

- a call, runner to worker: ``(id, kind, function, arg)`` where ``arg`` is ``None`` (no
  argument), ``(REQUEST, method, path, query, fields, body, params, request_id)`` with the
  request's fields as the byte pairs the server received, ``(EVENT, attributes)``,
  ``(BYTES, data)`` or ``(VALUE, value)``;
- a reply, worker to runner: ``(id, status, fields, body)`` with the response's fields as
  byte pairs ready for the engine, or ``(id, 0, error, b"")`` with what the runner needs to
  answer or retry (:func:`encode_error`).

The handshake (``hello`` with the token and pid, then ``ready`` or ``failed``) is small
dictionaries. Every value on the wire is built from ints, strings, bytes, lists, tuples and
dicts (JSON values, fields, bodies); one that marshal refuses is a bug, and the connection is
aborted rather than a call left waiting: the runner sees the worker as crashed.
"""

from __future__ import annotations

import asyncio
import logging
import marshal
import struct
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from podkit.errors import UsageError
from podkit.serving.functions._cloudevents import CloudEvent
from podkit.serving.functions._errors import FunctionError, RateLimited
from podkit.serving.functions._request import FunctionRequest

MAX_FRAME = 64 << 20  # 64 MiB: far above the request body limit; a larger length is a bug
MARSHAL_VERSION = 4  # the current format of CPython 3.4 and later (both ends run one Python)
_LENGTH = struct.Struct(">I")
log = logging.getLogger("podkit.functions")
_LENGTH_SIZE = _LENGTH.size
_unpack_length = _LENGTH.unpack_from
_pack_length = _LENGTH.pack
_dumps = marshal.dumps
_loads = marshal.loads

# what the argument of a call is (the first element of its tuple)
REQUEST = 1
EVENT = 2
BYTES = 3
VALUE = 4

Fields = list[tuple[bytes, bytes]]


class FrameProtocol(asyncio.Protocol):
    """Frames in, messages out: ``on_message(message)`` per frame, ``on_close()`` at the end.

    Parsing happens in ``data_received`` (no task or await per frame), and the frames sent
    in one turn of the event loop leave in one write: under load, many invocations share a
    system call and a wake-up of the other process. The answers given while the frames of
    one read are handled (a worker's invocations that finish without suspending) leave at
    the end of that read, without waiting for the next turn.
    """

    def __init__(
        self,
        on_message: Callable[[Any], None],
        on_close: Callable[[], None],
    ) -> None:
        self.on_message = on_message
        self.on_close = on_close
        self.transport: asyncio.Transport | None = None
        self._pending: list[bytes] = []  # the start of a frame not yet whole
        self._pending_size = 0
        self._needed = _LENGTH_SIZE  # bytes of the frame that _pending starts
        self._outgoing: list[bytes] = []
        self._receiving = False  # in data_received: what is sent is written at its end

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        if self._pending:  # the rest of a frame: joined once it is all here, never regrown
            self._pending.append(data)
            self._pending_size += len(data)
            if self._pending_size < self._needed:
                return
            data = b"".join(self._pending)
            self._pending = []
        size = len(data)
        self._receiving = True
        try:
            start = self._parse(data, memoryview(data), size)
        finally:
            self._receiving = False
            if self._outgoing:  # what the messages answered at once leaves now, in one write
                self._flush()
        if start < size:
            self._pending = [data[start:]]
            self._pending_size = size - start

    def _parse(self, data: bytes, view: memoryview, size: int) -> int:
        """Hand each whole frame to ``on_message``; where the first incomplete one starts."""
        start = 0
        while size - start >= _LENGTH_SIZE:
            (length,) = _unpack_length(data, start)
            if length > MAX_FRAME:
                if self.transport is not None:
                    self.transport.abort()
                return size
            end = start + _LENGTH_SIZE + length
            if end > size:
                self._needed = end - start
                return start
            messages = _loads(view[start + _LENGTH_SIZE : end])
            start = end
            for message in messages:
                self.on_message(message)
        self._needed = _LENGTH_SIZE
        return start

    def send(self, message: Any) -> None:
        if self.transport is None or self.transport.is_closing():
            return
        if not self._outgoing and not self._receiving:
            asyncio.get_running_loop().call_soon(self._flush)
        self._outgoing.append(message)

    def flush(self) -> None:
        """Write what was sent in this turn of the loop now."""
        self._flush()

    def _flush(self) -> None:
        outgoing, self._outgoing = self._outgoing, []
        transport = self.transport
        if not outgoing or transport is None or transport.is_closing():
            return
        try:
            data = frames(outgoing)
        except ValueError:
            log.exception("a message marshal cannot carry: the connection is aborted")
            transport.abort()
            return
        transport.write(data)

    def connection_lost(self, exc: Exception | None) -> None:
        self.on_close()


def frames(messages: list[Any], *, limit: int = MAX_FRAME) -> bytes:
    """``messages`` as frames: one, or several when their encoding would exceed ``limit``
    (many large bodies sent at once).

    Raises:
        ValueError: a message holds a value marshal cannot carry.
    """
    data = _dumps(messages, MARSHAL_VERSION)
    if len(data) <= limit or len(messages) == 1:
        return _pack_length(len(data)) + data
    half = len(messages) // 2
    return frames(messages[:half], limit=limit) + frames(messages[half:], limit=limit)


def encode_args(args: tuple[Any, ...]) -> Any:
    """The wire form of an invocation's arguments."""
    if not args:
        return None
    arg = args[0]
    if isinstance(arg, FunctionRequest):
        return (
            REQUEST,
            arg.method,
            arg.path,
            arg.query_string,
            arg.raw_fields(),
            arg.body,
            arg.params,
            arg.request_id,
        )
    if isinstance(arg, CloudEvent):
        return (EVENT, arg.to_json())
    if isinstance(arg, bytes):
        return (BYTES, arg)
    return (VALUE, arg)


def decode_args(arg: Any) -> tuple[Any, ...]:
    """The arguments of an invocation from their wire form.

    Raises:
        UsageError: an event without its required attributes.
    """
    if arg is None:
        return ()
    what = arg[0]
    if what == REQUEST:
        _, method, path, query, fields, body, params, request_id = arg
        return (
            FunctionRequest(
                method,
                path,
                raw_headers=fields,
                query=query,
                body=body,
                params=params,
                request_id=request_id,
            ),
        )
    if what == EVENT:
        return (CloudEvent.from_json(arg[1]),)
    return (arg[1],)


@dataclass(frozen=True, slots=True)
class Outcome:
    """A function's result as an HTTP answer: status, fields (byte pairs) and body."""

    status: int
    fields: Fields
    body: bytes

    @property
    def headers(self) -> list[tuple[str, str]]:
        """The fields as text."""
        return [(k.decode("latin-1"), v.decode("latin-1")) for k, v in self.fields]


class RemoteError(FunctionError):
    """A function failed in its worker process. ``public``: whether the message may be
    shown to an HTTP client (it is a :class:`FunctionError` the function chose to raise)."""

    def __init__(
        self, message: str, *, status: int, retryable: bool, public: bool, kind: str
    ) -> None:
        super().__init__(message, status=status)
        self.retryable = retryable
        self.public = public
        self.kind = kind


class WorkerCrashed(FunctionError):
    """The worker process running the invocation died (it is started again for the next)."""

    status = 502


def encode_error(exc: BaseException) -> dict[str, Any]:
    """What the runner needs to know of a function's exception."""
    if isinstance(exc, FunctionError):
        body: dict[str, Any] = {
            "type": type(exc).__name__,
            "message": str(exc),
            "status": exc.status,
            "retryable": exc.retryable,
            "public": True,
        }
        if isinstance(exc, RateLimited):
            body["retry_after"] = exc.retry_after
        return body
    status = 400 if isinstance(exc, UsageError) else 500
    return {
        "type": type(exc).__name__,
        "message": f"{type(exc).__name__}: {exc}",
        "status": status,
        "retryable": True,
        "public": status == 400,
    }


def decode_error(body: dict[str, Any]) -> FunctionError:
    if body.get("type") == "RateLimited" or "retry_after" in body:
        return RateLimited(str(body["message"]), retry_after=float(body.get("retry_after", 1.0)))
    return RemoteError(
        str(body["message"]),
        status=int(body.get("status", 500)),
        retryable=bool(body.get("retryable", True)),
        public=bool(body.get("public", False)),
        kind=str(body.get("type", "Exception")),
    )
