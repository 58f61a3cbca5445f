"""``podkit cache`` against a scripted origin on loopback, one RFC 9111 / 9110 / 9213 rule per
test: what is stored, for how long, and what a reuse sends."""

from __future__ import annotations

import time

from podkit.serving.cache import format_http_date
from tests.cache.conftest import Answer, ScriptedOrigin, StartCache

INVALID_EXPIRES = [
    "Thu, 18 Aug 2050 02:01:18 UTC",
    "Thu, 18 Aug 2050 02:01:18 AEST",
    "Thu, 18 Aug 50 02:01:18 GMT",
    "Thu 18 Aug 2050 02:01:18 GMT",
    "Thu, 18  Aug  2050 02:01:18 GMT",
    "Thu, 18-Aug-2050 02:01:18 GMT",
    "Thu, 18 Aug 2050 02.01.18 GMT",
    "0",
]


def _now() -> str:
    return format_http_date(time.time())


def _twice(c: object, path: str, **kwargs: object) -> tuple[str, str]:
    first = c.get(path, **kwargs)  # type: ignore[attr-defined]
    second = c.get(path, **kwargs)  # type: ignore[attr-defined]
    return first.headers["x-cache"], second.headers["x-cache"]


def test_an_invalid_expires_is_already_expired(origin: ScriptedOrigin, cache: StartCache) -> None:
    for i, value in enumerate(INVALID_EXPIRES):
        origin.answers[f"/e{i}"] = Answer(headers=[("Expires", value), ("Date", _now())])
    origin.answers["/valid"] = Answer(
        headers=[("Expires", "Thu, 18 Aug 2050 02:01:18 GMT"), ("Date", _now())]
    )
    future = format_http_date(time.time() + 3600)
    origin.answers["/two"] = Answer(
        headers=[("Expires", future), ("Expires", future), ("Date", _now())]
    )
    c = cache(origin.url)
    assert _twice(c, "/valid") == ("MISS", "HIT")
    for i in range(len(INVALID_EXPIRES)):
        assert _twice(c, f"/e{i}") == ("MISS", "MISS"), INVALID_EXPIRES[i]
        assert origin.hits[f"/e{i}"] == 2
    assert _twice(c, "/two") == ("MISS", "MISS")


def test_a_listed_age_counts_by_its_first_member(origin: ScriptedOrigin, cache: StartCache) -> None:
    cc = ("Cache-Control", "max-age=3600")
    origin.answers["/old"] = Answer(headers=[cc, ("Date", _now()), ("Age", "7200, 0")])
    origin.answers["/old2"] = Answer(headers=[cc, ("Date", _now()), ("Age", "7200"), ("Age", "0")])
    origin.answers["/young"] = Answer(headers=[cc, ("Date", _now()), ("Age", "0, 7200")])
    origin.answers["/junk"] = Answer(headers=[cc, ("Date", _now()), ("Age", "7200.0")])
    c = cache(origin.url)
    assert _twice(c, "/old") == ("MISS", "MISS")
    assert _twice(c, "/old2") == ("MISS", "MISS")
    assert _twice(c, "/young") == ("MISS", "HIT")
    assert _twice(c, "/junk") == ("MISS", "HIT")  # an invalid Age is ignored


def test_explicit_freshness_makes_any_final_status_storable(
    origin: ScriptedOrigin, cache: StartCache
) -> None:
    statuses = [299, 302, 400, 499, 500, 504, 599]
    for status in statuses:
        origin.answers[f"/s{status}"] = Answer(
            status, [("Cache-Control", "max-age=3600")], f"status {status}\n".encode()
        )
    lm = format_http_date(time.time() - 86400)
    origin.answers["/heuristic"] = Answer(200, [("Last-Modified", lm), ("Date", _now())])
    origin.answers["/no-heuristic"] = Answer(299, [("Last-Modified", lm), ("Date", _now())])
    c = cache(origin.url)
    for status in statuses:
        first, second = c.get(f"/s{status}"), c.get(f"/s{status}")
        assert (second.status, second.body) == (status, f"status {status}\n".encode())
        assert (first.headers["x-cache"], second.headers["x-cache"]) == ("MISS", "HIT")
        assert origin.hits[f"/s{status}"] == 1
    assert _twice(c, "/heuristic") == ("MISS", "HIT")
    assert _twice(c, "/no-heuristic") == ("MISS", "MISS")


