"""``podkit adapt metrics``: any server's statistics as a Prometheus page."""

from __future__ import annotations

import click

from podkit.adapter._postgres import split_dsn
from podkit.adapter._resp import RedisAddress
from podkit.adapter.metrics._adapter import DEFAULT_SCRAPE_TIMEOUT, MetricsAdapter
from podkit.adapter.metrics._exposition import valid_name
from podkit.adapter.metrics._mapping import MetricsMap
from podkit.adapter.metrics._sources import (
    DEFAULT_MAX_RESPONSE,
    CommandSource,
    HAProxySource,
    JSONSource,
    MemcachedSource,
    NginxSource,
    PostgresSource,
    RedisSource,
    Source,
    StatsdSource,
)
from podkit.adapter.metrics._statsd import DEFAULT_MAX_SERIES, StatsdMap
from podkit.errors import ConfigError
from podkit.runtime import Runtime, RuntimeOptions, run_component
from podkit.runtime.cli_options import DURATION, HOSTPORT, SIZE, runtime_options
from podkit.runtime.config import (
    HostPort,
    format_duration,
    format_size,
    load_model,
    parse_hostport,
)
from podkit.runtime.httpserver import SimpleHTTPServer

SOURCES = (
    "redis",
    "memcached",
    "nginx_status",
    "haproxy_stats",
    "postgres",
    "json",
    "statsd",
    "command",
)
_FLAG = {name: "--" + name.replace("_", "-") for name in SOURCES}


async def serve_metrics(rt: Runtime, adapter: MetricsAdapter, *, listen: HostPort) -> None:
    """Serve the adapted page on ``listen`` until the runtime drains."""
    await adapter.source.start()
    try:
        server = SimpleHTTPServer(adapter.handle, listen.host, listen.port, name="adapt metrics")
        await server.start()
        try:
            rt.log.info(
                "metrics adapter listening",
                extra={
                    "listen": f"{listen.host}:{server.port}",
                    "source": adapter.source.description,
                },
            )
            rt.set_ready()
            await rt.wait_draining()
        finally:
            await server.aclose()
    finally:
        await adapter.source.aclose()


def make_source(
    kind: str,
    value: str,
    *,
    map_file: str | None,
    max_series: int = DEFAULT_MAX_SERIES,
    max_bytes: int = DEFAULT_MAX_RESPONSE,
) -> Source:
    """The source for ``--KIND VALUE``.

    Raises:
        ConfigError: a malformed value, a missing or invalid map file.
    """
    needs_map = kind in ("json", "command")
    if needs_map and map_file is None:
        raise ConfigError(f"{_FLAG[kind]} needs --map FILE")
    if not needs_map and kind != "statsd" and map_file is not None:
        raise ConfigError(f"--map goes with --json, --statsd or --command, not {_FLAG[kind]}")
    if kind == "redis":
        RedisAddress.parse(value)
        return RedisSource(value)
    if kind == "memcached":
        return MemcachedSource(parse_hostport(value, field="--memcached"))
    if kind in ("nginx_status", "haproxy_stats", "json") and not value.startswith(
        ("http://", "https://")
    ):
        raise ConfigError(f"{_FLAG[kind]} expects an http(s):// URL, got {value!r}")
    if kind == "nginx_status":
        return NginxSource(value, max_bytes=max_bytes)
    if kind == "haproxy_stats":
        return HAProxySource(value, max_bytes=max_bytes)
    if kind == "postgres":
        split_dsn(value)
        return PostgresSource(value)
    if kind == "json":
        assert map_file is not None
        return JSONSource(value, load_model(MetricsMap, map_file), max_bytes=max_bytes)
    if kind == "command":
        assert map_file is not None
        if not value.strip():
            raise ConfigError("--command needs a command")
        return CommandSource(value, load_model(MetricsMap, map_file), max_bytes=max_bytes)
    mapping = load_model(StatsdMap, map_file) if map_file else StatsdMap()
    return StatsdSource(parse_hostport(value, field="--statsd"), mapping, max_series=max_series)


