"""Handlers of the media pipeline (pipeline.yaml)."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".gif", ".webp"})
THUMBNAIL_BYTES = 64  # the "thumbnail" here is the first bytes of the image, as hex


def index(item: dict[str, Any]) -> dict[str, Any]:
    """Map: an index entry (the file's SHA-256) for every upload."""
    path = Path(item["path"])
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    return {"event": "indexed", "name": path.name, "detail": f"sha256:{digest}"}


def is_image(item: dict[str, Any]) -> bool:
    """Filter: only images go on to the thumbnailer."""
    return Path(item["path"]).suffix.lower() in IMAGE_SUFFIXES


def thumbnail(item: dict[str, Any]) -> dict[str, Any]:
    """Map: a stand-in thumbnail (a real one would call Pillow or ImageMagick here)."""
    path = Path(item["path"])
    with path.open("rb") as fh:
        head = fh.read(THUMBNAIL_BYTES)
    return {"event": "thumbnail", "name": path.name, "detail": head.hex()[:16] or "empty"}
