"""The ``podkit balance`` command: flags in, a validated :class:`BalanceOptions` out."""

from __future__ import annotations

from pathlib import Path

import click

from podkit.cli import PodkitCommand
from podkit.engines.http.access_log import AccessLogSettings
from podkit.engines.http.cli_options import (
    access_log_options,
    server_limit_options,
    upstream_timeout_options,
)
from podkit.engines.http.rules import ServerLimits
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
from podkit.serving._workers import workers_timeout_option
from podkit.serving.balance._affinity import AffinityKey, parse_networks
from podkit.serving.balance._backends_file import parse_backend
from podkit.serving.balance._endpoint import (
    DEFAULT_BASE_EJECTION,
    DEFAULT_EJECT_AFTER,
    DEFAULT_FALL,
    DEFAULT_MAX_EJECTION,
    DEFAULT_RISE,
    HealthPolicy,
)
from podkit.serving.balance._hashing import DEFAULT_HASH_ALGORITHM, HASH_ALGORITHMS
from podkit.serving.balance._retry import DEFAULT_RETRY_MIN_PER_SECOND, DEFAULT_RETRY_RATIO
from podkit.serving.balance.app import (
    DEFAULT_CONNECT_TIMEOUT,
    DEFAULT_INTERVAL,
    DEFAULT_PROBE_TIMEOUT,
    DEFAULT_RETRIES,
    DEFAULT_TIMEOUT,
    POLICIES,
    RETRY_BUFFER_BYTES,
    BalanceOptions,
    Policy,
    serve_balance,
    serve_balance_workers,
)

MAX_WORKERS = 64  # more processes than this on one host is a typo


