"""Loopback helpers: free ports and waits with deadlines (never fixed sleeps)."""

from __future__ import annotations

import http.client
import socket
import time
from collections.abc import Callable

from podkit.errors import PodkitTimeout

_POLL = 0.02


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that was free on ``host`` a moment ago (the kernel picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def wait_for(
    predicate: Callable[[], bool], *, timeout: float = 10.0, what: str = "condition"
) -> None:
    """Poll ``predicate`` until it is true.

    Raises:
        PodkitTimeout: it was still false after ``timeout`` seconds.
    """
    deadline = time.monotonic() + timeout
    while True:
        if predicate():
            return
        if time.monotonic() > deadline:
            raise PodkitTimeout(f"timed out after {timeout}s waiting for {what}")
        time.sleep(_POLL)


def _port_open(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


def wait_port(host: str, port: int, *, timeout: float = 10.0) -> None:
    """Wait until a TCP connection to ``host:port`` succeeds."""
    wait_for(lambda: _port_open(host, port), timeout=timeout, what=f"{host}:{port} to accept")


def http_status(host: str, port: int, path: str = "/", *, timeout: float = 2.0) -> int | None:
    """The status of ``GET path``, or None when the server cannot be reached."""
    conn = http.client.HTTPConnection(host, port, timeout=timeout)
    try:
        conn.request("GET", path)
        return conn.getresponse().status
    except OSError:
        return None
    finally:
        conn.close()


def wait_http(
    host: str, port: int, path: str = "/", *, status: int = 200, timeout: float = 10.0
) -> None:
    """Wait until ``GET path`` answers ``status``."""
    wait_for(
        lambda: http_status(host, port, path) == status,
        timeout=timeout,
        what=f"http://{host}:{port}{path} to answer {status}",
    )
