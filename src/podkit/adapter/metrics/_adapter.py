"""The metrics adapter's shell: a scrape reads the source within the timeout and answers a
valid page whatever happened.

Each ``GET /metrics`` collects from the source at that moment (nothing is cached between
scrapes, as the Prometheus exporters do), bounded by the timeout. Whatever the outcome the
page is valid: ``<prefix>_up`` is 1 or 0, ``<prefix>_scrape_duration_seconds`` says how long
it took, and when the source is down ``<prefix>_scrape_error{reason="..."} 1`` says why
(the reason is also logged when ``up`` changes), never a 500 without metrics.
"""

from __future__ import annotations

import asyncio
import time

import httpx

from podkit.adapter.metrics._exposition import CONTENT_TYPE, MetricsPage
from podkit.adapter.metrics._sources import Source, SourceDown
from podkit.errors import PodkitError
from podkit.runtime.httpserver import Request, Response
from podkit.runtime.logging import get_logger

DEFAULT_SCRAPE_TIMEOUT = 2.0  # well inside Prometheus' default scrape_timeout of 10 s
MAX_REASON_CHARS = 200  # of the reason label: a label value is not a log

log = get_logger("podkit.adapt.metrics")


class MetricsAdapter:
    """Scrape ``source`` on each request.

    Args:
        source: what to read.
        prefix: the names' prefix (default: the source's namespace: ``redis``, ``pg``...; for
            map-file sources, only what is given here goes in front of the mapped names).
        timeout: seconds a scrape may take before the source counts as down.
    """

    def __init__(
        self,
        source: Source,
        *,
        prefix: str | None = None,
        timeout: float = DEFAULT_SCRAPE_TIMEOUT,
    ) -> None:
        self.source = source
        self.namespace = prefix or source.namespace
        self.collect_prefix = (prefix or "") if source.mapped else self.namespace
        self.timeout = timeout
        self.scrapes = 0
        self.failures = 0
        self.up: bool | None = None
        self.last_error: str | None = None
        self._inflight: asyncio.Future[MetricsPage] | None = None

    async def scrape(self) -> MetricsPage:
        """Collect one page (never raises for a source that is down).

        Scrapes that arrive while one is reading the source share its page: two Prometheus
        servers (or an impatient person with curl) do not double the load on the source.
        """
        if self._inflight is None:
            self._inflight = asyncio.ensure_future(self._scrape())
            self._inflight.add_done_callback(self._clear_inflight)
        return await asyncio.shield(self._inflight)

    def _clear_inflight(self, _: asyncio.Future[MetricsPage]) -> None:
        self._inflight = None

    async def _scrape(self) -> MetricsPage:
        started = time.monotonic()
        ns = self.namespace
        self.scrapes += 1
        collected = MetricsPage()
        error: str | None = None
        try:
            async with asyncio.timeout(self.timeout):
                await self.source.collect(collected, self.collect_prefix, self.timeout)
        except TimeoutError:
            error = f"timed out after {self.timeout:g}s"
        except SourceDown as exc:
            error = str(exc)
        except ConnectionRefusedError:
            error = "connection refused"
        except (OSError, asyncio.IncompleteReadError, httpx.HTTPError, PodkitError) as exc:
            error = _reason(exc)
        duration = time.monotonic() - started
        page = MetricsPage()
        page.add(f"{ns}_up", 0 if error else 1, help=f"1 when {self.source.description} was read.")
        if error is None:
            for family in collected.families():
                target = page.family(family.name, family.type, family.help)
                if target is not None:
                    target.samples.update(family.samples)
        else:
            self.failures += 1
            page.add(
                f"{ns}_scrape_error",
                1,
                help="Why the last scrape failed.",
                labels={"reason": error[:MAX_REASON_CHARS]},
            )
        page.add(
            f"{ns}_scrape_duration_seconds",
            duration,
            help="How long this scrape of the source took.",
        )
        page.add(
            f"{ns}_exporter_scrapes_total",
            self.scrapes,
            type="counter",
            help="Scrapes of the source since the adapter started.",
        )
        page.add(
            f"{ns}_exporter_scrape_failures_total",
            self.failures,
            type="counter",
            help="Scrapes that found the source down.",
        )
        up = error is None
        if up != self.up:
            if up:
                log.info("source up", extra={"source": self.source.description})
            else:
                log.warning(
                    "source down", extra={"source": self.source.description, "reason": error}
                )
        self.up, self.last_error = up, error
        return page

    async def handle(self, request: Request) -> Response:
        """``/metrics`` scrapes; ``/healthz`` says the adapter runs; ``/`` links to the page."""
        if request.method not in ("GET", "HEAD"):
            return Response.text(405, "method not allowed\n", headers=[("Allow", "GET, HEAD")])
        if request.path == "/metrics":
            page = await self.scrape()
            return Response(200, [("Content-Type", CONTENT_TYPE)], page.render())
        if request.path == "/healthz":
            return Response.text(200, "ok\n")
        if request.path == "/":
            return Response.text(
                200, f"podkit metrics adapter for {self.source.description}: /metrics\n"
            )
        return Response.text(404, "not found\n")


def _reason(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror.lower()
    if isinstance(exc, asyncio.IncompleteReadError):
        return "connection closed"
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
