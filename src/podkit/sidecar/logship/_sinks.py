"""Where batches go: ``file://``, ``http(s)://`` (JSON lines, POST) and ``redis://`` (XADD).

A sink's :meth:`Sink.send` returns once the batch is durable at the sink (written to the
file, answered 2xx, executed by redis). It raises :class:`SinkUnavailable` when trying again
later may work, and :class:`SinkRejected` when the sink refused the batch for what it is.
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from typing import Any, Final, Protocol
from urllib.parse import parse_qs, urlsplit

from podkit.errors import ConfigError, PodkitError

DEFAULT_SINK_TIMEOUT: Final = 10.0  # a sink that takes longer than this is treated as down


class SinkError(PodkitError):
    """A batch could not be delivered."""


class SinkUnavailable(SinkError):
    """The sink could not take the batch now; the same batch may be retried."""


class SinkRejected(SinkError):
    """The sink refused the batch itself (e.g. HTTP 400); retrying cannot help."""


class Sink(Protocol):
    """A destination for batches of JSON lines."""

    @property
    def description(self) -> str: ...

    async def send(self, lines: list[bytes]) -> None:
        """Deliver ``lines`` (each one JSON document, without newline).

        Raises:
            SinkUnavailable: not delivered; retry later.
            SinkRejected: not delivered and never will be.
        """
        ...

    async def aclose(self) -> None: ...


def _flag(query: dict[str, list[str]], name: str) -> bool:
    values = query.get(name) or [""]
    return values[-1].lower() in ("1", "true", "yes", "on")


class FileSink:
    """Appends JSON lines to a file (``file:///path?fsync=1`` also fsyncs every batch)."""

    def __init__(self, path: str, *, fsync: bool = False) -> None:
        self.path = path
        self.fsync = fsync
        self._fd: int | None = None

    @property
    def description(self) -> str:
        return f"file://{self.path}"

    def _write(self, data: bytes) -> None:
        if self._fd is None:
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
            self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        view = memoryview(data)
        while view:
            written = os.write(self._fd, view)
            view = view[written:]
        if self.fsync:
            os.fsync(self._fd)

    async def send(self, lines: list[bytes]) -> None:
        if not lines:
            return
        data = b"\n".join(lines) + b"\n"
        try:
            self._write(data)
        except OSError as exc:
            # A half-written batch is re-sent whole: the sink sees it at least once.
            await self.aclose()
            raise SinkUnavailable(f"{self.path}: {exc.strerror or exc}") from exc

    async def aclose(self) -> None:
        if self._fd is not None:
            fd, self._fd = self._fd, None
            os.close(fd)


class HTTPSink:
    """POSTs each batch as ``application/x-ndjson``; 2xx acknowledges it.

    408, 429 and 5xx answers and connection failures are retried; other 4xx answers reject
    the batch.
    """

    def __init__(self, url: str, *, timeout: float = DEFAULT_SINK_TIMEOUT) -> None:
        import httpx

        self.url = url
        self._httpx = httpx
        self._client = httpx.AsyncClient(timeout=timeout)

    @property
    def description(self) -> str:
        return self.url

    async def send(self, lines: list[bytes]) -> None:
        if not lines:
            return
        body = b"\n".join(lines) + b"\n"
        try:
            response = await self._client.post(
                self.url, content=body, headers={"Content-Type": "application/x-ndjson"}
            )
        except self._httpx.HTTPError as exc:
            raise SinkUnavailable(f"{self.url}: {exc.__class__.__name__}: {exc}") from exc
        status = response.status_code
        if 200 <= status < 300:
            return
        if status in (408, 429) or status >= 500:
            raise SinkUnavailable(f"{self.url}: answered {status}")
        raise SinkRejected(f"{self.url}: answered {status}: {response.text[:200]!r}")

    async def aclose(self) -> None:
        await self._client.aclose()


class RedisStreamSink:
    """XADDs one entry per record (field ``record``) to a stream, one pipeline per batch.

    ``maxlen`` (from ``?maxlen=N``) trims the stream approximately, as ``XADD MAXLEN ~ N``.
    """

    def __init__(
        self,
        url: str,
        stream: str,
        *,
        maxlen: int | None = None,
        timeout: float = DEFAULT_SINK_TIMEOUT,
    ) -> None:
        try:
            import redis.asyncio as aioredis
            import redis.exceptions
        except ImportError as exc:  # pragma: no cover - depends on the installed extras
            raise ConfigError(
                "the redis sink needs the redis package: pip install 'podkit[redis]'",
                path="--to",
            ) from exc
        self.url = url
        self.stream = stream
        self.maxlen = maxlen
        self._errors = (redis.exceptions.RedisError, OSError)
        self._client: Any = aioredis.Redis.from_url(
            url, socket_timeout=timeout, socket_connect_timeout=timeout
        )

    @property
    def description(self) -> str:
        return f"{self.url} stream {self.stream}"

    async def send(self, lines: list[bytes]) -> None:
        if not lines:
            return
        try:
            pipe = self._client.pipeline(transaction=False)
            for line in lines:
                pipe.xadd(self.stream, {"record": line}, maxlen=self.maxlen, approximate=True)
            await pipe.execute()
        except self._errors as exc:
            raise SinkUnavailable(f"redis {self.stream}: {exc}") from exc

    async def aclose(self) -> None:
        await self._client.aclose()


def open_sink(url: str, *, timeout: float = DEFAULT_SINK_TIMEOUT) -> Sink:
    """The sink a ``--to`` URL names.

    Forms: ``file:///abs/path[?fsync=1]``, ``http(s)://host:port/path``,
    ``redis://host:port/DB/STREAM[?maxlen=N]`` (also ``rediss://``).

    Raises:
        ConfigError: the URL has another scheme or lacks a part.
    """
    parts = urlsplit(url)
    query = parse_qs(parts.query)
    if parts.scheme == "file":
        path = parts.path
        if not path or parts.netloc not in ("", "localhost"):
            raise ConfigError(f"expected file:///absolute/path, got {url!r}", path="--to")
        return FileSink(path, fsync=_flag(query, "fsync"))
    if parts.scheme in ("http", "https"):
        if not parts.hostname:
            raise ConfigError(f"expected http(s)://host[:port]/path, got {url!r}", path="--to")
        return HTTPSink(url, timeout=timeout)
    if parts.scheme in ("redis", "rediss"):
        segments = [s for s in parts.path.split("/") if s]
        if len(segments) != 2 or not segments[0].isdigit():
            raise ConfigError(f"expected redis://host:port/DB/STREAM, got {url!r}", path="--to")
        maxlen_text = query.get("maxlen", [""])[-1]
        if maxlen_text and not maxlen_text.isdigit():
            raise ConfigError(f"maxlen must be a whole number in {url!r}", path="--to")
        base = f"{parts.scheme}://{parts.netloc}/{segments[0]}"
        return RedisStreamSink(
            base,
            segments[1],
            maxlen=int(maxlen_text) if maxlen_text else None,
            timeout=timeout,
        )
    raise ConfigError(
        f"unknown sink {url!r}: expected file://, http(s):// or redis://", path="--to"
    )


async def close_quietly(sink: Sink) -> None:
    """Close ``sink``; a failure to close is not worth more than the shutdown it delays."""
    try:
        await asyncio.wait_for(sink.aclose(), 5.0)
    except (OSError, TimeoutError, SinkError):
        return
