"""Worker processes on SQLite and Redis: word count equals Counter while workers are SIGKILLed."""

from __future__ import annotations

import random
import shutil
import signal
import subprocess
import sys
import threading
import urllib.request
from pathlib import Path
from typing import Any

import pytest
import yaml

from podkit.batch.pipeline.model import load_pipeline
from podkit.batch.pipeline.processes import (
    ProcessRunner,
    WorkerProcess,
    feed_inputs,
    kill,
    worker_pids,
)
from podkit.batch.pipeline.store import Topology, open_store
from podkit.testing import PodkitProcess, RedisServer, free_port, wait_http
from podkit.testing.net import wait_for
from tests.pipeline.test_local import read_counts, write_corpus

ROOT = Path(__file__).parents[2]
EXAMPLE = ROOT / "examples" / "wordcount"


def wordcount_file(tmp_path: Path, backend: str, **topics: Any) -> Path:
    """The example pipeline on ``backend``, two workers for the map and the reduce."""
    data = yaml.safe_load((EXAMPLE / "pipeline.yaml").read_text())
    data["topics"] = {"backend": backend, **topics}
    data["stages"]["words"]["workers"] = 2
    data["stages"]["count"]["workers"] = 2
    shutil.copy(EXAMPLE / "wc.py", tmp_path / "wc.py")
    path = tmp_path / "wordcount.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


@pytest.fixture(params=["sqlite", "redis"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Any:
    if request.param == "redis":
        with RedisServer() as server:
            yield server.url
    else:
        yield f"sqlite:///{tmp_path}/wc.db"


class Killer:
    """SIGKILLs a random worker every 150-400 ms, up to ``limit`` times, while a run goes on."""

    def __init__(self, limit: int, seed: int) -> None:
        self.limit = limit
        self.rng = random.Random(seed)
        self.workers: list[WorkerProcess] = []
        self.kills = 0
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._loop, daemon=True)

    def on_workers(self, workers: list[WorkerProcess]) -> None:
        self.workers = workers
        if self.thread.ident is None:
            self.thread.start()

    def _loop(self) -> None:
        while self.kills < self.limit and not self.done.wait(self.rng.uniform(0.15, 0.4)):
            pids = worker_pids(self.workers)
            if pids:
                kill(self.rng.choice(pids))
                self.kills += 1


def test_wordcount_equals_counter_with_random_sigkills(backend: str, tmp_path: Path) -> None:
    expected = write_corpus(tmp_path / "in", files=6, lines=250, seed=7)
    out = tmp_path / "counts.txt"
    path = wordcount_file(tmp_path, backend, visibility="1s", batch=50, max_pending=2000)
    spec = load_pipeline(path, {"input": str(tmp_path / "in"), "output": str(out)})
    killer = Killer(limit=6, seed=1)
    runner = ProcessRunner(
        spec,
        file=str(path),
        sets=[f"input={tmp_path / 'in'}", f"output={out}"],
        on_workers=killer.on_workers,
    )
    try:
        result = runner.run()
    finally:
        killer.done.set()
    assert killer.kills >= 3
    assert runner.info.restarts >= 3
    assert read_counts(out) == dict(expected)
    assert result.stages["count"].fired == 1
    assert not result.dead
    assert worker_pids(runner.info.workers) == []


def test_status_dead_and_redrive_commands(tmp_path: Path) -> None:
    """A run whose map fails some items exits 1; status and dead show them; redrive and
    --resume finish the job once the handler is fixed."""
    (tmp_path / "h.py").write_text(
        "import os\n"
        "def check(v):\n"
        "    if v % 5 == 0 and not os.path.exists('fixed'):\n"
        "        raise ValueError(f'bad {v}')\n"
        "    return v\n"
        "def add(t, v):\n"
        "    return t + v\n"
    )
    path = tmp_path / "p.yaml"
    path.write_text(
        "topics: {backend: 'sqlite:///p.db', visibility: 2s}\n"
        "inputs: {nums: {items: [1, 2, 3, 4, 5, 6, 7, 8, 9, 10], group: job}}\n"
        "stages:\n"
        "  check: {from: nums, map: {handler: 'h:check'}, to: ok, max_attempts: 2}\n"
        "  total: {from: ok, reduce: {handler: 'h:add', initial: 0, allow_failures: 5}, to: sum}\n"
        "outputs: {sum: {file: sum.txt, fields: ['$.value']}}\n"
    )

    def podkit(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "podkit", "pipeline", *args],
            capture_output=True, text=True, timeout=60, check=False, cwd=tmp_path,
        )  # fmt: skip

    first = podkit("run", "p.yaml", "--progress", "none")
    assert first.returncode == 1, first.stderr
    assert (tmp_path / "sum.txt").read_text() == f"{55 - 15}\n"
    status = podkit("status", "p.yaml")
    assert status.returncode == 0, status.stderr
    assert "group job: sealed, 18 children, 16 done, 2 failed, 0 outstanding" in status.stdout
    dead = podkit("dead", "p.yaml", "--json")
    assert sorted(line.split('"value":')[1].split(",")[0] for line in dead.stdout.splitlines()) == [
        "10",
        "5",
    ]
    assert "ValueError: bad 5" in dead.stdout
    (tmp_path / "fixed").touch()
    redriven = podkit("redrive", "p.yaml", "--stage", "check")
    assert redriven.stdout.strip() == "2 redriven"
    again = podkit("run", "p.yaml", "--resume", "--progress", "none")
    assert again.returncode == 0, again.stderr
    # The reduce fired already (allow_failures: 5): the late items are counted, not added.
    assert (tmp_path / "sum.txt").read_text() == f"{55 - 15}\n"
    assert "0 outstanding" in podkit("status", "p.yaml").stdout


