"""Leaf and root in one process: the statistics cache, deadlines passed down, bad requests."""

from __future__ import annotations

import json
from pathlib import Path

from prometheus_client import CollectorRegistry

from podkit.engines.http import HTTPServer, Request, Response
from podkit.serving.search import LeafApp, SearchRoot
from podkit.serving.search._text import query_terms
from podkit.testing.net import free_port

from .conftest import build, generated_corpus, leaves_and_root


async def test_known_terms_need_no_statistics_round_trip(tmp_path: Path) -> None:
    """The first query fetches document frequencies; a repeat of its terms does not."""
    shards = build(tmp_path, generated_corpus(300), 2)
    registry = CollectorRegistry()

    def fetches() -> float | None:
        return registry.get_sample_value("podkit_search_stats_fetches_total")

    async with leaves_and_root([[s] for s in shards], registry=registry) as (root, _):
        await root.search("alpha w1")
        assert fetches() == 1
        await root.search("w1 alpha alpha")
        assert fetches() == 1
        await root.search("w1 beta")
        assert fetches() == 2


async def test_a_leaf_with_a_new_index_refreshes_the_cached_statistics(tmp_path: Path) -> None:
    """A search answer from another index version drops the cache: exact on the new corpus."""
    old = build(tmp_path / "old", generated_corpus(400, seed=1), 2)
    new = build(tmp_path / "new", generated_corpus(900, seed=2), 2)
    one = build(tmp_path / "one", generated_corpus(900, seed=2), 1)[0]
    async with leaves_and_root([[s] for s in old]) as (root, apps):
        await root.search("alpha w2")
        for app, index in zip((a[0] for a in apps), new, strict=True):
            app.index = index  # as a leaf restarted on a rebuilt index
        result = await root.search("alpha w2", 10)
    want, _ = one.search(query_terms("alpha w2"), 10, snippets=False)
    assert [(h.id, h.score) for h in result.hits] == [(h.id, h.score) for h in want]
    assert result.coverage.docs == 900


async def test_a_leaf_answers_504_once_the_deadline_passed(tmp_path: Path) -> None:
    """The remaining budget travels as deadline_ms; a leaf past it stops scoring."""
    index = build(tmp_path, generated_corpus(100), 1)[0]
    app = LeafApp(index)
    body = {"terms": ["alpha"], "k": 3, "stats": None, "deadline_ms": 0}
    response = await app.handle(Request("POST", "/search", [], json.dumps(body).encode()))
    assert response.status == 504
    body["deadline_ms"] = 10_000
    response = await app.handle(Request("POST", "/search", [], json.dumps(body).encode()))
    assert response.status == 200


async def test_a_leaf_refuses_bad_requests_with_400(tmp_path: Path) -> None:
    """Malformed bodies and out-of-range k get 400 with the reason."""
    app = LeafApp(build(tmp_path, generated_corpus(50), 1)[0])
    for raw in (b"not json", b'{"terms": "alpha", "k": 3}', b'{"terms": ["a"], "k": 0}'):
        response = await app.handle(Request("POST", "/search", [], raw))
        assert response.status == 400, raw
    response = await app.handle(Request("GET", "/search?q=alpha&k=zero"))
    assert response.status == 400


async def test_the_root_answers_400_without_a_query(tmp_path: Path) -> None:
    """GET /search needs q; k is bounded."""
    shards = build(tmp_path, generated_corpus(50), 1)
    async with leaves_and_root([[s] for s in shards]) as (root, _):
        assert (await root.handle(Request("GET", "/search?k=3"))).status == 400
        assert (await root.handle(Request("GET", "/search?q=a&k=100000"))).status == 400
        answer = await root.handle(Request("GET", "/search?q=alpha&k=2"))
        assert answer.status == 200
        body = json.loads(bytes(answer.body))  # type: ignore[arg-type]
        assert set(body) >= {"hits", "coverage", "degraded", "took"}
        assert set(body["hits"][0]) >= {"id", "score", "shard", "snippet"}


def _cache_control(response: Response) -> list[bytes]:
    return [value for name, value in response.headers if name.lower() == b"cache-control"]


async def test_max_age_lets_a_cache_keep_complete_answers_and_never_partial_ones(
    tmp_path: Path,
) -> None:
    """With max_age a complete answer is public for that long; a degraded one is no-store;
    without it the root sends no Cache-Control."""
    shards = build(tmp_path, generated_corpus(60), 1)
    query = Request("GET", "/search?q=alpha&k=2")
    async with leaves_and_root([[s] for s in shards]) as (root, _):
        assert _cache_control(await root.handle(query)) == []
    async with leaves_and_root([[s] for s in shards], max_age=30.0) as (root, _):
        assert _cache_control(await root.handle(query)) == [b"public, max-age=30"]
    async with HTTPServer(LeafApp(shards[0]).handle, host="127.0.0.1", port=0) as server:
        leaves = [[f"http://127.0.0.1:{server.port}"], [f"http://127.0.0.1:{free_port()}"]]
        async with SearchRoot(leaves, max_age=30.0, connect_timeout=0.5) as root:
            answer = await root.handle(query)
            assert answer.status == 200
            assert json.loads(bytes(answer.body))["degraded"]  # type: ignore[arg-type]
            assert _cache_control(answer) == [b"no-store"]
