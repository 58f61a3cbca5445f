"""The health adapter's shell: runs each check on its interval, answers probes from the board.

Probes never run a check: ``/healthz``, ``/readyz`` and ``/checks`` read the
:class:`~podkit.adapter.health._board.HealthBoard`, which only the check loops write. A probe
storm therefore costs the adapter some HTTP parsing and the backends nothing.
"""

from __future__ import annotations

import asyncio
import datetime
import json
import time
from collections.abc import Iterable, Iterator, Sequence

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from podkit.adapter.health._board import CheckResult, CheckState, HealthBoard
from podkit.adapter.health._checks import CheckFailed, CheckSpec, run_check
from podkit.runtime.httpserver import Request, Response
from podkit.runtime.logging import get_logger
from podkit.runtime.metrics import CONTENT_TYPE_LATEST, render

DEFAULT_INTERVAL = 5.0  # Kubernetes probes every 10 s by default; checks run twice as often
DEFAULT_TIMEOUT = 1.0  # Kubernetes' probe timeoutSeconds default

log = get_logger("podkit.adapt.health")


def rfc3339(epoch: float | None) -> str | None:
    """``1700000000.5`` -> ``2023-11-14T22:13:20.500000Z`` (None stays None)."""
    if epoch is None:
        return None
    stamp = datetime.datetime.fromtimestamp(epoch, datetime.UTC)
    return stamp.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class _BoardCollector(Collector):
    def __init__(self, board: HealthBoard) -> None:
        self.board = board

    def collect(self) -> Iterator[Metric]:
        up = GaugeMetricFamily(
            "health_check_up", "1 when the check's last run passed.", labels=["check"]
        )
        required = GaugeMetricFamily(
            "health_check_required", "1 when readiness needs the check.", labels=["check"]
        )
        latency = GaugeMetricFamily(
            "health_check_duration_seconds",
            "How long the check's last run took.",
            labels=["check"],
        )
        runs = CounterMetricFamily("health_check_runs", "Runs of the check.", labels=["check"])
        failures = CounterMetricFamily(
            "health_check_failures", "Runs of the check that did not pass.", labels=["check"]
        )
        for status in self.board.statistics():
            up.add_metric([status.name], 1.0 if status.state is CheckState.PASSING else 0.0)
            required.add_metric([status.name], 1.0 if status.required else 0.0)
            latency.add_metric([status.name], status.latency or 0.0)
            runs.add_metric([status.name], float(status.runs))
            failures.add_metric([status.name], float(status.failures))
        ready = GaugeMetricFamily("health_ready", "1 when every required check passes.")
        ready.add_metric([], 1.0 if self.board.ready() else 0.0)
        yield from (up, required, latency, runs, failures, ready)


class HealthAdapter:
    """Run ``checks`` every ``interval`` seconds and answer probes about them.

    Args:
        checks: the checks, in the order they are listed.
        interval: seconds from the start of one run of a check to the start of its next.
        timeout: seconds one run may take before it counts as failed.
        required: names readiness needs (``None``: every check).

    Raises:
        ConfigError: duplicate names, or ``required`` names an unknown check.
    """

    def __init__(
        self,
        checks: Sequence[CheckSpec],
        *,
        interval: float = DEFAULT_INTERVAL,
        timeout: float = DEFAULT_TIMEOUT,
        required: Iterable[str] | None = None,
    ) -> None:
        self.checks = list(checks)
        self.interval = interval
        self.timeout = timeout
        self.board = HealthBoard([(c.name, c.display) for c in self.checks], required=required)
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(self.collector())

    def collector(self) -> Collector:
        """The ``health_*`` metrics, to register in another registry (the admin endpoint's)."""
        return _BoardCollector(self.board)

    async def run_once(self, spec: CheckSpec) -> CheckResult:
        """Run one check now and record its result."""
        started = time.monotonic()
        try:
            await run_check(spec, timeout=self.timeout)
            result = CheckResult(True, time.monotonic() - started)
        except CheckFailed as exc:
            result = CheckResult(False, time.monotonic() - started, str(exc))
        if self.board.record(spec.name, result, time.time()):
            status = self.board.status(spec.name)
            fields = {"check": spec.name, "state": status.state.value}
            if result.error:
                fields["error"] = result.error
            (log.info if result.ok else log.warning)("check changed state", extra=fields)
        return result

    async def _serve_check(self, spec: CheckSpec) -> None:
        loop = asyncio.get_running_loop()
        next_start = loop.time()
        while True:
            await self.run_once(spec)
            next_start = max(next_start + self.interval, loop.time())
            await asyncio.sleep(next_start - loop.time())

    async def serve(self) -> None:
        """Run every check on its interval until cancelled."""
        async with asyncio.TaskGroup() as group:
            for spec in self.checks:
                group.create_task(self._serve_check(spec), name=f"check-{spec.name}")

    def checks_json(self) -> str:
        body = {
            "ready": self.board.ready(),
            "interval_seconds": self.interval,
            "timeout_seconds": self.timeout,
            "checks": [
                {
                    **status.to_dict(),
                    "since": rfc3339(status.since),
                    "last_run": rfc3339(status.last_run),
                }
                for status in self.board.statistics()
            ],
        }
        return json.dumps(body, indent=2) + "\n"

    async def handle(self, request: Request) -> Response:
        """Answer ``/healthz``, ``/livez``, ``/readyz[/NAME]``, ``/checks`` and ``/metrics``."""
        if request.method not in ("GET", "HEAD"):
            return Response.text(405, "method not allowed\n", headers=[("Allow", "GET, HEAD")])
        path = request.path.rstrip("/") or "/"
        query = request.query
        verbose = "verbose" in query or "verbose" in request.target.partition("?")[2].split("&")
        if path in ("/healthz", "/livez"):
            name = path[1:]
            return Response.text(200, f"[+]ping ok\n{name} check passed\n" if verbose else "ok\n")
        if path == "/readyz":
            exclude = [name for value in query.get("exclude", []) for name in value.split(",")]
            ready = self.board.ready(exclude=exclude)
            if ready and not verbose:
                return Response.text(200, "ok\n")
            return Response.text(200 if ready else 503, self.board.verbose(exclude=exclude))
        if path.startswith("/readyz/"):
            name = path.removeprefix("/readyz/")
            if name not in self.board.names:
                return Response.text(404, f"no check named {name!r}\n")
            status = self.board.status(name)
            if status.state is CheckState.PASSING:
                return Response.text(200, "ok\n")
            reason = status.last_error or "not checked yet"
            return Response.text(503, f"[-]{name} failed: {reason}\n")
        if path == "/checks":
            return Response.json(200, self.checks_json())
        if path == "/metrics":
            return Response(200, [("Content-Type", CONTENT_TYPE_LATEST)], render(self.registry))
        return Response.text(404, "not found\n")
