"""``podkit cache`` in front of real origins on loopback: ``podkit whoami`` and a scripted one."""

from __future__ import annotations

import http.client
import os
import signal
import socket
import threading
from concurrent.futures import ThreadPoolExecutor
from http.client import HTTPResponse
from pathlib import Path

from podkit.testing.net import wait_for
from tests.balance.conftest import Backend, request
from tests.cache.conftest import Answer, Cache, ScriptedOrigin, StartCache


def test_concurrent_misses_for_one_object_cause_one_origin_request(
    whoami: Backend, cache: StartCache
) -> None:
    c = cache(whoami.url)
    with ThreadPoolExecutor(max_workers=100) as pool:
        replies = list(pool.map(lambda _: c.get("/delay/700"), range(100)))
    assert [r.status for r in replies] == [200] * 100
    assert whoami.stats()["paths"]["/delay/700"] == 1
    assert len({r.body for r in replies}) == 1
    coalescing = c.stats()["coalescing"]
    assert coalescing["leaders"] == 1
    assert coalescing["shared"] == 99


def test_fresh_responses_are_hits_with_an_age(whoami: Backend, cache: StartCache) -> None:
    c = cache(whoami.url)
    first = c.get("/cache/60")
    second = c.get("/cache/60")
    assert first.headers["x-cache"] == "MISS"
    assert second.headers["x-cache"] == "HIT"
    assert second.body == first.body
    assert int(second.headers["age"]) >= 0
    assert whoami.stats()["paths"]["/cache/60"] == 1
    assert c.stats()["hit_ratio"] == 0.5


def test_no_store_responses_are_never_stored(origin: ScriptedOrigin, cache: StartCache) -> None:
    origin.answers["/secret"] = Answer(headers=[("Cache-Control", "no-store, max-age=60")])
    origin.answers["/private"] = Answer(headers=[("Cache-Control", "private, max-age=60")])
    c = cache(origin.url)
    for path in ("/secret", "/private"):
        replies = [c.get(path) for _ in range(3)]
        assert {r.headers["x-cache"] for r in replies} == {"MISS"}
        assert origin.hits[path] == 3
    with ThreadPoolExecutor(max_workers=10) as pool:
        list(pool.map(lambda _: c.get("/secret"), range(10)))
    assert origin.hits["/secret"] == 13
    assert c.stats()["objects"] == 0


def test_vary_separates_variants(whoami: Backend, cache: StartCache) -> None:
    c = cache(whoami.url)
    path = "/cache/60?vary=Accept-Language"
    en = c.get(path, headers={"Accept-Language": "en"})
    fr = c.get(path, headers={"Accept-Language": "fr"})
    assert en.json()["counter"] != fr.json()["counter"]
    en_again = c.get(path, headers={"Accept-Language": "en"})
    fr_again = c.get(path, headers={"Accept-Language": "fr"})
    assert (en_again.headers["x-cache"], fr_again.headers["x-cache"]) == ("HIT", "HIT")
    assert en_again.body == en.body
    assert fr_again.body == fr.body
    assert whoami.stats()["paths"]["/cache/60"] == 2
    assert c.stats()["objects"] == 2


def test_stale_responses_are_revalidated_with_their_etag(
    origin: ScriptedOrigin, cache: StartCache
) -> None:
    origin.answers["/doc"] = Answer(
        headers=[("Cache-Control", "max-age=0"), ("ETag", '"v1"')], body=b"version one\n"
    )
    c = cache(origin.url)
    assert c.get("/doc").headers["x-cache"] == "MISS"
    again = c.get("/doc")
    assert again.body == b"version one\n"
    assert origin.hits["/doc"] == 2
    assert origin.seen[-1].get("if-none-match") == '"v1"'
    assert again.headers["x-cache"] == "HIT"


