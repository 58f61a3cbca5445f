"""The flagship, examples/search/pods.yaml, run whole with `podkit up -d`: a query through the
TLS front reaches every shard, and each pattern around it answers."""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import signal
import ssl
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from podkit.pods.supervisor import read_state
from podkit.serving.search import shard_of
from podkit.testing.net import wait_for
from tests.pods.test_supervisor import alive, group_members

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "search"
SUBNET = "127.60.0.0/16"  # its own block: a flagship run by hand on 127.0.x.x is left alone
FRONT = ("127.60.1.1", 8443)  # pod 1 of the file: front (tls)
SPLIT_ADMIN = ("127.60.5.1", 9000)  # pod 5: shadow (split)
LEAFNEXT = "127.60.10.1"  # pod 10: leafnext, the next build of shard 0
OPS = "127.60.12.1"  # pod 12: ops (adapt metrics on 9121, adapt health on 8086)
PIPELINE = "127.60.16.1"  # pod 16: pipeline (the stages' admin endpoints on 9100-9102)
START_TIMEOUT = "90s"  # up -d returns once all 18 replicas are ready, or fails after this
RUN_TIMEOUT = 150.0  # the whole `podkit up -d` call, a little more than START_TIMEOUT


def podkit(cwd: Path, *args: str, timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
    """Runs `podkit ARGS` in cwd, with this interpreter's podkit first on PATH (the
    re-indexer's command calls `podkit search index`)."""
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    return subprocess.run(
        [sys.executable, "-m", "podkit", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


@contextlib.contextmanager
def flagship(tmp_path: Path) -> Iterator[Path]:
    """The example runs in tmp_path (its paths are relative to examples/), state and indexes
    under tmp_path/.podkit; everything is stopped afterwards, even when the test failed."""
    (tmp_path / "examples").symlink_to(ROOT / "examples")
    try:
        result = podkit(
            tmp_path,
            "up",
            "-d",
            "examples/search/pods.yaml",
            "--subnet",
            SUBNET,
            "--no-dashboard",
            "--wait-timeout",
            START_TIMEOUT,
            timeout=RUN_TIMEOUT,
        )
        assert result.returncode == 0, result.stdout + result.stderr
        yield tmp_path
    finally:
        state = read_state(tmp_path / ".podkit")
        if state is not None and alive(int(state["pid"])):
            pids = {c["pid"] for c in state["containers"] if c["pid"]}
            podkit(tmp_path, "down", "--timeout", "20s")
            for pid in group_members(pids):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)


def https_get(path: str) -> tuple[int, dict[str, str], dict[str, Any]]:
    """GET through the TLS front, trusting only the example's own certificate."""
    context = ssl.create_default_context(cafile=str(EXAMPLE / "tls" / "cert.pem"))
    context.check_hostname = False  # the certificate names 127.0.1.1; this run is on 127.60.1.1
    conn = http.client.HTTPSConnection(*FRONT, context=context, timeout=5)
    try:
        conn.request("GET", path)
        response = conn.getresponse()
        body = json.loads(response.read())
        return response.status, {k.lower(): v for k, v in response.getheaders()}, body
    finally:
        conn.close()


def http_get(host: str, port: int, path: str) -> tuple[int, str]:
    conn = http.client.HTTPConnection(host, port, timeout=5)
    try:
        conn.request("GET", path)
        response = conn.getresponse()
        return response.status, response.read().decode()
    finally:
        conn.close()


@pytest.mark.timeout(300)
def test_the_flagship_answers_searches_through_tls_and_every_pattern_reports(
    tmp_path: Path,
) -> None:
    """Search hits come back over HTTPS from all three shards; the split mirrors shard 0 to the
    next build, the adapters report, the queue feeds the indexing pipeline, one re-indexer
    leads, and the next build's leaf serves its rebuild with the new documents."""
    with flagship(tmp_path) as cwd:
        status, headers, body = https_get("/search?q=leader+lease&k=3")
        assert status == 200, body
        assert body["hits"], body
        assert body["hits"][0]["id"] == "election"
        assert body["coverage"]["answered"] == 3
        assert body["coverage"]["docs"] == body["coverage"]["docs_total"] == 24
        assert headers["x-cache"] == "MISS"
        status, headers, again = https_get("/search?q=leader+lease&k=3")
        assert status == 200
        assert headers["x-cache"] == "HIT"  # the root's max-age lets the cache keep it
        assert again["hits"] == body["hits"]

        # The shadow: every query the roots send shard 0 is also compared with the next build.
        def compared() -> bool:
            code, text = http_get(*SPLIT_ADMIN, "/diff")
            return code == 200 and json.loads(text)["compared"] > 0

        wait_for(compared, timeout=10, what="the split to compare a mirrored search")

        code, metrics = http_get(OPS, 9121, "/metrics")
        assert code == 200
        assert "search_root_corpus_docs 24" in metrics
        code, checks = http_get(OPS, 8086, "/readyz?verbose")
        assert code == 200, checks
        assert "[+]root ok" in checks

        # The work queue feeds the indexing pipeline, whose last stage writes each new document
        # beside the shard that will serve it.
        staged = cwd / ".podkit" / "search" / "staged"
        new = sorted(f"examples/search/new/{p.name}" for p in (EXAMPLE / "new").glob("*.md"))

        def staged_ids() -> dict[str, str]:
            return {json.loads(p.read_text())["id"]: p.parent.name for p in staged.rglob("*.jsonl")}

        wait_for(
            lambda: sorted(staged_ids()) == new,
            timeout=30,
            what="the pipeline to stage every new document",
        )
        assert staged_ids() == {doc: f"shard-{shard_of(doc, 3)}" for doc in new}
        code, text = http_get(PIPELINE, 9102, "/metrics")
        assert code == 200
        assert 'podkit_pipeline_items_in_total{stage="stage"} 3.0' in text

        # The leader rebuilds the next index with them; leafnext serves it without a restart.
        in_shard_0 = [doc for doc in new if shard_of(doc, 3) == 0]
        assert in_shard_0  # shadow-traffic.md: the example relies on it

        def next_build_finds_it() -> bool:
            code, text = http_get(LEAFNEXT, 8091, "/search?q=shadow+traffic+candidate&k=3")
            return code == 200 and in_shard_0[0] in [h["id"] for h in json.loads(text)["hits"]]

        wait_for(next_build_finds_it, timeout=40, what="leafnext to serve the rebuilt index")

        result = podkit(cwd, "status")
        assert result.returncode == 0, result.stderr
        leaders = [
            line for line in result.stdout.splitlines() if "/job" in line and "leader;" in line
        ]
        assert len(leaders) == 1, result.stdout


def test_make_up_refuses_an_example_without_a_pod_file() -> None:
    """`make up EXAMPLE=NAME` names the pods.yaml it did not find, and exits 2."""
    result = subprocess.run(
        ["bash", str(ROOT / "scripts" / "up.sh")],
        env={**os.environ, "EXAMPLE": "no-such-example"},
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 2
    assert "no examples/no-such-example/pods.yaml" in result.stderr


def test_the_flagship_passes_up_check() -> None:
    """Every component's flags in examples/search/pods.yaml are ones podkit has."""
    result = podkit(ROOT, "up", "--check", "examples/search/pods.yaml")
    assert result.returncode == 0, result.stderr
    assert "ok (16 pods" in result.stdout
