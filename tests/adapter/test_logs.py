"""The log adapter: multi-line joining, timestamps and severities, both schemas, and 10,000
mixed lines through ``podkit adapt logs``."""

from __future__ import annotations

import datetime
import json
import random
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from podkit.adapter.logs import LogNormaliser, MultilineJoiner, missing_fields, to_utc

UTC = datetime.UTC
PARIS = datetime.timezone(datetime.timedelta(hours=1))

TRACEBACK = [
    "Traceback (most recent call last):",
    '  File "/srv/app/jobs.py", line 41, in run',
    "    result = handler(item)",
    '  File "/srv/app/handlers.py", line 7, in handler',
    "    raise KeyError(item)",
    "KeyError: 'thumbnail'",
]
JAVA = [
    "java.lang.IllegalStateException: queue closed",
    "\tat com.example.Queue.put(Queue.java:88)",
    "\tat com.example.Main.main(Main.java:12)",
    "Caused by: java.io.IOException: broken pipe",
    "\t... 2 more",
]


def normaliser(schema: str = "otel", **kw: object) -> LogNormaliser:
    return LogNormaliser(schema=schema, year=2026, zone=UTC, **kw)  # type: ignore[arg-type]


def run_all(n: LogNormaliser, lines: list[str]) -> list[dict[str, object]]:
    return n.feed(lines, "2026-12-07T00:00:00Z") + n.flush("2026-12-07T00:00:00Z")


def test_a_logged_exception_and_its_traceback_are_one_record() -> None:
    records = run_all(
        normaliser(), ["2026-12-07 03:00:00,123 ERROR jobs: item failed", *TRACEBACK, "INFO:x:next"]
    )
    assert len(records) == 2
    first = records[0]
    assert first["SeverityText"] == "ERROR"
    assert first["SeverityNumber"] == 17
    assert first["Body"] == "\n".join(["item failed", *TRACEBACK])
    attrs = first["Attributes"]
    assert isinstance(attrs, dict)
    assert attrs["exception.type"] == "KeyError"
    assert attrs["exception.message"] == "'thumbnail'"
    assert attrs["exception.stacktrace"] == "\n".join(TRACEBACK)


def test_chained_tracebacks_stay_in_one_record() -> None:
    chained = [
        *TRACEBACK,
        "",
        "During handling of the above exception, another exception occurred:",
        "",
        *TRACEBACK[:-1],
        "RuntimeError: retry failed",
    ]
    records = run_all(normaliser(), [*chained, "INFO:x:after"])
    assert len(records) == 2
    assert records[0]["Body"] == "\n".join(chained)
    assert records[0]["Attributes"]["exception.type"] == "RuntimeError"  # type: ignore[index]


def test_java_stack_traces_and_caused_by_join_the_line_that_logged_them() -> None:
    records = run_all(normaliser("ecs"), ['level=error msg="put failed"', *JAVA])
    assert len(records) == 1
    assert records[0]["message"] == "\n".join(["put failed", *JAVA])


def test_an_uncaught_java_exception_starts_its_own_record() -> None:
    lines = ["level=info msg=start", 'Exception in thread "main" java.lang.Error: x', JAVA[1]]
    assert len(run_all(normaliser(), lines)) == 2


def test_records_are_cut_at_max_lines() -> None:
    joiner = MultilineJoiner(max_lines=3)
    done = [joiner.feed(line) for line in ["start", " a", " b", " c", " d"]]
    assert done[3] == ["start", " a", " b"]
    assert joiner.flush() == [" c", " d"]


@given(st.lists(st.sampled_from(["x", " y", "", TRACEBACK[0], "E: z", "Caused by: q"])))
def test_no_line_is_lost_or_duplicated_by_the_joiner(lines: list[str]) -> None:
    """Joined records hold every input line once, in order (empty lines only inside)."""
    joiner = MultilineJoiner(max_lines=4)
    out: list[list[str]] = []
    for line in lines:
        done = joiner.feed(line)
        if done:
            out.append(done)
    last = joiner.flush()
    if last:
        out.append(last)
    assert [x for record in out for x in record if x] == [x for x in lines if x]


@pytest.mark.parametrize(
    ("text", "zone", "expected"),
    [
        ("2000-10-10T13:55:36-07:00", UTC, "2000-10-10T20:55:36Z"),
        ("2026-12-07 03:00:00,123", PARIS, "2026-12-07T02:00:00.123Z"),
        ("2026-12-07T03:00:00.5+01:00", UTC, "2026-12-07T02:00:00.5Z"),
        ("2003-10-11T22:14:15.003Z", PARIS, "2003-10-11T22:14:15.003Z"),
        (1700000000, UTC, "2023-11-14T22:13:20Z"),
        ("1700000000123", UTC, "2023-11-14T22:13:20.123Z"),
        ("yesterday", UTC, None),
    ],
)
def test_timestamps_become_rfc3339_utc_honouring_the_source_zone(
    text: object, zone: datetime.tzinfo, expected: str | None
) -> None:
    assert to_utc(text, zone) == expected


