"""Messages between the runner and its worker processes: length-prefixed JSON frames.

A frame is a 4-byte big-endian length and that many bytes of JSON. The runner sends
``{"id", "kind", "function", "arg"}``; the worker answers ``{"id", "outcome"}`` (status,
fields, body as latin-1 text) or ``{"id", "error"}`` (what the runner needs to answer or retry).
Arguments are the JSON forms of a request or an event, or a queue item's value.
"""

from __future__ import annotations

import asyncio
import base64
import json
import struct
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from podkit.errors import UsageError
from podkit.serving.functions._cloudevents import CloudEvent
from podkit.serving.functions._context import Kind
from podkit.serving.functions._errors import FunctionError, RateLimited
from podkit.serving.functions._request import FunctionRequest

try:  # orjson is an optional accelerator (``podkit[fast]``); the frames are the same JSON
    import orjson

    def _dumps(message: Any) -> bytes:
        try:
            return orjson.dumps(message)
        except TypeError:  # what orjson refuses (an integer over 64 bits): the stdlib's
            return json.dumps(message, separators=(",", ":")).encode()

    _loads: Callable[[bytes], Any] = orjson.loads
except ImportError:  # pragma: no cover - orjson is installed by the dev extra

    def _dumps(message: Any) -> bytes:
        return json.dumps(message, separators=(",", ":")).encode()

    _loads = json.loads

MAX_FRAME = 64 << 20  # 64 MiB: far above the request body limit; a larger length is a bug
_LENGTH = struct.Struct(">I")


class FrameProtocol(asyncio.Protocol):
    """Frames in, messages out: ``on_message(dict)`` per frame, ``on_close()`` at the end.

    Parsing happens in ``data_received`` (no task or await per frame), and the frames sent
    in one turn of the event loop leave in one write: under load, many invocations share a
    system call and a wake-up of the other process.
    """

    def __init__(
        self,
        on_message: Callable[[dict[str, Any]], None],
        on_close: Callable[[], None],
    ) -> None:
        self.on_message = on_message
        self.on_close = on_close
        self.transport: asyncio.Transport | None = None
        self._buffer = bytearray()
        self._outgoing: list[bytes] = []

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        buffer = self._buffer
        buffer += data
        start = 0
        size = len(buffer)
        while size - start >= _LENGTH.size:
            (length,) = _LENGTH.unpack_from(buffer, start)
            if length > MAX_FRAME:
                self._buffer.clear()
                if self.transport is not None:
                    self.transport.abort()
                return
            end = start + _LENGTH.size + length
            if end > size:
                break
            message = _loads(bytes(buffer[start + _LENGTH.size : end]))
            start = end
            self.on_message(message)
        if start:
            del buffer[:start]

    def send(self, message: dict[str, Any]) -> None:
        if self.transport is None or self.transport.is_closing():
            return
        if not self._outgoing:
            asyncio.get_running_loop().call_soon(self._flush)
        self._outgoing.append(frame(message))

    def flush(self) -> None:
        """Write what was sent in this turn of the loop now."""
        self._flush()

    def _flush(self) -> None:
        outgoing, self._outgoing = self._outgoing, []
        if outgoing and self.transport is not None and not self.transport.is_closing():
            self.transport.write(b"".join(outgoing))

    def connection_lost(self, exc: Exception | None) -> None:
        self.on_close()


def frame(message: dict[str, Any]) -> bytes:
    data = _dumps(message)
    return _LENGTH.pack(len(data)) + data


def encode_args(kind: Kind, args: tuple[Any, ...]) -> Any:
    """The JSON form of an invocation's arguments."""
    if not args:
        return None
    arg = args[0]
    if isinstance(arg, FunctionRequest):
        return {"request": arg.to_json()}
    if isinstance(arg, CloudEvent):
        return {"event": arg.to_json()}
    if isinstance(arg, bytes):
        return {"bytes": base64.b64encode(arg).decode()}
    return {"value": arg}


def decode_args(arg: Any) -> tuple[Any, ...]:
    if arg is None:
        return ()
    if "request" in arg:
        return (FunctionRequest.from_json(arg["request"]),)
    if "event" in arg:
        return (CloudEvent.from_json(arg["event"]),)
    if "bytes" in arg:
        return (base64.b64decode(arg["bytes"]),)
    return (arg["value"],)


@dataclass(frozen=True, slots=True)
class Outcome:
    """A function's result as an HTTP answer: status, fields and body."""

    status: int
    headers: list[tuple[str, str]]
    body: bytes

    def to_json(self) -> dict[str, Any]:
        # bytes as latin-1 text: one JSON character per byte (escaped above 127)
        return {"status": self.status, "headers": self.headers, "body": self.body.decode("latin-1")}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Outcome:
        return cls(
            int(data["status"]),
            [(str(k), str(v)) for k, v in data["headers"]],
            str(data["body"]).encode("latin-1"),
        )


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
