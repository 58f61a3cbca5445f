"""Zero loss under SIGKILL: 10,000 items, 2 workers, 10 random SIGKILLs during the run.

For each backend (redis, sqlite) the script puts N uniquely numbered items, starts 2
``podkit queue work`` processes (the handler sleeps 1 ms and records which item it ran in a
redis hash), and SIGKILLs a random worker at random moments (a new one is started at once),
``--kills`` times while items remain. When the queue has acked N items it checks:

* every item was processed at least once (the hash has N distinct items);
* every item was acked (ack total N; nothing ready, leased or dead left);
* duplicates = handler runs beyond one per item, which the kills bound: at most
  ``kills * (concurrency + prefetch)`` items are held by a worker when it dies.

Run from the repository root:  .venv/bin/python bench/queue_chaos.py
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import random
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CONCURRENCY = 8
PREFETCH = 16
VISIBILITY = "2s"
SEEN = "bench:seen"


def start_worker(url: str, redis_url: str) -> subprocess.Popen[bytes]:
    argv = [
        str(Path(sys.executable).parent / "podkit"), "queue", "work", url, "chaos",
        "--concurrency", str(CONCURRENCY), "--prefetch", str(PREFETCH),
        "--visibility", VISIBILITY, "--log-level", "warning",
        "--handler", "bench.queue_apps.podkit_app:chaos",
    ]  # fmt: skip
    env = dict(os.environ, BENCH_REDIS_URL=redis_url, PYTHONPATH=str(ROOT))
    return subprocess.Popen(
        argv, cwd=ROOT, env=env, stderr=subprocess.DEVNULL, start_new_session=True
    )


def run(url: str, redis_url: str, n: int, kills: int, seed: int) -> dict[str, object]:
    import redis

    from podkit.queue import PutRequest, Queue

    rng = random.Random(seed)
    r = redis.Redis.from_url(redis_url)
    r.flushall()

    async def read_stats() -> tuple[int, int, int, int]:
        async with Queue(url, "chaos") as q:
            s = await q.stats()
            return s.ack_total, s.ready + s.delayed, s.leased, s.dead

    async def fill_with_attempts() -> None:
        async with Queue(url, "chaos") as q:
            await q.purge()
            for i in range(0, n, 500):
                await q.put_many(
                    PutRequest(str(j).encode(), max_attempts=20) for j in range(i, min(n, i + 500))
                )

    asyncio.run(fill_with_attempts())
    workers = [start_worker(url, redis_url) for _ in range(2)]
    started = time.perf_counter()
    done_kills = 0
    next_kill = started + rng.uniform(0.3, 0.8)
    try:
        while True:
            acked, waiting, leased, dead = asyncio.run(read_stats())
            if acked >= n:
                break
            now = time.perf_counter()
            if now - started > 600:
                raise RuntimeError(f"only {acked} of {n} acked after 600 s")
            if done_kills < kills and now >= next_kill:
                victim = rng.randrange(len(workers))
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(workers[victim].pid, signal.SIGKILL)
                workers[victim].wait()
                workers[victim] = start_worker(url, redis_url)
                done_kills += 1
                next_kill = now + rng.uniform(0.2, 0.8)
            time.sleep(0.05)
        wall = time.perf_counter() - started
    finally:
        for w in workers:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(w.pid, signal.SIGTERM)
        for w in workers:
            try:
                w.wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(w.pid, signal.SIGKILL)
                w.wait()
    acked, waiting, leased, dead = asyncio.run(read_stats())
    seen = {k: int(v) for k, v in r.hgetall(SEEN).items()}
    runs = sum(seen.values())
    result: dict[str, object] = {
        "items": n,
        "kills": done_kills,
        "acked": acked,
        "processed_at_least_once": len(seen),
        "duplicates": runs - len(seen),
        "duplicate_bound": done_kills * (CONCURRENCY + PREFETCH),
        "left_waiting": waiting,
        "left_leased": leased,
        "dead": dead,
        "wall_s": round(wall, 2),
    }
    if url.startswith("sqlite:///"):
        with contextlib.closing(sqlite3.connect(url[len("sqlite:///") :])) as db:
            result["sqlite_integrity"] = db.execute("PRAGMA integrity_check").fetchone()[0]
    ok = (
        acked == n
        and len(seen) == n
        and waiting == leased == dead == 0
        and runs - len(seen) <= done_kills * (CONCURRENCY + PREFETCH)
    )
    result["zero_loss"] = ok
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--items", type=int, default=10_000)
    parser.add_argument("--kills", type=int, default=10)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--backends", default="redis,sqlite")
    args = parser.parse_args()
    sys.path.insert(0, str(ROOT))
    from podkit.testing import RedisServer

    failed = False
    with RedisServer() as server, tempfile.TemporaryDirectory() as tmp:
        for backend in args.backends.split(","):
            url = server.url if backend == "redis" else f"sqlite:///{tmp}/chaos.db"
            print(f"running {backend} ...", flush=True)
            result = run(url, server.url, args.items, args.kills, args.seed)
            print(f"{backend}: {result}", flush=True)
            failed |= not result["zero_loss"]
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
