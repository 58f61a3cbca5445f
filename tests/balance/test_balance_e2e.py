"""``podkit balance`` against real ``podkit whoami`` backends on loopback."""

from __future__ import annotations

import os
import signal
import socket
import threading
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from podkit.testing.net import wait_for
from tests.balance.conftest import Backend, Balancer, Load, request

INTERVAL = 0.2
FALL = 3
PROBE_FLAGS = ("--probe", "/ready", "--interval", "200ms", "--rise", "1", "--fall", str(FALL))

StartBackends = Callable[[int], list[Backend]]
StartBalancer = Callable[..., Balancer]


def backend_flags(group: list[Backend]) -> list[str]:
    return [arg for b in group for arg in ("--backend", b.url)]


def all_ready(lb: Balancer, n: int) -> None:
    wait_for(lambda: list(lb.states().values()).count("ready") == n, what=f"{n} ready backends")


def test_round_robin_spreads_requests_by_weight(
    backends: StartBackends, balancer: StartBalancer
) -> None:
    b0, b1, b2 = backends(3)
    lb = balancer(
        "--backend", b0.url, "--backend", b1.url, "--backend", f"{b2.url} weight=2", *PROBE_FLAGS
    )
    all_ready(lb, 3)
    served = Counter(lb.get().served_by for _ in range(40))
    assert served == {"b0": 10, "b1": 10, "b2": 20}


def test_a_killed_backend_causes_no_client_errors_leaves_rotation_and_rejoins(
    backends: StartBackends, balancer: StartBalancer
) -> None:
    group = backends(3)
    lb = balancer(*backend_flags(group), *PROBE_FLAGS)
    all_ready(lb, 3)
    victim = group[1]
    with Load(lb.port, "/delay/5", clients=6) as load:
        wait_for(lambda: load.total > 60, what="load to flow")
        victim.kill()
        killed_at = time.monotonic()
        wait_for(lambda: lb.states()[victim.url] != "ready", what="victim out of rotation")
        left_after = time.monotonic() - killed_at
        before = load.total
        wait_for(lambda: load.total > before + 100, what="more load after the kill")
        victim.start()
        wait_for(lambda: lb.states()[victim.url] == "ready", timeout=20, what="victim back")
        wait_for(lambda: victim.stats()["total"] > 20, what="victim serving again")
    assert load.errors == []
    # fall x interval, plus one interval of phase and scheduling slack on a loaded machine
    assert left_after <= FALL * INTERVAL + INTERVAL + 0.5
    assert set(load.served) == {"b0", "b1", "b2"}


def test_ready_off_takes_a_backend_out_without_errors(
    backends: StartBackends, balancer: StartBalancer
) -> None:
    group = backends(3)
    lb = balancer(*backend_flags(group), *PROBE_FLAGS)
    all_ready(lb, 3)
    target = group[2]
    with Load(lb.port, clients=4) as load:
        wait_for(lambda: load.total > 50, what="load to flow")
        assert request(target.port, "/ready/off", method="POST").status == 200
        wait_for(lambda: lb.states()[target.url] == "down", what="backend marked down")
        served_then = target.stats()["paths"].get("/", 0)
        before = load.total
        wait_for(lambda: load.total > before + 100, what="more load after ready/off")
    assert load.errors == []
    assert target.stats()["paths"].get("/", 0) == served_then


def test_affinity_keeps_clients_and_moves_only_those_of_a_removed_backend(
    backends: StartBackends, balancer: StartBalancer, tmp_path: Path
) -> None:
    group = backends(3)
    members = tmp_path / "backends"
    members.write_text("".join(f"{b.url}\n" for b in group))
    lb = balancer("--backends-file", str(members), "--policy", "hash", *PROBE_FLAGS)
    all_ready(lb, 3)
    clients = [f"127.0.0.{i}" for i in range(2, 42)]

    def placement() -> dict[str, str | None]:
        return {c: lb.get(source=c).served_by for c in clients}

    first = placement()
    assert placement() == first  # the same client IP always reaches the same backend
    assert len(set(first.values())) == 3
    removed = group[1]
    members.write_text("".join(f"{b.url}\n" for b in group if b is not removed))
    wait_for(lambda: removed.url not in lb.states(), what="backend removed from the pool")
    after = placement()
    moved = {c for c in clients if after[c] != first[c]}
    assert moved == {c for c in clients if first[c] == removed.name}
    assert removed.name not in after.values()


