"""The key hash and every algorithm give the same answer in every process and on every machine."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from podkit.hashing import encode_key, key_hash
from tests.hashing.conftest import ALGORITHM_NAMES, build, node_names

# Spec vectors of XXH3-64 (seed 0): any xxHash >= 0.8.0 in any language gives these.
XXH3_EMPTY = 0x2D06800538D394C2

KEYS = ["", "a", "user:42", "ключ", "🔑 emoji", "10.0.0.1:11211", "x" * 300]

_CHILD = """
import json, sys
from podkit.hashing import key_hash
sys.path.insert(0, sys.argv[1])
from tests.hashing.conftest import build, node_names
keys = [bytes.fromhex(k[1:]) if k[0] == "b" else k[1:] for k in json.loads(sys.stdin.read())]
out = {"hash": [key_hash(k) for k in keys]}
for algo in %r:
    f = build(algo, node_names(7))
    out[algo] = [f.pick_n(k, 3) for k in keys]
print(json.dumps(out))
"""
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _answers_here(keys: list[str | bytes]) -> dict[str, list[object]]:
    ours: dict[str, list[object]] = {"hash": [key_hash(k) for k in keys]}
    for algo in ALGORITHM_NAMES:
        function = build(algo, node_names(7))
        ours[algo] = [function.pick_n(k, 3) for k in keys]
    return ours


def _answers_in_child(keys: list[str | bytes], seed: str) -> dict[str, list[object]]:
    wire = ["b" + k.hex() if isinstance(k, bytes) else "s" + k for k in keys]
    result = subprocess.run(
        [sys.executable, "-c", _CHILD % (ALGORITHM_NAMES,), ROOT],
        input=json.dumps(wire),
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONHASHSEED": seed},
        check=True,
        timeout=60,
    )
    answers: dict[str, list[object]] = json.loads(result.stdout)
    return answers


def test_key_hash_matches_the_xxh3_specification_vector() -> None:
    assert key_hash("") == XXH3_EMPTY
    assert key_hash(b"") == XXH3_EMPTY


def test_str_keys_hash_as_their_utf8_bytes() -> None:
    for key in KEYS:
        assert key_hash(key) == key_hash(key.encode("utf-8"))
        assert encode_key(key) == key.encode("utf-8")


def test_a_key_that_is_neither_str_nor_bytes_is_refused() -> None:
    with pytest.raises(TypeError, match="str or bytes"):
        encode_key(42)  # type: ignore[arg-type]


def test_every_algorithm_answers_the_same_in_processes_with_different_hash_seeds() -> None:
    """Two interpreters with different PYTHONHASHSEED agree with this one on every key."""
    ours = _answers_here(list(KEYS))
    for seed in ("1", "987654"):
        assert _answers_in_child(list(KEYS), seed) == ours


@settings(max_examples=4, deadline=None)
@given(
    keys=st.lists(
        st.one_of(st.text(st.characters(blacklist_categories=["Cs"])), st.binary()),
        min_size=1,
        max_size=30,
    ),
    seed=st.integers(min_value=0, max_value=2**32 - 1),
)
def test_any_keys_get_the_same_answers_in_another_process(
    keys: list[str | bytes], seed: int
) -> None:
    """Property: for generated str and bytes keys, a fresh interpreter gives the same answers."""
    assert _answers_in_child(keys, str(seed)) == _answers_here(keys)


# Answers pinned when the algorithms were written: a change here means every deployed process
# would disagree with upgraded ones, so it must be a deliberate, documented break.
PINNED = {
    "ring": ["10.0.0.4:11211", "10.0.0.0:11211", "10.0.0.1:11211", "10.0.0.0:11211"],
    "rendezvous": ["10.0.0.1:11211", "10.0.0.2:11211", "10.0.0.3:11211", "10.0.0.0:11211"],
    "jump": ["10.0.0.1:11211", "10.0.0.4:11211", "10.0.0.2:11211", "10.0.0.3:11211"],
    "maglev": ["10.0.0.3:11211", "10.0.0.2:11211", "10.0.0.2:11211", "10.0.0.1:11211"],
}


@pytest.mark.parametrize("algorithm", ALGORITHM_NAMES)
def test_answers_stay_what_they_were_when_pinned(algorithm: str) -> None:
    from podkit.hashing import sharding_function

    function = sharding_function(algorithm, node_names(5))  # default Maglev table: 65537
    picks = [function.pick(k) for k in ("user:1", "user:2", "user:3", "session:abc")]
    assert picks == PINNED[algorithm]
    assert key_hash("user:42") == 11511735035886662826