def test_must_understand_with_an_understood_status_overrides_no_store(
    origin: ScriptedOrigin, cache: StartCache
) -> None:
    cc = ("Cache-Control", "must-understand, no-store, max-age=3600")
    origin.answers["/known"] = Answer(200, [cc])
    origin.answers["/unknown"] = Answer(299, [cc])
    origin.answers["/plain"] = Answer(200, [("Cache-Control", "no-store, max-age=3600")])
    c = cache(origin.url)
    assert _twice(c, "/known") == ("MISS", "HIT")
    assert _twice(c, "/unknown") == ("MISS", "MISS")
    assert _twice(c, "/plain") == ("MISS", "MISS")


def test_set_cookie_responses_are_stored_only_when_public_and_explicitly_fresh(
    origin: ScriptedOrigin, cache: StartCache
) -> None:
    cookie = ("Set-Cookie", "session=1")
    origin.answers["/public"] = Answer(headers=[cookie, ("Cache-Control", "public, max-age=60")])
    origin.answers["/fresh"] = Answer(headers=[cookie, ("Cache-Control", "max-age=60")])
    c = cache(origin.url)
    assert _twice(c, "/public") == ("MISS", "HIT")
    assert c.get("/public").headers["set-cookie"] == "session=1"
    assert _twice(c, "/fresh") == ("MISS", "MISS")


def test_fields_named_by_a_qualified_no_cache_or_private_are_left_out_of_reuses(
    origin: ScriptedOrigin, cache: StartCache
) -> None:
    origin.answers["/doc"] = Answer(
        headers=[
            ("Cache-Control", 'no-cache="a, b"'),
            ("a", "1"),
            ("b", "2"),
            ("c", "3"),
            ("Cache-Control", 'max-age=3600, private="d"'),
            ("d", "4"),
        ]
    )
    c = cache(origin.url)
    first = c.get("/doc")
    assert (first.headers["a"], first.headers["d"]) == ("1", "4")
    again = c.get("/doc")
    assert again.headers["x-cache"] == "HIT"
    assert again.headers["c"] == "3"
    assert not {"a", "b", "d"} & set(again.headers)
    assert origin.hits["/doc"] == 1


def test_cdn_cache_control_is_obeyed_over_cache_control(
    origin: ScriptedOrigin, cache: StartCache
) -> None:
    origin.answers["/long"] = Answer(
        headers=[("Cache-Control", "no-store"), ("CDN-Cache-Control", "max-age=3600")]
    )
    origin.answers["/short"] = Answer(
        headers=[("Cache-Control", "max-age=3600"), ("CDN-Cache-Control", "max-age=0")]
    )
    origin.answers["/private"] = Answer(
        headers=[("Cache-Control", "max-age=3600"), ("CDN-Cache-Control", "private")]
    )
    origin.answers["/invalid"] = Answer(
        headers=[("Cache-Control", "no-store"), ("CDN-Cache-Control", "max-age=60, &&")]
    )
    c = cache(origin.url)
    assert _twice(c, "/long") == ("MISS", "HIT")
    assert c.get("/long").headers["cdn-cache-control"] == "max-age=3600"  # passed on
    assert _twice(c, "/short") == ("MISS", "MISS")
    assert _twice(c, "/private") == ("MISS", "MISS")
    assert _twice(c, "/invalid") == ("MISS", "MISS")


def test_a_configured_targeted_field_comes_before_cdn_cache_control(
    origin: ScriptedOrigin, cache: StartCache
) -> None:
    origin.answers["/ours"] = Answer(
        headers=[
            ("Cache-Control", "no-store"),
            ("CDN-Cache-Control", "no-store"),
            ("Podkit-Cache-Control", "max-age=3600"),
        ]
    )
    origin.answers["/cdn"] = Answer(
        headers=[("Cache-Control", "no-store"), ("CDN-Cache-Control", "max-age=3600")]
    )
    c = cache(origin.url, "--targeted-cache-control", "Podkit-Cache-Control")
    assert _twice(c, "/ours") == ("MISS", "HIT")
    assert _twice(c, "/cdn") == ("MISS", "HIT")
    plain = cache(origin.url)
    assert _twice(plain, "/ours") == ("MISS", "MISS")
