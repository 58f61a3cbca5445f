"""Failover time and chaos safety of ``podkit elect`` on SQLite, Redis and etcd.

Run from the repository root::

    .venv/bin/python bench/election.py                      # 20 kills + 60 s chaos per backend
    .venv/bin/python bench/election.py --backends redis --kills 5 --chaos 10s

Failover: three ``podkit elect`` processes campaign with ``--ttl 2s``; the leader is killed
with SIGKILL at a random point of its renewal cycle, and we measure the time from the kill to
the moment the next leader's command is running (it records its start). Target: at most
ttl + 0.5 s, every time.

Chaos: for 60 s, every 0.5-2 s one of: SIGKILL the leader (then start it again), SIGSTOP the
leader and its command past the ttl (then SIGCONT), SIGKILL a follower, restart the backend
server. Afterwards, from the processes' logs: the intervals in which each process believed it
led (from its grant to the earlier of its step-down and its last lease deadline) must never
overlap, and fencing tokens must rise with time. The commands' own work ("ticks", tagged with
their token) is checked too: a command frozen together with its elector can tick once more on
resume before its SIGTERM lands; such ticks carry an older token, which is exactly what a
fenced resource rejects, and are counted.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import itertools
import json
import os
import random
import signal
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from podkit.runtime.config import parse_duration
from podkit.testing import (
    EtcdServer,
    PodkitProcess,
    RedisServer,
    ServerProcess,
    require_binary,
)
from podkit.testing.net import wait_for

COMMAND = [sys.executable, "-m", "podkit.testing.leader_command"]
REPLICAS = 3
ETCDCTL_SESSION_TTL = 60  # etcdctl elect's session ttl (concurrency.NewSession's default)
# etcd's shortest lease is 1.5 x its election timeout rounded up to whole seconds: 2 s with
# its default of 1 s, too long for ttl + 0.5 s at ttl 2 s; at 0.5 s it grants 1 s leases.
ETCD_ELECTION_TIMEOUT = "500ms"

# The peer on Redis: redis-py's Lock with the same ttl, renewed (reacquire) every ttl/3 and
# polled every ttl/10 like podkit; it records its start the way the podkit command does.
REDIS_LOCK_PEER = """
import json, os, sys, time
import redis
url, outdir, identity, ttl = sys.argv[1], sys.argv[2], sys.argv[3], float(sys.argv[4])
client = redis.Redis.from_url(url)
lock = client.lock("bench-peer", timeout=ttl, sleep=ttl / 10)
lock.acquire(blocking=True)
record = {"token": client.incr("bench-peer-seq"), "identity": identity,
          "pid": os.getpid(), "at": time.monotonic()}
path = os.path.join(outdir, f"{os.getpid()}.start")
with open(path + ".partial", "w") as out:
    json.dump(record, out)
os.rename(path + ".partial", path)
while True:
    time.sleep(ttl / 3)
    lock.reacquire()
