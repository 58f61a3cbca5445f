"""``podkit search leaf``: serve one shard's index over HTTP.

Routes (JSON answers):

* ``GET /stats`` -> ``shard``, ``shards``, ``docs``, ``length``, ``terms``, ``version``;
* ``GET /df?t=TERM&t=TERM`` -> the same plus ``df`` (term -> documents of this shard);
* ``POST /search`` with ``{"terms": [...], "k": N, "stats": {"docs", "length", "df"},
  "deadline_ms": MS, "snippets": true}`` -> ``hits``, ``matches``, ``version``, ``took``:
  what the root sends (corpus-wide statistics; terms distinct and sorted);
* ``GET /search?q=TEXT&k=10`` -> the same, scored with this shard's own statistics.

A search whose deadline passes while it is scored answers 504 at the next term.

A rebuilt index is picked up without a restart: every ``--reload-check`` the leaf looks at
the shard's ``meta.json`` (the build renames a whole new shard directory into place) and,
when its version changed, opens the new index in a thread and swaps it in between two
requests. A request takes the index it was routed to once, so a search in flight finishes
on the old one; the answers carry the new ``version``, on which the root drops its cached
statistics. An index caught half-replaced (or unreadable) is kept out and tried again at
the next check.
"""

from __future__ import annotations

import asyncio
import json
import random
import statistics
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

from prometheus_client import CollectorRegistry, Counter, Histogram

from podkit.engines.http import HTTPServer, Request, Response
from podkit.engines.http.access_log import AccessLogSettings
from podkit.engines.http.rules import ServerLimits
from podkit.runtime import Runtime
from podkit.runtime.files import file_stamp
from podkit.serving.search._bm25 import CorpusStats
from podkit.serving.search._index import IndexError_, ShardIndex
from podkit.serving.search._inject import InjectDelay
from podkit.serving.search._text import query_terms

MAX_K = 10_000  # deeper pages are a crawl, not a search
MAX_TERMS = 256  # a query of more distinct words than this is a document, not a query
MAX_REQUEST_BYTES = 16 * 1024 * 1024  # a /search body carries df for at most MAX_TERMS terms
DEFAULT_K = 10
DEFAULT_RELOAD_CHECK = 1.0  # seconds between looks for a rebuilt index; 0 never looks
_TIMING_SAMPLES = 256


class _Expired(Exception):
    pass


class BadRequest(Exception):
    """A request the leaf refuses with 400 (the message says why)."""


def _json(status: int, body: object) -> Response:
    data = json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode()
    return Response(status, [(b"Content-Type", b"application/json")], data + b"\n")


def _int_param(values: dict[str, list[str]], name: str, default: int, high: int) -> int:
    text = values.get(name, [str(default)])[-1]
    if not text.isdigit() or not 1 <= int(text) <= high:
        raise BadRequest(f"{name} must be a whole number 1-{high}")
    return int(text)


@dataclass(slots=True)
class _Timings:
    samples: deque[float] = field(default_factory=lambda: deque(maxlen=_TIMING_SAMPLES))

    def median(self) -> float:
        return statistics.median(self.samples) if self.samples else 0.0


