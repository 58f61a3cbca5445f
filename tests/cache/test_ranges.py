"""Byte ranges: parsing ``Range``, answering it from stored bytes, combining partial responses."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from podkit.serving.cache import CachePolicy, ObjectStore, cache_key, format_http_date
from podkit.serving.cache._ranges import combine, multipart_byteranges, parse_range, resolve

NOW = 1_700_000_000.0
K = cache_key("example.com", "/file")
BODY = b"0123456789"


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("bytes=0-1", [(0, 1)]),
        ("bytes=1-", [(1, None)]),
        ("bytes=-5", [(None, 5)]),
        ("Bytes = 0-1, 4-5,", [(0, 1), (4, 5)]),
        ("bytes=5-1", None),
        ("bytes=-", None),
        ("bytes=a-b", None),
        ("items=0-1", None),
        ("bytes=", None),
        (None, None),
        ("bytes=" + ",".join(["0-0"] * 17), None),
    ],
)
def test_range_fields_parse_or_are_ignored(
    value: str | None, expected: list[tuple[int | None, int | None]] | None
) -> None:
    assert parse_range(value) == expected


def test_ranges_resolve_against_the_length() -> None:
    assert resolve([(0, 1)], 10) == [(0, 1)]
    assert resolve([(4, 100)], 10) == [(4, 9)]
    assert resolve([(None, 3)], 10) == [(7, 9)]
    assert resolve([(None, 30)], 10) == [(0, 9)]
    assert resolve([(10, None), (None, 0)], 10) == []
    assert resolve([(10, None), (2, 2)], 10) == [(2, 2)]


_SPEC = st.one_of(
    st.tuples(st.integers(0, 50), st.none()),
    st.tuples(st.none(), st.integers(0, 50)),
    st.tuples(st.integers(0, 50), st.integers(0, 50)).map(lambda t: (min(t), max(t))),
)


@given(st.lists(_SPEC, min_size=1, max_size=5), st.integers(0, 40))
def test_resolved_ranges_lie_inside_the_representation(
    specs: list[tuple[int | None, int | None]], length: int
) -> None:
    text = "bytes=" + ", ".join(
        f"{'' if a is None else a}-{'' if b is None else b}" for a, b in specs
    )
    assert parse_range(text) == specs
    for first, last in resolve(specs, length):
        assert 0 <= first <= last < length


@given(st.text(max_size=30))
def test_range_parsing_never_raises(text: str) -> None:
    parsed = parse_range(text)
    assert parsed is None or len(parsed) >= 1


@given(st.integers(0, 20), st.integers(0, 20), st.integers(0, 20), st.integers(0, 20))
def test_combining_pieces_keeps_every_byte_where_it_was(a: int, b: int, c: int, d: int) -> None:
    data = bytes(range(41))
    (a1, a2), (b1, b2) = sorted((a, b)), sorted((c + 10, d + 10))
    merged = combine((a1, a2, data[a1 : a2 + 1]), (b1, b2, data[b1 : b2 + 1]))
    if b1 > a2 + 1 or a1 > b2 + 1:
        assert merged is None
    else:
        assert merged == (min(a1, b1), max(a2, b2), data[min(a1, b1) : max(a2, b2) + 1])


def test_multipart_bodies_carry_each_range_with_its_content_range() -> None:
    body = multipart_byteranges(
        BODY, [(0, 1), (8, 9)], length=10, content_type="text/plain", boundary="XyZ"
    )
    assert body == (
        b"--XyZ\r\nContent-Type: text/plain\r\nContent-Range: bytes 0-1/10\r\n\r\n01\r\n"
        b"--XyZ\r\nContent-Type: text/plain\r\nContent-Range: bytes 8-9/10\r\n\r\n89\r\n"
        b"--XyZ--\r\n"
    )


def _keep(policy: CachePolicy, status: int, headers: list[tuple[str, str]], body: bytes) -> None:
    entry = policy.make_entry(
        K,
        [],
        status,
        [("Date", format_http_date(NOW)), ("Cache-Control", "max-age=60"), *headers],
        body,
        request_time=NOW,
        response_time=NOW,
    )
    policy.keep(policy.combined(entry))


def test_a_complete_response_answers_ranges_and_416() -> None:
    policy = CachePolicy(ObjectStore())
    _keep(policy, 200, [("ETag", '"v"'), ("Content-Type", "text/plain")], BODY)
    entry = policy.store.lookup(K, [])
    assert entry is not None

    def answer(*headers: tuple[str, str]) -> tuple[int, bytes, str | None] | None:
        ranged = policy.range_answer(entry, list(headers), boundary="b")
        if ranged is None:
            return None
        return ranged.status, ranged.body, dict(ranged.headers).get("Content-Range")

    assert answer(("Range", "bytes=0-1")) == (206, b"01", "bytes 0-1/10")
    assert answer(("Range", "bytes=-3")) == (206, b"789", "bytes 7-9/10")
    assert answer(("Range", "bytes=20-")) == (416, b"", "bytes */10")
    assert answer(("Range", "bytes=0-1"), ("If-Range", '"v"')) == (206, b"01", "bytes 0-1/10")
    assert answer(("Range", "bytes=0-1"), ("If-Range", '"w"')) is None
    assert answer(("Range", "bytes=0-1"), ("If-Range", 'W/"v"')) is None
    assert answer(("Range", "lines=1")) is None
    several = policy.range_answer(entry, [("Range", "bytes=0-0,-1")], boundary="b")
    assert several is not None
    assert dict(several.headers)["Content-Type"] == "multipart/byteranges; boundary=b"


def test_partial_responses_answer_the_ranges_they_hold_and_combine_into_a_whole() -> None:
    policy = CachePolicy(ObjectStore())
    etag = ("ETag", '"v"')
    _keep(policy, 206, [etag, ("Content-Range", "bytes 4-9/10")], BODY[4:])
    assert policy.store.lookup(K, []) is None
    held = policy.lookup_partial(K, [], [(6, 8)], NOW + 1)
    assert held.kind.value == "hit"
    assert held.entry is not None
    ranged = policy.range_answer(held.entry, [("Range", "bytes=6-8")], boundary="b")
    assert ranged is not None
    assert (ranged.status, ranged.body) == (206, b"678")
    assert policy.lookup_partial(K, [], [(0, 8)], NOW + 1).kind.value == "miss"
    _keep(policy, 206, [etag, ("Content-Range", "bytes 0-4/10")], BODY[:5])
    whole = policy.store.lookup(K, [])
    assert whole is not None
    assert (whole.status, whole.body) == (200, BODY)
    assert "content-range" not in {n.lower() for n, _ in whole.headers}


def test_partial_responses_without_a_shared_strong_etag_are_not_combined() -> None:
    policy = CachePolicy(ObjectStore())
    _keep(policy, 206, [("ETag", 'W/"v"'), ("Content-Range", "bytes 4-9/10")], BODY[4:])
    _keep(policy, 206, [("ETag", 'W/"v"'), ("Content-Range", "bytes 0-4/10")], BODY[:5])
    assert policy.store.lookup(K, []) is None
    partial = policy.store.lookup(K, [], partial=True)
    assert partial is not None
    assert partial.body == BODY[:5]  # the newer part replaced the older


def test_a_206_whose_body_is_not_its_range_is_not_kept() -> None:
    policy = CachePolicy(ObjectStore())
    _keep(policy, 206, [("Content-Range", "bytes 4-9/10")], b"short")
    assert len(policy.store) == 0


def test_a_part_is_sliced_only_for_ranges_it_holds() -> None:
    policy = CachePolicy(ObjectStore())
    _keep(policy, 206, [("Content-Range", "bytes 4-9/10")], BODY[4:])
    part = policy.store.lookup(K, [], partial=True)
    assert part is not None
    assert policy.range_answer(part, [("Range", "bytes=0-5")], boundary="b") is None
    inside = policy.range_answer(part, [("Range", "bytes=5-5")], boundary="b")
    assert inside is not None
    assert inside.body == b"5"
