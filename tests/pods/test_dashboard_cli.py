"""`podkit up` and the dashboard's address: printed, taken from --dashboard, moved off a
default address that is taken, refused when a given one is, and left out with --no-dashboard."""

from __future__ import annotations

import json
import random
import re
import socket
import urllib.request
from pathlib import Path

from podkit.pods.dashboard import DEFAULT_DASHBOARD_PORT
from podkit.testing.net import free_port
from tests.pods.test_detached import detached, whoami, write_pods
from tests.pods.test_supervisor import podkit_cli


def block() -> int:
    return random.randint(100, 250)


def test_up_detached_prints_the_dashboard_and_the_default_moves_off_a_taken_port(
    tmp_path: Path,
) -> None:
    n = block()
    write_pods(tmp_path, {"web": whoami(free_port())}, subnet=f"127.{n}.0.0/16")
    with socket.socket() as taken, detached(tmp_path):
        taken.bind((f"127.{n}.0.1", DEFAULT_DASHBOARD_PORT))
        taken.listen()
        result = podkit_cli(tmp_path, "up", "-d", "pods.yaml")
        assert result.returncode == 0, result.stderr
        match = re.search(r"podkit up: dashboard at (http://\S+/)", result.stdout)
        assert match, result.stdout
        url = match.group(1)
        assert url.startswith(f"http://127.{n}.0.1:")
        assert not url.endswith(f":{DEFAULT_DASHBOARD_PORT}/")
        with urllib.request.urlopen(url + "api/state", timeout=5) as response:
            state = json.loads(response.read())
        assert state["ready_pods"] == ["web"]
        assert [c["pod"] for c in state["containers"]] == ["web"]
        with urllib.request.urlopen(url, timeout=5) as response:
            assert b"<title>podkit dashboard</title>" in response.read()
        status = json.loads(podkit_cli(tmp_path, "status", "--json").stdout)
        assert status["dashboard"] == url
        assert podkit_cli(tmp_path, "down").returncode == 0


def test_a_given_dashboard_address_that_is_taken_is_an_error(tmp_path: Path) -> None:
    n = block()
    write_pods(tmp_path, {"web": whoami(free_port())}, subnet=f"127.{n}.0.0/16")
    with socket.socket() as taken, detached(tmp_path):
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = podkit_cli(tmp_path, "up", "-d", "pods.yaml", "--dashboard", f"127.0.0.1:{port}")
        assert result.returncode == 1
        assert f"cannot listen on 127.0.0.1:{port}: address already in use" in result.stderr


def test_no_dashboard_serves_none_and_bad_addresses_are_usage_errors(tmp_path: Path) -> None:
    n = block()
    write_pods(tmp_path, {"web": whoami(free_port())}, subnet=f"127.{n}.0.0/16")
    with detached(tmp_path):
        result = podkit_cli(tmp_path, "up", "-d", "pods.yaml", "--no-dashboard")
        assert result.returncode == 0, result.stderr
        assert "dashboard" not in result.stdout
        status = json.loads(podkit_cli(tmp_path, "status", "--json").stdout)
        assert status["dashboard"] is None
        assert podkit_cli(tmp_path, "down").returncode == 0
    both = podkit_cli(tmp_path, "up", "pods.yaml", "--no-dashboard", "--dashboard", "127.0.0.1:1")
    assert both.returncode == 2
    assert "--dashboard and --no-dashboard exclude each other" in both.stderr
    bad = podkit_cli(tmp_path, "up", "pods.yaml", "--dashboard", ":8400")
    assert bad.returncode == 2
    assert bad.stderr.startswith("podkit up: error: ")
