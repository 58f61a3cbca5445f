"""``podkit pipeline run`` as a real process: --set, outputs, progress lines and errors."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from tests.pipeline.test_local import read_counts, write_corpus

ROOT = Path(__file__).parents[2]
WORDCOUNT = ROOT / "examples" / "wordcount" / "pipeline.yaml"


def podkit(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "podkit", *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        cwd=cwd,
    )


def test_run_wordcount_writes_word_count_lines_and_json_progress(tmp_path: Path) -> None:
    expected = write_corpus(tmp_path / "in", files=3, lines=100, seed=5)
    out = tmp_path / "counts.txt"
    result = podkit(
        "pipeline",
        "run",
        str(WORDCOUNT),
        "--set",
        f"input={tmp_path / 'in'}",
        "--set",
        f"output={out}",
        "--interval",
        "50ms",
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr
    assert read_counts(out) == dict(expected)
    assert result.stdout.startswith("done in ")
    last = json.loads(result.stderr.strip().splitlines()[-1])
    stages = {s["stage"]: s for s in last["stages"]}
    assert stages["count"]["fired"] == 1
    assert stages["lines"]["in"] == 3
    assert all(s["pending"] == 0 for s in stages.values())


def test_a_missing_set_value_is_one_line_naming_file_and_field(tmp_path: Path) -> None:
    result = podkit("pipeline", "run", str(WORDCOUNT), "--set", "input=x")
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        f"podkit pipeline run: error: {WORDCOUNT}: outputs.totals.file: "
        "{output} has no value: run with --set output=VALUE"
    ]


def test_a_bad_set_and_a_missing_directory_are_errors(tmp_path: Path) -> None:
    bad = podkit("pipeline", "run", str(WORDCOUNT), "--set", "input")
    assert bad.returncode == 2
    assert "expected KEY=VALUE" in bad.stderr
    missing = podkit(
        "pipeline",
        "run",
        str(WORDCOUNT),
        "--set",
        "input=/nonexistent/dir",
        "--set",
        f"output={tmp_path / 'o'}",
    )
    assert missing.returncode == 2
    assert "inputs.files.dir: '/nonexistent/dir' is not a directory" in missing.stderr


def test_a_handler_that_cannot_be_imported_is_a_usage_error(tmp_path: Path) -> None:
    path = tmp_path / "p.yaml"
    path.write_text(
        "inputs: {n: {items: [1]}}\nstages: {m: {from: n, map: {handler: 'nosuch:f'}, to: o}}\n"
    )
    result = podkit("pipeline", "run", str(path))
    assert result.returncode == 2
    assert "cannot import nosuch" in result.stderr


def test_the_stage_components_pod_file_is_valid(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "podkit", "up", "--check", "--state-dir", str(tmp_path),
         str(ROOT / "examples" / "wordcount" / "pods.yaml")],
        capture_output=True, text=True, timeout=30, check=False, cwd=ROOT,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr


def test_feed_puts_the_inputs_once(tmp_path: Path) -> None:
    path = tmp_path / "p.yaml"
    path.write_text(
        "topics: {backend: 'sqlite:///p.db'}\n"
        "inputs: {nums: {items: [1, 2]}}\n"
        "stages: {m: {from: nums, copier: {}, to: o}}\n"
    )
    assert podkit("pipeline", "feed", str(path), cwd=tmp_path).stdout == "fed\n"
    assert podkit("pipeline", "feed", str(path), cwd=tmp_path).stdout == "fed already\n"
    status = podkit("pipeline", "status", str(path), "--json", cwd=tmp_path)
    data = json.loads(status.stdout)
    assert data["stages"][0]["pending"] == 2
    assert data["groups"]["default"]["created"] == 2


def test_state_commands_refuse_an_in_process_pipeline() -> None:
    result = podkit("pipeline", "status", str(WORDCOUNT), "--set", "input=x", "--set", "output=y")
    assert result.returncode == 2
    assert "memory://" in result.stderr


def test_put_adds_to_a_stream_input_whose_group_stays_open(tmp_path: Path) -> None:
    """`pipeline put` queues JSON values (or paths with --path) on a stream input and leaves
    its group unsealed; a run, a non-stream input and an unknown one are refused."""
    path = tmp_path / "p.yaml"
    path.write_text(
        "topics: {backend: 'sqlite:///p.db'}\n"
        "inputs: {docs: {stream: true, group: incoming}, fixed: {items: [1]}}\n"
        "stages: {m: {from: [docs, fixed], copier: {}, to: o}}\n"
    )
    put = podkit("pipeline", "put", str(path), "--input", "docs", '{"a": 1}', "b", cwd=tmp_path)
    assert put.returncode == 0, put.stderr
    assert put.stdout == "put 2\n"
    put = podkit("pipeline", "put", str(path), "--input", "docs", "--path", "x.md", cwd=tmp_path)
    assert put.stdout == "put 1\n"
    data = json.loads(podkit("pipeline", "status", str(path), "--json", cwd=tmp_path).stdout)
    assert data["stages"][0]["pending"] == 3
    assert data["groups"]["incoming"] == {
        "created": 3,
        "done": 0,
        "failed": 0,
        "sealed": False,
        "outstanding": 3,
    }
    refused = podkit("pipeline", "put", str(path), "--input", "fixed", "1", cwd=tmp_path)
    assert refused.returncode == 2
    assert "not a stream input" in refused.stderr
    refused = podkit("pipeline", "put", str(path), "--input", "nope", "1", cwd=tmp_path)
    assert refused.returncode == 2
    assert "'nope' is not an input" in refused.stderr
    run = podkit("pipeline", "run", str(path), cwd=tmp_path)
    assert run.returncode == 2
    assert "inputs.docs is a stream" in run.stderr
