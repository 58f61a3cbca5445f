"""``serve_workers``' command channel: broadcasts, answers, timeouts, requests from a worker
and the replay of state set by hand to a worker started again, with real worker processes."""

from __future__ import annotations

import asyncio
import os
import signal
from typing import Any

from podkit.engines.workers import WorkerAnswer, WorkerPool, serve_workers, worker_link
from podkit.runtime import Runtime, RuntimeOptions, serve_component


async def _worker(rt: Runtime, settings: Any) -> None:
    """A worker that keeps one number, set by the parent or by its peers."""
    link = worker_link()
    assert link is not None
    value = {"n": 0}

    def set_value(payload: dict[str, Any]) -> dict[str, Any]:
        value["n"] = int(payload["n"])
        return {"n": value["n"]}

    def get(payload: dict[str, Any]) -> dict[str, Any]:
        return {"n": value["n"], "index": link.index, "pid": os.getpid()}

    def fail(payload: dict[str, Any]) -> None:
        raise ValueError("refused on purpose")

    async def slow(payload: dict[str, Any]) -> str:
        await asyncio.sleep(float(payload["seconds"]))
        return "late"

    async def tell_others(payload: dict[str, Any]) -> Any:
        # A worker asks the parent, which broadcasts to the other workers.
        return await link.request("set-others", payload)

    link.handle("set", set_value)
    link.handle("get", get)
    link.handle("fail", fail)
    link.handle("slow", slow)
    link.handle("tell-others", tell_others)
    rt.set_ready()
    await rt.wait_draining()


async def _until(check: Any, timeout: float = 20.0) -> None:
    async with asyncio.timeout(timeout):
        while True:
            if await check():
                return
            await asyncio.sleep(0.05)


async def test_broadcast_answers_timeouts_requests_and_replay() -> None:
    pool = WorkerPool(timeout=2.0)
    hand_set = {"n": 0}
    pool.replay_with(lambda: [("set", {"n": hand_set["n"]})])
    relayed: list[int] = []

    async def set_others(index: int, payload: dict[str, Any]) -> list[int]:
        relayed.append(index)
        answers = await pool.broadcast("set", payload, exclude=index)
        return [a.index for a in answers if a.ok]

    pool.on_request("set-others", set_others)
    seen: dict[str, Any] = {}

    async def main(rt: Runtime) -> None:
        serving = asyncio.create_task(
            serve_workers(rt, count=2, main=_worker, settings=None, name="demo", pool=pool)
        )
        try:
            await _until(lambda: _ready(rt))

            async def values() -> list[WorkerAnswer]:
                return sorted(await pool.broadcast("get", {}), key=lambda a: a.index)

            answers = await values()
            seen["indexes"] = [a.index for a in answers]
            seen["ok"] = all(a.ok for a in answers)

            failed = await pool.broadcast("fail", {})
            seen["failed"] = sorted(a.error or "" for a in failed)

            late = await pool.broadcast("slow", {"seconds": 5}, timeout=0.2)
            seen["late"] = sorted(a.error or "" for a in late)

            told = await pool.broadcast("tell-others", {"n": 5}, exclude=1)
            seen["told"] = [a.result for a in told]
            seen["relayed"] = relayed
            seen["after_tell"] = [a.result["n"] for a in await values()]

            hand_set["n"] = 7
            await pool.broadcast("set", {"n": 7})
            victim = answers[0].result["pid"]
            os.kill(victim, signal.SIGKILL)

            async def restarted() -> bool:
                now = await values()
                if len(now) != 2 or not all(a.ok for a in now):
                    return False  # the killed one is not started again yet
                return victim not in {a.result["pid"] for a in now}

            await _until(restarted)
            seen["after_restart"] = [a.result["n"] for a in await values()]
        finally:
            rt.begin_drain()
            await serving

    code = await serve_component("demo", main, RuntimeOptions(drain_timeout=2.0))
    assert code == 0
    assert seen["indexes"] == [0, 1]
    assert seen["ok"]
    assert seen["failed"] == ["refused on purpose"] * 2
    assert seen["late"] == ["no answer within 200ms"] * 2
    assert seen["told"] == [[1]]  # worker 0 asked; the parent reached worker 1
    assert seen["relayed"] == [0]
    assert seen["after_tell"] == [0, 5]
    # The worker started again got the value set by hand before it could answer anything.
    assert seen["after_restart"] == [7, 7]


async def _ready(rt: Runtime) -> bool:
    return rt.lifecycle.statistics().ready


async def test_a_pool_without_workers_reaches_no_one() -> None:
    assert await WorkerPool().broadcast("get", {}) == []