def test_affinity_on_a_header_and_on_forwarded_for_from_a_trusted_proxy(
    backends: StartBackends, balancer: StartBalancer
) -> None:
    group = backends(3)
    by_header = balancer(
        *backend_flags(group), "--policy", "hash", "--hash-on", "header:X-User", *PROBE_FLAGS
    )
    by_xff = balancer(
        *backend_flags(group), "--policy", "hash", "--trusted-proxy", "127.0.0.1", *PROBE_FLAGS
    )
    all_ready(by_header, 3)
    all_ready(by_xff, 3)
    for user in ("alice", "bob", "carol", "dave"):
        homes = {by_header.get(headers={"X-User": user}).served_by for _ in range(5)}
        assert len(homes) == 1
    spread = {
        by_xff.get(headers={"X-Forwarded-For": f"198.51.100.{i}"}).served_by for i in range(30)
    }
    assert len(spread) == 3
    for i in range(5):
        xff = {"X-Forwarded-For": f"203.0.113.{i}"}
        assert len({by_xff.get(headers=xff).served_by for _ in range(4)}) == 1


def test_backends_file_changes_are_applied_and_a_bad_file_is_rejected(
    backends: StartBackends, balancer: StartBalancer, tmp_path: Path
) -> None:
    b0, b1 = backends(2)
    members = tmp_path / "backends"
    members.write_text(f"# pool\n{b0.url}\n")
    lb = balancer("--backends-file", str(members), *PROBE_FLAGS)
    all_ready(lb, 1)
    members.write_text(f"{b0.url}\n{b1.url} weight=3\n")
    all_ready(lb, 2)
    assert {b["url"]: b["weight"] for b in lb.view()["backends"]} == {b0.url: 1, b1.url: 3}
    members.write_text("not a url\n")
    wait_for(lambda: lb.view()["backends_file"]["errors"] >= 1, what="bad file rejected")
    assert set(lb.states()) == {b0.url, b1.url}
    assert "line 1" in lb.process.output()
    members.write_text(f"{b1.url}\n")
    lb.process.signal(signal.SIGHUP)
    wait_for(lambda: set(lb.states()) == {b1.url}, what="membership after SIGHUP")


def test_admin_drain_stops_new_requests_to_a_backend(
    backends: StartBackends, balancer: StartBalancer
) -> None:
    b0, b1 = backends(2)
    lb = balancer(*backend_flags([b0, b1]), *PROBE_FLAGS)
    all_ready(lb, 2)
    drained = request(lb.admin, f"/backends/drain?url={b0.url}", method="POST")
    assert drained.status == 200
    assert lb.states()[b0.url] == "draining"
    assert {lb.get().served_by for _ in range(10)} == {"b1"}
    assert request(lb.admin, f"/backends/undrain?url={b0.url}", method="POST").status == 200
    all_ready(lb, 2)
    assert request(lb.admin, "/backends/drain?url=http://127.0.0.1:1", method="POST").status == 404


def test_no_ready_backend_answers_503_and_the_balancer_is_not_ready(
    backends: StartBackends, balancer: StartBalancer
) -> None:
    (b0,) = backends(1)
    lb = balancer("--backend", b0.url, *PROBE_FLAGS)
    all_ready(lb, 1)
    assert request(lb.admin, "/readyz").status == 200
    request(b0.port, "/ready/off", method="POST")
    wait_for(lambda: lb.get().status == 503, what="503 without ready backends")
    reply = lb.get()
    assert reply.body == b"no ready backend\n"
    assert request(lb.admin, "/readyz").status == 503


def test_a_post_whose_connection_was_refused_is_retried_on_another_backend(
    backends: StartBackends, balancer: StartBalancer
) -> None:
    (b0,) = backends(1)
    dead = Backend("dead")  # never started: connections are refused
    lb = balancer("--backend", b0.url, "--backend", dead.url, "--eject-after", "0")
    for _ in range(6):
        reply = lb.get("/echo", method="POST", body=b"hello")
        assert reply.status == 200
        assert reply.body == b"hello"
    assert b0.stats()["paths"]["/echo"] == 6