@click.command(name="metrics")
@click.option("--listen", type=HOSTPORT, required=True, help="Serve GET /metrics on HOST:PORT.")
@click.option(
    "--redis",
    default=None,
    metavar="URL",
    help="redis://[:PASSWORD@]HOST:PORT[/DB]: INFO and keyspace (redis_exporter names).",
)
@click.option(
    "--memcached",
    default=None,
    metavar="HOST:PORT",
    help="memcached's stats (memcached_exporter names).",
)
@click.option("--nginx-status", default=None, metavar="URL", help="nginx's stub_status page.")
@click.option(
    "--haproxy-stats",
    default=None,
    metavar="URL",
    help="HAProxy's stats page (;csv is added when missing).",
)
@click.option(
    "--postgres",
    default=None,
    metavar="DSN",
    help="postgresql://USER[:PASSWORD]@HOST:PORT/DB: pg_stat_database, connections "
    "(postgres_exporter names).",
)
@click.option(
    "--json", "json_url", default=None, metavar="URL", help="A JSON endpoint, mapped by --map."
)
@click.option(
    "--statsd",
    default=None,
    metavar="HOST:PORT",
    help="Listen for statsd/DogStatsD over UDP; --map maps dotted names to labels.",
)
@click.option(
    "--command",
    "command_line",
    default=None,
    metavar="CMD",
    help="Run CMD (/bin/sh -c) at each scrape; its JSON or key=value output is mapped by --map.",
)
@click.option(
    "--map",
    "map_file",
    default=None,
    metavar="FILE",
    help="YAML map file of --json, --command (required) and --statsd (optional).",
)
@click.option(
    "--prefix",
    default=None,
    metavar="NAME",
    help="Prefix of the metric names [default: the source's: redis, memcached, nginx, "
    "haproxy, pg; none for mapped names].",
)
@click.option(
    "--timeout",
    type=DURATION,
    default=format_duration(DEFAULT_SCRAPE_TIMEOUT),
    show_default=True,
    help="How long a scrape may read the source before it counts as down.",
)
@click.option(
    "--statsd-max-series",
    type=click.IntRange(min=1),
    default=DEFAULT_MAX_SERIES,
    show_default=True,
    help="Distinct statsd series held; lines for new ones beyond it are dropped and counted.",
)
@click.option(
    "--max-response",
    type=SIZE,
    default=format_size(DEFAULT_MAX_RESPONSE),
    show_default=True,
    help="The largest stats page, JSON document or command output read; larger is up 0.",
)
@runtime_options
def command(
    listen: HostPort,
    redis: str | None,
    memcached: str | None,
    nginx_status: str | None,
    haproxy_stats: str | None,
    postgres: str | None,
    json_url: str | None,
    statsd: str | None,
    command_line: str | None,
    map_file: str | None,
    prefix: str | None,
    timeout: float,
    statsd_max_series: int,
    max_response: int,
    runtime: RuntimeOptions,
) -> int:
    """Present a server's statistics as a Prometheus page, read at each scrape.

    Give exactly one source. Built-ins use the names of the well-known exporters, so their
    dashboards work. Whatever happens to the source, GET /metrics answers 200 with a valid
    page: <prefix>_up 1 or 0, <prefix>_scrape_error{reason} when down, and
    <prefix>_scrape_duration_seconds.
    """
    given = {
        "redis": redis,
        "memcached": memcached,
        "nginx_status": nginx_status,
        "haproxy_stats": haproxy_stats,
        "postgres": postgres,
        "json": json_url,
        "statsd": statsd,
        "command": command_line,
    }
    chosen = [(kind, value) for kind, value in given.items() if value is not None]
    if len(chosen) != 1:
        flags = ", ".join(_FLAG[k] for k in SOURCES)
        raise click.UsageError(f"give exactly one source: {flags}")
    if timeout <= 0:
        raise click.BadParameter("must be more than 0", param_hint="'--timeout'")
    if prefix is not None and (not valid_name(prefix) or ":" in prefix):
        raise click.BadParameter(
            "letters, digits and '_', not first a digit", param_hint="'--prefix'"
        )
    kind, value = chosen[0]
    try:
        source = make_source(
            kind,
            value,
            map_file=map_file,
            max_series=statsd_max_series,
            max_bytes=max_response,
        )
    except ConfigError as exc:
        raise click.UsageError(str(exc)) from exc
    adapter = MetricsAdapter(source, prefix=prefix, timeout=timeout)

    async def main(rt: Runtime) -> None:
        await serve_metrics(rt, adapter, listen=listen)

    return run_component("adapt-metrics", main, runtime)
