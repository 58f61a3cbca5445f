"""Supervision figures: `podkit up` beside supervisord, running the same N whoami processes.

Measured for each supervisor, with the same command lines (``python -m podkit whoami``):

* **start**: from launching the supervisor until every process answers ``GET /``;
* **restart**: from SIGKILL of one process until its address answers again (K kills, rotating
  over the processes; median and max);
* **stop**: from asking the supervisor to stop until no process of it is left.

Run: ``.venv/bin/python bench/pods_bench.py [--replicas 10] [--kills 10]``. supervisord is
installed into the virtualenv with pip when it is missing.
"""

from __future__ import annotations

import argparse
import http.client
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Callable
from pathlib import Path

import yaml

from podkit.pods.supervisor import NotRunning, request
from podkit.testing.net import free_port

DEADLINE = 120.0  # seconds any one step may take on a loaded machine
_POLL = 0.005


def answers(host: str, port: int) -> bool:
    conn = http.client.HTTPConnection(host, port, timeout=1)
    try:
        conn.request("GET", "/")
        return conn.getresponse().status == 200
    except OSError:
        return False
    finally:
        conn.close()


def gone(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat.rpartition(")")[2].split()[0] == "Z"


def wait(predicate: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + DEADLINE
    while not predicate():
        if time.monotonic() > deadline:
            raise SystemExit(f"timed out waiting for {what}")
        time.sleep(_POLL)


class PodkitRun:
    name = "podkit up"

    def __init__(self, workdir: Path, replicas: int) -> None:
        self.workdir = workdir
        self.port = free_port()
        self.addresses = [(f"127.0.1.{r}", self.port) for r in range(1, replicas + 1)]
        pods = {
            "web": {
                "replicas": replicas,
                "containers": {
                    "app": {
                        "component": "whoami",
                        "options": {"listen": f"{{pod.ip}}:{self.port}", "name": "web"},
                    }
                },
            }
        }
        (workdir / "pods.yaml").write_text(yaml.safe_dump({"pods": pods}))
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "podkit", "up", "pods.yaml"],
            cwd=self.workdir,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )

    def pids(self) -> list[int]:
        try:
            rows = request(self.workdir / ".podkit", {"op": "status"})["containers"]
        except NotRunning:
            return []
        return [row["pid"] for row in sorted(rows, key=lambda r: r["replica"]) if row["pid"]]

    def stop(self) -> None:
        subprocess.run(
            [sys.executable, "-m", "podkit", "down"],
            cwd=self.workdir,
            check=True,
            capture_output=True,
        )
        assert self.proc is not None
        self.proc.wait(DEADLINE)


class SupervisordRun:
    name = "supervisord"

    def __init__(self, workdir: Path, replicas: int) -> None:
        self.workdir = workdir
        self.ports = [free_port() for _ in range(replicas)]
        self.addresses = [("127.0.0.1", port) for port in self.ports]
        programs = "".join(
            textwrap.dedent(
                f"""
                [program:web{i}]
                command={sys.executable} -m podkit whoami --listen 127.0.0.1:{port} --name web
                autorestart=true
                startsecs=0
                stopsignal=TERM
                stopasgroup=true
                killasgroup=true
                stdout_logfile={workdir}/web{i}.log
                redirect_stderr=true
                """
            )
            for i, port in enumerate(self.ports)
        )
        self.conf = workdir / "supervisord.conf"
        self.conf.write_text(
            textwrap.dedent(
                f"""
                [supervisord]
                nodaemon=true
                logfile={workdir}/supervisord.log
                pidfile={workdir}/supervisord.pid
                [unix_http_server]
                file={workdir}/supervisor.sock
                [rpcinterface:supervisor]
                supervisor.rpcinterface_factory = supervisor.rpcinterface:make_main_rpcinterface
                [supervisorctl]
                serverurl=unix://{workdir}/supervisor.sock
                """
            )
            + programs
        )
        self.proc: subprocess.Popen[bytes] | None = None
        self.bin = Path(sys.executable).parent

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [str(self.bin / "supervisord"), "-c", str(self.conf)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )

    def pids(self) -> list[int]:
        out = subprocess.run(
            [str(self.bin / "supervisorctl"), "-c", str(self.conf), "pid", "all"],
            capture_output=True,
            text=True,
            check=False,
        ).stdout
        return [int(line) for line in out.split() if line.isdigit() and int(line) > 0]

    def stop(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(DEADLINE)


def measure(run: PodkitRun | SupervisordRun, kills: int) -> dict[str, float]:
    began = time.monotonic()
    run.start()
    for host, port in run.addresses:
        wait(lambda h=host, p=port: answers(h, p), f"{host}:{port}")
    start = time.monotonic() - began
    wait(lambda: len(run.pids()) == len(run.addresses), "every pid")
    restarts = []
    for k in range(kills):
        index = k % len(run.addresses)
        pid = run.pids()[index]
        host, port = run.addresses[index]
        began = time.monotonic()
        os.kill(pid, signal.SIGKILL)
        wait(lambda p=pid: gone(p), "the killed process to die")
        wait(lambda h=host, p=port: answers(h, p), f"{host}:{port} again")
        restarts.append(time.monotonic() - began)
        wait(lambda: len(run.pids()) == len(run.addresses), "every pid again")
    pids = run.pids()
    began = time.monotonic()
    run.stop()
    wait(lambda: all(gone(pid) for pid in pids), "every process to stop")
    stop = time.monotonic() - began
    return {
        "start": start,
        "restart_median": statistics.median(restarts),
        "restart_max": max(restarts),
        "stop": stop,
    }


def ensure_supervisord() -> None:
    if (Path(sys.executable).parent / "supervisord").exists():
        return
    print("installing supervisor into the virtualenv (pip)", file=sys.stderr)
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "supervisor"], check=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--replicas", type=int, default=10)
    parser.add_argument("--kills", type=int, default=10)
    args = parser.parse_args()
    ensure_supervisord()
    results = {}
    for kind in (PodkitRun, SupervisordRun):
        with tempfile.TemporaryDirectory(prefix="pods-bench-") as tmp:
            run = kind(Path(tmp), args.replicas)
            results[run.name] = measure(run, args.kills)
    print(f"{args.replicas} whoami processes, {args.kills} SIGKILLs, load {os.getloadavg()[0]:.2f}")
    print(f"{'':14}{'start':>10}{'restart p50':>14}{'restart max':>14}{'stop':>10}")
    for name, r in results.items():
        print(
            f"{name:14}{r['start']:>9.2f}s{r['restart_median']:>13.3f}s"
            f"{r['restart_max']:>13.3f}s{r['stop']:>9.2f}s"
        )


if __name__ == "__main__":
    main()
