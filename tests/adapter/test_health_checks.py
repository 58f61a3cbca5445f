"""Each kind of health check against a real server on loopback, and its target parsing."""

from __future__ import annotations

from pathlib import Path

import pytest

from podkit.adapter.health import CheckFailed, parse_check, run_check
from podkit.errors import ConfigError
from podkit.testing import PodkitProcess, PostgresServer, RedisServer, free_port, wait_http
from podkit.testing.net import wait_for


async def test_a_redis_check_passes_on_pong_and_fails_once_the_server_is_gone(
    redis_server: RedisServer,
) -> None:
    spec = parse_check(f"cache=redis://127.0.0.1:{redis_server.port}/0")
    await run_check(spec, timeout=1.0)
    redis_server.stop()
    with pytest.raises(CheckFailed, match="connection refused"):
        await run_check(spec, timeout=1.0)


async def test_a_redis_role_check_fails_on_the_wrong_role(redis_server: RedisServer) -> None:
    await run_check(parse_check(f"r=redis://127.0.0.1:{redis_server.port}?role=master"), timeout=1)
    with pytest.raises(CheckFailed, match="role is master, expected replica"):
        await run_check(
            parse_check(f"r=redis://127.0.0.1:{redis_server.port}?role=replica"), timeout=1
        )


async def test_a_postgresql_check_runs_select_1_or_the_given_query(
    postgres_server: PostgresServer,
) -> None:
    await run_check(parse_check(f"db={postgres_server.url}"), timeout=5.0)
    await run_check(
        parse_check(f"db={postgres_server.url}?query=SELECT%20NOT%20pg_is_in_recovery()"),
        timeout=5.0,
    )
    with pytest.raises(CheckFailed, match="returned False"):
        await run_check(
            parse_check(f"db={postgres_server.url}?query=SELECT%20pg_is_in_recovery()"),
            timeout=5.0,
        )
    with pytest.raises(CheckFailed, match="does not exist"):
        await run_check(parse_check(f"db={postgres_server.url}?query=SELECT%20nope"), timeout=5)
    bad_db = postgres_server.url.rsplit("/", 1)[0] + "/nosuchdb"
    with pytest.raises(CheckFailed, match="does not exist"):
        await run_check(parse_check(f"db={bad_db}"), timeout=5.0)


async def test_tcp_and_http_checks_follow_the_server() -> None:
    port, admin = free_port(), free_port()
    with PodkitProcess(
        "whoami", "--listen", f"127.0.0.1:{port}", "--admin", f"127.0.0.1:{admin}"
    ) as app:
        wait_http("127.0.0.1", admin, "/readyz")
        await run_check(parse_check(f"t=tcp://127.0.0.1:{port}"), timeout=1.0)
        await run_check(parse_check(f"h=http://127.0.0.1:{port}/status/302"), timeout=1.0)
        with pytest.raises(CheckFailed, match="HTTP 503"):
            await run_check(parse_check(f"h=http://127.0.0.1:{port}/status/503"), timeout=1.0)
        with pytest.raises(CheckFailed, match=r"timed out after 0\.2s"):
            await run_check(parse_check(f"h=http://127.0.0.1:{port}/delay/2000"), timeout=0.2)
        app.stop()
    with pytest.raises(CheckFailed, match="connection refused"):
        await run_check(parse_check(f"t=tcp://127.0.0.1:{port}"), timeout=1.0)


async def test_a_command_check_passes_on_exit_0_and_reports_the_last_output_line() -> None:
    await run_check(parse_check("c=cmd:true"), timeout=1.0)
    with pytest.raises(CheckFailed, match="exit status 3: disk full"):
        await run_check(parse_check("c=cmd:echo checking; echo disk full; exit 3"), timeout=1)


async def test_a_command_that_outlives_the_timeout_is_killed_with_its_children(
    tmp_path: Path,
) -> None:
    marker = tmp_path / "pid"
    with pytest.raises(CheckFailed, match="timed out"):
        await run_check(parse_check(f"c=cmd:sleep 30 & echo $! > {marker}; wait"), timeout=0.3)
    pid = int(marker.read_text())
    wait_for(lambda: _gone(pid), timeout=5.0, what=f"process {pid} to end")


def _gone(pid: int) -> bool:
    """The process has exited (a zombie waiting for its new parent to reap it counts)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return True
    return stat.rsplit(")", 1)[1].split()[0] == "Z"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("nameonly", "expected NAME=TARGET"),
        ("bad name=tcp://h:1", "bad check name"),
        ("x=ftp://h/", "unknown target"),
        ("x=tcp://h", "expected tcp://HOST:PORT"),
        ("x=redis://h?role=boss", "role must be master or replica"),
        ("x=redis://h/abc", "must be a number"),
        ("x=cmd:  ", "needs a command"),
    ],
)
def test_bad_check_specs_are_config_errors(text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse_check(text)


def test_the_displayed_target_hides_the_password() -> None:
    spec = parse_check("db=postgresql://app:s3cret@db:5432/shop")
    assert spec.display == "postgresql://app:***@db:5432/shop"
