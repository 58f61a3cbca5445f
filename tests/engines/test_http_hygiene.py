"""Header hygiene of the engine as a proxy: what a client sends never becomes something else
upstream (trailers, underscore aliases, absolute-form targets, Connection-named fields,
client-described forwarding fields), and what a client is told of failures is generic."""

from __future__ import annotations

import asyncio
import json
import logging

import pytest

from podkit.engines.http import Forwarding, ServerLimits, Upstream
from podkit.testing import free_port
from podkit.testing.net import wait_for

from .conftest import Proxy, StartProxy
from .wire import Client, exchange

pytestmark = pytest.mark.asyncio


def upstream_saw(body: bytes) -> dict[str, str]:
    """The request fields whoami received (its JSON description)."""
    headers: dict[str, str] = json.loads(body)["headers"]
    return headers


@pytest.mark.parametrize("bytewise", [False, True], ids=["whole", "bytewise"])
async def test_trailers_never_become_header_fields(proxy: Proxy, bytewise: bool) -> None:
    request = (
        b"POST /t HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"5\r\nhello\r\n0\r\nHost: evil.example\r\nX-Injected: 1\r\n\r\n"
    )
    reply = await exchange(proxy.port, request, bytewise=bytewise)
    assert reply.status == 200
    seen = upstream_saw(reply.body)
    assert seen["Host"] == "x"
    assert "X-Injected" not in seen
    assert json.loads(reply.body)["path"] == "/t"


async def test_header_names_with_underscores_are_dropped_by_default(proxy: Proxy) -> None:
    reply = await exchange(
        proxy.port,
        b"GET / HTTP/1.1\r\nHost: a\r\nX_Client_Cert_Subject: CN=admin\r\n"
        b"X_Forwarded_For: 10.9.9.9\r\nX-Kept: 1\r\n\r\n",
    )
    seen = upstream_saw(reply.body)
    assert "X_Client_Cert_Subject" not in seen
    assert "X_Forwarded_For" not in seen
    assert seen["X-Kept"] == "1"
    assert seen["X-Forwarded-For"] == "127.0.0.1"


async def test_underscores_in_headers_can_be_allowed(start_proxy: StartProxy) -> None:
    proxy = await start_proxy(limits=ServerLimits(underscores_in_headers=True))
    reply = await exchange(proxy.port, b"GET / HTTP/1.1\r\nHost: a\r\nX_Legacy: 1\r\n\r\n")
    assert upstream_saw(reply.body)["X_Legacy"] == "1"


@pytest.mark.parametrize(
    ("target", "path", "host"),
    [
        (b"http://good.example/p?q=1", "/p?q=1", "good.example"),
        (b"http://good.example:8080", "/", "good.example:8080"),
        (b"HTTPS://good.example?x", "/?x", "good.example"),
    ],
)
async def test_absolute_form_targets_are_forwarded_in_origin_form_with_their_host(
    proxy: Proxy, target: bytes, path: str, host: str
) -> None:
    reply = await exchange(
        proxy.port, b"GET " + target + b" HTTP/1.1\r\nHost: evil.example\r\n\r\n"
    )
    assert reply.status == 200
    info = json.loads(reply.body)
    assert info["path"] == path
    assert info["headers"]["Host"] == host
    assert info["headers"]["X-Forwarded-Host"] == host


@pytest.mark.parametrize(
    "target", [b"ftp://a.example/", b"http://user@a.example/", b"http:///nohost"]
)
async def test_bad_absolute_form_targets_are_refused(proxy: Proxy, target: bytes) -> None:
    reply = await exchange(proxy.port, b"GET " + target + b" HTTP/1.1\r\nHost: a\r\n\r\n")
    assert reply.status == 400


async def test_connection_naming_host_does_not_remove_it(proxy: Proxy) -> None:
    reply = await exchange(
        proxy.port,
        b"GET / HTTP/1.1\r\nHost: app.example\r\nConnection: Host, X-Gone\r\nX-Gone: 1\r\n\r\n",
    )
    seen = upstream_saw(reply.body)
    assert seen["Host"] == "app.example"
    assert "X-Gone" not in seen


async def test_forwarded_and_x_real_ip_from_an_untrusted_client_are_dropped(
    proxy: Proxy,
) -> None:
    reply = await exchange(
        proxy.port,
        b"GET / HTTP/1.1\r\nHost: a\r\nForwarded: for=6.6.6.6;proto=https\r\n"
        b"X-Real-IP: 6.6.6.6\r\n\r\n",
    )
    seen = upstream_saw(reply.body)
    assert "Forwarded" not in seen
    assert "X-Real-IP" not in seen


async def test_forwarded_and_x_real_ip_from_a_trusted_proxy_are_kept(
    start_proxy: StartProxy,
) -> None:
    trusted = Forwarding(trusted_proxies=Forwarding.parse_trusted(["127.0.0.1"]))
    proxy = await start_proxy(forwarding=trusted)
    reply = await exchange(
        proxy.port,
        b"GET / HTTP/1.1\r\nHost: a\r\nForwarded: for=192.0.2.1\r\nX-Real-IP: 192.0.2.1\r\n\r\n",
    )
    seen = upstream_saw(reply.body)
    assert seen["Forwarded"] == "for=192.0.2.1"
    assert seen["X-Real-IP"] == "192.0.2.1"


async def test_upstream_failures_tell_the_client_only_the_kind_and_log_the_detail(
    start_proxy: StartProxy, caplog: pytest.LogCaptureFixture
) -> None:
    port = free_port()
    proxy = await start_proxy(upstream=Upstream("127.0.0.1", port))
    with caplog.at_level(logging.WARNING, logger="podkit.engines.http"):
        reply = await exchange(proxy.port, b"GET /x HTTP/1.1\r\nHost: a\r\n\r\n")
    assert reply.status == 502
    assert str(port).encode() not in reply.body
    assert b"127.0.0.1" not in reply.body
    records = [r for r in caplog.records if r.getMessage() == "upstream failed"]
    assert records
    assert getattr(records[0], "upstream", None) == f"127.0.0.1:{port}"
    assert "connect failed" in getattr(records[0], "reason", "")


async def test_a_malformed_request_is_refused_without_the_parsers_words(proxy: Proxy) -> None:
    reply = await exchange(proxy.port, b"GET / HTTP/1.1\r\nHost: a\r\nBad Name: 1\r\n\r\n")
    assert reply.status == 400
    assert reply.body == b"400 Bad Request: malformed request\n"


async def test_a_client_that_leaves_before_its_response_is_counted_as_499(proxy: Proxy) -> None:
    client = await Client.connect(proxy.port)
    await client.send(b"GET /delay/300 HTTP/1.1\r\nHost: a\r\n\r\n")
    await client.close()

    def counted() -> bool:
        return proxy.server.statistics().responses.get(499, 0) == 1

    await asyncio.to_thread(wait_for, counted)
    assert 500 not in proxy.server.statistics().responses
