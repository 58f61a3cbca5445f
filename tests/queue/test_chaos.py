"""Soak: workers SIGKILLed at random while thousands of items run; nothing is lost."""

from __future__ import annotations

from pathlib import Path

import pytest

from podkit.testing import RedisServer


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["redis", "sqlite"])
def test_random_sigkills_lose_no_item_and_duplicates_stay_bounded(
    backend: str, redis_server: RedisServer, tmp_path: Path
) -> None:
    from bench.queue_chaos import run

    url = redis_server.url if backend == "redis" else f"sqlite:///{tmp_path}/chaos.db"
    result = run(url, redis_server.url, 3000, 3, seed=11)
    assert result["kills"] >= 1
    assert result["zero_loss"], result
    assert result["processed_at_least_once"] == result["acked"] == 3000
