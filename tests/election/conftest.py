"""Fixtures for the election tests: one lease backend of each kind, each on a real server."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from podkit.backends.leases import LeaseBackend, open_lease_backend
from podkit.testing import EtcdServer, RedisServer


@dataclass
class BackendTarget:
    """A backend under test: its URL and, for server backends, the server to restart."""

    kind: str
    url: str
    server: RedisServer | EtcdServer | None = None

    def open(self) -> LeaseBackend:
        return open_lease_backend(self.url)

    def restart(self) -> None:
        assert self.server is not None, f"{self.kind} has no server to restart"
        self.server.restart()


@pytest.fixture(params=["sqlite", "redis", "etcd"])
def target(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[BackendTarget]:
    """Each backend kind in turn: a SQLite file, a real redis-server, a real etcd."""
    if request.param == "sqlite":
        yield BackendTarget("sqlite", f"sqlite:///{tmp_path}/leases.db")
    elif request.param == "redis":
        with RedisServer() as redis_server:
            yield BackendTarget("redis", redis_server.url, redis_server)
    else:
        with EtcdServer() as etcd_server:
            yield BackendTarget("etcd", etcd_server.url, etcd_server)


@pytest.fixture
async def backend(target: BackendTarget) -> AsyncIterator[LeaseBackend]:
    """An open lease backend on ``target``, closed after the test."""
    async with target.open() as opened:
        yield opened
