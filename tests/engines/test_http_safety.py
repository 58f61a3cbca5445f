"""Safety rules of the HTTP engine, each fed whole and one byte at a time through a proxy in
front of a real ``podkit whoami``: ambiguous framing is refused and never forwarded (whoami's
``/stats`` proves it never served the request), and every limit answers its own status."""

from __future__ import annotations

import uuid

import pytest

from podkit.engines.http import ServerLimits

from .conftest import Proxy, StartProxy, Whoami
from .wire import Client, exchange

pytestmark = pytest.mark.asyncio

FEEDS = pytest.mark.parametrize("bytewise", [False, True], ids=["whole", "bytewise"])

SMUGGLED = b"GET /{path}-smuggled HTTP/1.1\r\nHost: a\r\n\r\n"

# name -> (request with {path}, status). Each would let a proxy and an upstream that read the
# framing differently disagree on where a request ends.
AMBIGUOUS: dict[str, tuple[bytes, int]] = {
    "content-length-and-chunked": (
        b"POST /{path} HTTP/1.1\r\nHost: a\r\nContent-Length: 4\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n" + SMUGGLED,
        400,
    ),
    "chunked-and-content-length": (
        b"POST /{path} HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n"
        b"Content-Length: 48\r\n\r\n0\r\n\r\n" + SMUGGLED,
        400,
    ),
    "differing-content-lengths": (
        b"POST /{path} HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\nContent-Length: 44\r\n\r\n"
        + SMUGGLED,
        400,
    ),
    "content-length-list": (
        b"POST /{path} HTTP/1.1\r\nHost: a\r\nContent-Length: 0, 44\r\n\r\n" + SMUGGLED,
        400,
    ),
    "signed-content-length": (
        b"POST /{path} HTTP/1.1\r\nHost: a\r\nContent-Length: +0\r\n\r\n" + SMUGGLED,
        400,
    ),
    "invalid-chunk-size": (
        b"POST /{path} HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"zz\r\nabc\r\n0\r\n\r\n" + SMUGGLED,
        400,
    ),
    "chunk-size-overflow": (
        b"POST /{path} HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"10000000000000000\r\nabc\r\n0\r\n\r\n" + SMUGGLED,
        400,
    ),
    "chunk-data-longer-than-its-size": (
        b"POST /{path} HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"3\r\nabcdef\r\n0\r\n\r\n" + SMUGGLED,
        400,
    ),
    "bare-lf-line-ends": (b"GET /{path} HTTP/1.1\nHost: a\n\n" + SMUGGLED, 400),
    "bare-lf-in-a-field": (
        b"GET /{path} HTTP/1.1\r\nHost: a\nX: y\r\n\r\n" + SMUGGLED,
        400,
    ),
    "obs-fold": (
        b"GET /{path} HTTP/1.1\r\nHost: a\r\nX-Folded: a\r\n b\r\n\r\n" + SMUGGLED,
        400,
    ),
    "space-before-colon": (
        b"POST /{path} HTTP/1.1\r\nHost: a\r\nContent-Length : 44\r\n\r\n" + SMUGGLED,
        400,
    ),
    "unknown-transfer-coding": (
        b"POST /{path} HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: xchunked\r\n\r\n" + SMUGGLED,
        400,
    ),
    "chunked-not-last": (
        b"POST /{path} HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked, gzip\r\n\r\n" + SMUGGLED,
        400,
    ),
    "chunked-twice": (
        b"POST /{path} HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n" + SMUGGLED,
        400,
    ),
    "chunked-in-http10": (
        b"POST /{path} HTTP/1.0\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"0\r\n\r\n" + SMUGGLED,
        400,
    ),
    "two-host-fields": (b"GET /{path} HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n" + SMUGGLED, 400),
    "no-host-in-http11": (b"GET /{path} HTTP/1.1\r\nX: y\r\n\r\n" + SMUGGLED, 400),
    "nul-in-a-field": (b"GET /{path} HTTP/1.1\r\nHost: a\r\nX: a\x00b\r\n\r\n" + SMUGGLED, 400),
    "unsupported-coding-before-chunked": (
        b"POST /{path} HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip, chunked\r\n\r\n"
        b"0\r\n\r\n" + SMUGGLED,
        501,
    ),
    "http2-request-line": (b"GET /{path} HTTP/2.0\r\nHost: a\r\n\r\n" + SMUGGLED, 505),
}


@pytest.mark.parametrize("case", sorted(AMBIGUOUS))
@FEEDS
async def test_ambiguous_requests_are_refused_and_never_reach_the_upstream(
    proxy: Proxy, whoami: Whoami, case: str, bytewise: bool
) -> None:
    template, status = AMBIGUOUS[case]
    path = f"{case}-{uuid.uuid4().hex[:8]}"
    client = await Client.connect(proxy.port)
    await client.send(template.replace(b"{path}", path.encode()), bytewise=bytewise)
    reply = await client.read_response()
    assert reply.status == status
    assert reply.header("Connection") == "close"
    assert await client.closed_by_peer()
    await client.close()
    paths = whoami.stats()["paths"]
    assert f"/{path}" not in paths
    assert f"/{path}-smuggled" not in paths


