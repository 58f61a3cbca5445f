"""Cache decisions: hits, misses, validation, stale-while-revalidate, stale-if-error, 304s."""

from __future__ import annotations

from podkit.serving.cache import (
    CachePolicy,
    LookupKind,
    ObjectStore,
    StoredResponse,
    cache_key,
    format_http_date,
)

NOW = 1_700_000_000.0
K = cache_key("Example.com", "/page")


def policy_with(headers: list[tuple[str, str]], *, status: int = 200) -> CachePolicy:
    policy = CachePolicy(ObjectStore())
    entry = policy.make_entry(
        K,
        [("Accept", "text/html")],
        status,
        [("Date", format_http_date(NOW)), *headers],
        b"body",
        request_time=NOW,
        response_time=NOW,
    )
    policy.keep(entry)
    return policy


def kind(policy: CachePolicy, at: float, headers: list[tuple[str, str]] | None = None) -> str:
    return policy.lookup("GET", K, headers or [], NOW + at).kind.value


def test_cache_keys_lowercase_the_host() -> None:
    assert cache_key("Example.COM", "/a?b=1") == "example.com/a?b=1"


def test_unsafe_methods_pass_and_an_empty_cache_misses() -> None:
    policy = CachePolicy(ObjectStore())
    assert policy.lookup("POST", K, [], NOW).kind is LookupKind.PASS
    assert policy.lookup("GET", K, [], NOW).kind is LookupKind.MISS
    only = [("Cache-Control", "only-if-cached")]
    assert policy.lookup("GET", K, only, NOW).kind is LookupKind.GATEWAY_TIMEOUT


def test_fresh_is_a_hit_and_stale_needs_validation() -> None:
    policy = policy_with([("Cache-Control", "max-age=60")])
    lookup = policy.lookup("HEAD", K, [], NOW + 10)
    assert lookup.kind is LookupKind.HIT
    assert lookup.age == 10
    assert kind(policy, 60) == "validate"


def test_request_directives_shorten_or_extend_freshness() -> None:
    policy = policy_with([("Cache-Control", "max-age=60")])
    assert kind(policy, 10, [("Cache-Control", "max-age=5")]) == "validate"
    assert kind(policy, 10, [("Cache-Control", "min-fresh=55")]) == "validate"
    assert kind(policy, 10, [("Cache-Control", "no-cache")]) == "validate"
    assert kind(policy, 10, [("Pragma", "no-cache")]) == "validate"
    assert kind(policy, 70, [("Cache-Control", "max-stale=20")]) == "hit"
    assert kind(policy, 90, [("Cache-Control", "max-stale=20")]) == "validate"
    assert kind(policy, 10**6, [("Cache-Control", "max-stale")]) == "hit"
    assert kind(policy, 90, [("Cache-Control", "only-if-cached")]) == "gateway_timeout"


def test_no_cache_responses_are_always_validated() -> None:
    policy = policy_with([("Cache-Control", "no-cache, max-age=60"), ("ETag", '"v1"')])
    assert kind(policy, 0) == "validate"


def test_stale_while_revalidate_serves_stale_within_its_window() -> None:
    policy = policy_with([("Cache-Control", "max-age=10, stale-while-revalidate=30")])
    assert kind(policy, 5) == "hit"
    assert kind(policy, 20) == "stale"
    assert kind(policy, 40) == "stale"
    assert kind(policy, 41) == "validate"


def test_must_revalidate_and_s_maxage_forbid_stale_serving() -> None:
    for cc in ("max-age=10, must-revalidate", "s-maxage=10", "max-age=10, proxy-revalidate"):
        policy = policy_with([("Cache-Control", f"{cc}, stale-while-revalidate=30")])
        assert kind(policy, 20) == "validate"
        assert kind(policy, 20, [("Cache-Control", "max-stale")]) == "validate"
        entry = policy.lookup("GET", K, [], NOW).entry
        assert entry is not None
        assert not policy.stale_if_error(entry, [], NOW + 20)


