"""The TLS terminator: HTTPS in front of a plain-HTTP application, on the HTTP engine.

Theory of operation. An :class:`~podkit.engines.http.HTTPServer` listens with the base
context of a :class:`~._context.CertificateStore` and forwards every request to the upstream
through :func:`~podkit.engines.http.proxy_handler`, which adds ``X-Forwarded-For``,
``X-Forwarded-Host`` and ``X-Forwarded-Proto: https`` (the engine knows the connection is
TLS). One policy wraps it: the client certificate's subject (mutual TLS) goes upstream in a
header, and a copy of that header sent by the client is removed so it cannot be forged.
A watcher polls the certificate and client CA files and reloads what changed (SIGHUP reloads
all); new connections get the new certificate and CA while open ones keep theirs. An optional
plain listener answers every request with a permanent redirect to the HTTPS address.
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass, field
from typing import Final

from prometheus_client import CollectorRegistry, Counter

from podkit.engines.http import (
    Forwarding,
    Handler,
    HTTPServer,
    Request,
    Response,
    ServerLimits,
    Upstream,
    UpstreamPool,
    proxy_handler,
)
from podkit.engines.http.access_log import AccessLogSettings
from podkit.engines.http.client import DEFAULT_CONNECT_TIMEOUT, DEFAULT_RESPONSE_TIMEOUT
from podkit.runtime import HostPort, Runtime
from podkit.sidecar.tls._context import CertificateStore, CertPair, subject_text

DEFAULT_SUBJECT_HEADER: Final = "X-Client-Cert-Subject"
DEFAULT_RELOAD_CHECK: Final = 2.0  # a renewed certificate is served within two seconds


@dataclass(frozen=True, slots=True, kw_only=True)
class TLSSettings:
    """Everything ``podkit tls`` was told, validated (picklable: workers receive it).

    Attributes:
        listen: the HTTPS address.
        upstream: the plain-HTTP application.
        default: the certificate/key served when no SNI name matches.
        sni: further pairs, each served for its names.
        client_ca: require client certificates signed by this CA (mutual TLS).
        min_version: ``"1.2"`` or ``"1.3"``.
        redirect_from: a plain-HTTP address answering with redirects to HTTPS.
        subject_header: the upstream header carrying the client certificate's subject.
        reload_check: seconds between looks at the certificate files.
        limits: the client-facing limits of the HTTPS (and redirect) listener.
        forwarding: which peers' ``X-Forwarded-*`` fields are trusted.
        connect_timeout, response_timeout: seconds allowed to the upstream.
    """

    listen: HostPort
    upstream: Upstream
    default: CertPair
    sni: tuple[CertPair, ...] = ()
    client_ca: str | None = None
    min_version: str = "1.2"
    redirect_from: HostPort | None = None
    subject_header: str = DEFAULT_SUBJECT_HEADER
    reload_check: float = DEFAULT_RELOAD_CHECK
    limits: ServerLimits = field(default_factory=ServerLimits)
    forwarding: Forwarding = field(default_factory=Forwarding)
    connect_timeout: float = DEFAULT_CONNECT_TIMEOUT
    response_timeout: float = DEFAULT_RESPONSE_TIMEOUT
    source_address: str | None = None
    access_log: AccessLogSettings = field(default_factory=AccessLogSettings)


def pass_client_subject(inner: Handler, *, header: str) -> Handler:
    """A policy: send the verified client certificate's subject upstream in ``header``.

    Whatever the client itself put in ``header`` is dropped first.
    """
    name = header.encode("latin-1")
    lowered = name.lower()

    async def handle(request: Request) -> Response:
        headers = request.headers
        if any(k.lower() == lowered for k, _ in headers):
            headers = request.headers = [(k, v) for k, v in headers if k.lower() != lowered]
        tls = request.tls
        if tls is not None and tls.peer_cert:
            subject = subject_text(tls.peer_cert)
            if subject is not None:
                headers.append((name, subject.encode("utf-8")))
        return await inner(request)

    return handle


def redirect_to_https(*, https_port: int) -> Handler:
    """A handler answering ``308 Permanent Redirect`` to the same URL over HTTPS."""

    async def handle(request: Request) -> Response:
        host = request.header("host") or ""
        if host.startswith("["):
            hostname = host[: host.find("]") + 1]
        else:
            hostname = host.rsplit(":", 1)[0] if ":" in host else host
        if not hostname:
            return Response.text(400, "a Host header is needed to redirect to HTTPS\n")
        authority = hostname if https_port == 443 else f"{hostname}:{https_port}"
        target = request.target if request.target.startswith("/") else "/"
        location = f"https://{authority}{target}"
        return Response(
            308,
            [(b"Location", location.encode("latin-1")), (b"Content-Type", b"text/plain")],
            f"moved to {location}\n".encode("latin-1"),
        )

    return handle


class _Metrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.reloads = Counter(
            "tls_certificate_reloads",
            "Certificate pairs loaded again, by result (loaded, refused).",
            ["result"],
            registry=registry,
        )
        self.client_ca_reloads = Counter(
            "tls_client_ca_reloads",
            "Client CA bundles loaded again, by result (loaded, refused).",
            ["result"],
            registry=registry,
        )


async def watch_certificates(
    rt: Runtime, store: CertificateStore, *, every: float, metrics: _Metrics
) -> None:
    """Reload changed pairs every ``every`` seconds until cancelled."""
    while True:
        await asyncio.sleep(every)
        if store.changed() or store.client_ca_changed():
            apply_reload(rt, store, force=False, metrics=metrics)


def apply_reload(rt: Runtime, store: CertificateStore, *, force: bool, metrics: _Metrics) -> None:
    """Reload and log each result (a refused pair or CA keeps the old one in service)."""
    result = store.reload(force=force)
    if result.client_ca_loaded:
        metrics.client_ca_reloads.labels("loaded").inc()
        rt.log.info("client CA loaded", extra={"client_ca": store.client_ca})
    if result.client_ca_refused is not None:
        metrics.client_ca_reloads.labels("refused").inc()
        rt.log.error(
            "new client CA refused; still trusting the previous one",
            extra={"client_ca": store.client_ca, "error": result.client_ca_refused},
        )
    for pair in result.loaded:
        metrics.reloads.labels("loaded").inc()
        rt.log.info("certificate loaded", extra={"cert": pair.cert, "names": list(pair.names)})
    for pair, reason in result.refused:
        metrics.reloads.labels("refused").inc()
        rt.log.error(
            "new certificate refused; still serving the previous one",
            extra={"cert": pair.cert, "key": pair.key, "error": reason},
        )


async def serve_tls(rt: Runtime, settings: TLSSettings, *, reuse_port: bool = False) -> None:
    """Terminate TLS for ``settings.upstream`` until the runtime drains.

    Raises:
        ConfigError: a certificate, key or CA cannot be loaded at start.
        PodkitError: an address cannot be bound.
    """
    store = CertificateStore(
        settings.default,
        list(settings.sni),
        min_version=settings.min_version,
        client_ca=settings.client_ca,
    )
    metrics = _Metrics(rt.registry)
    rt.on_reload(lambda: apply_reload(rt, store, force=True, metrics=metrics))
    async with UpstreamPool(
        connect_timeout=settings.connect_timeout,
        response_timeout=settings.response_timeout,
        registry=rt.registry,
        source_address=settings.source_address,
    ) as pool:
        handler = pass_client_subject(
            proxy_handler(pool, settings.upstream, forwarding=settings.forwarding),
            header=settings.subject_header,
        )
        async with (
            HTTPServer(
                handler,
                host=settings.listen.host,
                port=settings.listen.port,
                limits=settings.limits,
                ssl=store.context,
                reuse_port=reuse_port,
                registry=rt.registry,
                name="tls",
                access_log=settings.access_log,
            ) as server,
            contextlib.AsyncExitStack() as stack,
        ):
            redirect: HTTPServer | None = None
            if settings.redirect_from is not None:
                redirect = await stack.enter_async_context(
                    HTTPServer(
                        redirect_to_https(https_port=server.port),
                        host=settings.redirect_from.host,
                        port=settings.redirect_from.port,
                        limits=settings.limits,
                        reuse_port=reuse_port,
                        metrics_prefix="podkit_tls_redirect",
                        registry=rt.registry,
                        name="tls-redirect",
                    )
                )
            rt.on_reload(server.reopen_access_log)
            rt.log.info(
                "listening",
                extra={
                    "listen": f"{settings.listen.host}:{server.port}",
                    "upstream": str(settings.upstream),
                    "sni": [name for pair in settings.sni for name in pair.names],
                    "mutual_tls": settings.client_ca is not None,
                    "redirect_from": None if redirect is None else redirect.port,
                },
            )
            async with asyncio.TaskGroup() as group:
                watcher = group.create_task(
                    watch_certificates(rt, store, every=settings.reload_check, metrics=metrics),
                    name="tls-certificate-watch",
                )
                rt.set_ready()
                await rt.wait_draining()
                watcher.cancel()
                drains = [server.drain(rt.drain_timeout)]
                if redirect is not None:
                    drains.append(redirect.drain(rt.drain_timeout))
                await asyncio.gather(*drains)
