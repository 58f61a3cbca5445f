"""A leaf serves a rebuilt index without a restart, and a root in front follows the version."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from podkit.serving.search import Document, LeafApp, ShardIndex, build_index, shard_of
from podkit.serving.search.leaf import serve_index_changes
from podkit.testing import PodkitProcess, free_port, wait_http
from podkit.testing.net import wait_for

from .conftest import leaves_and_root

BASE = [
    Document("a", "Sidecar", "a sidecar adds HTTPS to a legacy app"),
    Document("b", "Ambassador", "an ambassador brokers a service for the app"),
]
NEW = Document("e", "Fencing", "fencing tokens stop a deposed leader")  # shard 1 of 2, like a, b


def get_json(port: int, path: str) -> Any:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as response:
        return json.loads(response.read())


def test_a_leaf_process_serves_a_rebuilt_index_without_a_restart(tmp_path: Path) -> None:
    """`podkit search index` over a served shard: the leaf finds the new document, same pid."""
    out = tmp_path / "idx"
    build_index(BASE, out, shards=1)
    port, admin = free_port(), free_port()
    leaf = PodkitProcess(
        "search", "leaf", "--listen", f"127.0.0.1:{port}", "--index", str(out / "shard-0"),
        "--reload-check", "100ms", "--access-log", "off", "--admin", f"127.0.0.1:{admin}",
    )  # fmt: skip
    with leaf:
        wait_http("127.0.0.1", port, "/stats", timeout=20)
        pid = leaf.pid
        before = get_json(port, "/stats")
        assert get_json(port, "/search?q=fencing")["hits"] == []
        docs = tmp_path / "docs.jsonl"
        docs.write_text(
            "".join(
                json.dumps({"id": d.id, "title": d.title, "body": d.body}) + "\n"
                for d in [*BASE, NEW]
            )
        )
        built = subprocess.run(
            [sys.executable, "-m", "podkit", "search", "index", "--shards", "1", "--out",
             str(out), str(docs)],
            capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip
        assert built.returncode == 0, built.stderr
        wait_for(
            lambda: get_json(port, "/stats")["version"] != before["version"],
            timeout=10,
            what="the leaf to serve the rebuilt index",
        )
        hits = get_json(port, "/search?q=fencing")["hits"]
        assert [h["id"] for h in hits] == ["e"]
        assert get_json(port, "/stats")["docs"] == 3
        metrics = urllib.request.urlopen(f"http://127.0.0.1:{admin}/metrics", timeout=5).read()
        assert b'podkit_search_leaf_index_reloads_total{result="reloaded"} 1.0' in metrics
        assert leaf.pid == pid
        assert leaf.proc.poll() is None  # the same process: no restart


@pytest.mark.asyncio
async def test_a_root_finds_a_document_added_by_a_rebuild_under_its_leaves(
    tmp_path: Path,
) -> None:
    """The root's cached corpus statistics follow the leaves' new version: the new document is
    found with corpus-wide scores; the shard whose content did not change is not reloaded, and
    an index still held by a search reads its own documents after the rebuild replaced them."""
    out = tmp_path / "idx"
    build_index(BASE, out, shards=2)
    indexes = [ShardIndex(out / f"shard-{k}") for k in range(2)]
    async with leaves_and_root([[indexes[0]], [indexes[1]]]) as (root, apps):
        first = await root.search("app fencing", k=5)
        assert "e" not in [h.id for h in first.hits]
        shard = shard_of("e", 2)
        held = apps[shard][0].index
        held_first = held.document(0)
        async with asyncio.TaskGroup() as tasks:
            watches = [
                tasks.create_task(serve_index_changes(app[0], out / f"shard-{k}", interval=0.05))
                for k, app in enumerate(apps)
            ]
            await asyncio.sleep(0)  # the watches take their first look at the served index
            await asyncio.to_thread(build_index, [NEW, *BASE], out, shards=2)  # e first
            for _ in range(200):  # poll, with a deadline of 10 s
                if apps[shard][0].reloads:
                    break
                await asyncio.sleep(0.05)
            for watch in watches:
                watch.cancel()
        assert held.docs == len([d for d in BASE if shard_of(d.id, 2) == shard])  # left intact
        assert held.document(0) == held_first  # its files were replaced, not what it reads
        assert apps[shard][0].reloads == 1
        assert apps[1 - shard][0].reloads == 0  # the same content: nothing to swap
        after = await root.search("app fencing", k=5)
        assert after.hits[0].id == "e"
        assert after.coverage.docs == 3


@pytest.mark.asyncio
async def test_a_half_replaced_index_is_kept_out_and_tried_again(tmp_path: Path) -> None:
    """A meta.json that changed but whose shard cannot be read yet leaves the old index
    served; once the files are whole, the next check swaps them in."""
    out = tmp_path / "idx"
    build_index(BASE, out, shards=1)
    app = LeafApp(ShardIndex(out / "shard-0"))
    old_version = app.index.version
    shard = out / "shard-0"
    errors: list[str] = []
    watch = asyncio.create_task(
        serve_index_changes(app, shard, interval=0.02, on_error=errors.append)
    )
    await asyncio.sleep(0)  # the watch takes its first look at the served index
    postings = (shard / "postings.bin").read_bytes()
    meta = json.loads((shard / "meta.json").read_text())
    (shard / "postings.bin").unlink()
    meta["version"] = "0000000000000000"
    (shard / "meta.json").write_text(json.dumps(meta))
    try:
        for _ in range(200):
            if errors:
                break
            await asyncio.sleep(0.02)
        assert errors, "the broken index was not looked at"
        assert app.index.version == old_version
        (shard / "postings.bin").write_bytes(postings)
        for _ in range(200):
            if app.reloads:
                break
            await asyncio.sleep(0.02)
        assert app.index.version == "0000000000000000"
    finally:
        watch.cancel()
        await asyncio.gather(watch, return_exceptions=True)
