"""``podkit split`` as a process in front of ``podkit whoami`` processes."""

from __future__ import annotations

import http.client
import json
import subprocess
import sys
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from podkit.testing import PodkitProcess, free_port, wait_port
from podkit.testing.net import wait_for
from tests.balance.conftest import Backend, request

USERS = 2500
PER_USER = 4  # 10,000 requests


class Split:
    """A ``podkit split`` process with its admin endpoint."""

    def __init__(self, *args: str) -> None:
        self.port = free_port()
        self.admin = free_port()
        self.process = PodkitProcess(
            "split",
            "--listen",
            f"127.0.0.1:{self.port}",
            "--admin",
            f"127.0.0.1:{self.admin}",
            "--access-log",
            "off",
            *args,
        )

    def __enter__(self) -> Split:
        self.process.start()
        try:
            wait_port("127.0.0.1", self.admin)
            wait_port("127.0.0.1", self.port)
        except BaseException:
            self.process.__exit__(None, None, None)
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.process.__exit__(None, None, None)

    def view(self) -> dict[str, object]:
        data: dict[str, object] = request(self.admin, "/split").json()
        return data


@pytest.fixture
def two_backends() -> Iterator[tuple[Backend, Backend]]:
    primary, candidate = Backend("primary").start(), Backend("candidate").start()
    yield primary, candidate
    primary.stop()
    candidate.stop()


def placements(port: int, users: range) -> dict[str, set[str]]:
    """Each user's arms over PER_USER requests, on kept-alive connections from 8 threads."""

    def run(chunk: list[int]) -> dict[str, set[str]]:
        seen: dict[str, set[str]] = {}
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        try:
            for _ in range(PER_USER):
                for user in chunk:
                    conn.request("GET", "/", headers={"Cookie": f"user=u{user}"})
                    response = conn.getresponse()
                    response.read()
                    assert response.status == 200
                    arm = response.getheader("X-Served-By") or "?"
                    seen.setdefault(f"u{user}", set()).add(arm)
        finally:
            conn.close()
        return seen

    chunks = [list(users)[i::8] for i in range(8)]
    merged: dict[str, set[str]] = {}
    with ThreadPoolExecutor(8) as pool:
        for part in pool.map(run, chunks):
            merged.update(part)
    return merged


def test_sticky_cookie_split_holds_its_share_and_raising_it_moves_only_primary_users(
    two_backends: tuple[Backend, Backend],
) -> None:
    primary, candidate = two_backends
    with Split(
        "--primary",
        primary.url,
        "--candidate",
        candidate.url,
        "--weight",
        "10%",
        "--sticky",
        "cookie:user",
    ) as split:
        first = placements(split.port, range(USERS))
        assert all(len(arms) == 1 for arms in first.values())  # no user sees both arms
        on_candidate = {u for u, arms in first.items() if arms == {"candidate"}}
        share = len(on_candidate) / USERS
        assert 0.085 <= share <= 0.115
        arms = {a["name"]: a for a in split.view()["arms"]}  # type: ignore[attr-defined]
        assert arms["candidate"]["requests"] == len(on_candidate) * PER_USER
        reply = request(split.admin, "/split/weights", method="POST", body=b'{"candidate": "20%"}')
        assert reply.status == 200
        second = placements(split.port, range(USERS))
    assert all(len(arms) == 1 for arms in second.values())
    now_candidate = {u for u, arms in second.items() if arms == {"candidate"}}
    assert on_candidate <= now_candidate  # nobody left the candidate
    assert 0.185 <= len(now_candidate) / USERS <= 0.215


def test_help_lists_the_contract_flags() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "podkit", "split", "--help"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    for flag in (
        "--primary",
        "--candidate",
        "--weight",
        "--sticky",
        "--route",
        "--shadow",
        "--shadow-rate",
        "--shadow-max-body",
        "--shadow-unsafe",
        "--shadow-max-rate",
        "--diff",
        "--primary-b",
        "--ramp",
        "--every",
        "--rollback-on",
        "--admin",
        "--config",
        "--trusted-proxy",
        "--source-address",
        "--access-log",
        "--max-connections",
    ):
        assert flag in out


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ((), "give --primary URL"),
        (("--primary", "127.0.0.1:1"), "--primary: expected a URL with its scheme"),
        (
            ("--primary", "http://a:1", "--candidate", "http://b:1", "--weight", "abc"),
            "--weight: expected a percentage",
        ),
        (("--primary", "http://a:1", "--sticky", "ip"), "--sticky: expected header:NAME"),
        (("--primary", "http://a:1", "--route", "header:X -> blue"), "names arm 'blue'"),
        (("--primary", "http://a:1", "--shadow-rate", "5%"), "give --shadow URL"),
        (("--primary", "http://a:1", "--diff"), "give --shadow URL"),
        (("--primary", "http://a:1", "--shadow-max-rate", "5/s"), "give --shadow URL"),
        (
            ("--primary", "http://a:1", "--shadow", "http://b:1", "--shadow-max-rate", "fast"),
            "--shadow-max-rate: expected a rate",
        ),
        (
            ("--primary", "http://a:1", "--candidate", "http://b:1", "--ramp", "50%,10%"),
            "--ramp: steps must increase",
        ),
        (
            (
                "--primary",
                "http://a:1",
                "--candidate",
                "http://b:1",
                "--ramp",
                "5%,100%",
                "--rollback-on",
                "cpu>1%",
            ),
            "unknown rule 'cpu'",
        ),
        (
            (
                "--primary",
                "http://a:1",
                "--candidate",
                "http://b:1",
                "--ramp",
                "5%,100%",
                "--rollback-on",
                "diff>1%",
            ),
            "add --diff",
        ),
        (("--primary", "http://a:1", "--every", "1m"), "apply to --ramp"),
        (("--primary", "http://a:1", "--diff-examples", "2"), "--diff-examples: these bound"),
        (
            ("--primary", "http://a:1", "--candidate", "http://b:1", "--diff",
             "--diff-max-routes", "1"),
            "--diff-max-routes: expected 2-100000, got 1",
        ),
        (
            ("--primary", "http://a:1", "--candidate", "http://b:1", "--diff",
             "--diff-max-body", "lots"),
            "'--diff-max-body': expected a size",
        ),
    ],
)  # fmt: skip
def test_bad_flags_are_one_line_errors(args: tuple[str, ...], message: str) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "podkit", "split", *args],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("podkit split: error: ")
    assert message in lines[0]


