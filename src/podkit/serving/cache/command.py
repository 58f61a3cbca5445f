"""The ``podkit cache`` command: flags in, a validated :class:`CacheOptions` out."""

from __future__ import annotations

import re

import click

from podkit.cli import PodkitCommand
from podkit.engines.http.access_log import AccessLogSettings
from podkit.engines.http.cli_options import (
    access_log_options,
    server_limit_options,
    upstream_timeout_options,
)
from podkit.engines.http.rules import ServerLimits
from podkit.runtime import HostPort, Runtime, RuntimeOptions, format_duration, run_component
from podkit.runtime.cli_options import DURATION, HOSTPORT, SIZE, runtime_options
from podkit.serving._workers import workers_timeout_option
from podkit.serving.balance._affinity import parse_networks
from podkit.serving.balance._backends_file import normalise_url
from podkit.serving.cache._coalesce import DEFAULT_COALESCE_TIMEOUT
from podkit.serving.cache._ranges import DEFAULT_MAX_RANGES
from podkit.serving.cache._rules import DEFAULT_TARGETED
from podkit.serving.cache.app import (
    DEFAULT_CONNECT_TIMEOUT,
    DEFAULT_PURGE_ALLOW,
    DEFAULT_TIMEOUT,
    CacheOptions,
    serve_cache,
    serve_cache_workers,
)

MAX_WORKERS = 64  # more processes than this on one host is a typo
MAX_MAX_RANGES = 1000  # a higher --max-ranges would only serve multipart amplification
_FIELD_NAME = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")  # RFC 9110 §5.1 token


def targeted_fields(names: tuple[str, ...]) -> tuple[str, ...]:
    """The targeted fields by precedence: the given ones, then ``CDN-Cache-Control``.

    Raises:
        click.BadParameter: a name is not a field name, or is Cache-Control itself.
    """
    for name in names:
        if not _FIELD_NAME.fullmatch(name) or name.lower() == "cache-control":
            raise click.BadParameter(
                f"{name!r} is not a targeted field name (e.g. Podkit-Cache-Control)",
                param_hint="--targeted-cache-control",
            )
    return tuple(dict.fromkeys([*names, *DEFAULT_TARGETED], None))


@click.command(cls=PodkitCommand)
@click.option(
    "--listen",
    type=HOSTPORT,
    default="127.0.0.1:8080",
    show_default=True,
    help="Address to serve HTTP on.",
)
@click.option(
    "--upstream", required=True, metavar="URL", help="The origin, e.g. http://127.0.0.1:8000."
)
@click.option(
    "--max-size",
    type=SIZE,
    default="256MiB",
    show_default=True,
    help="Memory the stored objects may use; least recently used ones are evicted.",
)
@click.option(
    "--max-object",
    type=SIZE,
    default="8MiB",
    show_default=True,
    help="Largest object stored; larger responses stream through uncached.",
)
@click.option(
    "--purge-allow",
    multiple=True,
    metavar="CIDR",
    default=DEFAULT_PURGE_ALLOW,
    show_default=True,
    help="Addresses allowed to send PURGE; repeat for more.",
)
@click.option(
    "--coalesce-timeout",
    type=DURATION,
    default=format_duration(DEFAULT_COALESCE_TIMEOUT),
    show_default=True,
    help="How long a request waits for a concurrent fetch of the same object before "
    "it goes to the origin itself.",
)
@upstream_timeout_options(
    connect_timeout=DEFAULT_CONNECT_TIMEOUT, response_timeout=DEFAULT_TIMEOUT, peer="origin"
)
@click.option(
    "--trusted-proxy",
    "trusted",
    multiple=True,
    metavar="CIDR",
    help="Peer whose X-Forwarded-For is kept and extended; repeat for more.",
)
@click.option(
    "--targeted-cache-control",
    "targeted",
    multiple=True,
    metavar="FIELD",
    help="A targeted cache-control response field (RFC 9213) obeyed instead of "
    "Cache-Control, e.g. Podkit-Cache-Control; repeat for more, first present wins. "
    "CDN-Cache-Control is always honoured after these.",
)
@click.option(
    "--max-ranges",
    type=click.IntRange(1, MAX_MAX_RANGES),
    default=DEFAULT_MAX_RANGES,
    show_default=True,
    help="Most ranges one Range request may ask for; above it the whole body is sent.",
)
@click.option(
    "--workers",
    type=click.IntRange(1, MAX_WORKERS),
    default=1,
    show_default=True,
    help="Processes sharing the listening port (SO_REUSEPORT), each with its own store. "
    "One admin endpoint, merged metrics; a worker that dies is started again.",
)
@access_log_options
@server_limit_options
@workers_timeout_option("a purge")
@runtime_options
def command(
    listen: HostPort,
    upstream: str,
    max_size: int,
    max_object: int,
    purge_allow: tuple[str, ...],
    coalesce_timeout: float,
    connect_timeout: float,
    response_timeout: float,
    source_address: str | None,
    trusted: tuple[str, ...],
    targeted: tuple[str, ...],
    max_ranges: int,
    workers: int,
    limits: ServerLimits,
    access_log: AccessLogSettings,
    workers_timeout: float,
    runtime: RuntimeOptions,
) -> int:
    """An HTTP caching proxy (RFC 9111 shared cache) with request coalescing.

    Fresh responses are served from memory (X-Cache: HIT); concurrent misses for one object
    cause one origin request; stale ones are revalidated with ETag / Last-Modified. The admin
    endpoint shows statistics at /cache and removes objects with POST /purge?target=/path.
    """
    if max_object > max_size:
        raise click.UsageError("--max-object cannot be larger than --max-size")
    options = CacheOptions(
        host=listen.host,
        port=listen.port,
        upstream=normalise_url(upstream, path="--upstream"),
        max_size=max_size,
        max_object=max_object,
        purge_allow=parse_networks(purge_allow, field="--purge-allow"),
        coalesce_timeout=coalesce_timeout,
        timeout=response_timeout,
        connect_timeout=connect_timeout,
        source_address=source_address,
        trusted_proxies=parse_networks(trusted),
        targeted=targeted_fields(targeted),
        max_ranges=max_ranges,
        workers=workers,
        limits=limits,
        access_log=access_log,
        workers_timeout=workers_timeout,
    )

    async def main(rt: Runtime) -> None:
        if workers > 1:
            await serve_cache_workers(rt, options)
        else:
            await serve_cache(rt, options)

    return run_component("cache", main, runtime)
