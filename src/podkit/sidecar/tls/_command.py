"""``podkit tls``: the command line of the TLS terminator."""

from __future__ import annotations

import contextlib
import dataclasses
import socket
from collections.abc import Iterator

import click

from podkit.cli import PodkitCommand
from podkit.engines.http import Forwarding, ServerLimits, Upstream
from podkit.engines.http.access_log import AccessLogSettings
from podkit.engines.http.cli_options import (
    access_log_options,
    server_limit_options,
    upstream_timeout_options,
)
from podkit.engines.http.client import DEFAULT_CONNECT_TIMEOUT, DEFAULT_RESPONSE_TIMEOUT
from podkit.engines.http.rules import DEFAULT_HANDSHAKE_TIMEOUT
from podkit.engines.workers import serve_workers
from podkit.errors import ConfigError, ListenError
from podkit.runtime import HostPort, Runtime, RuntimeOptions, format_duration, run_component
from podkit.runtime.cli_options import DURATION, HOSTPORT, runtime_options
from podkit.sidecar.tls._context import MIN_VERSIONS, CertPair, parse_sni
from podkit.sidecar.tls._server import (
    DEFAULT_RELOAD_CHECK,
    DEFAULT_SUBJECT_HEADER,
    TLSSettings,
    serve_tls,
)


@contextlib.contextmanager
def _reserve_port(listen: HostPort) -> Iterator[int]:
    """Bind (never listen) a SO_REUSEPORT socket so port 0 becomes one port all workers share.

    Raises:
        PodkitError: the address cannot be bound.
    """
    family = socket.AF_INET6 if ":" in listen.host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        try:
            sock.bind((listen.host, listen.port))
        except OSError as exc:
            raise ListenError(listen.host, listen.port, exc.strerror or str(exc)) from exc
        yield int(sock.getsockname()[1])


async def _worker_main(rt: Runtime, settings: TLSSettings) -> None:
    await serve_tls(rt, settings, reuse_port=True)


@click.command(cls=PodkitCommand)
@click.option(
    "--listen",
    type=HOSTPORT,
    default="127.0.0.1:8443",
    show_default=True,
    help="Address to serve HTTPS on.",
)
@click.option(
    "--cert",
    required=True,
    help="Certificate chain (PEM) served by default (no SNI, or no --sni match).",
)
@click.option("--key", required=True, help="Private key (PEM) of --cert.")
@click.option(
    "--sni",
    "sni",
    multiple=True,
    help="NAME=CERT,KEY: serve this pair to clients asking for NAME (repeatable; "
    "NAME may be *.example.com, several names joined by |).",
)
@click.option("--upstream", required=True, help="The plain-HTTP application: http://HOST:PORT.")
@click.option(
    "--client-ca",
    default=None,
    help="Require client certificates signed by this CA bundle (mutual TLS); the "
    "subject is sent upstream in --subject-header.",
)
@click.option(
    "--min-version",
    type=click.Choice(sorted(MIN_VERSIONS)),
    default="1.2",
    show_default=True,
    help="Oldest TLS version accepted.",
)
@click.option(
    "--redirect-from",
    type=HOSTPORT,
    default=None,
    help="Plain-HTTP address answering every request with a 308 redirect to HTTPS.",
)
@click.option(
    "--workers",
    type=click.IntRange(min=1, max=256),
    default=1,
    show_default=True,
    help="Processes sharing the port (SO_REUSEPORT); one admin endpoint.",
)
@click.option(
    "--subject-header",
    default=DEFAULT_SUBJECT_HEADER,
    show_default=True,
    help="Upstream header carrying the client certificate's subject (a copy sent by "
    "the client is removed).",
)
@click.option(
    "--reload-check",
    type=DURATION,
    default=format_duration(DEFAULT_RELOAD_CHECK),
    show_default=True,
    help="How often the certificate and client CA files are checked for changes (SIGHUP: now).",
)
@click.option(
    "--handshake-timeout",
    type=DURATION,
    default=format_duration(DEFAULT_HANDSHAKE_TIMEOUT),
    show_default=True,
    help="Time from accept to a completed TLS handshake; a client still handshaking is then "
    "closed. Handshaking clients count against --max-connections.",
)
@upstream_timeout_options(
    connect_timeout=DEFAULT_CONNECT_TIMEOUT, response_timeout=DEFAULT_RESPONSE_TIMEOUT
)
@click.option(
    "--trusted-proxy",
    "trusted_proxies",
    multiple=True,
    help="Network whose X-Forwarded-* fields are kept and extended (repeatable).",
)
@access_log_options
@server_limit_options
@runtime_options
def command(
    listen: HostPort,
    cert: str,
    key: str,
    sni: tuple[str, ...],
    upstream: str,
    client_ca: str | None,
    min_version: str,
    redirect_from: HostPort | None,
    workers: int,
    subject_header: str,
    reload_check: float,
    handshake_timeout: float,
    connect_timeout: float,
    response_timeout: float,
    source_address: str | None,
    trusted_proxies: tuple[str, ...],
    limits: ServerLimits,
    access_log: AccessLogSettings,
    runtime: RuntimeOptions,
) -> int:
    """Terminate TLS (1.2/1.3, SNI, optional mutual TLS) in front of a plain-HTTP application.

    Requests go upstream with X-Forwarded-Proto: https. Certificates and the client CA are
    reloaded when their files change or on SIGHUP; a broken new file is refused and the old
    one stays in service.
    """
    try:
        trusted = Forwarding.parse_trusted(trusted_proxies)
    except ValueError as exc:
        raise ConfigError(str(exc), path="--trusted-proxy") from exc
    if reload_check <= 0:
        raise ConfigError("must be more than 0", path="--reload-check")
    if handshake_timeout <= 0:
        raise ConfigError("must be more than 0", path="--handshake-timeout")
    limits = dataclasses.replace(limits, handshake_timeout=handshake_timeout)
    if "://" not in upstream:
        # As nginx's proxy_pass: http:// or https:// is written, never assumed.
        raise ConfigError(
            f"expected a URL with its scheme such as http://{upstream.strip()}, got {upstream!r}",
            path="--upstream",
        )
    settings = TLSSettings(
        listen=listen,
        upstream=Upstream.parse(upstream),
        default=CertPair(cert, key),
        sni=tuple(parse_sni(entry) for entry in sni),
        client_ca=client_ca,
        min_version=min_version,
        redirect_from=redirect_from,
        subject_header=subject_header,
        reload_check=reload_check,
        limits=limits,
        access_log=access_log,
        forwarding=Forwarding(trusted_proxies=trusted),
        connect_timeout=connect_timeout,
        response_timeout=response_timeout,
        source_address=source_address,
    )

    async def main(rt: Runtime) -> None:
        if workers == 1:
            await serve_tls(rt, settings)
            return
        with _reserve_port(settings.listen) as port:
            shared = dataclasses.replace(settings, listen=HostPort(settings.listen.host, port))
            if settings.redirect_from is not None and settings.redirect_from.port == 0:
                raise ConfigError("give --redirect-from a fixed port with --workers")
            rt.log.info("starting workers", extra={"workers": workers, "port": port})
            await serve_workers(rt, count=workers, main=_worker_main, settings=shared, name="tls")

    return run_component("tls", main, runtime)