def test_clients_get_304_when_their_validator_matches(
    origin: ScriptedOrigin, cache: StartCache
) -> None:
    origin.answers["/doc"] = Answer(headers=[("Cache-Control", "max-age=60"), ("ETag", '"v1"')])
    c = cache(origin.url)
    c.get("/doc")
    reply = c.get("/doc", headers={"If-None-Match": '"v1"'})
    assert reply.status == 304
    assert reply.headers["etag"] == '"v1"'
    assert c.get("/doc", headers={"If-None-Match": '"v0"'}).status == 200
    assert origin.hits["/doc"] == 1


def test_stale_while_revalidate_serves_stale_and_refreshes_in_the_background(
    origin: ScriptedOrigin, cache: StartCache
) -> None:
    origin.answers["/feed"] = Answer(
        headers=[("Cache-Control", "max-age=0, stale-while-revalidate=60")], body=b"old\n"
    )
    c = cache(origin.url)
    c.get("/feed")
    origin.answers["/feed"] = Answer(headers=[("Cache-Control", "max-age=60")], body=b"new\n")
    stale = c.get("/feed")
    assert stale.headers["x-cache"] == "STALE"
    assert stale.body == b"old\n"
    wait_for(lambda: origin.hits["/feed"] == 2, what="background revalidation")
    wait_for(lambda: c.get("/feed").body == b"new\n", what="refreshed object")
    assert c.get("/feed").headers["x-cache"] == "HIT"


def test_stale_if_error_serves_stale_when_the_origin_fails(
    origin: ScriptedOrigin, cache: StartCache
) -> None:
    origin.answers["/page"] = Answer(
        headers=[("Cache-Control", "max-age=0, stale-if-error=60")], body=b"saved\n"
    )
    origin.answers["/plain"] = Answer(headers=[("Cache-Control", "max-age=0"), ("ETag", '"p"')])
    c = cache(origin.url)
    c.get("/page")
    c.get("/plain")
    origin.answers["/page"] = Answer(503, [], b"down\n")
    origin.answers["/plain"] = Answer(503, [], b"down\n")
    reply = c.get("/page")
    assert (reply.status, reply.body, reply.headers["x-cache"]) == (200, b"saved\n", "STALE")
    assert c.get("/plain").status == 503


def test_unsafe_methods_and_purge_invalidate(whoami: Backend, cache: StartCache) -> None:
    c = cache(whoami.url)
    c.get("/cache/60")
    assert c.get("/cache/60").headers["x-cache"] == "HIT"
    assert c.get("/cache/60", method="POST", body=b"x").status == 200
    assert c.get("/cache/60").headers["x-cache"] == "MISS"
    assert c.get("/cache/60").headers["x-cache"] == "HIT"
    purged = c.get("/cache/60", method="PURGE")
    assert (purged.status, purged.body) == (200, b"purged 1\n")
    assert c.get("/cache/60", method="PURGE").status == 404
    assert c.get("/cache/60").headers["x-cache"] == "MISS"
    admin = request(c.admin, "/purge?target=/cache/60", method="POST")
    assert admin.json() == {"purged": 1}


def test_purge_is_refused_from_addresses_not_allowed(whoami: Backend, cache: StartCache) -> None:
    c = cache(whoami.url, "--purge-allow", "10.0.0.0/8")
    c.get("/cache/60")
    assert c.get("/cache/60", method="PURGE").status == 403
    assert c.get("/cache/60").headers["x-cache"] == "HIT"


def test_objects_over_max_object_stream_through_uncached(
    origin: ScriptedOrigin, whoami: Backend, cache: StartCache
) -> None:
    origin.answers["/big"] = Answer(headers=[("Cache-Control", "max-age=60")], body=b"b" * 100_000)
    c = cache(origin.url, "--max-object", "64KiB")
    for _ in range(2):
        reply = c.get("/big")
        assert reply.body == b"b" * 100_000
        assert reply.headers["x-cache"] == "MISS"
    assert origin.hits["/big"] == 2
    chunked = cache(whoami.url, "--max-object", "64KiB")
    assert len(chunked.get("/bytes/200000").body) == 200_000
    assert chunked.stats()["objects"] == 0


