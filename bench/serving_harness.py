"""Shared pieces of the serving benchmarks (``bench/balance.py``, ``bench/cache.py``).

Processes are pinned with ``taskset`` on a machine with two cores or more: the component under
test (podkit or its peer) gets core 0; wrk and the backends share core 1.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

BODY = "podkit-bench " + "x" * 86  # 99 bytes plus the newline nginx adds
CORE_UNDER_TEST = "0"
CORE_LOAD = "1"


def find(binary: str) -> str | None:
    """The path of ``binary`` (also looked up in /usr/sbin, where daemons live)."""
    return shutil.which(binary) or next(
        (p for p in (f"/usr/sbin/{binary}", f"/usr/bin/{binary}") if os.path.exists(p)), None
    )


def ensure_tools(packages: dict[str, str]) -> None:
    """Install the Debian packages of missing binaries (``{binary: package}``) with apt-get."""
    missing = sorted({pkg for binary, pkg in packages.items() if find(binary) is None})
    if not missing:
        return
    print(f"installing {' '.join(missing)} with apt-get", file=sys.stderr)
    prefix = [] if os.geteuid() == 0 else ["sudo"]
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    subprocess.run([*prefix, "apt-get", "update", "-qq"], check=False, env=env)
    subprocess.run(
        [*prefix, "apt-get", "install", "-y", "-qq", "--no-install-recommends", *missing],
        check=True,
        env=env,
    )


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_port(port: int, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
            return
        time.sleep(0.05)
    raise SystemExit(f"port {port} did not open")


def pinned(core: str | None, argv: list[str]) -> list[str]:
    if core is None or shutil.which("taskset") is None or (os.cpu_count() or 1) < 2:
        return argv
    return ["taskset", "-c", core, *argv]


@contextlib.contextmanager
def process(argv: list[str], port: int, log: Path) -> Iterator[subprocess.Popen[bytes]]:
    """Run ``argv`` until the block ends; wait for ``port`` to open first."""
    with log.open("wb") as out:
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        try:
            wait_port(port)
        except SystemExit:
            raise SystemExit(f"{argv}: port {port} did not open:\n{log.read_text()}") from None
        yield proc
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def nginx_backends_conf(tmp: Path, ports: list[int], *, headers: str = "") -> Path:
    """One nginx (1 worker) answering a fixed ~100-byte 200 on each port."""
    servers = "\n".join(
        f"""
        server {{
            listen 127.0.0.1:{port} backlog=4096;
            location / {{ default_type text/plain; {headers} return 200 "{BODY}\\n"; }}
        }}"""
        for port in ports
    )
    conf = tmp / "backends.conf"
    conf.write_text(
        textwrap.dedent(f"""
        worker_processes 1;
        daemon off;
        pid {tmp}/backends.pid;
        error_log {tmp}/backends-error.log warn;
        events {{ worker_connections 4096; }}
        http {{
            access_log off;
            client_body_temp_path {tmp}/b-body; proxy_temp_path {tmp}/b-proxy;
            fastcgi_temp_path {tmp}/b-fcgi; uwsgi_temp_path {tmp}/b-uwsgi;
            scgi_temp_path {tmp}/b-scgi;
            keepalive_requests 1000000;
        """)
        + servers
        + "\n}\n"
    )
    return conf


@dataclass
class Result:
    name: str
    rps: float
    p50_ms: float
    p99_ms: float
    non_2xx: int = 0


_UNITS = {"us": 0.001, "ms": 1.0, "s": 1000.0}


def _ms(text: str) -> float:
    match = re.fullmatch(r"([\d.]+)(us|ms|s)", text)
    if not match:
        raise ValueError(text)
    return float(match.group(1)) * _UNITS[match.group(2)]


@dataclass
class WrkFigures:
    """What one wrk run printed."""

    rps: float
    p50_ms: float
    p99_ms: float
    requests: int
    non_2xx: int


def parse_wrk(name: str, out: str) -> WrkFigures:
    """Parse wrk's ``--latency`` summary.

    The percentiles come from the "Latency Distribution" lines (``  99%  1.23ms``), never from
    the thread-stats lines, whose last column is also a percentage (``99.12%``).
    """
    if "Requests/sec" not in out or "50%" not in out:
        raise SystemExit(f"{name}: unexpected wrk output:\n{out}")
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    p50 = _ms(re.search(r"^\s*50%\s+(\S+)", out, re.M).group(1))  # type: ignore[union-attr]
    p99 = _ms(re.search(r"^\s*99%\s+(\S+)", out, re.M).group(1))  # type: ignore[union-attr]
    total = re.search(r"(\d+) requests in", out)
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    non_2xx = int(errors.group(1)) if errors else 0
    if non_2xx:
        print(f"warning: {name}: {non_2xx} non-2xx responses", file=sys.stderr)
    return WrkFigures(rps, p50, p99, int(total.group(1)) if total else 0, non_2xx)


def wrk_argv(port: int, seconds: int, connections: int, path: str = "/") -> list[str]:
    """wrk with one thread and keep-alive against ``port``, pinned to the load core."""
    return pinned(
        CORE_LOAD,
        [
            find("wrk") or "wrk",
            "-t1",
            f"-c{connections}",
            f"-d{seconds}s",
            "--latency",
            f"http://127.0.0.1:{port}{path}",
        ],
    )


def wrk(name: str, port: int, seconds: int, connections: int, path: str = "/") -> Result:
    """Run wrk (one thread, keep-alive) against ``port`` and parse its summary."""
    argv = wrk_argv(port, seconds, connections, path)
    out = subprocess.run(argv, capture_output=True, text=True, check=True).stdout
    figures = parse_wrk(name, out)
    return Result(name, figures.rps, figures.p50_ms, figures.p99_ms, figures.non_2xx)


def print_table(title: str, results: list[Result], peers: list[str]) -> None:
    """Print req/s and latency with the ratio of each result to each peer."""
    by_name = {r.name: r for r in results}
    print(f"\n{title}")
    header = f"{'target':34} {'req/s':>10} {'p50 ms':>8} {'p99 ms':>8}"
    header += "".join(f" {'/' + p.split()[0]:>9}" for p in peers)
    print(header)
    for r in results:
        line = f"{r.name:34} {r.rps:10.0f} {r.p50_ms:8.2f} {r.p99_ms:8.2f}"
        line += "".join(f" {r.rps / by_name[p].rps:9.2f}" for p in peers)
        print(line)
