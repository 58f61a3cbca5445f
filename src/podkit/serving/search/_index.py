"""The inverted index of one shard: build, write to disk, open, and score with BM25.

Theory of operation. ``build_index`` reads documents (text files, or JSON lines with ``id``,
``title`` and ``body``), sends each to a shard with :class:`podkit.hashing.JumpHash` on its
id, and writes one directory per shard::

    shard-K/
      meta.json       format, shard, shards, docs, length, version (a digest of the rest)
      terms.json      term -> [first posting, document frequency], terms sorted
      postings.bin    uint32 pairs (document number, term frequency), little-endian,
                      grouped by term in the order of terms.json, document numbers ascending
      lengths.bin     uint32 per document: its length in tokens
      docs.jsonl      one line per document number: {"id", "title", "body"}

A shard is written into ``shard-K.tmp`` and renamed into place, so a leaf never opens a
half-written index, and it survives a restart of the leaf unchanged. ``version`` changes
whenever the content does; the root keys its cache of corpus statistics on it.
"""

from __future__ import annotations

import array
import functools
import hashlib
import heapq
import json
import os
import shutil
import sys
import weakref
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from podkit.errors import ConfigError, PodkitError
from podkit.hashing import JumpHash
from podkit.serving.search._bm25 import (
    DEFAULT_B,
    DEFAULT_K1,
    CorpusStats,
    Hit,
    idf,
)
from podkit.serving.search._text import snippet, tokenize

FORMAT = 1
MAX_SHARDS = 1024  # more leaves than this on one index build is a typo
MAX_DOCUMENT_BYTES = 16 * 1024 * 1024  # one document larger than 16 MiB is not text
MAX_ID_CHARS = 1024  # ids are keys, not content
JSON_SUFFIXES = (".jsonl", ".ndjson")


class IndexError_(PodkitError):  # noqa: N801 - "IndexError" is a builtin
    """An index cannot be built or opened (names the file and what is wrong)."""


@dataclass(frozen=True, slots=True)
class Document:
    """One document to index.

    Attributes:
        id: unique in the corpus; the key that picks its shard and breaks score ties.
        title: shown in results (indexed with the body).
        body: the text.
    """

    id: str
    title: str
    body: str


def _text_file(path: Path) -> Document:
    data = path.read_bytes()
    if len(data) > MAX_DOCUMENT_BYTES:
        raise ConfigError(f"larger than {MAX_DOCUMENT_BYTES} bytes", source=str(path))
    text = data.decode("utf-8", errors="replace")
    title = next((line.strip() for line in text.splitlines() if line.strip()), path.name)
    return Document(str(path), title[:200], text)


def _json_lines(path: Path) -> Iterator[Document]:
    with path.open("rb") as handle:
        for number, raw in enumerate(handle, 1):
            if not raw.strip():
                continue
            where = f"line {number}"
            if len(raw) > MAX_DOCUMENT_BYTES:
                raise ConfigError(
                    f"larger than {MAX_DOCUMENT_BYTES} bytes", source=str(path), path=where
                )
            try:
                record = json.loads(raw)
            except (ValueError, UnicodeDecodeError) as exc:
                raise ConfigError(f"not JSON: {exc}", source=str(path), path=where) from None
            if not isinstance(record, dict):
                raise ConfigError(
                    "expected an object {id, title, body}", source=str(path), path=where
                )
            doc_id = record.get("id")
            if isinstance(doc_id, int) and not isinstance(doc_id, bool):
                doc_id = str(doc_id)
            if not isinstance(doc_id, str) or not doc_id or len(doc_id) > MAX_ID_CHARS:
                raise ConfigError(
                    f"id must be a non-empty string of at most {MAX_ID_CHARS} characters",
                    source=str(path),
                    path=f"{where}: id",
                )
            title, body = record.get("title", ""), record.get("body", "")
            if not isinstance(title, str) or not isinstance(body, str):
                raise ConfigError("title and body must be strings", source=str(path), path=where)
            yield Document(doc_id, title, body)


