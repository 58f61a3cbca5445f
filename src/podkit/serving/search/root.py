"""``podkit search root``: scatter a query to every shard, gather and merge exactly.

Theory of operation. A query goes through three steps, each bounded by the query's
deadline (each leaf request carries the budget that remains, as ``deadline_ms``):

1. *Statistics* (Elasticsearch's ``dfs`` phase, cached). BM25 needs corpus-wide document
   counts, total length and document frequencies. The root keeps them per shard version:
   a term seen before costs nothing; new terms cost one ``GET /df`` to each shard. A leaf
   answers every search with its index version; an answer from another version drops the
   cache and the query starts again (once).
2. *Scatter* to every shard with those statistics, asking for the top ``q`` only; the
   merge of all answers is exact for every shard that returned all it has or whose last
   hit sorts after the k-th (see :mod:`podkit.serving.search._bm25`).
3. *Refine*: only the other shards are asked again, for their top ``k``.

Each shard request goes to the replica with the lowest latency-times-load, and is hedged
to another replica once it is slower than the shard's live p95, within a 5 % budget (see
:mod:`podkit.serving.search._hedge`). A replica that fails is replaced by another at once.
What the deadline cuts off is reported in ``coverage``; below ``min_coverage`` the answer
is an error (503).
"""

from __future__ import annotations

import asyncio
import json
import math
import random
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal
from urllib.parse import parse_qs, urlencode

from prometheus_client import CollectorRegistry, Counter, Histogram

from podkit.engines.http import (
    HTTPServer,
    Request,
    Response,
    Upstream,
    UpstreamError,
    UpstreamPool,
)
from podkit.engines.http.access_log import AccessLogSettings
from podkit.engines.http.rules import ServerLimits
from podkit.errors import ConfigError
from podkit.runtime import Runtime
from podkit.serving.search._bm25 import (
    CorpusStats,
    Hit,
    ShardAnswer,
    merge,
    shards_to_ask_again,
)
from podkit.serving.search._hedge import HedgeBudget, Replica, ShardReplicas
from podkit.serving.search._text import query_terms

DEFAULT_DEADLINE = 0.5  # the example: half a second for an interactive search
DEFAULT_K = 10
MAX_K = 1000  # deeper pages are a crawl, not a search
MAX_QUERY_TERMS = 64  # a query of more distinct words than this is a document, not a query
MAX_LEAF_ANSWER_BYTES = 64 * 1024 * 1024  # k=1000 hits with snippets is about 1 MiB
DEFAULT_DF_CACHE_TERMS = 100_000  # about 10 MB of cached document frequencies
DEFAULT_CONNECT_TIMEOUT = 1.0  # a leaf on the same network connects in well under a second
DEFAULT_MAX_AGE = 0.0  # answers carry no freshness unless asked: an index may change any time
STATS_SHARE = 0.5  # of the time left, what gathering statistics for new terms may use
TOP_Q_FACTOR = 2.0  # first round: each shard returns its share of k, twice over
Hedge = Literal["auto", "off"]
Outcome = Literal["answered", "failed", "timed_out"]


@dataclass(frozen=True, slots=True)
class Coverage:
    """What one answer covers.

    Attributes:
        shards: shards of the corpus (``--leaf`` flags).
        asked: shards a search request was sent to.
        answered: shards that answered every request of this query.
        failed: shards whose every replica failed (refused, closed, errored).
        timed_out: shards that had not answered when the deadline came.
        docs: documents in the shards that answered.
        docs_total: documents in all shards (as last reported by each).
        counted: shards whose document count is known (each reports it once reached).
    """

    shards: int
    asked: int
    answered: int
    failed: int
    timed_out: int
    docs: int
    docs_total: int
    counted: int

    @property
    def fraction(self) -> float:
        """Documents covered over documents in the corpus; shards answered over shards
        while some shard was never reached (its documents are not known)."""
        if self.counted == self.shards and self.docs_total > 0:
            return self.docs / self.docs_total
        return self.answered / self.shards if self.shards else 0.0

    def to_json(self) -> dict[str, Any]:
        return {
            "shards": self.shards,
            "asked": self.asked,
            "answered": self.answered,
            "failed": self.failed,
            "timed_out": self.timed_out,
            "docs": self.docs,
            "docs_total": self.docs_total,
            "fraction": round(self.fraction, 6),
        }


