"""`podkit up -d`, `logs`, `restart` and the checks before start, with real processes."""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import signal
import socket
import ssl
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

from podkit.pods.supervisor import read_state, request
from podkit.testing.net import free_port, wait_for
from tests.pods.test_supervisor import alive, group_members, podkit_cli

START_TIMEOUT = 30.0


def write_pods(tmp_path: Path, pods: dict[str, Any], **top: Any) -> Path:
    path = tmp_path / "pods.yaml"
    path.write_text(yaml.safe_dump({**top, "pods": pods}, sort_keys=False))
    return path


def whoami(port: int, admin: int | None = None, replicas: int = 1) -> dict[str, Any]:
    options: dict[str, Any] = {
        "listen": f"{{pod.ip}}:{port}",
        "name": "{pod.name}-{pod.replica}",
        "log-format": "text",
    }
    if admin is not None:
        options["admin"] = f"{{pod.ip}}:{admin}"
    return {
        "replicas": replicas,
        "containers": {"app": {"component": "whoami", "options": options}},
    }


@contextlib.contextmanager
def detached(tmp_path: Path) -> Iterator[None]:
    """Whatever `up -d` left running is stopped after the test, even when it failed."""
    try:
        yield
    finally:
        state = read_state(tmp_path / ".podkit")
        if state is not None and alive(int(state["pid"])):
            pids = {c["pid"] for c in state["containers"] if c["pid"]}
            podkit_cli(tmp_path, "down", "--timeout", "20s")
            for pid in group_members(pids):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)


def get(url: str) -> dict[str, Any]:
    with urllib.request.urlopen(url, timeout=5) as response:
        body: dict[str, Any] = json.loads(response.read())
        return body


