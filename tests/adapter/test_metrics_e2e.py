"""The metrics adapter against real servers: pages pass promtool, counters move, and a
stopped server gives ``<prefix>_up 0`` on a valid page."""

from __future__ import annotations

import asyncio
import http.client
import json
import socket
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from podkit.adapter.metrics import MetricsAdapter, make_source
from podkit.testing import (
    HAProxyServer,
    MemcachedServer,
    NginxServer,
    PodkitProcess,
    PostgresServer,
    RedisServer,
    free_port,
    wait_http,
)
from tests.adapter.conftest import promtool_check, samples


async def scrape(adapter: MetricsAdapter) -> bytes:
    page = (await adapter.scrape()).render()
    promtool_check(page)
    return page


@pytest.fixture
async def opened() -> AsyncIterator[list[MetricsAdapter]]:
    adapters: list[MetricsAdapter] = []
    yield adapters
    for adapter in adapters:
        await adapter.source.aclose()


async def open_adapter(
    opened: list[MetricsAdapter], kind: str, value: str, **kw: object
) -> MetricsAdapter:
    source = make_source(kind, value, map_file=kw.pop("map_file", None), max_series=1000)  # type: ignore[arg-type]
    await source.start()
    adapter = MetricsAdapter(source, **kw)  # type: ignore[arg-type]
    opened.append(adapter)
    return adapter


async def test_redis_page_follows_redis_exporter_and_moves_with_use(
    redis_server: RedisServer, opened: list[MetricsAdapter]
) -> None:
    adapter = await open_adapter(opened, "redis", redis_server.url)
    first = samples(await scrape(adapter))
    assert first["redis_up"] == 1
    from podkit.adapter._resp import RedisAddress, open_redis

    async with open_redis(RedisAddress.parse(redis_server.url)) as conn:
        for n in range(20):
            await conn.call("SET", f"k{n}", "v")
        await conn.call("GET", "k1")
        await conn.call("GET", "missing")
    second = samples(await scrape(adapter))
    assert second["redis_commands_processed_total"] > first["redis_commands_processed_total"]
    assert second['redis_db_keys{db="db0"}'] == 20
    assert second['redis_commands_total{cmd="set"}'] == 20
    assert second["redis_keyspace_hits_total"] >= 1
    assert second["redis_keyspace_misses_total"] >= 1
    assert any(k.startswith("redis_instance_info{") for k in second)
    redis_server.stop()
    down = await scrape(adapter)
    values = samples(down)
    assert values["redis_up"] == 0
    assert values['redis_scrape_error{reason="connection refused"}'] == 1
    assert "redis_scrape_duration_seconds" in values
    assert values["redis_exporter_scrape_failures_total"] == 1


async def test_memcached_page_counts_hits_and_misses(
    memcached_server: MemcachedServer, opened: list[MetricsAdapter]
) -> None:
    adapter = await open_adapter(
        opened, "memcached", f"{memcached_server.host}:{memcached_server.port}"
    )
    before = samples(await scrape(adapter))
    with socket.create_connection((memcached_server.host, memcached_server.port)) as sock:
        sock.sendall(b"set a 0 0 1\r\nx\r\nget a\r\nget b\r\n")
        data = b""
        while data.count(b"END\r\n") < 2:
            data += sock.recv(4096)
    after = samples(await scrape(adapter))
    assert after["memcached_up"] == 1
    hit = 'memcached_commands_total{command="get",status="hit"}'
    miss = 'memcached_commands_total{command="get",status="miss"}'
    assert after[hit] == before[hit] + 1
    assert after[miss] == before[miss] + 1
    assert after["memcached_current_items"] == 1
    memcached_server.stop()
    assert samples(await scrape(adapter))["memcached_up"] == 0


async def test_nginx_stub_status_page_counts_requests(
    nginx_server: NginxServer, opened: list[MetricsAdapter]
) -> None:
    adapter = await open_adapter(opened, "nginx_status", nginx_server.status_url)
    before = samples(await scrape(adapter))
    async with httpx.AsyncClient() as client:
        for _ in range(5):
            assert (await client.get(nginx_server.url)).status_code == 200
    after = samples(await scrape(adapter))
    assert after["nginx_up"] == 1
    assert after["nginx_http_requests_total"] >= before["nginx_http_requests_total"] + 5
    assert after["nginx_connections_accepted_total"] >= 1
    nginx_server.stop()
    values = samples(await scrape(adapter))
    assert values["nginx_up"] == 0


async def test_haproxy_csv_page_has_frontend_backend_and_server_metrics(
    haproxy_server: HAProxyServer, opened: list[MetricsAdapter]
) -> None:
    adapter = await open_adapter(opened, "haproxy_stats", haproxy_server.stats_url)
    async with httpx.AsyncClient() as client:
        for _ in range(3):
            assert (await client.get(haproxy_server.url)).status_code == 200
    values = samples(await scrape(adapter))
    assert values["haproxy_up"] == 1
    assert values['haproxy_frontend_http_requests_total{frontend="web"}'] >= 3
    assert values['haproxy_backend_http_responses_total{backend="app",code="2xx"}'] >= 3
    assert values['haproxy_server_up{backend="app",server="app1"}'] == 1
    assert values['haproxy_server_sessions_total{backend="app",server="app1"}'] >= 3
    haproxy_server.stop()
    assert samples(await scrape(adapter))["haproxy_up"] == 0