@pytest.fixture
async def tight(start_proxy: StartProxy) -> Proxy:
    """A proxy with small limits and short timeouts."""
    return await start_proxy(
        limits=ServerLimits(
            max_header_bytes=1024,
            max_header_count=10,
            max_uri_bytes=256,
            max_body_bytes=1000,
            header_timeout=0.3,
            body_timeout=0.3,
            keepalive_timeout=0.3,
            max_connections=3,
        )
    )


LIMITS: dict[str, tuple[bytes, int]] = {
    "header-bytes": (
        b"GET /{path} HTTP/1.1\r\nHost: a\r\nX-Big: " + b"b" * 1100 + b"\r\n\r\n",
        431,
    ),
    "header-count": (
        b"GET /{path} HTTP/1.1\r\nHost: a\r\n"
        + b"".join(b"X-%d: 1\r\n" % i for i in range(11))
        + b"\r\n",
        431,
    ),
    "uri-length": (b"GET /{path}?" + b"q" * 300 + b" HTTP/1.1\r\nHost: a\r\n\r\n", 414),
    "declared-body-size": (
        b"POST /{path} HTTP/1.1\r\nHost: a\r\nContent-Length: 1001\r\n\r\n" + b"x" * 1001,
        413,
    ),
    "head-without-end": (b"GET /{path} HTTP/1.1\r\nHost: a\r\nX-" + b"y" * 2000, 431),
}


@pytest.mark.parametrize("case", sorted(LIMITS))
@FEEDS
async def test_limits_answer_their_status_before_forwarding(
    tight: Proxy, whoami: Whoami, case: str, bytewise: bool
) -> None:
    template, status = LIMITS[case]
    path = f"{case}-{uuid.uuid4().hex[:8]}"
    reply = await exchange(
        tight.port, template.replace(b"{path}", path.encode()), bytewise=bytewise
    )
    assert reply.status == status
    assert f"/{path}" not in whoami.stats()["paths"]


@FEEDS
async def test_a_chunked_body_over_the_limit_is_413_and_not_served(
    tight: Proxy, whoami: Whoami, bytewise: bool
) -> None:
    path = f"big-chunked-{uuid.uuid4().hex[:8]}"
    chunk = b"x" * 600
    request = (
        f"POST /{path} HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n".encode()
        + b"258\r\n"
        + chunk
        + b"\r\n"
        + b"258\r\n"
        + chunk
        + b"\r\n0\r\n\r\n"
    )
    reply = await exchange(tight.port, request, bytewise=bytewise)
    assert reply.status == 413
    assert f"/{path}" not in whoami.stats()["paths"]


async def test_a_slow_request_head_is_answered_408(tight: Proxy) -> None:
    client = await Client.connect(tight.port)
    await client.send(b"GET / HTTP/1.1\r\nHost: a\r\n")
    reply = await client.read_response()
    assert reply.status == 408
    assert await client.closed_by_peer()
    await client.close()
    assert tight.server.statistics().errors["timeout"] == 1


async def test_a_stalled_request_body_is_answered_408_and_not_served(
    tight: Proxy, whoami: Whoami
) -> None:
    path = f"stalled-{uuid.uuid4().hex[:8]}"
    client = await Client.connect(tight.port)
    await client.send(f"POST /{path} HTTP/1.1\r\nHost: a\r\nContent-Length: 10\r\n\r\nabc".encode())
    reply = await client.read_response()
    assert reply.status == 408
    await client.close()
    assert f"/{path}" not in whoami.stats()["paths"]


async def test_an_idle_keep_alive_connection_is_closed(tight: Proxy) -> None:
    client = await Client.connect(tight.port)
    await client.send(b"GET /status/200 HTTP/1.1\r\nHost: a\r\n\r\n")
    assert (await client.read_response()).status == 200
    assert await client.closed_by_peer()
    await client.close()


async def test_connections_beyond_the_limit_are_answered_503(tight: Proxy) -> None:
    held = [await Client.connect(tight.port) for _ in range(3)]
    for client in held:  # make sure each is accepted before the next one counts
        await client.send(b"GET /status/200 HTTP/1.1\r\nHost: a\r\n\r\n")
        assert (await client.read_response()).status == 200
    extra = await Client.connect(tight.port)
    reply = await extra.read_response()
    assert reply.status == 503
    for client in [*held, extra]:
        await client.close()
    assert tight.server.statistics().errors["max_connections"] == 1


async def test_a_refused_request_after_a_good_one_is_answered_in_order(
    proxy: Proxy, whoami: Whoami
) -> None:
    path = f"after-good-{uuid.uuid4().hex[:8]}"
    client = await Client.connect(proxy.port)
    await client.send(
        b"GET /delay/50 HTTP/1.1\r\nHost: a\r\n\r\n"
        + f"POST /{path} HTTP/1.1\r\nHost: a\r\n".encode()
        + b"Content-Length: 1\r\nContent-Length: 2\r\n\r\n"
    )
    first = await client.read_response()
    second = await client.read_response()
    assert first.status == 200
    assert second.status == 400
    await client.close()
    assert f"/{path}" not in whoami.stats()["paths"]


async def test_the_engine_keeps_serving_after_refusals(proxy: Proxy) -> None:
    for _ in range(3):
        bad = await exchange(proxy.port, b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n")
        assert bad.status == 400
    good = await exchange(proxy.port, b"GET /status/200 HTTP/1.1\r\nHost: a\r\n\r\n")
    assert good.status == 200