def read_documents(inputs: Iterable[Path]) -> Iterator[Document]:
    """The documents of text files, JSON-lines files and directories (walked, sorted).

    A file ending in ``.jsonl`` or ``.ndjson`` holds one ``{"id", "title", "body"}``
    object per line; any other file is one document whose id is its path and whose title is
    its first non-empty line.

    Raises:
        ConfigError: a file cannot be read or a line is not a document (naming file and line).
    """
    for path in inputs:
        try:
            if path.is_dir():
                files = sorted(p for p in path.rglob("*") if p.is_file())
                yield from read_documents(files)
            elif path.name.endswith(JSON_SUFFIXES):
                yield from _json_lines(path)
            else:
                yield _text_file(path)
        except OSError as exc:
            raise ConfigError(f"cannot read: {exc.strerror or exc}", source=str(path)) from None


class _ShardWriter:
    def __init__(self, directory: Path, shard: int, shards: int) -> None:
        self.directory = directory
        self.shard = shard
        self.shards = shards
        self.postings: dict[str, list[int]] = {}
        self.lengths = array.array("I")
        self.ids: set[str] = set()
        directory.mkdir(parents=True)
        self.docs = (directory / "docs.jsonl").open("w", encoding="utf-8")

    def add(self, doc: Document) -> None:
        number = len(self.lengths)
        tokens = tokenize(doc.title + "\n" + doc.body) if doc.title else tokenize(doc.body)
        counts: dict[str, int] = {}
        for token in tokens:
            counts[token] = counts.get(token, 0) + 1
        for term, tf in counts.items():
            postings = self.postings.get(term)
            if postings is None:
                self.postings[term] = [number, tf]
            else:
                postings.append(number)
                postings.append(tf)
        self.lengths.append(len(tokens))
        record = {"id": doc.id, "title": doc.title, "body": doc.body}
        self.docs.write(json.dumps(record, ensure_ascii=False) + "\n")

    def finish(self) -> dict[str, object]:
        self.docs.close()
        digest = hashlib.sha256()
        terms: dict[str, list[int]] = {}
        flat = array.array("I")
        for term in sorted(self.postings):
            pairs = self.postings[term]
            terms[term] = [len(flat) // 2, len(pairs) // 2]
            flat.extend(pairs)
        if sys.byteorder != "little":
            flat.byteswap()
            self.lengths.byteswap()
        (self.directory / "postings.bin").write_bytes(flat.tobytes())
        (self.directory / "lengths.bin").write_bytes(self.lengths.tobytes())
        terms_text = json.dumps(terms, ensure_ascii=False, separators=(",", ":"))
        (self.directory / "terms.json").write_text(terms_text, encoding="utf-8")
        for name in ("postings.bin", "lengths.bin", "terms.json", "docs.jsonl"):
            with (self.directory / name).open("rb") as handle:
                for block in iter(lambda: handle.read(1 << 20), b""):
                    digest.update(block)
        meta: dict[str, object] = {
            "format": FORMAT,
            "shard": self.shard,
            "shards": self.shards,
            "docs": len(self.lengths),
            "length": sum(self.lengths),
            "terms": len(terms),
            "version": digest.hexdigest()[:16],
        }
        (self.directory / "meta.json").write_text(json.dumps(meta, indent=2) + "\n")
        return meta


@functools.lru_cache(maxsize=16)
def _sharding(shards: int) -> JumpHash:
    return JumpHash([f"shard-{k}" for k in range(shards)])


def shard_of(doc_id: str, shards: int) -> int:
    """The shard that :func:`build_index` puts the document ``doc_id`` in, of ``shards``.

    Jump consistent hash of the id's XXH3-64, the same number a pipeline's sharder with
    ``key: "$.id"`` computes, so a stage upstream of the build knows each document's leaf.

    Raises:
        ConfigError: ``shards`` is out of range.
    """
    if not 1 <= shards <= MAX_SHARDS:
        raise ConfigError(f"must be 1-{MAX_SHARDS}", path="shards")
    return _sharding(shards).pick_shard(doc_id)


def build_index(
    documents: Iterable[Document],
    out: Path,
    *,
    shards: int,
    progress: Callable[[int], None] | None = None,
) -> list[dict[str, object]]:
    """Write ``shards`` shard indexes of ``documents`` into ``out/shard-K``.

    Each document goes to shard ``JumpHash(shard names).pick_shard(id)``. Existing shard
    directories are replaced (each one atomically).

    Returns:
        The ``meta.json`` of each shard.

    Raises:
        ConfigError: ``shards`` is out of range or two documents share an id.
    """
    if not 1 <= shards <= MAX_SHARDS:
        raise ConfigError(f"must be 1-{MAX_SHARDS}", path="--shards")
    out.mkdir(parents=True, exist_ok=True)
    sharding = _sharding(shards)
    writers = []
    for k in range(shards):
        tmp = out / f"shard-{k}.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        writers.append(_ShardWriter(tmp, k, shards))
    seen: set[str] = set()
    try:
        for count, doc in enumerate(documents, 1):
            if doc.id in seen:
                raise ConfigError(f"document id {doc.id!r} appears twice; ids must be unique")
            seen.add(doc.id)
            writers[sharding.pick_shard(doc.id)].add(doc)
            if progress is not None and count % 10_000 == 0:
                progress(count)
    except BaseException:
        for writer in writers:  # nothing half-built is left behind
            writer.docs.close()
            shutil.rmtree(writer.directory, ignore_errors=True)
        raise
    metas = []
    for k, writer in enumerate(writers):
        metas.append(writer.finish())
        final = out / f"shard-{k}"
        # Two renames, so a leaf watching the shard finds it missing for a moment at most and
        # never half-written; the old files go only once the new ones are in place.
        old = out / f"shard-{k}.old"
        shutil.rmtree(old, ignore_errors=True)
        if final.exists():
            os.replace(final, old)
        os.replace(writer.directory, final)
        shutil.rmtree(old, ignore_errors=True)
    return metas


class ShardIndex:
    """One shard's index opened from disk, searchable with local or corpus-wide statistics.

    Args:
        directory: a ``shard-K`` directory written by :func:`build_index`.

    Raises:
        IndexError_: a file is missing, of another format, or inconsistent.
    """

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        try:
            meta = json.loads((directory / "meta.json").read_text(encoding="utf-8"))
            if meta.get("format") != FORMAT:
                raise IndexError_(
                    f"{directory}: index format {meta.get('format')}, expected {FORMAT}"
                )
            self.shard = int(meta["shard"])
            self.shards = int(meta["shards"])
            self.version = str(meta["version"])
            self.terms: dict[str, list[int]] = json.loads(
                (directory / "terms.json").read_text(encoding="utf-8")
            )
            self.postings = array.array("I")
            self.postings.frombytes((directory / "postings.bin").read_bytes())
            self.lengths = array.array("I")
            self.lengths.frombytes((directory / "lengths.bin").read_bytes())
            if sys.byteorder != "little":
                self.postings.byteswap()
                self.lengths.byteswap()
            self._offsets: list[int] = []
            self.ids: list[str] = []
            # Stored documents are read later through this descriptor, not the path: a rebuild
            # renames new files into place while this index may still answer a search.
            self._docs_fd = os.open(directory / "docs.jsonl", os.O_RDONLY)
            weakref.finalize(self, os.close, self._docs_fd)
            with os.fdopen(os.dup(self._docs_fd), "rb") as handle:
                offset = 0
                for line in handle:
                    self._offsets.append(offset)
                    offset += len(line)
                    self.ids.append(json.loads(line)["id"])
            self._offsets.append(offset)
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise IndexError_(f"{directory}: not a readable shard index ({exc})") from None
        if len(self.ids) != len(self.lengths) or len(self.ids) != int(meta["docs"]):
            raise IndexError_(f"{directory}: documents and lengths disagree")
        self.docs = len(self.ids)
        self.length = int(sum(self.lengths))
        self._norm_key: tuple[float, float, float] | None = None
        self._norm_list: list[float] = []

    def local_stats(self, terms: Iterable[str] = ()) -> CorpusStats:
        """This shard's own statistics (for ``terms``' document frequencies)."""
        df = {}
        for term in terms:
            entry = self.terms.get(term)
            if entry is not None:
                df[term] = entry[1]
        return CorpusStats(self.docs, self.length, df)

    def document(self, number: int) -> dict[str, str]:
        """The stored ``{"id", "title", "body"}`` of a document number."""
        start, end = self._offsets[number], self._offsets[number + 1]
        record: dict[str, str] = json.loads(os.pread(self._docs_fd, end - start, start))
        return record

    def _norms(self, avgdl: float, k1: float, b: float) -> list[float]:
        """``k1 * (1 - b + b * len / avgdl)`` per document, kept for the last ``avgdl``."""
        key = (avgdl, k1, b)
        if self._norm_key != key:
            norm_a, norm_b = k1 * (1.0 - b), k1 * b / avgdl
            self._norm_list = [norm_a + norm_b * length for length in self.lengths]
            self._norm_key = key
        return self._norm_list

    def scores(
        self,
        terms: Sequence[str],
        stats: CorpusStats,
        *,
        k1: float = DEFAULT_K1,
        b: float = DEFAULT_B,
        check: Callable[[], None] | None = None,
    ) -> dict[int, float]:
        """Document number -> BM25 score for every document matching a term.

        Args:
            terms: distinct query terms, sorted (the summation order, see ``_bm25``).
            stats: the statistics to score with (corpus-wide for exact global ranking).
            check: called between terms; raises to abandon the query (a deadline).
        """
        norms = self._norms(stats.avgdl, k1, b)
        acc: dict[int, float] = {}
        postings = self.postings
        for term in terms:
            entry = self.terms.get(term)
            df = stats.df.get(term, 0)
            if entry is None or df <= 0:
                continue
            if check is not None:
                check()
            weight = idf(df, stats.docs) * (k1 + 1.0)
            start, count = entry
            get = acc.get
            for i in range(2 * start, 2 * (start + count), 2):
                doc = postings[i]
                tf = postings[i + 1]
                acc[doc] = get(doc, 0.0) + weight * tf / (tf + norms[doc])
        return acc

    def search(
        self,
        terms: Sequence[str],
        k: int,
        stats: CorpusStats | None = None,
        *,
        check: Callable[[], None] | None = None,
        snippets: bool = True,
    ) -> tuple[list[Hit], int]:
        """The ``k`` best hits for ``terms`` and how many documents matched.

        Args:
            terms: distinct query terms, sorted.
            k: hits wanted.
            stats: corpus-wide statistics (default: this shard's own).
            check: see :meth:`scores`.
            snippets: fill in title and snippet of the hits returned.
        """
        if stats is None:
            stats = self.local_stats(terms)
        acc = self.scores(terms, stats, check=check)
        ids = self.ids
        # (-score, id) is the result order of _bm25.Hit.order; the number rides along. Only
        # documents scoring at least the k-th best score can be in it (ties included).
        if len(acc) > k:
            floor = heapq.nlargest(k, acc.values())[-1]
            chosen = [(-score, ids[doc], doc) for doc, score in acc.items() if score >= floor]
        else:
            chosen = [(-score, ids[doc], doc) for doc, score in acc.items()]
        best = heapq.nsmallest(k, chosen)
        hits = []
        for neg, doc_id, doc in best:
            title = text = ""
            if snippets:
                record = self.document(doc)
                title = record.get("title", "")
                text = snippet(record.get("body", ""), list(terms))
            hits.append(Hit(doc_id, -neg, self.shard, title, text))
        return hits, len(acc)
