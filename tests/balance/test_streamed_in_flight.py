"""A request counts against its backend until its response body has streamed, not only until
its head arrived: the pool core with least-request, and the balancer's counted body."""

from __future__ import annotations

import gc
import random

import pytest

from podkit.engines.errors import UpstreamClosed
from podkit.engines.http import Body
from podkit.serving.balance import (
    BackendSpec,
    EndpointPool,
    HealthPolicy,
    LeastRequestPicker,
    Outcome,
)
from podkit.serving.balance._counted import CountedBody


def two_backends() -> EndpointPool:
    pool = EndpointPool(LeastRequestPicker(rng=random.Random(7)), probed=False)
    pool.update([BackendSpec("http://a"), BackendSpec("http://b")], 0.0)
    return pool


def streamed(pool: EndpointPool, url: str) -> tuple[Body, CountedBody]:
    """Begin an attempt on ``url`` whose head arrived and whose body is still streaming."""
    endpoint = pool.get(url)
    assert endpoint is not None
    pool.begin(endpoint)
    source = Body()

    def end(override: Outcome | None) -> None:
        assert endpoint is not None
        pool.end(endpoint, override or Outcome.SUCCESS, 1.0)

    return source, CountedBody(source, end)


def picks(pool: EndpointPool, n: int) -> set[str]:
    chosen = set()
    for _ in range(n):
        endpoint = pool.choose(now=1.0)
        assert endpoint is not None
        chosen.add(endpoint.url)
    return chosen


def in_flight(pool: EndpointPool) -> dict[str, int]:
    return {e.url: e.in_flight for e in pool.endpoints}


def test_least_request_avoids_a_backend_whose_attempt_has_not_ended() -> None:
    pool = two_backends()
    a = pool.get("http://a")
    assert a is not None
    pool.begin(a)
    assert picks(pool, 20) == {"http://b"}
    pool.end(a, Outcome.SUCCESS, 1.0)
    assert picks(pool, 40) == {"http://a", "http://b"}


async def test_a_streaming_body_keeps_its_attempt_in_flight_until_its_last_chunk() -> None:
    pool = two_backends()
    source, body = streamed(pool, "http://a")
    source.feed(b"first")
    assert await body.__anext__() == b"first"
    assert in_flight(pool) == {"http://a": 1, "http://b": 0}
    assert picks(pool, 20) == {"http://b"}
    source.feed(b"last")
    source.finish()
    assert [chunk async for chunk in body] == [b"last"]
    assert in_flight(pool) == {"http://a": 0, "http://b": 0}
    assert body.length is None


async def test_a_body_the_backend_breaks_off_ends_its_attempt_as_a_failure() -> None:
    pool = two_backends()
    source, body = streamed(pool, "http://a")
    source.fail(UpstreamClosed("reset", request_sent=True))
    with pytest.raises(UpstreamClosed):
        await body.__anext__()
    a = pool.get("http://a")
    assert a is not None
    assert (a.in_flight, a.errors) == (0, 1)


async def test_a_body_closed_early_or_dropped_ends_its_attempt_as_abandoned() -> None:
    pool = two_backends()
    source, body = streamed(pool, "http://a")
    source.feed(b"x")
    await body.aclose()
    body.close()  # a second close ends nothing twice
    _, dropped = streamed(pool, "http://b")
    del dropped
    gc.collect()
    assert in_flight(pool) == {"http://a": 0, "http://b": 0}
    assert all(e.errors == 0 for e in pool.endpoints)
    assert [e.requests for e in pool.endpoints] == [1, 1]


def test_health_policy_defaults_do_not_eject_on_abandoned_bodies() -> None:
    """Abandoned attempts say nothing about the backend, however many there are."""
    pool = EndpointPool(
        LeastRequestPicker(rng=random.Random(1)), policy=HealthPolicy(eject_after=1), probed=False
    )
    pool.update([BackendSpec("http://a"), BackendSpec("http://b")], 0.0)
    for _ in range(5):
        _, body = streamed(pool, "http://a")
        body.close()
    assert [e.state.value for e in pool.endpoints] == ["ready", "ready"]
