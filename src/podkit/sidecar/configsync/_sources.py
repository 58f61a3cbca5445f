"""Where configuration comes from: an HTTP endpoint or an etcd key or prefix.

HTTP: a conditional GET (``If-None-Match`` with the last ``ETag``, ``If-Modified-Since`` with
the last ``Last-Modified``); ``304 Not Modified`` means nothing to do. The validators sent are
those of the last version *applied* (:meth:`Source.accept`), never of a version that failed to
parse, render or validate: a rejected version is fetched in full again on the next round and
keeps failing (and the sidecar unready) until the source serves one that is applied. In
watch mode the request also carries ``Prefer: wait=N`` (RFC 7240), which long-poll servers
honour by holding the request until the content changes; a server that answers at once is
polled instead.

etcd (``etcd://host:port/key``, or ``etcd://host:port/prefix/`` for every key under a prefix,
rendered as one JSON object ``{"relative/key": value}``, values parsed as JSON when they are):
read through the v3 JSON gateway; in watch mode the next read waits for a watch event from
the revision of the last read. After a failure the next read does not wait, and it takes the
store's revision afresh, so a restarted etcd (or an empty one that replaced it) is followed.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import time
from dataclasses import dataclass
from typing import Any, Final, Protocol
from urllib.parse import urlsplit

import httpx

from podkit.backends.etcd_client import EtcdClient, prefix_end
from podkit.errors import BackendError, ConfigError
from podkit.sidecar.configsync._core import Stage, SyncFailure

DEFAULT_SOURCE_TIMEOUT: Final = 10.0  # a config endpoint slower than this counts as down
DEFAULT_LONG_POLL: Final = 30.0  # under common proxies' 60 s idle timeouts
MAX_CONFIG_BYTES: Final = 16 * 1024 * 1024  # a config bigger than this is a mistake upstream
DEFAULT_WATCH_WAIT: Final = 60.0  # an etcd watch is renewed this often, to notice a dead stream


@dataclass(frozen=True, slots=True)
class Snapshot:
    """The source's content and its version (ETag, Last-Modified or etcd revision)."""

    body: bytes
    version: str | None


class Source(Protocol):
    @property
    def description(self) -> str: ...

    async def fetch(self, *, wait: float | None) -> Snapshot | None:
        """The content if it may have changed since the last fetch, else None.

        Args:
            wait: in watch mode, how long to wait for a change before answering None.

        Raises:
            SyncFailure: (stage ``fetch``) the source is down or answered an error.
        """
        ...

    def accept(self) -> None:
        """The last snapshot fetched was applied: later fetches may answer None until the
        source changes again. Until this is called, every fetch returns the content."""
        ...

    async def aclose(self) -> None: ...


class HTTPSource:
    """An HTTP(S) endpoint read with conditional GETs (and long-polls in watch mode).

    Args:
        every: in watch mode, the polling interval for servers that do not hold requests.
    """

    def __init__(
        self, url: str, *, timeout: float = DEFAULT_SOURCE_TIMEOUT, every: float = 10.0
    ) -> None:
        self.url = url
        self.every = every
        self._client = httpx.AsyncClient(timeout=timeout)
        self._etag: str | None = None
        self._last_modified: str | None = None
        # The validators of the last answer, kept apart until its content is applied.
        self._fetched: tuple[str | None, str | None] = (None, None)

    @property
    def description(self) -> str:
        return self.url

    async def fetch(self, *, wait: float | None) -> Snapshot | None:
        headers = {"Accept": "application/json, */*;q=0.5"}
        if self._etag:
            headers["If-None-Match"] = self._etag
        if self._last_modified:
            headers["If-Modified-Since"] = self._last_modified
        timeout: httpx.Timeout | None = None
        if wait is not None:
            headers["Prefer"] = f"wait={max(1, round(wait))}"
            connect = self._client.timeout.connect
            timeout = httpx.Timeout(connect, read=wait + (self._client.timeout.read or 10.0))
        started = time.monotonic()
        try:
            if timeout is None:
                response = await self._client.get(self.url, headers=headers)
            else:
                response = await self._client.get(self.url, headers=headers, timeout=timeout)
        except httpx.HTTPError as exc:
            raise SyncFailure(Stage.FETCH, f"{self.url}: {exc.__class__.__name__}") from exc
        if response.status_code == 304:
            if wait is not None and time.monotonic() - started < wait / 2:
                # The server does not hold requests: poll it instead.
                await asyncio.sleep(self.every)
            return None
        if response.status_code != 200:
            raise SyncFailure(Stage.FETCH, f"{self.url}: answered {response.status_code}")
        if len(response.content) > MAX_CONFIG_BYTES:
            raise SyncFailure(Stage.FETCH, f"{self.url}: more than {MAX_CONFIG_BYTES} bytes")
        etag = response.headers.get("etag")
        last_modified = response.headers.get("last-modified")
        self._fetched = (etag, last_modified)
        return Snapshot(response.content, etag or last_modified)

    def accept(self) -> None:
        self._etag, self._last_modified = self._fetched

    async def aclose(self) -> None:
        await self._client.aclose()


