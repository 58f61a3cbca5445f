"""Helpers for whole-process tests: whoami backends, a balancer, an HTTP client and a load loop."""

from __future__ import annotations

import http.client
import json
import threading
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest

from podkit.testing import PodkitProcess, free_port, wait_http, wait_port


@dataclass
class Reply:
    status: int
    headers: dict[str, str]
    body: bytes

    @property
    def served_by(self) -> str | None:
        return self.headers.get("x-served-by")

    def json(self) -> Any:
        return json.loads(self.body)


def request(
    port: int,
    path: str = "/",
    *,
    method: str = "GET",
    headers: dict[str, str] | None = None,
    body: bytes | None = None,
    source: str | None = None,
    timeout: float = 10.0,
) -> Reply:
    """One HTTP request on a fresh connection (optionally from a given loopback address)."""
    conn = http.client.HTTPConnection(
        "127.0.0.1", port, timeout=timeout, source_address=(source, 0) if source else None
    )
    try:
        conn.request(method, path, body=body, headers=headers or {})
        response = conn.getresponse()
        data = response.read()
        return Reply(response.status, {k.lower(): v for k, v in response.getheaders()}, data)
    finally:
        conn.close()


class Backend:
    """A ``podkit whoami`` process on a fixed port (so it can be restarted on the same one)."""

    def __init__(self, name: str, port: int | None = None) -> None:
        self.name = name
        self.port = port or free_port()
        self.process: PodkitProcess | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> Backend:
        self.process = PodkitProcess(
            "whoami",
            "--listen",
            f"127.0.0.1:{self.port}",
            "--name",
            self.name,
            "--log-level",
            "warning",
        )
        self.process.start()
        wait_http("127.0.0.1", self.port, "/ready")
        return self

    def kill(self) -> None:
        assert self.process is not None
        self.process.kill()

    def stop(self) -> None:
        if self.process is not None:
            self.process.stop()
            self.process.__exit__(None, None, None)

    def stats(self) -> dict[str, Any]:
        reply = request(self.port, "/stats")
        data: dict[str, Any] = reply.json()
        return data


@pytest.fixture
def backends() -> Iterator[Callable[[int], list[Backend]]]:
    """Start N whoami backends named b0..bN-1; all are stopped at the end."""
    started: list[Backend] = []

    def start(n: int) -> list[Backend]:
        group = [Backend(f"b{len(started) + i}") for i in range(n)]
        for backend in group:
            backend.start()
            started.append(backend)
        return group

    yield start
    for backend in started:
        backend.stop()


class Balancer:
    """A ``podkit balance`` process with its admin endpoint."""

    def __init__(self, *args: str) -> None:
        self.port = free_port()
        self.admin = free_port()
        self.process = PodkitProcess(
            "balance",
            "--listen",
            f"127.0.0.1:{self.port}",
            "--admin",
            f"127.0.0.1:{self.admin}",
            "--log-level",
            "info",
            *args,
        )

    def __enter__(self) -> Balancer:
        self.process.start()
        try:
            wait_port("127.0.0.1", self.admin)
            wait_port("127.0.0.1", self.port)
        except BaseException:
            self.process.__exit__(None, None, None)  # a balancer that never came up is stopped
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.process.__exit__(None, None, None)

    def view(self) -> dict[str, Any]:
        data: dict[str, Any] = request(self.admin, "/backends").json()
        return data

    def states(self) -> dict[str, str]:
        return {b["url"]: b["state"] for b in self.view()["backends"]}

    def get(self, path: str = "/", **kwargs: Any) -> Reply:
        return request(self.port, path, **kwargs)


@pytest.fixture
def balancer() -> Iterator[Callable[..., Balancer]]:
    """Start a balancer with the given flags; stopped at the end."""
    running: list[Balancer] = []

    def start(*args: str) -> Balancer:
        b = Balancer(*args).__enter__()
        running.append(b)
        return b

    yield start
    for b in running:
        b.__exit__()


@dataclass
class Load:
    """Clients sending requests in a loop on kept-alive connections until stopped."""

    port: int
    path: str = "/"
    clients: int = 4
    errors: list[str] = field(default_factory=list)
    served: Counter[str] = field(default_factory=Counter)
    _stop: threading.Event = field(default_factory=threading.Event)
    _threads: list[threading.Thread] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def _run(self) -> None:
        conn: http.client.HTTPConnection | None = None
        while not self._stop.is_set():
            if conn is None:
                conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
            try:
                conn.request("GET", self.path)
                response = conn.getresponse()
                response.read()
                with self._lock:
                    if response.status != 200:
                        self.errors.append(f"status {response.status}")
                    self.served[response.getheader("X-Served-By") or "?"] += 1
            except (OSError, http.client.HTTPException) as exc:
                with self._lock:
                    self.errors.append(repr(exc))
                conn.close()
                conn = None
        if conn is not None:
            conn.close()

    @property
    def total(self) -> int:
        with self._lock:
            return sum(self.served.values())

    def __enter__(self) -> Load:
        for _ in range(self.clients):
            thread = threading.Thread(target=self._run, daemon=True)
            thread.start()
            self._threads.append(thread)
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(15)
