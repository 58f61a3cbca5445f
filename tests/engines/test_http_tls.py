"""The HTTP server behind TLS: handlers see the SNI name and the client certificate, and a
proxied request says ``X-Forwarded-Proto: https``."""

from __future__ import annotations

import asyncio
import json
import ssl
import subprocess
from pathlib import Path

import pytest

from podkit.engines.http import HTTPServer, Request, Response, UpstreamPool, proxy_handler

from .conftest import Whoami
from .wire import Client

pytestmark = pytest.mark.asyncio

EC = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=30)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A throw-away CA with a server certificate (localhost, example.test) and a client one."""
    root = tmp_path_factory.mktemp("pki")
    ca = ["req", "-x509", *EC, "-keyout", "ca.key", "-out", "ca.pem", "-days", "1"]
    _openssl(*ca, "-subj", "/CN=podkit test CA", cwd=root)
    (root / "san.ext").write_text("subjectAltName=DNS:localhost,DNS:example.test,IP:127.0.0.1\n")
    for name, subject, ext in (
        ("server", "/CN=localhost", ["-extfile", "san.ext"]),
        ("client", "/CN=client-1/O=podkit", []),
    ):
        csr = ["req", *EC, "-keyout", f"{name}.key", "-out", f"{name}.csr", "-subj", subject]
        _openssl(*csr, cwd=root)
        sign = ["x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca.key"]
        _openssl(*sign, "-CAcreateserial", "-out", f"{name}.pem", "-days", "1", *ext, cwd=root)
    return root


def server_context(pki: Path) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(pki / "server.pem", pki / "server.key")
    context.load_verify_locations(pki / "ca.pem")
    context.verify_mode = ssl.CERT_OPTIONAL
    return context


def client_context(pki: Path, *, with_cert: bool) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(pki / "ca.pem"))
    if with_cert:
        context.load_cert_chain(pki / "client.pem", pki / "client.key")
    return context


async def tls_client(port: int, pki: Path, *, with_cert: bool) -> Client:
    reader, writer = await asyncio.open_connection(
        "127.0.0.1",
        port,
        ssl=client_context(pki, with_cert=with_cert),
        server_hostname="example.test",
    )
    return Client(reader, writer)


async def describe_tls(request: Request) -> Response:
    tls = request.tls
    body = {
        "scheme": request.scheme,
        "sni": tls.sni if tls else None,
        "subject": tls.peer_subject if tls else None,
        "version": tls.version if tls else None,
    }
    return Response(200, [(b"Content-Type", b"application/json")], json.dumps(body).encode())


@pytest.mark.parametrize("with_cert", [True, False], ids=["client-cert", "no-client-cert"])
async def test_handlers_see_sni_and_the_client_certificate(pki: Path, with_cert: bool) -> None:
    async with HTTPServer(describe_tls, ssl=server_context(pki)) as server:
        client = await tls_client(server.port, pki, with_cert=with_cert)
        await client.send(b"GET / HTTP/1.1\r\nHost: example.test\r\n\r\n")
        info = json.loads((await client.read_response()).body)
        await client.close()
    assert info["scheme"] == "https"
    assert info["sni"] == "example.test"
    assert info["version"].startswith("TLSv1")
    if with_cert:
        assert info["subject"] == "CN=client-1,O=podkit"
    else:
        assert info["subject"] is None


async def test_a_proxied_https_request_says_x_forwarded_proto_https(
    pki: Path, whoami: Whoami
) -> None:
    async with UpstreamPool() as pool:
        handler = proxy_handler(pool, whoami.upstream)
        async with HTTPServer(handler, ssl=server_context(pki)) as server:
            client = await tls_client(server.port, pki, with_cert=False)
            await client.send(b"GET /tls HTTP/1.1\r\nHost: example.test\r\n\r\n")
            reply = await client.read_response()
            await client.close()
    headers = json.loads(reply.body)["headers"]
    assert headers["X-Forwarded-Proto"] == "https"
    assert headers["X-Forwarded-Host"] == "example.test"
