"""``podkit cache`` against a scripted origin on loopback, one RFC 9111 / 9110 / 9213 rule per
test: what is stored, for how long, and what a reuse sends."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

from podkit.serving.cache import format_http_date
from podkit.testing.net import wait_for
from tests.cache.conftest import Answer, RawOrigin, ScriptedOrigin, StartCache

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


def test_if_modified_since_on_a_fresh_hit_is_answered_304(
    origin: ScriptedOrigin, cache: StartCache
) -> None:
    modified = format_http_date(time.time() - 3600)
    origin.answers["/lm"] = Answer(
        headers=[("Cache-Control", "max-age=3600"), ("Last-Modified", modified)]
    )
    origin.answers["/date"] = Answer(headers=[("Cache-Control", "max-age=3600"), ("Date", _now())])
    c = cache(origin.url)
    c.get("/lm")
    c.get("/date")
    later = format_http_date(time.time() + 5)
    reply = c.get("/lm", headers={"If-Modified-Since": later})
    assert (reply.status, reply.headers["x-cache"], reply.body) == (304, "HIT", b"")
    assert reply.headers["last-modified"] == modified
    earlier = format_http_date(time.time() - 7200)
    assert c.get("/lm", headers={"If-Modified-Since": earlier}).status == 200
    assert c.get("/date", headers={"If-Modified-Since": later}).status == 304
    assert c.get("/lm", headers={"If-Modified-Since": "not a date"}).status == 200
    assert (origin.hits["/lm"], origin.hits["/date"]) == (1, 1)


def test_a_miss_forwards_the_clients_if_none_match_quoted(
    origin: ScriptedOrigin, cache: StartCache
) -> None:
    origin.answers["/doc"] = Answer(headers=[("Cache-Control", "max-age=3600"), ("ETag", '"v1"')])
    c = cache(origin.url)
    reply = c.get("/doc", headers={"If-None-Match": "v1"})
    assert origin.seen[-1]["if-none-match"] == '"v1"'
    assert (reply.status, reply.headers["x-cache"]) == (304, "MISS")
    assert c.stats()["objects"] == 0  # a 304 is not a response to store
    full = c.get("/doc", headers={"If-None-Match": '"v0"'})
    assert (full.status, full.body) == (200, b"ok\n")
    assert c.get("/doc").headers["x-cache"] == "HIT"  # the full answer was stored
    assert c.get("/doc", headers={"If-None-Match": 'W/"v1"'}).status == 304  # weak comparison
    assert origin.hits["/doc"] == 2


def test_an_unquoted_etag_is_revalidated_with_a_quoted_if_none_match(
    origin: ScriptedOrigin, cache: StartCache
) -> None:
    origin.answers["/doc"] = Answer(headers=[("Cache-Control", "max-age=0"), ("ETag", "abc")])
    c = cache(origin.url)
    c.get("/doc")
    c.get("/doc")
    assert origin.seen[-1]["if-none-match"] == '"abc"'


def test_a_304_updates_the_stored_fields_but_not_the_content_ones(
    origin: ScriptedOrigin, cache: StartCache
) -> None:
    origin.answers["/doc"] = Answer(
        headers=[
            ("Cache-Control", "max-age=0"),
            ("ETag", '"v1"'),
            ("Content-Type", "text/plain"),
            ("Content-Encoding", "identity"),
            ("X-Test", "A"),
        ],
        body=b"stored body\n",
    )
    c = cache(origin.url)
    c.get("/doc")
    origin.answers["/doc"] = Answer(
        304,
        [
            ("Cache-Control", "max-age=3600"),
            ("ETag", '"v1"'),
            ("Content-Type", "application/json"),
            ("Content-Encoding", "gzip"),
            ("X-Test", "B"),
        ],
        b"",
    )
    revalidated = c.get("/doc")
    assert (revalidated.status, revalidated.body) == (200, b"stored body\n")
    for reply in (revalidated, c.get("/doc")):
        assert reply.headers["x-test"] == "B"
        assert reply.headers["content-type"] == "text/plain"
        assert reply.headers["content-encoding"] == "identity"
    assert origin.hits["/doc"] == 2  # the second GET was a fresh hit after the update


def test_a_head_after_a_stale_get_updates_the_stored_fields(
    origin: ScriptedOrigin, cache: StartCache
) -> None:
    modified = ("Last-Modified", format_http_date(time.time() - 3600))
    origin.answers["/doc"] = Answer(
        headers=[("Cache-Control", "max-age=0"), modified, ("Template-A", "1")], body=b"body\n"
    )
    c = cache(origin.url)
    c.get("/doc")
    # The origin ignores If-Modified-Since: the HEAD is answered with a full 200 head.
    origin.answers["/doc"] = Answer(
        headers=[("Cache-Control", "max-age=3600"), modified, ("Template-A", "2")], body=b"body\n"
    )
    head = c.get("/doc", method="HEAD")
    assert origin.seen[-1][":method"] == "HEAD"
    assert (head.status, head.body, head.headers["template-a"]) == (200, b"", "2")
    again = c.get("/doc")
    assert (again.headers["x-cache"], again.headers["template-a"], again.body) == (
        "HIT",
        "2",
        b"body\n",
    )
    assert origin.hits["/doc"] == 2


def test_a_fresh_stored_get_answers_head(origin: ScriptedOrigin, cache: StartCache) -> None:
    origin.answers["/doc"] = Answer(headers=[("Cache-Control", "max-age=3600")], body=b"12345")
    c = cache(origin.url)
    c.get("/doc")
    head = c.get("/doc", method="HEAD")
    assert (head.status, head.body, head.headers["content-length"]) == (200, b"", "5")
    assert head.headers["x-cache"] == "HIT"
    assert origin.hits["/doc"] == 1


def test_accept_language_variants_ignore_case_and_order(
    origin: ScriptedOrigin, cache: StartCache
) -> None:
    origin.answers["/page"] = Answer(
        headers=[("Cache-Control", "max-age=3600"), ("Vary", "Accept-Language")]
    )
    c = cache(origin.url)
    c.get("/page", headers={"Accept-Language": "en, de"})
    again = c.get("/page", headers={"Accept-Language": "DE,en"})
    assert again.headers["x-cache"] == "HIT"
    assert c.get("/page", headers={"Accept-Language": "fr"}).headers["x-cache"] == "MISS"


def test_ranges_are_served_from_a_stored_complete_response(
    origin: ScriptedOrigin, cache: StartCache
) -> None:
    origin.answers["/file"] = Answer(
        headers=[
            ("Cache-Control", "max-age=3600"),
            ("ETag", '"f1"'),
            ("Content-Type", "text/plain"),
        ],
        body=b"01234567890",
    )
    c = cache(origin.url)
    assert c.get("/file").body == b"01234567890"
    for asked, body, content_range in [
        ("bytes=0-1", b"01", "bytes 0-1/11"),
        ("bytes=1-", b"1234567890", "bytes 1-10/11"),
        ("bytes=-1", b"0", "bytes 10-10/11"),
    ]:
        reply = c.get("/file", headers={"Range": asked})
        assert (reply.status, reply.body, reply.headers["x-cache"]) == (206, body, "HIT")
        assert reply.headers["content-range"] == content_range
    several = c.get("/file", headers={"Range": "bytes=0-0, 10-10"})
    assert several.status == 206
    content_type = several.headers["content-type"]
    assert content_type.startswith("multipart/byteranges; boundary=")
    boundary = content_type.split("=", 1)[1]
    assert several.body.count(f"--{boundary}".encode()) == 3
    assert b"Content-Range: bytes 10-10/11\r\n\r\n0\r\n" in several.body
    beyond = c.get("/file", headers={"Range": "bytes=50-"})
    assert (beyond.status, beyond.headers["content-range"]) == (416, "bytes */11")
    changed = c.get("/file", headers={"Range": "bytes=0-1", "If-Range": '"f0"'})
    assert (changed.status, changed.body) == (200, b"01234567890")
    assert origin.hits["/file"] == 1


def test_a_range_miss_is_forwarded_and_its_206_stored_and_combined(
    origin: ScriptedOrigin, cache: StartCache
) -> None:
    fields = [("Cache-Control", "max-age=3600"), ("ETag", '"f1"')]
    origin.answers["/file"] = Answer(206, [*fields, ("Content-Range", "bytes 4-9/10")], b"456789")
    c = cache(origin.url)
    first = c.get("/file", headers={"Range": "bytes=-6"})
    assert origin.seen[-1]["range"] == "bytes=-6"
    assert (first.status, first.body, first.headers["content-range"]) == (
        206,
        b"456789",
        "bytes 4-9/10",
    )
    inside = c.get("/file", headers={"Range": "bytes=6-8"})
    assert (inside.status, inside.body, inside.headers["x-cache"]) == (206, b"678", "HIT")
    assert c.get("/file", headers={"Range": "bytes=-1"}).body == b"9"
    assert origin.hits["/file"] == 1
    # The rest arrives with the same strong ETag: the parts are combined into the whole.
    origin.answers["/file"] = Answer(206, [*fields, ("Content-Range", "bytes 0-4/10")], b"01234")
    assert c.get("/file", headers={"Range": "bytes=0-4"}).body == b"01234"
    assert origin.hits["/file"] == 2
    whole = c.get("/file")
    assert (whole.status, whole.body, whole.headers["x-cache"]) == (200, b"0123456789", "HIT")
    assert "content-range" not in whole.headers
    assert origin.hits["/file"] == 2


def test_a_range_miss_answered_in_full_is_stored_and_sliced(
    origin: ScriptedOrigin, cache: StartCache
) -> None:
    origin.answers["/file"] = Answer(headers=[("Cache-Control", "max-age=3600")], body=b"abcdef")
    c = cache(origin.url)
    reply = c.get("/file", headers={"Range": "bytes=2-3"})
    assert (reply.status, reply.body) == (206, b"cd")
    assert c.get("/file").headers["x-cache"] == "HIT"


def _exchange(port: int, path: str) -> bytes:
    """Send GET ``path`` on a new connection and read until the cache closes it."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as conn:
        conn.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
        chunks = []
        while chunk := conn.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)


