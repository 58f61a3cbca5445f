"""Exact global ranking: the merged top k equals one index's over the whole corpus."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from podkit.serving.search import Hit, ShardAnswer, ShardIndex, combine
from podkit.serving.search._bm25 import merge, shards_to_ask_again, top_k
from podkit.serving.search._text import query_terms

from .conftest import VOCABULARY, build, generated_corpus, leaves_and_root


def _random_query(rng: random.Random) -> str:
    return " ".join(rng.choice(VOCABULARY) for _ in range(rng.randint(1, 4)))


def _single(index: ShardIndex, text: str, k: int) -> list[tuple[str, float]]:
    hits, _ = index.search(query_terms(text), k, snippets=False)
    return [(hit.id, hit.score) for hit in hits]


async def test_root_over_four_leaves_ranks_like_one_index(tmp_path: Path) -> None:
    """300 random queries: same documents, same order, scores equal to 1e-9 (in fact equal)."""
    docs = generated_corpus(2000)
    one = build(tmp_path, docs, 1)[0]
    shards = build(tmp_path, docs, 4)
    assert sum(s.docs for s in shards) == one.docs == 2000
    rng = random.Random(11)
    async with leaves_and_root([[s] for s in shards]) as (root, _):
        second_rounds = 0
        for _ in range(300):
            text, k = _random_query(rng), rng.choice([1, 3, 10, 25])
            result = await root.search(text, k)
            want = _single(one, text, k)
            got = [(hit.id, hit.score) for hit in result.hits]
            assert [i for i, _ in got] == [i for i, _ in want], text
            for (_, a), (_, b) in zip(got, want, strict=True):
                assert abs(a - b) <= 1e-9
            assert got == want  # the same float operations in the same order: bit-equal
            assert not result.degraded
            assert result.coverage.docs == 2000
            second_rounds += result.rounds == 2
    assert second_rounds > 0  # the refinement round was exercised


async def test_ties_are_broken_by_id(tmp_path: Path) -> None:
    """Documents with equal text score equally and come in id order."""
    from podkit.serving.search._index import Document

    docs = [Document(f"id-{c}", "", "same words here") for c in "dbeca"] + [
        Document("other", "", "unrelated text")
    ]
    shards = build(tmp_path, docs, 3)
    async with leaves_and_root([[s] for s in shards], top_q=1) as (root, _):
        result = await root.search("words", 5)
    assert [hit.id for hit in result.hits] == ["id-a", "id-b", "id-c", "id-d", "id-e"]
    assert len({hit.score for hit in result.hits}) == 1


def test_corpus_statistics_are_sums_of_the_shards(tmp_path: Path) -> None:
    """docs, length and df of the shards add up to the single index's."""
    docs = generated_corpus(500)
    one = build(tmp_path, docs, 1)[0]
    shards = build(tmp_path, docs, 5)
    terms = ["alpha", "w0", "w42", "absent"]
    assert combine(s.local_stats(terms) for s in shards) == one.local_stats(terms)


@st.composite
def _answers(draw: st.DrawFn) -> tuple[list[list[Hit]], int, int]:
    shards = draw(st.integers(1, 5))
    scores = st.sampled_from([1.0, 1.5, 2.0, 2.5, 3.0])  # few values: many ties
    lists = []
    n = 0
    for s in range(shards):
        hits = [Hit(f"d{n + i}", draw(scores), s) for i in range(draw(st.integers(0, 12)))]
        n += len(hits)
        lists.append(top_k(hits, len(hits)))
    return lists, draw(st.integers(1, 15)), draw(st.integers(1, 15))


@given(_answers())
@settings(max_examples=300, deadline=None)
def test_asking_again_only_where_needed_is_exact(case: tuple[list[list[Hit]], int, int]) -> None:
    """Top q from every shard, then top k from the shards named: the true top k."""
    lists, k, q = case
    first = [
        ShardAnswer(s, hits[: min(q, k)], len(hits), min(q, k)) for s, hits in enumerate(lists)
    ]
    again = set(shards_to_ask_again(first, k))
    final = [
        ShardAnswer(s, hits[:k], len(hits), k) if s in again else first[s]
        for s, hits in enumerate(lists)
    ]
    assert merge(final, k) == top_k([h for hits in lists for h in hits], k)


@pytest.mark.parametrize("k", [1, 10])
def test_a_shard_that_returned_all_it_has_is_not_asked_again(k: int) -> None:
    """A complete answer never needs a second round."""
    answers = [ShardAnswer(0, [Hit("a", 1.0)], 1, 1), ShardAnswer(1, [], 0, 1)]
    assert shards_to_ask_again(answers, k) == []
