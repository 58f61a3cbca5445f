"""The dashboard in a real browser (Debian's chromium, driven by Playwright) over the quick
start: every pod is shown, a killed replica turns red and then green, figures move under
load, and the actions work. A screenshot is kept under the test's temporary directory."""

from __future__ import annotations

import contextlib
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from podkit.testing import PodkitProcess
from podkit.testing.net import free_port, wait_for

QUICKSTART = Path(__file__).resolve().parents[2] / "examples" / "quickstart.yaml"
START_TIMEOUT = 60.0  # ten Python processes start at once on a loaded machine
playwright_api = pytest.importorskip("playwright.sync_api")


def chromium() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    assert found, "chromium is missing: `make setup` installs it (scripts/ensure-system.sh)"
    return found


def get_json(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=5) as response:
        return json.loads(response.read())


def post(url: str, body: dict[str, Any], *, header: bool = True) -> int:
    headers = {"Content-Type": "application/json"}
    if header:
        headers["X-Podkit-Dashboard"] = "1"
    data = json.dumps(body).encode()
    try:
        with urllib.request.urlopen(
            urllib.request.Request(url, data=data, headers=headers), timeout=10
        ) as response:
            return int(response.status)
    except urllib.error.HTTPError as exc:
        return exc.code


@contextlib.contextmanager
def dashboard_page(url: str) -> Iterator[Any]:
    """The dashboard at ``url`` open in chromium, once its event stream is live."""
    with playwright_api.sync_playwright() as driver:
        browser = driver.chromium.launch(
            executable_path=chromium(), args=["--no-sandbox", "--disable-gpu"]
        )
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1100})
            page.goto(url)
            playwright_api.expect(page.locator("#live")).to_have_text("live", timeout=10_000)
            yield page
        finally:
            browser.close()


def test_the_dashboard_shows_the_quick_start_and_a_killed_replica_turns_red_then_green(
    tmp_path: Path,
) -> None:
    block = random.randint(100, 250)
    host = f"127.{block}.0.1"
    port = free_port(host)
    url = f"http://{host}:{port}/"
    with PodkitProcess(
        "up",
        str(QUICKSTART),
        "--subnet",
        f"127.{block}.0.0/16",
        "--dashboard",
        f"{host}:{port}",
        cwd=tmp_path,
    ) as proc:
        pods = list(yaml.safe_load(QUICKSTART.read_text())["pods"])
        wait_for(
            lambda: f"dashboard at {url}" in proc.output(), timeout=START_TIMEOUT, what="the page"
        )
        wait_for(
            lambda: set(get_json(url + "api/state")["ready_pods"]) == set(pods),
            timeout=START_TIMEOUT,
            what="every pod to be ready",
        )
        # Actions need the header a page of another origin cannot send.
        assert post(url + "api/scale", {"pod": "web", "replicas": 4}, header=False) == 403
        assert post(url + "api/scale", {"pod": "web"}) == 400
        expect = playwright_api.expect
        with dashboard_page(url) as page:
            for pod in pods:
                expect(page.locator(f"#pod-{pod}")).to_be_visible()
                expect(page.locator(f"#node-{pod}")).to_be_visible()
            row = page.locator('tr[data-container="web-2/app"]')
            expect(row).to_have_class(re.compile(r"\bok\b"), timeout=10_000)
            pid = next(
                c["pid"]
                for c in get_json(url + "api/state")["containers"]
                if (c["pod"], c["replica"], c["container"]) == ("web", 2, "app")
            )
            os.kill(pid, signal.SIGKILL)
            expect(row).to_have_class(re.compile(r"\bdown\b"), timeout=10_000)
            expect(row).to_have_class(re.compile(r"\bok\b"), timeout=START_TIMEOUT * 1000)
            expect(row.locator("td").nth(2)).to_have_text("1")  # restarts

            # Figures move under load: requests through the cache show a rate.
            cache = f"http://127.{block}.3.1:8080/"
            for i in range(40):
                with urllib.request.urlopen(cache + ("cache/30" if i % 2 else ""), timeout=5):
                    pass
            rps = page.locator('[data-figure="cache-1/proxy:rps"] .value')
            expect(rps).not_to_have_text(re.compile(r"^0\.0$"), timeout=15_000)
            expect(page.locator('[data-figure="lb-1/balance:backends_ready"]')).to_be_visible()

            # Scale from the page: a fourth replica appears and becomes ready.
            page.fill('#pod-web input[type="number"]', "4")
            page.click("#pod-web button.scale")
            new_row = page.locator('tr[data-container="web-4/app"]')
            expect(new_row).to_have_class(re.compile(r"\bok\b"), timeout=START_TIMEOUT * 1000)

            # Drain a backend of the balancer, then purge a URL from the cache.
            backend = page.locator("table.backends tr[data-backend]").first
            backend.locator("button.drain").click()
            expect(page.locator("#message")).to_contain_text("done", timeout=10_000)
            page.fill("#purge-target", "/cache/30")
            page.click("#purge")
            expect(page.locator("#message")).to_contain_text('"purged"', timeout=10_000)

            shot = tmp_path / "dashboard.png"
            page.screenshot(path=str(shot), full_page=True)
            assert shot.stat().st_size > 10_000
            print(f"dashboard screenshot: {shot}")
        proc.signal(signal.SIGTERM)
        assert proc.wait(60) == 0


