"""``podkit discover`` keeps a backends file of the addresses a DNS name resolves to."""

from __future__ import annotations

import json
import urllib.request
from pathlib import Path

from podkit.pods.discover import render_backends
from podkit.testing import PodkitProcess
from podkit.testing.net import free_port, wait_for, wait_http


def test_backends_are_sorted_unique_and_ipv6_is_bracketed() -> None:
    text = render_backends(
        "web-headless", 8000, "http", ["10.0.0.9", "10.0.0.10", "::1", "10.0.0.9"]
    )
    lines = text.splitlines()
    assert lines[0].startswith("# podkit discovery: ready addresses of web-headless on port 8000")
    assert lines[1:] == ["http://10.0.0.9:8000", "http://10.0.0.10:8000", "http://[::1]:8000"]


def test_no_address_gives_a_file_with_only_the_comment() -> None:
    assert render_backends("web", 80, "tcp", []).count("\n") == 1


def test_the_file_follows_a_name_that_resolves_and_readiness_waits_for_it(tmp_path: Path) -> None:
    out = tmp_path / "discovery" / "web-8000.txt"
    admin = free_port()
    with PodkitProcess(
        "discover",
        "--dns",
        "localhost",
        "--port",
        "8000",
        "--out",
        str(out),
        "--interval",
        "200ms",
        "--admin",
        f"127.0.0.1:{admin}",
    ):
        wait_http("127.0.0.1", admin, "/readyz")
        wait_for(out.exists, what="the backends file")
        assert "http://127.0.0.1:8000" in out.read_text().splitlines()


def test_a_balancer_follows_the_file_discover_keeps(tmp_path: Path) -> None:
    """The chain `render kubernetes` sets up in a cluster, on loopback: a name resolves to
    the app's address, discover writes it, the balancer sends traffic there."""
    app, lb, lb_admin, discover_admin = free_port(), free_port(), free_port(), free_port()
    out = tmp_path / "web.txt"
    with (
        PodkitProcess("whoami", "--listen", f"127.0.0.1:{app}", "--name", "found"),
        PodkitProcess(
            "discover",
            "--dns",
            "localhost",
            "--port",
            str(app),
            "--out",
            str(out),
            "--interval",
            "200ms",
            "--admin",
            f"127.0.0.1:{discover_admin}",
        ),
    ):
        wait_http("127.0.0.1", discover_admin, "/readyz")
        with PodkitProcess(
            "balance",
            "--listen",
            f"127.0.0.1:{lb}",
            "--backends-file",
            str(out),
            "--probe",
            "/ready",
            "--interval",
            "200ms",
            "--admin",
            f"127.0.0.1:{lb_admin}",
            "--access-log",
            "off",
        ):
            wait_http("127.0.0.1", lb_admin, "/readyz")
            with urllib.request.urlopen(f"http://127.0.0.1:{lb}/", timeout=5) as response:
                assert json.loads(response.read())["name"] == "found"
