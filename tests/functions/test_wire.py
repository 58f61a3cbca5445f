"""The runner-worker wire: frames, argument forms and the eager start of invocations."""

from __future__ import annotations

import asyncio
import contextvars
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from podkit.serving.functions._cloudevents import CloudEvent
from podkit.serving.functions._request import FunctionRequest, FunctionResponse, encode_outcome
from podkit.serving.functions._wire import FrameProtocol, decode_args, encode_args, frames
from podkit.serving.functions._worker import start_eagerly

MESSAGES = st.lists(
    st.tuples(
        st.integers(0, 2**40),
        st.sampled_from(["http", "event"]),
        st.text(max_size=20),
        st.binary(max_size=3000),
    ),
    max_size=8,
)


class Recorder(asyncio.Transport):
    def __init__(self) -> None:
        super().__init__()
        self.aborted = False

    def abort(self) -> None:
        self.aborted = True


def parse(chunks: list[bytes]) -> tuple[list[Any], FrameProtocol]:
    got: list[Any] = []
    protocol = FrameProtocol(got.append, lambda: None)
    protocol.connection_made(Recorder())
    for chunk in chunks:
        protocol.data_received(chunk)
    return got, protocol


@given(MESSAGES, st.integers(1, 700))
def test_frames_cut_anywhere_come_out_whole_and_in_order(
    messages: list[tuple[Any, ...]], step: int
) -> None:
    data = b"".join(frames([m]) for m in messages) + (frames(messages) if messages else b"")
    chunks = [data[i : i + step] for i in range(0, len(data), step)]
    got, _ = parse(chunks)
    assert got == messages + messages


def test_frames_fed_one_byte_at_a_time_come_out_whole() -> None:
    messages = [(1, "http", "f", (4, b"x" * 100)), {"hello": "token", "pid": 7}]
    data = frames(messages)
    got, _ = parse([data[i : i + 1] for i in range(len(data))])
    assert got == messages


def test_a_batch_over_the_frame_limit_is_cut_into_frames_under_it() -> None:
    messages = [(i, bytes([i]) * 1000) for i in range(10)]  # marshal writes a repeated object once
    data = frames(messages, limit=2500)
    got, _ = parse([data])
    assert got == messages
    sizes = []
    while data:
        size = int.from_bytes(data[:4], "big")
        sizes.append(size)
        data = data[4 + size :]
    assert len(sizes) > 1
    assert max(sizes) <= 2500


class Written(Recorder):
    def __init__(self) -> None:
        super().__init__()
        self.writes: list[bytes] = []

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self.writes.append(bytes(data))

    def is_closing(self) -> bool:
        return self.aborted


async def test_the_messages_of_one_turn_leave_in_one_write() -> None:
    protocol = FrameProtocol(lambda message: None, lambda: None)
    transport = Written()
    protocol.connection_made(transport)
    for i in range(5):
        protocol.send((i, "http", "f", None))
    await asyncio.sleep(0)  # the turn ends
    (write,) = transport.writes
    got, _ = parse([write])
    assert got == [(i, "http", "f", None) for i in range(5)]


async def test_answers_given_while_a_read_is_handled_leave_at_its_end_in_one_write() -> None:
    transport = Written()
    protocol = FrameProtocol(lambda message: protocol.send(("re", message)), lambda: None)
    protocol.connection_made(transport)
    protocol.data_received(frames([1, 2, 3]))
    (write,) = transport.writes  # no turn of the loop needed
    assert parse([write])[0] == [("re", 1), ("re", 2), ("re", 3)]


async def test_a_message_marshal_cannot_carry_aborts_the_connection() -> None:
    protocol = FrameProtocol(lambda message: None, lambda: None)
    transport = Written()
    protocol.connection_made(transport)
    protocol.send((1, object()))
    protocol.flush()
    assert transport.aborted
    assert transport.writes == []


def test_a_length_over_the_frame_limit_aborts_the_connection() -> None:
    got, protocol = parse([b"\xff\xff\xff\xff" + b"x" * 10])
    assert got == []
    assert isinstance(protocol.transport, Recorder)
    assert protocol.transport.aborted


