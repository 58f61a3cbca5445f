"""``podkit up``, ``podkit status``, ``podkit scale`` and ``podkit down``.

``up`` runs in the foreground; the other three talk to it over the control socket in the state
directory (``.podkit/`` of the working directory, so run them from the same directory).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import click

from podkit.errors import ListenError, PodkitError, PodkitTimeout, UsageError
from podkit.pods.dashboard import DEFAULT_DASHBOARD_PORT
from podkit.pods.logs import (
    DEFAULT_LOG_MAX_BYTES,
    LogFollower,
    LogSource,
    log_sources,
    merged,
    parse_since,
    select_sources,
)
from podkit.pods.model import PodFile, json_schema, load_podfile
from podkit.pods.supervisor import (
    DEFAULT_STATE_DIR,
    NotRunning,
    PodSupervisor,
    check_addresses_free,
    cleanup_leftovers,
    read_state,
    request,
)
from podkit.runtime.cli_options import DURATION, HOSTPORT, SIZE
from podkit.runtime.config import HostPort, format_duration, format_size

DEFAULT_PODFILE = "examples/quickstart.yaml"
EXIT_NOT_RUNNING = 3  # `podkit status` with nothing running: LSB's "program is not running"
DEFAULT_DOWN_TIMEOUT = 60.0  # above the default stop grace (15 s) of a few pods in sequence
DEFAULT_WAIT_TIMEOUT = 120.0  # `up -d`: Python components on a loaded machine, in `after` order
DEFAULT_RESTART_TIMEOUT = 60.0  # `restart`: a stop grace (15 s) plus a start
FOLLOW_POLL = 0.2  # `logs -f`: how often the files are read for new lines
FIGURES_TIMEOUT = 1.0  # `status`: an admin endpoint slower than this is reported as silent
FIGURES_THREADS = 16  # `status`: admin endpoints asked at once
SUPERVISOR_LOG = "supervisor.log"  # the detached supervisor's own output, in the state dir
_POLL = 0.05

_state_dir_option = click.option(
    "--state-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=str(DEFAULT_STATE_DIR),
    show_default=True,
    help="Where the supervisor keeps its control socket, state, logs and replica directories.",
)


def _subnet_option(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    if value is None:
        return None
    from podkit.pods.model import parse_subnet

    try:
        return parse_subnet(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from exc


@click.command("up")
@click.argument("file", required=False, default=DEFAULT_PODFILE)
@_state_dir_option
@click.option(
    "-d",
    "--detach",
    is_flag=True,
    default=False,
    show_default=True,
    help="Run in the background: return once every pod is ready (exit 0), or stop everything "
    "and say why (exit 1).",
)
@click.option(
    "--wait-timeout",
    type=DURATION,
    default=format_duration(DEFAULT_WAIT_TIMEOUT),
    show_default=True,
    help="With --detach: how long every pod has to become ready.",
)
@click.option(
    "--log-max-size",
    type=SIZE,
    default=format_size(DEFAULT_LOG_MAX_BYTES),
    show_default=True,
    help="Rotate a container's log file at this size (one older file is kept).",
)
@click.option(
    "--subnet",
    default=None,
    callback=_subnet_option,
    help="Run the pods in this loopback block, 127.N.0.0/16 (overrides the file's `subnet`).",
)
@click.option(
    "--dashboard",
    "dashboard",
    type=HOSTPORT,
    default=None,
    help=f"Serve the dashboard here [default: the project's 127.N.0.1:{DEFAULT_DASHBOARD_PORT}, "
    "or a free port when that is taken].",
)
@click.option(
    "--no-dashboard",
    is_flag=True,
    default=False,
    show_default=True,
    help="Serve no dashboard.",
)
@click.option(
    "--check",
    is_flag=True,
    default=False,
    show_default=True,
    help="Validate the pod file and each component's options, and exit without starting.",
)
@click.option(
    "--schema",
    is_flag=True,
    default=False,
    show_default=True,
    help="Print the pod file's JSON Schema and exit.",
)
def up_command(
    file: str,
    state_dir: Path,
    detach: bool,
    wait_timeout: float,
    log_max_size: int,
    subnet: str | None,
    dashboard: HostPort | None,
    no_dashboard: bool,
    check: bool,
    schema: bool,
) -> int:
    """Run the pods of FILE on this machine until Ctrl-C or `podkit down`.

    Pods start in dependency order (`after`), each replica on its own loopback address
    127.0.P.R; every container's output is printed with a `pod-replica/container |` prefix
    and kept under the state directory (`podkit logs`). FILE defaults to the quick-start pod
    file. With -d, `up` returns once every pod is ready and the pods run in the background.
    """
    if schema:
        click.echo(json.dumps(json_schema(), indent=2))
        return 0
    state_dir = state_dir.absolute()
    if dashboard is not None and no_dashboard:
        raise UsageError("--dashboard and --no-dashboard exclude each other")
    podfile = load_podfile(file, state_dir=state_dir, subnet=subnet)
    if check:
        names = ", ".join(podfile.pods)
        click.echo(f"{file}: ok ({len(podfile.pods)} pods: {names})")
        return 0
    if dashboard is not None and not no_dashboard:
        _check_free(dashboard)
    if detach:
        return _up_detached(
            file,
            podfile,
            state_dir=state_dir,
            wait_timeout=wait_timeout,
            log_max_size=log_max_size,
            subnet=subnet,
            dashboard=["--no-dashboard"]
            if no_dashboard
            else (["--dashboard", str(dashboard)] if dashboard is not None else []),
        )
    where: tuple[str, int] | None = None
    if not no_dashboard:
        default = (f"127.{podfile.block}.0.1", DEFAULT_DASHBOARD_PORT)
        where = (dashboard.host, dashboard.port) if dashboard is not None else default
    supervisor = PodSupervisor(
        podfile,
        source=file,
        state_dir=state_dir,
        log_max_bytes=log_max_size,
        dashboard=where,
        dashboard_fallback=dashboard is None,
    )
    return asyncio.run(supervisor.run())


def _up_detached(
    file: str,
    podfile: PodFile,
    *,
    state_dir: Path,
    wait_timeout: float,
    log_max_size: int,
    subnet: str | None,
    dashboard: list[str],
) -> int:
    """Start a supervisor in its own session and wait until every pod is ready."""
    try:
        running = request(state_dir, {"op": "status"})
    except NotRunning:
        pass
    else:
        raise UsageError(
            f"pods from {running.get('file')} already run here (supervisor pid "
            f"{running.get('pid')}); stop them with `podkit down`"
        )
    check_addresses_free(podfile, source=file, state_dir=state_dir)
    state_dir.mkdir(parents=True, exist_ok=True)
    argv = [sys.executable, "-m", "podkit", "up", file, "--state-dir", str(state_dir)]
    argv += ["--log-max-size", str(log_max_size)]
    if subnet is not None:
        argv += ["--subnet", subnet]
    argv += dashboard
    log_path = state_dir / SUPERVISOR_LOG
    with log_path.open("wb") as log:
        child = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        status = _wait_ready(child, state_dir, log_path, timeout=wait_timeout)
    except BaseException:
        _stop_detached(child, state_dir)
        raise
    for pod in status["ready_pods"]:
        rows = [c for c in status["containers"] if c["pod"] == pod]
        addresses = list(dict.fromkeys(a for c in rows for a in c["address"].split()))
        where = f" at {' '.join(addresses)}" if addresses else ""
        click.echo(f"podkit up: {pod} ready{where}")
    if status.get("dashboard"):
        click.echo(f"podkit up: dashboard at {status['dashboard']}")
    click.echo(
        f"podkit up: running in the background (supervisor pid {child.pid}); "
        "`podkit logs -f` follows the output, `podkit down` stops them"
    )
    return 0


def _check_free(address: HostPort) -> None:
    """Raise if the dashboard's address cannot be bound, before anything starts."""
    family = socket.AF_INET6 if ":" in address.host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((address.host, address.port))
        except OSError as exc:
            reason = "address already in use" if exc.errno == errno.EADDRINUSE else exc.strerror
            raise ListenError(address.host, address.port, reason or str(exc)) from exc


