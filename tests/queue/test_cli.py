"""``podkit queue`` as real processes: put, work, source, stats, dead, signals and SIGKILL."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from podkit.queue import Queue
from podkit.testing import PodkitProcess, RedisServer, ServerProcess, free_port
from podkit.testing.net import http_status, wait_for

TIMEOUT = 30.0


def podkit(
    *args: str, stdin: str | None = None, cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "podkit", *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        check=False,
        cwd=cwd,
    )


def stats(url: str, name: str) -> dict[str, float]:
    result = podkit("queue", "stats", url, name, "--json")
    assert result.returncode == 0, result.stderr
    data: dict[str, float] = json.loads(result.stdout)
    return data


def lines(path: Path) -> list[str]:
    return path.read_text().splitlines() if path.exists() else []


def admin_json(port: int, path: str) -> dict[str, object]:
    import http.client

    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
    try:
        conn.request("GET", path)
        data: dict[str, object] = json.loads(conn.getresponse().read())
        return data
    finally:
        conn.close()


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path}/q.db"


def test_put_prints_ids_and_a_known_key_is_reported(sqlite_url: str) -> None:
    first = podkit("queue", "put", sqlite_url, "jobs", "one", "--key", "k")
    again = podkit("queue", "put", sqlite_url, "jobs", "other", "--key", "k")
    assert first.returncode == 0, first.stderr
    assert again.stdout.strip() == f"{first.stdout.strip()} exists"
    many = podkit("queue", "put", sqlite_url, "jobs", "-", "--content-key", stdin="a\nb\na\n\n")
    assert len(many.stdout.splitlines()) == 3
    assert many.stdout.splitlines()[2].endswith(" exists")
    data = stats(sqlite_url, "jobs")
    assert (data["ready"], data["put_total"]) == (3, 3)
    text = podkit("queue", "stats", sqlite_url, "jobs")
    assert text.stdout.startswith("ready 3  delayed 0  leased 0  dead 0")


def test_bad_input_is_one_line_and_exit_code_two(sqlite_url: str) -> None:
    for args in (
        ("queue", "put", "ftp://nowhere", "jobs", "x"),
        ("queue", "put", sqlite_url, "bad name", "x"),
        ("queue", "put", sqlite_url, "jobs", "{not json", "--json"),
        ("queue", "work", sqlite_url, "jobs"),
        ("queue", "work", sqlite_url, "jobs", "--", "no-such-command-anywhere"),
        ("queue", "work", sqlite_url, "jobs", "--handler", "nomodule_xyz:f"),
        ("queue", "work", sqlite_url, "jobs", "--min", "1", "--", "cat"),
        ("queue", "put", sqlite_url, "jobs", "x", "--priority", "5000"),
    ):
        result = podkit(*args)
        assert result.returncode == 2, (args, result.stderr)
        assert "error:" in result.stderr
        assert "Traceback" not in result.stderr


def test_a_command_worker_gets_the_item_on_stdin_and_its_id_and_attempt_in_env(
    sqlite_url: str, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    ids = podkit("queue", "put", sqlite_url, "jobs", "-", stdin="alpha\nbeta\n").stdout.split()
    script = f'cat >> {out}; echo " $PODKIT_ITEM_ID $PODKIT_ATTEMPT $PODKIT_QUEUE" >> {out}'
    with PodkitProcess("queue", "work", sqlite_url, "jobs", "--", "sh", "-c", script) as worker:
        wait_for(lambda: len(lines(out)) == 2, timeout=TIMEOUT, what="two items processed")
        wait_for(lambda: stats(sqlite_url, "jobs")["ack_total"] == 2, timeout=TIMEOUT)
        worker.signal(signal.SIGTERM)
        assert worker.wait(TIMEOUT) == 0
    assert lines(out) == [f"alpha {ids[0]} 1 jobs", f"beta {ids[1]} 1 jobs"]


def test_a_python_handler_receives_json_values(sqlite_url: str, tmp_path: Path) -> None:
    out = tmp_path / "seen.jsonl"
    (tmp_path / "myhandlers.py").write_text(
        "import json\n"
        "def handle(item):\n"
        f"    with open({str(out)!r}, 'a') as f:\n"
        "        f.write(json.dumps(item.value) + '\\n')\n"
    )
    podkit("queue", "put", sqlite_url, "jobs", '{"n": 1}', "--json")
    podkit("queue", "put", sqlite_url, "jobs", "[2]", "--json")
    with PodkitProcess(
        "queue", "work", sqlite_url, "jobs", "--handler", "myhandlers:handle", cwd=tmp_path
    ):
        wait_for(lambda: len(lines(out)) == 2, timeout=TIMEOUT, what="two items handled")
    assert [json.loads(x) for x in lines(out)] == [{"n": 1}, [2]]


@pytest.mark.parametrize("pool", [False, True], ids=["one worker", "a pool"])
def test_the_podkit_script_imports_a_handler_from_the_current_directory(
    sqlite_url: str, tmp_path: Path, pool: bool
) -> None:
    """As Celery's -A: the console script (whose sys.path starts with its own bin directory,
    unlike python -m) finds tasks.py in the directory it runs in, in every worker process."""
    script = Path(sys.executable).parent / "podkit"
    assert script.exists()
    out = tmp_path / "seen"
    (tmp_path / "tasks.py").write_text(
        "def handle(item):\n"
        f"    with open({str(out)!r}, 'ab') as f:\n"
        "        f.write(item.body + b'\\n')\n"
    )
    podkit("queue", "put", sqlite_url, "jobs", "one")
    extra = ["--min", "1", "--max", "2"] if pool else []
    argv = [str(script), "queue", "work", sqlite_url, "jobs", "--handler", "tasks:handle", *extra]
    with ServerProcess(argv, cwd=tmp_path, name="podkit-queue-work") as worker:
        wait_for(
            lambda: lines(out) == ["one"] or not worker.running(),
            timeout=TIMEOUT,
            what="the item handled",
        )
        assert lines(out) == ["one"], worker.output()


def test_a_failing_command_is_retried_then_dead_lettered_and_can_be_requeued(
    sqlite_url: str, tmp_path: Path
) -> None:
    attempts = tmp_path / "attempts"
    podkit("queue", "put", sqlite_url, "jobs", "bad", "--max-attempts", "2")
    script = f"echo $PODKIT_ATTEMPT >> {attempts}; exit 3"
    with PodkitProcess(
        "queue", "work", sqlite_url, "jobs", "--backoff", "100ms", "--", "sh", "-c", script
    ):
        wait_for(lambda: stats(sqlite_url, "jobs")["dead"] == 1, timeout=TIMEOUT)
    assert lines(attempts) == ["1", "2"]
    listed = podkit("queue", "dead", sqlite_url, "jobs", "--json")
    (entry,) = [json.loads(x) for x in listed.stdout.splitlines()]
    assert entry["body"] == "bad"
    assert entry["attempts"] == 2
    assert entry["error"] == "sh exited with status 3"
    assert "attempts=2" in podkit("queue", "dead", sqlite_url, "jobs").stdout
    assert podkit("queue", "dead", sqlite_url, "jobs", "--retry").stdout.strip() == "requeued 1"
    data = stats(sqlite_url, "jobs")
    assert (data["dead"], data["ready"]) == (0, 1)


def test_first_sigterm_finishes_the_running_item_and_takes_no_more(
    sqlite_url: str, tmp_path: Path
) -> None:
    started, release, done = tmp_path / "started", tmp_path / "release", tmp_path / "done"
    podkit("queue", "put", sqlite_url, "jobs", "-", stdin="first\nsecond\n")
    script = f"echo go >> {started}; while [ ! -f {release} ]; do sleep 0.02; done; cat >> {done}"
    with PodkitProcess("queue", "work", sqlite_url, "jobs", "--", "sh", "-c", script) as worker:
        wait_for(lambda: len(lines(started)) == 1, timeout=TIMEOUT, what="the first item")
        worker.signal(signal.SIGTERM)
        wait_for(lambda: "stopped taking items" in worker.output(), timeout=TIMEOUT)
        release.touch()
        assert worker.wait(TIMEOUT) == 0
    assert lines(done) == ["first"]
    data = stats(sqlite_url, "jobs")
    assert (data["ready"], data["leased"], data["ack_total"]) == (1, 0, 1)


def test_second_sigterm_stops_now_and_the_item_is_redelivered(
    sqlite_url: str, tmp_path: Path
) -> None:
    started = tmp_path / "started"
    podkit("queue", "put", sqlite_url, "jobs", "stuck")
    script = f"echo go >> {started}; sleep 60"
    with PodkitProcess(
        "queue", "work", sqlite_url, "jobs", "--visibility", "1s", "--", "sh", "-c", script
    ) as worker:
        wait_for(lambda: len(lines(started)) == 1, timeout=TIMEOUT, what="the item to start")
        worker.signal(signal.SIGTERM)
        wait_for(lambda: "stopped taking items" in worker.output(), timeout=TIMEOUT)
        worker.signal(signal.SIGTERM)
        assert worker.wait(TIMEOUT) == 0
    assert stats(sqlite_url, "jobs")["ack_total"] == 0

    async def lease_again() -> int:
        async with Queue(sqlite_url, "jobs") as queue:
            for _ in range(200):
                items = await queue.lease(1, 30)
                if items:
                    return items[0].attempt
                await asyncio.sleep(0.05)
        return 0

    assert asyncio.run(lease_again()) == 2


@pytest.mark.parametrize("backend", ["sqlite", "redis"])
def test_an_item_of_a_sigkilled_worker_is_processed_by_another_after_the_visibility_timeout(
    backend: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    url = (
        f"sqlite:///{tmp_path}/q.db"
        if backend == "sqlite"
        else request.getfixturevalue("redis_server").url
    )
    started, done = tmp_path / "started", tmp_path / "done"
    podkit("queue", "put", url, "jobs", "precious")
    # the first delivery hangs (the worker will be killed); later ones finish
    script = (
        f'echo "$PODKIT_ATTEMPT" >> {started}; '
        f'if [ "$PODKIT_ATTEMPT" = 1 ]; then sleep 60; fi; cat >> {done}'
    )
    argv = ("queue", "work", url, "jobs", "--visibility", "1s")
    command = ("--", "sh", "-c", script)
    second_admin = free_port()
    with PodkitProcess(*argv, *command) as first:
        wait_for(lambda: lines(started) == ["1"], timeout=TIMEOUT, what="first delivery")
        with PodkitProcess(*argv, "--admin", f"127.0.0.1:{second_admin}", *command) as second:
            wait_for(lambda: http_status("127.0.0.1", second_admin, "/readyz") == 200)
            # the second worker polls but the first holds (and keeps extending) the lease
            wait_for(
                lambda: admin_json(second_admin, "/queue").get("stats") is not None,
                timeout=TIMEOUT,
            )
            assert lines(started) == ["1"]
            first.kill()
            wait_for(lambda: lines(done) == ["precious"], timeout=TIMEOUT, what="redelivery")
            assert lines(started) == ["1", "2"]
            wait_for(lambda: stats(url, "jobs")["ack_total"] == 1, timeout=TIMEOUT)
            assert "item failed" not in second.output()
    data = stats(url, "jobs")
    assert (data["ready"], data["leased"], data["dead"]) == (0, 0, 0)


def test_a_running_item_keeps_its_lease_beyond_the_visibility_timeout(
    sqlite_url: str, tmp_path: Path
) -> None:
    started, done = tmp_path / "started", tmp_path / "done"
    podkit("queue", "put", sqlite_url, "jobs", "long")
    script = f"echo go >> {started}; sleep 2.5; cat >> {done}"
    argv = ("queue", "work", sqlite_url, "jobs", "--visibility", "1s", "--", "sh", "-c", script)
    with PodkitProcess(*argv), PodkitProcess(*argv):
        wait_for(lambda: lines(done) == ["long"], timeout=TIMEOUT, what="the long item")
        wait_for(lambda: stats(sqlite_url, "jobs")["ack_total"] == 1, timeout=TIMEOUT)
    assert lines(started) == ["go"]


def test_source_puts_each_output_line_once_however_often_it_runs(
    sqlite_url: str, tmp_path: Path
) -> None:
    with PodkitProcess(
        "queue", "source", sqlite_url, "jobs", "--every", "100ms", "--", "printf", "a\\nb\\n\\n"
    ) as source:
        wait_for(
            lambda: source.output().count('"msg":"source ran"') >= 3,
            timeout=TIMEOUT,
            what="three runs",
        )
    data = stats(sqlite_url, "jobs")
    assert (data["ready"], data["put_total"]) == (2, 2)


def test_a_pool_grows_with_the_backlog_and_shrinks_when_idle(
    sqlite_url: str, tmp_path: Path
) -> None:
    done = tmp_path / "done"
    podkit("queue", "put", sqlite_url, "jobs", "-", stdin="".join(f"{i}\n" for i in range(12)))
    admin = free_port()
    with PodkitProcess(
        "queue", "work", sqlite_url, "jobs",
        "--min", "0", "--max", "3", "--scale-interval", "100ms", "--scale-down-after", "500ms",
        "--admin", f"127.0.0.1:{admin}",
        "--", "sh", "-c", f'sleep 0.3; echo "$(cat)" >> {done}',
    ) as pool:  # fmt: skip
        wait_for(lambda: http_status("127.0.0.1", admin, "/readyz") == 200, timeout=TIMEOUT)
        peak = 0

        def all_done() -> bool:
            nonlocal peak
            peak = max(peak, int(str(admin_json(admin, "/queue")["workers"])))
            return len([x for x in lines(done) if x]) == 12

        wait_for(all_done, timeout=TIMEOUT, what="twelve items")
        assert peak == 3
        wait_for(lambda: admin_json(admin, "/queue")["workers"] == 0, timeout=TIMEOUT)
        pool.signal(signal.SIGTERM)
        assert pool.wait(TIMEOUT) == 0
    assert sorted(int(x) for x in lines(done) if x) == list(range(12))


def test_pool_workers_stop_by_themselves_when_the_supervisor_is_killed(
    sqlite_url: str,
) -> None:
    with PodkitProcess(
        "queue", "work", sqlite_url, "jobs", "--min", "1", "--max", "1", "--", "cat"
    ) as pool:
        wait_for(lambda: '"msg":"worker started"' in pool.output(), timeout=TIMEOUT)
        line = next(x for x in pool.output().splitlines() if '"msg":"worker started"' in x)
        child = int(json.loads(line)["pid"])
        pool.kill()

        def gone() -> bool:
            try:
                os.kill(child, 0)
            except ProcessLookupError:
                return True
            # a zombie is gone too: it has exited and waits for its (new) parent to reap it
            try:
                with open(f"/proc/{child}/stat") as stat:
                    return stat.read().split(") ")[1].startswith("Z")
            except FileNotFoundError:
                return True

        wait_for(gone, timeout=TIMEOUT, what="the orphaned worker to exit")


def test_a_worker_is_not_ready_while_redis_is_down_and_recovers_when_it_is_back(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    admin = free_port()
    url = redis_server.url
    with PodkitProcess(
        "queue", "work", url, "jobs", "--admin", f"127.0.0.1:{admin}",
        "--", "sh", "-c", f'echo "$(cat)" >> {out}',
    ) as worker:  # fmt: skip
        wait_for(lambda: http_status("127.0.0.1", admin, "/readyz") == 200, timeout=TIMEOUT)
        redis_server.kill()
        wait_for(lambda: http_status("127.0.0.1", admin, "/readyz") == 503, timeout=TIMEOUT)
        redis_server.start()
        wait_for(lambda: http_status("127.0.0.1", admin, "/readyz") == 200, timeout=TIMEOUT)
        podkit("queue", "put", url, "jobs", "after the outage")
        wait_for(lambda: lines(out) == ["after the outage"], timeout=TIMEOUT)
        assert "queue store failing" in worker.output()


def test_a_pool_drains_its_workers_on_sigterm(sqlite_url: str, tmp_path: Path) -> None:
    started, release, done = tmp_path / "started", tmp_path / "release", tmp_path / "done"
    podkit("queue", "put", sqlite_url, "jobs", "-", stdin="first\nsecond\n")
    script = f"echo go >> {started}; while [ ! -f {release} ]; do sleep 0.02; done; cat >> {done}"
    with PodkitProcess(
        "queue", "work", sqlite_url, "jobs", "--min", "1", "--max", "1",
        "--", "sh", "-c", script,
    ) as pool:  # fmt: skip
        wait_for(lambda: len(lines(started)) == 1, timeout=TIMEOUT, what="the first item")
        pool.signal(signal.SIGTERM)
        wait_for(lambda: '"msg":"stopped taking items"' in pool.output(), timeout=TIMEOUT)
        release.touch()
        assert pool.wait(TIMEOUT) == 0
    assert lines(done) == ["first"]
    data = stats(sqlite_url, "jobs")
    assert (data["ready"], data["leased"], data["ack_total"]) == (1, 0, 1)


@pytest.mark.parametrize("command", ["stats", "dead"])
def test_a_read_only_command_never_creates_a_database(tmp_path: Path, command: str) -> None:
    """A typo in the path is an error naming it, not a new empty queue database."""
    typo = tmp_path / "typo.db"
    result = podkit("queue", command, f"sqlite:///{typo}", "jobs")
    assert result.returncode == 1
    assert result.stderr.strip() == (
        f"podkit queue {command}: error: sqlite queue {typo}: no such database "
        "(this command only reads; it never creates one)"
    )
    assert list(tmp_path.iterdir()) == []


def test_stats_reads_a_database_that_workers_write(sqlite_url: str, tmp_path: Path) -> None:
    """Read-only opening sees what the writers committed, while a worker has it open."""
    podkit("queue", "put", sqlite_url, "jobs", "-", stdin="a\nb\n")
    with PodkitProcess("queue", "work", sqlite_url, "jobs", "--", "true"):
        wait_for(lambda: stats(sqlite_url, "jobs")["ack_total"] == 2, timeout=TIMEOUT)
        assert podkit("queue", "dead", sqlite_url, "jobs").returncode == 0
