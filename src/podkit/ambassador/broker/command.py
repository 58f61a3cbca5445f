"""The ``podkit broker`` command: flags (or a YAML map file) in, :class:`BrokerOptions` out."""

from __future__ import annotations

import os
from pathlib import Path

import click

from podkit.ambassador.broker._auth import parse_redis_auth
from podkit.ambassador.broker._core import parse_map_entry
from podkit.ambassador.broker._mapfile import read_map_file
from podkit.ambassador.broker._sources import DEFAULT_SOURCE_INTERVAL, EnvSource
from podkit.ambassador.broker.app import (
    DEFAULT_CHECK_TIMEOUT,
    DEFAULT_CONNECT_TIMEOUT,
    DEFAULT_IDLE_TIMEOUT,
    DEFAULT_INTERVAL,
    DEFAULT_TIMEOUT,
    BrokerOptions,
    Mode,
    serve_broker,
)
from podkit.cli import PodkitCommand
from podkit.engines.http import Upstream
from podkit.engines.http.access_log import AccessLogSettings
from podkit.engines.http.cli_options import (
    access_log_options,
    server_limit_options,
    upstream_timeout_options,
)
from podkit.engines.http.rules import ServerLimits
from podkit.engines.tcp import DEFAULT_COPY_BYTES
from podkit.errors import ConfigError
from podkit.runtime import (
    HostPort,
    Runtime,
    RuntimeOptions,
    format_duration,
    format_size,
    run_component,
)
from podkit.runtime.cli_options import DURATION, HOSTPORT, SIZE, runtime_options
from podkit.serving.balance._affinity import parse_networks