@dataclass(frozen=True, slots=True)
class SearchResult:
    """One query's answer.

    Attributes:
        query: the text asked.
        k: hits asked for.
        hits: the best hits, best first (ties by id).
        coverage: what the hits cover.
        took: seconds from receipt to answer.
        rounds: 1, or 2 when some shards were asked again for more hits.
    """

    query: str
    k: int
    hits: list[Hit]
    coverage: Coverage
    took: float
    rounds: int

    @property
    def degraded(self) -> bool:
        """Whether some shard did not answer (the hits may miss some of the true top k)."""
        return self.coverage.answered < self.coverage.shards

    def to_json(self) -> dict[str, Any]:
        return {
            "query": self.query,
            "k": self.k,
            "hits": [hit.to_json() for hit in self.hits],
            "coverage": self.coverage.to_json(),
            "degraded": self.degraded,
            "took": round(self.took * 1000, 3),
            "rounds": self.rounds,
        }


class CoverageTooLow(Exception):
    """The answer covers less than ``min_coverage`` of the corpus (served as 503)."""

    def __init__(self, result: SearchResult, min_coverage: float) -> None:
        super().__init__(
            f"coverage {result.coverage.fraction:.1%} is below --min-coverage {min_coverage:.0%}"
        )
        self.result = result


@dataclass(slots=True)
class _ShardMeta:
    version: str
    docs: int
    length: int


@dataclass(slots=True)
class _Failure:
    kind: Outcome


@dataclass(slots=True)
class _QueryState:
    end: float
    outcomes: dict[int, Outcome] = field(default_factory=dict)
    answers: dict[int, ShardAnswer] = field(default_factory=dict)
    versions: dict[int, str] = field(default_factory=dict)


class _VersionChanged(Exception):
    pass


