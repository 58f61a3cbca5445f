"""``podkit logship`` as a real process: rotation, SIGKILL and restart, sink outages, sinks."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
import time
import urllib.request
from collections import Counter
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import redis

from podkit.testing import PodkitProcess, RedisServer, free_port, wait_http
from podkit.testing.net import wait_for

BATCH = 50


def write_lines(path: Path, start: int, stop: int) -> None:
    with path.open("a", encoding="utf-8") as out:
        for seq in range(start, stop):
            out.write(json.dumps({"seq": seq, "level": "info", "msg": f"line {seq}"}) + "\n")


def delivered(sink: Path) -> list[int]:
    """The sequence numbers in the file sink, in order (a line still being written is left
    out)."""
    if not sink.exists():
        return []
    lines = sink.read_bytes().split(b"\n")[:-1]
    return [int(json.loads(line)["fields"]["seq"]) for line in lines]


def shipper(tmp: Path, sink_url: str, *extra: str) -> PodkitProcess:
    return PodkitProcess(
        "logship",
        "--path", str(tmp / "app.log"),
        "--to", sink_url,
        "--state", str(tmp / "state.json"),
        "--format", "json",
        "--batch", str(BATCH),
        "--flush", "100ms",
        "--poll", "50ms",
        "--close-after", "1s",
        *extra,
    )  # fmt: skip


def test_rotation_twice_and_sigkill_deliver_every_line_once_outside_the_last_batch(
    tmp_path: Path,
) -> None:
    """Rename rotation, SIGKILL, copy-truncate while down, restart, copy-truncate again: every
    line arrives, and the only lines sent twice are those of the last batch the killed shipper
    delivered (acknowledged, not yet checkpointed)."""
    log = tmp_path / "app.log"
    sink = tmp_path / "sink.jsonl"
    write_lines(log, 0, 1000)
    first = shipper(tmp_path, f"file://{sink}")
    with first:
        wait_for(lambda: len(delivered(sink)) >= 500, timeout=20, what="first lines shipped")
        # Rotation 1, by rename: the writer still writes a few lines to the old file.
        os.rename(log, tmp_path / "app.log.1")
        write_lines(tmp_path / "app.log.1", 1000, 1050)
        write_lines(log, 1050, 2000)
        wait_for(lambda: len(set(delivered(sink))) >= 1500, timeout=20, what="rotation 1")
        write_lines(log, 2000, 2500)
        # Killed while it ships these 500 lines (10 batches), or just after.
        wait_for(lambda: max(delivered(sink)) >= 2000, timeout=20, what="shipping under way")
        first.kill()
    last_batch = set(delivered(sink)[-BATCH:])  # at most the last batch sent before the kill
    # While the shipper is down: more lines, then rotation 2 by copy-truncate.
    write_lines(log, 2500, 3000)
    shutil.copyfile(log, tmp_path / "app.log.2")
    with log.open("r+") as handle:
        handle.truncate(0)
    write_lines(log, 3000, 4000)
    with shipper(tmp_path, f"file://{sink}") as second:
        wait_for(
            lambda: set(delivered(sink)) >= set(range(4000)),
            timeout=30,
            what="every line after the restart",
        )
        # A third rotation, by copy-truncate, while the shipper runs.
        write_lines(log, 4000, 4100)
        shutil.copyfile(log, tmp_path / "app.log.3")
        with log.open("r+") as handle:
            handle.truncate(0)
        write_lines(log, 4100, 4200)
        wait_for(
            lambda: set(delivered(sink)) >= set(range(4200)),
            timeout=30,
            what="every line after the live copy-truncate",
        )
        output = second.output()
    counts = Counter(delivered(sink))
    duplicates = [seq for seq, n in counts.items() if n > 1]
    assert set(counts) == set(range(4200))
    assert max(counts.values()) <= 2
    outside = sorted(set(duplicates) - last_batch)
    assert not outside, f"{len(outside)} lines sent twice outside the last batch: {outside[:10]}"
    assert output.count('"how":"copy"') == 2, output
    assert "reading the rest from its copy" in output


class _Collector(BaseHTTPRequestHandler):
    lines: list[bytes]
    status: list[int]

    def do_POST(self) -> None:
        length = int(self.headers["Content-Length"])
        body = self.rfile.read(length)
        status = type(self).status[0]
        if status < 300:
            type(self).lines.extend(body.splitlines())
        self.send_response(status)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: object) -> None:
        return


class HTTPCollector:
    """A JSON-lines sink on a fixed port that can be stopped and started again (an outage)."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.handler = type("Handler", (_Collector,), {"lines": [], "status": [204]})
        self.server: ThreadingHTTPServer | None = None
        self.thread: threading.Thread | None = None

    @property
    def lines(self) -> list[bytes]:
        return list(self.handler.lines)

    def start(self) -> None:
        self.server = ThreadingHTTPServer(("127.0.0.1", self.port), self.handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def stop(self) -> None:
        if self.server is not None and self.thread is not None:
            self.server.shutdown()
            self.server.server_close()
            self.thread.join()
            self.server = None


@pytest.fixture
def collector() -> Iterator[HTTPCollector]:
    sink = HTTPCollector(free_port())
    sink.start()
    yield sink
    sink.stop()


def shipper_status(admin_port: int) -> dict[str, object]:
    with urllib.request.urlopen(f"http://127.0.0.1:{admin_port}/logship", timeout=2) as answer:
        status: dict[str, object] = json.loads(answer.read())
        return status


@pytest.mark.parametrize(
    ("outage_seconds", "retry_max"),
    [
        # The case: 10 s down, with the default 5 s cap on the retry delay.
        pytest.param(10.0, 5.0, marks=pytest.mark.slow),
        # The same course in less time: the delay climbs to its cap and stays there, reading
        # pauses at the bounded buffer, then everything arrives once.
        (3.0, 0.5),
    ],
)
def test_a_sink_outage_loses_nothing_and_pauses_reading(
    tmp_path: Path, collector: HTTPCollector, outage_seconds: float, retry_max: float
) -> None:
    """The HTTP sink is down for longer than the backoff takes to reach its cap: reading
    stops at the bounded buffer, retries wait at most the cap, then all arrives, once each."""
    log = tmp_path / "app.log"
    admin = free_port()
    write_lines(log, 0, 200)
    url = f"http://127.0.0.1:{collector.port}/ingest"
    args = (
        "--buffer-batches", "2",
        "--admin", f"127.0.0.1:{admin}",
        "--retry-max", f"{int(retry_max * 1000)}ms",
    )  # fmt: skip
    with shipper(tmp_path, url, *args) as proc:
        wait_http("127.0.0.1", admin, "/readyz", timeout=20)
        wait_for(lambda: len(collector.lines) >= 200, timeout=20, what="lines before the outage")
        collector.stop()
        write_lines(log, 200, 2000)
        outage_ends = time.monotonic() + outage_seconds
        peak_unacked = 0
        delays: list[float] = []
        while time.monotonic() < outage_ends:
            status = shipper_status(admin)
            unacked = int(str(status["lines_read"])) - int(str(status["lines_shipped"]))
            peak_unacked = max(peak_unacked, unacked)
            delays.append(float(str(status["retry_delay"])))
            time.sleep(0.1)
        assert status["sink_up"] is False
        # One batch being retried, the buffer, and the batch being filled: nothing more.
        assert peak_unacked <= (2 + 2) * BATCH
        assert int(str(status["lines_read"])) < 2000  # reading paused
        # The backoff reached its cap (±20 % jitter) and never went past it.
        assert max(delays) >= 0.8 * retry_max
        assert max(delays) <= 1.2 * retry_max
        with urllib.request.urlopen(f"http://127.0.0.1:{admin}/metrics", timeout=2) as answer:
            assert b"logship_retry_delay_seconds 0.0" not in answer.read()
        collector.start()
        wait_for(
            lambda: len(collector.lines) >= 2000, timeout=30, what="every line after the outage"
        )
        wait_for(lambda: shipper_status(admin)["retry_delay"] == 0.0, timeout=10)
        seqs = Counter(json.loads(line)["fields"]["seq"] for line in collector.lines)
        assert set(seqs) == set(range(2000))
        assert all(n == 1 for n in seqs.values())
        assert "sink unavailable; retrying" in proc.output()


def test_a_batch_the_sink_rejects_is_dropped_counted_and_shipping_goes_on(
    tmp_path: Path, collector: HTTPCollector
) -> None:
    """A 400 answer drops that batch (logged, counted); later lines are delivered."""
    log = tmp_path / "app.log"
    admin = free_port()
    collector.handler.status[0] = 400
    url = f"http://127.0.0.1:{collector.port}/ingest"
    with shipper(tmp_path, url, "--admin", f"127.0.0.1:{admin}") as proc:
        wait_http("127.0.0.1", admin, "/readyz", timeout=20)
        write_lines(log, 0, 10)
        wait_for(lambda: shipper_status(admin)["lines_dropped"] == 10, timeout=20)
        collector.handler.status[0] = 204
        write_lines(log, 10, 20)
        wait_for(lambda: len(collector.lines) == 10, timeout=20, what="the later lines")
        with urllib.request.urlopen(f"http://127.0.0.1:{admin}/metrics", timeout=2) as answer:
            metrics = answer.read()
        assert b'logship_lines_dropped_total{reason="rejected"} 10.0' in metrics
        assert "batch dropped" in proc.output()
    assert [json.loads(line)["fields"]["seq"] for line in collector.lines] == list(range(10, 20))


def test_give_up_after_drops_and_counts_what_a_failing_sink_never_took(
    tmp_path: Path, collector: HTTPCollector
) -> None:
    """With --give-up-after, batches a sink keeps failing (503) are dropped and counted."""
    admin = free_port()
    collector.handler.status[0] = 503
    url = f"http://127.0.0.1:{collector.port}/ingest"
    args = ("--admin", f"127.0.0.1:{admin}", "--give-up-after", "300ms")
    with shipper(tmp_path, url, *args):
        wait_http("127.0.0.1", admin, "/readyz", timeout=20)
        write_lines(tmp_path / "app.log", 0, 30)
        wait_for(lambda: shipper_status(admin)["lines_dropped"] == 30, timeout=20)
        with urllib.request.urlopen(f"http://127.0.0.1:{admin}/metrics", timeout=2) as answer:
            metrics = answer.read()
        assert b'logship_lines_dropped_total{reason="retries_exhausted"} 30.0' in metrics
    assert collector.lines == []


def test_records_are_added_to_a_redis_stream(tmp_path: Path, redis_server: RedisServer) -> None:
    """With a redis:// sink every line becomes one stream entry holding the JSON record."""
    write_lines(tmp_path / "app.log", 0, 120)
    client = redis.Redis(host=redis_server.host, port=redis_server.port)
    url = f"redis://{redis_server.host}:{redis_server.port}/0/logs"
    with shipper(tmp_path, url):
        wait_for(lambda: client.xlen("logs") >= 120, timeout=20, what="120 stream entries")
    entries = client.xrange("logs")
    records = [json.loads(fields[b"record"]) for _, fields in entries]
    assert [r["fields"]["seq"] for r in records] == list(range(120))
    assert records[0]["message"] == "line 0"
    assert records[0]["source"] == str(tmp_path / "app.log")
    client.close()


def test_an_unknown_sink_is_a_one_line_usage_error(tmp_path: Path) -> None:
    """A sink URL with an unknown scheme exits 2 with one error line, no traceback."""
    result = subprocess.run(
        [
            *(sys.executable, "-m", "podkit", "logship"),
            *("--path", str(tmp_path / "*.log"), "--to", "ftp://example/logs"),
        ],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 2
    assert "podkit logship: error:" in result.stderr
    assert "Traceback" not in result.stderr


def test_a_path_naming_a_directory_is_a_one_line_usage_error(tmp_path: Path) -> None:
    """A directory is not a file to tail: the error suggests the glob of its files."""
    result = subprocess.run(
        [
            *(sys.executable, "-m", "podkit", "logship"),
            *("--path", str(tmp_path), "--to", f"file://{tmp_path}/sink.jsonl"),
        ],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 2
    assert result.stderr.strip() == (
        f"podkit logship: error: --path: {tmp_path} is a directory: give a glob of its files, "
        f"such as '{tmp_path}/*.log'"
    )


@pytest.mark.parametrize("where", ["missing directory", "empty directory"])
def test_a_glob_that_matches_nothing_warns_then_ships_the_file_that_appears(
    tmp_path: Path, where: str
) -> None:
    """Not an error (the application may create its log later), but a warning that says why,
    and the file is shipped once it appears."""
    logs = tmp_path / "logs" if where == "missing directory" else tmp_path
    sink = tmp_path / "sink.jsonl"
    pattern = str(logs / "*.log")
    with PodkitProcess(
        "logship", "--path", pattern, "--to", f"file://{sink}", "--format", "json",
        "--flush", "100ms", "--poll", "50ms",
    ) as process:  # fmt: skip
        wait_for(lambda: "matches no file" in process.output(), timeout=20, what="the warning")
        warning = next(
            json.loads(line) for line in process.output().splitlines() if "matches no file" in line
        )
        assert warning["level"] == "warning"
        assert warning["path"] == pattern
        expected = (
            f"its directory {logs} does not exist"
            if where == "missing directory"
            else ("no file matches it yet")
        )
        assert warning["reason"] == expected
        logs.mkdir(exist_ok=True)
        write_lines(logs / "app.log", 0, 3)
        wait_for(lambda: delivered(sink) == [0, 1, 2], timeout=20, what="the new file shipped")


MIXED_SAMPLES = {
    "nginx": '10.1.1.{n} - - [10/Oct/2000:13:55:36 -0700] "GET /search?q=logs&page={n} '
    'HTTP/1.1" 200 51 "-" "curl/8.5"',
    "apache": '10.0.0.{n} - - [01/Feb/2024:00:00:01 +0100] "POST /form HTTP/1.1" 503 -',
    "syslog": "<34>Oct 11 22:14:15 mymachine su: attempt={n} user=bob",
    "json": '{{"msg":"request","n":{n},"level":"info"}}',
    "logfmt": "level=info msg=request n={n}",
    "raw": "plain words number {n}",
}


def test_auto_gives_every_line_of_mixed_files_its_own_format(tmp_path: Path) -> None:
    """--format auto over files in different formats, and over one file that mixes them
    line by line: each record names the format its line is in."""
    folder = tmp_path / "logs"
    folder.mkdir()
    expected: dict[tuple[str, int], str] = {}

    def append(path: Path, fmt: str, n: int) -> None:
        with path.open("ab") as out:
            expected[(str(path), out.tell())] = fmt
            out.write(MIXED_SAMPLES[fmt].format(n=n).encode() + b"\n")

    formats = sorted(MIXED_SAMPLES)
    for fmt in formats:  # one file per format
        for n in range(20):
            append(folder / f"{fmt}.log", fmt, n)
    for n in range(120):  # one file with the formats interleaved, logfmt before each other
        append(folder / "mixed.log", formats[n % len(formats)] if n % 2 else "logfmt", n)
    sink = tmp_path / "sink.jsonl"
    with PodkitProcess(
        "logship",
        "--path", str(folder / "*.log"),
        "--to", f"file://{sink}",
        "--format", "auto",
        "--flush", "100ms",
        "--poll", "50ms",
    ):  # fmt: skip
        wait_for(
            lambda: sink.exists() and len(sink.read_bytes().splitlines()) >= len(expected),
            timeout=20,
            what="every line shipped",
        )
    records = [json.loads(line) for line in sink.read_text(encoding="utf-8").splitlines()]
    got = {(r["source"], r["offset"]): r["format"] for r in records}
    assert len(records) == len(expected)
    wrong = {key: (got.get(key), fmt) for key, fmt in expected.items() if got.get(key) != fmt}
    assert not wrong, f"{len(wrong)} lines with the wrong format, e.g. {list(wrong.items())[:3]}"
