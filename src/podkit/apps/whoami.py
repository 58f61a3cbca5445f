"""``podkit whoami``: a small HTTP service that tells who answered and can misbehave on demand.

It stands for the "legacy application" in examples, tests and benchmarks:

* ``GET /`` → JSON with ``name``, method, path, headers and client address; header
  ``X-Served-By: NAME`` on every response;
* ``GET /delay/<ms>`` answers after that delay; ``GET /status/<code>`` answers that status;
* ``GET /bytes/<n>`` streams n bytes (chunked); ``POST /echo`` echoes the body;
* ``GET /cache/<seconds>`` answers with ``Cache-Control: max-age``, ``ETag``, ``Last-Modified``
  and a per-response counter in the body (and honours ``If-None-Match``);
* ``GET /ready`` is 200 when ready, 503 when not; ``POST /ready/off`` and ``POST /ready/on``
  flip it; ``GET /stats`` counts the requests served, per path.
"""

from __future__ import annotations

import asyncio
import email.utils
import json
import time
from collections import Counter as CountMap
from collections.abc import AsyncIterator

import click
from prometheus_client import Counter

from podkit.cli import PodkitCommand
from podkit.runtime import (
    HostPort,
    Request,
    Response,
    Runtime,
    RuntimeOptions,
    SimpleHTTPServer,
    run_component,
)
from podkit.runtime.cli_options import HOSTPORT, runtime_options

MAX_DELAY_MS = 600_000  # a test that asks for more than ten minutes is a typo
MAX_STREAM_BYTES = 1 << 34  # 16 GiB: enough for bulk-transfer benchmarks
_STREAM_CHUNK = 64 * 1024


class WhoamiApp:
    """The request handler of ``podkit whoami``; embeddable in tests without a process."""

    def __init__(self, name: str, *, runtime: Runtime | None = None) -> None:
        self.name = name
        self.ready = True
        self.counter = 0
        self.served: CountMap[str] = CountMap()
        self.total = 0
        self.runtime = runtime
        self.started = time.time()
        self._requests: Counter | None = None
        if runtime is not None:
            self._requests = Counter(
                "whoami_requests",
                "Requests answered by whoami, by status code.",
                ["code"],
                registry=runtime.registry,
            )

    async def handle(self, request: Request) -> Response:
        self.total += 1
        self.served[request.path] += 1
        response = await self._route(request)
        response.headers.append(("X-Served-By", self.name))
        if self._requests is not None:
            self._requests.labels(str(response.status)).inc()
        return response

    async def _route(self, request: Request) -> Response:
        method, path = request.method, request.path
        parts = [p for p in path.split("/") if p]
        if path == "/ready":
            if self.ready:
                return Response.text(200, "ready\n")
            return Response.text(503, "not ready\n")
        if path in ("/ready/off", "/ready/on"):
            if method != "POST":
                return Response.text(405, "use POST\n", headers=[("Allow", "POST")])
            self.ready = path == "/ready/on"
            if self.runtime is not None:
                if self.ready:
                    self.runtime.set_ready()
                else:
                    self.runtime.set_not_ready("switched off with POST /ready/off")
            return Response.text(200, f"ready: {'on' if self.ready else 'off'}\n")
        if path == "/echo":
            if method != "POST" and method != "PUT":
                return Response.text(405, "use POST\n", headers=[("Allow", "POST, PUT")])
            ctype = request.header("content-type", "application/octet-stream") or ""
            return Response(200, [("Content-Type", ctype)], request.body)
        if path == "/stats":
            body = {"name": self.name, "total": self.total, "paths": dict(self.served)}
            return Response.json(200, json.dumps(body))
        if len(parts) == 2 and parts[0] in ("delay", "status", "bytes", "sized", "cache"):
            if not parts[1].isdigit():
                return Response.text(400, f"/{parts[0]}/ takes a whole number\n")
            number = int(parts[1])
            if parts[0] == "delay":
                if number > MAX_DELAY_MS:
                    return Response.text(400, f"delay is at most {MAX_DELAY_MS} ms\n")
                await asyncio.sleep(number / 1000)
                return self._describe(request)
            if parts[0] == "status":
                if not 100 <= number <= 599:
                    return Response.text(400, "status must be 100-599\n")
                return Response.text(number, f"status {number}\n")
            if parts[0] in ("bytes", "sized"):
                if number > MAX_STREAM_BYTES:
                    return Response.text(400, f"at most {MAX_STREAM_BYTES} bytes\n")
                headers = [("Content-Type", "application/octet-stream")]
                if parts[0] == "sized":  # the same bytes with Content-Length, not chunked
                    headers.append(("Content-Length", str(number)))
                return Response(200, headers, _stream(number))
            return self._cacheable(request, number)
        if path == "/" or method in ("GET", "HEAD"):
            return self._describe(request)
        return self._describe(request)

    def _describe(self, request: Request) -> Response:
        body = {
            "name": self.name,
            "method": request.method,
            "path": request.target,
            "headers": dict(request.headers),
            "client": f"{request.client[0]}:{request.client[1]}",
        }
        return Response.json(200, json.dumps(body) + "\n")

    def _cacheable(self, request: Request, seconds: int) -> Response:
        self.counter += 1
        etag = f'"{self.name}-{request.path.strip("/").replace("/", "-")}"'
        headers = [
            ("Cache-Control", f"max-age={seconds}"),
            ("ETag", etag),
            ("Last-Modified", email.utils.formatdate(self.started, usegmt=True)),
            ("Date", email.utils.formatdate(time.time(), usegmt=True)),
        ]
        vary = request.query.get("vary")
        if vary:
            headers.append(("Vary", vary[0]))
        if request.header("if-none-match") == etag:
            return Response(304, headers, b"")
        body = {"name": self.name, "path": request.path, "counter": self.counter}
        return Response.json(200, json.dumps(body) + "\n", headers=headers)


async def _stream(n: int) -> AsyncIterator[bytes]:
    block = b"x" * _STREAM_CHUNK
    left = n
    while left > 0:
        size = min(left, _STREAM_CHUNK)
        yield block[:size]
        left -= size


async def serve_whoami(rt: Runtime, *, listen: HostPort, name: str) -> None:
    """Serve whoami until the runtime drains."""
    app = WhoamiApp(name, runtime=rt)
    async with SimpleHTTPServer(app.handle, listen.host, listen.port, name="whoami") as server:
        rt.log.info(
            "listening", extra={"listen": f"{listen.host}:{server.port}", "served_by": name}
        )
        rt.set_ready()
        await rt.wait_draining()
        await server.drain(rt.drain_timeout)


@click.command(cls=PodkitCommand)
@click.option(
    "--listen",
    type=HOSTPORT,
    default="127.0.0.1:8000",
    show_default=True,
    help="Address to serve HTTP on.",
)
@click.option(
    "--name",
    default="whoami",
    show_default=True,
    help="Name reported in the body and the X-Served-By header.",
)
@runtime_options
def command(listen: HostPort, name: str, runtime: RuntimeOptions) -> int:
    """A small HTTP service that says who answered (the legacy app of the examples).

    Routes: / (describe the request), /delay/<ms>, /status/<code>, /bytes/<n>, POST /echo,
    /cache/<seconds>, /ready, POST /ready/off, POST /ready/on, /stats.
    """

    async def main(rt: Runtime) -> None:
        await serve_whoami(rt, listen=listen, name=name)

    return run_component("whoami", main, runtime)
