"""The sans-IO supervisor core: order, readiness, restarts with backoff, scaling and stopping."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from podkit.errors import UsageError
from podkit.pods.core import (
    Action,
    Announce,
    BackoffPolicy,
    ContainerKey,
    ContainerState,
    Publish,
    ReplicaKey,
    Report,
    Signal,
    Spawn,
    StartProbe,
    StopProbe,
    SupervisorCore,
)
from podkit.pods.model import parse_podfile
from podkit.runtime.lifecycle import IllegalTransition


def podfile(pods: dict[str, Any]) -> Any:
    return parse_podfile({"pods": pods}, source="test.yaml")


def app(**extra: Any) -> dict[str, Any]:
    return {"containers": {"app": {"run": ["true"]}}, **extra}


def spawns(actions: list[Action]) -> list[ContainerKey]:
    return [a.key for a in actions if isinstance(a, Spawn)]


class Harness:
    """Plays the shell: gives pids to spawned containers and records actions."""

    def __init__(self, core: SupervisorCore) -> None:
        self.core = core
        self.next_pid = 100
        self.log: list[Action] = []

    def run(self, actions: list[Action], now: float) -> list[Action]:
        self.log += actions
        done = list(actions)
        for action in actions:
            if isinstance(action, Spawn):
                self.next_pid += 1
                done += self.run(self.core.container_started(action.key, self.next_pid, now), now)
        return done

    def start(self, now: float = 0.0) -> list[Action]:
        return self.run(self.core.start(now), now)

    def exit(self, key: ContainerKey, code: int | None, now: float) -> list[Action]:
        return self.run(self.core.container_exited(key, code, now), now)

    def probe(self, key: ReplicaKey, ok: bool, now: float) -> list[Action]:
        return self.run(self.core.probe_result(key, ok, now), now)

    def tick(self, now: float) -> list[Action]:
        return self.run(self.core.tick(now), now)

    def state(self, key: ContainerKey) -> ContainerState:
        return next(
            ContainerState(s.state)
            for s in self.core.statistics()
            if (s.pod, s.replica, s.container) == key
        )


WEB1 = ContainerKey("web", 1, "app")


def test_backoff_doubles_up_to_the_maximum() -> None:
    policy = BackoffPolicy(initial=0.5, factor=2.0, maximum=30.0)
    assert [policy.delay(n) for n in range(1, 10)] == [0, 0.5, 1, 2, 4, 8, 16, 30, 30]


@given(st.integers(min_value=1, max_value=10_000))
def test_backoff_never_exceeds_the_maximum_and_never_shrinks(failures: int) -> None:
    policy = BackoffPolicy()
    assert 0 <= policy.delay(failures) <= policy.maximum
    assert policy.delay(failures) <= policy.delay(failures + 1)


def test_pods_without_after_start_at_once_and_replicas_get_their_own_spawn() -> None:
    core = SupervisorCore(podfile({"web": app(replicas=3), "db": app()}))
    actions = Harness(core).start()
    assert spawns(actions) == [
        ContainerKey("web", 1, "app"),
        ContainerKey("web", 2, "app"),
        ContainerKey("web", 3, "app"),
        ContainerKey("db", 1, "app"),
    ]
    assert Publish("web", ()) in actions


def test_a_pod_waits_until_every_replica_of_its_dependency_is_ready() -> None:
    probe = {"http": {"port": 8000}}
    core = SupervisorCore(podfile({"lb": app(after=["web"]), "web": app(replicas=2, ready=probe)}))
    h = Harness(core)
    first = h.start()
    assert spawns(first) == [ContainerKey("web", 1, "app"), ContainerKey("web", 2, "app")]
    assert StartProbe(ReplicaKey("web", 1)) in first
    assert core.order == ["web", "lb"]
    assert spawns(h.probe(ReplicaKey("web", 1), True, 1.0)) == []
    actions = h.probe(ReplicaKey("web", 2), True, 1.1)
    assert spawns(actions) == [ContainerKey("lb", 1, "app")]
    assert Announce("web") in actions
    # The discovery file lists web before lb starts.
    assert actions.index(Publish("web", (1, 2))) < actions.index(
        Spawn(ContainerKey("lb", 1, "app"))
    )


def test_a_probe_result_for_a_restarting_replica_is_ignored() -> None:
    core = SupervisorCore(podfile({"web": app(ready={"tcp": {"port": 1}})}))
    h = Harness(core)
    h.start()
    h.exit(WEB1, 1, 0.1)
    assert h.probe(ReplicaKey("web", 1), True, 0.2) == []
    assert core.ready_replicas("web") == ()


def test_a_ready_replica_leaves_after_the_configured_failures_in_a_row() -> None:
    core = SupervisorCore(podfile({"web": app(ready={"tcp": {"port": 1}, "failures": 3})}))
    h = Harness(core)
    h.start()
    h.probe(ReplicaKey("web", 1), True, 1)
    assert core.ready_replicas("web") == (1,)
    h.probe(ReplicaKey("web", 1), False, 2)
    h.probe(ReplicaKey("web", 1), False, 3)
    assert core.ready_replicas("web") == (1,)
    actions = h.probe(ReplicaKey("web", 1), False, 4)
    assert Publish("web", ()) in actions
    assert core.ready_replicas("web") == ()


def test_a_crashing_container_restarts_after_growing_delays() -> None:
    core = SupervisorCore(
        podfile({"web": app()}), backoff=BackoffPolicy(initial=1, maximum=4, reset_after=10)
    )
    h = Harness(core)
    h.start(0.0)
    now = 0.0
    delays = []
    for _ in range(4):
        now += 0.5  # ran half a second: a quick exit
        h.exit(WEB1, 1, now)
        assert h.state(WEB1) is ContainerState.BACKOFF
        wakeup = core.next_wakeup()
        assert wakeup is not None
        delays.append(wakeup - now)
        if wakeup > now:
            assert spawns(h.tick(wakeup - 0.01)) == []
        now = wakeup
        assert spawns(h.tick(now)) == [WEB1]
        assert h.state(WEB1) is ContainerState.RUNNING
    assert delays == [0, 1, 2, 4]
    assert core.statistics()[0].restarts == 4


def test_a_container_that_ran_long_enough_restarts_from_the_first_delay() -> None:
    core = SupervisorCore(
        podfile({"web": app()}), backoff=BackoffPolicy(initial=1, maximum=30, reset_after=10)
    )
    h = Harness(core)
    h.start(0.0)
    h.exit(WEB1, 1, 0.5)
    assert core.next_wakeup() == 0.5  # the first crash restarts at once
    h.tick(0.5)
    h.exit(WEB1, 1, 1.0)
    assert core.next_wakeup() == 2.0  # second quick exit in a row: 1 s
    h.tick(2.0)
    h.exit(WEB1, 1, 3.0)
    assert core.next_wakeup() == 5.0  # third: 2 s
    h.tick(5.0)
    h.exit(WEB1, 1, 100.0)  # ran 95 s: healthy again
    assert core.next_wakeup() == 100.0


def test_the_crash_loop_is_reported_once_with_output() -> None:
    core = SupervisorCore(podfile({"web": app()}), backoff=BackoffPolicy(initial=0.1, crash_loop=3))
    h = Harness(core)
    h.start(0.0)
    reports: list[Report] = []
    now = 0.0
    for _ in range(5):
        now += 0.2
        reports += [a for a in h.exit(WEB1, 1, now) if isinstance(a, Report)]
        wakeup = core.next_wakeup()
        assert wakeup is not None
        now = wakeup
        h.tick(now)
    assert len(reports) == 1
    assert reports[0].with_output
    assert "3 times in a row" in reports[0].message
    assert "exit code 1" in reports[0].message


@pytest.mark.parametrize(
    ("policy", "code", "restarted"),
    [
        ("always", 0, True),
        ("always", 1, True),
        ("on-failure", 0, False),
        ("on-failure", 1, True),
        ("on-failure", -9, True),
        ("never", 1, False),
        ("never", 0, False),
    ],
)
def test_the_restart_policy_decides_whether_an_exit_restarts(
    policy: str, code: int, restarted: bool
) -> None:
    core = SupervisorCore(podfile({"web": app(restart=policy)}))
    h = Harness(core)
    h.start(0.0)
    actions = h.exit(WEB1, code, 1.0)
    expected = ContainerState.BACKOFF if restarted else ContainerState.EXITED
    assert h.state(WEB1) is expected
    if not restarted and code != 0:
        assert any(isinstance(a, Report) and a.with_output for a in actions)


def test_a_finished_job_counts_as_ready_for_the_pods_after_it() -> None:
    core = SupervisorCore(
        podfile({"migrate": app(restart="on-failure"), "web": app(after=["migrate"])}),
        min_ready=0,
    )
    h = Harness(core)
    assert spawns(h.start()) == [ContainerKey("migrate", 1, "app"), ContainerKey("web", 1, "app")]


def test_a_finished_job_waited_for_holds_back_its_dependents_until_it_exits_cleanly() -> None:
    core = SupervisorCore(
        podfile(
            {
                "migrate": app(restart="on-failure", ready={"tcp": {"port": 1}}),
                "web": app(after=["migrate"]),
            }
        )
    )
    h = Harness(core)
    assert spawns(h.start()) == [ContainerKey("migrate", 1, "app")]
    assert spawns(h.exit(ContainerKey("migrate", 1, "app"), 0, 1.0)) == []


def test_stop_goes_in_reverse_order_term_then_kill_after_the_grace() -> None:
    core = SupervisorCore(
        podfile({"web": app(stop_grace="5s"), "lb": app(after=["web"])}), min_ready=0
    )
    h = Harness(core)
    h.start(0.0)
    lb1, web1 = ContainerKey("lb", 1, "app"), WEB1
    actions = h.run(core.stop(10.0), 10.0)
    assert [a for a in actions if isinstance(a, Signal)] == [Signal(lb1, "term")]
    assert core.next_wakeup() == 25.0  # lb's default grace: 15 s
    actions = h.tick(25.0)
    assert Signal(lb1, "kill") in actions
    assert not core.finished
    actions = h.exit(lb1, -9, 25.1)
    assert Signal(web1, "term") in actions
    assert core.next_wakeup() == pytest.approx(30.1)
    actions = h.exit(web1, 0, 26.0)
    assert core.finished
    assert not any(isinstance(a, Spawn) for a in actions)


def test_a_container_in_backoff_is_not_restarted_once_stopping() -> None:
    core = SupervisorCore(podfile({"web": app()}))
    h = Harness(core)
    h.start(0.0)
    h.exit(WEB1, 1, 1.0)
    h.run(core.stop(1.1), 1.1)
    assert core.finished
    assert spawns(h.tick(100.0)) == []
    assert h.state(WEB1) is ContainerState.STOPPED


def test_a_stop_during_a_spawn_terminates_the_process_when_it_starts() -> None:
    core = SupervisorCore(podfile({"web": app()}))
    assert spawns(core.start(0.0)) == [WEB1]
    core.stop(0.5)
    assert core.container_started(WEB1, 42, 0.6)[0] == Signal(WEB1, "term")
    core.container_exited(WEB1, -15, 0.7)
    assert core.finished


def test_scaling_up_starts_new_replicas_and_down_stops_the_highest() -> None:
    core = SupervisorCore(podfile({"web": app(replicas=3)}), min_ready=0)
    h = Harness(core)
    h.start(0.0)
    actions = h.run(core.scale("web", 5, 1.0), 1.0)
    assert spawns(actions) == [ContainerKey("web", 4, "app"), ContainerKey("web", 5, "app")]
    assert core.ready_replicas("web") == (1, 2, 3, 4, 5)
    actions = h.run(core.scale("web", 2, 2.0), 2.0)
    assert Publish("web", (1, 2)) in actions
    terms = [a.key.replica for a in actions if isinstance(a, Signal) and a.signal == "term"]
    assert terms == [3, 4, 5]
    for replica in (3, 4, 5):
        h.exit(ContainerKey("web", replica, "app"), -15, 3.0)
    assert core.replicas("web") == [ReplicaKey("web", 1), ReplicaKey("web", 2)]


def test_a_replica_scaled_back_up_while_stopping_starts_again_once_down() -> None:
    core = SupervisorCore(podfile({"web": app(replicas=2, ready={"tcp": {"port": 1}})}))
    h = Harness(core)
    h.start(0.0)
    h.run(core.scale("web", 1, 1.0), 1.0)
    web2 = ContainerKey("web", 2, "app")
    assert spawns(h.run(core.scale("web", 2, 1.5), 1.5)) == []
    actions = h.exit(web2, -15, 2.0)
    assert spawns(actions) == [web2]
    assert StopProbe(ReplicaKey("web", 2)) not in actions


def test_scaling_away_a_probed_replica_stops_its_probe() -> None:
    core = SupervisorCore(podfile({"web": app(replicas=2, ready={"tcp": {"port": 1}})}))
    h = Harness(core)
    h.start(0.0)
    h.run(core.scale("web", 1, 1.0), 1.0)
    actions = h.exit(ContainerKey("web", 2, "app"), -15, 2.0)
    assert StopProbe(ReplicaKey("web", 2)) in actions


def test_scale_rejects_unknown_pods_bad_counts_and_a_stop_under_way() -> None:
    core = SupervisorCore(podfile({"web": app()}))
    with pytest.raises(UsageError, match="no pod named 'api'"):
        core.scale("api", 2, 0.0)
    with pytest.raises(UsageError, match="0-254"):
        core.scale("web", 255, 0.0)
    core.stop(0.0)
    with pytest.raises(UsageError, match="stopping"):
        core.scale("web", 2, 0.0)


def test_force_stop_kills_every_running_process() -> None:
    core = SupervisorCore(podfile({"web": app(replicas=2)}))
    h = Harness(core)
    h.start(0.0)
    actions = core.force_stop()
    assert {a.key.replica for a in actions if isinstance(a, Signal) and a.signal == "kill"} == {
        1,
        2,
    }


def test_an_illegal_transition_is_a_bug_that_raises() -> None:
    core = SupervisorCore(podfile({"web": app()}))
    core.start(0.0)
    core.container_started(WEB1, 1, 0.0)
    with pytest.raises(IllegalTransition):
        core.container_started(WEB1, 1, 0.0)


def test_a_spawn_failure_is_reported_and_retried() -> None:
    core = SupervisorCore(podfile({"web": app()}))
    core.start(0.0)
    actions = core.spawn_failed(WEB1, "No such file", 0.0)
    assert isinstance(actions[0], Report)
    assert "No such file" in actions[0].message
    assert core.next_wakeup() == 0.0


def test_an_exit_with_code_2_soon_after_start_fails_the_pod_instead_of_restarting() -> None:
    core = SupervisorCore(podfile({"web": app()}))
    h = Harness(core)
    h.start()
    actions = h.exit(WEB1, 2, now=0.5)
    assert h.state(WEB1) is ContainerState.FAILED
    assert not spawns(actions)
    report = next(a for a in actions if isinstance(a, Report))
    assert report.failed
    assert report.with_output
    assert "exited with code 2 (a usage or configuration error)" in report.message
    assert core.failed_pods() == ["web"]
    assert core.next_wakeup() is None  # nothing is retried later either
    assert not core.replica_ready(ReplicaKey("web", 1))


def test_an_exit_with_code_2_after_a_long_run_is_restarted_like_any_exit() -> None:
    h = Harness(SupervisorCore(podfile({"web": app()})))
    h.start()
    h.exit(WEB1, 2, now=60.0)
    assert h.state(WEB1) is ContainerState.BACKOFF
    assert spawns(h.tick(60.0)) == [WEB1]


def test_restart_stops_every_container_of_the_pod_and_starts_it_once_down() -> None:
    core = SupervisorCore(podfile({"web": app(replicas=2)}))
    h = Harness(core)
    h.start()
    web2 = ContainerKey("web", 2, "app")
    h.exit(web2, 2, now=0.1)  # failed: restart brings it back too
    actions = h.run(core.restart("web", now=1.0), 1.0)
    assert Signal(WEB1, "term") in actions
    assert h.state(WEB1) is ContainerState.STOPPING
    assert web2 in spawns(actions)
    assert h.state(web2) is ContainerState.RUNNING
    actions = h.exit(WEB1, -15, now=1.2)
    assert spawns(actions) == [WEB1]
    rows = {(s.replica, s.state, s.restarts) for s in core.statistics()}
    assert rows == {(1, "running", 1), (2, "running", 1)}
    assert core.failed_pods() == []
    with pytest.raises(UsageError, match="no pod named 'db'"):
        core.restart("db", now=2.0)


def test_a_component_with_an_admin_endpoint_and_no_probe_waits_for_its_probe() -> None:
    admin = {"component": "whoami", "options": {"admin": "{pod.ip}:9000"}}
    core = SupervisorCore(podfile({"web": {"containers": {"app": admin}}}))
    h = Harness(core)
    actions = h.start()
    assert StartProbe(ReplicaKey("web", 1)) in actions
    assert not core.replica_ready(ReplicaKey("web", 1))
    h.probe(ReplicaKey("web", 1), True, now=0.5)
    assert core.replica_ready(ReplicaKey("web", 1))


def test_a_container_without_a_probe_is_ready_only_once_it_ran_min_ready() -> None:
    """One that dies on start-up is never announced as ready first."""
    core = SupervisorCore(podfile({"web": app(), "lb": app(after=["web"])}), min_ready=1.0)
    h = Harness(core)
    h.start(0.0)
    assert core.ready_replicas("web") == ()
    assert core.next_wakeup() == 1.0
    h.exit(WEB1, 1, now=0.5)
    h.tick(0.5)  # restarted at once (the first quick exit)
    assert h.state(WEB1) is ContainerState.RUNNING
    assert core.next_wakeup() == 1.5
    actions = h.tick(1.5)
    assert core.ready_replicas("web") == (1,)
    assert Announce("web") in actions
    assert spawns(actions) == [ContainerKey("lb", 1, "app")]
