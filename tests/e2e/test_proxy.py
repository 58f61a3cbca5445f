"""``podkit proxy`` as a real process in front of a real ``podkit whoami``."""

from __future__ import annotations

import http.client
import json
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator

import pytest

from podkit.testing import PodkitProcess, free_port, wait_http
from podkit.testing.net import wait_for


@pytest.fixture
def whoami_port() -> Iterator[int]:
    port = free_port()
    with PodkitProcess("whoami", "--listen", f"127.0.0.1:{port}", "--name", "w1"):
        wait_http("127.0.0.1", port, "/ready")
        yield port


def get(port: int, path: str) -> tuple[int, dict[str, str], bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("GET", path)
        response = conn.getresponse()
        return response.status, dict(response.getheaders()), response.read()
    finally:
        conn.close()


def test_proxy_forwards_to_whoami_and_reports_metrics(whoami_port: int) -> None:
    port, admin = free_port(), free_port()
    with PodkitProcess(
        "proxy",
        "--listen",
        f"127.0.0.1:{port}",
        "--upstream",
        f"http://127.0.0.1:{whoami_port}",
        "--admin",
        f"127.0.0.1:{admin}",
    ) as proc:
        wait_http("127.0.0.1", admin, "/readyz")
        status, headers, body = get(port, "/hello")
        assert status == 200, proc.output()
        assert headers["X-Served-By"] == "w1"
        assert json.loads(body)["headers"]["Via"] == "1.1 podkit"
        _, _, metrics = get(admin, "/metrics")
        assert b'podkit_http_responses_total{code="200"} 1.0' in metrics
        assert b"podkit_upstream_requests_total 1.0" in metrics


def test_proxy_answers_502_when_the_upstream_is_down() -> None:
    """The client gets a generic 502; the error log names the upstream and the reason."""
    port, admin, dead = free_port(), free_port(), free_port()
    with PodkitProcess(
        "proxy",
        "--listen",
        f"127.0.0.1:{port}",
        "--upstream",
        f"http://127.0.0.1:{dead}",
        "--admin",
        f"127.0.0.1:{admin}",
    ) as proc:
        wait_http("127.0.0.1", admin, "/readyz")
        status, _, body = get(port, "/")
        assert status == 502
        assert f"{dead}".encode() not in body
        wait_for(lambda: "connect failed" in proc.output())
        line = next(json.loads(x) for x in proc.output().splitlines() if "connect failed" in x)
        assert line["level"] == "warning"
        assert line["upstream"] == f"127.0.0.1:{dead}"
        assert line["status"] == 502


def test_a_bad_upstream_url_is_a_usage_error() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "podkit", "proxy", "--upstream", "ftp://x:1"],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 2
    assert "podkit proxy: error:" in result.stderr
    assert "scheme must be http or https" in result.stderr


def metric(admin: int, line_prefix: bytes) -> float | None:
    _, _, body = get(admin, "/metrics")
    for line in body.splitlines():
        if line.startswith(line_prefix + b" "):
            return float(line.rsplit(b" ", 1)[1])
    return None


def test_workers_share_the_port_and_the_admin_endpoint_merges_their_metrics(
    whoami_port: int,
) -> None:
    port, admin = free_port(), free_port()
    with PodkitProcess(
        "proxy",
        "--listen",
        f"127.0.0.1:{port}",
        "--upstream",
        f"http://127.0.0.1:{whoami_port}",
        "--workers",
        "2",
        "--admin",
        f"127.0.0.1:{admin}",
    ) as proc:
        wait_http("127.0.0.1", admin, "/readyz", timeout=30)
        for _ in range(30):  # new connections: the kernel spreads them over both workers
            status, _, _ = get(port, "/status/200")
            assert status == 200
        wait_for(
            lambda: metric(admin, b'podkit_http_responses_total{code="200"}') == 30.0,
            timeout=10,
            what="merged response count",
        )
        assert metric(admin, b"podkit_upstream_requests_total") == 30.0
        workers = [line for line in proc.output().splitlines() if "worker started" in line]
        assert len(workers) == 2
        proc.signal(signal.SIGTERM)
        assert proc.wait(20) == 0


def test_tcp_mode_forwards_bytes_to_the_upstream(whoami_port: int) -> None:
    port, admin = free_port(), free_port()
    with PodkitProcess(
        "proxy",
        "--mode",
        "tcp",
        "--listen",
        f"127.0.0.1:{port}",
        "--upstream",
        f"127.0.0.1:{whoami_port}",
        "--admin",
        f"127.0.0.1:{admin}",
    ):
        wait_http("127.0.0.1", admin, "/readyz")
        with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
            sock.sendall(b"GET /status/201 HTTP/1.0\r\n\r\n")
            sock.shutdown(socket.SHUT_WR)
            data = b""
            while chunk := sock.recv(65536):
                data += chunk
        assert data.startswith(b"HTTP/1.1 201 ")
        assert b"Via" not in data  # bytes, untouched
        wait_for(
            lambda: (metric(admin, b"podkit_tcp_connections_accepted_total") or 0) == 1.0,
            timeout=10,
            what="tcp metrics",
        )


def test_a_killed_worker_is_started_again(whoami_port: int) -> None:
    port, admin = free_port(), free_port()
    with PodkitProcess(
        "proxy",
        "--listen",
        f"127.0.0.1:{port}",
        "--upstream",
        f"http://127.0.0.1:{whoami_port}",
        "--workers",
        "2",
        "--admin",
        f"127.0.0.1:{admin}",
    ) as proc:
        wait_http("127.0.0.1", admin, "/readyz", timeout=30)

        def started() -> list[int]:
            return [
                int(json.loads(line)["pid"])
                for line in proc.output().splitlines()
                if line.startswith("{") and '"worker started"' in line
            ]

        first = started()
        assert len(first) == 2
        os.kill(first[0], signal.SIGKILL)
        wait_for(lambda: len(started()) == 3, timeout=20, what="the worker to be started again")
        assert "worker exited; starting it again" in proc.output()
        wait_http("127.0.0.1", admin, "/readyz", timeout=30)
        for _ in range(10):
            status, _, _ = get(port, "/status/200")
            assert status == 200
