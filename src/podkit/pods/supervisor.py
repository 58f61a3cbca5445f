"""The asyncio shell of the supervisor: processes, probes, logs, discovery files, control.

Theory of operation. :class:`PodSupervisor` owns one event queue and one loop. Everything
that happens — a process exited, a probe answered, a client asked to scale, Ctrl-C — becomes
an event; the loop hands it to :class:`~podkit.pods.core.SupervisorCore`, which decides, and
then carries out the returned actions (decide, then act). Background tasks (one output pump
and one waiter per process, one probe loop per replica, one handler per control client) all
belong to the supervisor's task group.

No orphans:

* each container leads its own session and process group; SIGTERM goes to its first process
  only (a component drains its own workers and children, and one SIGTERM must not reach them
  twice), SIGKILL to the whole group, and when the first process exits the rest of its group
  is killed;
* each container's first process gets ``PR_SET_PDEATHSIG`` = SIGKILL (``prctl(2)``), so it
  dies with the supervisor even when the supervisor is SIGKILLed;
* a guardian process (:mod:`podkit.pods._guardian`) holds a pipe from the supervisor and
  kills every group still listed when that pipe closes, reaching grandchildren too;
* the state file records each group with its leader's start time, so ``podkit down`` can
  clean up after a supervisor and guardian that were both killed.

Files under the state directory (``.podkit/`` by default): ``control.sock`` (one JSON line
per request, one per answer), ``state.json`` (supervisor pid and every container),
``logs/POD-R.CONTAINER.log``, ``pods/POD-R/`` (each replica's shared directory) and
``discovery/POD-PORT.txt`` (the ready replicas, for ``balance --backends-file``).
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import errno
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import IO, Any, TextIO

from podkit.errors import ListenError, PodkitError, PodkitTimeout, UsageError
from podkit.pods._options import accepts_option
from podkit.pods.core import (
    Action,
    Announce,
    BackoffPolicy,
    ContainerKey,
    Publish,
    ReplicaKey,
    Report,
    Signal,
    Spawn,
    StartProbe,
    StopProbe,
    SupervisorCore,
)
from podkit.pods.dashboard import open_dashboard
from podkit.pods.logs import DEFAULT_LOG_MAX_BYTES, RotatingLog, log_name
from podkit.pods.model import (
    DEFAULT_PROBE_INTERVAL,
    DEFAULT_PROBE_TIMEOUT,
    PodFile,
    bound_addresses,
    check_port_clashes,
    discovery_path,
    replica_dir,
)
from podkit.pods.plan import (
    SOURCE_ADDRESS_OPTION,
    TRUSTED_PROXY_OPTION,
    admin_address,
    discovery_refs,
    plan_container,
    probe_targets,
    render_discovery,
    service_addresses,
    sets_option,
)
from podkit.runtime.config import parse_hostport

DEFAULT_STATE_DIR = Path(".podkit")
SOCKET_NAME = "control.sock"
STATE_NAME = "state.json"
OUTPUT_TAIL_LINES = 20  # lines kept per container for crash reports
MAX_LINE_BYTES = 1 << 20  # a longer log line is cut, not fatal
MAX_REQUEST_BYTES = 64 * 1024  # control requests are tiny JSON objects
CONTROL_TIMEOUT = 5.0  # a control client that says nothing for this long is dropped
MAX_PROBLEMS = 20  # reports kept for `podkit status` and `up -d`; the oldest go first
IN_USE_TIMEOUT = 0.5  # a connect to a probe address that takes longer finds nobody there
MOVE_HINT = "docs/pods.md#two-projects-on-one-machine"
_SUN_PATH_MAX = 100  # AF_UNIX paths are limited to 108 bytes on Linux
_PR_SET_PDEATHSIG = 1


@dataclass(frozen=True, slots=True)
class _Event:
    kind: str
    key: Any = None
    value: Any = None
    reply: asyncio.Future[dict[str, Any]] | None = None


class _HopOptions:
    """Which component containers take an option the supervisor fills in (looked up once)."""

    def __init__(self, podfile: PodFile) -> None:
        self.podfile = podfile
        self._known: dict[tuple[str, str, str], bool] = {}

    def accepts(self, key: ContainerKey, option: str) -> bool:
        """Whether the container's component has ``--OPTION`` and its options leave it out."""
        name = (key.pod, key.container, option)
        if name not in self._known:
            container = self.podfile.pods[key.pod].containers[key.container]
            self._known[name] = not sets_option(container, option) and accepts_option(
                container, "--" + option
            )
        return self._known[name]