def test_a_bad_config_file_names_the_file_and_field(tmp_path: Path) -> None:
    config = tmp_path / "split.yaml"
    config.write_text("primary: http://127.0.0.1:1\nweights: {candidate: 150%}\n")
    done = subprocess.run(
        [sys.executable, "-m", "podkit", "split", "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode == 2
    assert done.stderr.strip() == (
        f"podkit split: error: {config}: weights.candidate: must be between 0% and 100%, got '150%'"
    )


def test_a_bad_diff_limit_in_the_config_file_names_the_file_and_key(tmp_path: Path) -> None:
    config = tmp_path / "split.yaml"
    config.write_text("primary: http://127.0.0.1:1\ndiff: {max_depth: 0}\n")
    done = subprocess.run(
        [sys.executable, "-m", "podkit", "split", "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode == 2
    assert done.stderr.strip() == (
        f"podkit split: error: {config}: diff.max_depth: expected 1-1000, got 0"
    )


def test_diff_limits_from_the_config_file_and_flags_take_effect(
    two_backends: tuple[Backend, Backend], tmp_path: Path
) -> None:
    """The file keeps no examples and tracks 5 routes; --diff-max-routes 2 wins over it."""
    primary, candidate = two_backends
    config = tmp_path / "split.yaml"
    config.write_text(
        f"primary: {primary.url}\ncandidates: {{candidate: {candidate.url}}}\n"
        "weights: {candidate: 0%}\ndiff: {examples: 0, max_routes: 5, example_body: 1KiB}\n"
    )
    with Split("--config", str(config), "--diff", "--diff-max-routes", "2") as split:
        for path in ("/a", "/b", "/c"):
            assert request(split.port, path).status == 200
        wait_for(
            lambda: json.loads(request(split.admin, "/diff").body)["compared"] == 3,
            what="three comparisons",
        )
        view = json.loads(request(split.admin, "/diff").body)
        assert view["limits"]["max_routes"] == 2
        assert view["limits"]["examples"] == 0
        assert view["limits"]["example_body"] == 1024
        assert set(view["routes"]) == {"GET /a", "other"}
        assert view["routes"]["other"]["compared"] == 2
        assert all(route["examples"] == [] for route in view["routes"].values())


def test_the_admin_endpoint_serves_split_and_diff(two_backends: tuple[Backend, Backend]) -> None:
    primary, candidate = two_backends
    with Split("--primary", primary.url, "--candidate", candidate.url, "--diff") as split:
        assert request(split.port, "/").status == 200
        wait_for(
            lambda: json.loads(request(split.admin, "/diff").body)["compared"] == 1,
            what="one comparison",
        )
        view = json.loads(request(split.admin, "/diff").body)
        # whoami names itself in its answer: the candidate differs at $.name.
        assert view["routes"]["GET /"]["paths"]["$.name"]["regressions"] == 1
        assert split.view()["shadow"]["url"] == candidate.url  # type: ignore[index]
        metrics = request(split.admin, "/metrics").body.decode()
        assert 'podkit_split_requests_total{arm="primary",code="2xx"} 1.0' in metrics
        assert 'podkit_split_diff_compared_total{route="GET /"} 1.0' in metrics


def test_the_ambassadors_example_pod_file_is_valid() -> None:
    root = Path(__file__).resolve().parents[2]
    done = subprocess.run(
        [sys.executable, "-m", "podkit", "up", "--check", str(root / "examples/ambassadors.yaml")],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=root,
    )
    assert done.returncode == 0, done.stderr
    assert "ok (4 pods: v1, v2, edge, env)" in done.stdout + done.stderr
