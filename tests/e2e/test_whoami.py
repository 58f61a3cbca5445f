"""``podkit whoami`` as a real process: its routes, its admin endpoint and its drain."""

from __future__ import annotations

import contextlib
import http.client
import json
import signal
import socket
import threading
from collections.abc import Iterator

import pytest

from podkit.testing import PodkitProcess, free_port, wait_http
from podkit.testing.net import wait_for


def request(
    port: int,
    method: str,
    path: str,
    body: bytes | None = None,
    headers: dict[str, str] | None = None,
) -> tuple[int, dict[str, str], bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        response = conn.getresponse()
        return response.status, dict(response.getheaders()), response.read()
    finally:
        conn.close()


@pytest.fixture
def whoami() -> Iterator[tuple[PodkitProcess, int, int]]:
    port, admin = free_port(), free_port()
    with PodkitProcess(
        "whoami", "--listen", f"127.0.0.1:{port}", "--name", "w1", "--admin", f"127.0.0.1:{admin}"
    ) as proc:
        wait_http("127.0.0.1", admin, "/readyz")
        yield proc, port, admin


def test_root_describes_the_request_and_names_the_server(
    whoami: tuple[PodkitProcess, int, int],
) -> None:
    _, port, _ = whoami
    status, headers, body = request(port, "GET", "/hello?x=1", headers={"X-Test": "yes"})
    assert status == 200
    assert headers["X-Served-By"] == "w1"
    info = json.loads(body)
    assert info["name"] == "w1"
    assert info["path"] == "/hello?x=1"
    assert info["headers"]["X-Test"] == "yes"
    assert info["client"].startswith("127.0.0.1:")


def test_status_bytes_echo_and_cache_routes(whoami: tuple[PodkitProcess, int, int]) -> None:
    _, port, _ = whoami
    assert request(port, "GET", "/status/418")[0] == 418
    status, headers, body = request(port, "GET", "/bytes/200000")
    assert status == 200
    assert headers.get("Transfer-Encoding") == "chunked"
    assert len(body) == 200000
    assert request(port, "POST", "/echo", body=b"hello")[2] == b"hello"
    status, headers, body = request(port, "GET", "/cache/30")
    assert headers["Cache-Control"] == "max-age=30"
    first = json.loads(body)["counter"]
    assert json.loads(request(port, "GET", "/cache/30")[2])["counter"] == first + 1
    etag = headers["ETag"]
    assert request(port, "GET", "/cache/30", headers={"If-None-Match": etag})[0] == 304
    assert request(port, "GET", "/status/abc")[0] == 400


def test_sized_route_streams_with_content_length(whoami: tuple[PodkitProcess, int, int]) -> None:
    _, port, _ = whoami
    status, headers, body = request(port, "GET", "/sized/200000")
    assert status == 200
    assert headers["Content-Length"] == "200000"
    assert "Transfer-Encoding" not in headers
    assert len(body) == 200000


@pytest.mark.parametrize("which", ["app", "admin"])
def test_requests_over_the_limits_get_413_and_431_with_plain_reasons(
    whoami: tuple[PodkitProcess, int, int], which: str
) -> None:
    """A body over the limit is 413 and a 100 KB header 431, never a parser callback message."""
    _, port, admin = whoami
    target = port if which == "app" else admin
    status, _, body = request(target, "GET", "/", headers={"X-Big": "h" * 100_000})
    assert (status, body) == (431, b"request header too large\n")
    with socket.create_connection(("127.0.0.1", target), timeout=10) as sock:
        sock.sendall(b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 17000000\r\n\r\n")
        with contextlib.suppress(ConnectionError):
            sock.sendall(b"b" * 17_000_000)
        reply = sock.makefile("rb").read()
    assert reply.startswith(b"HTTP/1.1 413 "), reply[:200]
    assert reply.endswith(b"\r\n\r\nrequest body too large\n")


def test_ready_can_be_switched_off_and_on(whoami: tuple[PodkitProcess, int, int]) -> None:
    _, port, admin = whoami
    assert request(port, "GET", "/ready")[0] == 200
    assert request(port, "POST", "/ready/off")[0] == 200
    assert request(port, "GET", "/ready")[0] == 503
    assert request(admin, "GET", "/readyz")[0] == 503
    assert request(port, "POST", "/ready/on")[0] == 200
    assert request(port, "GET", "/ready")[0] == 200
    stats = json.loads(request(port, "GET", "/stats")[2])
    assert stats["paths"]["/ready"] == 3


def test_metrics_count_requests(whoami: tuple[PodkitProcess, int, int]) -> None:
    _, port, admin = whoami
    request(port, "GET", "/status/503")
    metrics = request(admin, "GET", "/metrics")[2].decode()
    assert 'whoami_requests_total{code="503"} 1.0' in metrics
    assert "process_resident_memory_bytes" in metrics


def test_keep_alive_and_pipelined_requests_are_answered_in_order(
    whoami: tuple[PodkitProcess, int, int],
) -> None:
    _, port, _ = whoami
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(
            b"GET /status/201 HTTP/1.1\r\nHost: x\r\n\r\n"
            b"GET /status/202 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        )
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    assert data.index(b"HTTP/1.1 201") < data.index(b"HTTP/1.1 202")


def test_sigterm_drains_in_flight_requests_and_refuses_new_ones(
    whoami: tuple[PodkitProcess, int, int],
) -> None:
    proc, port, _admin = whoami
    results: list[int] = []
    thread = threading.Thread(target=lambda: results.append(request(port, "GET", "/delay/1000")[0]))
    thread.start()
    wait_for(lambda: _in_flight(port, "/delay/1000"), timeout=5, what="request in flight")
    proc.signal(signal.SIGTERM)
    assert proc.wait(10) == 0
    thread.join(10)
    assert results == [200]
    assert "draining" in proc.output()


def _in_flight(port: int, path: str) -> bool:
    """whoami counts a request when it arrives, before answering it."""
    stats = json.loads(request(port, "GET", "/stats")[2])
    return bool(stats["paths"].get(path))


def test_a_second_sigterm_forces_the_stop() -> None:
    port = free_port()
    with PodkitProcess("whoami", "--listen", f"127.0.0.1:{port}", "--drain-timeout", "1m") as proc:
        wait_http("127.0.0.1", port, "/ready")
        thread = threading.Thread(target=lambda: _quiet_request(port, "/delay/60000"))
        thread.start()
        wait_for(lambda: _in_flight(port, "/delay/60000"), timeout=5, what="request in flight")
        proc.signal(signal.SIGTERM)
        wait_for(lambda: "draining" in proc.output(), timeout=5, what="drain to start")
        proc.signal(signal.SIGTERM)
        assert proc.wait(10) == 0
        assert "second stop signal" in proc.output()
        thread.join(10)


def _quiet_request(port: int, path: str) -> None:
    with contextlib.suppress(OSError):
        request(port, "GET", path)


def test_sighup_reloads_without_stopping(whoami: tuple[PodkitProcess, int, int]) -> None:
    proc, port, _ = whoami
    proc.signal(signal.SIGHUP)
    wait_for(lambda: "reloading" in proc.output(), timeout=5, what="reload")
    assert proc.running()
    assert request(port, "GET", "/")[0] == 200