def test_a_request_crosses_with_its_fields_as_received_and_its_query() -> None:
    request = FunctionRequest(
        "POST",
        "/items/7",
        raw_headers=[(b"Content-Type", b"application/json"), (b"X-Caf\xe9", b"\xe9t\xe9")],
        query="a=1&a=2&b=",
        body=b'{"k": 1}',
        params={"id": "7"},
        request_id="r1",
    )
    (again,) = decode_args(encode_args((request,)))
    assert isinstance(again, FunctionRequest)
    assert (again.method, again.path, again.body, again.params) == (
        "POST",
        "/items/7",
        b'{"k": 1}',
        {"id": "7"},
    )
    assert again.query == {"a": "1", "b": ""}
    assert again.headers["x-café"] == "été"
    assert again.json == {"k": 1}


def test_an_async_call_request_keeps_its_query_through_its_json_form() -> None:
    request = FunctionRequest("GET", "/q", query="x=1&y=two")
    again = FunctionRequest.from_json(request.to_json())
    (crossed,) = decode_args(encode_args((again,)))
    assert crossed.query == {"x": "1", "y": "two"}


def test_events_bytes_and_values_cross_unchanged() -> None:
    event = CloudEvent.create("user.created", {"id": 1}, now=1_700_000_000.0, source="t")
    (again,) = decode_args(encode_args((event,)))
    assert again == event
    assert decode_args(encode_args((b"\x00\xff",))) == (b"\x00\xff",)
    assert decode_args(encode_args(({"n": [1, 2.5, None]},))) == ({"n": [1, 2.5, None]},)
    assert decode_args(encode_args(())) == ()


@pytest.mark.parametrize(
    ("result", "status", "fields", "body"),
    [
        ({"a": "é"}, 200, [(b"Content-Type", b"application/json")], '{"a":"é"}'.encode()),
        (None, 204, [], b""),
        ("hi", 200, [(b"Content-Type", b"text/plain; charset=utf-8")], b"hi"),
        (
            FunctionResponse({"x": 1}, status=201, headers={"Location": "/x/1"}),
            201,
            [(b"Content-Type", b"application/json"), (b"Location", b"/x/1")],
            b'{"x":1}',
        ),
    ],
)
def test_results_become_status_byte_fields_and_body(
    result: Any, status: int, fields: list[tuple[bytes, bytes]], body: bytes
) -> None:
    assert encode_outcome(result) == (status, fields, body)


current: contextvars.ContextVar[str] = contextvars.ContextVar("current", default="outside")


async def test_an_invocation_that_never_suspends_finishes_before_start_returns() -> None:
    done: list[str] = []

    async def run() -> None:
        current.set("inside")
        done.append(current.get())

    async with asyncio.TaskGroup() as tasks:
        start_eagerly(tasks, run())
        assert done == ["inside"]
    assert current.get() == "outside"  # its context was its own


async def test_an_invocation_that_suspends_is_continued_by_a_task_in_its_context() -> None:
    gate: asyncio.Future[str] = asyncio.get_running_loop().create_future()
    seen: list[str] = []

    async def run() -> None:
        token = current.set("inside")
        value = await gate
        seen.append(f"{current.get()}:{value}")
        await asyncio.sleep(0)
        current.reset(token)  # the same context the first step ran in
        seen.append(current.get())

    async with asyncio.TaskGroup() as tasks:
        start_eagerly(tasks, run())
        assert seen == []
        gate.set_result("opened")
    assert seen == ["inside:opened", "outside"]
    assert current.get() == "outside"


async def test_a_suspended_invocation_is_cancelled_with_its_task_group() -> None:
    cancelled: list[bool] = []

    async def run() -> None:
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            cancelled.append(True)
            raise

    with pytest.raises(TimeoutError):
        async with asyncio.timeout(0.05), asyncio.TaskGroup() as tasks:
            start_eagerly(tasks, run())
    assert cancelled == [True]


async def test_an_exception_after_a_suspension_reaches_the_awaiting_code() -> None:
    caught: list[str] = []
    gate: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    async def run() -> None:
        try:
            await gate
        except ValueError as exc:
            caught.append(str(exc))

    async with asyncio.TaskGroup() as tasks:
        start_eagerly(tasks, run())
        gate.set_exception(ValueError("boom"))
    assert caught == ["boom"]
