"""The balancer's direct path (a body-less request written straight onto an idle kept-alive
backend connection from the server's callbacks): the picker runs once per attempt, outcomes
and in-flight counts stay right, and anything not simple falls back to the ordinary path."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Any

from podkit.engines.http import HTTPServer, Request, Response, Upstream, UpstreamPool
from podkit.serving.balance import BackendSpec
from podkit.serving.balance.app import BalanceOptions, Balancer, open_balancer


class Origin:
    """An in-process backend; ``slow`` makes it answer after ``delay`` seconds, and
    ``/stream`` sends one chunk and holds the rest until ``release`` is set."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.slow = False
        self.delay = 1.0
        self.release = asyncio.Event()
        self.hits = 0

    async def handle(self, request: Request) -> Response:
        self.hits += 1
        if self.slow:
            await asyncio.sleep(self.delay)
        if request.target == "/stream":
            release = self.release

            async def chunks() -> AsyncIterator[bytes]:
                yield b"first "
                await release.wait()
                yield b"last"

            return Response(200, [(b"X-Served-By", self.name.encode())], chunks())
        return Response(200, [(b"X-Served-By", self.name.encode())], self.name.encode())


async def until(condition: Callable[[], bool], timeout: float = 5.0) -> None:
    """Wait (without blocking the loop) until ``condition()`` holds, failing at the deadline."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not condition():
        assert loop.time() < deadline, "condition not reached in time"
        await asyncio.sleep(0.01)


class _PickSpy:
    """Stands in for the pool's picker, recording each pick (the real picker decides)."""

    def __init__(self, picker: Any) -> None:
        self.picker = picker
        self.picked: list[str] = []

    def pick(self, candidates: Any, **kwargs: Any) -> Any:
        endpoint = self.picker.pick(candidates, **kwargs)
        self.picked.append(endpoint.url)
        return endpoint

    def forget(self, url: str) -> None:
        self.picker.forget(url)


def counting_picks(balancer: Balancer) -> list[str]:
    """Record every backend the balancer's picker picks (the real picker still decides)."""
    spy = _PickSpy(balancer.pool.picker)
    balancer.pool.picker = spy
    return spy.picked


def paths(balancer: Balancer) -> tuple[int, int]:
    """(requests the direct path wrote on an idle connection, requests it handed over)."""
    direct = balancer.direct
    assert direct is not None
    return direct.sent, direct.handed_over


async def run(
    names: list[str], body: Callable[[Balancer, list[Origin], Upstream], Any], **options: Any
) -> None:
    origins = [Origin(n) for n in names]
    async with contextlib_stack(origins) as ports:
        specs = tuple(BackendSpec(f"http://127.0.0.1:{p}") for p in ports)
        opts = BalanceOptions(backends=specs, **options)
        async with (
            open_balancer(opts) as balancer,
            HTTPServer(balancer.direct_handler(), host="127.0.0.1", port=0) as front,
        ):
            await body(balancer, origins, Upstream.parse(f"http://127.0.0.1:{front.port}"))


class contextlib_stack:  # noqa: N801 - used as a context manager like contextlib's helpers
    """Serve each origin on its own free port."""

    def __init__(self, origins: list[Origin]) -> None:
        self.origins = origins
        self.servers: list[HTTPServer] = []

    async def __aenter__(self) -> list[int]:
        for origin in self.origins:
            server = HTTPServer(origin.handle, host="127.0.0.1", port=0)
            await server.__aenter__()
            self.servers.append(server)
        return [s.port for s in self.servers]

    async def __aexit__(self, *exc: object) -> None:
        for server in self.servers:
            await server.__aexit__(None, None, None)


