"""`podkit up` with real processes: addresses, discovery, restarts, scaling, stop, no orphans."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from podkit.pods.supervisor import NotRunning, read_state, request
from podkit.testing import PodkitProcess
from podkit.testing.net import free_port, wait_for

START_TIMEOUT = 30.0  # several Python processes start at once on a loaded machine


def proc_stat(pid: int) -> list[str] | None:
    """The fields of /proc/PID/stat after the command name (state, ppid, pgrp, ...)."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return text.rpartition(")")[2].split()


def alive(pid: int) -> bool:
    fields = proc_stat(pid)
    return fields is not None and fields[0] != "Z"


def group_members(pgids: set[int]) -> set[int]:
    """Every live process whose process group is one of ``pgids``."""
    members = set()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            fields = proc_stat(int(entry.name))
            if fields is not None and fields[0] != "Z" and int(fields[2]) in pgids:
                members.add(int(entry.name))
    return members


def get(url: str) -> dict[str, Any]:
    with urllib.request.urlopen(url, timeout=5) as response:
        body: dict[str, Any] = json.loads(response.read())
        return body


def podkit_cli(cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "podkit", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


class Pods:
    """A running `podkit up` in a temporary directory, and ways to look at it."""

    def __init__(self, cwd: Path, proc: PodkitProcess) -> None:
        self.cwd = cwd
        self.proc = proc
        self.state_dir = cwd / ".podkit"

    def status(self) -> dict[str, Any]:
        return request(self.state_dir, {"op": "status"})

    def containers(self, pod: str) -> list[dict[str, Any]]:
        try:
            rows = self.status()["containers"]
        except NotRunning:
            return []
        return [c for c in rows if c["pod"] == pod]

    def ready(self, pod: str, replicas: int) -> bool:
        rows = self.containers(pod)
        replica_numbers = {c["replica"] for c in rows}
        return replica_numbers == set(range(1, replicas + 1)) and all(c["ready"] for c in rows)

    def wait_ready(self, pod: str, replicas: int) -> None:
        wait_for(
            lambda: self.ready(pod, replicas),
            timeout=START_TIMEOUT,
            what=f"{replicas} ready replicas of {pod}",
        )

    def pids(self) -> set[int]:
        return {c["pid"] for c in self.status()["containers"] if c["pid"]}

    def discovery(self, pod: str, port: int) -> list[str]:
        path = self.state_dir / "discovery" / f"{pod}-{port}.txt"
        lines = path.read_text().splitlines()
        return [line for line in lines if line and not line.startswith("#")]


@contextlib.contextmanager
def run_pods(tmp_path: Path, pods: dict[str, Any]) -> Iterator[Pods]:
    (tmp_path / "pods.yaml").write_text(yaml.safe_dump({"pods": pods}, sort_keys=False))
    groups: set[int] = set()
    with PodkitProcess("up", "pods.yaml", cwd=tmp_path) as proc:
        pods_ = Pods(tmp_path, proc)
        try:
            yield pods_
        finally:
            with contextlib.suppress(Exception):
                groups = pods_.pids()
    # Whatever a failed test left behind must not outlive it.
    for pid in group_members(groups):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def whoami_pod(port: int, replicas: int = 3) -> dict[str, Any]:
    return {
        "replicas": replicas,
        "containers": {
            "app": {
                "component": "whoami",
                "options": {
                    "listen": f"{{pod.ip}}:{port}",
                    "name": "{pod.name}-{pod.replica}",
                    "log-format": "text",
                },
            }
        },
        "ready": {"http": {"port": port, "path": "/ready"}, "interval": "200ms"},
    }


def idle_program() -> list[str]:
    return [sys.executable, "-c", "import signal; signal.pause()"]


def test_each_replica_answers_on_its_own_address_and_comes_back_after_sigkill(
    tmp_path: Path,
) -> None:
    port = free_port()
    pods = {
        "web": whoami_pod(port),
        "watcher": {
            "after": ["web"],
            "containers": {
                "idle": {
                    "run": ["sh", "-c", 'cat "$BACKENDS"; exec sleep 600'],
                    "env": {"BACKENDS": {"pod": "web", "port": port}},
                }
            },
        },
    }
    with run_pods(tmp_path, pods) as running:
        running.wait_ready("web", 3)
        running.wait_ready("watcher", 1)
        for replica in (1, 2, 3):
            body = get(f"http://127.0.1.{replica}:{port}/")
            assert body["name"] == f"web-{replica}"
        expected = [f"http://127.0.1.{r}:{port}" for r in (1, 2, 3)]
        assert running.discovery("web", port) == expected
        # The watcher started after web was ready, and found every replica listed.
        wait_for(
            lambda: f"watcher-1/idle | http://127.0.1.3:{port}" in running.proc.output(),
            what="the watcher's copy of the discovery file",
        )
        for replica in (1, 2):
            assert f"watcher-1/idle | http://127.0.1.{replica}:{port}" in running.proc.output()

        # The container learns where the discovery file is from its environment.
        watcher = running.containers("watcher")[0]
        environ = Path(f"/proc/{watcher['pid']}/environ").read_bytes().split(b"\0")
        backends = str(tmp_path / ".podkit" / "discovery" / f"web-{port}.txt")
        assert f"BACKENDS={backends}".encode() in environ
        assert b"PODKIT_POD_IP=127.0.2.1" in environ

        victim = next(c for c in running.containers("web") if c["replica"] == 2)
        os.kill(victim["pid"], signal.SIGKILL)

        def restarted() -> bool:
            row = next((c for c in running.containers("web") if c["replica"] == 2), None)
            return (
                row is not None
                and row["restarts"] == 1
                and row["ready"]
                and row["pid"] not in (None, victim["pid"])
            )

        wait_for(restarted, timeout=START_TIMEOUT, what="web-2 restarted and ready")
        assert get(f"http://127.0.1.2:{port}/")["name"] == "web-2"
        wait_for(
            lambda: running.discovery("web", port) == expected,
            timeout=START_TIMEOUT,
            what="web-2 listed again",
        )
        assert not alive(victim["pid"])
        output = running.proc.output()
        assert "web-2/app | " in output
        assert "podkit up: web ready at" in output
        assert "podkit up: web-2 not ready" in output
        assert "podkit up: web-2 ready" in output
        log = tmp_path / ".podkit" / "logs" / "web-1.app.log"
        assert "listening" in log.read_text()


def test_scale_up_and_down_then_down_leaves_no_process(tmp_path: Path) -> None:
    port = free_port()
    with run_pods(tmp_path, {"web": whoami_pod(port)}) as running:
        running.wait_ready("web", 3)
        result = podkit_cli(tmp_path, "scale", "web", "5")
        assert result.returncode == 0, result.stderr
        running.wait_ready("web", 5)
        assert get(f"http://127.0.1.5:{port}/")["name"] == "web-5"
        wait_for(lambda: len(running.discovery("web", port)) == 5, what="5 backends listed")
        removed = {c["pid"] for c in running.containers("web") if c["replica"] > 2}

        result = podkit_cli(tmp_path, "scale", "web", "2")
        assert result.returncode == 0, result.stderr
        wait_for(lambda: running.ready("web", 2), timeout=START_TIMEOUT, what="2 replicas left")
        assert running.discovery("web", port) == [f"http://127.0.1.{r}:{port}" for r in (1, 2)]
        wait_for(
            lambda: not any(alive(pid) for pid in removed),
            timeout=START_TIMEOUT,
            what="removed replicas gone",
        )

        table = podkit_cli(tmp_path, "status")
        assert table.returncode == 0, table.stderr
        assert table.stdout.splitlines()[1].split() == [
            "POD",
            "CONTAINER",
            "STATE",
            "PID",
            "RESTARTS",
            "READY",
            "ADDRESS",
        ]
        assert "web-2" in table.stdout
        assert "web-3" not in table.stdout

        pids = running.pids()
        state = read_state(running.state_dir)
        assert state is not None
        guardian = state["guardian"]
        assert alive(guardian)
        result = podkit_cli(tmp_path, "down")
        assert result.returncode == 0, result.stderr
        assert result.stdout.strip() == "stopped"
        assert running.proc.wait(10) == 0
        assert not any(alive(pid) for pid in pids)
        assert not group_members(pids)
        wait_for(lambda: not alive(guardian), what="the guardian to exit")
        assert not (running.state_dir / "control.sock").exists()
        assert not (running.state_dir / "state.json").exists()
        assert podkit_cli(tmp_path, "down").stdout.strip() == "nothing runs here"


def test_a_sigkilled_supervisor_leaves_no_orphan_not_even_grandchildren(tmp_path: Path) -> None:
    port = free_port()
    pods = {
        "web": whoami_pod(port, replicas=2),
        "shell": {
            "containers": {"sh": {"run": ["sh", "-c", "sleep 300 & sleep 300 & wait"]}},
        },
    }
    with run_pods(tmp_path, pods) as running:
        running.wait_ready("web", 2)
        running.wait_ready("shell", 1)
        groups = running.pids()
        # The shell's two sleeps run in its group: three processes.
        wait_for(lambda: len(group_members(groups)) >= 5, what="the shell's children")
        members = group_members(groups)
        state = read_state(running.state_dir)
        assert state is not None
        guardian = state["guardian"]

        running.proc.kill()

        wait_for(
            lambda: not any(alive(pid) for pid in members),
            timeout=15,
            what="every container and child to die with the supervisor",
        )
        wait_for(lambda: not alive(guardian), what="the guardian to exit")
        # The state left behind names the dead supervisor; `podkit down` tidies it up.
        result = podkit_cli(tmp_path, "down")
        assert result.returncode == 0, result.stderr
        assert not (tmp_path / ".podkit" / "state.json").exists()


def test_ctrl_c_stops_everything_and_a_failed_container_is_reported_with_output(
    tmp_path: Path,
) -> None:
    pods = {
        "job": {
            "restart": "never",
            "containers": {"task": {"run": ["sh", "-c", "echo boom; echo bang >&2; exit 3"]}},
        },
        "idle": {"containers": {"sleeper": {"run": idle_program()}}},
    }
    with run_pods(tmp_path, pods) as running:
        wait_for(
            lambda: "restart policy 'never' keeps it down" in running.proc.output(),
            timeout=START_TIMEOUT,
            what="the failed job to be reported",
        )
        output = running.proc.output()
        assert "job-1/task: exit code 3" in output
        assert "    boom" in output
        assert "    bang" in output
        running.wait_ready("idle", 1)
        pids = running.pids()
        running.proc.signal(signal.SIGINT)
        assert running.proc.wait(20) == 0
        assert not group_members(pids)
        assert "podkit up: all pods stopped" in running.proc.output()


@pytest.mark.parametrize(
    ("pods", "where"),
    [
        (
            {
                "a": {"after": ["b"], "containers": {"x": {"run": ["true"]}}},
                "b": {"after": ["a"], "containers": {"x": {"run": ["true"]}}},
            },
            "pods.a.after: cycle in after: a -> b -> a",
        ),
        (
            {"a": {"containers": {"x": {"run": ["no-such-program-anywhere"]}}}},
            "pods.a.containers.x.run[0]: command not found",
        ),
        (
            {"a": {"replica": 2, "containers": {"x": {"run": ["true"]}}}},
            "pods.a.replica: unknown key",
        ),
        (
            {
                "a": {
                    "containers": {
                        "x": {"component": "whoami", "ports": [9000]},
                        "y": {"run": ["true"], "ports": [9000]},
                    }
                }
            },
            "pods.a.containers.y.ports[0]: port clash: 127.0.1.1:9000",
        ),
    ],
)
def test_a_bad_pod_file_is_rejected_before_anything_starts(
    tmp_path: Path, pods: dict[str, Any], where: str
) -> None:
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump({"pods": pods}))
    result = podkit_cli(tmp_path, "up", "bad.yaml")
    assert result.returncode == 2
    assert result.stderr.startswith(f"podkit up: error: bad.yaml: {where}"), result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / ".podkit").exists()