def test_syslog_severities_and_zone_less_times_use_the_given_zone() -> None:
    n = LogNormaliser(schema="otel", year=2026, zone=PARIS)
    (record,) = run_all(n, ["<11>Oct 11 22:14:15 web nginx[7]: upstream timed out"])
    assert record["Timestamp"] == "2026-10-11T21:14:15Z"
    assert (record["SeverityText"], record["SeverityNumber"]) == ("ERROR", 17)
    assert record["Resource"] == {"host.name": "web", "service.name": "nginx"}
    assert record["Attributes"]["process.pid"] == 7  # type: ignore[index]


def test_an_unparsed_line_is_kept_whole_with_a_parse_error() -> None:
    (otel,) = run_all(normaliser(), ["%%% garbage ???"])
    assert otel["Body"] == "%%% garbage ???"
    assert "podkit.parse_error" in otel["Attributes"]  # type: ignore[operator]
    assert otel["SeverityNumber"] == 0
    (ecs,) = run_all(normaliser("ecs"), ["%%% garbage ???"])
    assert ecs["message"] == "%%% garbage ???"
    assert ecs["tags"] == ["_parse_failure"]
    assert ecs["event"]["original"] == "%%% garbage ???"  # type: ignore[index]
    assert missing_fields(otel, "otel") == []
    assert missing_fields(ecs, "ecs") == []


def mixed_lines(count: int, seed: int = 7) -> tuple[list[str], int]:
    """``count`` lines of every format, with tracebacks; and how many records they make."""
    rng = random.Random(seed)
    lines: list[str] = []
    records = 0
    while len(lines) < count:
        n = len(lines)
        kind = rng.randrange(8)
        if kind == 0:
            lines.append(
                f'10.0.{n % 250}.1 - - [07/Dec/2026:03:{n % 60:02d}:00 +0100] "GET /p/{n}?q=1 '
                f'HTTP/1.1" {rng.choice([200, 404, 503])} {n} "-" "curl/8.0"'
            )
        elif kind == 1:
            lines.append(
                f'10.0.0.2 - - [07/Dec/2026:03:00:{n % 60:02d} -0500] "POST /f HTTP/1.0" 201 -'
            )
        elif kind == 2:
            lines.append(
                f"<{rng.randrange(192)}>Dec  7 03:00:{n % 60:02d} host app[{n}]: event {n}"
            )
        elif kind == 3:
            lines.append(
                f"<165>1 2026-12-07T03:00:00.{n % 1000:03d}+02:00 host app - ID{n} "
                f'[meta seq="{n}"] message {n}'
            )
        elif kind == 4:
            lines.append(
                f'ts=2026-12-07T03:00:00Z level={rng.choice(["info", "warn"])} msg="m {n}" n={n}'
            )
        elif kind == 5:
            lines.append(json.dumps({"time": "2026-12-07T03:00:00Z", "level": "error", "msg": n}))
        elif kind == 6:
            lines.append(f"2026-12-07 03:00:00,{n % 1000:03d} ERROR worker.{n}: job {n} failed")
            lines.extend(TRACEBACK)
        else:
            lines.append(f"no format at all, line {n} !")
        records += 1
    return lines, records


