"""``podkit elect``: run a command only while this process leads an election.

Two forms share one command::

    podkit elect --backend URL --name NAME [--ttl 2s] [--id ID] [--once] -- COMMAND [ARGS]...
    podkit elect status --backend URL --name NAME [--json]

The first campaigns; while it leads it runs COMMAND with ``PODKIT_FENCING_TOKEN``,
``PODKIT_LEADER_ID`` and ``PODKIT_ELECTION`` in its environment. A command that exits by
itself ends the term: after ``--restart-delay`` this process campaigns again and runs it
again when it wins. With ``--once`` it runs once per term: this process keeps leading without
it until the term ends. When leadership is lost it sends SIGTERM to the command's process
group, SIGKILL after ``--grace``, and campaigns again. A backend that cannot be reached is
retried with backoff; after ``--backend-timeout`` of failures the process exits 1.
The command is also killed if ``podkit elect`` itself dies (Linux: parent-death signal), so a
leader killed with SIGKILL leaves no command behind.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import json
import os
import shutil
import signal
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import click
from prometheus_client import Counter, Gauge

from podkit.backends.leases import open_lease_backend
from podkit.cli import BytesArgument, PodkitCommand, PodkitGroup, check_text_parameters
from podkit.runtime import Request, Response, Runtime, RuntimeOptions, run_component
from podkit.runtime.cli_options import DURATION, runtime_options
from podkit.runtime.config import format_duration
from podkit.serving.election.election import Election, Term, default_identity
from podkit.serving.election.lease import DEFAULT_TTL

DEFAULT_BACKEND = "sqlite:///.podkit/election.db"
DEFAULT_GRACE = 2.0  # after SIGTERM, how long a command that lost leadership may take to exit
DEFAULT_RESTART_DELAY = 1.0  # lets another replica take over a command that keeps exiting
DEFAULT_BACKEND_TIMEOUT = 60.0  # an outage longer than a backend restart: exit and say so
_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:  # pragma: no cover - runs in the forked child
    """In the command's process: receive SIGKILL when ``podkit elect`` dies."""
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


def _status(returncode: int) -> int:
    """A shell-style exit status: 128 + N for a command killed by signal N."""
    return 128 - returncode if returncode < 0 else returncode


@dataclass
class ElectOptions:
    """What ``podkit elect`` was asked to do."""

    backend: str
    name: str
    ttl: float
    identity: str
    once: bool
    grace: float
    restart_delay: float
    argv: list[str]
    backend_timeout: float = DEFAULT_BACKEND_TIMEOUT


class CommandRunner:
    """Runs the command for one term and stops it when the term ends."""

    def __init__(self, rt: Runtime, options: ElectOptions) -> None:
        self.rt = rt
        self.options = options

    async def run(self, term: Term) -> tuple[int, bool]:
        """Run the command until it exits or ``term.lost`` is set.

        Returns:
            ``(exit status, exited by itself)``.
        """
        env = dict(os.environ)
        env.update(
            PODKIT_FENCING_TOKEN=str(term.fencing_token),
            PODKIT_LEADER_ID=term.identity,
            PODKIT_ELECTION=term.name,
        )
        process = await asyncio.create_subprocess_exec(
            *self.options.argv,
            env=env,
            start_new_session=True,
            preexec_fn=_die_with_parent,
        )
        self.rt.log.info("command started", extra={"pid": process.pid, "token": term.fencing_token})
        exited = asyncio.ensure_future(process.wait())
        lost = asyncio.ensure_future(term.lost.wait())
        try:
            await asyncio.wait({exited, lost}, return_when=asyncio.FIRST_COMPLETED)
            if exited.done():
                status = _status(exited.result())
                self.rt.log.info("command exited", extra={"status": status})
                return status, True
            self.rt.log.warning(
                "leadership lost: stopping the command",
                extra={"reason": term.lost_reason, "token": term.fencing_token},
            )
        finally:
            lost.cancel()
            if process.returncode is None:
                await self._terminate(process)
            exited.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.gather(exited, lost, return_exceptions=True)
        assert process.returncode is not None
        status = _status(process.returncode)
        self.rt.log.info("command stopped", extra={"status": status})
        return status, False

    async def _terminate(self, process: asyncio.subprocess.Process) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        try:
            await asyncio.wait_for(process.wait(), self.options.grace)
        except TimeoutError:
            self.rt.log.warning("command ignored SIGTERM: killing it", extra={"pid": process.pid})
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            await process.wait()
        # The command may have left children in its group: none may outlive the term.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(process.pid, signal.SIGKILL)