def test_up_d_returns_once_ready_and_logs_f_follows_until_down(tmp_path: Path) -> None:
    port, admin = free_port(), free_port()
    write_pods(tmp_path, {"web": whoami(port, admin, replicas=2)}, subnet="127.41.0.0/16")
    with detached(tmp_path):
        result = podkit_cli(tmp_path, "up", "-d", "pods.yaml")
        assert result.returncode == 0, result.stderr
        assert f"podkit up: web ready at 127.41.1.1:{port} 127.41.1.2:{port}" in result.stdout
        assert "running in the background" in result.stdout
        # Ready means answering: no wait is needed after `up -d` returns.
        assert get(f"http://127.41.1.2:{port}/")["name"] == "web-2"
        pids = {c["pid"] for c in request(tmp_path / ".podkit", {"op": "status"})["containers"]}

        shown = podkit_cli(tmp_path, "logs")
        assert shown.returncode == 0, shown.stderr
        assert "web-1/app | " in shown.stdout
        assert "web-2/app | " in shown.stdout
        one = podkit_cli(tmp_path, "logs", "web-2/app", "--since", "5m")
        assert "listening" in one.stdout
        assert " | " not in one.stdout  # one container: no prefix

        follow = subprocess.Popen(
            [sys.executable, "-m", "podkit", "logs", "-f", "web"],
            cwd=tmp_path,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            get(f"http://127.41.1.1:{port}/delay/1")
            down = podkit_cli(tmp_path, "down", "--timeout", "20s")
            assert down.returncode == 0, down.stderr
            out, err = follow.communicate(timeout=30)
        finally:
            if follow.poll() is None:
                follow.kill()
                follow.wait()
        assert follow.returncode == 0, err
        # `logs -f` printed what was there, then what came until the pods stopped.
        assert "web-1/app | " in out
        assert out.count("whoami: listening") == 2
        # ... and what they wrote while stopping, to the last line.
        assert sum("whoami: stopped" in line for line in out.splitlines()) == 2
        assert not any(alive(pid) for pid in pids)
        assert podkit_cli(tmp_path, "status").returncode == 3


def test_up_d_with_a_container_that_exits_2_fails_with_its_message_and_leaves_nothing(
    tmp_path: Path,
) -> None:
    port = free_port()
    pods = {
        "web": whoami(port),
        "job": {
            "restart": "always",
            "containers": {
                "x": {
                    "run": ["sh", "-c", "echo 'podkit job: error: --size: not a size' >&2; exit 2"]
                }
            },
        },
    }
    write_pods(tmp_path, pods, subnet="127.42.0.0/16")
    with detached(tmp_path):
        result = podkit_cli(tmp_path, "up", "-d", "pods.yaml")
        assert result.returncode == 1
        last = result.stderr.splitlines()[-1]
        assert last.startswith("podkit up: error: job-1/x: exited with code 2"), result.stderr
        assert last.endswith("not restarted: podkit job: error: --size: not a size")
        assert "Traceback" not in result.stderr
        assert read_state(tmp_path / ".podkit") is None
        assert podkit_cli(tmp_path, "status").returncode == 3
        with socket.socket() as sock:
            sock.bind(("127.42.1.1", port))  # web was stopped: its address is free again


def test_an_address_held_by_another_process_fails_before_anything_starts(tmp_path: Path) -> None:
    port = free_port()
    write_pods(tmp_path, {"web": whoami(port)}, subnet="127.43.0.0/16")
    with socket.socket() as squatter:
        squatter.bind(("127.43.1.1", port))
        squatter.listen()
        for args in (("up", "pods.yaml"), ("up", "-d", "pods.yaml")):
            result = podkit_cli(tmp_path, *args)
            assert result.returncode == 1
            assert result.stderr.splitlines() == [
                "podkit up: error: pods.yaml: pods.web.containers.app.options.listen: "
                f"127.43.1.1:{port} is already in use by a process this project did not start; "
                "stop it, or move this project to another loopback block with "
                "`subnet: 127.N.0.0/16` in the pod file or `podkit up --subnet` "
                "(docs/pods.md#two-projects-on-one-machine)"
            ]
        assert read_state(tmp_path / ".podkit") is None
        # Moved to another block, the same file runs beside the other process.
        with detached(tmp_path):
            moved = podkit_cli(tmp_path, "up", "-d", "pods.yaml", "--subnet", "127.44.0.0/16")
            assert moved.returncode == 0, moved.stderr
            assert get(f"http://127.44.1.1:{port}/")["name"] == "web-1"
            assert podkit_cli(tmp_path, "down").returncode == 0


def test_a_probe_address_that_already_answers_is_refused(tmp_path: Path) -> None:
    """A probe would take another process's answer for our container's: refuse to start."""
    port = free_port()
    pods = {
        "web": {
            "containers": {"app": {"run": ["sleep", "60"]}},
            "ready": {"tcp": {"port": port}},
        }
    }
    write_pods(tmp_path, pods, subnet="127.45.0.0/16")
    with socket.socket() as other:
        other.bind(("127.45.1.1", port))
        other.listen()
        result = podkit_cli(tmp_path, "up", "pods.yaml")
    assert result.returncode == 1
    assert f"pods.web.ready: 127.45.1.1:{port} is already in use" in result.stderr


def test_restart_and_admin_readyz_decide_readiness(tmp_path: Path) -> None:
    port, admin = free_port(), free_port()
    write_pods(tmp_path, {"web": whoami(port, admin)}, subnet="127.46.0.0/16")
    state_dir = tmp_path / ".podkit"
    with detached(tmp_path):
        assert podkit_cli(tmp_path, "up", "-d", "pods.yaml").returncode == 0
        first = request(state_dir, {"op": "status"})["containers"][0]
        assert first["ready"]
        # No `ready` probe: the admin /readyz decides; switched off, the replica leaves.
        off = urllib.request.Request(f"http://127.46.1.1:{port}/ready/off", method="POST")
        urllib.request.urlopen(off, timeout=5).close()
        wait_for(
            lambda: not request(state_dir, {"op": "status"})["containers"][0]["ready"],
            timeout=START_TIMEOUT,
            what="web-1 not ready after /readyz went 503",
        )
        result = podkit_cli(tmp_path, "restart", "web")
        assert result.returncode == 0, result.stderr
        assert result.stdout.strip() == "web: restarted, ready"
        row = request(state_dir, {"op": "status"})["containers"][0]
        assert row["ready"]
        assert row["restarts"] == 1
        assert row["pid"] != first["pid"]
        assert not alive(first["pid"])
        bad = podkit_cli(tmp_path, "restart", "db")
        assert bad.returncode == 2
        assert bad.stderr.startswith("podkit restart: error: no pod named 'db'")
        assert podkit_cli(tmp_path, "down").returncode == 0


def test_status_shows_one_line_of_live_figures_per_component(tmp_path: Path) -> None:
    web, front, admin = free_port(), free_port(), free_port()

    def component(name: str, options: dict[str, Any], **extra: Any) -> dict[str, Any]:
        opts = {**options, "admin": f"{{pod.ip}}:{admin}", "log-format": "text"}
        return {"containers": {"c": {"component": name, "options": opts, **extra}}}

    queue = "sqlite:///{pod.dir}/../q.db"
    pods = {
        "web": whoami(web, replicas=2),
        "lb": {
            **component(
                "balance",
                {
                    "listen": f"{{pod.ip}}:{front}",
                    "backends": {"pod": "web", "port": web},
                    "interval": "200ms",
                },
            ),
            "after": ["web"],
        },
        "cache": {
            **component(
                "cache",
                {"listen": f"{{pod.ip}}:{front}", "upstream": f"http://{{pods.lb.ip}}:{front}"},
            ),
            "after": ["lb"],
        },
        "elect": component(
            "elect",
            {"backend": "sqlite:///{pod.dir}/../e.db", "name": "job", "id": "one"},
            command=["sleep", "600"],
        ),
        "work": component(
            "queue work", {"min": 1, "max": 2}, args=[queue, "jobs"], command=["cat"]
        ),
    }
    write_pods(tmp_path, pods, subnet="127.47.0.0/16")
    with detached(tmp_path):
        up = podkit_cli(tmp_path, "up", "-d", "pods.yaml")
        assert up.returncode == 0, up.stderr
        for _ in range(2):
            urllib.request.urlopen(f"http://127.47.3.1:{front}/cache/30", timeout=5).close()

        def figures() -> dict[str, str]:
            result = podkit_cli(tmp_path, "status")
            assert result.returncode == 0, result.stderr
            lines = result.stdout.split("\n\n", 1)[1].splitlines()
            assert lines[0].split()[:2] == ["COMPONENT", "FIGURES"]
            return dict(line.split(None, 1) for line in lines[1:])

        wait_for(
            lambda: figures().get("elect-1/c", "").startswith("leader; leader one, token"),
            timeout=START_TIMEOUT,
            what="the elect figures to name the leader",
        )
        shown = figures()
        assert shown["lb-1/c"] == "backends 2/2 ready"
        assert shown["cache-1/c"] == "hit ratio 50% (1 of 2 lookups), 1 objects"
        assert shown["work-1/c"].startswith("jobs: depth 0, 0 leased")
        assert "1 workers" in shown["work-1/c"]
        assert "web-1/app" not in shown  # no admin endpoint: no figures
        as_json = json.loads(podkit_cli(tmp_path, "status", "--json").stdout)
        lb = next(c for c in as_json["containers"] if c["pod"] == "lb")
        assert lb["figures"]["backends_ready"] == 2
        assert podkit_cli(tmp_path, "down").returncode == 0


def test_an_app_behind_tls_cache_and_balance_sees_the_client_and_https(tmp_path: Path) -> None:
    """Each podkit component trusts the X-Forwarded-* of this project's pods in front of it."""
    from tests.sidecar.pki import TestCA

    ca = TestCA(tmp_path)
    issued = ca.issue("site", common_name="site.test", dns=("site.test",))
    app, front, admin = free_port(), free_port(), free_port()

    def hop(name: str, options: dict[str, Any], after: str | None = None) -> dict[str, Any]:
        opts = {**options, "admin": f"{{pod.ip}}:{admin}", "log-format": "text"}
        pod: dict[str, Any] = {"containers": {"c": {"component": name, "options": opts}}}
        if after:
            pod["after"] = [after]
        return pod

    pods = {
        "app": whoami(app),
        "lb": hop(
            "balance",
            {"listen": f"{{pod.ip}}:{front}", "backends": {"pod": "app", "port": app}},
            after="app",
        ),
        "cache": hop(
            "cache",
            {"listen": f"{{pod.ip}}:{front}", "upstream": f"http://{{pods.lb.ip}}:{front}"},
            after="lb",
        ),
        "tls": hop(
            "tls",
            {
                "listen": f"{{pod.ip}}:{front}",
                "cert": str(issued.cert),
                "key": str(issued.key),
                "upstream": f"http://{{pods.cache.ip}}:{front}",
            },
            after="cache",
        ),
    }
    write_pods(tmp_path, pods, subnet="127.48.0.0/16")
    with detached(tmp_path):
        up = podkit_cli(tmp_path, "up", "-d", "pods.yaml")
        assert up.returncode == 0, up.stderr
        context = ssl.create_default_context(cafile=str(ca.path))
        context.check_hostname = False
        conn = http.client.HTTPSConnection("127.48.4.1", front, context=context, timeout=5)
        try:
            conn.request("GET", "/", headers={"X-Forwarded-For": "6.6.6.6"})  # forged
            body = json.loads(conn.getresponse().read())
        finally:
            conn.close()
        headers = {k.lower(): v for k, v in body["headers"].items()}
        assert headers["x-forwarded-proto"] == "https"
        # The real client first, then each hop; the forged address never reaches the app.
        assert headers["x-forwarded-for"] == "127.0.0.1, 127.48.4.1, 127.48.3.1"
        assert body["client"].startswith("127.48.2.1:")  # the balancer connects to the app
        assert podkit_cli(tmp_path, "down").returncode == 0


def test_up_d_that_is_not_ready_in_time_stops_everything_and_says_who(tmp_path: Path) -> None:
    port = free_port()
    pods = {
        "web": {
            "containers": {"app": {"run": ["sleep", "600"]}},
            "ready": {"tcp": {"port": port}, "interval": "200ms"},  # nothing ever listens
        }
    }
    write_pods(tmp_path, pods, subnet="127.49.0.0/16")
    with detached(tmp_path):
        result = podkit_cli(tmp_path, "up", "-d", "pods.yaml", "--wait-timeout", "2s")
        assert result.returncode == 1
        assert result.stderr == (
            "podkit up: error: not every pod was ready within 2s: waiting for web-1/app "
            "(running); stopped everything (see `podkit logs`)\n"
        )
        assert read_state(tmp_path / ".podkit") is None
        assert podkit_cli(tmp_path, "status").returncode == 3
        assert not [
            pid
            for pid in map(int, filter(str.isdigit, os.listdir("/proc")))
            if _cwd(pid) == tmp_path and _cmdline(pid).startswith("sleep")
        ]


def _cwd(pid: int) -> Path | None:
    try:
        return Path(os.readlink(f"/proc/{pid}/cwd"))
    except OSError:
        return None


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


def test_log_files_rotate_at_the_size_given_to_up(tmp_path: Path) -> None:
    script = "i=0; while [ $i -lt 300 ]; do echo line $i; i=$((i+1)); done; exec sleep 600"
    write_pods(tmp_path, {"job": {"containers": {"sh": {"run": ["sh", "-c", script]}}}})
    logs = tmp_path / ".podkit" / "logs"
    with detached(tmp_path):
        up = podkit_cli(tmp_path, "up", "-d", "pods.yaml", "--log-max-size", "2KiB")
        assert up.returncode == 0, up.stderr
        wait_for(
            lambda: "line 299" in podkit_cli(tmp_path, "logs", "job").stdout,
            timeout=START_TIMEOUT,
            what="the last line in the logs",
        )
        assert (logs / "job-1.sh.log").stat().st_size <= 2048
        assert (logs / "job-1.sh.log.1").stat().st_size <= 2048
        assert not (logs / "job-1.sh.log.2").exists()
        shown = podkit_cli(tmp_path, "logs", "job", "--tail", "3").stdout.splitlines()
        assert shown == ["line 297", "line 298", "line 299"]
        kept = podkit_cli(tmp_path, "logs", "job").stdout.splitlines()
        first = int(kept[0].split()[1])
        assert kept == [f"line {i}" for i in range(first, 300)]  # the newest, with no gap
        assert podkit_cli(tmp_path, "down").returncode == 0