"""
TARGET_SLACK = 0.5  # the failover target is ttl + 0.5 s


@dataclass
class Cluster:
    """``REPLICAS`` elect processes on one backend; every process ever started is kept for
    its log."""

    url: str
    outdir: Path
    ttl: str
    peer: bool = False  # run the redis-py Lock peer instead of podkit elect
    live: dict[str, ServerProcess] = field(default_factory=dict)
    all: list[ServerProcess] = field(default_factory=list)
    logs: list[str] = field(default_factory=list)

    def start(self, identity: str) -> None:
        process: ServerProcess
        if self.peer:
            seconds = str(parse_duration(self.ttl))
            argv = [sys.executable, "-c", REDIS_LOCK_PEER, self.url, str(self.outdir), identity]
            process = ServerProcess([*argv, seconds], name="redis-py-lock")
        else:
            process = PodkitProcess(
                "elect", "--backend", self.url, "--name", "bench", "--ttl", self.ttl,
                "--id", identity, "--grace", "1s", "--log-level", "debug",
                "--", *COMMAND, str(self.outdir),
            )  # fmt: skip
        process.start()
        self.live[identity] = process
        self.all.append(process)

    def kill(self, identity: str) -> None:
        self.live.pop(identity).kill()

    def close(self) -> None:
        for process in self.all:
            process.stop(grace=3)
            self.logs.append(process.output())
            Path(process.log_path).unlink(missing_ok=True)


def starts(outdir: Path) -> list[dict[str, Any]]:
    records = []
    for path in outdir.glob("*.start"):
        with contextlib.suppress(ValueError):  # a record being written right now
            records.append(json.loads(path.read_text()))
    return sorted(records, key=lambda record: record["token"])


def current_leader(outdir: Path) -> dict[str, Any] | None:
    records = starts(outdir)
    if not records:
        return None
    last = records[-1]
    if (outdir / f"{last['pid']}.stop").exists() or not _alive(last["pid"]):
        return None
    return last


def _alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


ETCD_TIMING: dict[str, float | None] = {"election_timeout": None}


@contextlib.contextmanager
def backend(kind: str, workdir: Path) -> Iterator[tuple[str, RedisServer | EtcdServer | None]]:
    if kind == "sqlite":
        yield f"sqlite:///{workdir}/leases.db", None
    elif kind == "redis":
        with RedisServer() as redis_server:
            yield redis_server.url, redis_server
    else:
        with EtcdServer(election_timeout=ETCD_TIMING["election_timeout"]) as etcd_server:
            yield etcd_server.url, etcd_server


def measure_failover(
    kind: str, *, kills: int, ttl: str, rng: random.Random, peer: bool = False
) -> list[float]:
    seconds = parse_duration(ttl)
    with tempfile.TemporaryDirectory() as tmp, backend(kind, Path(tmp)) as (url, _):
        outdir = Path(tmp) / "out"
        outdir.mkdir()
        cluster = Cluster(url, outdir, ttl, peer=peer)
        times = []
        try:
            for index in range(REPLICAS):
                cluster.start(f"node-{index}")
            for _ in range(kills):
                wait_for(lambda: current_leader(outdir) is not None, timeout=30, what="a leader")
                # Kill at a random point of the leader's renewal cycle.
                time.sleep(rng.uniform(0.5, 0.5 + seconds))
                leader = current_leader(outdir)
                assert leader is not None
                killed_at = time.monotonic()
                cluster.kill(leader["identity"])
                old_token = leader["token"]
                wait_for(
                    lambda old=old_token: starts(outdir)[-1]["token"] > old,
                    timeout=30,
                    what="the next leader",
                )
                times.append(starts(outdir)[-1]["at"] - killed_at)
                cluster.start(leader["identity"])
        finally:
            cluster.close()
    return times


def measure_etcdctl_failover(*, kills: int, rng: random.Random) -> list[float]:
    """The same kill loop with ``etcdctl elect`` (which prints its proposal once elected)."""
    etcdctl = require_binary("etcdctl")
    times = []
    with EtcdServer() as server:
        live: dict[str, ServerProcess] = {}
        every: list[ServerProcess] = []

        def start(identity: str) -> None:
            argv = [etcdctl, "--endpoints", f"{server.host}:{server.port}", "elect", "bench"]
            process = ServerProcess([*argv, identity], env={"ETCDCTL_API": "3"}, name="etcdctl")
            live[identity] = process.start()
            every.append(process)

        def leader() -> str | None:
            for identity, process in live.items():
                if process.running() and identity in process.output().split():
                    return identity
            return None

        limit = 3 * ETCDCTL_SESSION_TTL
        try:
            for index in range(REPLICAS):
                start(f"node-{index}")
            for _ in range(kills):
                wait_for(lambda: leader() is not None, timeout=limit, what="a leader")
                time.sleep(rng.uniform(0.5, 2.5))
                victim = leader()
                assert victim is not None
                killed_at = time.monotonic()
                live.pop(victim).kill()
                wait_for(lambda: leader() is not None, timeout=limit, what="the next leader")
                times.append(time.monotonic() - killed_at)
                start(victim)
        finally:
            for process in every:
                process.__exit__(None, None, None)
    return times


@dataclass
class ChaosReport:
    duration: float
    actions: dict[str, int]
    terms: int
    overlaps: int
    token_inversions: int
    ticks: int
    stale_ticks: int
    stale_ticks_fenced: int


def run_chaos(kind: str, *, duration: float, ttl: str, rng: random.Random) -> ChaosReport:
    seconds = parse_duration(ttl)
    actions = {"kill leader": 0, "freeze leader": 0, "kill follower": 0, "restart server": 0}
    timeline: list[tuple[float, str]] = []
    hijacks = 0
    with tempfile.TemporaryDirectory() as tmp, backend(kind, Path(tmp)) as (url, server):
        outdir = Path(tmp) / "out"
        outdir.mkdir()
        cluster = Cluster(url, outdir, ttl)
        try:
            for index in range(REPLICAS):
                cluster.start(f"node-{index}")
            end = time.monotonic() + duration
            while time.monotonic() < end:
                time.sleep(rng.uniform(0.5, 2.0))
                choices = ["kill leader", "freeze leader", "kill follower"]
                if server is not None:
                    choices.append("restart server")
                action = rng.choice(choices)
                leader = current_leader(outdir)
                if action != "restart server" and (
                    leader is None or leader["identity"] not in cluster.live
                ):
                    continue
                actions[action] += 1
                timeline.append((time.time(), action))  # wall time, as the logs' ts
                if action == "kill leader":
                    assert leader is not None
                    cluster.kill(leader["identity"])
                    cluster.start(leader["identity"])
                elif action == "freeze leader":
                    assert leader is not None
                    elector = cluster.live[leader["identity"]]
                    pids = [elector.pid, leader["pid"]]
                    for pid in pids:
                        with contextlib.suppress(ProcessLookupError):
                            os.kill(pid, signal.SIGSTOP)
                    time.sleep(rng.uniform(1.2 * seconds, 2.5 * seconds))
                    for pid in pids:  # resumed together, like a paused VM
                        with contextlib.suppress(ProcessLookupError):
                            os.kill(pid, signal.SIGCONT)
                elif action == "kill follower":
                    assert leader is not None
                    followers = [i for i in cluster.live if i != leader["identity"]]
                    if followers:
                        victim = rng.choice(followers)
                        cluster.kill(victim)
                        cluster.start(victim)
                else:
                    assert server is not None
                    before = server_identity(server)
                    server.restart()
                    after = server_identity(server)
                    if before != after:  # another server took the port while ours was down
                        print(f"restart: the server is not ours ({after})", file=sys.stderr)
                        hijacks += 1
        finally:
            cluster.close()
        terms = belief_intervals(cluster.logs)
        ticks = read_ticks(outdir / "ticks")
    if hijacks:
        print(f"{hijacks} restarts came back as another server: run invalid", file=sys.stderr)
    ordered = sorted(terms)
    overlaps = sum(1 for a, b in itertools.pairwise(ordered) if a[1] > b[0])
    for a, b in itertools.pairwise(ordered):
        if a[1] > b[0]:  # show what happened around it, for whoever reads the run
            print(f"overlap: term {a} and term {b}", file=sys.stderr)
            for at, what in timeline:
                if a[0] - 5 <= at <= b[1] + 1:
                    print(f"  {at:.3f} {what}", file=sys.stderr)
            for log in cluster.logs:
                for line in log.splitlines():
                    if str(a[2]) in line or str(b[2]) in line:
                        print(f"  {line}", file=sys.stderr)
    inversions = sum(1 for a, b in itertools.pairwise(ordered) if a[2] >= b[2])
    stale = fenced = 0
    highest = 0
    for token, _ in ticks:
        if token < highest:
            stale += 1
            fenced += 1  # a resource that remembers the highest token refuses it
        highest = max(highest, token)
    return ChaosReport(
        duration, actions, len(terms), overlaps, inversions, len(ticks), stale, fenced
    )


def server_identity(server: RedisServer | EtcdServer) -> str:
    """Which etcd cluster answers on the port (its cluster id survives our restarts, not a
    stranger taking the port meanwhile); Redis has no such id and always answers ""."""
    if not isinstance(server, EtcdServer):
        return ""
    for _ in range(50):  # bounded: the server may still be electing itself
        with contextlib.suppress(httpx.HTTPError, KeyError, ValueError):
            reply = httpx.post(f"{server.endpoint}/v3/maintenance/status", json={}, timeout=2)
            return str(reply.json()["header"]["cluster_id"])
        time.sleep(0.1)
    return "unreachable"


def belief_intervals(logs: list[str]) -> list[tuple[float, float, int]]:
    """``(start, end, token)`` per term: from the grant to the earlier of the step-down and
    the last lease deadline the process computed. Times are the logs' wall-clock ``ts`` (to
    the millisecond, one clock for every process of this machine); a deadline is ``ts`` plus
    the record's ``lease_left``."""
    terms: dict[int, dict[str, float]] = {}
    for log in logs:
        for line in log.splitlines():
            if not line.startswith("{"):
                continue
            record = json.loads(line)
            message, token = record.get("msg"), record.get("token")
            if token is None:
                continue
            term = terms.setdefault(token, {"start": float("inf"), "end": float("inf")})
            at = datetime.datetime.fromisoformat(record["ts"]).timestamp()
            if message in ("leading", "renewed"):
                deadline = at + parse_duration(record["lease_left"])
                term["deadline"] = max(term.get("deadline", 0.0), deadline)
                if message == "leading":
                    term["start"] = at
            elif message in ("leadership lost", "leadership released", "leadership resigned"):
                term["end"] = min(term["end"], at)
    return [
        (term["start"], min(term["end"], term.get("deadline", term["end"])), token)
        for token, term in terms.items()
        if term["start"] != float("inf")
    ]