class SearchRoot:
    """The scatter/gather root: use as ``async with SearchRoot(leaves) as root:``.

    Args:
        leaves: one entry per shard, in shard order: the URLs of its replicas.
        deadline: seconds a query may take, end to end.
        hedge: ``"auto"`` hedges slow requests to another replica; ``"off"`` never does.
        min_coverage: the fraction of the corpus below which an answer is an error.
        top_q: hits asked of each shard in the first round (None: ``k``'s share, twice over).
        hedge_ratio: most hedges per leaf request.
        connect_timeout: seconds to connect to a leaf.
        seed: seed of the replica choice's tie-breaking.
        registry: where to export the root's metrics.
        max_age: seconds a complete answer may be served by a cache in front
            (``Cache-Control: public, max-age=N``); a degraded one gets ``no-store``. 0 sends
            no Cache-Control.
    """

    def __init__(
        self,
        leaves: Sequence[Sequence[str]],
        *,
        deadline: float = DEFAULT_DEADLINE,
        hedge: Hedge = "auto",
        min_coverage: float = 0.0,
        top_q: int | None = None,
        hedge_ratio: float = 0.05,
        connect_timeout: float = DEFAULT_CONNECT_TIMEOUT,
        df_cache_terms: int = DEFAULT_DF_CACHE_TERMS,
        seed: int | None = None,
        registry: CollectorRegistry | None = None,
        max_age: float = DEFAULT_MAX_AGE,
    ) -> None:
        if not leaves:
            raise ConfigError("at least one leaf is needed", path="--leaf")
        rng = random.Random(seed)
        self.shards = [ShardReplicas(i, list(urls), rng=rng) for i, urls in enumerate(leaves)]
        self._upstreams = {
            r.url: Upstream.parse(r.url) for shard in self.shards for r in shard.replicas
        }
        self.deadline = deadline
        self.hedge = hedge
        self.min_coverage = min_coverage
        self.max_age = max_age
        self.top_q = top_q
        self.budget = HedgeBudget(hedge_ratio)
        self.df_cache_terms = df_cache_terms
        self._meta: dict[int, _ShardMeta] = {}
        self._df: OrderedDict[str, int] = OrderedDict()
        self._pool = UpstreamPool(
            connect_timeout=connect_timeout,
            registry=registry,
            metrics_prefix="podkit_search_upstream",
        )
        self.m_queries = Counter(
            "podkit_search_queries", "Queries answered, by result.", ["result"], registry=registry
        )
        self.m_seconds = Histogram(
            "podkit_search_query_seconds", "Time to answer one query.", registry=registry
        )
        self.m_leaf = Counter(
            "podkit_search_shard_requests",
            "Requests to leaves, by shard and outcome.",
            ["shard", "outcome"],
            registry=registry,
        )
        self.m_hedges = Counter(
            "podkit_search_hedges_sent",
            "Leaf requests hedged to another replica.",
            registry=registry,
        )
        self.m_hedges_won = Counter(
            "podkit_search_hedges_won", "Hedged requests that answered first.", registry=registry
        )
        self.m_hedges_refused = Counter(
            "podkit_search_hedges_refused",
            "Hedges not sent because the budget was spent.",
            registry=registry,
        )
        self.m_second_round = Counter(
            "podkit_search_second_round_shards",
            "Shards asked again for their top k after the first round.",
            registry=registry,
        )
        self.m_stats_fetches = Counter(
            "podkit_search_stats_fetches",
            "Queries that fetched document frequencies from the leaves.",
            registry=registry,
        )

    async def __aenter__(self) -> SearchRoot:
        await self._pool.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self._pool.aclose()

    # -- statistics -------------------------------------------------------------------

    def corpus_docs(self) -> int:
        return sum(meta.docs for meta in self._meta.values())

    def _note_meta(self, shard: int, body: dict[str, Any]) -> bool:
        """Remember a shard's figures; True when its version changed (the cache is stale)."""
        meta = _ShardMeta(str(body["version"]), int(body["docs"]), int(body["length"]))
        old = self._meta.get(shard)
        self._meta[shard] = meta
        return old is not None and old.version != meta.version

    async def _statistics(self, terms: list[str], state: _QueryState) -> CorpusStats:
        """Corpus statistics for ``terms``: cached, or gathered from every shard.

        The gathering may use STATS_SHARE of the time left; a shard that does not answer it
        is left out of this query (its outcome recorded), since its scores could not be
        exact without its document frequencies.
        """
        missing = [t for t in terms if t not in self._df]
        if not missing and len(self._meta) == len(self.shards):
            for term in terms:
                self._df.move_to_end(term)
            return self._corpus({t: self._df[t] for t in terms})
        self.m_stats_fetches.inc()
        loop = asyncio.get_running_loop()
        now = loop.time()
        step = _QueryState(now + max(0.0, state.end - now) * STATS_SHARE)
        target = "/df?" + urlencode([("t", t) for t in missing])
        answers = await asyncio.gather(
            *(self._ask(shard, "GET", target, None, step) for shard in self.shards)
        )
        parts: list[dict[str, int]] = []
        changed = False
        for shard, answer in zip(self.shards, answers, strict=True):
            if isinstance(answer, _Failure):
                self.m_leaf.labels(str(shard.shard), answer.kind).inc()
                state.outcomes[shard.shard] = answer.kind
                continue
            try:
                changed |= self._note_meta(shard.shard, answer)
                parts.append({str(t): int(n) for t, n in answer.get("df", {}).items()})
            except (KeyError, TypeError, ValueError, AttributeError):
                state.outcomes[shard.shard] = "failed"
        if changed:
            self._df.clear()
            raise _VersionChanged
        df = {t: self._df[t] for t in terms if t in self._df}
        gathered = {t: sum(part.get(t, 0) for part in parts) for t in missing}
        df.update(gathered)
        if len(parts) == len(self.shards):  # only complete sums are cached
            self._df.update(gathered)
            while len(self._df) > self.df_cache_terms:
                self._df.popitem(last=False)
        return self._corpus(df)

    def _corpus(self, df: dict[str, int]) -> CorpusStats:
        docs = sum(meta.docs for meta in self._meta.values())
        length = sum(meta.length for meta in self._meta.values())
        return CorpusStats(docs, length, {t: n for t, n in df.items() if n > 0})

    # -- leaf requests ----------------------------------------------------------------

    async def _send(
        self, replica: Replica, method: str, target: str, body: bytes | None, end: float
    ) -> dict[str, Any] | _Failure:
        loop = asyncio.get_running_loop()
        started = loop.time()
        remaining = end - started
        if remaining <= 0:
            return _Failure("timed_out")
        headers = [(b"Content-Type", b"application/json")] if body is not None else []
        request = Request(method, target, headers, body if body is not None else b"")
        replica.started()
        seconds: float | None = None
        try:
            async with asyncio.timeout(remaining):
                response = await self._pool.send(
                    self._upstreams[replica.url], request, timeout=remaining
                )
                data = await response.read(MAX_LEAF_ANSWER_BYTES)
        except TimeoutError:
            return _Failure("timed_out")
        except (UpstreamError, OSError):
            replica.failed()
            return _Failure("failed")
        else:
            if response.status == 504:
                return _Failure("timed_out")
            if response.status != 200:
                replica.failed()
                return _Failure("failed")
            try:
                answer: dict[str, Any] = json.loads(data)
            except ValueError:
                replica.failed()
                return _Failure("failed")
            seconds = loop.time() - started
            return answer
        finally:
            replica.finished(seconds)

    async def _ask(
        self,
        shard: ShardReplicas,
        method: str,
        target: str,
        body: bytes | None,
        state: _QueryState,
    ) -> dict[str, Any] | _Failure:
        """One request to a shard: best replica, hedged past its p95, failed over at once."""
        loop = asyncio.get_running_loop()
        tried: list[Replica] = []
        running: dict[asyncio.Task[dict[str, Any] | _Failure], Replica] = {}
        hedged: asyncio.Task[dict[str, Any] | _Failure] | None = None
        outcome = _Failure("failed")

        def launch() -> asyncio.Task[dict[str, Any] | _Failure] | None:
            replica = shard.choose() if not tried else self._untried(shard, tried)
            if replica is None:
                return None
            tried.append(replica)
            task = asyncio.create_task(self._send(replica, method, target, body, state.end))
            running[task] = replica
            return task

        self.budget.request(loop.time())
        first = launch()
        try:
            while running:
                delay = shard.hedge_delay() if self.hedge == "auto" and hedged is None else None
                remaining = state.end - loop.time()
                wait = remaining if delay is None else min(delay, remaining)
                done, _ = await asyncio.wait(
                    running, timeout=max(wait, 0.0), return_when=asyncio.FIRST_COMPLETED
                )
                if not done:
                    if loop.time() >= state.end:
                        outcome = _Failure("timed_out")
                        break
                    # Slower than the shard's p95: hedge once, if the budget allows.
                    if self._untried(shard, tried) is None:
                        pass
                    elif self.budget.try_hedge(loop.time()):
                        hedged = launch()
                        if hedged is not None:
                            self.m_hedges.inc()
                            continue
                    else:
                        self.m_hedges_refused.inc()
                    hedged = first  # no hedge for this request after all: stop asking
                    continue
                for task in done:
                    running.pop(task)
                    result = task.result()
                    if not isinstance(result, _Failure):
                        if task is hedged and hedged is not first:
                            self.m_hedges_won.inc()
                            self.budget.won += 1
                        return result
                    outcome = result
                if not running and outcome.kind == "failed" and loop.time() < state.end:
                    launch()  # fail over to a replica not tried yet
            return outcome
        finally:
            for task in running:
                task.cancel()
            if running:
                await asyncio.gather(*running, return_exceptions=True)

    @staticmethod
    def _untried(shard: ShardReplicas, tried: list[Replica]) -> Replica | None:
        rest = [r for r in shard.replicas if r not in tried]
        if not rest:
            return None
        return min(rest, key=Replica.cost)

    async def _search_shard(
        self,
        shard: ShardReplicas,
        terms: list[str],
        k: int,
        stats: CorpusStats,
        state: _QueryState,
    ) -> None:
        loop = asyncio.get_running_loop()
        started = loop.time()
        payload = {
            "terms": terms,
            "k": k,
            "stats": stats.to_json(),
            "deadline_ms": max(0.0, (state.end - started) * 1000),
            "snippets": True,
        }
        answer = await self._ask(shard, "POST", "/search", json.dumps(payload).encode(), state)
        if isinstance(answer, _Failure):
            self.m_leaf.labels(str(shard.shard), answer.kind).inc()
            state.outcomes[shard.shard] = answer.kind
            return
        try:
            hits = [
                Hit(
                    str(h["id"]), float(h["score"]), shard.shard, str(h["title"]), str(h["snippet"])
                )
                for h in answer["hits"]
            ]
            matches = int(answer["matches"])
            version = str(answer["version"])
        except (KeyError, TypeError, ValueError):
            self.m_leaf.labels(str(shard.shard), "failed").inc()
            state.outcomes[shard.shard] = "failed"
            return
        shard.window.add(loop.time() - started)
        self.m_leaf.labels(str(shard.shard), "answered").inc()
        state.outcomes[shard.shard] = "answered"
        state.answers[shard.shard] = ShardAnswer(shard.shard, hits, matches, k)
        state.versions[shard.shard] = version

    # -- queries ----------------------------------------------------------------------

    def first_round_q(self, k: int) -> int:
        """Hits asked of each shard in the first round."""
        if self.top_q is not None:
            return min(k, self.top_q)
        return min(k, max(1, math.ceil(TOP_Q_FACTOR * k / len(self.shards))))

    async def search(
        self, text: str, k: int = DEFAULT_K, *, deadline: float | None = None
    ) -> SearchResult:
        """Answer one query over every shard.

        Args:
            text: the query; its distinct words are OR-ed and scored with BM25.
            k: hits wanted.
            deadline: seconds allowed (default: the root's).

        Returns:
            The merged top ``k`` (exact over the shards that answered) and its coverage.

        Raises:
            CoverageTooLow: less than ``min_coverage`` of the corpus answered.
        """
        loop = asyncio.get_running_loop()
        began = loop.time()
        end = began + (self.deadline if deadline is None else deadline)
        terms = query_terms(text)[:MAX_QUERY_TERMS]
        result = None
        for _ in range(2):  # a second pass only when a leaf's index changed under the cache
            try:
                result = await self._search_once(text, terms, k, began, end)
                break
            except _VersionChanged:
                self._df.clear()
                continue
        if result is None:
            result = await self._search_once(text, terms, k, began, end, check_versions=False)
        self.m_seconds.observe(result.took)
        if result.coverage.fraction < self.min_coverage:
            self.m_queries.labels("unavailable").inc()
            raise CoverageTooLow(result, self.min_coverage)
        self.m_queries.labels("degraded" if result.degraded else "ok").inc()
        return result

    async def _search_once(
        self,
        text: str,
        terms: list[str],
        k: int,
        began: float,
        end: float,
        *,
        check_versions: bool = True,
    ) -> SearchResult:
        loop = asyncio.get_running_loop()
        state = _QueryState(end)
        rounds = 1
        if terms:
            stats = await self._statistics(terms, state)
            q = self.first_round_q(k)
            await asyncio.gather(
                *(
                    self._search_shard(shard, terms, q, stats, state)
                    for shard in self.shards
                    if shard.shard not in state.outcomes  # not left out by the statistics step
                )
            )
            if check_versions:
                for shard, version in state.versions.items():
                    meta = self._meta.get(shard)
                    if meta is not None and meta.version != version:
                        del self._meta[shard]
                        raise _VersionChanged
            again = shards_to_ask_again(state.answers.values(), k)
            if again:
                rounds = 2
                self.m_second_round.inc(len(again))
                await asyncio.gather(
                    *(self._search_shard(self.shards[i], terms, k, stats, state) for i in again)
                )
        else:
            state.outcomes = {shard.shard: "answered" for shard in self.shards}
        hits = merge(state.answers.values(), k)
        outcomes = list(state.outcomes.values())
        answered = [i for i, o in state.outcomes.items() if o == "answered"]
        known = {i: meta.docs for i, meta in self._meta.items()}
        coverage = Coverage(
            shards=len(self.shards),
            asked=len(state.outcomes) if terms else 0,
            answered=len(answered),
            failed=outcomes.count("failed"),
            timed_out=outcomes.count("timed_out"),
            docs=sum(known.get(i, 0) for i in answered),
            docs_total=sum(known.values()),
            counted=len(known),
        )
        return SearchResult(text, k, hits, coverage, loop.time() - began, rounds)

    # -- HTTP -------------------------------------------------------------------------

    async def handle(self, request: Request) -> Response:
        """``GET /search?q=...&k=10`` (and ``GET /stats``) as JSON."""
        path = request.path
        if path == "/stats":
            return _json(200, self.describe())
        if path != "/search":
            return _json(404, {"error": f"no route {path}; try /search?q=...&k=10"})
        if request.method not in ("GET", "HEAD"):
            return Response(405, [(b"Allow", b"GET")], b"use GET\n")
        query = parse_qs(request.query_string, keep_blank_values=True)
        text = query.get("q", [None])[-1]
        if text is None or not text.strip():
            self.m_queries.labels("bad").inc()
            return _json(400, {"error": "q is required: /search?q=words&k=10"})
        k_text = query.get("k", [str(DEFAULT_K)])[-1]
        if not k_text.isdigit() or not 1 <= int(k_text) <= MAX_K:
            self.m_queries.labels("bad").inc()
            return _json(400, {"error": f"k must be a whole number 1-{MAX_K}"})
        try:
            result = await self.search(text, int(k_text))
        except CoverageTooLow as exc:
            body = exc.result.to_json()
            body["error"] = str(exc)
            del body["hits"]
            return _json(503, body)
        response = _json(200, result.to_json())
        if self.max_age > 0:
            # A partial answer must not outlive the leaf that was missing from it.
            value = "no-store" if result.degraded else f"public, max-age={int(self.max_age)}"
            response.headers.append((b"Cache-Control", value.encode()))
        return response

    def describe(self) -> dict[str, Any]:
        """The corpus as last reported by the shards, and the hedging figures."""
        hedges = self.budget.statistics()
        return {
            "shards": [
                {
                    "shard": shard.shard,
                    "replicas": [r.url for r in shard.replicas],
                    "version": meta.version if (meta := self._meta.get(shard.shard)) else None,
                    "docs": meta.docs if meta else None,
                    "p95_ms": round(p95 * 1000, 3)
                    if (p95 := shard.window.quantile(0.95)) is not None
                    else None,
                }
                for shard in self.shards
            ],
            "docs": self.corpus_docs(),
            "cached_terms": len(self._df),
            "hedges": {"sent": hedges.sent, "won": hedges.won, "refused": hedges.refused},
        }


