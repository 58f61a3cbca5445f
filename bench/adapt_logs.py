"""Log adapter throughput: nginx lines/s from a file to OpenTelemetry (or ECS) JSON lines.

Run: ``.venv/bin/python bench/adapt_logs.py [--lines 1000000] [--schema otel|ecs] [--no-peer]``

The same file of nginx "combined" lines is read to its end by each normaliser, one after the
other, each pinned to core 0:

* ``podkit adapt logs --in FILE --format nginx --schema otel --out FILE`` (it exits at the
  end of its input; its CPU time is the child's rusage, start-up included);
* the peer, rsyslog: ``imfile`` reading the file from its start, ``mmnormalize`` (liblognorm)
  parsing the combined format and ``omfile`` writing ``$!all-json`` (the same rule base as
  bench/logship.py; installed with apt-get when missing; ``--no-peer`` skips it). rsyslog does
  not exit at the end of a file: it is measured until the last record is in its output, its
  CPU time read from /proc (start-up included too).

The figure the adapter is held to is lines per CPU-second (>= 100,000 for nginx lines).
"""

from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from logship import LINE, count_lines, ensure_rsyslog, proc_cpu, rsyslog_shipper

CORE = 0


def write_file(path: Path, lines: int) -> None:
    with path.open("w", encoding="ascii") as out:
        for start in range(0, lines, 10_000):
            out.write(
                "".join(
                    LINE.format(ip=n % 250, mm=(n // 60) % 60, ss=n % 60, n=n, size=100 + n % 900)
                    for n in range(start, min(lines, start + 10_000))
                )
            )


def run_podkit(log: Path, sink: Path, schema: str) -> tuple[float, float]:
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    subprocess.run(
        [sys.executable, "-m", "podkit", "adapt", "logs", "--in", str(log), "--out", str(sink),
         "--format", "nginx", "--schema", schema, "--log-level", "warning"],
        check=True,
        preexec_fn=lambda: os.sched_setaffinity(0, {CORE}) if (os.cpu_count() or 1) > 1 else None,
    )  # fmt: skip
    elapsed = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return elapsed, cpu


def run_rsyslog(rsyslogd: str, tmp: Path, log: Path, sink: Path, lines: int) -> tuple[float, float]:
    started = time.perf_counter()
    with rsyslog_shipper(rsyslogd, tmp, log, sink) as proc:
        if (os.cpu_count() or 1) > 1:
            os.sched_setaffinity(proc.pid, {CORE})
        while count_lines(sink) < lines:
            if not proc.running():
                raise SystemExit(f"rsyslogd exited: {proc.output()[-2000:]}")
            time.sleep(0.05)
        elapsed = time.perf_counter() - started
        cpu = proc_cpu(proc.pid)
    return elapsed, cpu


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lines", type=int, default=1_000_000)
    parser.add_argument("--schema", choices=["otel", "ecs"], default="otel")
    parser.add_argument("--no-peer", action="store_true", help="do not run rsyslog")
    args = parser.parse_args()
    if (os.cpu_count() or 1) >= 2:
        os.sched_setaffinity(0, {1})
    results = []
    with tempfile.TemporaryDirectory(prefix="podkit-bench-adapt-logs-") as name:
        tmp = Path(name)
        log = tmp / "access.log"
        write_file(log, args.lines)
        sink = tmp / "podkit.jsonl"
        elapsed, cpu = run_podkit(log, sink, args.schema)
        assert count_lines(sink) == args.lines, "podkit wrote a record per line"
        results.append((f"podkit adapt logs ({args.schema})", elapsed, cpu))
        if not args.no_peer:
            rsyslogd = ensure_rsyslog()
            if rsyslogd is None:
                print("rsyslog is not available: peer skipped", file=sys.stderr)
            else:
                elapsed, cpu = run_rsyslog(rsyslogd, tmp, log, tmp / "rsyslog.jsonl", args.lines)
                results.append(("rsyslog imfile+mmnormalize", elapsed, cpu))
    print(f"lines: {args.lines:,}")
    print(f"{'normaliser':<32}{'lines/s (wall)':>16}{'lines per cpu-s':>17}{'cpu s':>8}")
    for label, elapsed, cpu in results:
        print(f"{label:<32}{args.lines / elapsed:>16,.0f}{args.lines / cpu:>17,.0f}{cpu:>8.2f}")
    print(f"load average: {os.getloadavg()[0]:.2f}  cores: {os.cpu_count()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