@click.command(cls=PodkitCommand)
@click.option(
    "--listen",
    type=HOSTPORT,
    default="127.0.0.1:6380",
    show_default=True,
    help="The one local address the app connects to.",
)
@click.option(
    "--mode",
    type=click.Choice(["tcp", "http"]),
    default="tcp",
    show_default=True,
    help="tcp: forward connections (databases, brokers); http: forward HTTP requests.",
)
@click.option(
    "--env-from",
    "env_from",
    required=True,
    metavar="env:NAME|file:PATH|etcd://HOST:PORT/KEY",
    help="Where the environment's name is read: a variable (at start), a file (watched) or "
    "an etcd key (watched).",
)
@click.option(
    "--default-env",
    default=None,
    metavar="ENV",
    help="The environment while the source has none (an unset variable, a missing or empty "
    "file, an absent key); without it, new connections are refused then.",
)
@click.option(
    "--map",
    "maps",
    multiple=True,
    metavar="ENV=HOST:PORT[,HOST:PORT...]",
    help="An environment's upstreams, e.g. 'dev=127.0.0.1:6379' (http mode: URLs); "
    "several are balanced with TCP health checks. Repeatable.",
)
@click.option(
    "--map-file",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="YAML file of ENV: HOST:PORT[,HOST:PORT...] (merged with --map), re-read on SIGHUP.",
)
@click.option(
    "--redis-auth",
    "redis_auth",
    multiple=True,
    metavar="ENV=[USER@]env:VAR|file:PATH",
    help="Redis credentials the broker sends (AUTH) on each new connection in ENV, read "
    "from a variable or a file: the app needs no password. Repeatable.",
)
@click.option(
    "--rewrite-host",
    is_flag=True,
    help="http mode: send the upstream's host:port as Host instead of the client's.",
)
@click.option(
    "--interval",
    type=DURATION,
    default=format_duration(DEFAULT_INTERVAL),
    show_default=True,
    help="Time between TCP health checks of each upstream of the current environment.",
)
@click.option(
    "--check-timeout",
    type=DURATION,
    default=format_duration(DEFAULT_CHECK_TIMEOUT),
    show_default=True,
    help="Time one health check (a TCP connect) may take.",
)
@click.option(
    "--idle-timeout",
    type=DURATION,
    default=format_duration(DEFAULT_IDLE_TIMEOUT),
    show_default=True,
    help="tcp mode: close a connection with no byte either way for this long.",
)
@click.option(
    "--splice-above",
    type=SIZE,
    default=format_size(DEFAULT_COPY_BYTES),
    show_default=True,
    help="tcp mode: a read that fills this many bytes is a bulk transfer, moved with splice(2) "
    "from then on (smaller messages are copied); 0 splices from the first byte.",
)
@click.option(
    "--source-interval",
    type=DURATION,
    default=format_duration(DEFAULT_SOURCE_INTERVAL),
    show_default=True,
    help="How often a file source is checked (and an etcd watch re-established at most).",
)
@click.option(
    "--trusted-proxy",
    "trusted",
    multiple=True,
    metavar="CIDR",
    help="http mode: peer whose X-Forwarded-* fields are kept and extended; repeatable.",
)
@upstream_timeout_options(connect_timeout=DEFAULT_CONNECT_TIMEOUT, response_timeout=DEFAULT_TIMEOUT)
@access_log_options
@server_limit_options
@runtime_options
def command(
    listen: HostPort,
    mode: Mode,
    env_from: str,
    default_env: str | None,
    maps: tuple[str, ...],
    map_file: Path | None,
    redis_auth: tuple[str, ...],
    rewrite_host: bool,
    interval: float,
    check_timeout: float,
    idle_timeout: float,
    splice_above: int,
    source_interval: float,
    trusted: tuple[str, ...],
    connect_timeout: float,
    response_timeout: float,
    source_address: str | None,
    limits: ServerLimits,
    access_log: AccessLogSettings,
    runtime: RuntimeOptions,
) -> int:
    """One local address, the right upstream for this environment (the environment broker).

    The app always connects to --listen; the broker reads the environment's name from
    --env-from and forwards to that environment's upstreams from --map. When the name or
    the map changes, new connections go to the new upstreams at once and old ones drain for
    --drain-timeout, then are closed. The admin endpoint shows GET /broker.
    """
    http = mode == "http"
    envs: dict[str, tuple[Upstream, ...]] = {}
    if map_file is not None:
        envs.update(read_map_file(map_file, http=http))
    overrides: dict[str, tuple[Upstream, ...]] = {}
    for text in maps:
        name, ups = parse_map_entry(text, http=http)
        if name in overrides:
            raise ConfigError(f"environment {name!r} is mapped twice", path="--map")
        overrides[name] = ups
        envs[name] = ups  # a --map wins over the map file's entry
    if not envs:
        raise click.UsageError("give at least one --map ENV=HOST:PORT or a --map-file")
    if rewrite_host and not http:
        raise click.UsageError("--rewrite-host applies to --mode http")
    if redis_auth and http:
        raise click.UsageError("--redis-auth applies to --mode tcp")
    for value, flag in (
        (interval, "--interval"),
        (check_timeout, "--check-timeout"),
        (idle_timeout, "--idle-timeout"),
        (source_interval, "--source-interval"),
    ):
        if not value > 0:
            raise ConfigError(f"must be more than 0, got {value:g}", path=flag)
    environ = dict(os.environ)
    credentials = dict(parse_redis_auth(text, environ=environ) for text in redis_auth)
    if default_env is not None and default_env not in envs:
        raise ConfigError(f"no environment {default_env!r} in the map", path="--default-env")
    unknown = sorted(set(credentials) - set(envs))
    if unknown:
        raise ConfigError(f"no environment {unknown[0]!r} in the map", path="--redis-auth")
    options = BrokerOptions(
        host=listen.host,
        port=listen.port,
        mode=mode,
        source=EnvSource.parse(env_from, environ=environ),
        default_env=default_env,
        envs=envs,
        map_file=map_file,
        map_overrides=overrides,
        redis_auth=credentials,
        rewrite_host=rewrite_host,
        interval=interval,
        check_timeout=check_timeout,
        connect_timeout=connect_timeout,
        idle_timeout=idle_timeout,
        splice_above=splice_above,
        timeout=response_timeout,
        source_interval=source_interval,
        drain_timeout=runtime.drain_timeout,
        source_address=source_address,
        trusted_proxies=parse_networks(trusted),
        limits=limits,
        access_log=access_log,
    )

    async def main(rt: Runtime) -> None:
        await serve_broker(rt, options)

    return run_component("broker", main, runtime)
