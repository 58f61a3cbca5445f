"""Scatter/gather document search (``podkit search``): shard indexes, leaves and a root.

The root farms each query out to every shard's leaf and merges their top hits; scores are
BM25 with corpus-wide statistics, so the merged top k is exactly one index's over the whole
corpus (see ``docs/search.md``). Deadlines, coverage, hedged requests to replicas.
"""

from podkit.serving.search._bm25 import CorpusStats, Hit, ShardAnswer, combine, merge
from podkit.serving.search._index import (
    Document,
    ShardIndex,
    build_index,
    read_documents,
    shard_of,
)
from podkit.serving.search._inject import InjectDelay
from podkit.serving.search._text import tokenize
from podkit.serving.search.leaf import LeafApp, LeafOptions, serve_leaf
from podkit.serving.search.root import (
    Coverage,
    CoverageTooLow,
    RootOptions,
    SearchResult,
    SearchRoot,
    serve_root,
)

__all__ = [
    "CorpusStats",
    "Coverage",
    "CoverageTooLow",
    "Document",
    "Hit",
    "InjectDelay",
    "LeafApp",
    "LeafOptions",
    "RootOptions",
    "SearchResult",
    "SearchRoot",
    "ShardAnswer",
    "ShardIndex",
    "build_index",
    "combine",
    "merge",
    "read_documents",
    "serve_leaf",
    "serve_root",
    "shard_of",
    "tokenize",
]
