"""``podkit proxy``: a plain reverse proxy (HTTP or TCP) on the engine, the simplest
sidecar/ambassador; the other patterns layer their policies on the same engine."""

from __future__ import annotations

import contextlib
import dataclasses
import socket
from collections.abc import Iterator
from dataclasses import dataclass, field

import click

from podkit.cli import PodkitCommand
from podkit.engines.http import (
    Forwarding,
    HTTPServer,
    ServerLimits,
    Upstream,
    UpstreamPool,
    proxy_handler,
)
from podkit.engines.http.access_log import AccessLogSettings
from podkit.engines.http.cli_options import (
    access_log_options,
    server_limit_options,
    upstream_timeout_options,
)
from podkit.engines.http.client import DEFAULT_CONNECT_TIMEOUT, DEFAULT_RESPONSE_TIMEOUT
from podkit.engines.tcp import DEFAULT_IDLE_TIMEOUT as DEFAULT_TCP_IDLE_TIMEOUT
from podkit.engines.tcp import TCPProxy
from podkit.engines.workers import serve_workers
from podkit.errors import ConfigError, ListenError
from podkit.runtime import HostPort, Runtime, RuntimeOptions, format_duration, run_component
from podkit.runtime.cli_options import DURATION, HOSTPORT, runtime_options


@contextlib.contextmanager
def reserve_port(listen: HostPort) -> Iterator[int]:
    """Bind (not listen) a SO_REUSEPORT socket on ``listen``; yields the bound port.

    Raises:
        PodkitError: the address cannot be bound.
    """
    family = socket.AF_INET6 if ":" in listen.host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        try:
            sock.bind((listen.host, listen.port))
        except OSError as exc:
            raise ListenError(listen.host, listen.port, exc.strerror or str(exc)) from exc
        yield int(sock.getsockname()[1])
    finally:
        sock.close()


@dataclass(frozen=True, slots=True, kw_only=True)
class ProxySettings:
    """Everything ``podkit proxy`` was told, validated."""

    listen: HostPort
    upstream: Upstream
    mode: str = "http"
    limits: ServerLimits = field(default_factory=ServerLimits)
    forwarding: Forwarding = field(default_factory=Forwarding)
    connect_timeout: float = DEFAULT_CONNECT_TIMEOUT
    response_timeout: float = DEFAULT_RESPONSE_TIMEOUT
    idle_timeout: float = DEFAULT_TCP_IDLE_TIMEOUT
    source_address: str | None = None
    access_log: AccessLogSettings = field(default_factory=AccessLogSettings)


async def serve_proxy(rt: Runtime, settings: ProxySettings, *, reuse_port: bool = False) -> None:
    """Serve the proxy in ``settings.mode`` until the runtime drains."""
    if settings.mode == "tcp":
        await serve_tcp_proxy(rt, settings, reuse_port=reuse_port)
    else:
        await serve_http_proxy(rt, settings, reuse_port=reuse_port)


async def _worker_main(rt: Runtime, settings: ProxySettings) -> None:
    await serve_proxy(rt, settings, reuse_port=True)


async def serve_tcp_proxy(
    rt: Runtime, settings: ProxySettings, *, reuse_port: bool = False
) -> None:
    """Serve the TCP forwarder until the runtime drains."""
    async with TCPProxy(
        settings.upstream,
        host=settings.listen.host,
        port=settings.listen.port,
        connect_timeout=settings.connect_timeout,
        idle_timeout=settings.idle_timeout,
        source_address=settings.source_address,
        max_connections=settings.limits.max_connections,
        reuse_port=reuse_port,
        registry=rt.registry,
        name="proxy",
    ) as proxy:
        rt.log.info(
            "listening",
            extra={
                "listen": f"{settings.listen.host}:{proxy.port}",
                "upstream": settings.upstream.authority,
                "mode": "tcp",
            },
        )
        rt.set_ready()
        await rt.wait_draining()
        await proxy.drain(rt.drain_timeout)


async def serve_http_proxy(
    rt: Runtime, settings: ProxySettings, *, reuse_port: bool = False
) -> None:
    """Serve the HTTP proxy until the runtime drains."""
    async with UpstreamPool(
        connect_timeout=settings.connect_timeout,
        response_timeout=settings.response_timeout,
        registry=rt.registry,
        source_address=settings.source_address,
    ) as pool:
        handler = proxy_handler(pool, settings.upstream, forwarding=settings.forwarding)
        async with HTTPServer(
            handler,
            host=settings.listen.host,
            port=settings.listen.port,
            limits=settings.limits,
            reuse_port=reuse_port,
            registry=rt.registry,
            name="proxy",
            access_log=settings.access_log,
        ) as server:
            rt.on_reload(server.reopen_access_log)
            rt.log.info(
                "listening",
                extra={
                    "listen": f"{settings.listen.host}:{server.port}",
                    "upstream": str(settings.upstream),
                    "mode": "http",
                },
            )
            rt.set_ready()
            await rt.wait_draining()
            await server.drain(rt.drain_timeout)