def test_a_body_over_the_retry_buffer_is_not_sent_twice(
    backends: StartBackends, balancer: StartBalancer
) -> None:
    """--retry-buffer bounds the bodies kept for a retry; a larger one streams, so when its
    attempt fails it is answered 502 rather than sent again."""
    (b0,) = backends(1)
    dead = Backend("dead")  # never started: connections are refused
    flags = ("--backend", b0.url, "--backend", dead.url, "--eject-after", "0")
    lb = balancer(*flags, "--retry-buffer", "1KiB")
    small = [lb.get("/echo", method="POST", body=b"s" * 512).status for _ in range(6)]
    assert small == [200] * 6  # kept whole: the refused attempt was retried on b0
    large = [lb.get("/echo", method="POST", body=b"l" * 2048).status for _ in range(6)]
    assert sorted(set(large)) == [200, 502]  # round-robin: the dead backend's share failed
    assert large.count(502) == 3


def test_a_post_cut_off_after_reaching_a_backend_is_not_retried(
    backends: StartBackends, balancer: StartBalancer
) -> None:
    group = backends(2)
    lb = balancer(*backend_flags(group))
    results: list[int] = []
    thread = threading.Thread(
        target=lambda: results.append(lb.get("/delay/3000", method="POST", body=b"x").status)
    )
    thread.start()

    def owner() -> Backend | None:
        for b in group:
            if b.stats()["paths"].get("/delay/3000"):
                return b
        return None

    wait_for(lambda: owner() is not None, what="the POST to reach a backend")
    victim = owner()
    assert victim is not None
    victim.kill()
    thread.join(10)
    assert results == [502]
    (other,) = [b for b in group if b is not victim]
    assert other.stats()["paths"].get("/delay/3000", 0) == 0


def test_sigterm_lets_in_flight_requests_finish(
    backends: StartBackends, balancer: StartBalancer
) -> None:
    (b0,) = backends(1)
    lb = balancer("--backend", b0.url, *PROBE_FLAGS)
    all_ready(lb, 1)
    results: list[int] = []
    thread = threading.Thread(target=lambda: results.append(lb.get("/delay/800").status))
    thread.start()
    wait_for(lambda: b0.stats()["paths"].get("/delay/800", 0) == 1, what="request in flight")
    lb.process.signal(signal.SIGTERM)
    thread.join(10)
    assert results == [200]
    assert lb.process.wait(10) == 0


def test_metrics_count_requests_and_probes_per_backend(
    backends: StartBackends, balancer: StartBalancer
) -> None:
    (b0,) = backends(1)
    lb = balancer("--backend", b0.url, *PROBE_FLAGS)
    all_ready(lb, 1)
    for _ in range(3):
        lb.get()
    text = request(lb.admin, "/metrics").body.decode()
    assert f'podkit_balance_requests_total{{backend="{b0.url}",code="2xx"}} 3.0' in text
    assert f'podkit_balance_probes_total{{backend="{b0.url}",result="pass"}}' in text
    assert f'podkit_balance_backend_state{{backend="{b0.url}",state="ready"}} 1.0' in text
    assert "podkit_balance_request_seconds_bucket" in text


def children(pid: int) -> set[int]:
    """The live child processes of ``pid``."""
    try:
        return {int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()}
    except FileNotFoundError:
        return set()


def test_workers_share_one_admin_endpoint_and_a_killed_worker_is_started_again(
    backends: StartBackends, balancer: StartBalancer
) -> None:
    b0, b1 = backends(2)
    lb = balancer(*backend_flags([b0, b1]), *PROBE_FLAGS, "--workers", "2")
    pid = lb.process.pid
    wait_for(lambda: len(children(pid)) == 2, what="two worker processes")
    first = children(pid)

    def seen_by_both() -> bool:
        view = lb.view()
        return view["workers"] == 2 and all(
            b["state"] == "ready" and b["states"] == {"ready": 2} for b in view["backends"]
        )

    wait_for(seen_by_both, what="both workers to see both backends ready")
    assert {lb.get().status for _ in range(20)} == {200}

    def forwarded() -> int:
        return sum(b["requests"] for b in lb.view()["backends"])

    wait_for(lambda: forwarded() == 20, what="the merged request count")
    text = request(lb.admin, "/metrics").body.decode()
    assert f'podkit_balance_backend_state{{backend="{b0.url}",state="ready"}} 2.0' in text

    victim = min(first)
    os.kill(victim, signal.SIGKILL)
    wait_for(
        lambda: len(children(pid)) == 2 and victim not in children(pid),
        timeout=15,
        what="the killed worker to be started again",
    )
    wait_for(seen_by_both, what="the new worker to see both backends ready")
    assert {lb.get().status for _ in range(20)} == {200}

    workers = children(pid)
    lb.process.signal(signal.SIGTERM)
    assert lb.process.wait(15) == 0
    assert not any(Path(f"/proc/{child}").exists() for child in workers)


