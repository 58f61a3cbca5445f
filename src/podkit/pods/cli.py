"""``podkit up``, ``podkit status``, ``podkit scale`` and ``podkit down``.

``up`` runs in the foreground; the other three talk to it over the control socket in the state
directory (``.podkit/`` of the working directory, so run them from the same directory).
"""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

import click

from podkit.errors import PodkitTimeout, UsageError
from podkit.pods.model import json_schema, load_podfile
from podkit.pods.supervisor import (
    DEFAULT_STATE_DIR,
    NotRunning,
    PodSupervisor,
    cleanup_leftovers,
    read_state,
    request,
)

DEFAULT_PODFILE = "examples/quickstart.yaml"
DEFAULT_DOWN_TIMEOUT = 60.0  # above the default stop grace (15 s) of a few pods in sequence
_POLL = 0.05

_state_dir_option = click.option(
    "--state-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=str(DEFAULT_STATE_DIR),
    show_default=True,
    help="Where the supervisor keeps its control socket, state, logs and replica directories.",
)


@click.command("up")
@click.argument("file", required=False, default=DEFAULT_PODFILE)
@_state_dir_option
@click.option(
    "--check",
    is_flag=True,
    default=False,
    show_default=True,
    help="Validate the pod file and exit without starting anything.",
)
@click.option(
    "--schema",
    is_flag=True,
    default=False,
    show_default=True,
    help="Print the pod file's JSON Schema and exit.",
)
def up_command(file: str, state_dir: Path, check: bool, schema: bool) -> int:
    """Run the pods of FILE on this machine until Ctrl-C or `podkit down`.

    Pods start in dependency order (`after`), each replica on its own loopback address
    127.0.P.R; every container's output is printed with a `pod-replica/container |` prefix
    and kept under the state directory. FILE defaults to the quick-start pod file.
    """
    if schema:
        click.echo(json.dumps(json_schema(), indent=2))
        return 0
    state_dir = state_dir.absolute()
    podfile = load_podfile(file, state_dir=state_dir)
    if check:
        names = ", ".join(podfile.pods)
        click.echo(f"{file}: ok ({len(podfile.pods)} pods: {names})")
        return 0
    supervisor = PodSupervisor(podfile, source=file, state_dir=state_dir)
    return asyncio.run(supervisor.run())


@click.command("status")
@_state_dir_option
@click.option(
    "--json", "as_json", is_flag=True, default=False, show_default=True, help="Print JSON."
)
def status_command(state_dir: Path, as_json: bool) -> int:
    """Show every container of the running pods: state, pid, restarts, ready, address."""
    try:
        status = request(state_dir.absolute(), {"op": "status"})
    except NotRunning as exc:
        stale = read_state(state_dir)
        if stale is not None:
            raise UsageError(
                f"{exc}; the last supervisor (pid {stale.get('pid')}) is gone: "
                "`podkit down` cleans up what it left"
            ) from exc
        raise
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
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        click.echo("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())
    return 0


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
    type=float,
    default=DEFAULT_DOWN_TIMEOUT,
    show_default=True,
    help="Seconds to wait for every container to stop.",
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


def _alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    # A zombie (state Z) has exited; only its parent has not collected it yet.
    return stat.rpartition(")")[2].split()[0] != "Z"