def test_status_of_a_missing_database_is_an_error(tmp_path: Path) -> None:
    path = tmp_path / "p.yaml"
    path.write_text(
        "topics: {backend: 'sqlite:///nothing.db'}\n"
        "inputs: {nums: {items: [1]}}\n"
        "stages: {m: {from: nums, copier: {}, to: o}}\n"
    )
    result = subprocess.run(
        [sys.executable, "-m", "podkit", "pipeline", "status", str(path)],
        capture_output=True, text=True, timeout=60, check=False, cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 1
    assert "no such database" in result.stderr
    assert not (tmp_path / "nothing.db").exists()


def test_a_stage_worker_component_serves_metrics_and_drains_on_sigterm(tmp_path: Path) -> None:
    path = tmp_path / "p.yaml"
    path.write_text(
        "topics: {backend: 'sqlite:///p.db'}\n"
        "inputs: {nums: {items: [1, 2, 3, 4, 5, 6, 7, 8, 9, 10]}}\n"
        "stages: {copy: {from: nums, copier: {}, to: [a, b]}}\n"
    )
    spec = load_pipeline(path)
    store = store_for_file(spec, tmp_path)
    port = free_port()
    with PodkitProcess(
        "pipeline", "work", str(path), "--stage", "copy", "--admin", f"127.0.0.1:{port}",
        cwd=tmp_path,
    ) as worker:  # fmt: skip
        wait_http("127.0.0.1", port, "/readyz")
        feed_inputs(spec, store)

        def metric(name: str) -> float:
            text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read()
            for line in text.decode().splitlines():
                if line.startswith(f'{name}{{stage="copy"}}'):
                    return float(line.split()[-1])
            return -1.0

        wait_for(lambda: metric("podkit_pipeline_items_in_total") == 10, what="10 items in")
        assert metric("podkit_pipeline_items_out_total") == 20
        worker.signal(signal.SIGTERM)
        assert worker.wait(10) == 0
    store.close()


def store_for_file(spec: Any, cwd: Path) -> Any:
    """The store of a pipeline whose sqlite path is relative to ``cwd``."""
    return open_store(
        f"sqlite:///{cwd / spec.topics.backend[len('sqlite:///') :]}", spec.name, Topology.of(spec)
    )
