"""``podkit functions`` as real processes: serve, SIGKILL, dead letters, redrive, bad input."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from podkit.testing import PodkitProcess, free_port
from podkit.testing.net import wait_for, wait_http

from .conftest import write_app

TIMEOUT = 30.0

APP = """
    import pathlib, time
    from podkit.functions import on_event, on_http, emit

    HERE = pathlib.Path(__file__).parent

    @on_http("POST /orders")
    def order(request):
        emit("order.placed", request.json)
        return {{"queued": True}}

    @on_event("order.placed")
    def ship(event):
        started = HERE / ("started-" + event.data["id"])
        if not started.exists():
            started.touch()
            time.sleep({hold})  # the first delivery hangs: the test kills its process
        with (HERE / "shipped.log").open("a") as f:
            f.write(event.data["id"] + "\\n")

    @on_event("mail.send", max_attempts=2, backoff="10ms", backoff_cap="10ms")
    def mail(event):
        if not (HERE / "mail-fixed").exists():
            raise RuntimeError("smtp down")
        (HERE / "mailed").write_text(event.data["to"])
"""


def podkit(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "podkit", *args],
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        check=False,
        cwd=cwd,
    )


def serve(tmp_path: Path, port: int) -> PodkitProcess:
    return PodkitProcess(
        "functions",
        "serve",
        "app.py",
        "--listen",
        f"127.0.0.1:{port}",
        "--backend",
        "sqlite:///functions.db",
        "--visibility",
        "1s",
        "--access-log",
        "off",
        cwd=tmp_path,
    )


def test_an_event_emitted_before_its_worker_is_killed_is_delivered_after_it_returns(
    tmp_path: Path,
) -> None:
    write_app(tmp_path, APP.format(hold=60))
    port = free_port()
    shipped = tmp_path / "shipped.log"
    first = serve(tmp_path, port).start()
    try:
        wait_http("127.0.0.1", port, "/functions/order", status=405, timeout=TIMEOUT)
        r = httpx.post(f"http://127.0.0.1:{port}/orders", json={"id": "o1"})
        assert r.json() == {"queued": True}
        wait_for(lambda: (tmp_path / "started-o1").exists(), timeout=TIMEOUT, what="delivery")
        first.kill()  # SIGKILL while the subscriber holds the event
    finally:
        first.stop()
    assert not shipped.exists()
    with serve(tmp_path, port):
        wait_for(lambda: shipped.exists(), timeout=TIMEOUT, what="redelivery after restart")
    assert shipped.read_text().splitlines() == ["o1"]


def test_a_failing_subscriber_lands_in_dead_letters_and_redrive_runs_it(tmp_path: Path) -> None:
    write_app(tmp_path, APP.format(hold=0))
    port = free_port()
    with serve(tmp_path, port):
        wait_http("127.0.0.1", port, "/functions/order", status=405, timeout=TIMEOUT)
        sent = podkit(
            "functions", "emit", "app.py", "mail.send", '{"to": "ann"}',
            "--backend", "sqlite:///functions.db", cwd=tmp_path,
        )  # fmt: skip
        assert sent.returncode == 0, sent.stderr
        assert sent.stdout.strip().endswith("1 subscriber")

        def dead() -> list[dict[str, object]]:
            out = podkit(
                "functions", "dead", "app.py", "--json",
                "--backend", "sqlite:///functions.db", cwd=tmp_path,
            )  # fmt: skip
            assert out.returncode == 0, out.stderr
            rows: list[dict[str, object]] = json.loads(out.stdout)
            return rows

        wait_for(lambda: len(dead()) == 1, timeout=TIMEOUT, what="a dead letter")
        (row,) = dead()
        assert row["function"] == "mail"
        assert row["attempts"] == 2
        assert "smtp down" in str(row["error"])
        (tmp_path / "mail-fixed").touch()
        again = podkit(
            "functions", "redrive", "app.py", "mail",
            "--backend", "sqlite:///functions.db", cwd=tmp_path,
        )  # fmt: skip
        assert again.stdout.strip() == "1 redriven"
        wait_for(lambda: (tmp_path / "mailed").exists(), timeout=TIMEOUT, what="the redrive")
        assert dead() == []


def test_list_and_invoke_run_without_a_server(tmp_path: Path) -> None:
    write_app(
        tmp_path,
        """
        from podkit.functions import on_http, on_timer

        @on_http("POST /add")
        def add(request):
            return {"sum": request.json["a"] + request.json["b"]}

        @on_timer(cron="*/5 * * * *")
        def tidy():
            return "tidied"
        """,
    )
    listed = podkit("functions", "list", "app.py", cwd=tmp_path)
    assert listed.stdout.splitlines() == [
        "add  POST /add  concurrency 8",
        "tidy  timer cron */5 * * * *  concurrency 8",
    ]
    out = podkit("functions", "invoke", "app.py", "add", '{"a": 2, "b": 3}', cwd=tmp_path)
    assert (out.returncode, out.stdout.strip()) == (0, '{"sum":5}')
    assert podkit("functions", "invoke", "app.py", "tidy", cwd=tmp_path).stdout == "tidied\n"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["serve", "missing.py"], "missing.py: no such file"),
        (["serve", "app.py", "--visibility", "0s"], "--visibility"),
        (["serve", "app.py", "--reload-check", "0s"], "--reload-check"),
        (["serve", "app.py", "--call-ttl", "0s"], "--call-ttl"),
        (["serve", "app.py", "--worker-start-timeout", "soon"], "--worker-start-timeout"),
        (["serve", "app.py", "--max-threads", "0"], "--max-threads"),
        (["serve", "app.py", "--listen", ":80"], "--listen"),
        (["invoke", "app.py", "nosuch"], "no function named 'nosuch'"),
        (["invoke", "app.py", "add", "{bad"], "DATA"),
        (["invoke", "app.py", "add", "[1]"], "add failed: TypeError"),
        (["list", "empty.py"], "empty.py: defines no function"),
        (["serve", "app.py", "--backend", "ftp://x"], "unknown backend URL"),
        (["dead", "app.py", "--backend", "sqlite:///missing.db"], "no such database"),
        (["calls", "app.py", "--backend", "sqlite:///missing.db"], "no such database"),
    ],
)
def test_bad_input_is_one_line_with_a_reason(tmp_path: Path, args: list[str], message: str) -> None:
    write_app(
        tmp_path,
        """
        from podkit.functions import on_http

        @on_http("POST /add")
        def add(request):
            return request.json["a"]
        """,
    )
    (tmp_path / "empty.py").write_text("x = 1\n")
    result = podkit("functions", *args, cwd=tmp_path)
    assert result.returncode in (1, 2), result
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith("podkit functions ")
    assert message in line


def test_a_body_over_max_request_body_is_413(tmp_path: Path) -> None:
    write_app(
        tmp_path,
        """
        from podkit.functions import on_http

        @on_http("POST /size")
        def size(request):
            return {"bytes": len(request.body)}
        """,
    )
    port = free_port()
    with PodkitProcess(
        "functions", "serve", "app.py", "--listen", f"127.0.0.1:{port}",
        "--max-request-body", "1KiB", "--isolation", "inline", "--access-log", "off",
        cwd=tmp_path,
    ):  # fmt: skip
        wait_http("127.0.0.1", port, "/functions/size", status=405, timeout=TIMEOUT)
        ok = httpx.post(f"http://127.0.0.1:{port}/size", content=b"x" * 1024)
        assert ok.json() == {"bytes": 1024}
        big = httpx.post(f"http://127.0.0.1:{port}/size", content=b"x" * 1025)
        assert big.status_code == 413


def test_dead_and_calls_only_read(tmp_path: Path) -> None:
    write_app(
        tmp_path,
        """
        from podkit.functions import on_event

        @on_event("t")
        def f(event):
            return None
        """,
    )
    args = ["--backend", "sqlite:///missing.db"]
    assert podkit("functions", "dead", "app.py", *args, cwd=tmp_path).returncode == 1
    assert not (tmp_path / "missing.db").exists()
    sent = podkit(
        "functions", "emit", "app.py", "t", "1", "--backend", "sqlite:///f.db", cwd=tmp_path
    )
    assert sent.returncode == 0, sent.stderr
    listed = podkit("functions", "calls", "app.py", "--backend", "sqlite:///f.db", cwd=tmp_path)
    assert (listed.returncode, listed.stdout) == (0, "")
    dead = podkit(
        "functions", "dead", "app.py", "--json", "--backend", "sqlite:///f.db", cwd=tmp_path
    )
    assert json.loads(dead.stdout) == []


def test_a_worker_slower_to_start_than_worker_start_timeout_is_a_503(tmp_path: Path) -> None:
    write_app(
        tmp_path,
        """
        import time
        from podkit.functions import on_http

        time.sleep(3)  # an import slower than the timeout below

        @on_http("GET /slow-import")
        def slow_import(request):
            return "started"
        """,
    )
    port = free_port()
    with PodkitProcess(
        "functions", "serve", "app.py", "--listen", f"127.0.0.1:{port}",
        "--worker-start-timeout", "500ms", "--access-log", "off",
        cwd=tmp_path,
    ):  # fmt: skip
        wait_http("127.0.0.1", port, "/functions/slow_import", status=405, timeout=TIMEOUT)
        answer = httpx.get(f"http://127.0.0.1:{port}/slow-import", timeout=TIMEOUT)
        assert answer.status_code == 503
        assert "did not start in time" in answer.json()["error"]