def test_memory_is_bounded_by_evicting_least_recently_used(
    origin: ScriptedOrigin, cache: StartCache
) -> None:
    for i in range(6):
        origin.answers[f"/o{i}"] = Answer(
            headers=[("Cache-Control", "max-age=60")], body=bytes([65 + i]) * 30_000
        )
    c = cache(origin.url, "--max-size", "100KiB", "--max-object", "40KiB")
    for i in range(6):
        c.get(f"/o{i}")
    stats = c.stats()
    assert stats["bytes"] <= 100 * 1024
    assert stats["evictions"] == 3
    assert c.get("/o5").headers["x-cache"] == "HIT"
    assert c.get("/o0").headers["x-cache"] == "MISS"


def test_waiting_requests_give_up_after_the_coalesce_timeout(
    whoami: Backend, cache: StartCache
) -> None:
    c = cache(whoami.url, "--coalesce-timeout", "200ms")
    with ThreadPoolExecutor(max_workers=4) as pool:
        replies = list(pool.map(lambda _: c.get("/delay/1500"), range(4)))
    assert {r.status for r in replies} == {200}
    assert whoami.stats()["paths"]["/delay/1500"] == 4
    assert c.stats()["coalescing"]["followers"] == 3


def test_head_requests_are_answered_from_the_stored_get(whoami: Backend, cache: StartCache) -> None:
    c = cache(whoami.url)
    body = c.get("/cache/60").body
    head = c.get("/cache/60", method="HEAD")
    assert (head.status, head.body, head.headers["x-cache"]) == (200, b"", "HIT")
    assert head.headers["content-length"] == str(len(body))
    assert whoami.stats()["paths"]["/cache/60"] == 1


def test_concurrent_misses_for_two_variants_cause_one_origin_request_each(
    origin: ScriptedOrigin, cache: StartCache
) -> None:
    origin.answers["/slow"] = Answer(
        headers=[("Cache-Control", "max-age=60"), ("Vary", "Accept-Language")],
        echo="accept-language",
        delay=0.5,
    )
    c = cache(origin.url)
    languages = ["en", "fr"] * 5
    with ThreadPoolExecutor(max_workers=10) as pool:
        replies = list(
            pool.map(lambda lang: c.get("/slow", headers={"Accept-Language": lang}), languages)
        )
    assert [r.body for r in replies] == [
        f"accept-language: {lang}\n".encode() for lang in languages
    ]
    assert origin.hits["/slow"] == 2


def test_waiting_requests_get_the_answer_even_if_the_first_client_leaves(
    whoami: Backend, cache: StartCache
) -> None:
    c = cache(whoami.url)
    with socket.create_connection(("127.0.0.1", c.port)) as leaver:
        host = f"127.0.0.1:{c.port}".encode()  # the Host http.client sends: the same key
        leaver.sendall(b"GET /delay/2500 HTTP/1.1\r\nHost: " + host + b"\r\n\r\n")
        wait_for(lambda: c.stats()["coalescing"]["open"] == 1, what="the first fetch to start")
        with ThreadPoolExecutor(max_workers=5) as pool:
            futures = [pool.submit(c.get, "/delay/2500") for _ in range(5)]
            wait_for(lambda: c.stats()["coalescing"]["followers"] == 5, what="followers waiting")
            leaver.close()
            replies = [f.result() for f in futures]
    assert {r.status for r in replies} == {200}
    assert whoami.stats()["paths"]["/delay/2500"] == 1