@click.command(cls=PodkitCommand)
@click.option(
    "--listen",
    type=HOSTPORT,
    default="127.0.0.1:8080",
    show_default=True,
    help="Address to accept clients on.",
)
@click.option(
    "--upstream",
    required=True,
    help="Where to forward: http://HOST:PORT (http mode) or HOST:PORT (tcp mode).",
)
@click.option(
    "--mode",
    type=click.Choice(["http", "tcp"]),
    default="http",
    show_default=True,
    help="http: HTTP/1.1 reverse proxy; tcp: forward bytes (L4) with half-close.",
)
@click.option(
    "--workers",
    type=click.IntRange(min=1, max=256),
    default=1,
    show_default=True,
    help="Processes sharing the port (SO_REUSEPORT); one admin endpoint, merged metrics.",
)
@upstream_timeout_options(
    connect_timeout=DEFAULT_CONNECT_TIMEOUT, response_timeout=DEFAULT_RESPONSE_TIMEOUT
)
@click.option(
    "--idle-timeout",
    type=DURATION,
    default=format_duration(DEFAULT_TCP_IDLE_TIMEOUT),
    show_default=True,
    help="tcp mode: close a connection with no byte either way for this long.",
)
@click.option(
    "--trusted-proxy",
    "trusted_proxies",
    multiple=True,
    help="Network whose X-Forwarded-* fields are kept and extended (repeatable), e.g. 10.0.0.0/8.",
)
@click.option(
    "--via",
    default="podkit",
    show_default=True,
    help="Pseudonym added to Via on requests and responses; empty for none.",
)
@access_log_options
@server_limit_options
@runtime_options
def command(
    listen: HostPort,
    upstream: str,
    mode: str,
    workers: int,
    connect_timeout: float,
    idle_timeout: float,
    response_timeout: float,
    source_address: str | None,
    trusted_proxies: tuple[str, ...],
    via: str,
    limits: ServerLimits,
    access_log: AccessLogSettings,
    runtime: RuntimeOptions,
) -> int:
    """A reverse proxy: forward every request (or TCP connection) to one upstream.

    HTTP mode removes hop-by-hop fields, adds X-Forwarded-For/-Proto/-Host and Via, streams
    bodies both ways with back-pressure, keeps upstream connections alive, refuses ambiguous
    framing with 400 and answers its limits with 408/413/414/431 and upstream failures with
    502/503/504.
    """
    try:
        trusted = Forwarding.parse_trusted(trusted_proxies)
    except ValueError as exc:
        raise ConfigError(str(exc), path="--trusted-proxy") from exc
    if mode == "tcp":
        target = upstream.removeprefix("tcp://")
        if "://" in target:
            raise ConfigError("tcp mode takes HOST:PORT", path="--upstream")
        parsed = Upstream.parse(target)
    else:
        if "://" not in upstream:
            # As nginx's proxy_pass: http:// or https:// is written, never assumed.
            raise ConfigError(
                f"expected a URL with its scheme such as http://{upstream.strip()}, "
                f"got {upstream!r}",
                path="--upstream",
            )
        parsed = Upstream.parse(upstream)
    settings = ProxySettings(
        listen=listen,
        upstream=parsed,
        mode=mode,
        limits=limits,
        forwarding=Forwarding(trusted_proxies=trusted, via=via or None),
        connect_timeout=connect_timeout,
        response_timeout=response_timeout,
        idle_timeout=idle_timeout,
        source_address=source_address,
        access_log=access_log,
    )

    async def main(rt: Runtime) -> None:
        if workers == 1:
            await serve_proxy(rt, settings)
            return
        # Hold the port for the workers (bound with SO_REUSEPORT, never listening, so it
        # takes no connections): port 0 becomes one port every worker shares.
        with reserve_port(settings.listen) as port:
            shared = dataclasses.replace(settings, listen=HostPort(settings.listen.host, port))
            rt.log.info(
                "starting workers",
                extra={"workers": workers, "listen": f"{settings.listen.host}:{port}"},
            )
            await serve_workers(rt, count=workers, main=_worker_main, settings=shared, name="proxy")

    return run_component("proxy", main, runtime)