class EtcdSource:
    """An etcd key (or every key under a prefix) read through the JSON gateway
    (:class:`~podkit.backends.etcd_client.EtcdClient`)."""

    def __init__(
        self,
        endpoint: str,
        key: str,
        *,
        prefix: bool,
        timeout: float = DEFAULT_SOURCE_TIMEOUT,
    ) -> None:
        self.endpoint = endpoint
        self.key = key
        self.prefix = prefix
        self._client = EtcdClient(endpoint, timeout=timeout)
        self._range_end = prefix_end(key) if prefix else None
        self._revision: int | None = None  # the store's revision at the last read
        # What was last returned: the revision-based version and a digest of the keys and
        # values. Revisions alone repeat when etcd comes back empty (its data lost) and is
        # written again; the digest tells that content apart.
        self._seen: tuple[str, str] | None = None
        self._fetched: tuple[str, str] | None = None  # what the last fetch returned

    @property
    def description(self) -> str:
        kind = "prefix" if self.prefix else "key"
        return f"etcd {self.endpoint} {kind} {self.key}"

    async def _wait_change(self, after_revision: int, wait: float) -> bool:
        """Whether a watch event came within ``wait`` seconds after ``after_revision``."""
        events = self._client.watch(self.key, self._range_end, start_revision=after_revision + 1)
        try:
            await asyncio.wait_for(anext(events), wait)
        except TimeoutError:
            return False
        except StopAsyncIteration:
            return True  # the stream ended: read again to find out
        finally:
            await events.aclose()
        return True

    async def fetch(self, *, wait: float | None) -> Snapshot | None:
        try:
            watching = wait is not None and self._revision is not None
            if watching and not await self._wait_change(
                self._revision or 0, min(wait or 0.0, DEFAULT_WATCH_WAIT)
            ):
                return None
            result = await self._client.range(self.key, self._range_end)
        except BackendError as exc:
            raise SyncFailure(Stage.FETCH, str(exc)) from exc
        self._revision = result.revision
        if not result.kvs:
            raise SyncFailure(Stage.FETCH, f"{self.description}: not found")
        version = str(max(kv.mod_revision for kv in result.kvs)) + f"/{len(result.kvs)}"
        digest = hashlib.sha256()
        for kv in result.kvs:
            for part in (kv.key, kv.value):
                digest.update(len(part).to_bytes(8, "big") + part)
        seen = (version, digest.hexdigest())
        if seen == self._seen:
            return None
        self._fetched = seen
        if not self.prefix:
            return Snapshot(result.kvs[0].value, version)
        tree: dict[str, Any] = {}
        for kv in result.kvs:
            name = kv.key.decode("utf-8", "replace")[len(self.key) :]
            text = kv.value.decode("utf-8", "replace")
            try:
                tree[name] = json.loads(text)
            except ValueError:
                tree[name] = text
        body = json.dumps(tree, indent=2, sort_keys=True).encode() + b"\n"
        return Snapshot(body, version)

    def accept(self) -> None:
        self._seen = self._fetched

    async def aclose(self) -> None:
        await self._client.aclose()


def open_source(url: str, *, timeout: float = DEFAULT_SOURCE_TIMEOUT, every: float) -> Source:
    """The source a ``--source`` URL names: ``http(s)://...`` or ``etcd://host:port/key``.

    The etcd key is the URL's path without its first ``/``; a trailing ``/`` selects every key
    under that prefix.

    Raises:
        ConfigError: the URL has another scheme or no key.
    """
    parts = urlsplit(url)
    if parts.scheme in ("http", "https"):
        if not parts.hostname:
            raise ConfigError(f"expected http(s)://host[:port]/path, got {url!r}", path="--source")
        return HTTPSource(url, timeout=timeout, every=every)
    if parts.scheme in ("etcd", "etcds"):
        key = parts.path[1:]  # etcd://h:p/app/conf is the key "app/conf"; "//app" is "/app"
        if not parts.hostname or not key or key == "/":
            raise ConfigError(f"expected etcd://host:port/key, got {url!r}", path="--source")
        scheme = "https" if parts.scheme == "etcds" else "http"
        return EtcdSource(
            f"{scheme}://{parts.netloc}", key, prefix=key.endswith("/"), timeout=timeout
        )
    raise ConfigError(f"unknown source {url!r}: expected http(s):// or etcd://", path="--source")
