"""Log shipper throughput: lines/s from a growing nginx-format log to a file sink.

Run: ``.venv/bin/python bench/logship.py [--lines 1000000] [--batch 1000] [--no-peer]``

A writer appends nginx "combined" lines to a log file in bursts while a shipper tails it,
parses every line into fields and appends one JSON document per line to a sink file. The
figures: lines delivered per second of wall time (first line written to last line in the
sink) and per CPU-second of the shipper process. Shippers, one after the other:

* ``podkit logship --format nginx --to file://...`` with a checkpoint after every batch;
* the peer, rsyslog: ``imfile`` tailing the file, ``mmnormalize`` (liblognorm) parsing the
  combined format, ``omfile`` writing ``$!all-json`` (installed with apt-get when missing;
  ``--no-peer`` skips it).

With two cores the shipper is pinned to core 0 and the writer to core 1.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from collections.abc import Callable
from pathlib import Path

from podkit.testing import PodkitProcess, ServerProcess

LINE = (
    '203.0.113.{ip} - - [24/Nov/2026:06:{mm:02d}:{ss:02d} +0000] "GET /api/items/{n}?page=2 '
    'HTTP/1.1" 200 {size} "https://example.com/start" "Mozilla/5.0 (X11; Linux x86_64) '
    'AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120.0 Safari/537.36"\n'
)
RULEBASE = (
    "version=2\n"
    'rule=:%remote_addr:word% %ident:word% %remote_user:word% [%time:char-to:]%] "%request:'
    'char-to:"%" %status:number% %body_bytes_sent:word% "%referer:char-to:"%" '
    '"%user_agent:char-to:"%"\n'
)
SHIPPER_CORE = 0
WRITER_CORE = 1


def write_log(path: Path, lines: int, burst: int) -> None:
    with path.open("a", encoding="ascii") as out:
        for start in range(0, lines, burst):
            out.write(
                "".join(
                    LINE.format(ip=n % 250, mm=(n // 60) % 60, ss=n % 60, n=n, size=100 + n % 900)
                    for n in range(start, min(lines, start + burst))
                )
            )
            out.flush()


def count_lines(path: Path) -> int:
    try:
        with path.open("rb") as sink:
            return sum(chunk.count(b"\n") for chunk in iter(lambda: sink.read(1 << 20), b""))
    except FileNotFoundError:
        return 0


def proc_cpu(pid: int) -> float:
    """User + system CPU seconds of a running process, from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    return (int(fields[11]) + int(fields[12])) / ticks


def pin(pid: int, core: int) -> None:
    if (os.cpu_count() or 1) >= 2:
        os.sched_setaffinity(pid, {core})


def run(
    label: str, proc: ServerProcess, log: Path, sink: Path, args: argparse.Namespace
) -> tuple[str, int, float, float]:
    with proc:
        time.sleep(1.0)  # let the shipper start before the clock does
        pin(proc.pid, SHIPPER_CORE)
        cpu_start = proc_cpu(proc.pid)
        started = time.perf_counter()
        writer = threading.Thread(target=write_log, args=(log, args.lines, args.burst))
        writer.start()
        while (delivered := count_lines(sink)) < args.lines:
            if not proc.running():
                print(proc.output()[-2000:], file=sys.stderr)
                raise SystemExit(f"{label} exited")
            time.sleep(0.05)
        elapsed = time.perf_counter() - started
        cpu = proc_cpu(proc.pid) - cpu_start
        writer.join()
    with sink.open("rb") as out:
        first = out.readline()
    if b'"status"' not in first:  # the comparison is only fair if both parsed the lines
        print(f"warning: {label} did not parse the lines: {first[:200]!r}", file=sys.stderr)
    return label, delivered, elapsed, cpu


