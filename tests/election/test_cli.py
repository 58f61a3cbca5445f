"""``podkit elect`` as real processes: run while leading, fail over, report status."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from podkit.testing import PodkitProcess, free_port, wait_http
from podkit.testing.net import wait_for
from tests.election.conftest import BackendTarget

COMMAND = [sys.executable, "-m", "podkit.testing.leader_command"]
TTL = "1s"


def elect(target_url: str, identity: str, outdir: Path, *extra: str) -> PodkitProcess:
    return PodkitProcess(
        "elect", "--backend", target_url, "--name", "job", "--ttl", TTL, "--id", identity,
        "--grace", "2s", *extra, "--", *COMMAND, str(outdir),
    )  # fmt: skip


def starts(outdir: Path) -> list[dict[str, Any]]:
    records = [json.loads(path.read_text()) for path in outdir.glob("*.start")]
    return sorted(records, key=lambda record: record["token"])


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    status = Path(f"/proc/{pid}/stat")
    return not (status.exists() and status.read_text().split()[2] == "Z")


def podkit(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "podkit", *args], capture_output=True, text=True, timeout=30
    )


# The run's file is written beside and renamed into place, so a test that sees it sees it whole.
ONCE_JOB = (
    "import os, pathlib, sys; "
    "d = pathlib.Path(sys.argv[1]); t = os.environ['PODKIT_FENCING_TOKEN']; "
    "(d / ('.' + t)).write_text("
    "os.environ['PODKIT_LEADER_ID'] + ' ' + os.environ['PODKIT_ELECTION']); "
    "(d / ('.' + t)).rename(d / t); sys.exit(3)"
)


def admin_json(port: int, path: str) -> dict[str, Any]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=2) as answer:
            data: dict[str, Any] = json.loads(answer.read())
            return data
    except OSError:
        return {}


def test_once_runs_the_command_once_per_term_and_keeps_leading_without_it(
    tmp_path: Path,
) -> None:
    """The job exits; its elector keeps the lease through many renewals without running it
    again; the next term (on the other replica, after a SIGTERM hands over) runs it once."""
    url = f"sqlite:///{tmp_path}/leases.db"
    runs = tmp_path / "runs"
    runs.mkdir()
    admin = free_port()

    def once(identity: str, *extra: str) -> PodkitProcess:
        return PodkitProcess(
            "elect", "--backend", url, "--name", "nightly", "--id", identity, "--ttl", TTL,
            "--once", *extra, "--", sys.executable, "-c", ONCE_JOB, str(runs),
        )  # fmt: skip

    with once("node-a", "--admin", f"127.0.0.1:{admin}") as a:
        wait_for(lambda: (runs / "1").exists(), timeout=30, what="the first term's run")
        assert (runs / "1").read_text() == "node-a nightly"
        renewals = admin_json(admin, "/election").get("renewals", 0)
        wait_for(
            lambda: admin_json(admin, "/election").get("renewals", 0) >= renewals + 6,
            timeout=30,
            what="six more renewals",
        )
        assert sorted(p.name for p in runs.iterdir() if not p.name.startswith(".")) == ["1"]
        assert admin_json(admin, "/election")["role"] == "leader"
        assert '"status":3' in a.output().replace(" ", "")
        with once("node-b") as b:
            a.signal(signal.SIGTERM)
            assert a.wait(30) == 0
            wait_for(lambda: (runs / "2").exists(), timeout=30, what="the second term's run")
            assert (runs / "2").read_text() == "node-b nightly"
            assert b.running()
        output = a.output()
    # Times in the logs are durations, never monotonic clock readings.
    assert "monotonic" not in output
    leading = next(json.loads(line) for line in output.splitlines() if '"leading"' in line)
    assert leading["lease_left"].endswith(("ms", "s"))
    assert "valid_until" not in leading


def test_an_unreachable_backend_is_retried_with_backoff_then_exits_1(tmp_path: Path) -> None:
    """Nothing listens at the backend's address: a few warnings with growing retry_in, then
    one error line and exit 1 after --backend-timeout."""
    url = f"redis://127.0.0.1:{free_port()}/0"
    result = podkit(
        "elect", "--backend", url, "--name", "job", "--ttl", "2s", "--backend-timeout", "2s",
        "--", "true",
    )  # fmt: skip
    assert result.returncode == 1, result.stderr
    lines = result.stderr.strip().splitlines()
    assert lines[-1].startswith("podkit elect: error: could not reach the backend for 2")
    assert url in lines[-1]
    retries = [json.loads(line)["retry_in"] for line in lines if '"backend error"' in line]
    # 200 ms doubling (±20 %), the last one cut at the deadline: about five, never twenty.
    assert 3 <= len(retries) <= 7, retries
    assert "Traceback" not in result.stderr


def test_a_backend_timeout_that_is_not_positive_is_a_usage_error(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/leases.db"
    result = podkit(
        "elect", "--backend", url, "--name", "j", "--backend-timeout", "0s", "--", "true"
    )
    assert result.returncode == 2
    assert "--backend-timeout" in result.stderr


def test_a_killed_leader_is_replaced_with_a_larger_token_and_its_command_dies(
    target: BackendTarget, tmp_path: Path
) -> None:
    with (
        elect(target.url, "node-a", tmp_path) as a,
        elect(target.url, "node-b", tmp_path) as b,
    ):
        wait_for(lambda: len(starts(tmp_path)) == 1, timeout=30, what="a first leader")
        first = starts(tmp_path)[0]
        leader, follower = (a, b) if first["identity"] == "node-a" else (b, a)
        leader.kill()
        wait_for(lambda: len(starts(tmp_path)) == 2, timeout=30, what="the failover")
        second = starts(tmp_path)[1]
        assert second["identity"] != first["identity"]
        assert second["token"] > first["token"]
        wait_for(lambda: not alive(first["pid"]), timeout=10, what="the old command to die")
        assert follower.running()


def test_status_prints_the_leader_its_token_and_time_left(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/leases.db"
    with elect(url, "node-a", tmp_path, "--ttl", "5s"):
        wait_for(lambda: len(starts(tmp_path)) == 1, timeout=30, what="a leader")
        text = podkit("elect", "status", "--backend", url, "--name", "job")
        assert text.returncode == 0, text.stderr
        assert "leader: node-a" in text.stdout
        assert "token: 1" in text.stdout
        as_json = podkit("elect", "status", "--backend", url, "--name", "job", "--json")
        report = json.loads(as_json.stdout)
        assert report["leader"] == "node-a"
        assert report["token"] == 1
        assert 0 < report["expires_in"] <= 5.0


def test_a_frozen_leader_stops_its_command_on_resume_and_campaigns_again(
    tmp_path: Path,
) -> None:
    """SIGSTOP past the ttl: the other process takes over; on SIGCONT the first sends its
    command SIGTERM before anything else and goes back to campaigning."""
    url = f"sqlite:///{tmp_path}/leases.db"
    with elect(url, "node-a", tmp_path) as a:
        wait_for(lambda: len(starts(tmp_path)) == 1, timeout=30, what="node-a to lead")
        first = starts(tmp_path)[0]
        a.signal(signal.SIGSTOP)
        try:
            with elect(url, "node-b", tmp_path):
                wait_for(lambda: len(starts(tmp_path)) == 2, timeout=30, what="node-b to lead")
                a.signal(signal.SIGCONT)
                wait_for(
                    lambda: (tmp_path / f"{first['pid']}.stop").exists(),
                    timeout=10,
                    what="node-a's command to get SIGTERM",
                )
                wait_for(
                    lambda: a.output().count('"campaigning"') >= 2,
                    timeout=10,
                    what="node-a to campaign again",
                )
                assert "leadership lost" in a.output()
        finally:
            a.signal(signal.SIGCONT)


def test_sigterm_stops_the_command_and_hands_leadership_over(tmp_path: Path) -> None:
    """node-a holds a 30 s lease; SIGTERM makes it stop its command and release the lease,
    so node-b leads long before that lease could have expired."""
    url = f"sqlite:///{tmp_path}/leases.db"
    with elect(url, "node-a", tmp_path, "--ttl", "30s") as a:
        wait_for(lambda: len(starts(tmp_path)) == 1, timeout=30, what="node-a to lead")
        first = starts(tmp_path)[0]
        with elect(url, "node-b", tmp_path):
            a.signal(signal.SIGTERM)
            assert a.wait(30) == 0
            assert (tmp_path / f"{first['pid']}.stop").exists()
            wait_for(lambda: len(starts(tmp_path)) == 2, timeout=10, what="node-b to lead")


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--name", "job", "--backend", "bogus://x", "--", "true"], "unknown backend"),
        (["--name", "job"], "give the command to run"),
        (["--name", "job", "--", "no-such-command-here"], "command not found"),
        (["--name", "job", "--ttl", "soon", "--", "true"], "--ttl"),
        (["status", "--backend", "sqlite:///"], "--name"),
    ],
)
def test_bad_input_is_one_line_and_exit_code_2(args: list[str], message: str) -> None:
    result = podkit("elect", *args)
    assert result.returncode == 2
    assert message in result.stderr
    assert "Traceback" not in result.stderr


def test_status_of_an_unreachable_backend_is_one_line_and_exit_code_1() -> None:
    url = f"redis://127.0.0.1:{free_port()}/0"
    result = podkit("elect", "status", "--backend", url, "--name", "job")
    assert result.returncode == 1
    assert result.stderr.startswith(f"podkit elect status: error: {url}")
    assert "Traceback" not in result.stderr


def test_the_admin_endpoint_shows_the_role_token_and_leader_gauge(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/leases.db"
    port = free_port()
    with elect(url, "node-a", tmp_path, "--admin", f"127.0.0.1:{port}", "--ttl", "5s"):
        wait_for(lambda: len(starts(tmp_path)) == 1, timeout=30, what="node-a to lead")
        wait_http("127.0.0.1", port, "/readyz")
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/election", timeout=5) as answer:
            view = json.loads(answer.read())
        assert view["role"] == "leader"
        assert view["fencing_token"] == 1
        assert view["identity"] == "node-a"
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as answer:
            metrics = answer.read().decode()
        assert "elect_is_leader 1.0" in metrics
        assert "elect_fencing_token 1.0" in metrics


def test_status_never_creates_a_database(tmp_path: Path) -> None:
    typo = tmp_path / "sub" / "typo.db"
    result = podkit("elect", "status", "--backend", f"sqlite:///{typo}", "--name", "job")
    assert result.returncode == 1
    assert result.stderr.strip() == (
        f"podkit elect status: error: {typo}: no such database "
        "(this command only reads; it never creates one)"
    )
    assert list(tmp_path.iterdir()) == []