def _read_some(port: int, path: str) -> tuple[http.client.HTTPConnection, HTTPResponse, bytes]:
    """Send GET ``path`` and return as soon as some body bytes arrived."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    conn.request("GET", path)
    response = conn.getresponse()
    return conn, response, response.read1(1 << 20)


def test_a_miss_streams_to_the_client_while_the_origin_is_still_sending_and_is_then_stored(
    origin: ScriptedOrigin, cache: StartCache
) -> None:
    gate = threading.Event()
    origin.answers["/slow"] = Answer(
        headers=[("Cache-Control", "max-age=60")], body=b"a" * 1000, rest=b"b" * 300_000, gate=gate
    )
    c = cache(origin.url)
    conn, response, first = _read_some(c.port, "/slow")
    try:
        # The origin is held at the gate: these bytes can only have come through as they passed.
        assert first
        assert set(first) == {ord("a")}
        assert response.getheader("X-Cache") == "MISS"
        assert c.stats()["objects"] == 0
        gate.set()
        body = first + response.read()
    finally:
        conn.close()
    assert body == b"a" * 1000 + b"b" * 300_000
    again = c.get("/slow")
    assert (again.headers["x-cache"], again.body) == ("HIT", body)
    assert origin.hits["/slow"] == 1


def test_an_object_growing_past_max_object_keeps_streaming_and_is_not_stored(
    origin: ScriptedOrigin, cache: StartCache
) -> None:
    gate = threading.Event()
    origin.answers["/grows"] = Answer(
        headers=[("Cache-Control", "max-age=60")], body=b"a" * 1000, rest=b"b" * 100_000, gate=gate
    )
    c = cache(origin.url, "--max-object", "64KiB")
    conn, response, first = _read_some(c.port, "/grows")
    try:
        assert first
        gate.set()
        body = first + response.read()
    finally:
        conn.close()
    assert body == b"a" * 1000 + b"b" * 100_000
    again = c.get("/grows")
    assert (again.headers["x-cache"], again.body) == ("MISS", body)
    assert origin.hits["/grows"] == 2
    assert c.stats()["objects"] == 0


def test_requests_waiting_on_a_streaming_miss_get_the_whole_object_even_if_its_client_leaves(
    origin: ScriptedOrigin, cache: StartCache
) -> None:
    gate = threading.Event()
    origin.answers["/shared"] = Answer(
        headers=[("Cache-Control", "max-age=60")], body=b"a" * 1000, rest=b"b" * 200_000, gate=gate
    )
    c = cache(origin.url, "--coalesce-timeout", "30s")
    conn, _, first = _read_some(c.port, "/shared")
    assert first
    with ThreadPoolExecutor(max_workers=3) as pool:
        futures = [pool.submit(c.get, "/shared") for _ in range(3)]
        wait_for(lambda: c.stats()["coalescing"]["followers"] == 3, what="requests waiting")
        conn.close()  # the first client leaves mid-body; the others still want the object
        gate.set()
        replies = [f.result() for f in futures]
    assert {(r.status, r.headers["x-cache"]) for r in replies} == {(200, "HIT")}
    assert {r.body for r in replies} == {b"a" * 1000 + b"b" * 200_000}
    assert origin.hits["/shared"] == 1


def _children(pid: int) -> set[int]:
    try:
        return {int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()}
    except FileNotFoundError:
        return set()


def test_workers_each_have_a_store_behind_one_admin_endpoint_and_are_restarted(
    whoami: Backend, cache: StartCache
) -> None:
    c = cache(whoami.url, "--workers", "2")
    pid = c.process.pid
    wait_for(lambda: len(_children(pid)) == 2, what="two worker processes")
    wait_for(lambda: request(c.admin, "/readyz").status == 200, what="every worker to report")
    replies = [c.get("/cache/60") for _ in range(20)]
    assert {r.status for r in replies} == {200}
    assert {r.headers["x-cache"] for r in replies} <= {"HIT", "MISS"}
    wait_for(lambda: sum(c.stats()["requests"].values()) == 20, what="the merged counts")
    stats = c.stats()
    misses = stats["requests"]["miss"]
    assert 1 <= misses <= 2  # one per worker store at most
    assert whoami.stats()["paths"]["/cache/60"] == misses
    assert stats["objects"] == misses
    assert stats["hit_ratio"] == round((20 - misses) / 20, 4)
    purged = request(c.admin, "/purge?target=/cache/60", method="POST")
    assert purged.json() == {"purged": misses, "workers": 2}
    assert "podkit_cache_hit_ratio" not in request(c.admin, "/metrics").body.decode()

    victim = min(_children(pid))
    os.kill(victim, signal.SIGKILL)
    wait_for(
        lambda: len(_children(pid)) == 2 and victim not in _children(pid),
        timeout=15,
        what="the killed worker to be started again",
    )
    wait_for(lambda: c.get("/cache/60").status == 200, what="answers after the restart")
    workers = _children(pid)
    c.process.signal(signal.SIGTERM)
    assert c.process.wait(15) == 0
    assert not any(Path(f"/proc/{child}").exists() for child in workers)


def _fill_every_worker(c: Cache, path: str) -> None:
    """GET ``path`` over new connections until both workers' stores hold it."""
    wait_for(
        lambda: c.get(path).status == 200 and c.stats()["objects"] == 2,
        what="both worker stores to hold the object",
    )


