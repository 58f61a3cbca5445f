"""Shared fixtures: real servers on free loopback ports, started and stopped per test."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from podkit.testing import (
    EtcdServer,
    HAProxyServer,
    MemcachedServer,
    NginxServer,
    PostgresServer,
    RedisServer,
)


@pytest.fixture
def redis_server() -> Iterator[RedisServer]:
    """A fresh redis-server on a free port (``.url`` is ``redis://127.0.0.1:PORT/0``)."""
    with RedisServer() as server:
        yield server


@pytest.fixture
def etcd_server() -> Iterator[EtcdServer]:
    """A fresh single-member etcd on a free port (``.url`` is ``etcd://127.0.0.1:PORT``)."""
    with EtcdServer() as server:
        yield server


@pytest.fixture
def memcached_server() -> Iterator[MemcachedServer]:
    """A fresh memcached on a free port."""
    with MemcachedServer() as server:
        yield server


@pytest.fixture
def postgres_server() -> Iterator[PostgresServer]:
    """A fresh PostgreSQL cluster on a free port (``.url`` is ``postgresql://postgres@...``)."""
    with PostgresServer() as server:
        yield server


@pytest.fixture
def nginx_server() -> Iterator[NginxServer]:
    """nginx on a free port with ``stub_status`` at ``.status_url``."""
    with NginxServer() as server:
        yield server


@pytest.fixture
def haproxy_server(nginx_server: NginxServer) -> Iterator[HAProxyServer]:
    """HAProxy in front of ``nginx_server``, statistics at ``.stats_url``."""
    with HAProxyServer(f"{nginx_server.host}:{nginx_server.port}") as server:
        yield server
