"""``podkit proxy`` as a real process in front of a real ``podkit whoami``."""

from __future__ import annotations

import http.client
import json
import subprocess
import sys
from collections.abc import Iterator

import pytest

from podkit.testing import PodkitProcess, free_port, wait_http


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
    port, admin = free_port(), free_port()
    with PodkitProcess(
        "proxy",
        "--listen",
        f"127.0.0.1:{port}",
        "--upstream",
        f"http://127.0.0.1:{free_port()}",
        "--admin",
        f"127.0.0.1:{admin}",
    ):
        wait_http("127.0.0.1", admin, "/readyz")
        status, _, body = get(port, "/")
        assert status == 502
        assert b"connect failed" in body


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
