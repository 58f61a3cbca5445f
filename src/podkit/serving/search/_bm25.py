"""BM25 scoring and the exact merge of per-shard top-k lists (sans-IO).

Theory of operation. A leaf scores with Okapi BM25 (Robertson and Zaragoza, "The
Probabilistic Relevance Framework: BM25 and Beyond", 2009) in Lucene's form::

    idf(t)      = ln(1 + (N - df(t) + 0.5) / (df(t) + 0.5))
    score(d, q) = sum over distinct t in q of
                  idf(t) * tf * (k1 + 1) / (tf + k1 * (1 - b + b * len(d) / avgdl))

where N, avgdl and df are *corpus-wide*: the root gathers them from every shard (as
Elasticsearch's ``dfs_query_then_fetch`` does) and sends them with the query, so a shard
scores each document exactly as one index over the whole corpus would. The terms are summed
in sorted order with the same float operations everywhere, so the scores are equal to the
last bit, not just to 1e-9.

Ties are broken by document id: hits are ordered by ``(-score, id)`` with ids compared as
Unicode strings. That order is total, so the global top-k is one list, and the merge of the
shards' top-k lists under the same order is exactly it.

Exact with less data: each shard first returns only its top ``q < k`` hits and says whether
it has more matches. Every document a shard did not return sorts after its last returned hit.
Once the root holds the k best of all returned hits, a shard must be asked again (for its
top k) only if it has more matches and its last returned hit sorts before the current k-th
hit: otherwise nothing it holds back can enter the top k.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

DEFAULT_K1 = 1.2  # Lucene's and Elasticsearch's default term-frequency saturation
DEFAULT_B = 0.75  # Lucene's and Elasticsearch's default length normalisation


@dataclass(frozen=True, slots=True)
class CorpusStats:
    """The statistics a score depends on: documents, total tokens and document frequencies.

    Attributes:
        docs: documents in the corpus.
        length: tokens in the corpus (the sum of document lengths).
        df: term -> documents that contain it (terms absent here occur nowhere).
    """

    docs: int
    length: int
    df: Mapping[str, int] = field(default_factory=dict)

    @property
    def avgdl(self) -> float:
        """The average document length (1.0 for an empty corpus, so nothing divides by 0)."""
        return self.length / self.docs if self.docs else 1.0

    def to_json(self) -> dict[str, object]:
        return {"docs": self.docs, "length": self.length, "df": dict(self.df)}

    @classmethod
    def from_json(cls, data: Mapping[str, object]) -> CorpusStats:
        """Parse what :meth:`to_json` wrote.

        Raises:
            ValueError: a field is missing or has the wrong type.
        """
        docs, length, df = data.get("docs"), data.get("length"), data.get("df", {})
        if not isinstance(docs, int) or not isinstance(length, int) or docs < 0 or length < 0:
            raise ValueError("stats need whole numbers docs and length")
        if not isinstance(df, dict) or not all(
            isinstance(k, str) and isinstance(v, int) and v >= 0 for k, v in df.items()
        ):
            raise ValueError("stats df maps terms to whole numbers")
        return cls(docs, length, df)


def combine(parts: Iterable[CorpusStats]) -> CorpusStats:
    """The statistics of the union of disjoint shards: every figure is a sum."""
    docs = length = 0
    df: dict[str, int] = {}
    for part in parts:
        docs += part.docs
        length += part.length
        for term, n in part.df.items():
            df[term] = df.get(term, 0) + n
    return CorpusStats(docs, length, df)


def idf(df: int, docs: int) -> float:
    """Lucene's BM25 inverse document frequency (never negative)."""
    return math.log(1.0 + (docs - df + 0.5) / (df + 0.5))


@dataclass(frozen=True, slots=True)
class Hit:
    """One scored document.

    Attributes:
        id: the document's id, unique in the corpus.
        score: its BM25 score.
        shard: the shard that holds it.
        title: its title ("" when it has none).
        snippet: a little of its text around the first query term.
    """

    id: str
    score: float
    shard: int = 0
    title: str = ""
    snippet: str = ""

    @property
    def order(self) -> tuple[float, str]:
        """The sort key: best score first, then the smaller id."""
        return (-self.score, self.id)

    def to_json(self) -> dict[str, object]:
        return {
            "id": self.id,
            "score": self.score,
            "shard": self.shard,
            "title": self.title,
            "snippet": self.snippet,
        }


def top_k(hits: Iterable[Hit], k: int) -> list[Hit]:
    """The ``k`` best hits in result order (score descending, then id ascending)."""
    return sorted(hits, key=lambda hit: hit.order)[:k]


@dataclass(frozen=True, slots=True)
class ShardAnswer:
    """What one shard answered for one query.

    Attributes:
        shard: the shard's number.
        hits: its best hits, in result order.
        matches: how many of its documents match at least one term.
        asked: how many hits were asked for.
    """

    shard: int
    hits: Sequence[Hit]
    matches: int
    asked: int

    @property
    def complete(self) -> bool:
        """Whether it returned every match it has."""
        return len(self.hits) >= self.matches


def merge(answers: Iterable[ShardAnswer], k: int) -> list[Hit]:
    """The global top-k from the shards' answers."""
    return top_k((hit for answer in answers for hit in answer.hits), k)


def shards_to_ask_again(answers: Iterable[ShardAnswer], k: int) -> list[int]:
    """The shards whose held-back hits could still enter the global top ``k``.

    A shard qualifies when it has more matches than it returned and its last returned hit
    sorts before the current k-th hit (or fewer than k hits are known at all).
    """
    answers = list(answers)
    merged = merge(answers, k)
    kth = merged[-1].order if len(merged) >= k else None
    again = []
    for answer in answers:
        if answer.complete or answer.asked >= k:
            continue
        last = answer.hits[-1].order if answer.hits else None
        if kth is None or last is None or last < kth:
            again.append(answer.shard)
    return sorted(again)