async def serve_elect(rt: Runtime, options: ElectOptions) -> None:
    """Campaign and run the command while leading, until drained.

    Raises:
        BackendUnavailable: the backend was unreachable for ``options.backend_timeout``.
    """
    is_leader = Gauge(
        "elect_is_leader", "1 while this process leads the election.", registry=rt.registry
    )
    token_gauge = Gauge(
        "elect_fencing_token", "Fencing token of the current term (0 if not leading).",
        registry=rt.registry,
    )  # fmt: skip
    terms = Counter("elect_terms", "Terms this process has led.", registry=rt.registry)
    errors = Counter(
        "elect_backend_errors", "Backend requests that failed, by operation.", ["during"],
        registry=rt.registry,
    )  # fmt: skip

    def on_event(event: str, fields: dict[str, Any]) -> None:
        extra = dict(fields)
        for key in ("lease_left", "retry_in"):  # durations, written as on the command line
            if key in extra:
                extra[key] = format_duration(round(extra[key], 3))
        if event == "leading":
            is_leader.set(1)
            token_gauge.set(fields["token"])
            terms.inc()
            rt.log.info("leading", extra=extra)
        elif event == "renewed":
            rt.log.debug("renewed", extra=extra)
        elif event in ("lost", "resigned", "released"):
            is_leader.set(0)
            token_gauge.set(0)
            level = rt.log.warning if event == "lost" else rt.log.info
            level(f"leadership {event}", extra=extra)
        elif event == "backend_error":
            errors.labels(fields.get("during", "")).inc()
            rt.log.warning("backend error", extra=extra)

    election = Election(
        options.backend, options.name, identity=options.identity, ttl=options.ttl,
        on_event=on_event, backend_timeout=options.backend_timeout,
    )  # fmt: skip
    runner = CommandRunner(rt, options)

    async def election_view(request: Request) -> Response:
        stats = election.statistics()
        body = {
            "election": stats.name,
            "identity": stats.identity,
            "role": stats.role,
            "fencing_token": stats.fencing_token,
            "terms": stats.terms,
            "renewals": stats.renewals,
            "renew_failures": stats.renew_failures,
            "backend_errors": stats.backend_errors,
        }
        return Response.json(200, json.dumps(body))

    rt.add_route("/election", election_view)

    def election_status() -> dict[str, Any]:
        stats = election.statistics()
        seen = stats.last_seen_leader
        leader: str | None
        token: int | None
        if stats.role == "leader":
            leader, token = stats.identity, stats.fencing_token
        else:
            leader = seen.identity if seen is not None else None
            token = seen.token if seen is not None else None
        if leader is None:
            summary = f"{stats.role}; no leader seen"
        else:
            summary = f"{stats.role}; leader {leader}, token {token}"
        return {"role": stats.role, "leader": leader, "fencing_token": token, "summary": summary}

    rt.add_status(election_status)

    async def terms_loop() -> None:
        while True:
            rt.log.info(
                "campaigning", extra={"election": options.name, "identity": election.identity}
            )
            async with election.leadership() as term:
                status, exited = await runner.run(term)
                if exited and options.once:
                    rt.log.info(
                        "the command ran once this term: leading without it until the term ends",
                        extra={"status": status, "token": term.fencing_token},
                    )
                    await term.wait_lost()
            if exited and not options.once:
                # Leadership was given up with the exit: after the pause another replica may
                # take over a command that keeps failing, or this one runs it again.
                await asyncio.sleep(options.restart_delay)

    async with election:
        rt.set_ready()
        work = asyncio.ensure_future(terms_loop())
        draining = asyncio.ensure_future(rt.wait_draining())
        try:
            await asyncio.wait({work, draining}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            draining.cancel()
            if not work.done():
                work.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.gather(draining, return_exceptions=True)
                await work


class ElectGroup(PodkitGroup):
    """``podkit elect [OPTIONS] -- COMMAND...`` runs; ``podkit elect status ...`` observes.

    A first argument naming a subcommand selects it; anything else is the run form, whose
    trailing arguments are the command to run.
    """

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        if args and args[0] in self.commands:
            ctx.meta["podkit.elect.subcommand"] = list(args)
            return []
        return click.Command.parse_args(self, ctx, args)

    def invoke(self, ctx: click.Context) -> Any:
        sub_args = ctx.meta.get("podkit.elect.subcommand")
        if sub_args:
            cmd_name, cmd, rest = self.resolve_command(ctx, sub_args)
            assert cmd is not None
            assert cmd_name is not None
            with cmd.make_context(cmd_name, rest, parent=ctx) as sub_ctx:
                return cmd.invoke(sub_ctx)
        check_text_parameters(ctx)
        return click.Command.invoke(self, ctx)

    def collect_usage_pieces(self, ctx: click.Context) -> list[str]:
        return ["[OPTIONS] -- COMMAND [ARGS]..."]


class _CommandArgument(BytesArgument):
    """The command to run. It stays out of usage lines: ``podkit elect status`` would
    otherwise show it in its own path."""

    def get_usage_pieces(self, ctx: click.Context) -> list[str]:
        return []


def _backend_option(func: Any) -> Any:
    return click.option(
        "--backend",
        default=DEFAULT_BACKEND,
        show_default=True,
        metavar="URL",
        help="Where the lease lives: sqlite:///path.db, redis://host:port/db or etcd://host:port.",
    )(func)


def _name_option(func: Any) -> Any:
    return click.option(
        "--name",
        required=True,
        metavar="NAME",
        help="The election: the processes that share it elect one leader.",
    )(func)


@click.group(cls=ElectGroup, invoke_without_command=True, no_args_is_help=True)
@_backend_option
@_name_option
@click.option(
    "--ttl",
    type=DURATION,
    default=format_duration(DEFAULT_TTL),
    show_default=True,
    help="Lease time: a leader that stops renewing is replaced after about this long.",
)
@click.option(
    "--id",
    "identity",
    default=None,
    metavar="ID",
    help="This process's identity in the election.  [default: HOST-PID-RANDOM]",
)
@click.option(
    "--once",
    is_flag=True,
    help="Run the command once per term (a job that runs once per leadership) and keep "
    "leading; without it a command that exits is run again (after --restart-delay).",
)
@click.option(
    "--grace",
    type=DURATION,
    default=format_duration(DEFAULT_GRACE),
    show_default=True,
    help="After SIGTERM, how long the command may take to exit before SIGKILL.",
)
@click.option(
    "--restart-delay",
    type=DURATION,
    default=format_duration(DEFAULT_RESTART_DELAY),
    show_default=True,
    help="Without --once: pause after the command exits by itself before campaigning again.",
)
@click.option(
    "--backend-timeout",
    type=DURATION,
    default=format_duration(DEFAULT_BACKEND_TIMEOUT),
    show_default=True,
    help="Exit 1 when the backend has been unreachable this long (retried with backoff).",
)
@click.argument(
    "command", cls=_CommandArgument, nargs=-1, type=click.UNPROCESSED, metavar="COMMAND"
)
@runtime_options
def command(
    backend: str,
    name: str,
    ttl: float,
    identity: str | None,
    once: bool,
    grace: float,
    restart_delay: float,
    backend_timeout: float,
    command: Sequence[str],
    runtime: RuntimeOptions,
) -> int:
    """Run COMMAND only while this process leads the election NAME.

    The command gets PODKIT_FENCING_TOKEN (larger in every new term), PODKIT_LEADER_ID and
    PODKIT_ELECTION in its environment. When it exits it is run again, after --restart-delay
    and a new campaign (--once: it runs once per term and this process keeps leading). On
    losing leadership it gets SIGTERM, then SIGKILL after --grace, and this process campaigns
    again. `podkit elect status --help` shows how to see who leads.
    """
    if not command:
        raise click.UsageError("give the command to run after --, e.g. -- python job.py")
    if shutil.which(command[0]) is None:
        raise click.UsageError(f"command not found: {command[0]}")
    open_lease_backend(backend)  # validate the URL now: a bad one is a usage error (exit 2)
    if backend_timeout <= 0:
        raise click.BadParameter("must be more than 0", param_hint="'--backend-timeout'")
    options = ElectOptions(
        backend=backend,
        name=name,
        ttl=ttl,
        identity=identity or default_identity(),
        once=once,
        grace=grace,
        restart_delay=restart_delay,
        argv=list(command),
        backend_timeout=backend_timeout,
    )

    async def main(rt: Runtime) -> None:
        await serve_elect(rt, options)

    return run_component("elect", main, runtime)


@command.command("status", cls=PodkitCommand)
@_backend_option
@_name_option
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
def status(backend: str, name: str, as_json: bool) -> int:
    """Print the leader of election NAME, its fencing token and the time left on its lease."""

    async def observe() -> dict[str, Any]:
        async with open_lease_backend(backend, read_only=True) as opened:
            election = Election(opened, name)
            holder = await election.leader()
        return {
            "election": name,
            "leader": holder.identity if holder else None,
            "token": holder.token if holder else None,
            "expires_in": (
                round(holder.expires_in, 3) if holder and holder.expires_in is not None else None
            ),
        }

    report = asyncio.run(observe())
    if as_json:
        click.echo(json.dumps(report))
    else:
        click.echo(f"election: {name}")
        click.echo(f"leader: {report['leader'] or 'none'}")
        if report["leader"] is not None:
            click.echo(f"token: {report['token']}")
            left = report["expires_in"]
            click.echo(f"expires in: {format_duration(left) if left is not None else 'unknown'}")
    return 0
