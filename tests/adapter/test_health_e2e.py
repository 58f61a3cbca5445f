"""``podkit adapt health`` as a process: probes, a probe storm, and a Redis that goes away."""

from __future__ import annotations

import asyncio
import http.client
import json
import math
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from podkit.testing import PodkitProcess, RedisServer, free_port, wait_http
from podkit.testing.net import wait_for

INTERVAL = 0.5
TIMEOUT = 0.3
STORM_RATE = 1000  # probes per second
STORM_SECONDS = 2.0


def get(port: int, path: str) -> tuple[int, str]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        conn.request("GET", path)
        response = conn.getresponse()
        return response.status, response.read().decode()
    finally:
        conn.close()


def runs(port: int) -> dict[str, int]:
    _, body = get(port, "/checks")
    return {c["name"]: c["runs"] for c in json.loads(body)["checks"]}


@pytest.fixture
def adapter(redis_server: RedisServer, tmp_path: Path) -> Iterator[tuple[int, Path]]:
    port = free_port()
    marker = tmp_path / "ran"
    with PodkitProcess(
        "adapt", "health", "--listen", f"127.0.0.1:{port}",
        "--check", f"cache=redis://127.0.0.1:{redis_server.port}/0",
        "--check", f"marker=cmd:echo x >> {marker}",
        "--check", f"web=tcp://127.0.0.1:{free_port()}",
        "--ready-requires", "cache,marker",
        "--interval", f"{int(INTERVAL * 1000)}ms", "--timeout", f"{int(TIMEOUT * 1000)}ms",
    ) as proc:  # fmt: skip
        try:
            wait_http("127.0.0.1", port, "/readyz", timeout=15)
        except Exception:
            print(proc.output())
            raise
        yield port, marker


def test_probes_answer_like_kubernetes(adapter: tuple[int, Path]) -> None:
    port, _ = adapter
    assert get(port, "/healthz") == (200, "ok\n")
    assert get(port, "/readyz") == (200, "ok\n")
    assert get(port, "/readyz?verbose") == (
        200,
        "[+]cache ok\n[+]marker ok\nreadyz check passed\n",
    )
    assert get(port, "/readyz/cache") == (200, "ok\n")
    status, body = get(port, "/readyz/web")
    assert status == 503
    assert body.startswith("[-]web failed: connection refused")
    assert get(port, "/readyz/nope")[0] == 404
    status, body = get(port, "/checks")
    checks = {c["name"]: c for c in json.loads(body)["checks"]}
    assert checks["cache"]["state"] == "passing"
    assert checks["cache"]["since"].endswith("Z")
    assert checks["web"]["state"] == "failing"
    assert checks["web"]["required"] is False
    assert checks["web"]["last_error"] == "connection refused"
    status, body = get(port, "/metrics")
    assert 'health_check_up{check="cache"} 1.0' in body
    assert "health_ready 1.0" in body


async def _storm(port: int, total: int, seconds: float) -> int:
    """Send ``total`` GET /readyz over 10 keep-alive connections, paced over ``seconds``."""
    connections = 10
    per_tick = 10  # requests per connection per tick, pipelined
    ticks = math.ceil(total / (connections * per_tick))
    tick = seconds / ticks
    answered = 0

    async def one(index: int) -> None:
        nonlocal answered
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        loop = asyncio.get_running_loop()
        start = loop.time()
        for n in range(ticks):
            writer.write(b"GET /readyz HTTP/1.1\r\nHost: a\r\n\r\n" * per_tick)
            data = b""
            while data.count(b"HTTP/1.1 200") < per_tick:
                chunk = await reader.read(65536)
                assert chunk, "the adapter closed the connection"
                data += chunk
            answered += per_tick
            await asyncio.sleep(max(0.0, start + (n + 1) * tick - loop.time()))
        writer.close()

    await asyncio.wait_for(
        asyncio.gather(*(one(i) for i in range(connections))), timeout=seconds * 10
    )
    return answered


def test_a_probe_storm_triggers_no_extra_checks(
    adapter: tuple[int, Path], redis_server: RedisServer
) -> None:
    """2,000 probes in about 2 s run each check only once per interval."""
    port, marker = adapter
    before = runs(port)
    lines_before = marker.read_text().count("x")
    started = time.monotonic()
    answered = asyncio.run(_storm(port, int(STORM_RATE * STORM_SECONDS), STORM_SECONDS))
    elapsed = time.monotonic() - started
    after = runs(port)
    lines_after = marker.read_text().count("x")
    assert answered == int(STORM_RATE * STORM_SECONDS)
    most = math.ceil(elapsed / INTERVAL) + 1  # one run per interval, plus one in flight
    assert after["cache"] - before["cache"] <= most
    assert lines_after - lines_before <= most


def test_stopping_redis_turns_readyz_503_on_the_next_check_and_back(
    adapter: tuple[int, Path], redis_server: RedisServer
) -> None:
    port, _ = adapter
    redis_server.stop()
    at_stop = runs(port)["cache"]
    wait_for(lambda: get(port, "/readyz")[0] == 503, timeout=10, what="/readyz 503")
    # The run that was in flight when redis stopped may still pass; the one after it fails.
    assert runs(port)["cache"] - at_stop <= 2
    status, body = get(port, "/readyz?verbose")
    assert status == 503
    assert "[-]cache failed: connection refused" in body
    assert body.endswith("readyz check failed\n")
    redis_server.start()
    back = runs(port)["cache"]
    wait_for(lambda: get(port, "/readyz")[0] == 200, timeout=10, what="/readyz 200")
    assert runs(port)["cache"] - back <= 2