def test_stale_if_error_from_the_response_or_the_request() -> None:
    policy = policy_with([("Cache-Control", "max-age=10, stale-if-error=60")])
    entry = policy.lookup("GET", K, [], NOW).entry
    assert entry is not None
    assert policy.stale_if_error(entry, [], NOW + 5)  # still fresh
    assert policy.stale_if_error(entry, [], NOW + 70)
    assert not policy.stale_if_error(entry, [], NOW + 71)
    plain = policy_with([("Cache-Control", "max-age=10")])
    entry = plain.lookup("GET", K, [], NOW).entry
    assert entry is not None
    assert not plain.stale_if_error(entry, [], NOW + 20)
    assert plain.stale_if_error(entry, [("Cache-Control", "stale-if-error=15")], NOW + 20)


def test_conditional_headers_carry_the_stored_validators() -> None:
    lm = format_http_date(NOW - 100)
    policy = policy_with([("ETag", '"v1"'), ("Last-Modified", lm)])
    entry = policy.lookup("GET", K, [], NOW).entry
    assert entry is not None
    assert policy.conditional_headers(entry) == [
        ("If-None-Match", '"v1"'),
        ("If-Modified-Since", lm),
    ]


def test_a_304_freshens_the_stored_response_but_keeps_its_body_and_framing() -> None:
    policy = policy_with(
        [("Cache-Control", "max-age=10"), ("ETag", '"v1"'), ("Content-Type", "text/html")]
    )
    entry = policy.lookup("GET", K, [], NOW).entry
    assert entry is not None
    later = NOW + 100
    fresh = policy.freshen(
        entry,
        [
            ("Cache-Control", "max-age=50"),
            ("Date", format_http_date(later)),
            ("Content-Type", "text/plain"),
            ("X-New", "1"),
        ],
        request_time=later,
        response_time=later,
    )
    assert fresh.body == b"body"
    assert ("Content-Type", "text/html") in fresh.headers
    assert ("X-New", "1") in fresh.headers
    assert ("Cache-Control", "max-age=10") not in fresh.headers
    assert policy.lookup("GET", K, [], later + 40).kind is LookupKind.HIT
    assert len(policy.store) == 1


def test_client_validators_turn_a_hit_into_a_304() -> None:
    lm = format_http_date(NOW - 100)
    policy = policy_with([("ETag", 'W/"v1"'), ("Last-Modified", lm), ("X-Other", "y")])
    entry = policy.lookup("GET", K, [], NOW).entry
    assert entry is not None
    assert policy.not_modified([("If-None-Match", '"v0", "v1"')], entry)
    assert policy.not_modified([("If-None-Match", "*")], entry)
    assert not policy.not_modified([("If-None-Match", '"v2"')], entry)
    # If-None-Match wins over If-Modified-Since when both are sent.
    assert not policy.not_modified(
        [("If-None-Match", '"v2"'), ("If-Modified-Since", format_http_date(NOW))], entry
    )
    assert policy.not_modified([("If-Modified-Since", format_http_date(NOW))], entry)
    assert not policy.not_modified([("If-Modified-Since", format_http_date(NOW - 200))], entry)
    names = {n for n, _ in policy.not_modified_headers(entry)}
    assert names == {"Date", "ETag", "Last-Modified"}


def test_responses_not_worth_storing_are_dropped() -> None:
    assert len(policy_with([]).store) == 0  # stale on arrival, no validator
    assert len(policy_with([("ETag", '"x"')]).store) == 1
    assert len(policy_with([("Cache-Control", "max-age=0, stale-if-error=60")]).store) == 1


def test_unsafe_methods_invalidate_the_target_and_same_origin_locations() -> None:
    policy = CachePolicy(ObjectStore())
    for target in ("/page", "/other", "/new?x=1", "/elsewhere"):
        entry = StoredResponse(cache_key("example.com", target), 200, [], b"", NOW, NOW)
        policy.store.put(entry)
    headers = [
        ("Location", "http://example.com/new?x=1"),
        ("Content-Location", "/other"),
    ]
    keys = policy.invalidate_after("POST", 201, K, "example.com", headers)
    assert keys == [K, "example.com/new?x=1", "example.com/other"]
    assert len(policy.store) == 1
    assert policy.invalidate_after("POST", 500, "example.com/elsewhere", "example.com", []) == []
    assert policy.invalidate_after("GET", 200, "example.com/elsewhere", "example.com", []) == []
    foreign = [("Location", "http://other.org/elsewhere")]
    assert policy.invalidate_after("DELETE", 204, K, "example.com", foreign) == [K]
    assert len(policy.store) == 1