@pytest.mark.parametrize("schema", ["otel", "ecs"])
def test_ten_thousand_mixed_lines_make_one_valid_record_each(tmp_path: Path, schema: str) -> None:
    lines, expected = mixed_lines(10_000)
    source = tmp_path / "mixed.log"
    source.write_text("\n".join(lines) + "\n")
    out = tmp_path / "out.jsonl"
    done = subprocess.run(
        [sys.executable, "-m", "podkit", "adapt", "logs", "--in", str(source), "--out", str(out),
         "--schema", schema, "--timezone", "UTC", "--log-level", "warning"],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(records) == expected
    for record in records:
        assert missing_fields(record, schema) == [], record  # type: ignore[arg-type]
    body = "Body" if schema == "otel" else "message"
    # No line lost: each record holds its first line and the lines joined to it.
    assert sum(r[body].count("\n") + 1 for r in records) == len(lines)
    tracebacks = [r for r in records if "Traceback (most recent call last):" in r[body]]
    assert tracebacks
    for record in tracebacks:
        exception = (
            record["Attributes"]["exception.type"] if schema == "otel" else record["error"]["type"]
        )
        assert exception == "KeyError"
    unparsed = [r for r in records if r[body].startswith("no format at all")]
    assert unparsed
    if schema == "otel":
        assert all("podkit.parse_error" in r["Attributes"] for r in unparsed)
        assert all(r["Timestamp"].endswith("Z") for r in records if r not in unparsed)
    else:
        assert all(r["tags"] == ["_parse_failure"] for r in unparsed)


def test_standard_input_is_normalised_as_lines_arrive_and_a_pending_record_is_flushed() -> None:
    """A traceback's record is written after the quiet spell, before the input ends."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "podkit", "adapt", "logs", "--flush", "200ms",
         "--log-level", "warning"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip
    assert proc.stdin is not None
    assert proc.stdout is not None
    try:
        proc.stdin.write(
            ("\n".join(["2026-12-07 03:00:00,000 ERROR app: boom", *TRACEBACK]) + "\n").encode()
        )
        proc.stdin.flush()
        record = json.loads(proc.stdout.readline())  # arrives while stdin is still open
        assert record["Attributes"]["exception.type"] == "KeyError"
        proc.stdin.close()
        assert proc.wait(timeout=30) == 0
    finally:
        proc.kill()
        proc.wait()
        proc.stdout.close()
        assert proc.stderr is not None
        proc.stderr.close()


_ACCESS_PART = st.text(alphabet=st.characters(blacklist_characters='"\n\\\r'), max_size=12)


@given(
    remote=st.sampled_from(["10.0.0.1", "::1", "-"]),
    user=st.sampled_from(["-", "frank"]),
    when=st.sampled_from(
        ["10/Oct/2000:13:55:36 -0700", "07/Dec/2026:03:00:00 +0100", "yesterday noon"]
    ),
    request=st.sampled_from(["GET /a?b=1 HTTP/1.1", "POST /f HTTP/1.0", "garbage", "GET /x"]),
    status=st.sampled_from(["200", "404", "503"]),
    size=st.sampled_from(["-", "0", "1234"]),
    tail=st.one_of(
        st.just(""),
        st.builds(lambda r, a: f' "{r}" "{a}"', _ACCESS_PART, _ACCESS_PART),
        st.builds(lambda r, a, x: f' "{r}" "{a}" {x}', _ACCESS_PART, _ACCESS_PART, _ACCESS_PART),
    ),
    fmt=st.sampled_from(["nginx", "apache"]),
)
def test_the_access_fast_path_gives_what_the_general_path_gives(
    remote: str, user: str, when: str, request: str, status: str, size: str, tail: str, fmt: str
) -> None:
    """``--format nginx --schema otel`` takes a shortcut; its records are the general ones."""
    from podkit.adapter.logs.parsers import make_parser, parse_line
    from podkit.adapter.logs.schema import to_otel

    line = f'{remote} - {user} [{when}] "{request}" {status} {size}{tail}'
    n = LogNormaliser(
        format=fmt, schema="otel", year=2026, zone=PARIS, attributes={"log.file.path": "/a"}
    )
    fast = n.record([line], "2026-12-07T00:00:00Z")
    entry = parse_line(line, make_parser(fmt, year=2026))
    general = to_otel(
        entry, observed="2026-12-07T00:00:00Z", zone=PARIS, attributes={"log.file.path": "/a"}
    )
    assert json.dumps(fast) == json.dumps(general)


@given(
    user=st.sampled_from(["-", "frank"]),
    when=st.sampled_from(["07/Dec/2026:03:00:00 +0100", "yesterday noon"]),
    request=st.sampled_from(["GET /a?b=1 HTTP/1.1", "POST /f HTTP/1.0", "garbage", "GET /x"]),
    status=st.sampled_from(["200", "404", "503"]),
    size=st.sampled_from(["-", "1234"]),
    tail=st.one_of(
        st.just(""),
        st.builds(lambda r, a: f' "{r}" "{a}"', _ACCESS_PART, _ACCESS_PART),
        st.builds(lambda r, a, x: f' "{r}" "{a}" {x}', _ACCESS_PART, _ACCESS_PART, _ACCESS_PART),
    ),
    ident=st.sampled_from(["-", "id"]),
)
def test_the_ecs_access_fast_path_gives_what_the_general_path_gives(
    user: str, when: str, request: str, status: str, size: str, tail: str, ident: str
) -> None:
    from podkit.adapter.logs.parsers import make_parser, parse_line
    from podkit.adapter.logs.schema import to_ecs

    line = f'10.0.0.1 {ident} {user} [{when}] "{request}" {status} {size}{tail}'
    fixed = {"log.file.path": "/a"}
    n = LogNormaliser(format="nginx", schema="ecs", year=2026, zone=PARIS, attributes=fixed)
    fast = n.record([line], "2026-12-07T00:00:00Z")
    entry = parse_line(line, make_parser("nginx", year=2026))
    assert fast == to_ecs(entry, observed="2026-12-07T00:00:00Z", zone=PARIS, attributes=fixed)