def _wait_ready(
    child: subprocess.Popen[bytes], state_dir: Path, log_path: Path, *, timeout: float
) -> dict[str, Any]:
    """Poll the new supervisor until every pod is ready; raise with the reason otherwise."""
    deadline = time.monotonic() + timeout
    status: dict[str, Any] | None = None
    while True:
        code = child.poll()
        if code is not None:
            raise PodkitError(
                f"the supervisor exited with code {code}: {_last_error(log_path)} "
                f"(its output: {log_path})"
            )
        try:
            status = request(state_dir, {"op": "status"})
        except NotRunning:
            status = None
        if status is not None:
            failed = [p for p in status["problems"] if p["failed"]] or status["problems"]
            if failed:
                problem = failed[0]
                for line in problem["output"]:
                    click.echo(f"    {line}", err=True)
                last = next((line for line in reversed(problem["output"]) if line.strip()), "")
                reason = f"{problem['container']}: {problem['message']}"
                raise PodkitError(f"{reason}: {last.strip()}" if last else reason)
            wanted = [p for p, n in status["replicas"].items() if n > 0]
            if all(p in status["ready_pods"] for p in wanted):
                return status
        if time.monotonic() > deadline:
            waiting = "no answer from the supervisor"
            if status is not None:
                rows = [c for c in status["containers"] if not c["ready"]]
                waiting = ", ".join(
                    f"{c['pod']}-{c['replica']}/{c['container']} ({c['state']})" for c in rows
                )
            raise PodkitTimeout(
                f"not every pod was ready within {format_duration(timeout)}: waiting for "
                f"{waiting}; stopped everything (see `podkit logs`)"
            )
        time.sleep(_POLL)