def served_over_new_connections(lb: Balancer, n: int = 60) -> Counter[str | None]:
    """Who served ``n`` requests, each on a new connection (the kernel spreads them over
    the workers' listeners)."""
    replies = [lb.get() for _ in range(n)]
    assert {r.status for r in replies} == {200}
    return Counter(r.served_by for r in replies)


def test_workers_drain_by_hand_reaches_every_worker_and_a_restarted_one(
    backends: StartBackends, balancer: StartBalancer
) -> None:
    b0, b1 = backends(2)
    lb = balancer(*backend_flags([b0, b1]), *PROBE_FLAGS, "--workers", "2")
    pid = lb.process.pid
    wait_for(lambda: len(children(pid)) == 2, what="two worker processes")

    def agreed(url: str, state: str) -> Callable[[], bool]:
        def check() -> bool:
            found = {b["url"]: b for b in lb.view()["backends"]}[url]
            return bool(found["state"] == state and found["states"] == {state: 2})

        return check

    wait_for(agreed(b0.url, "ready"), what="both workers to see b0 ready")
    wait_for(agreed(b1.url, "ready"), what="both workers to see b1 ready")
    assert set(served_over_new_connections(lb)) == {"b0", "b1"}

    drained = request(lb.admin, f"/backends/drain?url={b0.url}", method="POST")
    assert drained.status == 200
    entry = {b["url"]: b for b in drained.json()["backends"]}[b0.url]
    assert (entry["state"], entry["states"]) == ("draining", {"draining": 2})
    assert agreed(b0.url, "draining")()
    assert served_over_new_connections(lb) == {"b1": 60}

    # A worker started again after a crash applies the drain before it takes a request.
    victim = min(children(pid))
    os.kill(victim, signal.SIGKILL)
    wait_for(
        lambda: len(children(pid)) == 2 and victim not in children(pid),
        timeout=15,
        what="the killed worker to be started again",
    )
    wait_for(agreed(b1.url, "ready"), what="the new worker to see b1 ready")
    assert agreed(b0.url, "draining")()
    assert served_over_new_connections(lb) == {"b1": 60}

    undrained = request(lb.admin, f"/backends/undrain?url={b0.url}", method="POST")
    assert undrained.status == 200
    wait_for(agreed(b0.url, "ready"), what="both workers to take b0 back")
    assert set(served_over_new_connections(lb)) == {"b0", "b1"}

    missing = request(lb.admin, "/backends/drain?url=http://127.0.0.1:1", method="POST")
    assert (missing.status, missing.body) == (404, b"no backend http://127.0.0.1:1\n")
    assert request(lb.admin, "/backends/drain", method="POST").status == 400
    assert request(lb.admin, f"/backends/drain?url={b0.url}").status == 405

    # Killed again after the undrain: the new worker does not drain b0 from an old replay.
    victim = min(children(pid))
    os.kill(victim, signal.SIGKILL)
    wait_for(
        lambda: len(children(pid)) == 2 and victim not in children(pid),
        timeout=15,
        what="the killed worker to be started again",
    )
    wait_for(agreed(b0.url, "ready"), what="the new worker to see b0 ready")


def test_workers_drain_names_a_worker_that_does_not_answer(
    backends: StartBackends, balancer: StartBalancer
) -> None:
    b0, b1 = backends(2)
    lb = balancer(*backend_flags([b0, b1]), "--workers", "2", "--workers-timeout", "300ms")
    pid = lb.process.pid
    wait_for(lambda: len(children(pid)) == 2, what="two worker processes")
    wait_for(
        lambda: [b["states"] for b in lb.view()["backends"]] == [{"ready": 2}] * 2,
        what="both workers to see both backends ready",
    )
    stopped = min(children(pid))
    os.kill(stopped, signal.SIGSTOP)
    try:
        reply = request(lb.admin, f"/backends/drain?url={b0.url}", method="POST")
        assert reply.status == 503
        assert f"(pid {stopped}): no answer within 300ms" in reply.body.decode()
    finally:
        os.kill(stopped, signal.SIGCONT)
    # The late worker applies it when it gets to the command: all agree in the end.
    wait_for(
        lambda: {b["url"]: b["states"] for b in lb.view()["backends"]}[b0.url] == {"draining": 2},
        what="the late worker to drain too",
    )
    assert served_over_new_connections(lb) == {"b1": 60}