AMBASSADORS = QUICKSTART.parent / "ambassadors.yaml"


def test_the_dashboard_shows_pipeline_stage_split_and_broker_figures(tmp_path: Path) -> None:
    """examples/ambassadors.yaml (its broker given an admin endpoint) and one pipeline stage
    worker: the page shows the split's candidate weight, arms and diff mismatch rate, the
    broker's environment and connections, and the stage's items in and out per second."""
    pipeline = tmp_path / "pipe.yaml"
    pipeline.write_text(
        "topics: {backend: 'sqlite:///pipe.db'}\n"
        "inputs: {docs: {stream: true}}\n"
        "stages: {copy: {from: docs, copier: {}, to: copied}}\n"
    )
    spec = yaml.safe_load(AMBASSADORS.read_text())
    spec["pods"]["env"]["containers"]["broker"]["options"]["admin"] = "{pod.ip}:9090"
    spec["pods"]["stage"] = {
        "containers": {
            "worker": {
                "component": "pipeline work",
                "args": [str(pipeline)],
                "options": {"stage": "copy", "admin": "{pod.ip}:9100"},
            }
        }
    }
    podfile = tmp_path / "pods.yaml"
    podfile.write_text(yaml.safe_dump(spec, sort_keys=False))  # addresses follow the order
    block = random.randint(100, 250)
    host = f"127.{block}.0.1"
    port = free_port(host)
    url = f"http://{host}:{port}/"
    with PodkitProcess(
        "up", str(podfile), "--subnet", f"127.{block}.0.0/16", "--dashboard", f"{host}:{port}",
        cwd=tmp_path,
    ) as proc:  # fmt: skip
        wait_for(
            lambda: f"dashboard at {url}" in proc.output(), timeout=START_TIMEOUT, what="the page"
        )
        wait_for(
            lambda: set(get_json(url + "api/state")["ready_pods"]) == set(spec["pods"]),
            timeout=START_TIMEOUT,
            what="every pod to be ready",
        )
        for i in range(60):  # pods in file order: v1, v2, edge (split), env (broker), stage
            request = urllib.request.Request(
                f"http://127.{block}.3.1:8080/", headers={"Cookie": f"user=u{i}"}
            )
            with urllib.request.urlopen(request, timeout=5):
                pass
            with urllib.request.urlopen(f"http://127.{block}.4.1:8090/", timeout=5):
                pass
        put = subprocess.run(
            [sys.executable, "-m", "podkit", "pipeline", "put", str(pipeline), "--input", "docs",
             *[str(n) for n in range(200)]],
            cwd=tmp_path, capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip
        assert put.returncode == 0, put.stderr

        def stage_moved() -> bool:
            figures = get_json(url + "api/state")["figures"].get("stage-1/worker", {})
            return any(v > 0 for _t, v in figures.get("series", {}).get("items_in", []))

        wait_for(stage_moved, timeout=20, what="the stage's items in/s")
        expect = playwright_api.expect
        with dashboard_page(url) as page:
            weight = page.locator('[data-figure="edge-1/split:candidate_weight"] .value')
            expect(weight).to_have_text("10.0 %", timeout=10_000)
            expect(page.locator('[data-figure="edge-1/split:diff_mismatch"]')).to_be_visible()
            expect(page.locator('table.arms tr[data-arm="candidate"]')).to_be_visible()
            expect(page.locator('[data-environment="dev"]')).to_be_visible()
            expect(page.locator('[data-figure="env-1/broker:connections"]')).to_be_visible()
            expect(page.locator('[data-stage="copy"]')).to_be_visible()
            for key in ("items_in", "items_out", "pending", "stage_errors"):
                box = page.locator(f'[data-figure="stage-1/worker:{key}"]')
                expect(box).to_be_visible()
            shot = tmp_path / "dashboard-ambassadors.png"
            page.screenshot(path=str(shot), full_page=True)
            print(f"dashboard screenshot: {shot}")
        proc.signal(signal.SIGTERM)
        assert proc.wait(60) == 0
