"""The runner in one process on real backends: routes, wrappers, events, dead letters, calls."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from podkit.engines.http import HTTPServer, Request, Response
from podkit.functions import FunctionRunner, RateLimited, load_app
from podkit.queue import Queue
from podkit.testing import RedisServer

from .conftest import serve_app, wait_until, write_app


def lines(path: Path) -> list[str]:
    return path.read_text().splitlines() if path.exists() else []


APP = """
    import asyncio, pathlib
    from pydantic import BaseModel
    from podkit.functions import (
        FunctionResponse, defaults, emit, idempotent, on_event, on_http, rate_limit, retry,
        timeout, validate,
    )

    LOG = pathlib.Path({log!r})

    def note(*words):
        with LOG.open("a") as f:
            f.write(" ".join(str(w) for w in words) + "\\n")

    class Signup(BaseModel):
        email: str
        plan: str = "free"

    @on_http("POST /signup")
    @validate(Signup)
    async def signup(request):
        await emit("user.created", {{"id": request.json["email"], "plan": request.json["plan"]}})
        return {{"ok": True, "plan": request.json["plan"]}}

    @on_http("GET /items/{{item}}")
    def item(request):
        return FunctionResponse({{"item": request.params["item"], "q": request.query}}, status=203)

    @on_http("POST /greet")
    @defaults(name="world")
    def greet(request):
        return "hello " + request.json["name"]

    @on_http("GET /slow")
    @timeout("100ms")
    async def slow(request):
        await asyncio.sleep(5)

    FLAKY = {{"n": 0}}

    @on_http("GET /flaky")
    @retry(3, backoff="1ms")
    def flaky(request):
        FLAKY["n"] += 1
        if FLAKY["n"] < 3:
            raise RuntimeError("not yet")
        return {{"calls": FLAKY["n"]}}

    @on_http("GET /limited")
    @rate_limit("2/m")
    def limited(request):
        return "ok"

    @on_http("GET /busy", concurrency=1)
    async def busy(request):
        await asyncio.sleep(0.5)
        return "done"

    @on_event("user.created")
    @idempotent(key="$.id", ttl="1h")
    def welcome(event):
        note("welcome", event.data["id"])
        return "sent"

    @on_event("user.created", filters={{"source": "podkit/functions/signup"}}, then="user.scored")
    def score(event):
        note("score", event.data["id"])
        return {{"id": event.data["id"], "score": len(event.data["id"])}}

    @on_event("user.scored")
    def scored(event):
        note("scored", event.data["id"], event.data["score"])

    @on_event("job.run", max_attempts=2, backoff="10ms", backoff_cap="10ms")
    def broken(event):
        note("broken", event.data)
        if not LOG.with_suffix(".fixed").exists():
            raise RuntimeError("broken on purpose")
        note("repaired", event.data)
