"""The engine's server limits, one set of flags for every HTTP-serving command.

``podkit balance``, ``podkit cache`` and ``podkit tls`` run as real processes (one process and
``--workers 2``) in front of a real ``podkit whoami``; a limit given on the command line is the
one their listener answers with. Nonsense values are one-line errors with exit status 2.
"""

from __future__ import annotations

import http.client
import socket
import ssl
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass

import click
import pytest

from podkit.engines.http import ServerLimits
from podkit.engines.http.cli_options import LIMIT_PARAMS, server_limits
from podkit.errors import ConfigError
from podkit.testing import PodkitProcess, free_port, wait_http, wait_port
from tests.sidecar.pki import TestCA

LIMITS = ("--max-header-bytes", "1KiB", "--max-body-bytes", "1KiB", "--header-timeout", "300ms")


@pytest.fixture(scope="module")
def whoami() -> Iterator[int]:
    port = free_port()
    with PodkitProcess("whoami", "--listen", f"127.0.0.1:{port}", "--name", "w1"):
        wait_port("127.0.0.1", port)
        yield port


@dataclass
class Served:
    """A running command: its port and, for tls, the context its clients need."""

    port: int
    context: ssl.SSLContext | None = None

    def connection(self) -> http.client.HTTPConnection:
        if self.context is None:
            return http.client.HTTPConnection("127.0.0.1", self.port, timeout=5)
        return http.client.HTTPSConnection("127.0.0.1", self.port, timeout=5, context=self.context)

    def status(self, method: str, headers: dict[str, str], body: bytes | None = None) -> int:
        conn = self.connection()
        try:
            conn.request(method, "/limits", body=body, headers=headers)
            response = conn.getresponse()
            response.read()
            return response.status
        finally:
            conn.close()

    def raw(self) -> socket.socket:
        sock = socket.create_connection(("127.0.0.1", self.port), timeout=5)
        if self.context is None:
            return sock
        return self.context.wrap_socket(sock, server_hostname="127.0.0.1")


@pytest.fixture(
    params=[
        ("balance", 1),
        ("balance", 2),
        ("cache", 1),
        ("cache", 2),
        ("tls", 1),
        ("tls", 2),
    ],
    ids=lambda p: f"{p[0]}-workers{p[1]}",
    scope="module",
)
def served(
    request: pytest.FixtureRequest, whoami: int, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Served]:
    command, workers = request.param
    port, admin = free_port(), free_port()
    upstream = f"http://127.0.0.1:{whoami}"
    context: ssl.SSLContext | None = None
    if command == "balance":
        args = ["balance", "--backend", upstream]
    elif command == "cache":
        args = ["cache", "--upstream", upstream]
    else:
        ca = TestCA(tmp_path_factory.mktemp("ca"))
        pair = ca.issue("server", common_name="localhost")
        args = ["tls", "--upstream", upstream, "--cert", str(pair.cert), "--key", str(pair.key)]
        context = ssl.create_default_context(cafile=str(ca.path))
    with PodkitProcess(
        *args,
        "--listen", f"127.0.0.1:{port}",
        "--admin", f"127.0.0.1:{admin}",
        "--workers", str(workers),
        *LIMITS,
    ) as proc:  # fmt: skip
        wait_http("127.0.0.1", admin, "/readyz", timeout=30)
        yield Served(port, context)
        assert "Traceback" not in proc.output()


def test_the_limits_given_are_the_ones_answered_with(served: Served) -> None:
    """Within the limits a request is forwarded; a 2 KiB header gets 431, a 2 KiB body 413,
    on every connection (with --workers 2, whichever worker accepts it)."""
    for _ in range(4):
        assert served.status("GET", {"X-Small": "a" * 100}) == 200
        assert served.status("GET", {"X-Big": "a" * 2048}) == 431
        assert served.status("POST", {"Content-Type": "text/plain"}, b"b" * 2048) == 413


def test_a_head_slower_than_the_header_timeout_gets_408(served: Served) -> None:
    with served.raw() as sock:
        sock.sendall(b"GET /limits HTTP/1.1\r\nHost: x\r\n")  # never finished
        answer = sock.recv(4096)
    assert answer.startswith(b"HTTP/1.1 408"), answer


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "podkit", *args],
        capture_output=True,
        text=True,
        timeout=30,
        stdin=subprocess.DEVNULL,
        check=False,
    )


COMMANDS = {
    "proxy": ["proxy", "--upstream", "http://127.0.0.1:1"],
    "balance": ["balance", "--backend", "http://127.0.0.1:1"],
    "cache": ["cache", "--upstream", "http://127.0.0.1:1"],
    "tls": ["tls", "--upstream", "http://127.0.0.1:1", "--cert", "c.pem", "--key", "k.pem"],
}


@pytest.mark.parametrize("command", sorted(COMMANDS))
@pytest.mark.parametrize(
    ("flag", "value"),
    [
        ("--max-header-bytes", "0"),
        ("--max-uri-bytes", "0"),
        ("--header-timeout", "0s"),
        ("--keepalive-timeout", "0ms"),
        ("--connect-timeout", "0s"),
        ("--timeout", "0s"),
    ],
)
def test_a_nonsense_limit_is_one_line_and_exit_2(command: str, flag: str, value: str) -> None:
    result = run(*COMMANDS[command], "--listen", "127.0.0.1:0", flag, value)
    assert result.returncode == 2, result.stderr
    assert result.stderr.strip() == f"podkit {command}: error: {flag}: must be more than 0, got 0"


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_a_negative_count_is_one_line_and_exit_2(command: str) -> None:
    result = run(*COMMANDS[command], "--max-connections", "-1")
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1
    assert lines[0].startswith(f"podkit {command}: error:")
    assert "--max-connections" in lines[0]


def _command(name: str) -> click.Command:
    from podkit.cli import cli

    found = cli.get_command(click.Context(cli), name)
    assert isinstance(found, click.Command)
    return found


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_every_command_has_every_limit_with_the_engine_default(command: str) -> None:
    ctx = click.Context(_command(command))
    params = {p.name: p for p in ctx.command.params if isinstance(p, click.Option)}
    values = {}
    for name in LIMIT_PARAMS:
        assert name in params, f"podkit {command} has no --{name.replace('_', '-')}"
        values[name] = params[name].type_cast_value(ctx, params[name].get_default(ctx))
    assert server_limits(**values) == ServerLimits()


def test_server_limits_validates_each_value() -> None:
    assert server_limits(max_body_bytes=0).max_body_bytes == 0
    assert server_limits(max_header_bytes=1024).max_header_bytes == 1024
    with pytest.raises(ConfigError, match="--max-pipeline: must be more than 0"):
        server_limits(max_pipeline=0)
    with pytest.raises(ConfigError, match="--body-timeout: must be more than 0"):
        server_limits(body_timeout=-1.0)
    with pytest.raises(ConfigError, match="--max-body-bytes: must be 0 or more"):
        server_limits(max_body_bytes=-1)
