"""Issue #21's pipeline file as written: a reduce grouped by ``$.job`` counts words per job."""

from __future__ import annotations

import collections
import contextlib
import json
import random
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from podkit.batch.pipeline.local import LocalRunner
from podkit.batch.pipeline.model import ReduceSpec, load_pipeline, parse_pipeline
from podkit.batch.pipeline.processes import ProcessRunner, worker_pids
from podkit.errors import ConfigError
from podkit.testing import RedisServer
from tests.pipeline.test_processes import Killer

ROOT = Path(__file__).parents[2]
FIXTURE = Path(__file__).parent / "issue21"
H = "tests.pipeline.handlers_for_tests"

# The snippet of issue #21, byte for byte: the fixture file must hold it unchanged.
ISSUE_SNIPPET = """\
topics: {backend: "sqlite:///.podkit/pipe.db"}     # or redis://... (Redis Streams)
stages:
  lines:  {from: files,  splitter: {handler: "wc:lines"}, to: lines}
  words:  {from: lines,  map: {handler: "wc:words", concurrency: 4}, to: words}
  shard:  {from: words,  sharder: {key: "$.word", shards: 4}, to: "counts.{shard}"}
  count:  {from: "counts.*", reduce: {handler: "wc:add", group: "$.job"}, to: totals}
"""

Counts = dict[str, collections.Counter[str]]


def write_jobs(root: Path, jobs: dict[str, int], lines: int, seed: int) -> Counts:
    """``files`` text files under ``root/JOB/`` per job; each job's Counter of words."""
    rng = random.Random(seed)
    vocabulary = ["Alpha", "beta", "gamma42", "it's", "über", "x", "a-b", "Ünïcode", "the"]
    expected: Counts = {}
    for job, files in jobs.items():
        counter: collections.Counter[str] = collections.Counter()
        for i in range(files):
            path = root / job / f"f{i}.txt"
            path.parent.mkdir(parents=True, exist_ok=True)
            text = "\n".join(
                " ".join(rng.choice(vocabulary) for _ in range(rng.randint(0, 12)))
                for _ in range(lines)
            )
            path.write_text(text, encoding="utf-8")
            for line in text.splitlines():
                counter.update(re.findall(r"[a-z0-9]+", line.lower()))
        expected[job] = counter
    return expected


def by_job(totals: list[dict[str, Any]]) -> Counts:
    jobs = [item["group"] for item in totals]
    assert len(jobs) == len(set(jobs)), "one result per job"
    return {item["group"]: collections.Counter(item["value"]) for item in totals}


def read_totals(path: Path) -> Counts:
    return by_job([json.loads(line) for line in path.read_text().splitlines()])


@pytest.fixture
def fresh_wc(monkeypatch: pytest.MonkeyPatch) -> None:
    """The fixture's ``wc`` module, not examples/wordcount's module of the same name."""
    monkeypatch.setitem(sys.modules, "wc", None)  # type: ignore[arg-type]
    del sys.modules["wc"]
    monkeypatch.syspath_prepend(str(FIXTURE))


def test_the_fixture_holds_the_issue_snippet_unchanged_and_validates() -> None:
    assert ISSUE_SNIPPET in (FIXTURE / "pipeline.yaml").read_text()
    spec = load_pipeline(FIXTURE / "pipeline.yaml", {"input": "in", "output": "out.txt"})
    assert spec.topics.backend == "sqlite:///.podkit/pipe.db"
    assert spec.stage_inputs("count") == [f"counts.{i}" for i in range(4)]
    reduce = spec.stages["count"].reduce
    assert isinstance(reduce, ReduceSpec)
    assert reduce.group == "$.job"
    assert reduce.key is None


def test_the_issue_pipeline_in_process_counts_each_job_like_counter(
    tmp_path: Path, fresh_wc: None
) -> None:
    expected = write_jobs(tmp_path / "in", {"alpha": 3, "beta": 2, "gamma": 1}, 120, seed=21)
    out = tmp_path / "totals.jsonl"
    spec = load_pipeline(
        FIXTURE / "pipeline.yaml", {"input": str(tmp_path / "in"), "output": str(out)}
    )
    result = LocalRunner(spec).run()
    assert not result.dead
    assert result.stages["count"].fired == 1
    assert by_job(result.outputs["totals"]) == expected
    assert read_totals(out) == expected
    overall = sum(expected.values(), collections.Counter[str]())
    assert sum(by_job(result.outputs["totals"]).values(), collections.Counter[str]()) == overall


