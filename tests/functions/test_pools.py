"""Worker processes of functions, for real: scale to zero, cold starts, crashes, SIGKILL, reload."""

from __future__ import annotations

import json
import os
import signal
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
from hypothesis import given
from hypothesis import strategies as st

from podkit.serving.functions._scaling import (
    Placement,
    WorkerLoad,
    idle_workers,
    per_worker_limit,
    place,
)
from podkit.testing import PodkitProcess, free_port
from podkit.testing.net import wait_for, wait_http

from .conftest import write_app

TIMEOUT = 30.0
RELOAD_FAILED = "app reload failed: the last good version serves on"


@given(
    st.lists(st.integers(min_value=0, max_value=4), max_size=6),
    st.integers(min_value=0, max_value=3),
    st.integers(min_value=1, max_value=4),
    st.integers(min_value=1, max_value=8),
)
def test_placement_fills_a_worker_with_room_before_growing_and_never_over_max(
    inflight: list[int], starting: int, per_worker: int, max_workers: int
) -> None:
    loads = [WorkerLoad(min(n, per_worker), 0.0) for n in inflight]
    decision = place(loads, starting=starting, per_worker=per_worker, max_workers=max_workers)
    with_room = [i for i, load in enumerate(loads) if load.inflight < per_worker]
    if with_room:
        assert isinstance(decision, int)
        assert decision in with_room
        assert loads[decision].inflight == max(loads[i].inflight for i in with_room)
    elif len(loads) + starting < max_workers:
        assert decision is Placement.SPAWN
    else:
        assert decision is Placement.WAIT


def test_only_workers_idle_long_enough_are_stopped() -> None:
    loads = [WorkerLoad(0, 0.0), WorkerLoad(1, 0.0), WorkerLoad(0, 9.0)]
    assert idle_workers(loads, now=10.0, idle=5.0) == [0]
    assert per_worker_limit(8, 4) == 2
    assert per_worker_limit(5, 4) == 2
    assert per_worker_limit(1, 4) == 1


APP = """
    import os, pathlib, time
    from podkit.functions import on_event, on_http

    HERE = pathlib.Path(__file__).parent

    @on_http("GET /pid", idle="300ms")
    def pid(request):
        return {"pid": os.getpid()}

    @on_http("GET /slow", concurrency=4, workers=2)
    def slow(request):
        time.sleep(0.5)
        return {"pid": os.getpid()}

    @on_http("GET /crash")
    def crash(request):
        os._exit(3)

    @on_http("GET /version")
    def version(request):
        return "one"

    @on_event("job.run", backoff="50ms", backoff_cap="50ms")
    def job(event):
        marker = HERE / ("started-" + event.data["id"])
        if not marker.exists():
            marker.write_text(str(os.getpid()))
            time.sleep(60)  # the first delivery hangs until the test kills its worker
        with (HERE / "done.log").open("a") as f:
            f.write(event.data["id"] + "\\n")
"""


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[int, int, PodkitProcess]]:
    write_app(tmp_path, APP)
    port, admin = free_port(), free_port()
    process = PodkitProcess(
        "functions", "serve", "app.py",
        "--listen", f"127.0.0.1:{port}", "--admin", f"127.0.0.1:{admin}",
        "--backend", "sqlite:///functions.db", "--visibility", "2s",
        "--access-log", "off", "--reload",
        cwd=tmp_path,
    )  # fmt: skip
    with process:
        wait_http("127.0.0.1", admin, "/readyz", timeout=TIMEOUT)
        yield port, admin, process


def status(admin: int) -> dict[str, dict[str, object]]:
    body: dict[str, dict[str, object]] = httpx.get(f"http://127.0.0.1:{admin}/status").json()
    return body


def metric(admin: int, name: str) -> float:
    text = httpx.get(f"http://127.0.0.1:{admin}/metrics").text
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(name))


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_a_pool_scales_to_zero_after_idle_and_the_next_request_cold_starts(
    served: tuple[int, int, PodkitProcess],
) -> None:
    port, admin, _ = served
    first = httpx.get(f"http://127.0.0.1:{port}/pid").json()["pid"]
    assert first != served[2].pid
    wait_for(lambda: not alive(first), timeout=TIMEOUT, what="the idle worker to exit")
    assert status(admin)["workers"]["pid"] == 0
    second = httpx.get(f"http://127.0.0.1:{port}/pid").json()["pid"]
    assert second != first
    starts = metric(admin, 'podkit_functions_cold_start_seconds_count{function="pid"}')
    assert starts == 2
    assert metric(admin, 'podkit_functions_cold_start_seconds_sum{function="pid"}') > 0


