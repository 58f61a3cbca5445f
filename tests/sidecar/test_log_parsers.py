"""Each log format parses into one record; what no parser understands is kept raw."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from podkit.adapter.logs import parsers
from podkit.adapter.logs.parsers import (
    access_time_to_iso,
    make_parser,
    normalise_level,
    parse_line,
)

NGINX = (
    '127.0.0.1 - frank [10/Oct/2000:13:55:36 -0700] "GET /apache_pb.gif HTTP/1.0" 200 2326 '
    '"http://www.example.com/start.html" "Mozilla/4.08 [en] (Win98; I ;Nav)"'
)
APACHE_COMMON = '10.0.0.2 - - [01/Feb/2024:00:00:01 +0100] "POST /form HTTP/1.1" 503 -'


def test_nginx_combined_lines_become_records_with_iso_time_and_status_level() -> None:
    entry = parse_line(NGINX, make_parser("nginx", year=2026))
    assert entry.format == "nginx"
    assert entry.timestamp == "2000-10-10T13:55:36-07:00"
    assert entry.level == "info"
    assert entry.message == "GET /apache_pb.gif HTTP/1.0"
    assert entry.fields["status"] == 200
    assert entry.fields["path"] == "/apache_pb.gif"
    assert entry.fields["remote_user"] == "frank"
    assert entry.fields["user_agent"] == "Mozilla/4.08 [en] (Win98; I ;Nav)"


def test_apache_common_lines_parse_and_a_5xx_is_an_error() -> None:
    entry = parse_line(APACHE_COMMON, make_parser("apache", year=2026))
    assert entry.format == "apache"
    assert entry.level == "error"
    assert entry.fields["body_bytes_sent"] == 0
    assert entry.fields["method"] == "POST"


def test_json_lines_take_the_usual_keys_and_keep_the_rest_as_fields() -> None:
    line = '{"ts":"2024-01-01T00:00:00Z","level":"WARN","msg":"disk low","free":12}'
    entry = parse_line(line, make_parser("json", year=2026))
    assert (entry.timestamp, entry.level, entry.message) == (
        "2024-01-01T00:00:00Z",
        "warning",
        "disk low",
    )
    assert entry.fields == {"free": 12}


def test_logfmt_lines_handle_quoted_values() -> None:
    line = 'time=2024-01-01T00:00:00Z level=error msg="could not \\"connect\\"" retry=3 fatal'
    entry = parse_line(line, make_parser("logfmt", year=2026))
    assert entry.format == "logfmt"
    assert entry.level == "error"
    assert entry.message == 'could not "connect"'
    assert entry.fields == {"retry": "3", "fatal": True}


def test_rfc5424_syslog_keeps_structured_data() -> None:
    line = (
        "<165>1 2003-10-11T22:14:15.003Z mymachine.example.com evntslog - ID47 "
        '[exampleSDID@32473 iut="3" eventSource="Application"] An application event'
    )
    entry = parse_line(line, make_parser("syslog", year=2026))
    assert entry.timestamp == "2003-10-11T22:14:15.003Z"
    assert entry.level == "notice"
    assert entry.message == "An application event"
    assert entry.fields["app"] == "evntslog"
    assert entry.fields["exampleSDID@32473.iut"] == "3"


@pytest.mark.parametrize(
    ("line", "timestamp", "level"),
    [
        ("<34>Oct 11 22:14:15 mymachine su: 'su root' failed", "2026-10-11T22:14:15", "critical"),
        ("Oct  1 02:03:04 host cron[12]: 'su root' failed", "2026-10-01T02:03:04", None),
        (
            "2024-05-01T10:00:00.123456+00:00 host su: 'su root' failed",
            "2024-05-01T10:00:00.123456+00:00",
            None,
        ),
    ],
)
def test_bsd_syslog_lines_get_the_given_year(line: str, timestamp: str, level: str | None) -> None:
    entry = parse_line(line, make_parser("syslog", year=2026))
    assert entry.format == "syslog"
    assert entry.timestamp == timestamp
    assert entry.level == level
    assert entry.message == "'su root' failed"


def test_auto_recognises_every_format_line_by_line() -> None:
    parser = make_parser("auto", year=2026)
    formats = [
        parse_line(line, parser).format
        for line in (
            NGINX,
            '{"msg":"x"}',
            APACHE_COMMON,
            "<34>Oct 11 22:14:15 mymachine su: hi",
            "a=1 b=2",
            "just some words",
            "",
        )
    ]
    assert formats == ["nginx", "json", "apache", "syslog", "logfmt", "raw", "raw"]


def test_a_line_in_no_format_is_kept_as_raw_text() -> None:
    entry = parse_line("{not json", make_parser("json", year=2026))
    assert (entry.format, entry.message, entry.timestamp) == ("raw", "{not json", None)


def test_levels_are_normalised() -> None:
    assert [normalise_level(x) for x in ("WARN", "Err", "fatal", "trace", "custom", "")] == [
        "warning",
        "error",
        "critical",
        "debug",
        "custom",
        None,
    ]


def test_access_times_that_are_not_clf_are_left_as_they_are() -> None:
    assert access_time_to_iso("yesterday") == "yesterday"


@pytest.mark.parametrize("name", ["auto", "json", "logfmt", "nginx", "apache", "syslog"])
@given(text=st.text(max_size=200))
def test_no_parser_raises_on_any_text(name: str, text: str) -> None:
    entry = parse_line(text, make_parser(name, year=2026))
    assert isinstance(entry.message, str)


@given(
    st.dictionaries(
        st.from_regex(r"[a-z_]{1,8}", fullmatch=True).filter(
            lambda k: k not in ("ts", "time", "timestamp", "level", "msg", "message", "lvl")
        ),
        st.text(alphabet=st.characters(min_codepoint=32, max_codepoint=126), max_size=12),
        min_size=1,
        max_size=5,
    )
)
def test_logfmt_reads_back_what_was_written(pairs: dict[str, str]) -> None:
    def quote(value: str) -> str:
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'

    line = " ".join(f"{key}={quote(value)}" for key, value in pairs.items())
    entry = parse_line(line, make_parser("logfmt", year=2026))
    assert entry.format == "logfmt"
    assert entry.fields == pairs


# Lines of every format, several of which logfmt would also accept (a `key=value` inside).
MIXED = {
    NGINX: "nginx",
    '10.1.1.1 - - [10/Oct/2000:13:55:36 -0700] "GET /search?q=logs&page=2 HTTP/1.1" 200 51 '
    '"-" "curl/8.5"': "nginx",
    APACHE_COMMON: "apache",
    "<34>Oct 11 22:14:15 mymachine su: user=bob action=login": "syslog",
    "Oct 11 22:14:15 host app[12]: retry=3 backoff=2s": "syslog",
    "<165>1 2003-10-11T22:14:15.003Z host app - ID47 - took=12ms": "syslog",
    '{"msg":"x","n":1}': "json",
    "level=info msg=started port=8080": "logfmt",
    "ts=2024-01-01T00:00:00Z lvl=warn disk=91%": "logfmt",
    "just some words": "raw",
}


def test_auto_on_mixed_lines_gives_each_its_own_format_after_logfmt_ones() -> None:
    """A logfmt line does not make auto read the syslog or access lines after it as logfmt."""
    parser = make_parser("auto", year=2026)
    lines = [
        "level=info msg=started port=8080",
        "<34>Oct 11 22:14:15 mymachine su: user=bob action=login",
        "level=info msg=again",
        '10.1.1.1 - - [10/Oct/2000:13:55:36 -0700] "GET /search?q=logs&page=2 HTTP/1.1" 200 51 '
        '"-" "curl/8.5"',
        "Oct 11 22:14:15 host app[12]: retry=3 backoff=2s",
    ]
    assert [parse_line(line, parser).format for line in lines] == [
        "logfmt",
        "syslog",
        "logfmt",
        "nginx",
        "syslog",
    ]


@given(st.lists(st.sampled_from(sorted(MIXED)), min_size=1, max_size=30))
def test_auto_picks_the_same_format_for_a_line_whatever_came_before(lines: list[str]) -> None:
    """auto remembers the last format only to be fast: the answer never depends on history."""
    parser = make_parser("auto", year=2026)
    assert [parse_line(line, parser).format for line in lines] == [MIXED[line] for line in lines]


@given(
    st.one_of(
        st.from_regex(parsers._ACCESS, fullmatch=True),
        st.from_regex(parsers._SYSLOG_3164, fullmatch=True),
        st.from_regex(parsers._SYSLOG_5424, fullmatch=True),
        st.text(max_size=80),
    )
)
def test_auto_skips_a_strict_parser_only_for_lines_it_would_refuse(line: str) -> None:
    """The cheap tests auto runs before a strict parser are necessary conditions: a line
    that parser accepts always passes its test."""
    if parse_line(line, make_parser("nginx", year=2026)).format != "raw":
        assert '] "' in line
    if parse_line(line, make_parser("syslog", year=2026)).format != "raw":
        assert parsers._may_be_syslog(line)
