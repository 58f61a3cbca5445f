"""The HTTP engine as a reverse proxy in front of a real ``podkit whoami``: forwarding rules,
framing of bodies both ways, keep-alive, pipelining, 100-continue and upstream failures."""

from __future__ import annotations

import asyncio
import contextlib
import json

import pytest

from podkit.engines.errors import UpstreamConnectError
from podkit.engines.http import (
    Body,
    Forwarding,
    Handler,
    Request,
    Response,
    Upstream,
)
from podkit.testing import free_port
from podkit.testing.net import wait_for

from .conftest import Proxy, StartProxy, Whoami
from .wire import Client, exchange

pytestmark = pytest.mark.asyncio


def described(body: bytes) -> dict[str, object]:
    data: dict[str, object] = json.loads(body)
    return data


async def test_get_is_forwarded_with_forwarding_fields_and_via(proxy: Proxy) -> None:
    reply = await exchange(proxy.port, b"GET /hello?x=1 HTTP/1.1\r\nHost: example.test\r\n\r\n")
    assert reply.status == 200
    assert reply.header("X-Served-By") == "w1"
    assert reply.header("Via") == "1.1 podkit"
    info = described(reply.body)
    headers = info["headers"]
    assert isinstance(headers, dict)
    assert info["path"] == "/hello?x=1"
    assert headers["Host"] == "example.test"
    assert headers["X-Forwarded-For"] == "127.0.0.1"
    assert headers["X-Forwarded-Proto"] == "http"
    assert headers["X-Forwarded-Host"] == "example.test"
    assert headers["Via"] == "1.1 podkit"


@pytest.mark.parametrize("bytewise", [False, True], ids=["whole", "bytewise"])
async def test_hop_by_hop_fields_and_those_named_in_connection_are_not_forwarded(
    proxy: Proxy, bytewise: bool
) -> None:
    request = (
        b"GET / HTTP/1.1\r\nHost: a\r\nConnection: keep-alive, X-Secret\r\nX-Secret: 1\r\n"
        b"Keep-Alive: timeout=5\r\nTE: trailers\r\nProxy-Connection: keep-alive\r\n"
        b"Trailer: X-T\r\nX-Kept: yes\r\n\r\n"
    )
    reply = await exchange(proxy.port, request, bytewise=bytewise)
    headers = described(reply.body)["headers"]
    assert isinstance(headers, dict)
    assert headers["X-Kept"] == "yes"
    for name in ("Connection", "X-Secret", "Keep-Alive", "TE", "Proxy-Connection", "Trailer"):
        assert name not in headers


async def test_forged_x_forwarded_for_from_an_untrusted_client_is_replaced(proxy: Proxy) -> None:
    reply = await exchange(
        proxy.port,
        b"GET / HTTP/1.1\r\nHost: a\r\nX-Forwarded-For: 6.6.6.6\r\n"
        b"X-Forwarded-Proto: https\r\nX-Forwarded-Host: evil\r\n\r\n",
    )
    headers = described(reply.body)["headers"]
    assert isinstance(headers, dict)
    assert headers["X-Forwarded-For"] == "127.0.0.1"
    assert headers["X-Forwarded-Proto"] == "http"
    assert headers["X-Forwarded-Host"] == "a"


async def test_a_trusted_proxy_chain_is_extended(start_proxy: StartProxy) -> None:
    trusted = Forwarding(trusted_proxies=Forwarding.parse_trusted(["127.0.0.0/8"]))
    proxy = await start_proxy(forwarding=trusted)
    reply = await exchange(
        proxy.port,
        b"GET / HTTP/1.1\r\nHost: a\r\nX-Forwarded-For: 10.1.1.1\r\n"
        b"X-Forwarded-Proto: https\r\nVia: 1.1 edge\r\n\r\n",
    )
    headers = described(reply.body)["headers"]
    assert isinstance(headers, dict)
    assert headers["X-Forwarded-For"] == "10.1.1.1, 127.0.0.1"
    assert headers["X-Forwarded-Proto"] == "https"
    assert headers["Via"] == "1.1 edge, 1.1 podkit"


@pytest.mark.parametrize("bytewise", [False, True], ids=["whole", "bytewise"])
async def test_content_length_body_is_forwarded(proxy: Proxy, bytewise: bool) -> None:
    body = b"0123456789" * 50
    request = b"POST /echo HTTP/1.1\r\nHost: a\r\nContent-Length: 500\r\n\r\n" + body
    reply = await exchange(proxy.port, request, bytewise=bytewise)
    assert reply.status == 200
    assert reply.body == body