def socket_path(state_dir: Path) -> str:
    """The control socket's path, relative when the absolute one is too long for AF_UNIX."""
    path = (state_dir / SOCKET_NAME).absolute()
    if len(str(path)) <= _SUN_PATH_MAX:
        return str(path)
    return os.path.relpath(path)


def _load_prctl() -> Callable[..., int] | None:
    try:
        libc = ctypes.CDLL(None, use_errno=True)
    except OSError:
        return None
    prctl = getattr(libc, "prctl", None)
    return prctl if callable(prctl) else None


_PRCTL = _load_prctl()  # looked up before any fork: the child only calls it


def _die_with_parent(parent: int) -> Callable[[], None]:
    def setup() -> None:
        if _PRCTL is not None:
            _PRCTL(_PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0)
        if os.getppid() != parent:  # the parent died before prctl took effect
            os._exit(1)

    return setup


def process_start_time(pid: int) -> int | None:
    """The start time of ``pid`` in clock ticks since boot (``/proc/PID/stat`` field 22)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return int(stat.rpartition(")")[2].split()[19])


class PodSupervisor:
    """Runs a pod file on this machine until stopped (``podkit up``).

    Args:
        podfile: the validated pod file.
        source: the file's name, for messages and ``podkit status``.
        state_dir: where the control socket, state, logs and replica directories live.
        out: where container output (``pod-replica/container | line``) and notices go.
        backoff: the restart backoff policy.
        base_env: the environment containers inherit (default: this process's).
        log_max_bytes: the size at which a container's log file is rotated.
        dashboard: ``(host, port)`` to serve the dashboard on, or None for none.
        dashboard_fallback: when ``dashboard`` is in use, serve on a free port of the same
            host instead of failing (for the default address, which two projects share).
    """

    def __init__(
        self,
        podfile: PodFile,
        *,
        source: str,
        state_dir: Path = DEFAULT_STATE_DIR,
        out: TextIO | None = None,
        backoff: BackoffPolicy | None = None,
        base_env: Mapping[str, str] | None = None,
        log_max_bytes: int = DEFAULT_LOG_MAX_BYTES,
        dashboard: tuple[str, int] | None = None,
        dashboard_fallback: bool = False,
    ) -> None:
        self.podfile = podfile
        self.dashboard = dashboard
        self.dashboard_fallback = dashboard_fallback
        self.dashboard_url: str | None = None
        self.source = source
        self.state_dir = state_dir.absolute()  # {pod.dir} must work from any workdir
        self.out = out if out is not None else sys.stdout
        self.core = SupervisorCore(podfile, backoff=backoff or BackoffPolicy())
        self.base_env = dict(base_env if base_env is not None else os.environ)
        self._queue: asyncio.Queue[_Event] = asyncio.Queue()
        self._procs: dict[ContainerKey, asyncio.subprocess.Process] = {}
        self._groups: dict[int, int | None] = {}  # pgid -> leader start time
        self._tails: dict[ContainerKey, deque[str]] = {}
        self._probes: dict[ReplicaKey, asyncio.Task[None]] = {}
        self._pumps: set[asyncio.Task[None]] = set()
        self._tg: asyncio.TaskGroup | None = None
        self._guardian: subprocess.Popen[bytes] | None = None
        self._stop_requests = 0
        self._last_state = ""
        self._refs = discovery_refs(podfile)
        self._ready: dict[str, tuple[int, ...]] = {}
        self._announced: set[str] = set()
        self.log_max_bytes = log_max_bytes
        self._problems: deque[dict[str, Any]] = deque(maxlen=MAX_PROBLEMS)
        # Components that forward traffic trust the X-Forwarded-* of this project's pods
        # (and no one else's), and connect from their own pod's address.
        self._hops = _HopOptions(podfile)

    # -- public ----------------------------------------------------------------------------

    async def run(self) -> int:
        """Start the pods, supervise them until stopped, stop them; return the exit code.

        Raises:
            UsageError: pods already run from this state directory.
        """
        self._prepare_dirs()
        check_addresses_free(self.podfile, source=self.source, state_dir=self.state_dir)
        pods = ", ".join(f"{name} x{pod.replicas}" for name, pod in self.podfile.pods.items())
        self._say(f"{self.source}: starting {pods}; state and logs in {self.state_dir}")
        loop = asyncio.get_running_loop()
        self._start_guardian()
        server = await asyncio.start_unix_server(
            self._serve_client, path=socket_path(self.state_dir), limit=MAX_REQUEST_BYTES
        )
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, self._on_stop_signal)
        try:
            async with contextlib.AsyncExitStack() as stack, asyncio.TaskGroup() as tg:
                self._tg = tg
                try:
                    if self.dashboard is not None:
                        await self._open_dashboard(stack)
                    await self._loop()
                finally:
                    server.close()
                    for task in (*self._probes.values(), *self._pumps):
                        task.cancel()
        finally:
            for signum in (signal.SIGINT, signal.SIGTERM):
                loop.remove_signal_handler(signum)
            self._kill_everything()
            self._stop_guardian()
            with contextlib.suppress(FileNotFoundError):
                os.unlink(socket_path(self.state_dir))
            with contextlib.suppress(FileNotFoundError):
                (self.state_dir / STATE_NAME).unlink()
        self._say("all pods stopped")
        return 0

    async def control(self, request: dict[str, Any]) -> dict[str, Any]:
        """Carry out one control request (as on the control socket) and return the answer."""
        reply: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        await self._queue.put(_Event("control", value=request, reply=reply))
        return await reply

    async def _open_dashboard(self, stack: contextlib.AsyncExitStack) -> None:
        assert self.dashboard is not None
        host, port = self.dashboard
        try:
            dashboard = await stack.enter_async_context(open_dashboard(self, host=host, port=port))
        except ListenError:
            if not self.dashboard_fallback:
                raise
            dashboard = await stack.enter_async_context(open_dashboard(self, host=host, port=0))
        self.dashboard_url = dashboard.url
        self._say(f"dashboard at {dashboard.url}")

    # -- the loop --------------------------------------------------------------------------

    async def _loop(self) -> None:
        await self._act(self.core.start(time.monotonic()))
        while not self.core.finished:
            wakeup = self.core.next_wakeup()
            timeout = None if wakeup is None else max(0.0, wakeup - time.monotonic())
            event: _Event | None = None
            try:
                async with asyncio.timeout(timeout):
                    event = await self._queue.get()
            except TimeoutError:
                pass
            now = time.monotonic()
            actions: list[Action] = []
            if event is not None:
                actions += self._apply(event, now)
            actions += self.core.tick(now)
            await self._act(actions)
            self._write_state()

    def _apply(self, event: _Event, now: float) -> list[Action]:
        core = self.core
        if event.kind == "exited":
            return core.container_exited(event.key, event.value, now)
        if event.kind == "probe":
            return core.probe_result(event.key, event.value, now)
        if event.kind == "stop":
            self._say("stopping (Ctrl-C again to kill at once)")
            return core.stop(now)
        if event.kind == "force":
            self._say("killing every container")
            return core.force_stop()
        if event.kind == "control":
            return self._control(event, now)
        raise AssertionError(f"unknown event {event.kind}")

    def _control(self, event: _Event, now: float) -> list[Action]:
        request: dict[str, Any] = event.value
        assert event.reply is not None
        op = request.get("op")
        actions: list[Action] = []
        try:
            if op == "status":
                answer = {"ok": True, **self.status()}
            elif op == "scale":
                pod, replicas = request.get("pod"), request.get("replicas")
                if not isinstance(pod, str) or not isinstance(replicas, int):
                    raise UsageError("scale needs a pod name and a number of replicas")
                if pod in self.podfile.pods:
                    check_port_clashes(
                        self.podfile,
                        source=self.source,
                        state_dir=self.state_dir,
                        replicas={**self.core.desired, pod: replicas},
                    )
                    existing = max((k.replica for k in self.core.replicas(pod)), default=0)
                    check_addresses_free(
                        self.podfile,
                        source=self.source,
                        state_dir=self.state_dir,
                        replicas={pod: replicas},
                        first=existing + 1,
                    )
                actions = self.core.scale(pod, replicas, now)
                self._say(f"scaling {pod} to {replicas}")
                answer = {"ok": True, "pod": pod, "replicas": replicas}
            elif op == "restart":
                pod = request.get("pod")
                if not isinstance(pod, str):
                    raise UsageError("restart needs a pod name")
                actions = self.core.restart(pod, now)
                self._say(f"restarting {pod}")
                answer = {"ok": True, "pod": pod}
            elif op == "down":
                if not self.core.stopping:
                    self._say("stopping (asked by podkit down)")
                actions = self.core.stop(now)
                answer = {"ok": True, "pid": os.getpid()}
            else:
                raise UsageError(f"unknown request {op!r}")
        except PodkitError as exc:
            answer = {"ok": False, "error": str(exc)}
        if not event.reply.done():
            event.reply.set_result(answer)
        return actions

    async def _act(self, actions: list[Action]) -> None:
        for action in actions:
            if isinstance(action, Spawn):
                await self._spawn(action.key)
            elif isinstance(action, Signal):
                self._signal(action.key, action.signal)
            elif isinstance(action, StartProbe):
                assert self._tg is not None
                self._probes[action.replica] = self._tg.create_task(self._probe(action.replica))
            elif isinstance(action, StopProbe):
                task = self._probes.pop(action.replica, None)
                if task is not None:
                    task.cancel()
            elif isinstance(action, Publish):
                self._publish(action.pod, action.replicas)
            elif isinstance(action, Announce):
                self._announce(action.pod)
            elif isinstance(action, Report):
                self._report(action)

    # -- processes -------------------------------------------------------------------------

    async def _spawn(self, key: ContainerKey) -> None:
        trusted = self._hops.accepts(key, TRUSTED_PROXY_OPTION)
        plan = plan_container(
            self.podfile,
            key,
            state_dir=self.state_dir,
            base_env=self.base_env,
            trusted_proxies=self.podfile.networks() if trusted else (),
            source_address=self._hops.accepts(key, SOURCE_ADDRESS_OPTION),
        )
        replica_dir(self.state_dir, key.pod, key.replica).mkdir(parents=True, exist_ok=True)
        now = time.monotonic()
        try:
            proc = await asyncio.create_subprocess_exec(
                *plan.argv,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                env=plan.env,
                cwd=plan.cwd,
                start_new_session=True,
                preexec_fn=_die_with_parent(os.getpid()),
                limit=MAX_LINE_BYTES,
            )
        except (OSError, subprocess.SubprocessError) as exc:
            await self._act(self.core.spawn_failed(key, str(exc), now))
            return
        self._procs[key] = proc
        self._groups[proc.pid] = process_start_time(proc.pid)
        self._tell_guardian(f"+{proc.pid}")
        self._tails.setdefault(key, deque(maxlen=OUTPUT_TAIL_LINES))
        assert self._tg is not None
        pump = self._tg.create_task(self._pump(key, proc))
        self._pumps.add(pump)
        pump.add_done_callback(self._pumps.discard)
        self._tg.create_task(self._wait(key, proc))
        await self._act(self.core.container_started(key, proc.pid, now))

    async def _wait(self, key: ContainerKey, proc: asyncio.subprocess.Process) -> None:
        code = await proc.wait()
        # What the container's first process started dies with it, as in a container runtime.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
        self._groups.pop(proc.pid, None)
        self._tell_guardian(f"-{proc.pid}")
        if self._procs.get(key) is proc:
            del self._procs[key]
        await self._queue.put(_Event("exited", key, code))

    async def _pump(self, key: ContainerKey, proc: asyncio.subprocess.Process) -> None:
        assert proc.stdout is not None
        path = self.state_dir / "logs" / log_name(key.pod, key.replica, key.container)
        prefix = f"{key} | "
        tail = self._tails[key]
        with RotatingLog(path, max_bytes=self.log_max_bytes) as log:
            while True:
                try:
                    raw = await proc.stdout.readline()
                except ValueError:  # a line longer than MAX_LINE_BYTES: take what is there
                    raw = await proc.stdout.read(MAX_LINE_BYTES)
                if not raw:
                    return
                line = raw.decode("utf-8", errors="replace").rstrip("\r\n")
                tail.append(line)
                log.write(line, wall=time.time())
                self._print(prefix + line)

    def _signal(self, key: ContainerKey, which: str) -> None:
        proc = self._procs.get(key)
        if proc is None or proc.returncode is not None:
            return
        with contextlib.suppress(ProcessLookupError, PermissionError):
            if which == "term":
                # Only the first process: it stops its own children (a worker pool, elect's
                # command); a second SIGTERM from us would force them.
                os.kill(proc.pid, signal.SIGTERM)
            else:
                os.killpg(proc.pid, signal.SIGKILL)

    def _kill_everything(self) -> None:
        for pgid in list(self._groups):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pgid, signal.SIGKILL)

    # -- probes ----------------------------------------------------------------------------

    async def _probe(self, key: ReplicaKey) -> None:
        spec = self.podfile.pods[key.pod].ready
        interval = spec.interval if spec is not None else DEFAULT_PROBE_INTERVAL
        timeout = spec.timeout if spec is not None else DEFAULT_PROBE_TIMEOUT
        targets = probe_targets(self.podfile, key.pod, key.replica, state_dir=self.state_dir)
        while True:
            ok = True
            for target in targets:
                ok = await probe_once(target.host, target.port, path=target.path, timeout=timeout)
                if not ok:
                    break
            await self._queue.put(_Event("probe", key, ok))
            await asyncio.sleep(interval)  # the probe period, not a wait for state

    # -- discovery, state, control ---------------------------------------------------------

    def _publish(self, pod: str, replicas: tuple[int, ...]) -> None:
        before = self._ready.get(pod, ())
        self._ready[pod] = replicas
        if pod in self._announced:
            # After the first "ready" line, say who joins and leaves: a kill, a failing probe
            # or a scale shows up in the log.
            for replica in replicas:
                if replica not in before:
                    self._say(f"{pod}-{replica} ready")
            for replica in before:
                if replica not in replicas:
                    self._say(f"{pod}-{replica} not ready")
        for ref in self._refs:
            if ref.pod == pod:
                _write_atomic(
                    discovery_path(self.state_dir, ref),
                    render_discovery(self.podfile, ref, replicas),
                )

    def status(self) -> dict[str, Any]:
        """What ``podkit status`` shows: the supervisor and every container."""
        containers = []
        for row in self.core.statistics():
            item = asdict(row)
            addresses = service_addresses(self.podfile, row.pod, (row.replica,))
            item["address"] = " ".join(addresses) or row.ip
            key = ContainerKey(row.pod, row.replica, row.container)
            item["admin"] = admin_address(self.podfile, key, state_dir=self.state_dir)
            containers.append(item)
        return {
            "pid": os.getpid(),
            "file": self.source,
            "state_dir": str(self.state_dir),
            "stopping": self.core.stopping,
            "replicas": dict(self.core.desired),
            "ready_pods": [p for p in self.core.order if p in self._announced],
            "failed_pods": self.core.failed_pods(),
            "problems": list(self._problems),
            "containers": containers,
            "dashboard": self.dashboard_url,
        }

    def _write_state(self) -> None:
        state = self.status()
        state["socket"] = socket_path(self.state_dir)
        state["guardian"] = self._guardian.pid if self._guardian else None
        state["groups"] = [{"pgid": g, "start": s} for g, s in self._groups.items()]
        text = json.dumps(state, indent=1)
        if text != self._last_state:
            self._last_state = text
            _write_atomic(self.state_dir / STATE_NAME, text)

    async def _serve_client(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        try:
            try:
                async with asyncio.timeout(CONTROL_TIMEOUT):
                    line = await reader.readline()
                request = json.loads(line)
                if not isinstance(request, dict):
                    raise ValueError("not an object")
            except (TimeoutError, ValueError) as exc:
                answer: dict[str, Any] = {"ok": False, "error": f"bad request: {exc}"}
            else:
                answer = await self.control(request)
            writer.write(json.dumps(answer).encode() + b"\n")
            await writer.drain()
        except (ConnectionError, OSError):
            pass  # the client went away; nothing to tell it
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError, OSError):
                await writer.wait_closed()

    def _on_stop_signal(self) -> None:
        self._stop_requests += 1
        self._queue.put_nowait(_Event("stop" if self._stop_requests == 1 else "force"))

    # -- guardian --------------------------------------------------------------------------

    def _start_guardian(self) -> None:
        self._guardian = subprocess.Popen(
            [sys.executable, "-m", "podkit.pods._guardian"],
            stdin=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            start_new_session=True,
        )

    def _tell_guardian(self, line: str) -> None:
        pipe: IO[bytes] | None = self._guardian.stdin if self._guardian else None
        if pipe is None:
            return
        try:
            pipe.write(line.encode() + b"\n")
            pipe.flush()
        except OSError:
            pass  # the guardian is gone; the parent-death signal still covers the containers

    def _stop_guardian(self) -> None:
        if self._guardian is None:
            return
        if self._guardian.stdin is not None:
            with contextlib.suppress(OSError):
                self._guardian.stdin.close()
        try:
            self._guardian.wait(CONTROL_TIMEOUT)
        except subprocess.TimeoutExpired:
            self._guardian.kill()
            self._guardian.wait()

    # -- output ----------------------------------------------------------------------------

    def _prepare_dirs(self) -> None:
        for sub in ("logs", "pods", "discovery"):
            (self.state_dir / sub).mkdir(parents=True, exist_ok=True)
        try:
            running = request(self.state_dir, {"op": "status"})
        except NotRunning:
            pass
        else:
            raise UsageError(
                f"pods from {running.get('file')} already run here (supervisor pid "
                f"{running.get('pid')}); stop them with `podkit down`"
            )
        cleanup_leftovers(self.state_dir)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(socket_path(self.state_dir))

    def _announce(self, pod: str) -> None:
        self._announced.add(pod)
        addresses = service_addresses(self.podfile, pod, self.core.ready_replicas(pod))
        where = f" at {' '.join(addresses)}" if addresses else ""
        self._say(f"{pod} ready{where}")

    def _report(self, report: Report) -> None:
        self._say(f"{report.key}: {report.message}")
        self._problems.append(
            {
                "container": str(report.key),
                "message": report.message,
                "failed": report.failed,
                "output": list(self._tails.get(report.key, ())),
            }
        )
        if report.with_output:
            lines = list(self._tails.get(report.key, ()))
            if lines:
                self._say(f"{report.key}: its last {len(lines)} lines of output:")
                for line in lines:
                    self._print(f"    {line}")

    def _say(self, message: str) -> None:
        self._print(f"podkit up: {message}")

    def _print(self, line: str) -> None:
        try:
            self.out.write(line + "\n")
            self.out.flush()
        except (BrokenPipeError, ValueError):
            pass  # nobody reads the terminal any more; the logs still go to files


async def probe_once(ip: str, port: int, *, path: str | None, timeout: float) -> bool:
    """One readiness check: a TCP connect, or ``GET path`` answering 2xx or 3xx."""
    writer: asyncio.StreamWriter | None = None
    try:
        async with asyncio.timeout(timeout):
            reader, writer = await asyncio.open_connection(ip, port)
            if path is None:
                return True
            writer.write(
                f"GET {path} HTTP/1.1\r\nHost: {ip}:{port}\r\nUser-Agent: podkit-probe\r\n"
                "Connection: close\r\n\r\n".encode()
            )
            await writer.drain()
            status_line = await reader.readline()
        parts = status_line.split()
        return len(parts) >= 2 and parts[1].isdigit() and 200 <= int(parts[1]) < 400
    except (OSError, TimeoutError, ValueError):
        return False
    finally:
        if writer is not None:
            writer.close()
            with contextlib.suppress(OSError, TimeoutError):
                await writer.wait_closed()


def addresses_in_use(
    podfile: PodFile,
    *,
    state_dir: Path,
    replicas: Mapping[str, int] | None = None,
    first: int = 1,
) -> list[tuple[str, str]]:
    """``(address, path)`` of every address the pods would use that another process holds.

    An address a container binds (``ports``, ``listen``, ``admin``) is in use when binding it
    fails; a readiness probe's address is in use when something already answers there (a
    probe would take that answer for our container's). Checked before anything starts.

    Args:
        replicas: the pods and counts to check (default: every pod, its file count).
        first: the first replica number to check (``podkit scale`` checks only new ones).
    """
    counts = (
        dict(replicas) if replicas is not None else {n: p.replicas for n, p in podfile.pods.items()}
    )
    found: list[tuple[str, str]] = []
    seen: set[str] = set()
    for pod, count in counts.items():
        bound = list(bound_addresses(podfile, pod, count, state_dir=state_dir, first=first))
        for address, where in bound:
            if address not in seen:
                seen.add(address)
                if not _can_bind(address):
                    found.append((address, where))
        for replica in range(first, count + 1):
            for target in probe_targets(podfile, pod, replica, state_dir=state_dir):
                address = f"{target.host}:{target.port}"
                if address not in seen:
                    seen.add(address)
                    if _answers(target.host, target.port):
                        found.append((address, target.what))
    return found


def check_addresses_free(
    podfile: PodFile,
    *,
    source: str,
    state_dir: Path,
    replicas: Mapping[str, int] | None = None,
    first: int = 1,
) -> None:
    """Raise if another process holds an address the pods would use (see
    :func:`addresses_in_use`).

    Raises:
        AddressInUse: naming the first address, where the file uses it, and how to move.
    """
    taken = addresses_in_use(podfile, state_dir=state_dir, replicas=replicas, first=first)
    if not taken:
        return
    address, where = taken[0]
    more = f" (and {len(taken) - 1} more)" if len(taken) > 1 else ""
    raise AddressInUse(
        f"{source}: {where}: {address} is already in use by a process this project did not "
        f"start{more}; stop it, or move this project to another loopback block with "
        f"`subnet: 127.N.0.0/16` in the pod file or `podkit up --subnet` ({MOVE_HINT})"
    )


class AddressInUse(PodkitError):
    """An address the pods need is held by a process the supervisor did not start."""


def _can_bind(address: str) -> bool:
    try:
        where = parse_hostport(address)
    except PodkitError:
        return True
    family = socket.AF_INET6 if ":" in where.host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        # SO_REUSEADDR: a port left in TIME_WAIT by our own last run is free; a listener
        # (another project) still makes bind fail.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((where.host, where.port))
        except OSError as exc:
            return exc.errno != errno.EADDRINUSE
    return True


def _answers(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=IN_USE_TIMEOUT):
            return True
    except OSError:
        return False


def _write_atomic(path: Path, text: str) -> None:
    """Replace ``path`` at once, so a reader sees the old or the new text, never half."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def _pid_alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class NotRunning(PodkitError):
    """No supervisor answers on the control socket of this state directory."""


def request(
    state_dir: Path, payload: Mapping[str, Any], *, timeout: float = CONTROL_TIMEOUT
) -> dict[str, Any]:
    """Send one request to the supervisor running from ``state_dir`` and return its answer.

    Raises:
        NotRunning: nothing listens on the control socket.
        PodkitError: the supervisor answered with an error, or not in time.
    """
    path = socket_path(state_dir)
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        try:
            sock.connect(path)
        except (FileNotFoundError, ConnectionRefusedError) as exc:
            raise NotRunning(f"no pods run from {state_dir} (nothing answers on {path})") from exc
        except OSError as exc:
            raise PodkitError(f"cannot reach the supervisor on {path}: {exc}") from exc
        try:
            sock.sendall(json.dumps(dict(payload)).encode() + b"\n")
            data = b""
            while not data.endswith(b"\n"):
                chunk = sock.recv(MAX_REQUEST_BYTES)
                if not chunk:
                    break
                data += chunk
        except TimeoutError as exc:
            raise PodkitTimeout(f"the supervisor did not answer within {timeout:g}s") from exc
        except OSError as exc:
            raise PodkitError(f"lost the supervisor on {path}: {exc}") from exc
    try:
        answer = json.loads(data)
    except ValueError as exc:
        raise PodkitError("the supervisor closed the connection without an answer") from exc
    if not isinstance(answer, dict):
        raise PodkitError("the supervisor answered something that is not a JSON object")
    if not answer.get("ok"):
        raise UsageError(str(answer.get("error", "refused")))
    return answer


def read_state(state_dir: Path) -> dict[str, Any] | None:
    """The state file the running (or last, killed) supervisor wrote, if any."""
    try:
        data = json.loads((state_dir / STATE_NAME).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def cleanup_leftovers(state_dir: Path) -> list[int]:
    """Kill the process groups a dead supervisor left behind; return the groups killed.

    A group is touched only if its leader still has the start time recorded, or is gone: the
    kernel does not hand out a process id while a group of that id exists, so a group whose
    leader died is still the container's. A leader id reused by another process is left alone.
    The stale state file is removed.
    """
    state = read_state(state_dir)
    if state is None or _pid_alive(int(state.get("pid", 0))):
        return []
    killed = []
    for group in state.get("groups", []):
        pgid, start = int(group.get("pgid", 0)), group.get("start")
        if pgid <= 0 or start is None:
            continue
        now_start = process_start_time(pgid)
        if now_start is not None and now_start != start:
            continue
        try:
            os.killpg(pgid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            continue
        killed.append(pgid)
    with contextlib.suppress(FileNotFoundError):
        (state_dir / STATE_NAME).unlink()
    return killed
