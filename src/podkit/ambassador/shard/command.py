"""``podkit shard``: the sharding ambassador for memcached and Redis."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
from pathlib import Path
from typing import Any

import click

from podkit.ambassador.shard._proxy import (
    DEFAULT_CONNECT_TIMEOUT,
    DEFAULT_HOT_TTL,
    DEFAULT_MAX_CONNECTIONS,
    DEFAULT_MAX_PENDING,
    DEFAULT_SERVER_CONNECTIONS,
    DEFAULT_TIMEOUT,
    ShardProxy,
    ShardSettings,
    merge_shards_documents,
)
from podkit.ambassador.shard._router import (
    ALGORITHMS,
    DEFAULT_FAIL_LIMIT,
    DEFAULT_RETRY_AFTER,
    KEY_HASHES,
)
from podkit.apps.proxy import reserve_port
from podkit.engines.workers import WorkerPool, serve_workers, worker_link
from podkit.errors import ConfigError
from podkit.runtime import HostPort, Runtime, RuntimeOptions, format_duration, run_component
from podkit.runtime.cli_options import DURATION, HOSTPORT, SIZE, runtime_options
from podkit.runtime.config import parse_hostport
from podkit.runtime.files import serve_file_changes
from podkit.runtime.httpserver import Request, Response

FILE_POLL_INTERVAL = 1.0  # seconds between checks of --shards-file, as balance's backends file
MAX_SHARDS = 1024  # a proxy fanning out to more shards wants a second tier, not one process


def parse_shard(
    text: str, *, source: str = "<flags>", path: str = "--shard"
) -> tuple[str, HostPort]:
    """Parse ``NAME=HOST:PORT``, or ``HOST:PORT`` and ``SCHEME://HOST:PORT`` (the lines of a
    pod file's discovery file), named after the address.

    Raises:
        ConfigError: the text is not of that form.
    """
    text = text.strip()
    name, sep, address = text.partition("=")
    if not sep:
        # "HOST:PORT", or a discovery file's "SCHEME://HOST:PORT": named after the address.
        name = address = text.partition("://")[2] if "://" in text else text
    name = name.strip()
    if not name or any(c.isspace() for c in name):
        raise ConfigError(
            f"expected NAME=HOST:PORT with a name without spaces, got {text!r}",
            source=source,
            path=path,
        )
    try:
        return name, parse_hostport(address, field=path)
    except ConfigError as exc:
        raise ConfigError(exc.reason, source=source, path=path) from exc


def read_shards_file(path: Path) -> list[tuple[str, HostPort]]:
    """Read a shards file: one ``NAME=HOST:PORT`` (or ``HOST:PORT``) a line; ``#`` starts a
    comment.

    Raises:
        ConfigError: the file cannot be read or a line is malformed (named by number).
    """
    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigError(f"cannot read: {exc.strerror or exc}", source=str(path)) from exc
    shards = []
    for number, line in enumerate(text.splitlines(), start=1):
        line = line.split("#", 1)[0].strip()
        if line:
            shards.append(parse_shard(line, source=str(path), path=f"line {number}"))
    return shards


def build_settings(
    *, shards: list[tuple[str, HostPort]], hash_tag: str, replicas: int, **options: Any
) -> ShardSettings:
    """Validate the shard list and options into :class:`ShardSettings`.

    Raises:
        ConfigError: no shard, a repeated name, a bad hash tag or replica count.
    """
    if not shards:
        raise ConfigError("give at least one --shard NAME=HOST:PORT or a --shards-file")
    if len(shards) > MAX_SHARDS:
        raise ConfigError(f"at most {MAX_SHARDS} shards, got {len(shards)}", path="--shard")
    names = [name for name, _ in shards]
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise ConfigError(f"shard name(s) given twice: {', '.join(repeated)}", path="--shard")
    if hash_tag and len(hash_tag) != 2:
        raise ConfigError(
            f"expected two characters such as '{{}}', got {hash_tag!r}", path="--hash-tag"
        )
    if not 1 <= replicas <= len(shards):
        raise ConfigError(
            f"expected 1 to {len(shards)} (the number of shards), got {replicas}",
            path="--replicas",
        )
    return ShardSettings(
        shards=tuple(shards), hash_tag=hash_tag.encode(), replicas=replicas, **options
    )


async def serve_shard(
    rt: Runtime,
    settings: ShardSettings,
    *,
    reuse_port: bool = False,
    shards_file: Path | None = None,
    flag_shards: tuple[tuple[str, HostPort], ...] = (),
) -> None:
    """Serve the sharding proxy until the runtime drains.

    With ``shards_file``, the file is read again when it changes and on SIGHUP (its shards
    follow ``flag_shards``, the ``--shard`` flags).
    """
    watch: asyncio.Task[None] | None = None
    async with ShardProxy(
        settings, reuse_port=reuse_port, registry=rt.registry, log=rt.log
    ) as proxy:

        async def shards_route(request: Request) -> Response:
            return Response.json(200, json.dumps(proxy.shards_document(), indent=1))

        rt.add_route("/shards", shards_route)
        if shards_file is not None:

            def reload_shards() -> None:
                try:
                    shards = [*flag_shards, *read_shards_file(shards_file)]
                    changed = proxy.set_shards(shards)
                except (ConfigError, ValueError) as exc:
                    rt.log.error("shards file not applied", extra={"reason": str(exc)})
                    return
                if changed:
                    rt.log.info("shards changed", extra={"shards": [n for n, _ in shards]})

            rt.on_reload(reload_shards)
            watch = asyncio.get_running_loop().create_task(
                serve_file_changes(
                    shards_file, reload_shards, interval=FILE_POLL_INTERVAL, skip_missing=True
                ),
                name="shard-watch-shards-file",
            )
        link = worker_link()
        if link is not None:
            link.handle("shards", lambda payload: proxy.shards_document())
        rt.log.info(
            "listening",
            extra={
                "listen": f"{settings.listen.host}:{proxy.port}",
                "protocol": settings.protocol,
                "shards": len(settings.shards),
            },
        )
        rt.set_ready()
        try:
            await rt.wait_draining()
            await proxy.drain(rt.drain_timeout)
        finally:
            if watch is not None:
                watch.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await watch


@dataclasses.dataclass(frozen=True)
class _WorkerSettings:
    settings: ShardSettings
    shards_file: Path | None
    flag_shards: tuple[tuple[str, HostPort], ...]


async def _worker_main(rt: Runtime, worker: _WorkerSettings) -> None:
    await serve_shard(
        rt,
        worker.settings,
        reuse_port=True,
        shards_file=worker.shards_file,
        flag_shards=worker.flag_shards,
    )


@click.command()
@click.option(
    "--listen",
    type=HOSTPORT,
    default="127.0.0.1:22121",
    show_default=True,
    help="Address to accept clients on.",
)
@click.option(
    "--protocol",
    type=click.Choice(["memcached", "redis"]),
    default="memcached",
    show_default=True,
    help="memcached text protocol or Redis RESP2.",
)
@click.option(
    "--shard",
    "shard_texts",
    multiple=True,
    metavar="NAME=HOST:PORT",
    help="A shard (repeatable). The name is what keys hash to: keep it when moving a shard.",
)
@click.option(
    "--shards-file",
    type=click.Path(dir_okay=False, path_type=Path),
    help="File of shards, one NAME=HOST:PORT a line (# comments), after --shard's; "
    "re-read when it changes and on SIGHUP.",
)
@click.option(
    "--algo",
    type=click.Choice(list(ALGORITHMS)),
    default="ring",
    show_default=True,
    help="Sharding function: ring is ketama (twemproxy's and libmemcached's).",
)
@click.option(
    "--hash",
    "key_hash",
    type=click.Choice(list(KEY_HASHES)),
    default="md5",
    show_default=True,
    help="Key hash; with --algo ring --hash md5 keys land where nutcracker puts them.",
)
@click.option(
    "--hash-tag",
    default=None,
    help="Two characters, e.g. '{}': only the part of a key between them is hashed [none].",
)
@click.option(
    "--replicas",
    type=click.IntRange(min=1),
    default=1,
    show_default=True,
    help="Write each key to its first R shards; read from the first healthy one.",
)
@click.option(
    "--fail-limit",
    type=click.IntRange(min=1),
    default=DEFAULT_FAIL_LIMIT,
    show_default=True,
    help="Failures in a row that eject a shard (its keys go to the next shard).",
)
@click.option(
    "--retry-after",
    type=DURATION,
    default=format_duration(DEFAULT_RETRY_AFTER),
    show_default=True,
    help="How long an ejected shard waits before it is tried again.",
)
@click.option(
    "--hot-keys",
    type=click.Choice(["on", "off"]),
    default="on",
    show_default=True,
    help="Keep keys far hotter than a shard's share on extra shards too.",
)
@click.option(
    "--hot-ttl",
    type=DURATION,
    default=format_duration(DEFAULT_HOT_TTL),
    show_default=True,
    help="Longest life of a hot key's extra copy (bounds how stale a copy can be).",
)
@click.option(
    "--timeout",
    type=DURATION,
    default=format_duration(DEFAULT_TIMEOUT),
    show_default=True,
    help="A shard that leaves a request unanswered this long has failed.",
)
@click.option(
    "--connect-timeout",
    type=DURATION,
    default=format_duration(DEFAULT_CONNECT_TIMEOUT),
    show_default=True,
    help="Time to open a connection to a shard.",
)
@click.option(
    "--server-connections",
    type=click.IntRange(min=1, max=64),
    default=DEFAULT_SERVER_CONNECTIONS,
    show_default=True,
    help="Connections to each shard (per worker), shared by every client.",
)
@click.option(
    "--max-connections",
    type=click.IntRange(min=1),
    default=DEFAULT_MAX_CONNECTIONS,
    show_default=True,
    help="Client connections; more are refused.",
)
@click.option(
    "--max-pending",
    type=click.IntRange(min=1),
    default=DEFAULT_MAX_PENDING,
    show_default=True,
    help="Replies one client may be owed before its socket stops being read.",
)
@click.option(
    "--max-key-bytes",
    type=SIZE,
    default=None,
    help="Longest key [memcached: 250 (the protocol's), redis: 64KiB].",
)
@click.option(
    "--max-value-bytes",
    type=SIZE,
    default=None,
    help="Largest value [memcached: 1MiB (memcached's -I), redis: 64MiB].",
)
@click.option(
    "--workers",
    type=click.IntRange(min=1, max=256),
    default=1,
    show_default=True,
    help="Processes sharing the port (SO_REUSEPORT); one admin endpoint, merged metrics.",
)
@runtime_options
def command(
    listen: HostPort,
    protocol: str,
    shard_texts: tuple[str, ...],
    shards_file: Path | None,
    algo: str,
    key_hash: str,
    hash_tag: str | None,
    replicas: int,
    fail_limit: int,
    retry_after: float,
    hot_keys: str,
    hot_ttl: float,
    timeout: float,
    connect_timeout: float,
    server_connections: int,
    max_connections: int,
    max_pending: int,
    max_key_bytes: int | None,
    max_value_bytes: int | None,
    workers: int,
    runtime: RuntimeOptions,
) -> int:
    """A sharding ambassador for memcached or Redis (like twemproxy).

    Splits keys over the shards with a consistent hash, splits multi-key requests (get,
    MGET, MSET, DEL...) and merges their replies in order, pipelines many clients over a
    few connections per shard, ejects failing shards, replicates writes (--replicas) and
    spreads hot keys over extra shards. GET /shards on --admin shows each shard's state,
    share and errors and the hottest keys.
    """
    flag_shards = tuple(parse_shard(text) for text in shard_texts)
    shards = list(flag_shards)
    if shards_file is not None:
        shards.extend(read_shards_file(shards_file))
    if max_key_bytes is not None and protocol == "memcached" and max_key_bytes > 250:
        raise ConfigError("memcached keys are at most 250 bytes", path="--max-key-bytes")
    settings = build_settings(
        listen=listen,
        protocol=protocol,
        shards=shards,
        algorithm=algo,
        key_hash=key_hash,
        hash_tag=hash_tag or "",
        replicas=replicas,
        fail_limit=fail_limit,
        retry_after=retry_after,
        hot_keys=hot_keys == "on",
        hot_ttl=hot_ttl,
        timeout=timeout,
        connect_timeout=connect_timeout,
        server_connections=server_connections,
        max_connections=max_connections,
        max_pending=max_pending,
        max_key_bytes=max_key_bytes or 0,
        max_value_bytes=max_value_bytes or 0,
    )

    async def main(rt: Runtime) -> None:
        if workers == 1:
            await serve_shard(rt, settings, shards_file=shards_file, flag_shards=flag_shards)
            return
        pool = WorkerPool()

        async def shards_route(request: Request) -> Response:
            answers = await pool.broadcast("shards", {})
            documents = [a.result for a in answers if a.result is not None]
            return Response.json(200, json.dumps(merge_shards_documents(documents), indent=1))

        rt.add_route("/shards", shards_route)
        with reserve_port(settings.listen) as port:
            shared = dataclasses.replace(settings, listen=HostPort(settings.listen.host, port))
            rt.log.info(
                "starting workers",
                extra={"workers": workers, "listen": f"{settings.listen.host}:{port}"},
            )
            worker = _WorkerSettings(shared, shards_file, flag_shards)
            await serve_workers(
                rt, count=workers, main=_worker_main, settings=worker, name="shard", pool=pool
            )

    return run_component("shard", main, runtime)
