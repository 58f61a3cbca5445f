"""The media example: a copier to two consumers, a filter and a merger."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from podkit.batch.pipeline.local import LocalRunner
from podkit.batch.pipeline.model import load_pipeline

ROOT = Path(__file__).parents[2]


def test_media_indexes_every_upload_and_thumbnails_only_images(tmp_path: Path) -> None:
    uploads = tmp_path / "uploads"
    (uploads / "2024").mkdir(parents=True)
    files = {"a.png": b"\x89PNG fake", "b.txt": b"notes", "2024/c.JPG": b"\xff\xd8 jpeg"}
    for name, data in files.items():
        (uploads / name).write_bytes(data)
    out = tmp_path / "events.log"
    spec = load_pipeline(
        ROOT / "examples" / "media" / "pipeline.yaml", {"input": str(uploads), "output": str(out)}
    )
    result = LocalRunner(spec).run()
    lines = sorted(out.read_text().splitlines())
    indexed = sorted(
        f"indexed {Path(n).name} sha256:{hashlib.sha256(d).hexdigest()}" for n, d in files.items()
    )
    assert [line for line in lines if line.startswith("indexed")] == indexed
    assert sorted(line.split()[1] for line in lines if line.startswith("thumbnail")) == [
        "a.png",
        "c.JPG",
    ]
    assert result.stages["copy"].items_out == 6
    assert result.stages["only_images"].items_out == 2
    assert result.stages["merge"].items_in == 5


def test_the_flagship_pipeline_stages_each_document_beside_its_leafs_shard(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """examples/search/ingest.yaml, run in process over the new documents: each one is staged
    once, normalised, in the shard directory that `podkit search index` puts it in, and the
    build over corpus and staged documents finds it."""
    from podkit.batch.pipeline.model import parse_pipeline
    from podkit.runtime.config import load_yaml
    from podkit.serving.search import ShardIndex, build_index, read_documents, shard_of

    example = Path(__file__).parents[2] / "examples" / "search"
    data = load_yaml(example / "ingest.yaml")
    new = sorted(str(p) for p in (example / "new").glob("*.md"))
    data["topics"]["backend"] = "memory://"
    data["inputs"]["docs"] = {"items": [{"path": p} for p in [*new, new[0]]], "group": "g"}
    spec = parse_pipeline(data, values={"store": "memory://", "shards": "3"}, base_dir=str(example))
    monkeypatch.setenv("SEARCH_DATA", str(tmp_path))
    monkeypatch.setenv("SEARCH_SHARDS", "3")
    result = LocalRunner(spec).run()
    assert not result.dead
    assert result.stages["stage"].items_in == len(new) + 1  # one document twice: one file
    staged = sorted((tmp_path / "staged").rglob("*.jsonl"))
    assert len(staged) == len(new)
    for path in staged:
        record = json.loads(path.read_text())
        assert path.parent.name == f"shard-{shard_of(record['id'], 3)}"
        assert record["title"] == Path(record["id"]).read_text().splitlines()[0]
    build_index(
        read_documents([Path(__file__).parents[2] / "examples" / "search-tier-docs.jsonl",
                        tmp_path / "staged"]),
        tmp_path / "next",
        shards=3,
    )  # fmt: skip
    for k in range(3):
        ids = ShardIndex(tmp_path / "next" / f"shard-{k}").ids
        assert {
            json.loads(p.read_text())["id"] for p in staged if p.parent.name == f"shard-{k}"
        } <= set(ids)
