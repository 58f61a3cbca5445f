"""``podkit adapt``: bad input is one line naming the problem, exit code 2."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "podkit", "adapt", *args],
        capture_output=True,
        text=True,
        timeout=30,
        stdin=subprocess.DEVNULL,
        check=False,
    )


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["health", "--listen", "127.0.0.1:0"], "give at least one --check"),
        (["health", "--listen", "127.0.0.1:0", "--check", "x=ftp://a"], "unknown target"),
        (
            [
                "health",
                "--listen",
                "127.0.0.1:0",
                "--check",
                "a=tcp://h:1",
                "--ready-requires",
                "b",
            ],
            "unknown checks: b",
        ),
        (
            ["health", "--listen", "127.0.0.1:0", "--check", "a=tcp://h:1", "--interval", "0s"],
            "more than 0",
        ),
        (["metrics", "--listen", "127.0.0.1:0"], "give exactly one source"),
        (
            ["metrics", "--listen", "127.0.0.1:0", "--redis", "redis://h", "--memcached", "h:1"],
            "give exactly one source",
        ),
        (["metrics", "--listen", "127.0.0.1:0", "--json", "http://h/"], "--json needs --map"),
        (["metrics", "--listen", "127.0.0.1:0", "--redis", "http://h"], "expected redis://"),
        (["metrics", "--listen", "127.0.0.1:0", "--nginx-status", "h:80"], "http(s):// URL"),
        (
            ["metrics", "--listen", "127.0.0.1:0", "--command", "true", "--map", "/nonexistent"],
            "/nonexistent: cannot read file",
        ),
        (
            ["metrics", "--listen", "127.0.0.1:0", "--redis", "redis://h", "--prefix", "1x"],
            "--prefix",
        ),
        (["logs", "--in", "/nonexistent.log"], "no such file"),
        (["logs", "--timezone", "Mars/Olympus"], "unknown time zone"),
        (["logs", "--out", "ftp://h/x"], "ftp://h/x"),
        (["logs", "--schema", "gelf"], "'gelf' is not one of"),
    ],
)
def test_bad_adapter_input_is_one_line_and_exit_2(args: list[str], message: str) -> None:
    result = run(*args)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(f"podkit adapt {args[0]}: error: ")
    assert message in lines[0]


def test_the_adapters_example_pod_file_is_valid(tmp_path: Path) -> None:
    example = Path(__file__).resolve().parents[2] / "examples" / "adapters.yaml"
    result = subprocess.run(
        [sys.executable, "-m", "podkit", "up", "--check", "--state-dir", str(tmp_path),
         str(example)],
        capture_output=True, text=True, timeout=30, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