def test_a_crashing_function_does_not_take_down_the_others(
    served: tuple[int, int, PodkitProcess],
) -> None:
    port, admin, process = served
    before = httpx.get(f"http://127.0.0.1:{port}/version")
    assert before.text == "one"
    crashed = httpx.get(f"http://127.0.0.1:{port}/crash")
    assert crashed.status_code == 502
    assert httpx.get(f"http://127.0.0.1:{port}/version").text == "one"
    assert httpx.get(f"http://127.0.0.1:{port}/crash").status_code == 502  # a fresh worker
    assert process.running()
    assert metric(admin, 'podkit_functions_worker_crashes_total{function="crash"}') == 2


def test_an_event_held_by_a_worker_killed_with_sigkill_is_delivered_again(
    tmp_path: Path, served: tuple[int, int, PodkitProcess]
) -> None:
    port, _, _ = served
    r = httpx.post(
        f"http://127.0.0.1:{port}/functions/job",
        json={"id": "j1"},
        headers={"Prefer": "respond-async"},
    )
    assert r.status_code == 202
    marker = tmp_path / "started-j1"
    wait_for(lambda: marker.exists() and marker.read_text() != "", timeout=TIMEOUT, what="start")
    os.kill(int(marker.read_text()), signal.SIGKILL)
    done = tmp_path / "done.log"
    wait_for(lambda: done.exists(), timeout=TIMEOUT, what="the event delivered again")
    assert done.read_text().splitlines() == ["j1"]
    location = f"http://127.0.0.1:{port}{r.headers['location']}"
    wait_for(
        lambda: httpx.get(location).json()["state"] == "done",
        timeout=TIMEOUT,
        what="the call record",
    )
    assert httpx.get(location).json()["function"] == "job"


def touch(path: Path, step: int) -> None:
    """A distinct modification time even on coarse file systems."""
    stat = path.stat()
    os.utime(path, (stat.st_atime, stat.st_mtime + 2 * step))


def reload_errors(process: PodkitProcess) -> list[dict[str, object]]:
    lines = [json.loads(x) for x in process.output().splitlines() if x.startswith("{")]
    return [x for x in lines if x.get("msg") == RELOAD_FAILED]


def test_reload_restarts_workers_with_the_new_code_and_a_broken_edit_keeps_the_last_good(
    tmp_path: Path, served: tuple[int, int, PodkitProcess]
) -> None:
    port, _, process = served
    assert httpx.get(f"http://127.0.0.1:{port}/version").text == "one"
    app = tmp_path / "app.py"
    app.write_text(app.read_text().replace('return "one"', 'return "two"'))
    touch(app, 1)
    wait_for(
        lambda: httpx.get(f"http://127.0.0.1:{port}/version").text == "two",
        timeout=TIMEOUT,
        what="the new code",
    )
    assert json.loads(httpx.get(f"http://127.0.0.1:{port}/pid").text)["pid"] > 0

    good = app.read_text()
    app.write_text(good + "\nraise RuntimeError('half-saved file')\n")
    touch(app, 2)
    wait_for(lambda: reload_errors(process), timeout=TIMEOUT, what="the reload error in the log")
    (error,) = reload_errors(process)
    assert "half-saved file" in str(error["error"])
    assert httpx.get(f"http://127.0.0.1:{port}/version").text == "two"  # the last good serves

    app.write_text(good.replace('return "two"', 'return "three"'))
    touch(app, 3)
    wait_for(
        lambda: httpx.get(f"http://127.0.0.1:{port}/version").text == "three",
        timeout=TIMEOUT,
        what="the fixed code",
    )
    assert len(reload_errors(process)) == 1


def test_a_pool_grows_with_load_up_to_its_workers(served: tuple[int, int, PodkitProcess]) -> None:
    port, admin, _ = served

    def one(_: int) -> int:
        pid: int = httpx.get(f"http://127.0.0.1:{port}/slow", timeout=TIMEOUT).json()["pid"]
        return pid

    with ThreadPoolExecutor(max_workers=4) as pool:
        pids = list(pool.map(one, range(4)))
    assert len(set(pids)) == 2  # two per worker, at most two workers
    assert status(admin)["workers"]["slow"] == 2