def test_interim_responses_reach_the_client_and_are_never_stored(
    raw_origin: RawOrigin, cache: StartCache
) -> None:
    raw_origin.replies["/page"] = (
        b"HTTP/1.1 103 Early Hints\r\nLink: </style.css>; rel=preload; as=style\r\n"
        b"X-My-Header: test\r\n\r\n"
        b"HTTP/1.1 102 Processing\r\n\r\n"
        b"HTTP/1.1 200 OK\r\nCache-Control: max-age=3600\r\nContent-Length: 5\r\n\r\nhello",
        False,
    )
    c = cache(raw_origin.url)
    first = _exchange(c.port, "/page")
    assert first.startswith(
        b"HTTP/1.1 103 Early Hints\r\nLink: </style.css>; rel=preload; as=style\r\n"
        b"X-My-Header: test\r\n\r\nHTTP/1.1 102 Processing\r\n\r\nHTTP/1.1 200 OK\r\n"
    )
    assert first.endswith(b"\r\n\r\nhello")
    again = _exchange(c.port, "/page")
    assert again.startswith(b"HTTP/1.1 200 OK\r\n")
    assert b"X-Cache: HIT" in again
    assert raw_origin.hits["/page"] == 1


def test_an_unknown_transfer_coding_is_refused_and_never_stored(
    raw_origin: RawOrigin, cache: StartCache
) -> None:
    raw_origin.replies["/gz"] = (
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\nCache-Control: max-age=3600\r\n\r\n"
        b"\x1f\x8b whatever follows until the close",
        True,
    )
    raw_origin.replies["/both"] = (
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n"
        b"Cache-Control: max-age=3600\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
        True,
    )
    c = cache(raw_origin.url)
    for path in ("/gz", "/both"):
        for _ in range(2):
            reply = _exchange(c.port, path)
            head, _, body = reply.partition(b"\r\n\r\n")
            assert head.startswith(b"HTTP/1.1 502 "), reply
            assert f"Content-Length: {len(body)}".encode() in head  # whole, not cut
        assert raw_origin.hits[path] == 2
    assert c.stats()["objects"] == 0