async def test_each_request_picks_a_backend_exactly_once_on_both_paths() -> None:
    async def body(balancer: Balancer, origins: list[Origin], front: Upstream) -> None:
        picked = counting_picks(balancer)
        async with UpstreamPool() as client:
            served = []
            for _ in range(12):
                response = await client.send(front, Request("GET", "/"))
                assert response.status == 200
                served.append(await response.read())
        assert len(picked) == 12
        # round-robin alternates, whichever path (first ones connect, later ones reuse)
        assert served == [b"a", b"b"] * 6 or served == [b"b", b"a"] * 6
        # the first two find no idle connection (the ordinary path connects); the other ten
        # are written from the server's callbacks
        assert paths(balancer) == (10, 2)
        assert sum(o.hits for o in origins) == 12
        assert all(e.in_flight == 0 for e in balancer.pool.endpoints)
        assert sum(e.requests for e in balancer.pool.endpoints) == 12

    await run(["a", "b"], body)


async def test_a_streamed_body_keeps_its_backend_in_flight_until_it_ends() -> None:
    async def body(balancer: Balancer, origins: list[Origin], front: Upstream) -> None:
        endpoint = balancer.pool.endpoints[0]
        async with UpstreamPool() as client:
            warm = await client.send(front, Request("GET", "/"))
            assert await warm.read() == b"a"
            response = await client.send(front, Request("GET", "/stream"))
            assert response.status == 200
            await until(lambda: endpoint.in_flight == 1)
            origins[0].release.set()
            assert await response.read() == b"first last"
            await until(lambda: endpoint.in_flight == 0)
        assert balancer.upstreams.statistics().reused > 0

    await run(["a"], body)


async def test_a_failed_direct_attempt_is_reported_and_retried_on_another_backend() -> None:
    async def body(balancer: Balancer, origins: list[Origin], front: Upstream) -> None:
        a, b = balancer.pool.endpoints
        async with UpstreamPool() as client:
            for _ in range(2):  # an idle kept-alive connection to each backend
                warm = await client.send(front, Request("GET", "/"))
                await warm.read()
            picked = counting_picks(balancer)
            before = paths(balancer)
            origins[0].slow = True  # "a" answers after the balancer's timeout
            for _ in range(2):  # round-robin sends one of these to "a" first
                response = await client.send(front, Request("GET", "/"))
                assert response.status == 200
                assert await response.read() == b"b"
        assert len(picked) == 3
        assert picked.count(a.url) == 1
        assert a.errors == 1
        assert b.errors == 0
        assert a.in_flight == 0
        assert b.in_flight == 0
        sent, handed_over = paths(balancer)
        # both first attempts went direct; the retry did not
        assert (sent - before[0], handed_over - before[1]) == (2, 0)

    await run(["a", "b"], body, timeout=0.3)


async def test_without_a_ready_backend_the_answer_is_503_without_a_pick() -> None:
    async def body(balancer: Balancer, origins: list[Origin], front: Upstream) -> None:
        for endpoint in balancer.pool.endpoints:
            balancer.drain_backend(endpoint.url)
        picked = counting_picks(balancer)
        async with UpstreamPool() as client:
            response = await client.send(front, Request("GET", "/"))
            assert response.status == 503
            assert await response.read() == b"no ready backend\n"
        assert picked == []  # nothing to pick from: no picker call, no retry loop
        assert balancer.m_unavailable._value.get() == 1

    await run(["a"], body)


async def test_a_direct_exchange_leaves_no_reference_cycle_behind() -> None:
    """Each exchange is freed by reference counting: a cycle per request would make the
    garbage collector run every few hundred requests under load."""
    import gc

    from podkit.engines.http.server import _DirectExchange
    from podkit.serving.balance._direct import DirectAttempt

    async def body(balancer: Balancer, origins: list[Origin], front: Upstream) -> None:
        async with UpstreamPool() as client:
            for _ in range(3):  # connect, then reuse
                await (await client.send(front, Request("GET", "/"))).read()
            gc.collect()
            gc.set_debug(gc.DEBUG_SAVEALL)
            try:
                for _ in range(20):
                    await (await client.send(front, Request("GET", "/"))).read()
                gc.collect()
                cyclic = [o for o in gc.garbage if isinstance(o, _DirectExchange | DirectAttempt)]
            finally:
                gc.set_debug(0)
                gc.garbage.clear()
        assert paths(balancer)[0] >= 20  # the direct path was taken
        assert cyclic == []

    await run(["a"], body)
