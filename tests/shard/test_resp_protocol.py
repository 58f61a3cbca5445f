"""The RESP2 core: commands and replies, whole or one byte at a time."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from podkit.ambassador.shard._resp import (
    Command,
    CommandParser,
    Fault,
    ReplyReader,
    UpstreamProtocolError,
    array_items,
    encode_command,
    integer_value,
)

args_lists = st.lists(st.binary(max_size=50), min_size=1, max_size=6)


def feed_bytewise(parser: CommandParser, data: bytes) -> list[Command | Fault]:
    out: list[Command | Fault] = []
    for i in range(len(data)):
        out.extend(parser.feed(data[i : i + 1]))
    return out


@given(st.lists(args_lists, min_size=1, max_size=6))
def test_commands_parse_the_same_one_byte_at_a_time(commands: list[list[bytes]]) -> None:
    wire = b"".join(encode_command(a) for a in commands)
    whole = CommandParser().feed(wire)
    assert whole == feed_bytewise(CommandParser(), wire)
    assert [c.args for c in whole if isinstance(c, Command)] == commands
    assert b"".join(c.raw for c in whole if isinstance(c, Command)) == wire


def test_inline_commands_are_encoded_as_arrays() -> None:
    [command] = CommandParser().feed(b"PING hello\r\n")
    assert isinstance(command, Command)
    assert command.raw == encode_command([b"PING", b"hello"])


def test_a_value_over_the_limit_is_refused_and_the_connection_goes_on() -> None:
    parser = CommandParser(max_value=3)
    wire = encode_command([b"SET", b"k", b"toolong", b"EX", b"10"]) + encode_command([b"GET", b"k"])
    out = feed_bytewise(parser, wire)
    assert isinstance(out[0], Fault)
    assert out[0].reply.startswith(b"-ERR value too large")
    assert not out[0].close
    assert isinstance(out[1], Command)
    assert out[1].args == [b"GET", b"k"]


def test_a_refused_value_at_the_end_of_the_buffer_is_answered_at_once() -> None:
    out = CommandParser(max_value=3).feed(encode_command([b"SET", b"k", b"toolong"]))
    assert len(out) == 1
    assert isinstance(out[0], Fault)


def test_bad_framing_is_a_protocol_error_that_closes() -> None:
    out = CommandParser().feed(b"*1\r\n$x\r\n")
    assert len(out) == 1
    assert isinstance(out[0], Fault)
    assert out[0].close
    assert out[0].reply.startswith(b"-ERR Protocol error")


@given(
    st.lists(
        st.sampled_from(
            [
                b"+OK\r\n",
                b":12\r\n",
                b"$-1\r\n",
                b"$3\r\nabc\r\n",
                b"-ERR x\r\n",
                b"*2\r\n$1\r\na\r\n*1\r\n:1\r\n",
                b"*-1\r\n",
            ]
        ),
        max_size=8,
    )
)
def test_replies_are_cut_one_byte_at_a_time(replies: list[bytes]) -> None:
    wire = b"".join(replies)
    reader = ReplyReader()
    got = []
    for i in range(len(wire)):
        reader.feed(wire[i : i + 1])
        while (reply := reader.next_reply()) is not None:
            got.append(reply)
    assert got == replies


def test_array_items_and_integers_are_read_back() -> None:
    assert array_items(b"*3\r\n$1\r\na\r\n$-1\r\n:5\r\n") == [b"$1\r\na\r\n", b"$-1\r\n", b":5\r\n"]
    assert integer_value(b":42\r\n") == 42
    assert integer_value(b"+OK\r\n") is None


def test_garbage_from_an_upstream_is_an_error() -> None:
    reader = ReplyReader()
    reader.feed(b"?what\r\n")
    with pytest.raises(UpstreamProtocolError):
        reader.next_reply()
