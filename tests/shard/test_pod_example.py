"""examples/sharded-memcached.yaml: four memcached replicas behind ``podkit shard``."""

from __future__ import annotations

import json
import socket
import urllib.request
from pathlib import Path

import yaml

from podkit.testing.net import free_port, wait_for
from tests.pods.test_supervisor import run_pods

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "sharded-memcached.yaml"


def test_the_router_of_the_example_shards_over_every_ready_memcached(tmp_path: Path) -> None:
    memcached_port, router_port, admin_port = free_port(), free_port(), free_port()
    text = EXAMPLE.read_text()
    for old, new in (("11211", memcached_port), ("22121", router_port), ("9000", admin_port)):
        text = text.replace(f'"{old}"', f'"{new}"').replace(f":{old}", f":{new}")
        text = text.replace(f"port: {old}", f"port: {new}")
    pods = yaml.safe_load(text)["pods"]
    with run_pods(tmp_path, pods) as running:
        running.wait_ready("memcached", 4)
        running.wait_ready("router", 1)

        def shard_count() -> int:
            url = f"http://127.0.2.1:{admin_port}/shards"
            with urllib.request.urlopen(url, timeout=5) as response:
                return len(json.loads(response.read())["shards"])

        wait_for(lambda: shard_count() == 4, timeout=30, what="four shards in the router")
        with socket.create_connection(("127.0.2.1", router_port), timeout=10) as sock:
            wire = b"".join(b"set k%d 0 0 1\r\nx\r\n" % i for i in range(100))
            sock.sendall(wire + b"get " + b" ".join(b"k%d" % i for i in range(100)) + b"\r\n")
            data = b""
            while not data.endswith(b"END\r\n"):
                data += sock.recv(65536)
        assert data.count(b"STORED\r\n") == 100
        assert data.count(b"VALUE ") == 100
        held = 0
        for replica in range(1, 5):
            with socket.create_connection((f"127.0.1.{replica}", memcached_port)) as sock:
                sock.sendall(b"stats\r\n")
                stats = b""
                while not stats.endswith(b"END\r\n"):
                    stats += sock.recv(65536)
            items = next(
                int(line.split()[2]) for line in stats.splitlines() if b" curr_items " in line
            )
            assert items > 5
            held += items
        assert held == 100
