"""The dashboard's shell: an HTTP server beside the supervisor, and the scrape loop.

``podkit up`` serves one static page (``static/index.html``: plain HTML, CSS and JavaScript,
hand-drawn SVG charts, no build step), a JSON snapshot at ``GET /api/state``, the same
snapshot as server-sent events at ``GET /events`` after every scrape, and the actions:

* ``POST /api/scale``    ``{"pod": "web", "replicas": 5}``        → the supervisor scales;
* ``POST /api/restart``  ``{"pod": "web"}``                       → the supervisor restarts;
* ``POST /api/drain``    ``{"container": "lb-1/balance", "url": "http://...", "undo": false}``
  → ``POST /backends/drain?url=`` (or ``undrain``) on that balancer's admin endpoint;
* ``POST /api/purge``    ``{"target": "/path"}`` → ``POST /purge?target=`` on every cache.

An action must carry the header ``X-Podkit-Dashboard: 1``: a page of another origin cannot
send it without a CORS preflight this server never grants, so no other site can drive the
pods through a visitor's browser.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from functools import partial
from importlib import resources
from typing import Any, Protocol
from urllib.parse import quote

import httpx

from podkit.pods.dashboard.core import MAX_METRICS_BYTES, SCRAPE_INTERVAL, DashboardCore
from podkit.pods.model import PodFile
from podkit.runtime.httpserver import Request, Response, SimpleHTTPServer
from podkit.runtime.logging import get_logger

DEFAULT_DASHBOARD_PORT = 8400  # `podkit up` serves the page on the project's 127.N.0.1:8400
STATE_INTERVAL = 0.25  # container states are pushed this soon after they change (in-process)
SCRAPE_TIMEOUT = 1.0  # a /metrics page slower than this is marked stale for this round
ACTION_TIMEOUT = 5.0  # an admin endpoint that takes longer to drain or purge has failed
MAX_ACTION_BYTES = 4096  # actions are tiny JSON objects
ACTION_HEADER = "X-Podkit-Dashboard"
MAX_EVENT_CLIENTS = 32  # open pages at once; more get 503
_HEARTBEAT = 15.0  # an idle event stream sends a comment this often, so proxies keep it

log = get_logger("podkit.dashboard")


class Supervised(Protocol):
    """What the dashboard needs of the supervisor."""

    podfile: PodFile

    def status(self) -> dict[str, Any]: ...

    def control(self, request: dict[str, Any]) -> Awaitable[dict[str, Any]]: ...


def _page() -> bytes:
    return resources.files("podkit.pods.dashboard").joinpath("static/index.html").read_bytes()


class Dashboard:
    """The dashboard of one supervisor (use :func:`open_dashboard`)."""

    def __init__(self, supervisor: Supervised, *, host: str, port: int) -> None:
        self.supervisor = supervisor
        self.core = DashboardCore(supervisor.podfile)
        self.host = host
        self.port = port
        self._snapshot: dict[str, Any] = self.core.snapshot(supervisor.status())
        self._version = 0
        self._changed = asyncio.Condition()
        self._clients = 0
        self._http = httpx.AsyncClient(timeout=SCRAPE_TIMEOUT)
        self._page = _page()
        self._components = {
            (pod_name, cname): (c.component or "").split()[0] if c.component else ""
            for pod_name, pod in supervisor.podfile.pods.items()
            for cname, c in pod.containers.items()
        }

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}/"

    # -- the scrape loop -----------------------------------------------------------------------

    async def serve_scrapes(self) -> None:
        """Read every component's /metrics each ``SCRAPE_INTERVAL`` until cancelled."""
        while True:
            try:
                await self.scrape_once()
            except Exception:
                # The page must not take the pods down with it: say so, and try next round.
                log.exception("dashboard scrape failed")
            await asyncio.sleep(SCRAPE_INTERVAL)  # the scrape period, not a wait for a state

    async def serve_states(self) -> None:
        """Push a new snapshot soon after a container's state changes, until cancelled.

        A killed replica that restarts within a second still shows red on the page.
        """
        while True:
            await asyncio.sleep(STATE_INTERVAL)  # the polling period, not a wait for a state
            status = self.supervisor.status()
            if _states(status) != _states(self._snapshot):
                await self._publish(self.core.snapshot(status))

    async def scrape_once(self) -> None:
        """One round: every running component with an admin endpoint, at once."""
        status = self.supervisor.status()
        targets = {
            _label(c): c["admin"]
            for c in status["containers"]
            if c.get("admin") and c["state"] == "running"
        }
        self.core.forget(_label(c) for c in status["containers"])
        results = await asyncio.gather(*(self._fetch(a) for a in targets.values()))
        now = time.time()
        for name, (text, error) in zip(targets, results, strict=True):
            if text is not None:
                self.core.observe(name, text, now)
            else:
                self.core.failed(name, error or "no answer")
        await self._publish(self.core.snapshot(self.supervisor.status()))

    async def _fetch(self, admin: str) -> tuple[str | None, str | None]:
        try:
            async with self._http.stream("GET", f"http://{admin}/metrics") as response:
                if response.status_code != 200:
                    return None, f"/metrics answered {response.status_code}"
                body = b""
                async for chunk in response.aiter_bytes():
                    body += chunk
                    if len(body) > MAX_METRICS_BYTES:
                        return None, "/metrics page too large"
                return body.decode("utf-8", "replace"), None
        except httpx.HTTPError as exc:
            return None, type(exc).__name__

    async def _publish(self, snapshot: dict[str, Any]) -> None:
        async with self._changed:
            self._snapshot = snapshot
            self._version += 1
            self._changed.notify_all()

    # -- HTTP --------------------------------------------------------------------------------

    async def handle(self, request: Request) -> Response:
        """Route one request (see the module)."""
        path = request.path
        if request.method == "GET":
            if path in ("/", "/index.html"):
                return Response(
                    200,
                    [
                        ("Content-Type", "text/html; charset=utf-8"),
                        ("Cache-Control", "no-store"),
                    ],
                    self._page,
                )
            if path == "/api/state":
                return Response.json(200, json.dumps(self._snapshot))
            if path == "/events":
                return self._events()
        if path.startswith("/api/") and request.method == "POST":
            return await self._action(path, request)
        if path.startswith("/api/") or path in ("/", "/events"):
            return Response.text(405, "method not allowed\n")
        return Response.text(404, "not found\n")

    def _events(self) -> Response:
        if self._clients >= MAX_EVENT_CLIENTS:
            return Response.text(503, f"more than {MAX_EVENT_CLIENTS} pages are open\n")
        return Response(
            200,
            [
                ("Content-Type", "text/event-stream"),
                ("Cache-Control", "no-store"),
                ("X-Accel-Buffering", "no"),
            ],
            self._stream(),
        )

    async def _stream(self) -> AsyncIterator[bytes]:
        self._clients += 1
        try:
            seen = self._version
            yield b"retry: 2000\n\ndata: " + json.dumps(self._snapshot).encode() + b"\n\n"
            while True:
                async with self._changed:
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(_HEARTBEAT):
                            await self._changed.wait_for(partial(self._newer_than, seen))
                    if self._version == seen:
                        data = b": idle\n\n"
                    else:
                        seen = self._version
                        data = b"data: " + json.dumps(self._snapshot).encode() + b"\n\n"
                yield data
        finally:
            self._clients -= 1

    def _newer_than(self, version: int) -> bool:
        return self._version != version

    async def _action(self, path: str, request: Request) -> Response:
        if request.header(ACTION_HEADER) != "1":
            return Response.text(403, f"actions need the header {ACTION_HEADER}: 1\n")
        if len(request.body) > MAX_ACTION_BYTES:
            return Response.text(413, f"an action is at most {MAX_ACTION_BYTES} bytes\n")
        try:
            body = json.loads(request.body or b"{}")
            if not isinstance(body, dict):
                raise ValueError("expected a JSON object")
        except ValueError as exc:
            return Response.text(400, f"bad JSON: {exc}\n")
        actions: dict[str, Callable[[dict[str, Any]], Awaitable[Response]]] = {
            "/api/scale": self._scale,
            "/api/restart": self._restart,
            "/api/drain": self._drain,
            "/api/purge": self._purge,
        }
        action = actions.get(path)
        if action is None:
            return Response.text(404, "no such action\n")
        answer = await action(body)
        with contextlib.suppress(Exception):
            await self._publish(self.core.snapshot(self.supervisor.status()))
        return answer

    async def _scale(self, body: dict[str, Any]) -> Response:
        pod, replicas = body.get("pod"), body.get("replicas")
        if not isinstance(pod, str) or not isinstance(replicas, int) or isinstance(replicas, bool):
            return Response.text(400, 'expected {"pod": NAME, "replicas": N}\n')
        request = {"op": "scale", "pod": pod, "replicas": replicas}
        return _answer(await self.supervisor.control(request))

    async def _restart(self, body: dict[str, Any]) -> Response:
        pod = body.get("pod")
        if not isinstance(pod, str):
            return Response.text(400, 'expected {"pod": NAME}\n')
        return _answer(await self.supervisor.control({"op": "restart", "pod": pod}))

    def _admins(self, component: str) -> dict[str, str]:
        return {
            _label(c): c["admin"]
            for c in self.supervisor.status()["containers"]
            if c.get("admin")
            and c["state"] == "running"
            and self._components.get((c["pod"], c["container"])) == component
        }

    async def _drain(self, body: dict[str, Any]) -> Response:
        container, url = body.get("container"), body.get("url")
        if not isinstance(container, str) or not isinstance(url, str):
            return Response.text(400, 'expected {"container": "lb-1/balance", "url": URL}\n')
        admin = self._admins("balance").get(container)
        if admin is None:
            return Response.text(404, f"no running balancer {container} with an admin endpoint\n")
        verb = "undrain" if body.get("undo") else "drain"
        target = f"http://{admin}/backends/{verb}?url={quote(url, safe='')}"
        return await self._forward(target)

    async def _purge(self, body: dict[str, Any]) -> Response:
        target = body.get("target")
        if not isinstance(target, str) or not target.startswith("/"):
            return Response.text(400, 'expected {"target": "/path"}\n')
        caches = self._admins("cache")
        if not caches:
            return Response.text(404, "no running cache with an admin endpoint\n")
        purged: dict[str, Any] = {}
        for name, admin in caches.items():
            answer = await self._forward(f"http://{admin}/purge?target={quote(target, safe='')}")
            raw = answer.body if isinstance(answer.body, bytes) else b""
            purged[name] = json.loads(raw) if answer.status == 200 else answer.status
        return Response.json(200, json.dumps({"ok": True, "purged": purged}))

    async def _forward(self, url: str) -> Response:
        try:
            answer = await self._http.post(url, timeout=ACTION_TIMEOUT)
        except httpx.HTTPError as exc:
            return Response.text(502, f"{url}: {type(exc).__name__}\n")
        kind = answer.headers.get("content-type", "text/plain")
        return Response(answer.status_code, [("Content-Type", kind)], answer.content)

    async def aclose(self) -> None:
        await self._http.aclose()


