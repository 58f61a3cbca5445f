"""``--source-address``: the upstream connections of proxy, balance and cache leave from it.

A pod's component connects from its own pod's address, as it would in a cluster, so the next
hop can tell it from any other local client and trust exactly it.
"""

from __future__ import annotations

import json
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest

from podkit.testing import PodkitProcess, free_port, wait_http, wait_port

SOURCE = "127.0.9.9"
BAD = ("--source-address", "pod-1")


@pytest.fixture(scope="module")
def whoami() -> Iterator[int]:
    port = free_port()
    with PodkitProcess("whoami", "--listen", f"127.0.0.1:{port}", "--name", "w1"):
        wait_port("127.0.0.1", port)
        yield port


def get(port: int) -> dict[str, Any]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=5) as response:
        body: dict[str, Any] = json.loads(response.read())
        return body


@pytest.mark.parametrize(
    "args",
    [
        ("proxy", "--upstream", "http://127.0.0.1:{app}"),
        ("proxy", "--mode", "tcp", "--upstream", "127.0.0.1:{app}"),
        ("cache", "--upstream", "http://127.0.0.1:{app}"),
        ("balance", "--backend", "http://127.0.0.1:{app}", "--probe", "/ready"),
    ],
    ids=["proxy", "proxy-tcp", "cache", "balance"],
)
def test_the_upstream_sees_connections_from_the_source_address(
    whoami: int, args: tuple[str, ...]
) -> None:
    port = free_port()
    argv = [a.format(app=whoami) for a in args]
    with PodkitProcess(*argv, "--listen", f"127.0.0.1:{port}", "--source-address", SOURCE):
        wait_http("127.0.0.1", port, "/", timeout=20)
        assert get(port)["client"].startswith(f"{SOURCE}:")


def test_a_source_address_that_is_not_an_address_is_a_usage_error() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "podkit", "proxy", "--upstream", "http://127.0.0.1:1", *BAD],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 2
    assert result.stderr == (
        "podkit proxy: error: --source-address: expected an IP address such as 127.0.1.1, "
        "got 'pod-1'\n"
    )
