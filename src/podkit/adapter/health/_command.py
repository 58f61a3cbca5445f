"""``podkit adapt health``: rich checks behind the standard probe endpoints."""

from __future__ import annotations

import asyncio

import click

from podkit.adapter.health._adapter import DEFAULT_INTERVAL, DEFAULT_TIMEOUT, HealthAdapter
from podkit.adapter.health._checks import CheckSpec, parse_check
from podkit.errors import ConfigError
from podkit.runtime import Runtime, RuntimeOptions, run_component
from podkit.runtime.cli_options import DURATION, HOSTPORT, runtime_options
from podkit.runtime.config import HostPort, format_duration
from podkit.runtime.httpserver import SimpleHTTPServer

MAX_CHECKS = 64  # one task per check; more belongs in several adapters


async def serve_health(rt: Runtime, adapter: HealthAdapter, *, listen: HostPort) -> None:
    """Serve the probe endpoints on ``listen`` and run the checks until the runtime drains."""
    server = SimpleHTTPServer(adapter.handle, listen.host, listen.port, name="adapt health")
    await server.start()
    try:
        rt.log.info(
            "health adapter listening",
            extra={"listen": f"{listen.host}:{server.port}", "checks": adapter.board.names},
        )
        rt.set_ready()
        async with asyncio.TaskGroup() as group:
            checks = group.create_task(adapter.serve(), name="health-checks")
            await rt.wait_draining()
            checks.cancel()
    finally:
        await server.aclose()


def _checks(values: tuple[str, ...]) -> list[CheckSpec]:
    if not values:
        raise click.UsageError("give at least one --check NAME=TARGET")
    if len(values) > MAX_CHECKS:
        raise click.UsageError(f"at most {MAX_CHECKS} checks, got {len(values)}")
    try:
        return [parse_check(value) for value in values]
    except ConfigError as exc:
        raise click.BadParameter(exc.reason, param_hint="'--check'") from exc


@click.command(name="health")
@click.option("--listen", type=HOSTPORT, required=True, help="Serve the probes on HOST:PORT.")
@click.option(
    "--check",
    "check_values",
    multiple=True,
    metavar="NAME=TARGET",
    help="A check (repeatable). TARGET: redis://HOST:PORT[/DB][?role=master|replica], "
    "postgresql://USER@HOST:PORT/DB[?query=SQL], tcp://HOST:PORT, http(s)://HOST:PORT/PATH "
    "(200-399 passes) or cmd:COMMAND (exit 0 passes).",
)
@click.option(
    "--ready-requires",
    default=None,
    metavar="NAME,...",
    help="The checks /readyz needs [default: all]; the others are only listed.",
)
@click.option(
    "--interval",
    type=DURATION,
    default=format_duration(DEFAULT_INTERVAL),
    show_default=True,
    help="How often each check runs, whatever the probes do.",
)
@click.option(
    "--timeout",
    type=DURATION,
    default=format_duration(DEFAULT_TIMEOUT),
    show_default=True,
    help="How long one run of a check may take before it fails.",
)
@runtime_options
def command(
    listen: HostPort,
    check_values: tuple[str, ...],
    ready_requires: str | None,
    interval: float,
    timeout: float,
    runtime: RuntimeOptions,
) -> int:
    """Run rich checks (Redis, PostgreSQL, TCP, HTTP, a command) behind simple probes.

    Each check runs on --interval with --timeout, never per probe, so any number of probes
    reach no backend. Endpoints on --listen: /healthz and /livez (the adapter runs), /readyz
    (every required check passes; ?verbose lists them, ?exclude=NAME leaves one out, as
    Kubernetes does), /readyz/NAME (one check), /checks (JSON: state, latency, last error,
    since when) and /metrics.
    """
    specs = _checks(check_values)
    if interval <= 0 or timeout <= 0:
        raise click.BadParameter("must be more than 0", param_hint="'--interval'/'--timeout'")
    required = None
    if ready_requires is not None:
        required = [name.strip() for name in ready_requires.split(",") if name.strip()]
    try:
        adapter = HealthAdapter(specs, interval=interval, timeout=timeout, required=required)
    except ConfigError as exc:
        raise click.UsageError(exc.reason) from exc

    async def main(rt: Runtime) -> None:
        rt.registry.register(adapter.collector())
        await serve_health(rt, adapter, listen=listen)

    return run_component("adapt-health", main, runtime)