def _last_error(log_path: Path) -> str:
    try:
        lines = log_path.read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError:
        return "no output"
    errors = [line for line in lines if ": error: " in line]
    return (errors or [line for line in lines if line.strip()] or ["no output"])[-1]


def _stop_detached(child: subprocess.Popen[bytes], state_dir: Path) -> None:
    """Stop a supervisor started by ``up -d`` and everything it started."""
    with contextlib.suppress(PodkitError):
        request(state_dir, {"op": "down"})
    try:
        child.wait(DEFAULT_DOWN_TIMEOUT)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(child.pid, signal.SIGKILL)
        child.wait()
    cleanup_leftovers(state_dir)


@click.command("status")
@_state_dir_option
@click.option(
    "--json", "as_json", is_flag=True, default=False, show_default=True, help="Print JSON."
)
def status_command(state_dir: Path, as_json: bool) -> int:
    """Show every container of the running pods: state, pid, restarts, ready, address, then
    one line of live figures per component with an admin endpoint (from its GET /status).

    Exits 3 when no pods run from the state directory.
    """
    try:
        status = request(state_dir.absolute(), {"op": "status"})
    except NotRunning as exc:
        stale = read_state(state_dir)
        message = str(exc)
        if stale is not None:
            message += (
                f"; the last supervisor (pid {stale.get('pid')}) is gone: "
                "`podkit down` cleans up what it left"
            )
        raise NothingRunning(message) from exc
    figures = _figures(status["containers"])
    for row in status["containers"]:
        row["figures"] = figures.get(f"{row['pod']}-{row['replica']}/{row['container']}")
    if as_json:
        click.echo(json.dumps(status, indent=2))
        return 0
    click.echo(f"{status['file']} (supervisor pid {status['pid']})")
    rows = [("POD", "CONTAINER", "STATE", "PID", "RESTARTS", "READY", "ADDRESS")]
    rows += [
        (
            f"{c['pod']}-{c['replica']}",
            c["container"],
            c["state"] if c["exit_code"] is None else f"{c['state']} ({c['exit_code']})",
            str(c["pid"] or "-"),
            str(c["restarts"]),
            "yes" if c["ready"] else "no",
            c["address"],
        )
        for c in status["containers"]
    ]
    _table(rows)
    if figures:
        click.echo("")
        lines = [("COMPONENT", "FIGURES (admin /status)")]
        for name, body in figures.items():
            lines.append((name, _figures_line(body)))
        _table(lines)
    return 0


