"""The supervisor's decisions, without processes, sockets or a clock (sans-IO).

Theory of operation. :class:`SupervisorCore` holds one record per container of every pod
replica and is driven by events: a process started or exited, a probe passed or failed, the
time advanced (``tick``), a scale or stop was asked for. Each call updates the records and
returns the actions for the shell to carry out (spawn, signal, probe, publish, report); the
shell reports back what happened. Time is always passed in as ``now`` (monotonic seconds).

* **Order.** A pod starts once every pod in its ``after`` list has all its replicas ready.
  Stopping runs the other way: a pod is stopped once every pod that waits for it is down.
* **Readiness.** A replica is ready when each of its containers runs (or finished with exit
  code 0) and, if the pod has a ``ready`` probe, the probe passed since the containers last
  started; ``failures`` failed probes in a row take it out again. Whenever the set of ready
  replicas of a pod changes, a :class:`Publish` action lets the shell rewrite discovery files.
* **Restarts.** After an exit the pod's ``restart`` policy decides; the first restart is
  immediate, the next ones of a quick-exit streak wait an exponential backoff
  (:class:`BackoffPolicy`), whose count resets once a container has run for ``reset_after``.
  The ``crash_loop``-th quick exit in a row is reported with its output.
* **Usage errors.** A container that exits with code 2 (``EXIT_USAGE``: a usage or
  configuration error) before it ran ``reset_after`` is not restarted: it is FAILED, its
  replica is not ready, and a :class:`Report` gives the reason. Running it again with the
  same flags would fail the same way.
* **Restart.** :meth:`SupervisorCore.restart` stops every container of a pod (as a stop
  does) and starts each again once it is down, FAILED or EXITED ones included.
* **Stop.** SIGTERM to the container's first process (it stops what it started, as a
  component drains its workers), SIGKILL to its whole group once ``stop_grace`` has passed.

Container states (a transition outside ``TRANSITIONS`` raises :class:`IllegalTransition`)::

    WAITING ──► STARTING ──► RUNNING ──► BACKOFF ──► STARTING ...
                   │            │  ├────► EXITED (policy says no restart)
                   │            │  └────► FAILED (exit code 2 soon after start)
                   └────────────┴──► STOPPING ──► STOPPED ──► STARTING (scaled back up,
                                                               restarted)
    EXITED, FAILED, BACKOFF ──► STOPPED (stopped, or restarted by hand)
"""

from __future__ import annotations

import enum
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Literal, NamedTuple

from podkit.errors import EXIT_USAGE, UsageError
from podkit.pods.model import (
    DEFAULT_PROBE_FAILURES,
    MAX_REPLICAS,
    PodFile,
    admin_probes,
)
from podkit.runtime.lifecycle import IllegalTransition

DEFAULT_BACKOFF_INITIAL = 0.5  # the second quick exit in a row waits this long
DEFAULT_BACKOFF_MAX = 30.0  # a broken container costs at most one spawn every 30 s
DEFAULT_BACKOFF_RESET = 10.0  # running this long counts as healthy again
DEFAULT_CRASH_LOOP = 5  # quick exits in a row before the output is reported
# A container with nothing to probe counts as ready once it has run this long, so one that
# dies on start-up is not announced as ready first (Kubernetes' minReadySeconds).
DEFAULT_MIN_READY = 1.0


class ContainerState(enum.Enum):
    WAITING = "waiting"  # its pod waits for the pods in ``after``
    STARTING = "starting"  # spawn asked for, no pid yet
    RUNNING = "running"
    BACKOFF = "backoff"  # exited; a restart is due at ``restart_at``
    STOPPING = "stopping"  # SIGTERM sent (or due as soon as it starts)
    EXITED = "exited"  # exited and the restart policy keeps it down
    FAILED = "failed"  # exited with a usage or configuration error: restarting cannot help
    STOPPED = "stopped"  # stopped by the supervisor