def test_status_scale_and_down_without_a_supervisor_say_so(tmp_path: Path) -> None:
    result = podkit_cli(tmp_path, "status")
    assert result.returncode == 3  # documented: nothing running
    assert result.stderr.startswith("podkit status: error: no pods run from")
    assert podkit_cli(tmp_path, "scale", "web", "2").returncode == 1


def test_podkit_down_kills_what_a_killed_supervisor_and_guardian_left(tmp_path: Path) -> None:
    """With the guardian gone too, the recorded groups let `podkit down` find the grandchildren."""
    pods = {"shell": {"containers": {"sh": {"run": ["sh", "-c", "sleep 300 & sleep 300 & wait"]}}}}
    with run_pods(tmp_path, pods) as running:
        running.wait_ready("shell", 1)
        groups = running.pids()
        wait_for(lambda: len(group_members(groups)) == 3, what="the shell's children")
        state = read_state(running.state_dir)
        assert state is not None
        os.kill(state["guardian"], signal.SIGKILL)
        wait_for(lambda: not alive(state["guardian"]), what="the guardian to die")
        running.proc.kill()
        # The shell dies with its parent; its children are left, still in its group.
        wait_for(lambda: len(group_members(groups)) == 2, what="the shell to die")
        result = podkit_cli(tmp_path, "down")
        assert result.returncode == 0, result.stderr
        assert "killed 1 leftover process group" in result.stdout
        wait_for(lambda: not group_members(groups), what="the leftovers to die")


