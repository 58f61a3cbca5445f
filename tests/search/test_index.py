"""Index build: inputs, sharding by jump hash, the on-disk format and its errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from podkit.errors import ConfigError
from podkit.hashing import JumpHash
from podkit.serving.search import ShardIndex, build_index, read_documents
from podkit.serving.search._index import Document, IndexError_
from podkit.serving.search._text import query_terms, snippet, tokenize

from .conftest import generated_corpus, write_jsonl


def test_documents_go_to_the_shard_jump_hash_picks(tmp_path: Path) -> None:
    """Each document lands in JumpHash(shard names).pick_shard(id)."""
    docs = generated_corpus(300)
    build_index(docs, tmp_path, shards=3)
    jump = JumpHash(["shard-0", "shard-1", "shard-2"])
    for k in range(3):
        index = ShardIndex(tmp_path / f"shard-{k}")
        assert index.shard == k
        assert index.shards == 3
        assert all(jump.pick_shard(doc_id) == k for doc_id in index.ids)


def test_text_files_and_directories_are_documents(tmp_path: Path) -> None:
    """A text file is one document: id its path, title its first non-empty line."""
    (tmp_path / "in" / "sub").mkdir(parents=True)
    (tmp_path / "in" / "a.txt").write_text("\n  Alpha Title\nbody words\n")
    (tmp_path / "in" / "sub" / "b.txt").write_text("Beta\nmore words")
    docs = list(read_documents([tmp_path / "in"]))
    assert [(d.id.endswith("a.txt"), d.title) for d in docs] == [
        (True, "Alpha Title"),
        (False, "Beta"),
    ]


def test_bad_json_lines_name_the_file_and_line(tmp_path: Path) -> None:
    """A line that is not a document is a config error naming file and line."""
    path = tmp_path / "docs.jsonl"
    path.write_text('{"id": "a", "body": "x"}\n{"id": 5.5, "body": "y"}\n')
    with pytest.raises(ConfigError, match=r"docs.jsonl: line 2: id: id must be"):
        list(read_documents([path]))
    path.write_text("{not json\n")
    with pytest.raises(ConfigError, match="line 1: not JSON"):
        list(read_documents([path]))


def test_duplicate_ids_are_refused(tmp_path: Path) -> None:
    """Ids break ties and pick shards: two documents with one id are an error."""
    docs = [Document("x", "", "a"), Document("x", "", "b")]
    with pytest.raises(ConfigError, match="appears twice"):
        build_index(docs, tmp_path, shards=2)


def test_an_index_reopens_the_same_after_a_restart(tmp_path: Path) -> None:
    """Opening twice gives the same version, statistics and scores (the files are the index)."""
    write_jsonl(tmp_path / "d.jsonl", generated_corpus(200))
    build_index(read_documents([tmp_path / "d.jsonl"]), tmp_path / "out", shards=1)
    first = ShardIndex(tmp_path / "out" / "shard-0")
    again = ShardIndex(tmp_path / "out" / "shard-0")
    assert first.version == again.version
    terms = query_terms("alpha w3 w17")
    assert first.search(terms, 10) == again.search(terms, 10)
    meta = json.loads((tmp_path / "out" / "shard-0" / "meta.json").read_text())
    assert meta["docs"] == 200
    assert meta["version"] == first.version


def test_a_damaged_index_is_a_clear_error(tmp_path: Path) -> None:
    """A missing file names the directory."""
    build_index(generated_corpus(20), tmp_path, shards=1)
    (tmp_path / "shard-0" / "lengths.bin").unlink()
    with pytest.raises(IndexError_, match="not a readable shard index"):
        ShardIndex(tmp_path / "shard-0")


def test_tokens_are_casefolded_words_and_queries_are_distinct_sorted() -> None:
    """The tokenizer splits on non-word characters and underscores."""
    assert tokenize("Hello, WORLD_wide 42x") == ["hello", "world", "wide", "42x"]
    assert query_terms("b a B") == ["a", "b"]


def test_a_snippet_shows_the_first_query_term() -> None:
    """The snippet is cut around the first matching word."""
    text = "lorem " * 100 + "needle in the haystack " + "ipsum " * 100
    cut = snippet(text, ["needle"])
    assert "needle in the haystack" in cut
    assert cut.startswith("... ")
