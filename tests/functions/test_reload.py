"""``podkit functions serve --reload`` re-reads the app's declarations, for real."""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from podkit.queue import Queue
from podkit.testing import PodkitProcess, free_port
from podkit.testing.net import wait_for, wait_http

from .conftest import write_app

TIMEOUT = 30.0
RELOAD_FAILED = "app reload failed: the last good version serves on"

BEFORE = """
    from podkit.functions import emit, on_http

    @on_http("GET /old")
    def old(request):
        return "old"

    @on_http("POST /emit")
    async def send(request):
        await emit("thing.happened", {"n": request.json["n"]})
        return {"ok": True}
"""

AFTER = """
    import pathlib
    from podkit.functions import emit, on_event, on_http, on_queue, on_timer

    HERE = pathlib.Path(__file__).parent

    @on_http("GET /new/{name}")
    def new(request):
        return {"hello": request.params["name"]}

    @on_http("POST /emit")
    async def send(request):
        await emit("thing.happened", {"n": request.json["n"]})
        return {"ok": True}

    @on_event("thing.happened")
    def happened(event):
        with (HERE / "events.log").open("a") as f:
            f.write(str(event.data["n"]) + "\\n")

    @on_queue("jobs")
    def job(item):
        with (HERE / "jobs.log").open("a") as f:
            f.write(item["job"] + "\\n")

    @on_timer(every="200ms")
    def tick():
        (HERE / "ticked").write_text("yes")
"""


@pytest.fixture(params=["process", "inline"])
def served(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[int, PodkitProcess]]:
    write_app(tmp_path, BEFORE)
    port, admin = free_port(), free_port()
    process = PodkitProcess(
        "functions", "serve", "app.py",
        "--listen", f"127.0.0.1:{port}", "--admin", f"127.0.0.1:{admin}",
        "--backend", "sqlite:///functions.db", "--isolation", request.param,
        "--access-log", "off", "--reload",
        cwd=tmp_path,
    )  # fmt: skip
    with process:
        wait_http("127.0.0.1", admin, "/readyz", timeout=TIMEOUT)
        yield port, process


def replace(app: Path, source: str, step: int) -> None:
    """Write a new version with a distinct modification time, even on coarse file systems."""
    before = app.stat()
    write_app(app.parent, source)
    os.utime(app, (before.st_atime, before.st_mtime + 2 * step))


def lines(path: Path) -> list[str]:
    return path.read_text().split() if path.exists() else []


async def put_job(backend: str, job: str) -> None:
    async with Queue(backend, "jobs") as queue:
        await queue.put({"job": job})


def test_a_reload_serves_new_routes_subscriptions_queues_and_timers_and_drops_removed_routes(
    tmp_path: Path, served: tuple[int, PodkitProcess]
) -> None:
    port, _ = served
    base = f"http://127.0.0.1:{port}"
    assert httpx.get(f"{base}/old").text == "old"
    assert httpx.get(f"{base}/new/ann").status_code == 404
    assert httpx.post(f"{base}/emit", json={"n": 1}).json() == {"ok": True}  # no subscriber

    replace(tmp_path / "app.py", AFTER, 1)
    wait_for(
        lambda: httpx.get(f"{base}/new/ann").status_code == 200,
        timeout=TIMEOUT,
        what="the new route",
    )
    assert httpx.get(f"{base}/new/ann").json() == {"hello": "ann"}
    assert httpx.get(f"{base}/old").status_code == 404

    assert httpx.post(f"{base}/emit", json={"n": 2}).json() == {"ok": True}
    wait_for(lambda: lines(tmp_path / "events.log") == ["2"], timeout=TIMEOUT, what="the event")
    asyncio.run(put_job(f"sqlite:///{tmp_path}/functions.db", "resize"))
    wait_for(lambda: lines(tmp_path / "jobs.log") == ["resize"], timeout=TIMEOUT, what="the item")
    wait_for(lambda: (tmp_path / "ticked").exists(), timeout=TIMEOUT, what="the new timer")


def test_an_app_that_fails_to_load_after_an_edit_keeps_the_old_routes_and_logs_one_error(
    tmp_path: Path, served: tuple[int, PodkitProcess]
) -> None:
    port, process = served
    base = f"http://127.0.0.1:{port}"
    assert httpx.get(f"{base}/old").text == "old"  # its worker runs the code loaded now
    replace(tmp_path / "app.py", BEFORE + "\n    @on_http(\n", 1)  # a half-saved file

    def errors() -> list[dict[str, object]]:
        found = [json.loads(x) for x in process.output().splitlines() if x.startswith("{")]
        return [x for x in found if x.get("msg") == RELOAD_FAILED]

    wait_for(errors, timeout=TIMEOUT, what="the reload error in the log")
    (error,) = errors()
    assert error["level"] == "error"
    assert "SyntaxError" in str(error["error"]) or "syntax" in str(error["error"]).lower()
    assert httpx.get(f"{base}/old").text == "old"

    replace(tmp_path / "app.py", AFTER, 2)
    wait_for(
        lambda: httpx.get(f"{base}/new/bob").status_code == 200,
        timeout=TIMEOUT,
        what="the fixed app",
    )
    assert len(errors()) == 1
