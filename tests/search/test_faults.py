"""Whole processes: a leaf killed or stopped mid-query, --min-coverage, a leaf restarted."""

from __future__ import annotations

import http.client
import json
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from podkit.serving.search import build_index
from podkit.testing import PodkitProcess, free_port, wait_http
from podkit.testing.net import wait_for

from .conftest import generated_corpus

DEADLINE = 2.0
SHARDS = 4


def _get(port: int, path: str, timeout: float = 10.0) -> tuple[int, Any]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("GET", path)
        response = conn.getresponse()
        return response.status, json.loads(response.read())
    finally:
        conn.close()


class Leaf:
    """A `podkit search leaf` process on a fixed port, so it can be restarted on it."""

    def __init__(self, index: Path, *extra: str) -> None:
        self.index = index
        self.extra = extra
        self.port = free_port()
        self.admin = free_port()
        self.proc: PodkitProcess | None = None

    def start(self) -> Leaf:
        self.proc = PodkitProcess(
            "search", "leaf", "--listen", f"127.0.0.1:{self.port}", "--index", str(self.index),
            "--admin", f"127.0.0.1:{self.admin}", "--access-log", "off", *self.extra,
        )  # fmt: skip
        self.proc.start()
        wait_http("127.0.0.1", self.admin, "/readyz", timeout=20)
        return self

    def searches_seen(self, route: str) -> float:
        conn = http.client.HTTPConnection("127.0.0.1", self.admin, timeout=2)
        try:
            conn.request("GET", "/metrics")
            text = conn.getresponse().read().decode()
        finally:
            conn.close()
        total = 0.0
        for line in text.splitlines():
            if line.startswith("podkit_search_leaf_requests_total{") and f'route="{route}"' in line:
                total += float(line.rsplit(" ", 1)[1])
        return total

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.stop()
            self.proc.__exit__(None, None, None)
            self.proc = None


@pytest.fixture
def index_dir(tmp_path: Path) -> Path:
    build_index(generated_corpus(1200), tmp_path / "idx", shards=SHARDS)
    return tmp_path / "idx"


@pytest.fixture
def cluster(index_dir: Path, request: pytest.FixtureRequest) -> Iterator[tuple[list[Leaf], int]]:
    """Four leaves (leaf 2 held 30 s on every search when asked) and a root."""
    slow = getattr(request, "param", ())
    leaves = [
        Leaf(index_dir / f"shard-{k}", *(("--inject-delay", "30s@100%") if k in slow else ()))
        for k in range(SHARDS)
    ]
    port = free_port()
    root = PodkitProcess(
        "search", "root", "--listen", f"127.0.0.1:{port}",
        *[arg for leaf in leaves for arg in ("--leaf", f"http://127.0.0.1:{leaf.port}")],
        "--deadline", f"{int(DEADLINE * 1000)}ms", "--access-log", "off",
    )  # fmt: skip
    try:
        for leaf in leaves:
            leaf.start()
        root.start()
        wait_http("127.0.0.1", port, "/search?q=alpha", timeout=20)
        yield leaves, port
    finally:
        root.stop()
        root.__exit__(None, None, None)
        for leaf in leaves:
            leaf.stop()


@pytest.mark.parametrize("cluster", [(2,)], indirect=True)
def test_a_leaf_killed_mid_query_gives_a_partial_answer_within_the_deadline(
    cluster: tuple[list[Leaf], int],
) -> None:
    """SIGKILL while the root waits for that leaf: 3 of 4 shards, failed=1, before the deadline."""
    leaves, port = cluster
    answer: dict[str, Any] = {}

    def ask() -> None:
        started = time.monotonic()
        answer["status"], answer["body"] = _get(port, "/search?q=w1+w2+beta&k=10")
        answer["elapsed"] = time.monotonic() - started

    before = leaves[2].searches_seen("/df")
    thread = threading.Thread(target=ask)
    thread.start()
    # The statistics step is answered at once; the search that follows is held by leaf 2.
    wait_for(lambda: leaves[2].searches_seen("/df") > before or "status" in answer, timeout=10)
    assert leaves[2].proc is not None
    leaves[2].proc.kill()
    thread.join(timeout=DEADLINE + 5)
    assert not thread.is_alive()
    body = answer["body"]
    assert answer["status"] == 200
    assert body["degraded"] is True
    coverage = body["coverage"]
    assert (coverage["answered"], coverage["failed"], coverage["timed_out"]) == (3, 1, 0)
    assert coverage["docs"] < coverage["docs_total"] == 1200
    assert body["took"] <= DEADLINE * 1000
    assert body["hits"]
    assert all(hit["shard"] != 2 for hit in body["hits"])


@pytest.mark.parametrize("cluster", [()], indirect=True)
def test_a_stopped_leaf_times_out_and_the_answer_still_comes(
    cluster: tuple[list[Leaf], int],
) -> None:
    """SIGSTOP: the answer comes at the deadline with that shard counted as timed out."""
    leaves, port = cluster
    assert leaves[1].proc is not None
    leaves[1].proc.signal(signal.SIGSTOP)
    try:
        status, body = _get(port, "/search?q=gamma+w5&k=5", timeout=DEADLINE + 5)
    finally:
        leaves[1].proc.signal(signal.SIGCONT)
    assert status == 200
    assert body["coverage"]["timed_out"] == 1
    assert body["coverage"]["answered"] == 3
    assert body["degraded"] is True
    assert body["took"] <= DEADLINE * 1000 + 250  # the deadline plus the merge


def test_min_coverage_turns_a_partial_answer_into_503(index_dir: Path) -> None:
    """With --min-coverage 100% a missing shard is a 503 that carries the coverage."""
    leaves = [Leaf(index_dir / f"shard-{k}").start() for k in range(SHARDS - 1)]
    dead = free_port()  # shard 3's leaf never runs
    port = free_port()
    root = PodkitProcess(
        "search", "root", "--listen", f"127.0.0.1:{port}",
        *[arg for leaf in leaves for arg in ("--leaf", f"http://127.0.0.1:{leaf.port}")],
        "--leaf", f"http://127.0.0.1:{dead}", "--min-coverage", "100%", "--access-log", "off",
    )  # fmt: skip
    with root:
        try:
            wait_for(lambda: _probe(port) == 503, timeout=20, what="root to answer 503")
            status, body = _get(port, "/search?q=alpha&k=3")
        finally:
            for leaf in leaves:
                leaf.stop()
    assert status == 503
    assert "min-coverage" in body["error"]
    assert body["coverage"]["failed"] == 1
    assert body["coverage"]["answered"] == 3


def _probe(port: int) -> int | None:
    try:
        return _get(port, "/search?q=alpha", timeout=2)[0]
    except OSError:
        return None


@pytest.mark.parametrize("cluster", [()], indirect=True)
def test_a_restarted_leaf_serves_the_same_index(cluster: tuple[list[Leaf], int]) -> None:
    """Kill a leaf, start it again on its port: the same hits as before, full coverage."""
    leaves, port = cluster
    _, before = _get(port, "/search?q=w3+delta&k=10")
    assert before["degraded"] is False
    leaves[0].stop()
    _, partial = _get(port, "/search?q=w3+delta&k=10")
    assert partial["coverage"]["failed"] == 1
    leaves[0].start()
    _, after = _get(port, "/search?q=w3+delta&k=10")
    assert after["degraded"] is False
    assert [(h["id"], h["score"]) for h in after["hits"]] == [
        (h["id"], h["score"]) for h in before["hits"]
    ]