S = ContainerState
TRANSITIONS: dict[ContainerState, frozenset[ContainerState]] = {
    S.WAITING: frozenset({S.STARTING, S.STOPPED}),
    S.STARTING: frozenset({S.RUNNING, S.BACKOFF, S.EXITED, S.FAILED, S.STOPPING}),
    S.RUNNING: frozenset({S.BACKOFF, S.EXITED, S.FAILED, S.STOPPING}),
    S.BACKOFF: frozenset({S.STARTING, S.STOPPED}),
    S.STOPPING: frozenset({S.STOPPED}),
    S.EXITED: frozenset({S.STOPPED}),
    S.FAILED: frozenset({S.STOPPED}),
    S.STOPPED: frozenset({S.STARTING}),
}
_DOWN = frozenset({S.WAITING, S.EXITED, S.FAILED, S.STOPPED})  # no process and none coming


class ReplicaKey(NamedTuple):
    pod: str
    replica: int

    def __str__(self) -> str:
        return f"{self.pod}-{self.replica}"


class ContainerKey(NamedTuple):
    pod: str
    replica: int
    container: str

    @property
    def replica_key(self) -> ReplicaKey:
        return ReplicaKey(self.pod, self.replica)

    def __str__(self) -> str:
        return f"{self.pod}-{self.replica}/{self.container}"


@dataclass(frozen=True, slots=True)
class BackoffPolicy:
    """Delays between restarts: none after the first quick exit, then ``initial``, times
    ``factor`` for each further quick exit in a row, capped at ``maximum``.

    Attributes:
        reset_after: a container that ran at least this long starts again from ``initial``.
        crash_loop: the number of quick exits in a row that is reported with the output.
    """

    initial: float = DEFAULT_BACKOFF_INITIAL
    factor: float = 2.0
    maximum: float = DEFAULT_BACKOFF_MAX
    reset_after: float = DEFAULT_BACKOFF_RESET
    crash_loop: int = DEFAULT_CRASH_LOOP

    def delay(self, failures: int) -> float:
        """The wait before restart number ``failures`` (from 1) of a quick-exit streak."""
        if failures <= 1:
            return 0.0  # one crash is usually transient: come back at once
        delay = self.initial
        # Multiply step by step: a long streak must not overflow a float power.
        for _ in range(failures - 2):
            if delay >= self.maximum or self.factor <= 1:
                break
            delay *= self.factor
        return float(min(self.maximum, delay))


# -- actions (what the shell does) ---------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Spawn:
    """Start the container's process."""

    key: ContainerKey


@dataclass(frozen=True, slots=True)
class Signal:
    """SIGTERM (``term``) the container's first process, or SIGKILL (``kill``) its group."""

    key: ContainerKey
    signal: Literal["term", "kill"]


@dataclass(frozen=True, slots=True)
class StartProbe:
    """Begin probing the replica's readiness."""

    replica: ReplicaKey


@dataclass(frozen=True, slots=True)
class StopProbe:
    """Stop probing the replica (it was scaled away)."""

    replica: ReplicaKey


@dataclass(frozen=True, slots=True)
class Publish:
    """The ready replicas of ``pod`` changed: rewrite the discovery files that list it."""

    pod: str
    replicas: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class Announce:
    """Every replica of ``pod`` is ready for the first time: tell the user where it is."""

    pod: str


@dataclass(frozen=True, slots=True)
class Report:
    """Something the user must see: a crash loop, a failed spawn, a container that gave up.

    Attributes:
        with_output: show the container's last lines of output with the message.
        failed: the container stays down (it will not come back without a change).
    """

    key: ContainerKey
    message: str
    with_output: bool = False
    failed: bool = False


Action = Spawn | Signal | StartProbe | StopProbe | Publish | Announce | Report


# -- records -------------------------------------------------------------------------------


@dataclass(slots=True)
class _Container:
    key: ContainerKey
    state: ContainerState = ContainerState.WAITING
    pid: int | None = None
    restarts: int = 0
    exit_code: int | None = None
    started_at: float | None = None
    restart_at: float | None = None
    kill_at: float | None = None
    killed: bool = False
    streak: int = 0  # quick exits in a row
    settled: bool = False  # has run min_ready since it last started

    def move(self, new: ContainerState) -> None:
        if new not in TRANSITIONS[self.state]:
            raise IllegalTransition(f"{self.key}: {self.state.value} -> {new.value}")
        self.state = new


