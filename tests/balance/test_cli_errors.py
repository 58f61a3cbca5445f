"""Bad flags and files are one-line errors with exit status 2, never tracebacks."""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

import pytest


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "podkit", *args], capture_output=True, text=True, timeout=30
    )


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["balance"], "give at least one --backend or a --backends-file"),
        (["balance", "--backend", "ftp://x:1"], "expected a backend URL"),
        (["balance", "--backend", "http://a:1 weight=0"], "weight must be"),
        (["balance", "--backend", "http://a:1", "--probe", "ready"], "starting with /"),
        (["balance", "--backend", "http://a:1", "--hash-on", "query:x"], "--hash-on"),
        (["balance", "--backend", "http://a:1", "--trusted-proxy", "x"], "--trusted-proxy"),
        (["cache", "--upstream", "http://a:1/path"], "no path"),
        (
            ["cache", "--upstream", "http://a:1", "--max-object", "2MiB", "--max-size", "1MiB"],
            "--max-object",
        ),
        (["cache", "--upstream", "http://a:1", "--purge-allow", "nope"], "--purge-allow"),
        (["balance", "--backend", "http://a:1", "--workers-timeout", "0s"], "--workers-timeout"),
        (["cache", "--upstream", "http://a:1", "--workers-timeout", "0s"], "--workers-timeout"),
        (["balance", "--backend", "http://a:1", "--retry-buffer", "lots"], "--retry-buffer"),
        (
            ["balance", "--backend", "http://a:1", "--hash-on", "cookie:s"],
            "--hash-on applies only to --policy hash (the policy is round-robin)",
        ),
        (
            ["balance", "--backend", "http://a:1", "--policy", "least-request",
             "--bounded-load", "1.25", "--hash-algorithm", "ring"],
            "--hash-algorithm and --bounded-load apply only to --policy hash",
        ),
        (["balance", "--backend", "127.0.0.1:1"], "such as http://127.0.0.1:8001"),
        (["cache", "--upstream", "127.0.0.1:1"], "such as http://127.0.0.1:8001"),
        (["proxy", "--upstream", "127.0.0.1:1"], "with its scheme such as http://127.0.0.1:1"),
        (
            ["tls", "--cert", "c", "--key", "k", "--upstream", "127.0.0.1:1"],
            "with its scheme such as http://127.0.0.1:1",
        ),
    ],
)  # fmt: skip
def test_bad_flags_exit_2_with_one_line(args: list[str], message: str) -> None:
    result = run(*args)
    assert result.returncode == 2
    assert message in result.stderr
    assert "Traceback" not in result.stderr


def test_a_bad_backends_file_at_start_names_the_line(tmp_path: Path) -> None:
    path = tmp_path / "backends"
    path.write_text("http://127.0.0.1:1\nhttp://127.0.0.1:2 weight=x\n")
    result = run("balance", "--backends-file", str(path))
    assert result.returncode == 2
    assert f"{path}: line 2: weight must be" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize(
    "args", [["balance", "--backend", "http://127.0.0.1:1"], ["cache", "--upstream", "http://a:1"]]
)
def test_workers_on_a_taken_port_exit_1_with_one_line(args: list[str]) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = run(*args, "--listen", f"127.0.0.1:{port}", "--workers", "2")
    assert result.returncode == 1
    assert f"error: cannot listen on 127.0.0.1:{port}" in result.stderr
    assert "Traceback" not in result.stderr