def test_bounded_loads_spill_one_hot_client_over_several_backends(
    backends: StartBackends, balancer: StartBalancer
) -> None:
    group = backends(3)
    plain = balancer(*backend_flags(group), "--policy", "hash", *PROBE_FLAGS)
    bounded = balancer(
        *backend_flags(group), "--policy", "hash", "--bounded-load", "1.25", *PROBE_FLAGS
    )
    all_ready(plain, 3)
    all_ready(bounded, 3)

    def burst(lb: Balancer) -> set[str | None]:
        with ThreadPoolExecutor(max_workers=12) as pool:
            replies = list(pool.map(lambda _: lb.get("/delay/400"), range(12)))
        assert {r.status for r in replies} == {200}
        return {r.served_by for r in replies}

    assert len(burst(plain)) == 1
    assert len(burst(bounded)) >= 2


def test_workers_stop_when_their_parent_is_killed(
    backends: StartBackends, balancer: StartBalancer
) -> None:
    (b0,) = backends(1)
    lb = balancer("--backend", b0.url, "--workers", "2")
    pid = lb.process.pid
    wait_for(lambda: len(children(pid)) == 2, what="two worker processes")
    child = min(children(pid))
    os.kill(pid, signal.SIGKILL)
    lb.process.wait(5)

    def gone() -> bool:
        try:
            stat = Path(f"/proc/{child}/stat").read_text()
        except FileNotFoundError:
            return True
        return stat.split(")")[-1].split()[0] == "Z"  # exited, waiting to be reaped

    wait_for(gone, timeout=15, what="the orphaned worker to exit")


def test_slow_start_gives_a_rejoining_backend_a_small_share_first(
    backends: StartBackends, balancer: StartBalancer
) -> None:
    b0, b1 = backends(2)
    lb = balancer(*backend_flags([b0, b1]), *PROBE_FLAGS, "--slow-start", "60s")
    all_ready(lb, 2)
    request(b1.port, "/ready/off", method="POST")
    wait_for(lambda: lb.states()[b1.url] == "down", what="b1 down")
    request(b1.port, "/ready/on", method="POST")
    wait_for(lambda: lb.states()[b1.url] == "ready", what="b1 back")
    weight = next(b["effective_weight"] for b in lb.view()["backends"] if b["url"] == b1.url)
    assert weight < 0.5
    served = Counter(lb.get().served_by for _ in range(40))
    assert served["b1"] <= 10
    assert served["b0"] >= 30


def test_server_errors_eject_a_backend_but_never_more_than_half(
    backends: StartBackends, balancer: StartBalancer
) -> None:
    group = backends(2)
    lb = balancer(*backend_flags(group), "--eject-after", "3", "--ejection-time", "30s")
    for _ in range(12):
        assert lb.get("/status/503").status == 503  # passed through, not retried
    view = lb.view()["backends"]
    assert sorted(b["state"] for b in view) == ["ejected", "ready"]
    ejected = next(b for b in view if b["state"] == "ejected")
    assert 0 < ejected["ejected_for"] <= 30
    assert ejected["ejections"] == 1
    assert {lb.get().status for _ in range(4)} == {200}


def test_a_response_still_streaming_counts_against_its_backend_for_least_request(
    backends: StartBackends, balancer: StartBalancer
) -> None:
    b0, b1 = backends(2)
    lb = balancer(*backend_flags([b0, b1]), "--policy", "least-request")

    def in_flight() -> dict[str, int]:
        return {b["url"]: b["in_flight"] for b in lb.view()["backends"]}

    with socket.create_connection(("127.0.0.1", lb.port), timeout=10) as slow:
        # Read the head only: the rest of the stream waits on this client (back-pressure).
        slow.sendall(b"GET /bytes/200000000 HTTP/1.1\r\nHost: lb\r\n\r\n")
        head = b""
        while b"\r\n\r\n" not in head:
            head += slow.recv(1)
        served_by = next(
            line.split(b":", 1)[1].strip().decode()
            for line in head.split(b"\r\n")
            if line.lower().startswith(b"x-served-by:")
        )
        busy, idle = (b0, b1) if served_by == b0.name else (b1, b0)
        assert in_flight() == {busy.url: 1, idle.url: 0}
        assert {lb.get().served_by for _ in range(10)} == {idle.name}
    wait_for(lambda: in_flight() == {busy.url: 0, idle.url: 0}, what="the stream to end")