def _states(status: dict[str, Any]) -> list[tuple[Any, ...]]:
    keys = ("pod", "replica", "container", "state", "ready", "restarts", "pid")
    return [tuple(row.get(k) for k in keys) for row in status.get("containers", [])]


def _label(row: dict[str, Any]) -> str:
    return f"{row['pod']}-{row['replica']}/{row['container']}"


def _answer(answer: dict[str, Any]) -> Response:
    return Response.json(200 if answer.get("ok") else 409, json.dumps(answer))


@contextlib.asynccontextmanager
async def open_dashboard(
    supervisor: Supervised, *, host: str, port: int
) -> AsyncIterator[Dashboard]:
    """Serve the dashboard of ``supervisor`` on ``host:port`` while the block runs.

    Raises:
        ListenError: the address cannot be bound.
    """
    dashboard = Dashboard(supervisor, host=host, port=port)
    try:
        async with SimpleHTTPServer(
            dashboard.handle, host, port, name="dashboard", max_body=MAX_ACTION_BYTES * 2
        ) as server:
            dashboard.port = server.port
            async with asyncio.TaskGroup() as tg:
                tasks = [
                    tg.create_task(dashboard.serve_scrapes()),
                    tg.create_task(dashboard.serve_states()),
                ]
                try:
                    yield dashboard
                finally:
                    for task in tasks:
                        task.cancel()
    finally:
        await dashboard.aclose()
