"""Work queue throughput: podkit against RQ, Celery, Dramatiq and Huey on one redis-server.

Every system gets the same job: a no-op Python function that counts itself with one redis
INCR (so the benchmark sees the last one finish). For each system, in turn, on a flushed
redis-server:

1. enqueue N items from this process with the system's ordinary one-at-a-time API
   (podkit's batch ``put_many`` is measured too) -> enqueue rate;
2. start 2 worker processes and time from the first item done to the last
   -> processing rate (worker start-up excluded); the time from starting the workers to the
   last item is printed as well, and the CPU time the worker processes spent per 1000
   items (from /proc, start-up excluded), which a busy machine disturbs much less.

Systems run in turn, ``--rounds`` times in a rotated order; the table shows medians.

podkit on SQLite runs the same steps with a queue file in a temporary directory.

Run from the repository root:  .venv/bin/python bench/queue_throughput.py
(installs rq, celery, dramatiq and huey into this interpreter's environment when missing)
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# module -> package; hiredis (the C reply parser of redis-py) serves every system alike
PEERS = {
    "rq": "rq",
    "celery": "celery",
    "dramatiq": "dramatiq[redis]",
    "huey": "huey",
    "hiredis": "hiredis",
}
COUNTER = "bench:done"
WORKER_THREADS = 8  # per worker process, for every system that has threads
PODKIT_PREFETCH = 64  # like Celery's prefetch multiplier (set to 64 below) and Dramatiq's prefetch


def ensure_peers() -> None:
    missing = [pkg for mod, pkg in PEERS.items() if importlib.util.find_spec(mod) is None]
    if missing:
        print(f"installing {' '.join(missing)} ...", flush=True)
        subprocess.run([sys.executable, "-m", "pip", "install", "-q", *missing], check=True)


@dataclass
class Result:
    system: str
    enqueue_rate: float
    batch_enqueue_rate: float | None
    process_rate: float
    wall: float
    cpu_ms_per_1k: float


def session_cpu_seconds(sessions: set[int]) -> float:
    """User + system CPU time of every live process in these sessions (Linux /proc)."""
    tick = os.sysconf("SC_CLK_TCK")
    total = 0
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        # after the command: state ppid pgrp session ... utime(12) stime(13)
        if int(fields[3]) in sessions:
            total += int(fields[11]) + int(fields[12])
    return total / tick


def bin_path(name: str) -> str:
    return str(Path(sys.executable).parent / name)


def enqueue_podkit(url: str, n: int, *, batch: bool) -> float:
    from podkit.queue import Queue
    from podkit.runtime import run_async

    async def run() -> float:
        async with Queue(url, "bench") as q:
            start = time.perf_counter()
            if batch:
                for i in range(0, n, 500):
                    await q.put_many([b"x"] * min(500, n - i))
            else:
                for _ in range(n):
                    await q.put(b"x")
            return time.perf_counter() - start

    return float(run_async(run()))


def run_system(
    name: str,
    redis_url: str,
    n: int,
    workers: int,
    enqueue: Callable[[], float],
    worker_argvs: list[list[str]],
    *,
    batch_enqueue: Callable[[], float] | None = None,
    reset: Callable[[], None] | None = None,
) -> Result:
    import redis

    r = redis.Redis.from_url(redis_url)
    batch_rate = None
    if batch_enqueue is not None:
        r.flushall()
        if reset:
            reset()
        batch_rate = n / batch_enqueue()
    r.flushall()
    if reset:
        reset()
    enqueue_seconds = enqueue()
    env = dict(os.environ, BENCH_REDIS_URL=redis_url, PYTHONPATH=str(ROOT))
    procs = [
        subprocess.Popen(
            argv,
            cwd=ROOT,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        for argv in worker_argvs
    ]
    started = time.perf_counter()
    first = None
    cpu_at_first = 0.0
    try:
        deadline = started + 600
        while True:
            done = int(r.get(COUNTER) or 0)
            now = time.perf_counter()
            if done >= 1 and first is None:
                first = now
                cpu_at_first = session_cpu_seconds({p.pid for p in procs})
            if done >= n:
                break
            if now > deadline:
                raise RuntimeError(f"{name}: only {done} of {n} items done after 600 s")
            time.sleep(0.002)
        finished = time.perf_counter()
        cpu = session_cpu_seconds({p.pid for p in procs}) - cpu_at_first
    finally:
        for p in procs:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(p.pid, 15)
        for p in procs:
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, 9)
                p.wait()
    assert first is not None
    result = Result(
        system=name,
        enqueue_rate=n / enqueue_seconds,
        batch_enqueue_rate=batch_rate,
        process_rate=(n - 1) / max(finished - first, 1e-9),
        wall=finished - started,
        cpu_ms_per_1k=cpu * 1000 / (n - 1) * 1000,
    )
    del workers
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--items", type=int, default=10_000)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=3, help="medians over this many rounds")
    parser.add_argument(
        "--systems",
        default="podkit,podkit-sqlite,rq,celery,dramatiq,huey",
        help="comma-separated subset to run",
    )
    args = parser.parse_args()
    ensure_peers()
    sys.path.insert(0, str(ROOT))
    from podkit.testing import RedisServer

    n, w = args.items, args.workers
    chosen = args.systems.split(",")
    results: dict[str, list[Result]] = {}
    with RedisServer() as server, tempfile.TemporaryDirectory() as tmp:
        url = server.url
        os.environ["BENCH_REDIS_URL"] = url
        podkit_argv = [bin_path("podkit"), "queue", "work"]
        handler = ["--handler", "bench.queue_apps.podkit_app:noop", "--log-level", "warning"]
        threads = ["--concurrency", str(WORKER_THREADS), "--prefetch", str(PODKIT_PREFETCH)]

        def podkit_run(label: str, qurl: str, reset: Callable[[], None] | None) -> Result:
            return run_system(
                label,
                url,
                n,
                w,
                lambda: enqueue_podkit(qurl, n, batch=False),
                [[*podkit_argv, qurl, "bench", *threads, *handler] for _ in range(w)],
                batch_enqueue=lambda: enqueue_podkit(qurl, n, batch=True),
                reset=reset,
            )

        def run_one(system: str) -> Result:
            if system == "podkit":
                return podkit_run("podkit (redis)", url, None)
            if system == "podkit-sqlite":
                db = Path(tmp) / "bench.db"

                def reset_sqlite(db: Path = db) -> None:
                    for suffix in ("", "-wal", "-shm"):
                        Path(f"{db}{suffix}").unlink(missing_ok=True)

                return podkit_run("podkit (sqlite)", f"sqlite:///{db}", reset_sqlite)
            if system == "rq":
                import redis
                from rq import Queue as RQueue

                def rq_enqueue() -> float:
                    q = RQueue("bench", connection=redis.Redis.from_url(url))
                    start = time.perf_counter()
                    for _ in range(n):
                        q.enqueue("bench.queue_apps.rq_app.noop", result_ttl=0)
                    return time.perf_counter() - start

                argv = [bin_path("rq"), "worker", "-w", "rq.worker.SimpleWorker", "-u", url]
                return run_system("RQ", url, n, w, rq_enqueue, [[*argv, "-q", "bench"]] * w)
            if system == "celery":
                from bench.queue_apps.celery_app import noop as celery_noop

                def celery_enqueue() -> float:
                    start = time.perf_counter()
                    for _ in range(n):
                        celery_noop.delay()
                    return time.perf_counter() - start

                argv = [
                    bin_path("celery"), "-A", "bench.queue_apps.celery_app", "worker",
                    "-P", "threads", "-c", str(WORKER_THREADS), "-l", "warning",
                    "--without-gossip", "--without-mingle", "--without-heartbeat",
                ]  # fmt: skip
                return run_system(
                    "Celery",
                    url,
                    n,
                    w,
                    celery_enqueue,
                    [[*argv, "-n", f"w{i}@%h"] for i in range(w)],
                )
            if system == "dramatiq":
                from bench.queue_apps.dramatiq_app import noop as dramatiq_noop

                def dramatiq_enqueue() -> float:
                    start = time.perf_counter()
                    for _ in range(n):
                        dramatiq_noop.send()
                    return time.perf_counter() - start

                argv = [
                    bin_path("dramatiq"), "bench.queue_apps.dramatiq_app",
                    "--processes", str(w), "--threads", str(WORKER_THREADS),
                ]  # fmt: skip
                return run_system("Dramatiq", url, n, w, dramatiq_enqueue, [argv])
            if system == "huey":
                from bench.queue_apps.huey_app import noop as huey_noop

                def huey_enqueue() -> float:
                    start = time.perf_counter()
                    for _ in range(n):
                        huey_noop()
                    return time.perf_counter() - start

                argv = [
                    bin_path("huey_consumer"), "bench.queue_apps.huey_app.huey",
                    "-k", "thread", "-w", str(WORKER_THREADS), "-q",
                ]  # fmt: skip
                return run_system("Huey", url, n, w, huey_enqueue, [argv] * w)
            raise SystemExit(f"unknown system {system!r}")

        for round_no in range(args.rounds):
            # rotate the order so no system always runs first (or last) on a busy machine
            shift = round_no % len(chosen)
            for system in chosen[shift:] + chosen[:shift]:
                print(f"round {round_no + 1}: running {system} ...", flush=True)
                result = run_one(system)
                results.setdefault(result.system, []).append(result)
                print(f"  {format_row(result)}", flush=True)

    print()
    print(
        f"{n} items, {w} worker processes, {WORKER_THREADS} threads/tasks per process; "
        f"median of {args.rounds} rounds"
    )
    print(
        "| system | enqueue/s (one at a time) | enqueue/s (batch) | processed/s | wall s "
        "| worker CPU ms / 1000 items |"
    )
    print("|---|---:|---:|---:|---:|---:|")
    medians = {name: median_result(runs) for name, runs in results.items()}
    for res in medians.values():
        print(format_row(res))
    peer_names = [name for name in medians if not name.startswith("podkit")]
    ours = medians.get("podkit (redis)")
    if peer_names and ours:
        best = max((medians[name] for name in peer_names), key=lambda r: r.process_rate)
        print(
            f"\npodkit (redis) / best peer ({best.system}), medians: "
            f"{ours.process_rate / best.process_rate:.2f}x processed/s, "
            f"{best.cpu_ms_per_1k / ours.cpu_ms_per_1k:.2f}x less worker CPU per item"
        )
        for i, run in enumerate(results["podkit (redis)"]):
            top = max((results[name][i] for name in peer_names), key=lambda r: r.process_rate)
            print(
                f"round {i + 1}: {run.process_rate / top.process_rate:.2f}x "
                f"the best peer ({top.system})"
            )


def median_result(runs: list[Result]) -> Result:
    batch = [r.batch_enqueue_rate for r in runs if r.batch_enqueue_rate is not None]
    return Result(
        system=runs[0].system,
        enqueue_rate=statistics.median(r.enqueue_rate for r in runs),
        batch_enqueue_rate=statistics.median(batch) if batch else None,
        process_rate=statistics.median(r.process_rate for r in runs),
        wall=statistics.median(r.wall for r in runs),
        cpu_ms_per_1k=statistics.median(r.cpu_ms_per_1k for r in runs),
    )


def format_row(r: Result) -> str:
    batch = f"{r.batch_enqueue_rate:,.0f}" if r.batch_enqueue_rate else "-"
    return (
        f"| {r.system} | {r.enqueue_rate:,.0f} | {batch} | {r.process_rate:,.0f} "
        f"| {r.wall:.2f} | {r.cpu_ms_per_1k:,.0f} |"
    )


if __name__ == "__main__":
    main()
