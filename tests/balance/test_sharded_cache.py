"""examples/sharded-cache.yaml: a balancer hashing on the URI in front of four caches."""

from __future__ import annotations

import json
import urllib.request
from pathlib import Path

import yaml

from podkit.testing.net import free_port, wait_for
from tests.pods.test_supervisor import podkit_cli, run_pods

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "sharded-cache.yaml"
URLS = [f"/cache/600?item={i}" for i in range(1000)]


def _get(url: str) -> tuple[int, str]:
    with urllib.request.urlopen(url, timeout=10) as response:
        response.read()
        return response.status, response.headers.get("X-Cache", "")


def _metric(text: str, name: str) -> float:
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    raise AssertionError(f"no {name} in metrics")


def test_each_url_is_cached_on_one_shard_and_removing_a_shard_moves_only_its_urls(
    tmp_path: Path,
) -> None:
    origin_port, cache_port, admin_port = free_port(), free_port(), free_port()
    text = EXAMPLE.read_text()
    for old, new in ((8000, origin_port), (8080, cache_port), (9000, admin_port)):
        text = text.replace(f":{old}", f":{new}").replace(f"port: {old}", f"port: {new}")
    pods = yaml.safe_load(text)["pods"]
    with run_pods(tmp_path, pods) as running:
        running.wait_ready("origin", 1)
        running.wait_ready("cache", 4)
        running.wait_ready("tier", 1)
        tier = f"http://127.0.3.1:{cache_port}"
        wait_for(
            lambda: len(running.discovery("cache", cache_port)) == 4,
            timeout=30,
            what="four cache shards in the tier's backends file",
        )

        def backends_in_rotation() -> int:
            """Ready backends, once every backend listed is ready."""
            with urllib.request.urlopen(f"http://127.0.3.1:{admin_port}/backends") as r:
                document = json.loads(r.read())
            return int(document["ready"]) if document["ready"] == document["total"] else -1

        wait_for(lambda: backends_in_rotation() == 4, timeout=30, what="four ready shards")

        def origin_fetches() -> int:
            with urllib.request.urlopen(f"http://127.0.1.1:{origin_port}/stats") as r:
                return int(json.loads(r.read())["paths"].get("/cache/600", 0))

        assert all(_get(tier + url)[0] == 200 for url in URLS)
        assert origin_fetches() == 1000
        assert all(_get(tier + url)[1] == "HIT" for url in URLS)
        assert origin_fetches() == 1000

        held = []
        for replica in range(1, 5):
            with urllib.request.urlopen(f"http://127.0.2.{replica}:{admin_port}/metrics") as r:
                held.append(_metric(r.read().decode(), "podkit_cache_objects"))
        assert sum(held) == 1000
        assert all(150 <= count <= 350 for count in held), held  # about 1/4 each

        assert podkit_cli(tmp_path, "scale", "cache", "3").returncode == 0
        wait_for(lambda: backends_in_rotation() == 3, timeout=30, what="three shards")
        misses = sum(_get(tier + url)[1] != "HIT" for url in URLS)
        assert misses == held[3]  # only the removed shard's URLs moved
        assert origin_fetches() == 1000 + held[3]