def test_the_issue_pipeline_runs_with_workers_on_sqlite(tmp_path: Path) -> None:
    work = tmp_path / "work"
    work.mkdir()
    for name in ("pipeline.yaml", "wc.py"):
        shutil.copy(FIXTURE / name, work / name)
    expected = write_jobs(tmp_path / "in", {"alpha": 3, "beta": 2}, 150, seed=5)
    out = tmp_path / "totals.jsonl"
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "podkit",
            "pipeline",
            "run",
            "pipeline.yaml",
            "--set",
            f"input={tmp_path / 'in'}",
            "--set",
            f"output={out}",
            "--progress",
            "none",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        cwd=work,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("done in ")
    assert (work / ".podkit" / "pipe.db").is_file()  # the file's relative SQLite path
    assert read_totals(out) == expected


@pytest.mark.parametrize("store", ["sqlite", "redis"])
def test_the_issue_pipeline_counts_like_counter_while_workers_are_sigkilled(
    store: str, tmp_path: Path
) -> None:
    """The issue's stages with two workers for words and count, a short visibility so a
    killed worker's batch comes back soon, on SQLite and on Redis."""
    data = yaml.safe_load((FIXTURE / "pipeline.yaml").read_text())
    data["stages"]["words"]["workers"] = 2
    data["stages"]["count"]["workers"] = 2
    shutil.copy(FIXTURE / "wc.py", tmp_path / "wc.py")
    expected = write_jobs(tmp_path / "in", {"alpha": 3, "beta": 3}, 200, seed=11)
    out = tmp_path / "totals.jsonl"
    sets = [f"input={tmp_path / 'in'}", f"output={out}"]
    with contextlib.ExitStack() as stack:
        if store == "redis":
            backend = stack.enter_context(RedisServer()).url
        else:
            backend = f"sqlite:///{tmp_path}/pipe.db"
        data["topics"] = {"backend": backend, "visibility": "1s", "batch": 20}
        path = tmp_path / "pipeline.yaml"
        path.write_text(yaml.safe_dump(data))
        spec = load_pipeline(path, dict(s.split("=", 1) for s in sets))
        killer = Killer(limit=4, seed=3)
        runner = ProcessRunner(spec, file=str(path), sets=sets, on_workers=killer.on_workers)
        try:
            result = runner.run()
        finally:
            killer.done.set()
    assert killer.kills >= 2
    assert read_totals(out) == expected
    assert result.stages["count"].fired == 1
    assert not result.dead
    assert worker_pids(runner.info.workers) == []


def test_a_reduce_with_group_and_key_emits_one_value_per_group_and_key() -> None:
    rows = [("a", "x", 1), ("a", "x", 2), ("b", "x", 5), ("a", "y", 4), (7, "y", 1)]
    items = [{"job": j, "w": w, "n": n} for j, w, n in rows]
    spec = parse_pipeline(
        {
            "inputs": {"nums": {"items": items, "group": "g"}},
            "stages": {
                "sum": {
                    "from": "nums",
                    "reduce": {
                        "handler": f"{H}:add_n",
                        "group": "$.job",
                        "key": "$.w",
                        "initial": 0,
                    },
                    "to": "totals",
                }
            },
            "outputs": {"totals": {"file": "/dev/null"}},
        },
        base_dir=str(ROOT),
    )
    result = LocalRunner(spec).run()
    assert sorted(result.outputs["totals"], key=lambda v: (v["group"], v["key"])) == [
        {"group": "7", "key": "y", "value": 1},
        {"group": "a", "key": "x", "value": 3},
        {"group": "a", "key": "y", "value": 4},
        {"group": "b", "key": "x", "value": 5},
    ]


def test_an_item_without_the_group_field_is_a_dead_letter() -> None:
    spec = parse_pipeline(
        {
            "inputs": {"nums": {"items": [{"job": "a", "n": 1}, {"n": 2}], "group": "g"}},
            "stages": {
                "sum": {
                    "from": "nums",
                    "reduce": {
                        "handler": f"{H}:add_n",
                        "group": "$.job",
                        "initial": 0,
                        "allow_failures": 1,
                    },
                    "to": "totals",
                }
            },
            "outputs": {"totals": {"file": "/dev/null"}},
        },
        base_dir=str(ROOT),
    )
    result = LocalRunner(spec).run()
    assert [d.value for d in result.dead] == [{"n": 2}]
    assert "item has no field $.job" in result.dead[0].error
    assert result.outputs["totals"] == [{"group": "a", "value": 1}]


def test_a_group_that_is_not_a_path_names_the_field() -> None:
    with pytest.raises(ConfigError) as info:
        parse_pipeline(
            {
                "inputs": {"nums": {"items": [1]}},
                "stages": {"s": {"from": "nums", "reduce": {"handler": "m:f", "group": "job"}}},
            },
            source="p.yaml",
        )
    assert info.value.path == "stages.s.reduce.group"
    assert "$.word" in info.value.reason
