"""Log shipper throughput: lines/s from a growing nginx-format log to a file sink.

Run: ``.venv/bin/python bench/logship.py [--lines 1000000] [--batch 1000]``

A writer appends nginx "combined" lines to a log file in bursts while ``podkit logship
--format nginx --to file://...`` ships them; the figure is lines delivered to the sink per
second of wall time, from the first line written to the last line acknowledged, plus the
CPU seconds the shipper used (it is one asyncio thread: one core at most).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import threading
import time
from pathlib import Path

from podkit.testing import PodkitProcess

LINE = (
    '203.0.113.{ip} - - [24/Nov/2026:06:{mm:02d}:{ss:02d} +0000] "GET /api/items/{n}?page=2 '
    'HTTP/1.1" 200 {size} "https://example.com/start" "Mozilla/5.0 (X11; Linux x86_64) '
    'AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120.0 Safari/537.36"\n'
)


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


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lines", type=int, default=1_000_000)
    parser.add_argument("--batch", type=int, default=1000)
    parser.add_argument("--burst", type=int, default=10_000, help="lines per write burst")
    parser.add_argument(
        "--stdlib-json", action="store_true", help="hide orjson: encode with the json module"
    )
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="podkit-bench-logship-") as tmp:
        log = Path(tmp) / "access.log"
        sink = Path(tmp) / "sink.jsonl"
        log.touch()
        env = None
        if args.stdlib_json:
            hide = Path(tmp) / "hide"
            hide.mkdir()
            (hide / "sitecustomize.py").write_text("import sys\nsys.modules['orjson'] = None\n")
            env = {"PYTHONPATH": str(hide)}
        shipper = PodkitProcess(
            "logship",
            "--path", str(log),
            "--to", f"file://{sink}",
            "--format", "nginx",
            "--state", str(Path(tmp) / "state.json"),
            "--batch", str(args.batch),
            "--flush", "200ms",
            "--poll", "50ms",
            "--log-level", "warning",
            env=env,
        )  # fmt: skip
        with shipper:
            time.sleep(1.0)  # let the interpreter start before the clock does
            cpu_start = _proc_cpu(shipper.pid)
            started = time.perf_counter()
            writer = threading.Thread(target=write_log, args=(log, args.lines, args.burst))
            writer.start()
            while (delivered := count_lines(sink)) < args.lines:
                if not shipper.running():
                    print(shipper.output()[-2000:], file=sys.stderr)
                    return 1
                time.sleep(0.05)
            elapsed = time.perf_counter() - started
            cpu = _proc_cpu(shipper.pid) - cpu_start
            writer.join()
    rate = delivered / elapsed
    encoder = "json" if args.stdlib_json else "orjson when installed"
    print(f"encoder: {encoder}")
    print(f"lines: {delivered}  wall: {elapsed:.2f} s  shipper cpu: {cpu:.2f} s")
    print(f"throughput: {rate:,.0f} lines/s (wall)  {delivered / cpu:,.0f} lines per cpu-second")
    print(f"load average: {os.getloadavg()[0]:.2f}  cores: {os.cpu_count()}")
    return 0


def _proc_cpu(pid: int) -> float:
    """User + system CPU seconds of a running process, from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    return (int(fields[11]) + int(fields[12])) / ticks


if __name__ == "__main__":
    sys.exit(main())