def test_bad_targeted_field_names_and_range_limits_are_one_line_errors() -> None:
    for args, message in [
        (["--targeted-cache-control", "Bad Name"], "'Bad Name' is not a targeted field name"),
        (["--targeted-cache-control", "Cache-Control"], "is not a targeted field name"),
        (["--max-ranges", "0"], "--max-ranges"),
    ]:
        done = subprocess.run(
            [sys.executable, "-m", "podkit", "cache", "--upstream", "http://127.0.0.1:1", *args],
            capture_output=True,
            text=True,
            timeout=30,
            stdin=subprocess.DEVNULL,
            check=False,
        )
        assert done.returncode == 2
        lines = done.stderr.strip().splitlines()
        assert len(lines) == 1
        assert lines[0].startswith("podkit cache: error: ")
        assert message in lines[0]


def test_validators_and_ranges_wait_for_a_fetch_already_in_flight(
    origin: ScriptedOrigin, cache: StartCache
) -> None:
    origin.answers["/slow"] = Answer(
        headers=[("Cache-Control", "max-age=3600"), ("ETag", '"s1"')], body=b"0123456789", delay=1
    )
    c = cache(origin.url)
    with ThreadPoolExecutor(max_workers=3) as pool:
        leader = pool.submit(c.get, "/slow")
        wait_for(lambda: c.stats()["coalescing"]["open"] == 1, what="the first fetch to start")
        conditional = pool.submit(c.get, "/slow", headers={"If-None-Match": '"s1"'})
        ranged = pool.submit(c.get, "/slow", headers={"Range": "bytes=2-3"})
        replies = [leader.result(), conditional.result(), ranged.result()]
    assert [(r.status, r.body) for r in replies] == [(200, b"0123456789"), (304, b""), (206, b"23")]
    assert origin.hits["/slow"] == 1