@click.command(cls=PodkitCommand)
@click.option(
    "--listen",
    type=HOSTPORT,
    default="127.0.0.1:8080",
    show_default=True,
    help="Address to serve HTTP on.",
)
@click.option(
    "--backend",
    "backends",
    multiple=True,
    metavar="URL",
    help="A backend such as http://127.0.0.1:8001 (add ' weight=N' for a share); repeat for more.",
)
@click.option(
    "--backends-file",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="File of backends (one 'URL [weight=N]' per line, # comments), re-read when "
    "it changes and on SIGHUP.",
)
@click.option(
    "--probe",
    default=None,
    metavar="PATH",
    help="Readiness probe path (e.g. /ready); without it backends start in rotation "
    "and only passive checks apply.",
)
@click.option(
    "--probe-timeout",
    type=DURATION,
    default=format_duration(DEFAULT_PROBE_TIMEOUT),
    show_default=True,
    help="How long one probe may take.",
)
@click.option(
    "--interval",
    type=DURATION,
    default=format_duration(DEFAULT_INTERVAL),
    show_default=True,
    help="Time between probes of a backend.",
)
@click.option(
    "--rise",
    type=click.IntRange(1, 100),
    default=DEFAULT_RISE,
    show_default=True,
    help="Passing probes in a row that put a backend in rotation.",
)
@click.option(
    "--fall",
    type=click.IntRange(1, 100),
    default=DEFAULT_FALL,
    show_default=True,
    help="Failing probes in a row that take a backend out of rotation.",
)
@click.option(
    "--policy",
    type=click.Choice(POLICIES),
    default="round-robin",
    show_default=True,
    help="round-robin (weighted), least-request (power of two choices) or hash (affinity).",
)
@click.option(
    "--hash-on",
    default="client-ip",
    show_default=True,
    help="What the hash policy hashes: client-ip, uri, path, header:NAME or cookie:NAME.",
)
@click.option(
    "--hash-algorithm",
    type=click.Choice(HASH_ALGORITHMS),
    default=DEFAULT_HASH_ALGORITHM,
    show_default=True,
    help="Consistent hash of the hash policy (podkit.hashing).",
)
@click.option(
    "--bounded-load",
    type=click.FloatRange(min=1.0),
    default=None,
    help="Bounded loads for the hash policy: no backend holds more than this factor "
    "times the mean of requests in flight (e.g. 1.25). Off when not given.",
)
@click.option(
    "--trusted-proxy",
    "trusted",
    multiple=True,
    metavar="CIDR",
    help="Peer whose X-Forwarded-For is believed for client-ip affinity and "
    "forwarded; repeat for more.",
)
@click.option(
    "--retries",
    type=click.IntRange(0, 10),
    default=DEFAULT_RETRIES,
    show_default=True,
    help="Most retries of one request on other backends.",
)
@click.option(
    "--retry-ratio",
    type=click.FloatRange(0.0, 10.0),
    default=DEFAULT_RETRY_RATIO,
    show_default=True,
    help="Retry budget: retries allowed per request, over 10 s.",
)
@click.option(
    "--retry-min-per-second",
    type=click.FloatRange(min=0.0),
    default=DEFAULT_RETRY_MIN_PER_SECOND,
    show_default=True,
    help="Retry budget: retries per second allowed whatever the traffic.",
)
@click.option(
    "--retry-buffer",
    type=SIZE,
    default=format_size(RETRY_BUFFER_BYTES),
    show_default=True,
    help="Request bodies up to this size are kept so that a failed attempt can be sent "
    "again; larger ones stream to the backend and are not retried once attempted.",
)
@click.option(
    "--eject-after",
    type=click.IntRange(0, 1000),
    default=DEFAULT_EJECT_AFTER,
    show_default=True,
    help="Failed requests in a row (connection errors, timeouts, 5xx) that eject a "
    "backend; 0 turns passive ejection off.",
)
@click.option(
    "--ejection-time",
    type=DURATION,
    default=format_duration(DEFAULT_BASE_EJECTION),
    show_default=True,
    help="First ejection's length; the n-th lasts n times as long.",
)
@click.option(
    "--max-ejection-time",
    type=DURATION,
    default=format_duration(DEFAULT_MAX_EJECTION),
    show_default=True,
    help="Longest ejection.",
)
@click.option(
    "--slow-start",
    type=DURATION,
    default="0s",
    show_default=True,
    help="Ramp a newly ready backend's share of traffic up over this time (0: off).",
)
@upstream_timeout_options(
    connect_timeout=DEFAULT_CONNECT_TIMEOUT, response_timeout=DEFAULT_TIMEOUT, peer="backend"
)
@click.option(
    "--workers",
    type=click.IntRange(1, MAX_WORKERS),
    default=1,
    show_default=True,
    help="Processes sharing the listening port (SO_REUSEPORT); each probes on its own. "
    "One admin endpoint, merged metrics; a worker that dies is started again.",
)
@access_log_options
@server_limit_options
@workers_timeout_option("a drain or undrain by hand")
@runtime_options
def command(
    listen: HostPort,
    backends: tuple[str, ...],
    backends_file: Path | None,
    probe: str | None,
    probe_timeout: float,
    interval: float,
    rise: int,
    fall: int,
    policy: Policy,
    hash_on: str,
    hash_algorithm: str,
    bounded_load: float | None,
    trusted: tuple[str, ...],
    retries: int,
    retry_ratio: float,
    retry_min_per_second: float,
    retry_buffer: int,
    eject_after: int,
    ejection_time: float,
    max_ejection_time: float,
    slow_start: float,
    connect_timeout: float,
    response_timeout: float,
    source_address: str | None,
    workers: int,
    limits: ServerLimits,
    access_log: AccessLogSettings,
    workers_timeout: float,
    runtime: RuntimeOptions,
) -> int:
    """Load-balance HTTP over replicas, with readiness probes, outlier ejection and affinity.

    Backends come from --backend and --backends-file. A backend enters rotation after --rise
    passing probes of --probe and leaves after --fall failures; connection errors and 5xx
    answers eject it for a growing time. The admin endpoint lists backends at /backends.
    """
    if not backends and backends_file is None:
        raise click.UsageError("give at least one --backend or a --backends-file")
    if policy != "hash":
        ctx = click.get_current_context()
        given = [
            flag
            for name, flag in (
                ("hash_on", "--hash-on"),
                ("hash_algorithm", "--hash-algorithm"),
                ("bounded_load", "--bounded-load"),
            )
            if ctx.get_parameter_source(name) not in (None, click.core.ParameterSource.DEFAULT)
        ]
        if given:
            verb = "apply" if len(given) > 1 else "applies"
            raise click.UsageError(
                f"{' and '.join(given)} {verb} only to --policy hash (the policy is {policy}): "
                "add --policy hash"
            )
    if probe is not None and not probe.startswith("/"):
        raise click.UsageError(f"--probe takes a path starting with /, got {probe!r}")
    if max_ejection_time < ejection_time or ejection_time <= 0:
        raise click.UsageError("need 0 < --ejection-time <= --max-ejection-time")
    if interval <= 0 or probe_timeout <= 0:
        raise click.UsageError("--interval and --probe-timeout must be positive")
    specs = tuple(parse_backend(text, path="--backend") for text in backends)
    if len({s.url for s in specs}) != len(specs):
        raise ConfigError("a backend is given twice", path="--backend")
    options = BalanceOptions(
        host=listen.host,
        port=listen.port,
        backends=specs,
        backends_file=backends_file,
        probe=probe,
        probe_timeout=probe_timeout,
        interval=interval,
        policy=policy,
        hash_on=AffinityKey.parse(hash_on),
        hash_algorithm=hash_algorithm,
        bounded_load=bounded_load,
        trusted_proxies=parse_networks(trusted),
        retries=retries,
        retry_ratio=retry_ratio,
        retry_min_per_second=retry_min_per_second,
        retry_buffer_bytes=retry_buffer,
        health=HealthPolicy(
            rise=rise,
            fall=fall,
            eject_after=eject_after,
            base_ejection=ejection_time,
            max_ejection=max_ejection_time,
            slow_start=slow_start,
        ),
        timeout=response_timeout,
        connect_timeout=connect_timeout,
        source_address=source_address,
        limits=limits,
        access_log=access_log,
    )

    async def main(rt: Runtime) -> None:
        if workers > 1:
            await serve_balance_workers(
                rt, options, workers=workers, workers_timeout=workers_timeout
            )
        else:
            await serve_balance(rt, options)

    return run_component("balance", main, runtime)
