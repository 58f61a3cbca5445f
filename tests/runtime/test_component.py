"""The runtime serves /healthz, /readyz, /metrics and reload hooks around a component."""

from __future__ import annotations

import asyncio
import http.client

from podkit.runtime import Runtime, RuntimeOptions, serve_component
from podkit.runtime.config import HostPort
from podkit.testing import free_port


def _get(port: int, path: str, method: str = "GET") -> tuple[int, str]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        conn.request(method, path)
        response = conn.getresponse()
        return response.status, response.read().decode()
    finally:
        conn.close()


async def test_admin_endpoint_follows_the_lifecycle() -> None:
    port = free_port()
    options = RuntimeOptions(admin=HostPort("127.0.0.1", port), drain_timeout=2.0)
    rt = Runtime("demo", options)
    seen: list[tuple[int, str]] = []
    reloads: list[int] = []

    async def main(rt: Runtime) -> None:
        rt.on_reload(lambda: reloads.append(1))
        seen.append(await asyncio.to_thread(_get, port, "/readyz"))
        rt.set_ready()
        seen.append(await asyncio.to_thread(_get, port, "/readyz"))
        seen.append(await asyncio.to_thread(_get, port, "/healthz"))
        seen.append(await asyncio.to_thread(_get, port, "/reload", "POST"))
        rt.set_not_ready("warming cache")
        seen.append(await asyncio.to_thread(_get, port, "/readyz"))
        seen.append(await asyncio.to_thread(_get, port, "/metrics"))
        rt.begin_drain()
        seen.append(await asyncio.to_thread(_get, port, "/readyz"))

    code = await serve_component("demo", main, options, runtime=rt)
    assert code == 0
    assert seen[0] == (503, "not ready: starting\n")
    assert seen[1] == (200, "ready\n")
    assert seen[2] == (200, "ok\n")
    assert seen[3][0] == 200
    assert reloads == [1]
    assert seen[4] == (503, "not ready: warming cache\n")
    status, metrics = seen[5]
    assert status == 200
    assert "process_cpu_seconds_total" in metrics
    assert 'podkit_lifecycle_phase{component="demo",phase="not_ready"} 1.0' in metrics
    assert seen[6][0] == 503
    assert "draining" in seen[6][1]


async def test_a_failing_component_exits_with_code_1() -> None:
    async def main(rt: Runtime) -> None:
        raise RuntimeError("boom")

    assert await serve_component("bad", main, RuntimeOptions()) == 1


async def test_a_component_that_ignores_drain_is_stopped_after_the_drain_timeout() -> None:
    stopped = asyncio.Event()

    async def main(rt: Runtime) -> None:
        rt.set_ready()
        rt.begin_drain()
        try:
            await asyncio.Event().wait()
        finally:
            stopped.set()

    code = await asyncio.wait_for(
        serve_component("stubborn", main, RuntimeOptions(drain_timeout=0.2)), 5
    )
    assert code == 0
    assert stopped.is_set()


async def test_extra_admin_routes_are_served() -> None:
    from podkit.runtime.httpserver import Request, Response

    port = free_port()
    options = RuntimeOptions(admin=HostPort("127.0.0.1", port))
    result: list[tuple[int, str]] = []

    async def backends(request: Request) -> Response:
        return Response.json(200, '{"backends": []}')

    async def main(rt: Runtime) -> None:
        rt.add_route("/backends", backends)
        result.append(await asyncio.to_thread(_get, port, "/backends"))
        result.append(await asyncio.to_thread(_get, port, "/nope"))

    await serve_component("routes", main, options)
    assert result == [(200, '{"backends": []}'), (404, "not found\n")]


def test_status_carries_the_phase_and_each_providers_figures() -> None:
    from podkit.runtime.component import Runtime, RuntimeOptions

    rt = Runtime("demo", RuntimeOptions())
    rt.add_status(lambda: {"summary": "backends 2/3 ready", "backends_ready": 2})

    def broken() -> dict[str, int]:
        raise RuntimeError("no figures today")

    rt.add_status(broken)  # logged and left out; the others still show
    rt.set_ready()
    assert rt.status() == {
        "component": "demo",
        "phase": "ready",
        "reason": "ready",
        "summary": "backends 2/3 ready",
        "backends_ready": 2,
    }