@pytest.mark.parametrize("bytewise", [False, True], ids=["whole", "bytewise"])
async def test_chunked_body_is_forwarded(proxy: Proxy, bytewise: bool) -> None:
    request = (
        b"POST /echo HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"5\r\nhello\r\n1;ext=1\r\n \r\nA\r\n0123456789\r\n0\r\n\r\n"
    )
    reply = await exchange(proxy.port, request, bytewise=bytewise)
    assert reply.status == 200
    assert reply.body == b"hello 0123456789"


async def test_a_large_streamed_response_arrives_whole_and_chunked(proxy: Proxy) -> None:
    size = 3 * 1024 * 1024 + 17
    reply = await exchange(proxy.port, f"GET /bytes/{size} HTTP/1.1\r\nHost: a\r\n\r\n".encode())
    assert reply.chunked
    assert len(reply.body) == size


async def test_a_slow_client_does_not_make_the_proxy_buffer_the_whole_response(
    start_proxy: StartProxy,
) -> None:
    bodies: list[Body] = []

    def capture(inner: Handler) -> Handler:
        async def handle(request: Request) -> Response:
            response = await inner(request)
            assert isinstance(response.body, Body)
            bodies.append(response.body)
            return response

        return handle

    proxy = await start_proxy(handler=capture, buffer_bytes=64 * 1024)
    client = await Client.connect(proxy.port)
    client.writer.transport.pause_reading()  # type: ignore[attr-defined]
    await client.send(b"GET /bytes/200000000 HTTP/1.1\r\nHost: a\r\n\r\n")
    await asyncio.to_thread(wait_for, lambda: bool(bodies) and bodies[0].producer_paused)
    assert bodies[0].buffered < 64 * 1024 + 256 * 1024  # high water plus one read at most
    await client.close()


async def test_head_keeps_content_length_and_the_connection_stays_usable(proxy: Proxy) -> None:
    client = await Client.connect(proxy.port)
    await client.send(b"HEAD / HTTP/1.1\r\nHost: a\r\n\r\n")
    head = await client.read_response(method="HEAD")
    assert head.status == 200
    assert int(head.header("Content-Length") or 0) > 0
    await client.send(b"GET /status/201 HTTP/1.1\r\nHost: a\r\n\r\n")
    after = await client.read_response()
    assert after.status == 201
    assert after.body == b"status 201\n"
    await client.close()


async def test_204_and_304_carry_no_body_and_keep_the_connection(proxy: Proxy) -> None:
    client = await Client.connect(proxy.port)
    await client.send(b"GET /status/204 HTTP/1.1\r\nHost: a\r\n\r\n")
    reply = await client.read_response()
    assert reply.status == 204
    assert reply.header("Transfer-Encoding") is None
    await client.send(b"GET /cache/60 HTTP/1.1\r\nHost: a\r\n\r\n")
    first = await client.read_response()
    etag = first.header("ETag")
    assert etag
    await client.send(
        f"GET /cache/60 HTTP/1.1\r\nHost: a\r\nIf-None-Match: {etag}\r\n\r\n".encode()
    )
    cached = await client.read_response()
    assert cached.status == 304
    await client.send(b"GET /status/202 HTTP/1.1\r\nHost: a\r\n\r\n")
    assert (await client.read_response()).status == 202
    await client.close()


async def test_http10_client_gets_a_close_delimited_stream(proxy: Proxy) -> None:
    client = await Client.connect(proxy.port)
    await client.send(b"GET /bytes/1000 HTTP/1.0\r\n\r\n")
    reply = await client.read_response()
    assert reply.status == 200
    assert not reply.chunked
    assert reply.header("Connection") == "close"
    assert len(reply.body) == 1000
    await client.close()


