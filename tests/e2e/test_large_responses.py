"""Large responses never poison the upstream keep-alive pool, in every HTTP component.

A response bigger than the engine's buffer pauses the upstream connection's reading while the
client catches up; that connection must be read again before it serves the next request. Each
component runs as a real process in front of a real ``podkit whoami``.
"""

from __future__ import annotations

import http.client
import socket
import ssl
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import pytest

from podkit.testing import PodkitProcess, free_port, wait_http, wait_port
from tests.sidecar.pki import TestCA

BIG = 2_000_000
# Far below the components' --timeout: a pooled connection that is not read makes a request
# wait for the whole timeout and then fail, which these tests must see as a failure.
CLIENT_TIMEOUT = 10.0
UPSTREAM_TIMEOUT = "30s"


@dataclass
class Front:
    """A component listening on ``port``; ``connect()`` opens a client connection to it."""

    port: int
    connect: Callable[[], http.client.HTTPConnection]
    tls: bool = False


@pytest.fixture(scope="module")
def whoami() -> Iterator[int]:
    port = free_port()
    with PodkitProcess("whoami", "--listen", f"127.0.0.1:{port}", "--log-level", "warning"):
        wait_http("127.0.0.1", port, "/ready")
        yield port


@pytest.fixture(scope="module", params=["proxy", "balance", "cache", "tls"])
def front(
    request: pytest.FixtureRequest, whoami: int, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Front]:
    """Each HTTP component in front of whoami, with an upstream timeout of 30 s."""
    kind: str = request.param
    port = free_port()
    upstream = f"http://127.0.0.1:{whoami}"
    common = ("--listen", f"127.0.0.1:{port}", "--log-level", "warning")
    timeout = ("--timeout", UPSTREAM_TIMEOUT)

    def plain() -> http.client.HTTPConnection:
        return http.client.HTTPConnection("127.0.0.1", port, timeout=CLIENT_TIMEOUT)

    connect = plain
    if kind == "proxy":
        argv = ("proxy", *common, "--upstream", upstream, *timeout)
    elif kind == "balance":
        argv = ("balance", *common, "--backend", upstream, *timeout)
    elif kind == "cache":
        # --max-object below BIG: every large response is a miss streamed through the pool.
        argv = ("cache", *common, "--upstream", upstream, "--max-object", "64KiB", *timeout)
    else:
        ca = TestCA(tmp_path_factory.mktemp("pki"))
        pair = ca.issue("server", common_name="localhost", dns=("localhost",))
        argv = (
            "tls", *common, "--cert", str(pair.cert), "--key", str(pair.key),
            "--upstream", upstream, *timeout,
        )  # fmt: skip
        context = ssl.create_default_context(cafile=str(ca.path))

        def secure() -> http.client.HTTPConnection:
            conn = http.client.HTTPSConnection(
                "localhost", port, context=context, timeout=CLIENT_TIMEOUT
            )
            conn.sock = context.wrap_socket(
                socket.create_connection(("127.0.0.1", port), timeout=CLIENT_TIMEOUT),
                server_hostname="localhost",
            )
            return conn

        connect = secure
    with PodkitProcess(*argv) as proc:
        wait_port("127.0.0.1", port)
        if kind == "balance":
            wait_http("127.0.0.1", port, "/ready")
        front = Front(port, connect, tls=kind == "tls")
        yield front
        assert proc.running(), proc.output()


def fetch(conn: http.client.HTTPConnection, path: str) -> tuple[int, int]:
    """GET ``path`` on ``conn``: the status and the number of body bytes."""
    conn.request("GET", path)
    response = conn.getresponse()
    return response.status, len(response.read())


def fetch_new(front: Front, path: str) -> tuple[int, int]:
    conn = front.connect()
    try:
        return fetch(conn, path)
    finally:
        conn.close()


@pytest.mark.parametrize("route", ["bytes", "sized"])
def test_sequential_large_downloads_on_one_connection_all_succeed(front: Front, route: str) -> None:
    """50 downloads of 2 MB in a row on one keep-alive connection, chunked or sized, all 200."""
    conn = front.connect()
    try:
        for _ in range(50):
            assert fetch(conn, f"/{route}/{BIG}") == (200, BIG)
        assert fetch(conn, "/")[0] == 200
    finally:
        conn.close()


@pytest.mark.parametrize("route", ["bytes", "sized"])
def test_sequential_large_downloads_on_new_connections_all_succeed(
    front: Front, route: str
) -> None:
    """50 downloads of 2 MB, each on a new client connection, all 200 with the whole body."""
    for _ in range(50):
        assert fetch_new(front, f"/{route}/{BIG}") == (200, BIG)


@pytest.mark.parametrize("route", ["bytes", "sized"])
def test_small_requests_after_concurrent_large_downloads_are_answered(
    front: Front, route: str
) -> None:
    """20 concurrent 2 MB downloads, then 20 small requests from other clients: all answered."""
    with ThreadPoolExecutor(max_workers=20) as pool:
        big = list(pool.map(lambda _: fetch_new(front, f"/{route}/{BIG}"), range(20)))
        assert big == [(200, BIG)] * 20
        small = list(pool.map(lambda _: fetch_new(front, "/")[0], range(20)))
        assert small == [200] * 20


def test_a_large_echoed_upload_leaves_the_connection_usable(front: Front) -> None:
    """A 500 KB POST echoed back, then ordinary requests on the same and on new connections."""
    payload = b"p" * 500_000
    conn = front.connect()
    try:
        for _ in range(5):
            conn.request("POST", "/echo", body=payload)
            response = conn.getresponse()
            assert (response.status, response.read()) == (200, payload)
            assert fetch(conn, "/")[0] == 200
            assert fetch_new(front, "/")[0] == 200
    finally:
        conn.close()


def test_expect_continue_uploads_are_not_held_up(front: Front) -> None:
    """``Expect: 100-continue`` uploads of 500 KB, each followed by a small request."""
    if front.tls:
        pytest.skip("a plain-socket exchange; TLS is covered by the other tests")
    payload = b"e" * 500_000
    for _ in range(5):
        sock = socket.create_connection(("127.0.0.1", front.port), timeout=CLIENT_TIMEOUT)
        try:
            sock.sendall(
                b"POST /echo HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\n"
                b"Content-Length: %d\r\n\r\n" % len(payload)
            )
            interim = sock.recv(65536)
            assert interim.startswith(b"HTTP/1.1 100"), interim
            sock.sendall(payload)
            reader = sock.makefile("rb")
            status = reader.readline()
            assert status.startswith(b"HTTP/1.1 200"), status
        finally:
            sock.close()
        assert fetch_new(front, "/")[0] == 200
