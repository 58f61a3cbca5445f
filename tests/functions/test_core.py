"""The sans-IO parts of functions: routes, CloudEvents, cron, rates and trigger decorators."""

from __future__ import annotations

import datetime
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from podkit.errors import ConfigError, UsageError
from podkit.functions import CloudEvent, load_app, on_event, on_http, on_queue, on_timer
from podkit.serving.functions._model import HttpTrigger, spec_of
from podkit.serving.functions._request import FunctionRequest, FunctionResponse, encode_result
from podkit.serving.functions._timers import CronSchedule, next_interval
from podkit.serving.functions._wrappers import parse_rate

NOW = 1_700_000_000.0


def test_a_route_matches_its_method_and_path_and_names_its_parameters() -> None:
    route = HttpTrigger("GET", "/users/{id}/posts/{post}")
    assert route.match("GET", "/users/7/posts/9") == {"id": "7", "post": "9"}
    assert route.match("HEAD", "/users/7/posts/9") == {"id": "7", "post": "9"}
    assert route.match("POST", "/users/7/posts/9") is None
    assert route.match("GET", "/users/7/posts") is None
    assert route.match("GET", "/users//posts/9") is None


def test_stacked_triggers_give_one_function_several_triggers() -> None:
    @on_http("POST /a")
    @on_event("thing.done", max_attempts=3, backoff="2s")
    def both(arg: object) -> None:
        return None

    spec = spec_of(both)
    assert spec is not None
    assert [t.label for t in spec.triggers] == ["event thing.done", "POST /a"]
    assert spec.max_attempts == 3
    assert spec.backoff == 2.0


@pytest.mark.parametrize(
    "make",
    [
        lambda: on_http("FETCH /x"),
        lambda: on_http("POST x"),
        lambda: on_http("POST /calls/x"),
        lambda: on_queue("bad name!"),
        lambda: on_timer(),
        lambda: on_timer(every="1s", cron="* * * * *"),
        lambda: on_timer(cron="61 * * * *"),
        lambda: on_event("x", max_attempts=0),
        lambda: on_event("x", backoff="soon"),
    ],
)
def test_a_malformed_trigger_is_a_clear_error(make: object) -> None:
    with pytest.raises((UsageError, ConfigError)):
        make()  # type: ignore[operator]


def test_a_cloudevent_survives_its_structured_json_form() -> None:
    event = CloudEvent.create(
        "user.created", {"id": 1}, now=NOW, subject="u1", extensions={"tenant": "a"}
    )
    again = CloudEvent.from_json(event.to_json())
    assert again == event
    assert abs(again.timestamp - NOW) < 0.001
    assert again.matches({"type": "user.created", "tenant": "a"})
    assert not again.matches({"tenant": "b"})
    with pytest.raises(UsageError):
        CloudEvent.from_json({"specversion": "0.3", "id": "1", "source": "s", "type": "t"})
    with pytest.raises(UsageError):
        CloudEvent.create("t", now=NOW, extensions={"Bad-Name": "x"})


def test_cron_finds_the_next_matching_minute() -> None:
    every5 = CronSchedule.parse("*/5 * * * *")
    start = datetime.datetime(2026, 1, 1, 10, 2, 30, tzinfo=datetime.UTC).timestamp()
    nxt = datetime.datetime.fromtimestamp(every5.next_after(start), tz=datetime.UTC)
    assert (nxt.hour, nxt.minute) == (10, 5)
    monday9 = CronSchedule.parse("0 9 * * 1")
    nxt = datetime.datetime.fromtimestamp(monday9.next_after(start), tz=datetime.UTC)
    assert (nxt.isoweekday(), nxt.hour, nxt.minute) == (1, 9, 0)
    with pytest.raises(UsageError):
        CronSchedule.parse("0 0 31 2 *")


@given(st.floats(min_value=0, max_value=4e9), st.sampled_from(["*/7 * * * *", "15 3 * 2 0"]))
def test_cron_next_is_always_later_and_matches(now: float, expression: str) -> None:
    schedule = CronSchedule.parse(expression)
    nxt = schedule.next_after(now)
    assert nxt > now
    moment = datetime.datetime.fromtimestamp(nxt, tz=datetime.UTC)
    assert moment.minute in schedule.minutes
    assert moment.hour in schedule.hours


def test_interval_timers_fire_at_multiples_of_their_interval_skipping_missed_runs() -> None:
    assert next_interval(105.0, 10.0) == 110.0
    assert next_interval(110.0, 10.0) == 120.0
    assert next_interval(135.5, 10.0) == 140.0
    assert next_interval(0.26, 0.05) > 0.26


def test_rates_are_calls_per_period() -> None:
    assert parse_rate("10/s") == (10.0, 1.0)
    assert parse_rate("100/m") == (100.0, 60.0)
    assert parse_rate("5/10s") == (5.0, 10.0)
    for bad in ("10", "0/s", "x/s", "10/d"):
        with pytest.raises(UsageError):
            parse_rate(bad)


def test_results_become_json_text_bytes_or_a_chosen_response() -> None:
    assert encode_result({"a": 1}) == (200, [("Content-Type", "application/json")], b'{"a":1}')
    assert encode_result("hi")[2] == b"hi"
    assert encode_result(None)[0] == 204
    status, headers, body = encode_result(
        FunctionResponse({"x": 1}, status=201, headers={"Content-Type": "application/x+json"})
    )
    assert (status, headers, body) == (201, [("Content-Type", "application/x+json")], b'{"x":1}')


def test_a_request_parses_its_query_and_json_once() -> None:
    request = FunctionRequest("POST", "/a", query="x=1&x=2&y=", body=b'{"k": [1]}')
    assert request.query == {"x": "1", "y": ""}
    assert request.json == {"k": [1]}
    assert FunctionRequest.from_json(request.to_json()).json == {"k": [1]}


def test_load_app_collects_the_decorated_functions(tmp_path: Path) -> None:
    app = tmp_path / "app.py"
    app.write_text(
        "from podkit.functions import on_http, on_event\n"
        "@on_http('GET /a')\ndef a(r): return 'a'\n"
        "@on_event('t', name='bee')\ndef b(e): return None\n"
    )
    loaded = load_app(app)
    assert sorted(loaded.functions) == ["a", "bee"]
    assert loaded.route("GET", "/a") is not None
    assert [s.name for s, _ in loaded.subscribers("t")] == ["bee"]


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("x = 1\n", "defines no function"),
        ("raise RuntimeError('boom')\n", "import failed: RuntimeError: boom"),
        (
            "from podkit.functions import on_http\n"
            "@on_http('GET /a')\ndef a(r): pass\n@on_http('GET /a')\ndef b(r): pass\n",
            "route GET /a is served by",
        ),
    ],
)
def test_a_bad_app_file_is_a_config_error_naming_it(tmp_path: Path, text: str, reason: str) -> None:
    app = tmp_path / "bad.py"
    app.write_text(text)
    with pytest.raises(ConfigError, match=reason) as info:
        load_app(app)
    assert str(app) in str(info.value)
