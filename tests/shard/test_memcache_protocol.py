"""The memcached text protocol core: requests and replies, whole or one byte at a time."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from podkit.ambassador.shard._memcache import (
    Fault,
    Local,
    ReplyKind,
    ReplyReader,
    Request,
    RequestParser,
    item_as_set,
    merge_values,
)

keys = st.text(
    alphabet=st.characters(min_codepoint=33, max_codepoint=126), min_size=1, max_size=40
).map(str.encode)
values = st.binary(max_size=300)


def feed_bytewise(parser: RequestParser, data: bytes) -> list[Request | Fault]:
    out: list[Request | Fault] = []
    for i in range(len(data)):
        out.extend(parser.feed(data[i : i + 1]))
    return out


def test_a_multi_key_get_names_every_key_in_order() -> None:
    [request] = RequestParser().feed(b"get a b a\r\n")
    assert isinstance(request, Request)
    assert request.keys == [b"a", b"b", b"a"]
    assert request.reply_kind is ReplyKind.VALUES
    assert request.encode([b"b"]) == b"get b\r\n"


def test_gat_keeps_its_expiry_when_split() -> None:
    [request] = RequestParser().feed(b"gat 30 a b\r\n")
    assert isinstance(request, Request)
    assert request.keys == [b"a", b"b"]
    assert request.encode([b"a"]) == b"gat 30 a\r\n"


def test_noreply_is_remembered_and_dropped_upstream() -> None:
    [request] = RequestParser().feed(b"set k 5 0 2 noreply\r\nhi\r\n")
    assert isinstance(request, Request)
    assert request.noreply
    assert request.encode() == b"set k 5 0 2\r\nhi\r\n"


@given(st.lists(st.tuples(keys, values), min_size=1, max_size=8))
def test_storage_requests_parse_the_same_one_byte_at_a_time(
    items: list[tuple[bytes, bytes]],
) -> None:
    wire = b"".join(b"set %s 1 0 %d\r\n%s\r\n" % (k, len(v), v) for k, v in items)
    whole = RequestParser().feed(wire)
    bytewise = feed_bytewise(RequestParser(), wire)
    assert whole == bytewise
    assert [(r.keys[0], r.data) for r in whole if isinstance(r, Request)] == items
    assert [r.encode() for r in whole if isinstance(r, Request)] == [
        b"set %s 1 0 %d\r\n%s\r\n" % (k, len(v), v) for k, v in items
    ]


def test_a_value_over_the_limit_is_refused_and_the_connection_goes_on() -> None:
    parser = RequestParser(max_value=4)
    out = feed_bytewise(parser, b"set k 0 0 10\r\n0123456789\r\nget k\r\n")
    assert out[0] == Fault(b"SERVER_ERROR object too large for cache\r\n")
    assert isinstance(out[1], Request)
    assert out[1].keys == [b"k"]


def test_a_key_over_250_bytes_is_a_client_error() -> None:
    out = RequestParser().feed(b"get " + b"k" * 251 + b"\r\nget k\r\n")
    assert isinstance(out[0], Fault)
    assert out[0].reply.startswith(b"CLIENT_ERROR")
    assert isinstance(out[1], Request)


def test_unknown_commands_answer_error_and_a_bad_chunk_closes() -> None:
    out = RequestParser().feed(b"flush_everything\r\nset k 0 0 1\r\nxyz\r\n")
    assert out[0] == Fault(b"ERROR\r\n")
    assert out[1] == Fault(b"CLIENT_ERROR bad data chunk\r\n", close=True)


def test_a_line_past_the_limit_closes() -> None:
    out = RequestParser(max_line=16).feed(b"get " + b"a " * 20)
    assert out == [Fault(b"CLIENT_ERROR line too long\r\n", close=True)]


def test_local_commands_are_marked() -> None:
    out = RequestParser().feed(b"version\r\nquit\r\n")
    assert [r.local for r in out if isinstance(r, Request)] == [Local.VERSION, Local.QUIT]


@given(st.lists(st.tuples(keys, values), max_size=6))
def test_value_replies_are_cut_one_byte_at_a_time(items: list[tuple[bytes, bytes]]) -> None:
    body = b"".join(b"VALUE %s 0 %d\r\n%s\r\n" % (k, len(v), v) for k, v in items)
    wire = body + b"END\r\nSTORED\r\n"
    reader = ReplyReader()
    replies = []
    kinds = [ReplyKind.VALUES, ReplyKind.LINE]
    for i in range(len(wire)):
        reader.feed(wire[i : i + 1])
        while kinds and (reply := reader.next_reply(kinds[0])) is not None:
            replies.append(reply)
            kinds.pop(0)
    assert [r.raw for r in replies] == [body + b"END\r\n", b"STORED\r\n"]
    assert [k for k, _ in replies[0].items] == [k for k, _ in items]


def test_an_error_answers_a_retrieval() -> None:
    reader = ReplyReader()
    reader.feed(b"SERVER_ERROR out of memory\r\n")
    reply = reader.next_reply(ReplyKind.VALUES)
    assert reply is not None
    assert reply.error


def test_merged_values_follow_the_order_asked() -> None:
    reader = ReplyReader()
    reader.feed(b"VALUE b 0 1\r\n2\r\nEND\r\nVALUE a 0 1\r\n1\r\nEND\r\n")
    first = reader.next_reply(ReplyKind.VALUES)
    second = reader.next_reply(ReplyKind.VALUES)
    assert first is not None
    assert second is not None
    merged = merge_values([b"a", b"x", b"b", b"a"], [first, second])
    assert merged == b"VALUE a 0 1\r\n1\r\nVALUE b 0 1\r\n2\r\nVALUE a 0 1\r\n1\r\nEND\r\n"


def test_an_item_is_stored_again_with_a_new_expiry() -> None:
    assert item_as_set(b"VALUE k 7 2 99\r\nhi\r\n", 10) == b"set k 7 10 2\r\nhi\r\n"


def test_meta_requests_and_replies_are_cut_one_byte_at_a_time() -> None:
    wire = b"ms k 2 T10\r\nhi\r\nmg k v\r\nmn\r\n"
    out = feed_bytewise(RequestParser(), wire)
    assert [(r.command, r.keys, r.data) for r in out if isinstance(r, Request)] == [
        (b"ms", [b"k"], b"hi"),
        (b"mg", [b"k"], None),
        (b"mn", [], None),
    ]
    assert [r.reply_kind for r in out if isinstance(r, Request)][:2] == [ReplyKind.META] * 2
    replies = b"HD\r\nVA 2 f0\r\nhi\r\nEN\r\n"
    reader = ReplyReader()
    got = []
    for i in range(len(replies)):
        reader.feed(replies[i : i + 1])
        while (reply := reader.next_reply(ReplyKind.META)) is not None:
            got.append(reply.raw)
    assert got == [b"HD\r\n", b"VA 2 f0\r\nhi\r\n", b"EN\r\n"]