class LeafApp:
    """The request handler of one leaf; embeddable in tests without a process.

    Args:
        index: the shard to serve.
        inject: slow a share of the answers (tests and benchmarks), or None.
        seed: seed of the injection's random draws.
        registry: where to export the leaf's metrics.
    """

    def __init__(
        self,
        index: ShardIndex,
        *,
        inject: InjectDelay | None = None,
        seed: int | None = None,
        registry: CollectorRegistry | None = None,
    ) -> None:
        self.index = index
        self.inject = inject
        self._rng = random.Random(seed)
        self._timings = _Timings()
        self.injected = 0
        self._m_requests = Counter(
            "podkit_search_leaf_requests",
            "Requests answered by the leaf, by route and status.",
            ["route", "code"],
            registry=registry,
        )
        self._m_seconds = Histogram(
            "podkit_search_leaf_search_seconds",
            "Time to score one search on the leaf (without injected delay).",
            registry=registry,
        )
        self._m_injected = Counter(
            "podkit_search_leaf_injected_delays",
            "Answers held back by --inject-delay.",
            registry=registry,
        )
        self._m_reloads = Counter(
            "podkit_search_leaf_index_reloads",
            "Rebuilt indexes looked at: swapped in (reloaded) or kept out (failed).",
            ["result"],
            registry=registry,
        )
        self.reloads = 0

    def swap(self, index: ShardIndex) -> None:
        """Serve ``index`` from the next request on; requests in flight keep the old one."""
        self.index = index
        self.reloads += 1
        self._m_reloads.labels("reloaded").inc()

    def reload_failed(self) -> None:
        """Count a rebuilt index that could not be opened (the old one is still served)."""
        self._m_reloads.labels("failed").inc()

    def describe(self, index: ShardIndex | None = None) -> dict[str, Any]:
        """The shard's figures, as ``GET /stats`` answers them."""
        index = self.index if index is None else index
        return {
            "shard": index.shard,
            "shards": index.shards,
            "docs": index.docs,
            "length": index.length,
            "terms": len(index.terms),
            "version": index.version,
        }

    async def handle(self, request: Request) -> Response:
        path = request.path
        try:
            response = await self._route(request, path)
        except BadRequest as exc:
            response = _json(400, {"error": str(exc)})
        route = path if path in ("/stats", "/df", "/search") else "other"
        self._m_requests.labels(route, str(response.status)).inc()
        return response

    async def _route(self, request: Request, path: str) -> Response:
        index = self.index  # this request's index to the end, whatever is swapped in meanwhile
        query = parse_qs(request.query_string)
        if path == "/stats":
            return _json(200, self.describe(index))
        if path == "/df":
            terms = query.get("t", [])
            if len(terms) > MAX_TERMS:
                raise BadRequest(f"at most {MAX_TERMS} terms")
            body = self.describe(index)
            body["df"] = dict(index.local_stats(terms).df)
            return _json(200, body)
        if path != "/search":
            return _json(404, {"error": f"no route {path}; try /search, /df or /stats"})
        if request.method == "GET":
            terms = query_terms(query.get("q", [""])[-1])
            k = _int_param(query, "k", DEFAULT_K, MAX_K)
            return await self._search(index, terms, k, None, None, snippets=True)
        if request.method != "POST":
            return Response(405, [(b"Allow", b"GET, POST")], b"use GET or POST\n")
        raw = await request.read(MAX_REQUEST_BYTES)
        try:
            asked = json.loads(raw)
            terms = asked["terms"]
            k = asked["k"]
            stats = CorpusStats.from_json(asked["stats"]) if asked.get("stats") else None
            deadline_ms = asked.get("deadline_ms")
            snippets = bool(asked.get("snippets", True))
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise BadRequest(f"expected {{terms, k, stats, deadline_ms}}: {exc}") from None
        if not isinstance(terms, list) or not all(isinstance(t, str) for t in terms):
            raise BadRequest("terms must be a list of strings")
        if len(terms) > MAX_TERMS:
            raise BadRequest(f"at most {MAX_TERMS} terms")
        if not isinstance(k, int) or not 1 <= k <= MAX_K:
            raise BadRequest(f"k must be a whole number 1-{MAX_K}")
        if deadline_ms is not None and not isinstance(deadline_ms, int | float):
            raise BadRequest("deadline_ms must be a number")
        return await self._search(
            index, sorted(set(terms)), k, stats, deadline_ms, snippets=snippets
        )

    async def _search(
        self,
        index: ShardIndex,
        terms: list[str],
        k: int,
        stats: CorpusStats | None,
        deadline_ms: float | None,
        *,
        snippets: bool,
    ) -> Response:
        started = time.perf_counter()
        end = None if deadline_ms is None else started + deadline_ms / 1000

        def check() -> None:
            if end is not None and time.perf_counter() > end:
                raise _Expired

        try:
            check()
            hits, matches = index.search(terms, k, stats, check=check, snippets=snippets)
        except _Expired:
            return _json(504, {"error": "deadline passed", "version": index.version})
        took = time.perf_counter() - started
        self._m_seconds.observe(took)
        self._timings.samples.append(took)
        if self.inject is not None:
            hold = self.inject.delay(self._rng, self._timings.median())
            if hold > 0:
                self.injected += 1
                self._m_injected.inc()
                await asyncio.sleep(hold)
        return _json(
            200,
            {
                "shard": index.shard,
                "version": index.version,
                "hits": [hit.to_json() for hit in hits],
                "matches": matches,
                "took": round(took * 1000, 3),
            },
        )