def ensure_rsyslog() -> str | None:
    found = shutil.which("rsyslogd") or (
        "/usr/sbin/rsyslogd" if os.path.exists("/usr/sbin/rsyslogd") else None
    )
    if found and os.path.exists("/usr/lib/x86_64-linux-gnu/rsyslog/mmnormalize.so"):
        return found
    print("installing rsyslog with apt-get", file=sys.stderr)
    prefix = [] if os.geteuid() == 0 else ["sudo"]
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    subprocess.run([*prefix, "apt-get", "update", "-qq"], check=False, env=env)
    subprocess.run(
        [*prefix, "apt-get", "install", "-y", "-qq", "--no-install-recommends", "rsyslog"],
        check=False,
        env=env,
    )
    return shutil.which("rsyslogd") or (
        "/usr/sbin/rsyslogd" if os.path.exists("/usr/sbin/rsyslogd") else None
    )


def podkit_shipper(tmp: Path, log: Path, sink: Path, args: argparse.Namespace) -> ServerProcess:
    env = None
    if args.stdlib_json:
        hide = tmp / "hide"
        hide.mkdir(exist_ok=True)
        (hide / "sitecustomize.py").write_text("import sys\nsys.modules['orjson'] = None\n")
        env = {"PYTHONPATH": str(hide)}
    return PodkitProcess(
        "logship",
        "--path", str(log),
        "--to", f"file://{sink}",
        "--format", "nginx",
        "--state", str(tmp / "state.json"),
        "--batch", str(args.batch),
        "--flush", "200ms",
        "--poll", "50ms",
        "--log-level", "warning",
        env=env,
    )  # fmt: skip


def rsyslog_shipper(rsyslogd: str, tmp: Path, log: Path, sink: Path) -> ServerProcess:
    work = tmp / "rsyslog"
    work.mkdir()
    (tmp / "nginx.rb").write_text(RULEBASE)
    conf = tmp / "rsyslog.conf"
    conf.write_text(
        textwrap.dedent(f"""
        global(workDirectory="{work}" maxMessageSize="64k")
        module(load="imfile")
        module(load="mmnormalize")
        template(name="json" type="string" string="%$!all-json%\\n")
        input(type="imfile" file="{log}" tag="nginx" ruleset="ship" readMode="0")
        ruleset(name="ship") {{
            action(type="mmnormalize" rulebase="{tmp}/nginx.rb")
            action(type="omfile" file="{sink}" template="json")
        }}
        """)
    )
    return ServerProcess(
        [rsyslogd, "-n", "-f", str(conf), "-i", str(tmp / "rsyslogd.pid")], name="rsyslogd"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lines", type=int, default=1_000_000)
    parser.add_argument("--batch", type=int, default=1000)
    parser.add_argument("--burst", type=int, default=10_000, help="lines per write burst")
    parser.add_argument(
        "--stdlib-json", action="store_true", help="hide orjson: encode with the json module"
    )
    parser.add_argument("--no-peer", action="store_true", help="do not run rsyslog")
    args = parser.parse_args()
    if (os.cpu_count() or 1) >= 2:
        os.sched_setaffinity(0, {WRITER_CORE})

    runs: list[tuple[str, Callable[[Path, Path, Path], ServerProcess]]] = [
        ("podkit logship", lambda tmp, log, sink: podkit_shipper(tmp, log, sink, args))
    ]
    if not args.no_peer:
        rsyslogd = ensure_rsyslog()
        if rsyslogd is None:
            print("rsyslog is not available: peer skipped", file=sys.stderr)
        else:
            runs.append(
                ("rsyslog imfile+mmnormalize", lambda t, lg, s: rsyslog_shipper(rsyslogd, t, lg, s))
            )
    results = []
    for label, make in runs:
        with tempfile.TemporaryDirectory(prefix="podkit-bench-logship-") as name:
            tmp = Path(name)
            log, sink = tmp / "access.log", tmp / "sink.jsonl"
            log.touch()
            results.append(run(label, make(tmp, log, sink), log, sink, args))
    encoder = "json" if args.stdlib_json else "orjson when installed"
    print(f"lines: {args.lines:,}  podkit encoder: {encoder}")
    print(f"{'shipper':<30}{'lines/s (wall)':>16}{'lines per cpu-s':>17}{'cpu s':>8}")
    for label, delivered, elapsed, cpu in results:
        print(f"{label:<30}{delivered / elapsed:>16,.0f}{delivered / cpu:>17,.0f}{cpu:>8.2f}")
    print(f"load average: {os.getloadavg()[0]:.2f}  cores: {os.cpu_count()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
