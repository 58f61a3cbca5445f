"""Access logs and request ids of every HTTP component, as real processes in front of whoami."""

from __future__ import annotations

import http.client
import json
import re
import signal
import socket
import ssl
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from podkit.testing import PodkitProcess, free_port, wait_http, wait_port
from podkit.testing.net import wait_for
from tests.sidecar.pki import TestCA


@pytest.fixture(scope="module")
def whoami() -> Iterator[int]:
    port = free_port()
    with PodkitProcess("whoami", "--listen", f"127.0.0.1:{port}", "--log-level", "warning"):
        wait_http("127.0.0.1", port, "/ready")
        yield port


class Front:
    """A component in front of whoami, and a client for it."""

    def __init__(self, kind: str, upstream: int, tmp: Path, *extra: str) -> None:
        self.kind = kind
        self.port = free_port()
        target = f"http://127.0.0.1:{upstream}"
        common = ("--listen", f"127.0.0.1:{self.port}", "--log-level", "warning", *extra)
        self.context: ssl.SSLContext | None = None
        if kind == "proxy":
            argv: tuple[str, ...] = ("proxy", *common, "--upstream", target)
        elif kind == "balance":
            argv = ("balance", *common, "--backend", target)
        elif kind == "cache":
            argv = ("cache", *common, "--upstream", target)
        else:
            ca = TestCA(tmp)
            pair = ca.issue("server", common_name="localhost", dns=("localhost",))
            argv = (
                "tls", *common, "--cert", str(pair.cert), "--key", str(pair.key),
                "--upstream", target,
            )  # fmt: skip
            self.context = ssl.create_default_context(cafile=str(ca.path))
        self.process = PodkitProcess(*argv)

    def __enter__(self) -> Front:
        self.process.__enter__()
        wait_port("127.0.0.1", self.port)
        if self.kind == "balance":
            wait_for(lambda: self.get("/ready")[0] == 200)
        return self

    def __exit__(self, *exc: object) -> None:
        self.process.__exit__(None, None, None)

    def get(self, path: str, **headers: str) -> tuple[int, bytes]:
        if self.context is not None:
            conn: http.client.HTTPConnection = http.client.HTTPSConnection(
                "localhost", self.port, context=self.context, timeout=10
            )
            conn.sock = self.context.wrap_socket(
                socket.create_connection(("127.0.0.1", self.port), timeout=10),
                server_hostname="localhost",
            )
        else:
            conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
        try:
            conn.request("GET", path, headers=headers)
            response = conn.getresponse()
            return response.status, response.read()
        finally:
            conn.close()

    def access_lines(self) -> list[dict[str, Any]]:
        return [
            json.loads(line)
            for line in self.process.output().splitlines()
            if line.startswith("{") and '"request_id"' in line
        ]

    def wait_lines(self, count: int) -> list[dict[str, Any]]:
        wait_for(lambda: len(self.access_lines()) >= count, what=f"{count} access-log lines")
        return self.access_lines()


KINDS = ["proxy", "balance", "cache", "tls"]


@pytest.mark.parametrize("kind", KINDS)
def test_each_request_gets_one_json_line_with_every_field(
    kind: str, whoami: int, tmp_path: Path
) -> None:
    with Front(kind, whoami, tmp_path) as front:
        status, body = front.get("/hello?x=1", **{"User-Agent": "probe/1"})
        assert status == 200
        seen_id = json.loads(body)["headers"]["X-Request-Id"]
        lines = [x for x in front.wait_lines(1) if x["target"] == "/hello?x=1"]
        assert len(lines) == 1
        line = lines[0]
        assert line["component"] == kind
        assert line["client"] == "127.0.0.1"
        assert line["method"] == "GET"
        assert line["status"] == 200
        assert line["bytes"] == len(body)
        assert line["duration"] >= 0
        assert line["upstream"] == f"127.0.0.1:{whoami}"
        assert line["upstream_time"] is not None
        assert line["user_agent"] == "probe/1"
        assert re.fullmatch(r"[0-9a-f]{32}", line["request_id"])
        assert line["request_id"] == seen_id  # the same id went upstream
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", line["ts"])
        assert (line["cache"] is not None) == (kind == "cache")  # X-Cache: MISS, PASS...


@pytest.mark.parametrize("kind", ["proxy", "cache"])
def test_a_clients_request_id_is_kept_and_passed_upstream(
    kind: str, whoami: int, tmp_path: Path
) -> None:
    with Front(kind, whoami, tmp_path) as front:
        _, body = front.get("/", **{"X-Request-Id": "abc-123"})
        assert json.loads(body)["headers"]["X-Request-Id"] == "abc-123"
        assert front.wait_lines(1)[-1]["request_id"] == "abc-123"


def test_a_dead_upstream_is_logged_with_its_address_and_status(tmp_path: Path) -> None:
    dead = free_port()
    with Front("proxy", dead, tmp_path) as front:
        assert front.get("/x")[0] == 502
        line = front.wait_lines(1)[-1]
        assert (line["status"], line["upstream"]) == (502, f"127.0.0.1:{dead}")


def test_the_combined_format_is_nginx_s(whoami: int, tmp_path: Path) -> None:
    with Front("proxy", whoami, tmp_path, "--access-log-format", "combined") as front:
        front.get("/sized/10", **{"User-Agent": 'odd"agent', "Referer": "http://r.example/"})
        pattern = re.compile(
            r"127\.0\.0\.1 - - \[\d\d/\w{3}/\d{4}:\d\d:\d\d:\d\d [+-]\d{4}\] "
            r'"GET /sized/10 HTTP/1\.1" 200 10 "http://r\.example/" "odd\\x22agent"'
        )
        wait_for(lambda: any(pattern.fullmatch(x) for x in front.process.output().splitlines()))


def test_a_file_log_is_reopened_on_sighup_and_off_writes_nothing(
    whoami: int, tmp_path: Path
) -> None:
    path = tmp_path / "access.log"
    with Front("proxy", whoami, tmp_path, "--access-log", str(path)) as front:
        front.get("/one")
        wait_for(lambda: path.exists() and "/one" in path.read_text())
        path.rename(tmp_path / "access.log.1")
        front.process.signal(signal.SIGHUP)
        wait_for(lambda: path.exists())
        front.get("/two")
        wait_for(lambda: "/two" in path.read_text())
        assert "/two" not in (tmp_path / "access.log.1").read_text()
        assert front.access_lines() == []  # nothing on standard output
    with Front("proxy", whoami, tmp_path, "--access-log", "off") as front:
        front.get("/three")
        front.process.signal(signal.SIGTERM)
        front.process.wait()
        assert "/three" not in front.process.output()


def test_sampling_keeps_every_error_and_a_fraction_of_the_rest(whoami: int, tmp_path: Path) -> None:
    with Front("proxy", whoami, tmp_path, "--access-log-sample", "10%") as front:
        for _ in range(200):
            front.get("/status/200")
        for _ in range(20):
            front.get("/status/404")
        front.process.signal(signal.SIGTERM)
        front.process.wait()
        lines = front.access_lines()
        assert sum(x["status"] == 404 for x in lines) == 20
        assert 2 <= sum(x["status"] == 200 for x in lines) <= 60


@pytest.mark.parametrize("value", ["0%", "150%", "lots"])
def test_a_bad_sample_is_a_usage_error(value: str, tmp_path: Path) -> None:
    front = Front("proxy", free_port(), tmp_path, "--access-log-sample", value)
    with front.process:
        assert front.process.wait(timeout=20) == 2
        assert "--access-log-sample" in front.process.output()