def _json(status: int, body: object) -> Response:
    data = json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode()
    return Response(status, [(b"Content-Type", b"application/json")], data + b"\n")


@dataclass(frozen=True, slots=True)
class RootOptions:
    """``podkit search root``'s settings."""

    host: str
    port: int
    leaves: tuple[tuple[str, ...], ...]
    deadline: float = DEFAULT_DEADLINE
    hedge: Hedge = "auto"
    min_coverage: float = 0.0
    top_q: int | None = None
    hedge_ratio: float = 0.05
    connect_timeout: float = DEFAULT_CONNECT_TIMEOUT
    seed: int | None = None
    max_age: float = DEFAULT_MAX_AGE
    limits: ServerLimits = field(default_factory=ServerLimits)
    access_log: AccessLogSettings = field(default_factory=AccessLogSettings)


async def serve_root(rt: Runtime, options: RootOptions) -> None:
    """Serve the root until the runtime drains.

    Raises:
        PodkitError: the address cannot be bound.
    """
    async with SearchRoot(
        options.leaves,
        deadline=options.deadline,
        hedge=options.hedge,
        min_coverage=options.min_coverage,
        top_q=options.top_q,
        hedge_ratio=options.hedge_ratio,
        connect_timeout=options.connect_timeout,
        seed=options.seed,
        registry=rt.registry,
        max_age=options.max_age,
    ) as root:

        def status() -> dict[str, Any]:
            view = root.describe()
            known = sum(1 for s in view["shards"] if s["version"])
            view["summary"] = (
                f"{known}/{len(root.shards)} shards seen, {view['docs']} documents, "
                f"hedges {view['hedges']['sent']} sent {view['hedges']['won']} won"
            )
            return view

        rt.add_status(status)
        async with HTTPServer(
            root.handle,
            host=options.host,
            port=options.port,
            limits=options.limits,
            registry=rt.registry,
            metrics_prefix="podkit_search_http",
            name="search-root",
            access_log=options.access_log,
        ) as server:
            rt.on_reload(server.reopen_access_log)
            rt.log.info(
                "listening",
                extra={"listen": f"{options.host}:{server.port}", "shards": len(options.leaves)},
            )
            rt.set_ready()
            await rt.wait_draining()
            await server.drain(rt.drain_timeout)


__all__ = ["Coverage", "CoverageTooLow", "RootOptions", "SearchResult", "SearchRoot", "serve_root"]
