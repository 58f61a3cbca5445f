"""The object store: variants by Vary, LRU eviction by bytes, invalidation."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from podkit.serving.cache import ObjectStore, StoredResponse, secondary_key


def entry(
    key: str, body: bytes = b"x", variant: tuple[tuple[str, str], ...] = ()
) -> StoredResponse:
    return StoredResponse(key, 200, [], body, 0.0, 0.0, variant)


def test_secondary_keys_normalise_field_lines() -> None:
    one = secondary_key(["accept"], [("Accept", "a, b")])
    two = secondary_key(["accept"], [("accept", "a"), ("ACCEPT", " b")])
    assert one == two == (("accept", "a,b"),)
    assert secondary_key(["accept"], []) == (("accept", ""),)


def test_variants_are_selected_by_the_request_headers() -> None:
    store = ObjectStore()
    en = entry("k", b"hello", secondary_key(["accept-language"], [("Accept-Language", "en")]))
    fr = entry("k", b"bonjour", secondary_key(["accept-language"], [("Accept-Language", "fr")]))
    store.put(en)
    store.put(fr)
    assert store.lookup("k", [("Accept-Language", "fr")]) is fr
    assert store.lookup("k", [("accept-language", "en")]) is en
    assert store.lookup("k", [("Accept-Language", "de")]) is None
    assert store.lookup("k", []) is None
    assert len(store.variants("k")) == 2


def test_a_new_response_replaces_the_same_variant() -> None:
    store = ObjectStore()
    store.put(entry("k", b"old"))
    new = entry("k", b"new")
    store.put(new)
    assert len(store) == 1
    assert store.lookup("k", []) is new
    assert store.bytes == new.size


def test_lru_evicts_the_least_recently_used_by_bytes() -> None:
    one = entry("a", b"1" * 1000)
    store = ObjectStore(max_bytes=3 * one.size, max_object=one.size)
    for key in "abc":
        store.put(entry(key, b"1" * 1000))
    assert store.lookup("a", []) is not None  # a is now the most recently used
    evicted = store.put(entry("d", b"1" * 1000))
    assert [e.key for e in evicted] == ["b"]
    assert "b" not in store
    assert {"a", "c", "d"} <= {k for k in "abcd" if k in store}
    assert store.statistics().evictions == 1


def test_objects_over_the_limit_are_not_stored() -> None:
    store = ObjectStore(max_bytes=10_000, max_object=2000)
    big = entry("big", b"x" * 2000)
    assert store.put(big) == [big]
    assert "big" not in store
    assert store.bytes == 0


def test_invalidate_removes_every_variant_and_clear_everything() -> None:
    store = ObjectStore()
    store.put(entry("k", b"1", (("accept", "a"),)))
    store.put(entry("k", b"2", (("accept", "b"),)))
    store.put(entry("j"))
    assert store.invalidate("k") == 2
    assert store.invalidate("k") == 0
    assert len(store) == 1
    assert store.clear() == 1
    assert store.bytes == 0


@given(
    st.lists(
        st.tuples(st.sampled_from("abcdefgh"), st.integers(0, 3000), st.booleans()), max_size=60
    )
)
def test_the_store_never_exceeds_its_byte_limit(ops: list[tuple[str, int, bool]]) -> None:
    """Whatever is stored or looked up, bytes stay within max_bytes and add up."""
    store = ObjectStore(max_bytes=8000, max_object=4000)
    for key, size, is_lookup in ops:
        if is_lookup:
            store.lookup(key, [])
        else:
            store.put(entry(key, b"x" * size))
        assert store.bytes <= store.max_bytes
        assert store.bytes == sum(e.size for k in "abcdefgh" for e in store.variants(k))


def test_accept_language_selects_a_variant_whatever_the_case_and_order() -> None:
    names = ("accept-language",)
    assert secondary_key(names, [("Accept-Language", "en, de")]) == secondary_key(
        names, [("Accept-Language", "DE,en")]
    )
    assert secondary_key(("x",), [("X", "a, b")]) != secondary_key(("x",), [("X", "b, a")])