def _misses_over_new_connections(c: Cache, path: str, n: int = 40) -> int:
    replies = [c.get(path) for _ in range(n)]  # each on a new connection: both workers serve
    assert {r.status for r in replies} == {200}
    return sum(1 for r in replies if r.headers["x-cache"] == "MISS")


def test_workers_purge_removes_the_object_from_every_worker(
    whoami: Backend, cache: StartCache
) -> None:
    c = cache(whoami.url, "--workers", "2")
    _fill_every_worker(c, "/cache/60")
    fetched = whoami.stats()["paths"]["/cache/60"]

    # A client's PURGE, taken by one worker, reaches the other through the parent.
    purged = c.get("/cache/60", method="PURGE")
    assert (purged.status, purged.body) == (200, b"purged 2\n")
    assert c.stats()["objects"] == 0  # every worker reported before it answered
    assert c.get("/cache/60", method="PURGE").status == 404
    # Each worker misses once and stores the object again; none has the old one to HIT.
    assert _misses_over_new_connections(c, "/cache/60") == 2
    assert whoami.stats()["paths"]["/cache/60"] == fetched + 2
    wait_for(lambda: c.stats()["objects"] == 2, what="both stores to hold it again")

    # The admin purge: one call, every worker, the total removed.
    admin = request(c.admin, "/purge?target=/cache/60", method="POST")
    assert (admin.status, admin.json()) == (200, {"purged": 2, "workers": 2})
    assert c.stats()["objects"] == 0
    assert _misses_over_new_connections(c, "/cache/60") == 2
    assert whoami.stats()["paths"]["/cache/60"] == fetched + 4
    assert request(c.admin, "/purge?target=/cache/60&host=elsewhere", method="POST").json() == {
        "purged": 0,
        "workers": 2,
    }
    assert request(c.admin, "/purge", method="POST").status == 400
    assert request(c.admin, "/purge?target=/cache/60").status == 405


def test_workers_purge_is_refused_from_addresses_not_allowed(
    whoami: Backend, cache: StartCache
) -> None:
    c = cache(whoami.url, "--workers", "2", "--purge-allow", "10.0.0.0/8")
    _fill_every_worker(c, "/cache/60")
    assert c.get("/cache/60", method="PURGE").status == 403
    assert _misses_over_new_connections(c, "/cache/60") == 0


def test_workers_purge_names_a_worker_that_does_not_answer(
    whoami: Backend, cache: StartCache
) -> None:
    c = cache(whoami.url, "--workers", "2", "--workers-timeout", "300ms")
    _fill_every_worker(c, "/cache/60")
    stopped = min(_children(c.process.pid))
    os.kill(stopped, signal.SIGSTOP)
    try:
        reply = request(c.admin, "/purge?target=/cache/60", method="POST")
        assert reply.status == 503
        assert f"(pid {stopped}): no answer within 300ms" in reply.body.decode()
    finally:
        os.kill(stopped, signal.SIGCONT)
    # The late worker still removes it when it gets to the command.
    wait_for(lambda: c.stats()["objects"] == 0, what="the late worker to purge too")