def read_ticks(path: Path) -> list[tuple[int, float]]:
    if not path.exists():
        return []
    ticks = []
    for line in path.read_text().splitlines():
        parts = line.split()
        if len(parts) == 2:
            ticks.append((int(parts[0]), float(parts[1])))
    return sorted(ticks, key=lambda tick: tick[1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backends", default="sqlite,redis,etcd")
    parser.add_argument("--kills", type=int, default=20)
    parser.add_argument("--chaos", default="60s", help="chaos run length per backend (0 skips)")
    parser.add_argument("--ttl", default="2s")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument(
        "--peers",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="also measure redis-py's Lock and etcdctl elect",
    )
    parser.add_argument("--etcdctl-kills", type=int, default=2, help="each takes about 60 s")
    parser.add_argument(
        "--etcd-election-timeout",
        default=ETCD_ELECTION_TIMEOUT,
        help="etcd's --election-timeout (sets its shortest lease); 'default' keeps etcd's 1 s",
    )
    args = parser.parse_args()
    if args.etcd_election_timeout != "default":
        ETCD_TIMING["election_timeout"] = parse_duration(args.etcd_election_timeout)
    rng = random.Random(args.seed)
    ttl = parse_duration(args.ttl)
    target = ttl + TARGET_SLACK
    load = os.getloadavg()
    print(
        f"# podkit elect, ttl {args.ttl}, {REPLICAS} replicas, load {load[0]:.1f} (1 min), "
        f"etcd election timeout {args.etcd_election_timeout}"
    )
    print()
    print(f"| backend | kills | median failover | max failover | target ≤ {target:g} s | met |")
    print("|---|---|---|---|---|---|")
    for kind in args.backends.split(","):
        if args.kills <= 0:
            break
        times = measure_failover(kind, kills=args.kills, ttl=args.ttl, rng=rng)
        met = sum(1 for t in times if t <= target)
        print(
            f"| {kind} | {len(times)} | {statistics.median(times):.2f} s | {max(times):.2f} s "
            f"| {target:g} s | {met}/{len(times)} |",
            flush=True,
        )
    if args.peers:
        print()
        print("| peer | kills | median failover | max failover | notes |")
        print("|---|---|---|---|---|")
        times = measure_failover("redis", kills=args.kills or 20, ttl=args.ttl, rng=rng, peer=True)
        print(
            f"| redis-py Lock, timeout {args.ttl} | {len(times)} | "
            f"{statistics.median(times):.2f} s | {max(times):.2f} s "
            "| no fencing token; time to acquire, no command start |",
            flush=True,
        )
        times = measure_etcdctl_failover(kills=args.etcdctl_kills, rng=rng)
        print(
            f"| etcdctl elect | {len(times)} | {statistics.median(times):.2f} s "
            f"| {max(times):.2f} s | session ttl fixed at {ETCDCTL_SESSION_TTL} s |",
            flush=True,
        )
    chaos_seconds = parse_duration(args.chaos)
    if chaos_seconds <= 0:
        return
    print()
    print(
        "| backend | run | kills / freezes / follower kills / server restarts | terms "
        "| overlapping beliefs | token inversions | command ticks | stale ticks (fenced) |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for kind in args.backends.split(","):
        report = run_chaos(kind, duration=chaos_seconds, ttl=args.ttl, rng=rng)
        a = report.actions
        print(
            f"| {kind} | {report.duration:g} s | {a['kill leader']} / {a['freeze leader']} / "
            f"{a['kill follower']} / {a['restart server']} | {report.terms} | {report.overlaps} "
            f"| {report.token_inversions} | {report.ticks} | {report.stale_ticks} "
            f"({report.stale_ticks_fenced}) |",
            flush=True,
        )


if __name__ == "__main__":
    main()