"""


def make_app(tmp_path: Path) -> tuple[Path, Path]:
    log = tmp_path / "calls.log"
    return write_app(tmp_path, APP.format(log=str(log))), log


async def test_http_routes_answer_with_what_the_function_returns(
    tmp_path: Path, sqlite_backend: str
) -> None:
    app_file, _ = make_app(tmp_path)
    async with serve_app(load_app(app_file), sqlite_backend) as served:
        c = served.client
        r = await c.post("/signup", json={"email": "a@example.com"})
        assert (r.status_code, r.json()) == (200, {"ok": True, "plan": "free"})
        r = await c.post("/signup", json={"plan": "pro"})
        assert r.status_code == 422
        assert "email" in r.json()["error"]
        r = await c.post("/signup", content=b"{not json")
        assert r.status_code == 400
        r = await c.get("/items/42?x=1")
        assert (r.status_code, r.json()) == (203, {"item": "42", "q": {"x": "1"}})
        assert (await c.post("/greet")).text == "hello world"
        assert (await c.post("/greet", json={"name": "ann"})).text == "hello ann"
        assert (await c.get("/slow")).status_code == 504
        assert (await c.get("/flaky")).json() == {"calls": 3}
        assert (await c.get("/nowhere")).status_code == 404
        r = await c.delete("/greet")
        assert (r.status_code, r.headers["allow"]) == (405, "POST")


async def test_a_function_over_its_rate_or_concurrency_answers_429(
    tmp_path: Path, backend: str
) -> None:
    app_file, _ = make_app(tmp_path)
    async with serve_app(load_app(app_file), backend) as served:
        c = served.client
        codes = [(await c.get("/limited")).status_code for _ in range(3)]
        assert codes == [200, 200, 429]
        refused = await c.get("/limited")
        assert int(refused.headers["retry-after"]) >= 1
        first = asyncio.create_task(c.get("/busy"))
        await wait_until(lambda: served.runner.running["busy"] == 1, what="busy to start")
        assert (await c.get("/busy")).status_code == 429
        assert (await first).text == "done"


async def test_an_event_fans_out_runs_a_sequence_and_a_duplicate_runs_once(
    tmp_path: Path, backend: str
) -> None:
    app_file, log = make_app(tmp_path)
    async with serve_app(load_app(app_file), backend) as served:
        c = served.client
        assert (await c.post("/signup", json={"email": "ann"})).status_code == 200
        # the same user again: a new event with the same idempotency key
        assert (await c.post("/signup", json={"email": "ann"})).status_code == 200
        await wait_until(
            lambda: lines(log).count("scored ann 3") == 2, what="both sequences to finish"
        )
        await wait_until(lambda: "welcome ann" in lines(log), what="the welcome")
        assert lines(log).count("welcome ann") == 1
        assert lines(log).count("score ann") == 2


async def test_a_raising_subscriber_is_dead_lettered_and_redrive_runs_it_again(
    tmp_path: Path, backend: str
) -> None:
    app_file, log = make_app(tmp_path)
    app = load_app(app_file)
    async with serve_app(app, backend) as served:
        r = await served.client.post(
            "/functions/broken", json={"n": 1}, headers={"Prefer": "respond-async"}
        )
        assert r.status_code == 202
        queue = served.runner.function_queue(app.get("broken"))

        async def dead_count() -> int:
            return len(await queue.dead())

        await wait_until(lambda: dead_count(), what="a dead letter")
        assert lines(log).count("broken {'n': 1}") == 2  # max_attempts=2
        (dead,) = await queue.dead()
        assert dead.attempts == 2
        assert "broken on purpose" in dead.error
        call = (await served.client.get(r.headers["location"])).json()
        assert call["state"] == "failed"
        assert "broken on purpose" in call["error"]

        log.with_suffix(".fixed").touch()
        assert await queue.retry_dead() == 1
        await wait_until(lambda: "repaired {'n': 1}" in lines(log), what="the redriven call")
        record = (await served.client.get(r.headers["location"])).json()
        assert record["state"] == "done"


async def test_an_event_older_than_its_max_age_is_dead_lettered_unrun(
    tmp_path: Path, sqlite_backend: str
) -> None:
    log = tmp_path / "aged.log"
    app_file = write_app(
        tmp_path,
        f"""
        import pathlib
        from podkit.functions import on_event

        @on_event("tick", max_age="1s")
        def aged(event):
            pathlib.Path({str(log)!r}).write_text("ran")
        """,
    )
    app = load_app(app_file)
    async with Queue(sqlite_backend, "fn.aged") as queue:
        stale = {
            "kind": "event",
            "event": {
                "specversion": "1.0",
                "id": "e1",
                "source": "test",
                "type": "tick",
                "time": "2020-01-01T00:00:00Z",
                "data": None,
            },
        }
        await queue.put(stale)
        async with serve_app(app, sqlite_backend):

            async def dead() -> bool:
                return len(await queue.dead()) == 1

            await wait_until(dead, what="the stale event to be dead-lettered")
        (item,) = await queue.dead()
        assert "older than max age" in item.error
    assert not log.exists()


async def test_an_async_call_answers_202_and_its_result_is_kept_and_sent_to_the_callback(
    tmp_path: Path, sqlite_backend: str
) -> None:
    app_file, _ = make_app(tmp_path)
    received: list[dict[str, object]] = []

    async def callback(request: Request) -> Response:
        received.append(json.loads(await request.read()))
        return Response(204)

    async with (
        HTTPServer(callback, host="127.0.0.1", port=0) as hook,
        serve_app(load_app(app_file), sqlite_backend) as served,
    ):
        r = await served.client.post(
            "/signup",
            json={"email": "cb@x"},
            headers={
                "Prefer": "respond-async",
                "X-Callback-Url": f"http://127.0.0.1:{hook.port}/done",
            },
        )
        assert r.status_code == 202
        call_id = r.json()["call_id"]
        assert r.headers["location"] == f"/calls/{call_id}"

        async def done() -> bool:
            got = await served.client.get(f"/calls/{call_id}")
            return bool(got.json()["state"] == "done")

        await wait_until(done, what="the call to finish")
        record = (await served.client.get(f"/calls/{call_id}")).json()
        assert record["status"] == 200
        assert record["result"] == {"ok": True, "plan": "free"}
        await wait_until(lambda: received, what="the callback")
        assert received[0]["id"] == call_id
        assert (await served.client.get("/calls/nope")).status_code == 404
        bad = await served.client.post(
            "/signup", json={}, headers={"Prefer": "respond-async", "X-Callback-Url": "x"}
        )
        assert bad.status_code == 400


async def test_a_queue_trigger_gets_each_item_value(tmp_path: Path, backend: str) -> None:
    log = tmp_path / "items.log"
    app_file = write_app(
        tmp_path,
        f"""
        from podkit.functions import on_queue

        @on_queue("thumbnails", concurrency=4)
        async def thumbnail(item):
            with open({str(log)!r}, "a") as f:
                f.write(item["image"] + "\\n")
        """,
    )
    async with Queue(backend, "thumbnails") as queue:
        for i in range(5):
            await queue.put({"image": f"img{i}"})
        async with serve_app(load_app(app_file), backend):
            await wait_until(lambda: len(lines(log)) == 5, what="five items")
        assert sorted(lines(log)) == [f"img{i}" for i in range(5)]
        assert (await queue.stats()).ready == 0


async def test_an_interval_timer_runs_its_function(tmp_path: Path, sqlite_backend: str) -> None:
    log = tmp_path / "timer.log"
    app_file = write_app(
        tmp_path,
        f"""
        from podkit.functions import on_timer

        @on_timer(every="50ms")
        def cleanup():
            with open({str(log)!r}, "a") as f:
                f.write("tick\\n")
        """,
    )
    async with serve_app(load_app(app_file), sqlite_backend):
        await wait_until(lambda: len(lines(log)) >= 3, what="three ticks")


async def test_a_rate_limit_on_redis_is_shared_by_every_runner(
    tmp_path: Path, redis_server: RedisServer
) -> None:
    app_file = write_app(
        tmp_path,
        """
        from podkit.functions import on_http, rate_limit

        @on_http("GET /once")
        @rate_limit("3/m")
        def once(request):
            return "ok"
        """,
    )
    app = load_app(app_file)
    async with serve_app(app, redis_server.url) as one, serve_app(app, redis_server.url) as two:
        codes = [
            (await served.client.get("/once")).status_code for served in (one, two, one, two, one)
        ]
        assert sorted(codes) == [200, 200, 200, 429, 429]
        assert codes[:3] == [200, 200, 200]


async def test_an_event_waits_for_its_rate_limit_only_up_to_max_wait(sqlite_backend: str) -> None:
    from podkit.functions import CloudEvent, FunctionApp, on_event, rate_limit

    @on_event("tick")
    @rate_limit("1/s", max_wait="100ms")
    def impatient(event: CloudEvent) -> str:
        return "ran"

    @on_event("tock")
    @rate_limit("1/s")
    def patient(event: CloudEvent) -> str:
        return "ran"

    app = FunctionApp.collect(impatient, patient)
    async with FunctionRunner(app, backend=sqlite_backend) as runner:
        for name in ("impatient", "patient"):
            spec = app.get(name)
            assert await runner.invoke(spec, "event", *runner.argument(spec, {})) == "ran"
        spec = app.get("impatient")
        with pytest.raises(RateLimited):  # its turn is about a second away
            await runner.invoke(spec, "event", *runner.argument(spec, {}))
        spec = app.get("patient")  # waits for its turn (within the default 30 s)
        assert await runner.invoke(spec, "event", *runner.argument(spec, {})) == "ran"