@dataclass(frozen=True, slots=True)
class LeafOptions:
    """``podkit search leaf``'s settings."""

    host: str
    port: int
    index: Path
    inject: InjectDelay | None = None
    seed: int | None = None
    limits: ServerLimits = field(default_factory=ServerLimits)
    access_log: AccessLogSettings = field(default_factory=AccessLogSettings)
    reload_check: float = DEFAULT_RELOAD_CHECK


def open_index_snapshot(directory: Path) -> ShardIndex:
    """Open a shard index, refusing one that was replaced while its files were read.

    Raises:
        IndexError_: the index cannot be read, or its ``meta.json`` changed meanwhile.
    """
    before = file_stamp(directory / "meta.json")
    index = ShardIndex(directory)
    if before is None or file_stamp(directory / "meta.json") != before:
        raise IndexError_(f"{directory}: replaced while it was read")
    return index


def _meta_version(directory: Path) -> str | None:
    try:
        meta = json.loads((directory / "meta.json").read_text(encoding="utf-8"))
        return str(meta["version"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


async def serve_index_changes(
    app: LeafApp,
    directory: Path,
    *,
    interval: float,
    on_swap: Callable[[ShardIndex, ShardIndex], object] | None = None,
    on_error: Callable[[str], object] | None = None,
) -> None:
    """Swap a rebuilt index into ``app`` whenever ``directory``'s ``meta.json`` changes to
    another version, checking every ``interval`` seconds, until cancelled.

    A rebuild with the same content (the same version) changes nothing; an index that
    cannot be opened yet is tried again at the next check.
    """
    last = file_stamp(directory / "meta.json")
    while True:
        await asyncio.sleep(interval)
        stamp = file_stamp(directory / "meta.json")
        if stamp is None or stamp == last:
            continue
        if _meta_version(directory) == app.index.version:
            last = stamp
            continue
        try:
            index = await asyncio.to_thread(open_index_snapshot, directory)
        except IndexError_ as exc:
            app.reload_failed()
            if on_error is not None:
                on_error(str(exc))
            continue
        last = stamp
        old = app.index
        app.swap(index)
        if on_swap is not None:
            on_swap(old, index)


async def serve_leaf(rt: Runtime, options: LeafOptions) -> None:
    """Open the shard and serve it until the runtime drains.

    Raises:
        IndexError_: the index cannot be opened.
        PodkitError: the address cannot be bound.
    """
    index = await asyncio.to_thread(ShardIndex, options.index)
    app = LeafApp(index, inject=options.inject, seed=options.seed, registry=rt.registry)
    rt.add_status(
        lambda: {
            "shard": app.index.shard,
            "docs": app.index.docs,
            "version": app.index.version,
            "reloads": app.reloads,
            "summary": f"shard {app.index.shard} of {app.index.shards}: "
            f"{app.index.docs} documents, version {app.index.version}",
        }
    )

    def swapped(old: ShardIndex, new: ShardIndex) -> None:
        rt.log.info(
            "index reloaded",
            extra={
                "index": str(options.index),
                "version": new.version,
                "previous": old.version,
                "docs": new.docs,
            },
        )

    def not_swapped(reason: str) -> None:
        rt.log.warning("rebuilt index not loaded yet", extra={"reason": reason})

    async with HTTPServer(
        app.handle,
        host=options.host,
        port=options.port,
        limits=options.limits,
        registry=rt.registry,
        metrics_prefix="podkit_search_leaf_http",
        name="search-leaf",
        access_log=options.access_log,
    ) as server:
        rt.on_reload(server.reopen_access_log)
        rt.log.info(
            "listening",
            extra={
                "listen": f"{options.host}:{server.port}",
                "shard": index.shard,
                "docs": index.docs,
                "version": index.version,
            },
        )
        rt.set_ready()
        async with asyncio.TaskGroup() as tasks:
            watch = None
            if options.reload_check > 0:
                watch = tasks.create_task(
                    serve_index_changes(
                        app,
                        options.index,
                        interval=options.reload_check,
                        on_swap=swapped,
                        on_error=not_swapped,
                    ),
                    name="search-leaf-watch-index",
                )
            await rt.wait_draining()
            if watch is not None:
                watch.cancel()
        await server.drain(rt.drain_timeout)