async def test_postgres_page_follows_postgres_exporter_and_moves_with_use(
    postgres_server: PostgresServer, opened: list[MetricsAdapter]
) -> None:
    adapter = await open_adapter(opened, "postgres", postgres_server.url, timeout=10.0)
    before = samples(await scrape(adapter))
    assert before["pg_up"] == 1
    from podkit.adapter._postgres import fetch_many

    await fetch_many(
        postgres_server.url,
        ["CREATE TABLE t (n int)", "INSERT INTO t SELECT generate_series(1, 50)"],
        timeout=10,
    )
    after = samples(await scrape(adapter))
    key = next(
        k
        for k in after
        if k.startswith("pg_stat_database_tup_inserted_total{") and '"postgres"' in k
    )
    assert after[key] >= before.get(key, 0) + 50
    commits = next(
        k
        for k in after
        if k.startswith("pg_stat_database_xact_commit_total{") and '"postgres"' in k
    )
    assert after[commits] > before[commits]
    assert after["pg_settings_max_connections"] > 0
    assert any(k.startswith("pg_stat_activity_connections{") for k in after)
    postgres_server.stop()
    assert samples(await scrape(adapter))["pg_up"] == 0


async def test_a_source_slower_than_the_timeout_is_down_with_the_reason(
    opened: list[MetricsAdapter],
) -> None:
    """A server that accepts but never answers: the page says timed out, within the timeout."""
    accepted: list[asyncio.StreamWriter] = []

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        accepted.append(writer)

    server = await asyncio.start_server(silent, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        adapter = await open_adapter(opened, "memcached", f"127.0.0.1:{port}", timeout=0.2)
        values = samples(await scrape(adapter))
        assert values["memcached_up"] == 0
        assert values['memcached_scrape_error{reason="timed out after 0.2s"}'] == 1
    finally:
        server.close()
        for writer in accepted:
            writer.close()
        await server.wait_closed()


def test_the_command_serves_a_valid_page_while_its_source_is_down(tmp_path: Path) -> None:
    """``podkit adapt metrics`` answers 200 with ``redis_up 0`` for a Redis that is not there."""
    port = free_port()
    with PodkitProcess(
        "adapt", "metrics", "--listen", f"127.0.0.1:{port}",
        "--redis", f"redis://127.0.0.1:{free_port()}", "--timeout", "500ms",
    ):  # fmt: skip
        wait_http("127.0.0.1", port, "/healthz")
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
        conn.request("GET", "/metrics")
        response = conn.getresponse()
        page = response.read()
        conn.close()
        assert response.status == 200
        assert response.getheader("Content-Type", "").startswith("text/plain; version=0.0.4")
        promtool_check(page)
        assert samples(page)["redis_up"] == 0


def test_json_and_command_sources_are_mapped_by_the_map_file(tmp_path: Path) -> None:
    """A JSON endpoint (whoami's /echo is not JSON: use a command printing JSON instead)."""
    document = {"requests": 12, "queues": {"mail": {"depth": 3}, "thumbs": {"depth": 5}}}
    (tmp_path / "doc.json").write_text(json.dumps(document))
    (tmp_path / "map.yaml").write_text(
        "metrics:\n"
        "  - {name: app_requests_total, path: requests, type: counter, help: Requests.}\n"
        "  - name: app_queue_depth\n    path: queues.*\n    value: depth\n"
        "    labels: {queue: '{@key}', env: test}\n"
    )
    port = free_port()
    with PodkitProcess(
        "adapt", "metrics", "--listen", f"127.0.0.1:{port}",
        "--command", f"cat {tmp_path / 'doc.json'}", "--map", str(tmp_path / "map.yaml"),
    ):  # fmt: skip
        wait_http("127.0.0.1", port, "/healthz")
        page = httpx.get(f"http://127.0.0.1:{port}/metrics").content
    promtool_check(page)
    values = samples(page)
    assert values["command_up"] == 1
    assert values["app_requests_total"] == 12
    assert values['app_queue_depth{env="test",queue="mail"}'] == 3
    assert values['app_queue_depth{env="test",queue="thumbs"}'] == 5


async def test_a_json_endpoint_is_mapped(opened: list[MetricsAdapter], tmp_path: Path) -> None:
    body = json.dumps({"stats": {"users": [{"name": "a", "n": 1}, {"name": "b", "n": "2"}]}})

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(
            b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nConnection: close\r\n"
            + f"Content-Length: {len(body)}\r\n\r\n{body}".encode()
        )
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    (tmp_path / "map.yaml").write_text(
        "metrics:\n  - name: users_n\n    path: $.stats.users[*]\n    value: n\n"
        "    labels: {user: '{name}'}\n"
    )
    try:
        adapter = await open_adapter(
            opened,
            "json",
            f"http://127.0.0.1:{port}/",
            map_file=str(tmp_path / "map.yaml"),
            prefix="app",
        )
        values = samples(await scrape(adapter))
    finally:
        server.close()
    assert values["app_up"] == 1
    assert values['app_users_n{user="a"}'] == 1
    assert values['app_users_n{user="b"}'] == 2
