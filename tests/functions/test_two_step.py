"""examples/two-step: login -> code -> outbox -> verify within a time limit, as real processes."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import httpx

from podkit.testing import PodkitProcess, free_port
from podkit.testing.net import wait_for, wait_http

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "two-step"
TIMEOUT = 30.0
CODE_TTL = 1.0


def code_for(outbox: Path, login_id: str) -> str:
    for line in outbox.read_text().splitlines() if outbox.exists() else []:
        found_id, code = line.split()
        if found_id == login_id:
            return code
    return ""


def test_two_step_verification_accepts_a_fresh_code_once_and_refuses_late_or_wrong_ones(
    tmp_path: Path,
) -> None:
    port = free_port()
    env = {"TWO_STEP_DIR": str(tmp_path), "TWO_STEP_CODE_TTL": str(CODE_TTL)}
    with PodkitProcess(
        "functions", "serve", str(EXAMPLE / "app.py"),
        "--listen", f"127.0.0.1:{port}", "--backend", f"sqlite:///{tmp_path}/functions.db",
        "--access-log", "off",
        env=env, cwd=tmp_path,
    ):  # fmt: skip
        base = f"http://127.0.0.1:{port}"
        wait_http("127.0.0.1", port, "/functions/login", status=405, timeout=TIMEOUT)
        outbox = tmp_path / "outbox" / "ann.txt"

        def login() -> tuple[str, float]:
            r = httpx.post(f"{base}/login", json={"user": "ann", "password": "correct horse"})
            assert r.status_code == 200, r.text
            return r.json()["login_id"], time.time()

        login_id, _ = login()
        wait_for(lambda: code_for(outbox, login_id) != "", timeout=TIMEOUT, what="the code")
        code = code_for(outbox, login_id)
        wrong = f"{(int(code) + 1) % 10**6:06d}"
        r = httpx.post(f"{base}/verify", json={"login_id": login_id, "code": wrong})
        assert r.status_code == 401
        r = httpx.post(f"{base}/verify", json={"login_id": login_id, "code": code})
        assert (r.status_code, r.json()) == (200, {"verified": True})
        r = httpx.post(f"{base}/verify", json={"login_id": login_id, "code": code})
        assert r.status_code == 410  # used

        late_id, issued = login()
        wait_for(lambda: code_for(outbox, late_id) != "", timeout=TIMEOUT, what="the code")
        wait_for(lambda: time.time() > issued + CODE_TTL, timeout=TIMEOUT, what="the time limit")
        r = httpx.post(
            f"{base}/verify", json={"login_id": late_id, "code": code_for(outbox, late_id)}
        )
        assert r.status_code == 410

        r = httpx.post(f"{base}/login", json={"user": "ann", "password": "wrong"})
        assert r.status_code == 401
        r = httpx.post(f"{base}/verify", json={"login_id": "x", "code": "12"})
        assert r.status_code == 422
        assert outbox.read_text().count("\n") == 2  # one delivery per login


def test_the_two_step_pod_file_is_valid(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "podkit", "up", "--check", "--state-dir", str(tmp_path),
         str(EXAMPLE / "pod.yaml")],
        capture_output=True, text=True, timeout=30, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