def test_vary_separates_variants_in_lookups() -> None:
    policy = CachePolicy(ObjectStore())
    for lang in ("en", "fr"):
        policy.keep(
            policy.make_entry(
                K,
                [("Accept-Language", lang)],
                200,
                [("Cache-Control", "max-age=60"), ("Vary", "Accept-Language")],
                lang.encode(),
                request_time=NOW,
                response_time=NOW,
            )
        )
    hit = policy.lookup("GET", K, [("Accept-Language", "fr")], NOW)
    assert hit.kind is LookupKind.HIT
    assert hit.entry is not None
    assert hit.entry.body == b"fr"
    assert policy.lookup("GET", K, [("Accept-Language", "de")], NOW).kind is LookupKind.MISS


def test_entity_tags_compare_weakly_for_if_none_match_and_unquoted_ones_are_quoted() -> None:
    for stored, asked in [
        ('"abc"', '"abc"'),
        ('W/"abc"', '"abc"'),
        ("abc", '"abc"'),
        ('"abc"', "abc"),
        ('w/"abc"', 'W/"abc"'),
        ('"abc"', '"x", "abc", "y"'),
        ('"abc"', "*"),
    ]:
        policy = policy_with([("Cache-Control", "max-age=60"), ("ETag", stored)])
        entry = policy.lookup("GET", K, [], NOW).entry
        assert entry is not None
        assert policy.not_modified([("If-None-Match", asked)], entry), (stored, asked)
        assert policy.conditional_headers(entry)[0][1].endswith('"abc"')
    assert not policy.not_modified([("If-None-Match", '"abd"')], entry)


def test_if_modified_since_uses_last_modified_else_date() -> None:
    policy = policy_with([("Cache-Control", "max-age=60")])
    entry = policy.lookup("GET", K, [], NOW).entry
    assert entry is not None
    assert policy.not_modified([("If-Modified-Since", format_http_date(NOW))], entry)
    assert not policy.not_modified([("If-Modified-Since", format_http_date(NOW - 1))], entry)
    assert not policy.not_modified([("If-Modified-Since", "yesterday")], entry)
    lm = policy_with([("Last-Modified", format_http_date(NOW - 100))])
    old = lm.lookup("GET", K, [], NOW).entry
    assert old is not None
    assert lm.not_modified([("If-Modified-Since", format_http_date(NOW - 50))], old)
    # If-None-Match decides alone when present (RFC 9110 §13.2.2).
    both = [("If-None-Match", '"x"'), ("If-Modified-Since", format_http_date(NOW))]
    assert not lm.not_modified(both, old)


def test_client_conditionals_are_forwarded_quoted_and_if_modified_since_only_alone() -> None:
    forward = CachePolicy.client_conditionals
    assert forward([("If-None-Match", 'abc, W/"d"')]) == [("If-None-Match", '"abc", W/"d"')]
    assert forward([("If-None-Match", "*")]) == [("If-None-Match", "*")]
    since = ("If-Modified-Since", format_http_date(NOW))
    assert forward([since]) == [since]
    assert forward([("If-None-Match", '"a"'), since]) == [("If-None-Match", '"a"')]
    assert forward([("Accept", "*/*")]) == []


def test_a_200_to_head_updates_only_a_response_it_describes() -> None:
    policy = policy_with([("Cache-Control", "max-age=1"), ("ETag", '"v1"')])
    entry = policy.lookup("GET", K, [], NOW).entry
    assert entry is not None
    assert policy.head_updates(entry, 200, [("ETag", '"v1"')])
    assert not policy.head_updates(entry, 200, [("ETag", '"v2"')])
    assert not policy.head_updates(entry, 200, [])
    assert not policy.head_updates(entry, 410, [("ETag", '"v1"')])
    bare = policy_with([("Cache-Control", "max-age=1")])
    plain = bare.lookup("GET", K, [], NOW).entry
    assert plain is not None
    assert bare.head_updates(plain, 200, [("Content-Length", "4")])
    assert not bare.head_updates(plain, 200, [("Content-Length", "5")])


def test_qualified_no_cache_is_a_hit_without_the_named_fields() -> None:
    policy = policy_with([("Cache-Control", 'max-age=60, no-cache="x-a"'), ("X-A", "1")])
    lookup = policy.lookup("GET", K, [], NOW + 1)
    assert lookup.kind is LookupKind.HIT
    assert lookup.entry is not None
    assert lookup.entry.omitted == frozenset({"x-a"})