def _table(rows: Sequence[tuple[str, ...]]) -> None:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        click.echo("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())


def _figures(containers: list[dict[str, Any]]) -> dict[str, dict[str, Any] | None]:
    """``GET /status`` of every running container with an admin endpoint, fetched at once;
    None for one that does not answer."""
    targets = {
        f"{c['pod']}-{c['replica']}/{c['container']}": c["admin"]
        for c in containers
        if c.get("admin") and c["state"] == "running"
    }
    if not targets:
        return {}
    with ThreadPoolExecutor(max_workers=min(FIGURES_THREADS, len(targets))) as pool:
        answers = pool.map(_fetch_status, targets.values())
        return dict(zip(targets, answers, strict=True))


def _fetch_status(address: str) -> dict[str, Any] | None:
    try:
        with urllib.request.urlopen(
            f"http://{address}/status", timeout=FIGURES_TIMEOUT
        ) as response:
            body = json.loads(response.read())
    except (OSError, ValueError):
        return None
    return body if isinstance(body, dict) else None


def _figures_line(body: dict[str, Any] | None) -> str:
    if body is None:
        return "admin endpoint not answering"
    summary = body.get("summary")
    if isinstance(summary, str) and summary:
        return summary
    reason = body.get("reason")
    return f"{body.get('phase', '?')}" + (f" ({reason})" if reason else "")


@click.command("scale")
@click.argument("pod")
@click.argument("replicas", type=click.IntRange(min=0))
@_state_dir_option
def scale_command(pod: str, replicas: int, state_dir: Path) -> int:
    """Run REPLICAS replicas of POD: new replicas start, the highest-numbered ones stop."""
    request(state_dir.absolute(), {"op": "scale", "pod": pod, "replicas": replicas})
    click.echo(f"{pod}: scaling to {replicas}")
    return 0


@click.command("down")
@_state_dir_option
@click.option(
    "--timeout",
    type=DURATION,
    default=format_duration(DEFAULT_DOWN_TIMEOUT),
    show_default=True,
    help="How long to wait for every container to stop (500ms, 5s, 1m).",
)
def down_command(state_dir: Path, timeout: float) -> int:
    """Stop the running pods in reverse order (SIGTERM, then SIGKILL after the grace period).

    If the supervisor itself was killed, kill the process groups it left behind.
    """
    state_dir = state_dir.absolute()
    try:
        answer = request(state_dir, {"op": "down"})
    except NotRunning:
        killed = cleanup_leftovers(state_dir)
        if killed:
            plural = "s" if len(killed) != 1 else ""
            click.echo(
                f"the supervisor was gone; killed {len(killed)} leftover process group{plural}"
            )
        else:
            click.echo("nothing runs here")
        return 0
    pid = int(answer["pid"])
    deadline = time.monotonic() + timeout
    while _alive(pid):
        if time.monotonic() > deadline:
            raise PodkitTimeout(f"the supervisor (pid {pid}) did not stop within {timeout:g}s")
        time.sleep(_POLL)
    click.echo("stopped")
    return 0


@click.command("restart")
@click.argument("pod")
@_state_dir_option
@click.option(
    "--timeout",
    type=DURATION,
    default=format_duration(DEFAULT_RESTART_TIMEOUT),
    show_default=True,
    help="How long the pod has to stop and be ready again.",
)
def restart_command(pod: str, state_dir: Path, timeout: float) -> int:
    """Stop every container of POD and start it again; return once POD is ready.

    Containers that gave up (exited, failed) start again too.
    """
    state_dir = state_dir.absolute()
    request(state_dir, {"op": "restart", "pod": pod})
    deadline = time.monotonic() + timeout
    while True:
        status = request(state_dir, {"op": "status"})
        rows = [c for c in status["containers"] if c["pod"] == pod]
        if pod in status["failed_pods"]:
            failed = [p for p in status["problems"] if p["container"].startswith(f"{pod}-")]
            reason = f": {failed[-1]['message']}" if failed else ""
            raise PodkitError(f"{pod} failed after the restart{reason} (see `podkit logs {pod}`)")
        if all(c["ready"] and c["state"] in ("running", "exited") for c in rows):
            click.echo(f"{pod}: restarted, ready")
            return 0
        if time.monotonic() > deadline:
            raise PodkitTimeout(f"{pod} was not ready within {format_duration(timeout)}")
        time.sleep(_POLL)


@click.command("logs")
@click.argument("target", required=False, metavar="[POD[/CONTAINER]]")
@_state_dir_option
@click.option(
    "-f",
    "--follow",
    is_flag=True,
    default=False,
    show_default=True,
    help="Keep printing new lines.",
)
@click.option(
    "--since",
    default=None,
    help="Only lines from this long ago (30s, 5m, 2h) or since this time (2026-12-07T03:04Z).",
)
@click.option(
    "-n",
    "--tail",
    type=click.IntRange(min=0),
    default=None,
    help="Only the last N lines of each container (then new ones with -f).",
)
@click.option(
    "-t",
    "--timestamps",
    is_flag=True,
    default=False,
    show_default=True,
    help="Show the time each line was read (UTC).",
)
def logs_command(
    target: str | None,
    state_dir: Path,
    follow: bool,
    since: str | None,
    tail: int | None,
    timestamps: bool,
) -> int:
    """Print the output of the pods' containers, kept under the state directory.

    TARGET is a pod (`web`), a replica (`web-2`), or either with a container (`web/app`,
    `web-2/app`); without it, every container. Lines of several containers are merged in time
    order and prefixed `pod-replica/container |`. With -f, follows new lines until the pods
    stop (or Ctrl-C).
    """
    logs_dir = state_dir.absolute() / "logs"
    selected = select_sources(log_sources(logs_dir), target)
    since_stamp = parse_since(since, now=time.time()) if since is not None else ""
    several = len(selected) > 1

    def show(when: str, source: LogSource, text: str) -> None:
        prefix = f"{source.label} | " if several else ""
        stamp_ = f"{when} " if timestamps and when else ""
        click.echo(f"{prefix}{stamp_}{text}")

    for when, source, text in merged(selected, since=since_stamp, tail=tail):
        show(when, source, text)
    if not follow:
        return 0
    followers = {s.path: LogFollower(s) for s in selected}
    try:
        while True:
            alive = _supervisor_alive(state_dir.absolute())
            for source in select_sources(log_sources(logs_dir), target):
                if source.path not in followers:  # a replica scaled up meanwhile
                    followers[source.path] = LogFollower(source, at_end=False)
                    several = several or len(followers) > 1
            batch = [
                (when, follower.source, text)
                for follower in followers.values()
                for when, text in follower.read_new()
            ]
            batch.sort(key=lambda row: (row[0], row[1]))
            for when, source, text in batch:
                if when >= since_stamp:
                    show(when, source, text)
            if not alive:
                return 0  # the pods stopped and every line they wrote is printed
            time.sleep(FOLLOW_POLL)  # the follow period, not a wait for a state
    finally:
        for follower in followers.values():
            follower.close()


def _supervisor_alive(state_dir: Path) -> bool:
    state = read_state(state_dir)
    return state is not None and _alive(int(state.get("pid", 0)))


class NothingRunning(PodkitError):
    """``podkit status`` found no supervisor (exit code 3)."""

    exit_code = EXIT_NOT_RUNNING


def _alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    # A zombie (state Z) has exited; only its parent has not collected it yet.
    return stat.rpartition(")")[2].split()[0] != "Z"