@dataclass(slots=True)
class _Replica:
    key: ReplicaKey
    containers: dict[str, _Container]
    wanted: bool = True
    probing: bool = False
    probe_ok: bool = False
    probe_failures: int = 0


@dataclass(frozen=True, slots=True)
class ContainerStatus:
    """One row of ``podkit status``."""

    pod: str
    replica: int
    container: str
    state: str
    pid: int | None
    restarts: int
    exit_code: int | None
    ready: bool
    ip: str


@dataclass
class SupervisorCore:
    """The supervisor's state and decisions for one pod file (see the module docstring)."""

    podfile: PodFile
    backoff: BackoffPolicy = field(default_factory=BackoffPolicy)
    min_ready: float = DEFAULT_MIN_READY

    def __post_init__(self) -> None:
        self.order = self.podfile.order()
        self.desired = {name: pod.replicas for name, pod in self.podfile.pods.items()}
        self.stopping = False
        self._replicas: dict[ReplicaKey, _Replica] = {}
        self._started: set[str] = set()  # pods whose start the order allowed
        self._terminated: set[str] = set()  # pods told to stop during shutdown
        self._published: dict[str, tuple[int, ...]] = {}
        self._announced: set[str] = set()
        for name in self.order:
            for replica in range(1, self.desired[name] + 1):
                self._add_replica(ReplicaKey(name, replica))

    # -- queries ---------------------------------------------------------------------------

    @property
    def finished(self) -> bool:
        """True once a stop was asked for and no container has a process left."""
        return self.stopping and all(c.state in _DOWN for c in self._containers())

    def replica_ready(self, key: ReplicaKey) -> bool:
        """Whether the replica counts as ready (see the module docstring)."""
        rep = self._replicas.get(key)
        if rep is None or not rep.wanted or not _containers_up(rep):
            return False
        if self.probed(key.pod):
            return rep.probe_ok
        return all(c.settled or c.state is S.EXITED for c in rep.containers.values())

    def probed(self, pod: str) -> bool:
        """Whether readiness needs probes: a ``ready`` probe, or containers with an admin
        endpoint (each ready when its ``/readyz`` answers 200)."""
        spec = self.podfile.pods[pod]
        return spec.ready is not None or bool(admin_probes(spec))

    def failed_pods(self) -> list[str]:
        """The pods with a FAILED container in a replica that is wanted."""
        return [
            name
            for name in self.order
            if any(
                c.state is S.FAILED
                for k in self.replicas(name)
                if self._replicas[k].wanted
                for c in self._replicas[k].containers.values()
            )
        ]

    def ready_replicas(self, pod: str) -> tuple[int, ...]:
        """The numbers of the ready replicas of ``pod``, in order."""
        return tuple(
            k.replica for k in sorted(self._replicas) if k.pod == pod and self.replica_ready(k)
        )

    def replicas(self, pod: str | None = None) -> list[ReplicaKey]:
        """The replicas that exist (including ones being stopped), in order."""
        return [k for k in sorted(self._replicas) if pod is None or k.pod == pod]

    def pid(self, key: ContainerKey) -> int | None:
        return self._container(key).pid if self._has(key) else None

    def next_wakeup(self) -> float | None:
        """The earliest time at which :meth:`tick` has something to do, or None."""
        times = [
            c.restart_at
            for c in self._containers()
            if c.state is S.BACKOFF and c.restart_at is not None
        ]
        times += [
            c.kill_at
            for c in self._containers()
            if c.state is S.STOPPING and not c.killed and c.kill_at is not None
        ]
        times += [
            c.started_at + self.min_ready
            for c in self._containers()
            if c.state is S.RUNNING and not c.settled and c.started_at is not None
        ]
        return min(times) if times else None

    def statistics(self) -> list[ContainerStatus]:
        """A snapshot of every container, in pod file order."""
        rows = []
        for key in sorted(self._replicas, key=lambda k: (self.order.index(k.pod), k.replica)):
            rep = self._replicas[key]
            ready = self.replica_ready(key)
            ip = self.podfile.address(key.pod, key.replica)
            rows += [
                ContainerStatus(
                    pod=key.pod,
                    replica=key.replica,
                    container=c.key.container,
                    state=c.state.value,
                    pid=c.pid,
                    restarts=c.restarts,
                    exit_code=c.exit_code,
                    ready=ready,
                    ip=ip,
                )
                for c in rep.containers.values()
            ]
        return rows

    # -- events ----------------------------------------------------------------------------

    def start(self, now: float) -> list[Action]:
        """Begin: publish empty discovery lists and start the pods that wait for nothing."""
        actions: list[Action] = []
        for name in self.order:
            self._published[name] = ()
            actions.append(Publish(name, ()))
        return actions + self._advance(now)

    def container_started(self, key: ContainerKey, pid: int, now: float) -> list[Action]:
        """The shell spawned the container's process."""
        c = self._container(key)
        c.pid = pid
        c.started_at = now
        c.exit_code = None
        c.settled = self.min_ready <= 0
        if c.state is S.STOPPING:
            # A stop arrived while the spawn was under way: stop it now.
            return [Signal(key, "term"), *self._advance(now)]
        c.move(S.RUNNING)
        return self._advance(now)

    def spawn_failed(self, key: ContainerKey, reason: str, now: float) -> list[Action]:
        """The process could not be started (e.g. the program vanished from PATH)."""
        report = Report(key, f"cannot start: {reason}")
        c = self._container(key)
        c.started_at = now
        return [report, *self._exited(c, None, now)]

    def container_exited(
        self, key: ContainerKey, returncode: int | None, now: float
    ) -> list[Action]:
        """The container's process exited (``returncode`` negative: killed by that signal)."""
        return self._exited(self._container(key), returncode, now)

    def probe_result(self, key: ReplicaKey, ok: bool, now: float) -> list[Action]:
        """A readiness probe of the replica passed (``ok``) or failed."""
        rep = self._replicas.get(key)
        pod = self.podfile.pods[key.pod]
        if rep is None or not self.probed(key.pod):
            return []
        if not _containers_up(rep):
            return []  # results about a replica that is (re)starting say nothing
        if ok:
            rep.probe_ok = True
            rep.probe_failures = 0
        else:
            rep.probe_failures += 1
            failures = pod.ready.failures if pod.ready is not None else DEFAULT_PROBE_FAILURES
            if rep.probe_failures >= failures:
                rep.probe_ok = False
        return self._advance(now)

    def tick(self, now: float) -> list[Action]:
        """Carry out what is due: restarts after backoff, SIGKILL after the grace period,
        readiness of containers that ran ``min_ready``."""
        actions: list[Action] = []
        for c in self._containers():
            if (
                c.state is S.RUNNING
                and not c.settled
                and c.started_at is not None
                and c.started_at + self.min_ready <= now
            ):
                c.settled = True
            if c.state is S.BACKOFF and c.restart_at is not None and c.restart_at <= now:
                c.restart_at = None
                c.restarts += 1
                c.move(S.STARTING)
                actions.append(Spawn(c.key))
            elif (
                c.state is S.STOPPING
                and not c.killed
                and c.kill_at is not None
                and c.kill_at <= now
            ):
                c.killed = True
                if c.pid is not None:
                    actions.append(Signal(c.key, "kill"))
        return actions + self._advance(now)

    def scale(self, pod: str, replicas: int, now: float) -> list[Action]:
        """Run ``replicas`` replicas of ``pod``: new ones start, the highest numbers stop.

        Raises:
            UsageError: an unknown pod, a count out of range, or a stop under way.
        """
        if pod not in self.podfile.pods:
            raise UsageError(f"no pod named {pod!r} (pods: {', '.join(self.podfile.pods)})")
        if not 0 <= replicas <= MAX_REPLICAS:
            raise UsageError(f"replicas must be 0-{MAX_REPLICAS}, got {replicas}")
        if self.stopping:
            raise UsageError("the pods are stopping")
        self.desired[pod] = replicas
        actions: list[Action] = []
        for key in self.replicas(pod):
            if key.replica > replicas and self._replicas[key].wanted:
                rep = self._replicas[key]
                rep.wanted = False
                rep.probe_ok = False
                grace = self.podfile.pods[pod].stop_grace
                for c in rep.containers.values():
                    actions += self._terminate(c, grace, now)
        for number in range(1, replicas + 1):
            key = ReplicaKey(pod, number)
            if key not in self._replicas:
                self._add_replica(key)
            else:
                self._replicas[key].wanted = True
        return actions + self._advance(now)

    def restart(self, pod: str, now: float) -> list[Action]:
        """Stop every container of ``pod`` and start it again once it is down.

        Containers that gave up (EXITED, FAILED) or wait for a restart start again at once;
        the restart count of each goes up by one.

        Raises:
            UsageError: an unknown pod, or a stop under way.
        """
        if pod not in self.podfile.pods:
            raise UsageError(f"no pod named {pod!r} (pods: {', '.join(self.podfile.pods)})")
        if self.stopping:
            raise UsageError("the pods are stopping")
        grace = self.podfile.pods[pod].stop_grace
        actions: list[Action] = []
        for key in self.replicas(pod):
            rep = self._replicas[key]
            if not rep.wanted:
                continue
            rep.probe_ok = False
            rep.probe_failures = 0
            for c in rep.containers.values():
                if c.state in (S.EXITED, S.FAILED):
                    c.move(S.STOPPED)
                else:
                    actions += self._terminate(c, grace, now)
        return actions + self._advance(now)

    def stop(self, now: float) -> list[Action]:
        """Stop everything, dependents before the pods they wait for."""
        self.stopping = True
        return self._advance(now)

    def force_stop(self) -> list[Action]:
        """SIGKILL every process now (a second Ctrl-C)."""
        self.stopping = True
        actions: list[Action] = []
        for c in self._containers():
            if c.pid is not None and c.state in (S.RUNNING, S.STOPPING):
                c.killed = True
                actions.append(Signal(c.key, "kill"))
        return actions

    # -- internals -------------------------------------------------------------------------

    def _containers(self) -> Iterable[_Container]:
        for rep in self._replicas.values():
            yield from rep.containers.values()

    def _has(self, key: ContainerKey) -> bool:
        rep = self._replicas.get(key.replica_key)
        return rep is not None and key.container in rep.containers

    def _container(self, key: ContainerKey) -> _Container:
        return self._replicas[key.replica_key].containers[key.container]

    def _add_replica(self, key: ReplicaKey) -> None:
        names = self.podfile.pods[key.pod].containers
        self._replicas[key] = _Replica(
            key, {n: _Container(ContainerKey(key.pod, key.replica, n)) for n in names}
        )

    def _exited(self, c: _Container, returncode: int | None, now: float) -> list[Action]:
        rep = self._replicas[c.key.replica_key]
        ran = now - (c.started_at if c.started_at is not None else now)
        c.settled = False
        c.pid = None
        c.exit_code = returncode
        rep.probe_ok = False
        rep.probe_failures = 0
        actions: list[Action] = []
        if c.state is S.STOPPING:
            c.move(S.STOPPED)
            return self._advance(now)
        policy = self.podfile.pods[c.key.pod].restart
        failed = returncode != 0
        if returncode == EXIT_USAGE and ran < self.backoff.reset_after and rep.wanted:
            c.move(S.FAILED)
            c.streak = 0
            if not self.stopping:
                actions.append(
                    Report(
                        c.key,
                        f"exited with code {EXIT_USAGE} (a usage or configuration error) "
                        f"after {ran:.1f}s; not restarted",
                        with_output=True,
                        failed=True,
                    )
                )
            return actions + self._advance(now)
        restart = (policy == "always" or (policy == "on-failure" and failed)) and (
            rep.wanted and not self.stopping
        )
        c.streak = 1 if ran >= self.backoff.reset_after else c.streak + 1
        if restart:
            c.move(S.BACKOFF)
            delay = self.backoff.delay(c.streak)
            c.restart_at = now + delay
            if c.streak == self.backoff.crash_loop:
                actions.append(
                    Report(
                        c.key,
                        f"keeps crashing: exited {c.streak} times in a row "
                        f"(last {_describe_exit(returncode)}); next restart in {delay:g}s",
                        with_output=True,
                    )
                )
        else:
            c.move(S.EXITED)
            if failed and not self.stopping and rep.wanted:
                actions.append(
                    Report(
                        c.key,
                        f"{_describe_exit(returncode)}; restart policy {policy!r} keeps it down",
                        with_output=True,
                        failed=True,
                    )
                )
        return actions + self._advance(now)

    def _terminate(self, c: _Container, grace: float, now: float) -> list[Action]:
        if c.state in (S.WAITING, S.BACKOFF):
            c.restart_at = None
            c.move(S.STOPPED)
            return []
        if c.state is S.STARTING:
            c.move(S.STOPPING)
            c.kill_at = now + grace
            c.killed = False
            return []  # the signal follows once the shell reports the pid
        if c.state is S.RUNNING:
            c.move(S.STOPPING)
            c.kill_at = now + grace
            c.killed = False
            return [Signal(c.key, "term")]
        return []

    def _pod_available(self, pod: str) -> bool:
        return len(self.ready_replicas(pod)) >= self.desired[pod]

    def _pod_down(self, pod: str) -> bool:
        return all(
            c.state in _DOWN
            for k in self.replicas(pod)
            for c in self._replicas[k].containers.values()
        )

    def _start_replica(self, rep: _Replica) -> list[Action]:
        actions: list[Action] = []
        for c in rep.containers.values():
            if c.state in (S.WAITING, S.STOPPED):
                if c.state is S.STOPPED:
                    c.restarts += 1
                c.move(S.STARTING)
                c.streak = 0
                actions.append(Spawn(c.key))
        if actions and not rep.probing and self.probed(rep.key.pod):
            rep.probing = True
            actions.append(StartProbe(rep.key))
        return actions

    def _advance(self, now: float) -> list[Action]:
        # Publish first: a pod that starts because its dependencies became ready finds the
        # discovery files already listing them.
        actions = self._publish()
        if not self.stopping:
            for name in self.order:
                pod = self.podfile.pods[name]
                if name not in self._started and all(self._pod_available(d) for d in pod.after):
                    self._started.add(name)
                if name in self._started:
                    for key in self.replicas(name):
                        rep = self._replicas[key]
                        if rep.wanted:
                            actions += self._start_replica(rep)
        else:
            for name in reversed(self.order):
                if name in self._terminated:
                    continue
                dependents = [n for n, p in self.podfile.pods.items() if name in p.after]
                if all(self._pod_down(d) for d in dependents):
                    self._terminated.add(name)
                    grace = self.podfile.pods[name].stop_grace
                    for key in self.replicas(name):
                        for c in self._replicas[key].containers.values():
                            actions += self._terminate(c, grace, now)
        # Replicas scaled away and fully down are forgotten.
        for key in list(self._replicas):
            rep = self._replicas[key]
            if not rep.wanted and all(c.state in _DOWN for c in rep.containers.values()):
                del self._replicas[key]
                if rep.probing:
                    actions.append(StopProbe(key))
        return actions + self._publish()

    def _publish(self) -> list[Action]:
        actions: list[Action] = []
        for name in self.order:
            ready = self.ready_replicas(name)
            if self._published.get(name) != ready:
                self._published[name] = ready
                actions.append(Publish(name, ready))
            if (
                name not in self._announced
                and self.desired[name] > 0
                and len(ready) >= self.desired[name]
            ):
                self._announced.add(name)
                actions.append(Announce(name))
        return actions


def _containers_up(rep: _Replica) -> bool:
    """Every container runs, or finished its work (exit code 0, not restarted)."""
    return all(
        c.state is S.RUNNING or (c.state is S.EXITED and c.exit_code == 0)
        for c in rep.containers.values()
    )


def _describe_exit(returncode: int | None) -> str:
    if returncode is None:
        return "could not start"
    if returncode < 0:
        return f"killed by signal {-returncode}"
    return f"exit code {returncode}"
