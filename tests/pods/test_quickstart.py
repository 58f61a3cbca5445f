"""The quick-start pod file with real components: every pod it defines does its job."""

from __future__ import annotations

import json
import os
import signal
import urllib.request
from pathlib import Path
from typing import Any

import pytest
import yaml

from podkit.cli import COMMANDS
from podkit.pods.supervisor import request
from podkit.testing.net import free_port, wait_for
from tests.pods.test_supervisor import START_TIMEOUT, alive, group_members, run_pods

QUICKSTART = Path(__file__).resolve().parents[2] / "examples" / "quickstart.yaml"


def runnable_pods(ports: dict[int, int] | None = None) -> dict[str, Any]:
    """The quick-start pods whose components this podkit has (all of them, eventually).

    Args:
        ports: the file's ports to replace with free ones, so a `make up` running on the
            same machine does not collide with the test.
    """
    text = QUICKSTART.read_text()
    for old, new in (ports or {}).items():
        text = text.replace(f":{old}", f":{new}").replace(f"port: {old}", f"port: {new}")
    pods: dict[str, Any] = yaml.safe_load(text)["pods"]
    keep = {}
    for name, pod in pods.items():
        components = [c.get("component") for c in pod["containers"].values()]
        if all(c is None or c.split()[0] in COMMANDS for c in components):
            keep[name] = pod
    # A pod whose dependency is left out is left out too.
    return {n: p for n, p in keep.items() if all(d in keep for d in p.get("after", []))}


def served_by(url: str) -> str:
    """The replica that answered, or "" for an error (a replica was just killed)."""
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            name: str = json.loads(response.read())["name"]
            return name
    except OSError:  # HTTPError and URLError included
        return ""


@pytest.mark.skipif(
    not {"elect", "queue"} <= set(COMMANDS), reason="needs podkit elect and podkit queue"
)
def test_the_singleton_job_runs_once_and_the_workers_process_the_sources_items(
    tmp_path: Path,
) -> None:
    chosen = ("nightly", "source", "workers")
    pods = {n: p for n, p in runnable_pods({9000: free_port()}).items() if n in chosen}
    assert set(pods) == {"nightly", "source", "workers"}
    with run_pods(tmp_path, pods) as running:
        for name, pod in pods.items():
            running.wait_ready(name, pod.get("replicas", 1))
        wait_for(
            lambda: "workers-1/work | processed job-" in running.proc.output(),
            timeout=START_TIMEOUT,
            what="a worker to process an item of the source",
        )
        wait_for(
            lambda: "with token" in running.proc.output(),
            timeout=START_TIMEOUT,
            what="the singleton job to start",
        )
        leaders = [line for line in running.proc.output().splitlines() if "| leading as" in line]
        assert len(leaders) == 1, leaders
        pids = running.pids()
        request(running.state_dir, {"op": "down"})
        assert running.proc.wait(30) == 0
    assert not group_members(pids)
    assert not any(alive(pid) for pid in pids)


@pytest.mark.skipif(
    not {"balance", "cache"} <= set(COMMANDS), reason="needs podkit balance and podkit cache"
)
def test_requests_go_through_cache_and_balance_to_every_web_replica(tmp_path: Path) -> None:
    """Kill a web replica and it comes back in rotation; scale web to 5 and back to 2."""
    ports = {8000: free_port(), 8080: free_port(), 9000: free_port()}
    pods = {n: p for n, p in runnable_pods(ports).items() if n in ("web", "lb", "cache")}
    assert set(pods) == {"web", "lb", "cache"}
    assert pods["cache"]["containers"]["proxy"]["options"]["listen"] == f"{{pod.ip}}:{ports[8080]}"
    front = f"http://127.0.3.1:{ports[8080]}/"

    def names(n: int) -> set[str]:
        return {served_by(front) for _ in range(n)}

    with run_pods(tmp_path, pods) as running:
        running.wait_ready("cache", 1)
        wait_for(
            lambda: names(12) >= {"web-1", "web-2", "web-3"},
            timeout=START_TIMEOUT,
            what="every web replica behind cache and balance",
        )
        victim = next(c for c in running.containers("web") if c["replica"] == 2)
        os.kill(victim["pid"], signal.SIGKILL)
        wait_for(
            lambda: any(
                c["replica"] == 2 and c["restarts"] == 1 and c["ready"]
                for c in running.containers("web")
            ),
            timeout=START_TIMEOUT,
            what="web-2 restarted",
        )
        wait_for(lambda: "web-2" in names(12), timeout=START_TIMEOUT, what="web-2 in rotation")

        request(running.state_dir, {"op": "scale", "pod": "web", "replicas": 5})
        wait_for(
            lambda: {"web-4", "web-5"} <= names(20),
            timeout=START_TIMEOUT,
            what="web-4 and web-5 in rotation",
        )
        request(running.state_dir, {"op": "scale", "pod": "web", "replicas": 2})
        wait_for(
            lambda: names(12) == {"web-1", "web-2"},  # no error and no other replica
            timeout=START_TIMEOUT,
            what="only web-1 and web-2 in rotation",
        )
        pids = running.pids()
        request(running.state_dir, {"op": "down"})
        assert running.proc.wait(30) == 0
    assert not group_members(pids)
