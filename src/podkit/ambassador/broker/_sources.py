"""Where the broker reads the environment's name: a variable, a file or an etcd key.

``env:NAME`` is read once, at the edge (a process's environment does not change under it);
``file:PATH`` is checked every ``interval`` and re-read when its inode, size or mtime
changes; ``etcd://HOST:PORT/KEY`` is read, then watched, and read again after any break of
the watch (with a capped backoff), so a change reaches the broker within milliseconds and a
lost watch within ``interval``.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from podkit.backends.etcd_client import EtcdClient
from podkit.errors import ConfigError, PodkitError
from podkit.runtime.files import serve_file_changes
from podkit.runtime.logging import get_logger

DEFAULT_SOURCE_INTERVAL = 0.25  # file checks, and the longest wait before re-reading etcd
MAX_SOURCE_BYTES = 4096  # an environment name file larger than this is not one
MAX_BACKOFF = 2.0  # etcd reconnects at most this far apart

SourceKind = Literal["env", "file", "etcd"]


@dataclass(frozen=True, slots=True)
class EnvSource:
    """A parsed ``--env-from``: ``kind`` and ``name`` (variable, path or key); ``endpoint``
    for etcd; ``value`` for a variable (read at the edge)."""

    kind: SourceKind
    name: str
    endpoint: str | None = None
    value: str | None = None

    @classmethod
    def parse(cls, text: str, *, environ: dict[str, str] | None = None) -> EnvSource:
        """Parse ``env:NAME``, ``file:PATH`` or ``etcd://HOST:PORT/KEY``.

        Raises:
            ConfigError: none of the three forms.
        """
        value = text.strip()
        if value.startswith("env:") and value[4:].strip():
            name = value[4:].strip()
            env = environ if environ is not None else dict(os.environ)
            return cls("env", name, value=env.get(name))
        if value.startswith("file:") and value[5:].strip():
            return cls("file", value[5:].strip())
        if value.startswith("etcd://"):
            rest = value[len("etcd://") :]
            hostport, slash, key = rest.partition("/")
            if slash and key and ":" in hostport:
                return cls(
                    "etcd",
                    "/" + key if not key.startswith("/") else key,
                    endpoint=f"http://{hostport}",
                )
        raise ConfigError(
            f"expected env:NAME, file:PATH or etcd://HOST:PORT/KEY, got {text!r}",
            path="--env-from",
        )

    def __str__(self) -> str:
        if self.kind == "etcd":
            assert self.endpoint is not None
            return f"etcd://{self.endpoint.removeprefix('http://')}{self.name}"
        return f"{self.kind}:{self.name}"


def read_name_file(path: Path) -> str | None:
    """The environment name a file holds (its first line), or None when it is missing."""
    try:
        with open(path, "rb") as handle:
            data = handle.read(MAX_SOURCE_BYTES)
    except OSError:
        return None
    text = data.decode("utf-8", "replace").strip()
    return text.splitlines()[0].strip() if text else None


async def serve_source(
    source: EnvSource,
    on_value: Callable[[str | None], None],
    *,
    interval: float = DEFAULT_SOURCE_INTERVAL,
) -> None:
    """Report the environment's name to ``on_value`` now and on every change, until
    cancelled."""
    if source.kind == "env":
        on_value(source.value)
        await asyncio.Event().wait()  # nothing changes: wait to be cancelled
    elif source.kind == "file":
        path = Path(source.name)
        on_value(read_name_file(path))
        await serve_file_changes(path, lambda: on_value(read_name_file(path)), interval=interval)
    else:
        await _serve_etcd(source, on_value, interval=interval)


async def _serve_etcd(
    source: EnvSource, on_value: Callable[[str | None], None], *, interval: float
) -> None:
    assert source.endpoint is not None
    log = get_logger("broker")
    client = EtcdClient(source.endpoint, timeout=max(1.0, interval * 4))
    backoff = interval
    try:
        while True:
            try:
                found = await client.range(source.name)
                on_value(found.kvs[0].value.decode("utf-8", "replace") if found.kvs else None)
                backoff = interval
                watch = client.watch(source.name, start_revision=found.revision + 1)
                try:
                    async for events in watch:
                        last = events[-1]
                        on_value(
                            None
                            if last.type == "DELETE"
                            else last.kv.value.decode("utf-8", "replace")
                        )
                finally:
                    await watch.aclose()
            except PodkitError as exc:
                log.warning(
                    "environment source failed; retrying",
                    extra={"source": str(source), "error": str(exc)},
                )
            await asyncio.sleep(backoff)
            backoff = min(MAX_BACKOFF, backoff * 2)
    finally:
        await client.aclose()
