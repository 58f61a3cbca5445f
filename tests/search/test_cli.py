"""`podkit search` on the command line: index, query, and one-line errors for bad input."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from podkit.testing import PodkitProcess, free_port, wait_http

from .conftest import generated_corpus, write_jsonl


def _podkit(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "podkit", *args], capture_output=True, text=True, timeout=60
    )


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["root", "--leaf", "ftp://x:1"], "--leaf: upstream 'ftp://x:1': scheme must be http"),
        (["root", "--leaf", "http://a:1,"], "--leaf: empty URL"),
        (["root", "--leaf", "http://a:1", "--min-coverage", "150%"], "--min-coverage: must be"),
        (["root", "--leaf", "http://a:1", "--deadline", "0ms"], "--deadline: must be more"),
        (["root", "--leaf", "http://a:1", "--top-q", "x"], "--top-q: expected auto"),
        (["leaf", "--index", "/nonexistent"], "--index: /nonexistent: not a shard index"),
        (["leaf", "--index", "/x", "--inject-delay", "10y@5%"], "--inject-delay: bad duration"),
        (["index", "--shards", "2", "--out", "/tmp/x", "/nonexistent"], "no such file"),
        (["query", "http://127.0.0.1:9", " "], "the query is empty"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(args: list[str], message: str) -> None:
    """Each mistake is named on one line, exit code 2."""
    done = _podkit("search", *args)
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1
    assert lines[0].startswith(f"podkit search {args[0]}: error: ")
    assert message in lines[0]


def test_index_then_query_through_a_root(tmp_path: Path) -> None:
    """The documented path: index two shards, serve them, ask with `podkit search query`."""
    source = write_jsonl(tmp_path / "docs.jsonl", generated_corpus(200))
    built = _podkit("search", "index", "--shards", "2", "--out", str(tmp_path / "idx"), str(source))
    assert built.returncode == 0, built.stderr
    assert "200 documents in 2 shards" in built.stdout
    ports = [free_port(), free_port()]
    root_port = free_port()
    leaves = [
        PodkitProcess(
            "search",
            "leaf",
            "--listen",
            f"127.0.0.1:{port}",
            "--index",
            str(tmp_path / "idx" / f"shard-{k}"),
            "--access-log",
            "off",
        )
        for k, port in enumerate(ports)
    ]
    root = PodkitProcess(
        "search", "root", "--listen", f"127.0.0.1:{root_port}", "--access-log", "off",
        *[arg for port in ports for arg in ("--leaf", f"http://127.0.0.1:{port}")],
    )  # fmt: skip
    with leaves[0], leaves[1], root:
        wait_http("127.0.0.1", root_port, "/search?q=alpha", timeout=20)
        done = _podkit("search", "query", f"http://127.0.0.1:{root_port}", "alpha beta", "-k", "3")
        as_json = _podkit("search", "query", f"http://127.0.0.1:{root_port}", "alpha", "--json")
    assert done.returncode == 0, done.stderr
    assert "  1. " in done.stdout
    assert "2/2 shards, 200/200 documents" in done.stdout
    assert '"coverage"' in as_json.stdout


def test_the_search_tier_example_pod_file_is_valid(tmp_path: Path) -> None:
    """examples/search-tier.yaml (an indexer, four leaves and a root) passes `up --check`."""
    example = Path(__file__).resolve().parents[2] / "examples" / "search-tier.yaml"
    done = _podkit("up", "--check", "--state-dir", str(tmp_path), str(example))
    assert done.returncode == 0, done.stderr
