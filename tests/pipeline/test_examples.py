"""The media example: a copier to two consumers, a filter and a merger."""

from __future__ import annotations

import hashlib
from pathlib import Path

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
