"""Fan-in: one group of 100,000 children; the coordinator's memory stays flat, the join fires once.

100 seed items of one group each add 1000 children (a splitter), and a join waits for all of
them. The group is counts, not a list: the join's state does not grow with the children.
Resident memory (RSS) is sampled every 20 ms:

* in-process: of this process (the runner holds the topics in memory, so what it holds is
  what is waiting, at most one chunk's fan-out);
* worker processes on SQLite: of the coordinator (this process) and of the join's worker.

Run from the repository root:  .venv/bin/python bench/pipeline_fanin.py [--children N]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import yaml

from podkit.batch.pipeline.local import LocalRunner
from podkit.batch.pipeline.model import load_pipeline
from podkit.batch.pipeline.processes import ProcessRunner, WorkerProcess, worker_pids

SEEDS = 100


def rss_kib(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


class Sampler:
    """Samples the RSS of some processes every 20 ms on a thread."""

    def __init__(self, pids: Any) -> None:
        self.pids = pids
        self.samples: dict[str, list[int]] = {}
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._loop, daemon=True)

    def _loop(self) -> None:
        while not self.stop.wait(0.02):
            for name, pid in self.pids().items():
                kib = rss_kib(pid)
                if kib:
                    self.samples.setdefault(name, []).append(kib)

    def __enter__(self) -> Sampler:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join()


def pipeline(work: Path, backend: str, children: int) -> Path:
    data = {
        "name": "fanin",
        "topics": {"backend": backend, "batch": 1000, "max_pending": 20_000},
        "inputs": {"seeds": {"items": [{"n": children // SEEDS}] * SEEDS, "group": "fanin"}},
        "stages": {
            "fan": {
                "from": "seeds",
                "splitter": {"handler": "bench.pipeline_apps:fan"},
                "to": "kids",
            },
            "join": {"from": "kids", "join": {}, "to": "done"},
        },
        "outputs": {"done": {"file": str(work / "done.jsonl")}},
    }
    path = work / f"fanin-{backend.split(':')[0]}.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def report(name: str, samples: dict[str, list[int]], result: Any, seconds: float) -> None:
    done = result.outputs["done"]
    print(f"{name}: {seconds:.1f} s, join fired {result.stages['join'].fired} time(s): {done}")
    for who, values in samples.items():
        if values:
            quarter = [values[len(values) * q // 4] for q in (1, 2, 3)]
            print(
                f"  RSS of {who} in MiB: at 1/4, 1/2, 3/4 of the run "
                f"{', '.join(f'{v / 1024:.1f}' for v in quarter)}; max {max(values) / 1024:.1f}; "
                f"last {values[-1] / 1024:.1f} ({len(values)} samples)"
            )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--children", type=int, default=100_000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="podkit-fanin-") as tmp:
        work = Path(tmp)
        spec = load_pipeline(pipeline(work, "memory://", args.children))
        with Sampler(lambda: {"this process": os.getpid()}) as sampler:
            started = time.perf_counter()
            result = LocalRunner(spec).run()
        report("in-process", sampler.samples, result, time.perf_counter() - started)

        path = pipeline(work, f"sqlite:///{work}/fanin.db", args.children)
        spec = load_pipeline(path)
        workers: list[WorkerProcess] = []

        def pids() -> dict[str, int]:
            found = {"coordinator": os.getpid()}
            for w in workers:
                if w.stage == "join" and worker_pids([w]):
                    found["join worker"] = worker_pids([w])[0]
            return found

        runner = ProcessRunner(spec, file=str(path), on_workers=lambda ws: workers.extend(ws))
        with Sampler(pids) as sampler:
            started = time.perf_counter()
            result = runner.run()
        report("worker processes on SQLite", sampler.samples, result, time.perf_counter() - started)


if __name__ == "__main__":
    main()