async def test_http10_keep_alive_is_honoured_for_sized_responses(proxy: Proxy) -> None:
    client = await Client.connect(proxy.port)
    for _ in range(2):
        await client.send(b"GET /status/200 HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
        reply = await client.read_response()
        assert reply.status == 200
        assert reply.header("Connection") == "keep-alive"
    await client.close()


@pytest.mark.parametrize("bytewise", [False, True], ids=["whole", "bytewise"])
async def test_pipelined_requests_are_answered_in_order(proxy: Proxy, bytewise: bool) -> None:
    client = await Client.connect(proxy.port)
    await client.send(
        b"GET /delay/100 HTTP/1.1\r\nHost: a\r\n\r\n"
        b"POST /echo HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n\r\nabc"
        b"GET /status/201 HTTP/1.1\r\nHost: a\r\n\r\n",
        bytewise=bytewise,
    )
    first = await client.read_response()
    second = await client.read_response()
    third = await client.read_response()
    assert described(first.body)["path"] == "/delay/100"
    assert second.body == b"abc"
    assert third.status == 201
    await client.close()


async def test_expect_100_continue_is_answered_before_the_body_is_sent(proxy: Proxy) -> None:
    client = await Client.connect(proxy.port)
    await client.send(
        b"POST /echo HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n"
    )
    interim = await client.read_response()
    assert interim.status == 100
    await client.send(b"howdy")
    reply = await client.read_response()
    assert reply.status == 200
    assert reply.body == b"howdy"
    await client.close()


async def test_an_idle_pooled_connection_is_always_being_read(start_proxy: StartProxy) -> None:
    """After responses far larger than the buffer, every idle upstream connection reads again."""
    proxy = await start_proxy(buffer_bytes=4096)
    client = await Client.connect(proxy.port)
    for path in ("/bytes/3000000", "/sized/3000000", "/status/200"):
        for _ in range(3):
            await client.send(f"GET {path} HTTP/1.1\r\nHost: a\r\n\r\n".encode())
            reply = await client.read_response()
            assert reply.status == 200
    await client.close()
    idle = [conn for slot in proxy.pool._slots.values() for conn in slot.idle]
    assert idle
    for conn in idle:
        assert conn.transport is not None
        assert conn.transport.is_reading()


async def test_upstream_connections_are_kept_alive_and_reused(proxy: Proxy) -> None:
    client = await Client.connect(proxy.port)
    for _ in range(20):
        await client.send(b"GET /status/200 HTTP/1.1\r\nHost: a\r\n\r\n")
        assert (await client.read_response()).status == 200
    await client.close()
    stats = proxy.pool.statistics()
    assert stats.connects == 1
    assert stats.reused == 19


async def test_upstream_connect_failure_is_a_502_with_a_metric(start_proxy: StartProxy) -> None:
    proxy = await start_proxy(upstream=Upstream("127.0.0.1", free_port()))
    reply = await exchange(proxy.port, b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
    assert reply.status == 502
    assert reply.body == b"502 Bad Gateway: the upstream did not answer properly\n"
    assert proxy.server.statistics().errors["upstream_connect"] == 1
    assert proxy.server.statistics().responses[502] == 1


async def test_upstream_response_timeout_is_a_504(start_proxy: StartProxy) -> None:
    proxy = await start_proxy(timeout=0.3)
    reply = await exchange(proxy.port, b"GET /delay/3000 HTTP/1.1\r\nHost: a\r\n\r\n")
    assert reply.status == 504
    assert proxy.server.statistics().errors["upstream_timeout"] == 1


async def test_no_upstream_ready_is_a_503(start_proxy: StartProxy) -> None:
    proxy = await start_proxy(upstream=lambda request: None)
    reply = await exchange(proxy.port, b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
    assert reply.status == 503
    assert proxy.server.statistics().errors["no_upstream"] == 1


async def test_an_upstream_that_breaks_off_mid_body_truncates_the_client_response(
    start_proxy: StartProxy,
) -> None:
    async def half(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n" + b"x" * 10)
        await writer.drain()
        writer.close()

    upstream = await asyncio.start_server(half, "127.0.0.1", 0)
    port = upstream.sockets[0].getsockname()[1]
    try:
        proxy = await start_proxy(upstream=Upstream("127.0.0.1", port))
        client = await Client.connect(proxy.port)
        await client.send(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
        with pytest.raises((asyncio.IncompleteReadError, ConnectionError)):
            await client.read_response()
        await client.close()
    finally:
        upstream.close()
        await upstream.wait_closed()


async def test_a_stale_kept_alive_upstream_connection_is_retried_for_a_bodiless_request(
    start_proxy: StartProxy,
) -> None:
    """An upstream that closes each connection after answering, without saying so."""
    served = 0

    async def once(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal served
        await reader.readuntil(b"\r\n\r\n")
        served += 1
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        await writer.drain()
        writer.close()

    upstream = await asyncio.start_server(once, "127.0.0.1", 0)
    port = upstream.sockets[0].getsockname()[1]
    try:
        proxy = await start_proxy(upstream=Upstream("127.0.0.1", port))
        client = await Client.connect(proxy.port)
        for _ in range(3):
            await client.send(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
            reply = await client.read_response()
            assert reply.status == 200
            assert reply.body == b"ok"
        await client.close()
        assert served == 3
    finally:
        upstream.close()
        await upstream.wait_closed()


async def test_connect_errors_are_retried_on_another_upstream_when_asked(
    start_proxy: StartProxy, whoami: Whoami
) -> None:
    dead = Upstream("127.0.0.1", free_port())
    choices = iter([dead, whoami.upstream])
    seen: list[object] = []
    from podkit.engines.http import UpstreamPool, proxy_handler

    async with UpstreamPool() as pool:
        handler = proxy_handler(pool, lambda request: next(choices), retries=1, observe=seen.append)
        response = await handler(Request("GET", "/", [(b"Host", b"a")]))
        assert response.status == 200
        await response.aclose()
    assert len(seen) == 2
    first = seen[0]
    assert getattr(first, "error", None).__class__ is UpstreamConnectError
    assert getattr(first, "request_sent", True) is False


async def test_hop_by_hop_fields_of_a_response_are_not_passed_to_the_client(
    start_proxy: StartProxy,
) -> None:
    async def chatty(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(
            b"HTTP/1.1 200 OK\r\nConnection: keep-alive, X-Up-Secret\r\nX-Up-Secret: 1\r\n"
            b"Keep-Alive: timeout=5\r\nProxy-Connection: keep-alive\r\nX-Kept: yes\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n"
        )
        await writer.drain()
        writer.close()

    upstream = await asyncio.start_server(chatty, "127.0.0.1", 0)
    try:
        proxy = await start_proxy(
            upstream=Upstream("127.0.0.1", upstream.sockets[0].getsockname()[1])
        )
        reply = await exchange(proxy.port, b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
        assert reply.status == 200
        assert reply.body == b"ok"
        assert reply.header("X-Kept") == "yes"
        for name in ("X-Up-Secret", "Keep-Alive", "Proxy-Connection"):
            assert reply.header(name) is None
        assert reply.header("Connection") is None
    finally:
        upstream.close()
        await upstream.wait_closed()


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
async def test_a_large_upload_streams_through_intact(proxy: Proxy, chunked: bool) -> None:
    payload = bytes(range(256)) * 4096 * 5  # 5 MiB
    client = await Client.connect(proxy.port)
    if chunked:
        head = b"POST /echo HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"
        step = 100_000
        framed = b"".join(
            b"%x\r\n%b\r\n" % (len(payload[i : i + step]), payload[i : i + step])
            for i in range(0, len(payload), step)
        )
        await client.send(head + framed + b"0\r\n\r\n")
    else:
        head = b"POST /echo HTTP/1.1\r\nHost: a\r\nContent-Length: %d\r\n\r\n" % len(payload)
        await client.send(head + payload)
    reply = await client.read_response()
    assert reply.status == 200
    assert reply.body == payload
    await client.close()


async def test_too_many_pipelined_requests_are_answered_503_after_the_others(
    start_proxy: StartProxy,
) -> None:
    from podkit.engines.http import ServerLimits

    proxy = await start_proxy(limits=ServerLimits(max_pipeline=4))
    client = await Client.connect(proxy.port)
    await client.send(b"GET /delay/50 HTTP/1.1\r\nHost: a\r\n\r\n" * 10)
    statuses = [(await client.read_response()).status for _ in range(6)]
    assert statuses == [200, 200, 200, 200, 200, 503]
    assert await client.closed_by_peer()
    await client.close()


async def test_a_client_slower_than_the_response_timeout_still_gets_the_whole_body(
    start_proxy: StartProxy,
) -> None:
    """Back-pressure pauses the upstream; the pause is not upstream silence."""
    bodies: list[Body] = []

    def capture(inner: Handler) -> Handler:
        async def handle(request: Request) -> Response:
            response = await inner(request)
            assert isinstance(response.body, Body)
            bodies.append(response.body)
            return response

        return handle

    proxy = await start_proxy(handler=capture, timeout=0.3, buffer_bytes=64 * 1024)
    client = await Client.connect(proxy.port)
    client.writer.transport.pause_reading()  # type: ignore[attr-defined]
    size = 20_000_000
    await client.send(f"GET /bytes/{size} HTTP/1.1\r\nHost: a\r\n\r\n".encode())
    await asyncio.to_thread(wait_for, lambda: bool(bodies) and bodies[0].producer_paused)
    await asyncio.sleep(1.0)  # three response timeouts pass while the client reads nothing
    client.writer.transport.resume_reading()  # type: ignore[attr-defined]
    reply = await client.read_response()
    assert reply.status == 200
    assert len(reply.body) == size
    await client.close()


@pytest.mark.parametrize("path", ["/status/200", "/bytes/1000000"], ids=["small", "streamed"])
async def test_a_policy_can_tee_the_response_body_while_it_streams(
    start_proxy: StartProxy, path: str
) -> None:
    from collections.abc import AsyncIterator

    from podkit.engines.http import BodyLike, close_body, iter_body

    stored: list[bytes] = []

    async def tee(body: BodyLike) -> AsyncIterator[bytes]:
        parts: list[bytes] = []
        try:
            async for chunk in iter_body(body):
                parts.append(chunk)
                yield chunk
        except BaseException:
            await close_body(body)
            raise
        stored.append(b"".join(parts))

    def caching(inner: Handler) -> Handler:
        async def handle(request: Request) -> Response:
            response = await inner(request)
            response.body = tee(response.body)
            return response

        return handle

    proxy = await start_proxy(handler=caching)
    reply = await exchange(proxy.port, f"GET {path} HTTP/1.1\r\nHost: a\r\n\r\n".encode())
    assert reply.status == 200
    assert stored == [reply.body]
    assert len(reply.body) > 0


async def test_a_client_that_leaves_mid_response_frees_the_upstream_connection(
    proxy: Proxy,
) -> None:
    client = await Client.connect(proxy.port)
    await client.send(b"GET /bytes/100000000 HTTP/1.1\r\nHost: a\r\n\r\n")
    await client.reader.readuntil(b"\r\n\r\n")
    await client.reader.readexactly(100_000)
    await asyncio.to_thread(wait_for, lambda: proxy.pool.statistics().open == 1)
    client.writer.transport.abort()  # type: ignore[attr-defined]
    await asyncio.to_thread(wait_for, lambda: proxy.pool.statistics().open == 0)


_UPSTREAM_HEADS = {
    "plain": b"HTTP/1.1 200 OK\r\nX-A: 1\r\nContent-Length: 2\r\nConnection: keep-alive\r\n\r\n",
    "via": b"HTTP/1.1 200 Fine\r\nVia: 1.1 origin\r\nX-A: 1\r\nContent-Length: 2\r\n\r\n",
    "named": (
        b"HTTP/1.1 201 Created\r\nConnection: X-Secret\r\nX-Secret: 1\r\nX-A: 1\r\n"
        b"Keep-Alive: timeout=5\r\nContent-Length: 2\r\n\r\n"
    ),
}


@pytest.mark.parametrize("variant", sorted(_UPSTREAM_HEADS))
async def test_plain_forwarding_writes_the_head_the_ordinary_path_writes(
    start_proxy: StartProxy, variant: str
) -> None:
    """On a kept-alive upstream connection plain forwarding relays the upstream's fields
    directly; the client sees the same head as through a policy-wrapped proxy."""
    head = _UPSTREAM_HEADS[variant]
    handlers: list[asyncio.Task[object]] = []

    async def keep_answering(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        handlers.append(task)
        with contextlib.suppress(asyncio.IncompleteReadError, ConnectionError):
            for _ in range(10):
                await reader.readuntil(b"\r\n\r\n")
                writer.write(head + b"ok")
                await writer.drain()
        writer.close()

    def wrapped(inner: Handler) -> Handler:
        async def handle(request: Request) -> Response:
            return await inner(request)

        return handle

    upstream = await asyncio.start_server(keep_answering, "127.0.0.1", 0)
    try:
        target = Upstream("127.0.0.1", upstream.sockets[0].getsockname()[1])
        heads = []
        for policy in (None, wrapped):
            proxy = await start_proxy(upstream=target, handler=policy)
            client = await Client.connect(proxy.port)
            try:
                for _ in range(3):  # the first opens the upstream connection, later ones reuse it
                    await client.send(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
                    reply = await client.read_response()
                    assert reply.body == b"ok"
            finally:
                await client.close()
            assert proxy.pool.statistics().reused >= 2
            heads.append(reply.raw_head)
            await proxy.pool.aclose()  # the upstream side sees EOF and its handler ends
        assert heads[0] == heads[1]
        assert b"X-A: 1\r\n" in heads[0]
        assert b"Content-Length: 2\r\n" in heads[0]
        assert b"X-Secret" not in heads[0]
        assert b"Keep-Alive" not in heads[0]
        expected_via = b"1.1 origin, 1.1 podkit" if variant == "via" else b"1.1 podkit"
        assert b"Via: " + expected_via + b"\r\n" in heads[0]
    finally:
        upstream.close()
        await upstream.wait_closed()
        if handlers:
            await asyncio.wait(handlers, timeout=5)