def test_up_check_validates_without_starting_and_schema_prints_the_json_schema(
    tmp_path: Path,
) -> None:
    from podkit.pods.model import json_schema

    root = Path(__file__).resolve().parents[2]
    result = podkit_cli(tmp_path, "up", str(root / "examples" / "whoami.yaml"), "--check")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().endswith("whoami.yaml: ok (1 pods: web)")
    assert not (tmp_path / ".podkit").exists()
    result = podkit_cli(tmp_path, "up", "--schema")
    assert json.loads(result.stdout) == json_schema()


def post(url: str) -> int:
    request_ = urllib.request.Request(url, method="POST", data=b"")
    with urllib.request.urlopen(request_, timeout=5) as response:
        status: int = response.status
        return status


def test_a_replica_whose_probe_fails_leaves_the_discovery_file_and_comes_back(
    tmp_path: Path,
) -> None:
    port = free_port()
    web = whoami_pod(port, replicas=2)
    web["ready"]["failures"] = 2
    with run_pods(tmp_path, {"web": web}) as running:
        running.wait_ready("web", 2)
        both = [f"http://127.0.1.{r}:{port}" for r in (1, 2)]
        assert running.discovery("web", port) == both
        assert post(f"http://127.0.1.1:{port}/ready/off") == 200
        wait_for(
            lambda: running.discovery("web", port) == both[1:],
            timeout=START_TIMEOUT,
            what="web-1 out of the discovery file",
        )
        row = next(c for c in running.containers("web") if c["replica"] == 1)
        assert row["state"] == "running"
        assert not row["ready"]
        assert row["restarts"] == 0
        assert post(f"http://127.0.1.1:{port}/ready/on") == 200
        wait_for(
            lambda: running.discovery("web", port) == both,
            timeout=START_TIMEOUT,
            what="web-1 back in the discovery file",
        )


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"pods:\n  web:\n    containers: {app: {run: [caf\xe9]}}\n", "not UTF-8 text"),
        (
            b"pods:\n  web: {containers: {a: {run: [true]}}}\n  web: {containers: {}}\n",
            "line 3, column 3: duplicate key 'web' (first at line 2)",
        ),
        (b"- web\n", "expected a mapping (key: value), got a list"),
    ],
)
def test_a_pod_file_that_cannot_be_read_is_one_line_naming_the_file(
    tmp_path: Path, content: bytes, message: str
) -> None:
    (tmp_path / "bad.yaml").write_bytes(content)
    for args in (("up", "bad.yaml"), ("up", "bad.yaml", "--check")):
        result = podkit_cli(tmp_path, *args)
        assert result.returncode == 2
        assert result.stderr.startswith("podkit up: error: bad.yaml: "), result.stderr
        assert message in result.stderr
        assert len(result.stderr.splitlines()) == 1
        assert "Traceback" not in result.stderr


def test_down_takes_a_duration_and_rejects_words(tmp_path: Path) -> None:
    assert podkit_cli(tmp_path, "down", "--timeout", "5s").returncode == 0
    result = podkit_cli(tmp_path, "down", "--timeout", "5 seconds")
    assert result.returncode == 2
    assert result.stderr.startswith("podkit down: error: ")
    assert "expected a duration such as 500ms, 2s or 1m" in result.stderr
