"""The flagship's indexing pipeline handlers (examples/search/ingest.yaml).

``normalise`` reads a new document and makes it the record an index build takes:
``{"id", "title", "body", "terms"}``: the text in Unicode NFC with its line ends and spacing
tidied, the title its first non-empty line, and ``terms`` its token count under the search
tokenizer (a document without a word is dropped). The sharder sends each record to the topic
of the shard ``podkit search index`` will put it in (the same jump hash of the id), and
``stage`` writes it to ``$SEARCH_DATA/staged/shard-K/``: one JSON-lines file per document,
named by a digest of its id, written in ``$SEARCH_DATA/staging/`` and renamed into place, so
writing it twice (delivery is at least once) leaves one whole copy, and the re-indexer never
reads half a file.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import unicodedata
from pathlib import Path
from typing import Any

from podkit.serving.search import shard_of, tokenize

MAX_DOCUMENT_BYTES = 1 << 20  # a new document over 1 MiB is not an article: it fails
DEFAULT_SHARDS = 3  # the flagship's shards; $SEARCH_SHARDS overrides


def normalise(item: Any) -> dict[str, Any] | None:
    """A path (or ``{"path": ...}``) in, the document's record out (None: no words)."""
    path = Path(item["path"] if isinstance(item, dict) else item)
    raw = path.read_bytes()
    if len(raw) > MAX_DOCUMENT_BYTES:
        raise ValueError(f"{path}: {len(raw)} bytes, more than {MAX_DOCUMENT_BYTES}")
    text = unicodedata.normalize("NFC", raw.decode("utf-8", errors="replace"))
    lines = [re.sub(r"[ \t]+", " ", line).strip() for line in text.splitlines()]
    body = re.sub(r"\n{3,}", "\n\n", "\n".join(lines)).strip()
    title = next((line.lstrip("# ") for line in lines if line), "")
    terms = len(tokenize(body))
    if not terms:
        return None
    return {"id": str(path), "title": title, "body": body, "terms": terms}


def stage(doc: dict[str, Any]) -> None:
    """Write one record where the next build reads it, replacing an earlier copy."""
    shards = int(os.environ.get("SEARCH_SHARDS", DEFAULT_SHARDS))
    directory = Path(os.environ["SEARCH_DATA"]) / "staged" / f"shard-{shard_of(doc['id'], shards)}"
    directory.mkdir(parents=True, exist_ok=True)
    name = hashlib.sha256(doc["id"].encode()).hexdigest()[:16]
    record = {"id": doc["id"], "title": doc["title"], "body": doc["body"]}
    scratch = directory.parent.parent / "staging"  # beside staged/, which the build reads whole
    scratch.mkdir(exist_ok=True)
    tmp = scratch / f"{name}.{os.getpid()}.tmp"
    tmp.write_text(json.dumps(record, ensure_ascii=False) + "\n", encoding="utf-8")
    os.replace(tmp, directory / f"{name}.jsonl")
