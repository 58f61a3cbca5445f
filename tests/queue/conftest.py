"""Queue URLs on both backends: a SQLite file and a real redis-server."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from podkit.testing import RedisServer


class ManualClock:
    """A wall clock the test moves by hand, so delays and timeouts need no sleeping."""

    def __init__(self, start: float = 1_700_000_000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


@pytest.fixture(params=["sqlite", "redis"])
def queue_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """The URL of an empty store: a SQLite file, or a fresh redis-server."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path}/queue.db"
    else:
        with RedisServer() as server:
            yield server.url
