"""The sans-IO rules of the HTTP engine, without sockets: framing decisions, header rewriting
and response framing."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from podkit.engines.http.rules import (
    HOP_BY_HOP,
    BodyMode,
    Forwarding,
    add_via,
    check_request_head,
    forwarded_headers,
    forwarded_request_head,
    parse_content_length,
    response_framing,
    response_head,
    strip_hop_by_hop,
)
from podkit.errors import RemoteProtocolError

MAX = 1000


def status_of(method: str, version: str, headers: list[tuple[bytes, bytes]]) -> int:
    try:
        check_request_head(method, version, headers, max_body_bytes=MAX)
    except RemoteProtocolError as exc:
        return exc.status
    return 200


def test_a_plain_get_has_no_body_and_its_host() -> None:
    framing = check_request_head("GET", "1.1", [(b"Host", b"a:1")], max_body_bytes=MAX)
    assert framing.content_length is None
    assert not framing.chunked
    assert framing.host == b"a:1"


def test_content_length_and_chunked_framings_are_recognised() -> None:
    sized = check_request_head(
        "POST", "1.1", [(b"Host", b"a"), (b"content-length", b"12")], max_body_bytes=MAX
    )
    assert sized.content_length == 12
    chunked = check_request_head(
        "POST", "1.1", [(b"Host", b"a"), (b"Transfer-Encoding", b"Chunked")], max_body_bytes=MAX
    )
    assert chunked.chunked


@pytest.mark.parametrize(
    ("headers", "status"),
    [
        ([(b"Content-Length", b"1"), (b"Transfer-Encoding", b"chunked")], 400),
        ([(b"Content-Length", b"1"), (b"Content-Length", b"2")], 400),
        ([(b"Content-Length", b"1, 2")], 400),
        ([(b"Content-Length", b"-1")], 400),
        ([(b"Content-Length", b"")], 400),
        ([(b"Content-Length", b"1e3")], 400),
        ([(b"Transfer-Encoding", b"chunked, chunked")], 400),
        ([(b"Transfer-Encoding", b"identity")], 400),
        ([(b"Transfer-Encoding", b"gzip, chunked")], 501),
        ([(b"Content-Length", b"1001")], 413),
        ([(b"Expect", b"something-else")], 417),
    ],
)
def test_ambiguous_or_unsupported_framing_is_refused(
    headers: list[tuple[bytes, bytes]], status: int
) -> None:
    assert status_of("POST", "1.1", [(b"Host", b"a"), *headers]) == status


def test_identical_duplicate_content_lengths_are_one_length() -> None:
    assert parse_content_length([b"5", b"5, 5"]) == 5


def test_host_rules() -> None:
    assert status_of("GET", "1.1", []) == 400
    assert status_of("GET", "1.0", []) == 200
    assert status_of("GET", "1.1", [(b"Host", b"a"), (b"host", b"a")]) == 400
    assert status_of("GET", "1.1", [(b"Host", b"a b")]) == 400
    assert status_of("GET", "1.1", [(b"Host", b"user@a")]) == 400


def test_chunked_in_http10_connect_and_http2_are_refused() -> None:
    assert status_of("POST", "1.0", [(b"Transfer-Encoding", b"chunked")]) == 400
    assert status_of("CONNECT", "1.1", [(b"Host", b"a:443")]) == 501
    assert status_of("GET", "2.0", [(b"Host", b"a")]) == 505


def test_upgrade_needs_both_fields() -> None:
    both = [(b"Host", b"a"), (b"Connection", b"keep-alive, Upgrade"), (b"Upgrade", b"websocket")]
    assert check_request_head("GET", "1.1", both, max_body_bytes=MAX).upgrade == b"websocket"
    alone = [(b"Host", b"a"), (b"Upgrade", b"websocket")]
    assert check_request_head("GET", "1.1", alone, max_body_bytes=MAX).upgrade is None


@given(st.integers(min_value=0, max_value=10**17), st.integers(min_value=1, max_value=4))
def test_any_repeated_decimal_length_parses_to_itself(length: int, copies: int) -> None:
    assert parse_content_length([str(length).encode()] * copies) == length


@given(st.binary(min_size=1, max_size=20).filter(lambda b: not b.strip(b" \t,").isdigit()))
def test_non_decimal_lengths_are_refused(value: bytes) -> None:
    with pytest.raises(RemoteProtocolError):
        parse_content_length([value])


def test_hop_by_hop_and_connection_named_fields_are_stripped() -> None:
    headers = [
        (b"Host", b"a"),
        (b"Connection", b"close, X-A"),
        (b"X-A", b"1"),
        (b"x-b", b"2"),
        (b"Keep-Alive", b"5"),
        (b"Transfer-Encoding", b"chunked"),
        (b"Content-Length", b"3"),
        (b"Upgrade", b"h2c"),
    ]
    assert strip_hop_by_hop(headers) == [(b"Host", b"a"), (b"x-b", b"2")]


def test_forwarded_headers_replace_forgeries_from_untrusted_clients() -> None:
    out = forwarded_headers(
        [(b"Host", b"h"), (b"X-Forwarded-For", b"1.2.3.4"), (b"Via", b"1.0 x")],
        client_ip="10.0.0.9",
        scheme="https",
        host=b"h",
        http_version="1.1",
        forwarding=Forwarding(),
    )
    assert out == [
        (b"Host", b"h"),
        (b"X-Forwarded-For", b"10.0.0.9"),
        (b"X-Forwarded-Proto", b"https"),
        (b"X-Forwarded-Host", b"h"),
        (b"Via", b"1.0 x, 1.1 podkit"),
    ]


def test_forwarded_headers_extend_a_trusted_chain() -> None:
    policy = Forwarding(trusted_proxies=Forwarding.parse_trusted(["10.0.0.0/8"]), via=None)
    out = forwarded_headers(
        [(b"X-Forwarded-For", b"1.2.3.4"), (b"X-Forwarded-Proto", b"https")],
        client_ip="10.0.0.9",
        scheme="http",
        host=None,
        http_version="1.1",
        forwarding=policy,
    )
    assert (b"X-Forwarded-For", b"1.2.3.4, 10.0.0.9") in out
    assert (b"X-Forwarded-Proto", b"https") in out
    assert not any(name == b"Via" for name, _ in out)


_FIELD_NAMES = st.sampled_from(
    [
        b"Host",
        b"host",
        b"Accept",
        b"X-Forwarded-For",
        b"x-forwarded-proto",
        b"X-Forwarded-Host",
        b"Via",
        b"Connection",
        b"Keep-Alive",
        b"TE",
        b"Content-Length",
        b"X-Custom",
        b"x-custom",
    ]
)
_FIELD_VALUES = st.sampled_from(
    [b"a", b"1.2.3.4", b"https", b"keep-alive", b"close", b"x-custom", b"Keep-Alive, TE", b""]
)


@given(
    headers=st.lists(st.tuples(_FIELD_NAMES, _FIELD_VALUES), max_size=8),
    trusted=st.booleans(),
    via=st.sampled_from(["podkit", None]),
    toggles=st.tuples(st.booleans(), st.booleans(), st.booleans()),
    version=st.sampled_from(["1.1", "1.0"]),
)
def test_the_one_pass_request_head_says_what_the_general_rules_say(
    headers: list[tuple[bytes, bytes]],
    trusted: bool,
    via: str | None,
    toggles: tuple[bool, bool, bool],
    version: str,
) -> None:
    """forwarded_request_head equals the request line plus forwarded_headers (and a Host when
    none), or declines when Connection names end-to-end fields."""
    policy = Forwarding(
        trusted_proxies=Forwarding.parse_trusted(["10.0.0.0/8"]) if trusted else (),
        via=via,
        forwarded_for=toggles[0],
        forwarded_proto=toggles[1],
        forwarded_host=toggles[2],
    )
    host = next((v for n, v in headers if n.lower() == b"host"), None)
    options = {
        "client_ip": "10.0.0.9",
        "scheme": "http",
        "host": host,
        "http_version": version,
        "forwarding": policy,
    }
    head = forwarded_request_head("GET", "/a?b", headers, authority=b"up:80", **options)  # type: ignore[arg-type]
    fields = forwarded_headers(headers, **options)  # type: ignore[arg-type]
    if head is None:
        named = {
            t.strip().lower()
            for n, v in headers
            if n.lower() == b"connection"
            for t in v.split(b",")
        }
        assert named - HOP_BY_HOP - {b""}
        return
    assert head is not None
    expected = b"GET /a?b HTTP/1.1\r\n" + b"".join(n + b": " + v + b"\r\n" for n, v in fields)
    if host is None:
        expected += b"Host: up:80\r\n"
    assert head == expected + b"\r\n"


@given(
    headers=st.lists(
        st.tuples(st.sampled_from([b"Via", b"via", b"Server", b"Content-Length"]), _FIELD_VALUES),
        max_size=5,
    ),
    mode=st.sampled_from(list(BodyMode)),
)
def test_a_via_entry_given_to_response_head_is_added_as_add_via_adds_it(
    headers: list[tuple[bytes, bytes]], mode: BodyMode
) -> None:
    """response_head(via=) writes the same head as add_via followed by response_head."""
    options = {"mode": mode, "length": 3, "keep_alive": True, "http10": False}
    with_via = list(headers)
    add_via(with_via, http_version="1.1", via=b"1.1 podkit")
    assert response_head(200, headers, via=b"1.1 podkit", **options) == response_head(  # type: ignore[arg-type]
        200,
        with_via,
        **options,  # type: ignore[arg-type]
    )


def test_via_is_appended_to_a_response() -> None:
    headers = [(b"via", b"1.1 origin")]
    add_via(headers, http_version="1.1", via="podkit")
    assert headers == [(b"via", b"1.1 origin, 1.1 podkit")]


@pytest.mark.parametrize(
    ("method", "status", "length", "http10", "expected"),
    [
        ("HEAD", 200, 10, False, (BodyMode.NONE, True)),
        ("GET", 204, None, False, (BodyMode.NONE, True)),
        ("GET", 304, None, False, (BodyMode.NONE, True)),
        ("GET", 200, 10, False, (BodyMode.LENGTH, True)),
        ("GET", 200, None, False, (BodyMode.CHUNKED, True)),
        ("GET", 200, None, True, (BodyMode.CLOSE, False)),
    ],
)
def test_response_framing(
    method: str,
    status: int,
    length: int | None,
    http10: bool,
    expected: tuple[BodyMode, bool],
) -> None:
    assert response_framing(method, status, length=length, http10=http10, keep_alive=True) == (
        expected
    )


def test_response_head_replaces_framing_fields_but_keeps_a_head_content_length() -> None:
    fields = [(b"Content-Length", b"99"), (b"Connection", b"x"), (b"X", b"1")]
    sized = response_head(
        200, fields, mode=BodyMode.LENGTH, length=3, keep_alive=True, http10=False
    )
    assert sized == b"HTTP/1.1 200 OK\r\nX: 1\r\nContent-Length: 3\r\n\r\n"
    head = response_head(
        200, fields, mode=BodyMode.NONE, length=None, keep_alive=False, http10=False
    )
    assert head == b"HTTP/1.1 200 OK\r\nContent-Length: 99\r\nX: 1\r\nConnection: close\r\n\r\n"
