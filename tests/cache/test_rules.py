"""RFC 9111 rules: Cache-Control parsing, storability, freshness lifetime and age."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from podkit.serving.cache import (
    EntityTag,
    age_value,
    current_age,
    format_http_date,
    freshness_lifetime,
    parse_cache_control,
    parse_entity_tag,
    parse_entity_tags,
    parse_http_date,
    parse_targeted_cache_control,
    response_directives,
    storable,
    strong_match,
    vary_names,
    weak_match,
)

NOW = 1_700_000_000.0
DATE = format_http_date(NOW)


def test_cache_control_directives_are_parsed_with_quotes_and_first_wins() -> None:
    cc = parse_cache_control(['max-age=60, No-Cache="Set-Cookie, X", private', "max-age=5"])
    assert cc == {"max-age": "60", "no-cache": "Set-Cookie, X", "private": None}


def test_http_dates_round_trip_and_bad_ones_are_none() -> None:
    assert parse_http_date(DATE) == NOW
    assert parse_http_date("Sunday, 06-Nov-94 08:49:37 GMT") == 784111777.0
    assert parse_http_date("Sun Nov  6 08:49:37 1994") == 784111777.0
    assert parse_http_date("0") is None
    assert parse_http_date(None) is None


@pytest.mark.parametrize(
    ("method", "req", "status", "resp", "ok", "reason"),
    [
        ("GET", [], 200, [("Cache-Control", "max-age=60")], True, "storable"),
        ("GET", [], 200, [], True, "storable"),  # heuristically cacheable status
        ("POST", [], 200, [("Cache-Control", "max-age=60")], False, "method"),
        ("HEAD", [], 200, [("Cache-Control", "max-age=60")], False, "method"),
        ("GET", [], 206, [("Cache-Control", "max-age=60")], False, "status 206"),
        ("GET", [], 302, [], False, "needs explicit freshness"),
        ("GET", [], 302, [("Cache-Control", "max-age=5")], True, "storable"),
        ("GET", [], 200, [("Cache-Control", "no-store")], False, "no-store"),
        ("GET", [("Cache-Control", "no-store")], 200, [], False, "no-store"),
        ("GET", [], 200, [("Cache-Control", "private, max-age=60")], False, "private"),
        ("GET", [("Authorization", "x")], 200, [("Cache-Control", "max-age=9")], False, "author"),
        ("GET", [("Authorization", "x")], 200, [("Cache-Control", "s-maxage=9")], True, "stor"),
        ("GET", [("Authorization", "x")], 200, [("Cache-Control", "public")], True, "stor"),
        ("GET", [], 200, [("Set-Cookie", "a=b"), ("Cache-Control", "max-age=9")], False, "cook"),
        ("GET", [], 200, [("Vary", "Accept, *")], False, "vary: *"),
    ],
)
def test_storability_for_a_shared_cache(
    method: str,
    req: list[tuple[str, str]],
    status: int,
    resp: list[tuple[str, str]],
    ok: bool,
    reason: str,
) -> None:
    result = storable(method, req, status, resp)
    assert bool(result) is ok
    assert reason in result.reason


def lifetime(headers: list[tuple[str, str]], status: int = 200) -> float:
    return freshness_lifetime(status, headers, response_time=NOW)


def test_s_maxage_beats_max_age_beats_expires() -> None:
    expires = ("Expires", format_http_date(NOW + 500))
    assert lifetime([("Cache-Control", "max-age=10, s-maxage=20"), expires]) == 20
    assert lifetime([("Cache-Control", "max-age=10"), expires, ("Date", DATE)]) == 10
    assert lifetime([expires, ("Date", DATE)]) == 500


def test_invalid_freshness_values_mean_stale() -> None:
    assert lifetime([("Cache-Control", "max-age=soon")]) == 0
    assert lifetime([("Expires", "0"), ("Date", DATE)]) == 0
    assert lifetime([("Expires", format_http_date(NOW - 50)), ("Date", DATE)]) == 0


def test_expires_without_date_is_measured_from_the_response_time() -> None:
    assert lifetime([("Expires", format_http_date(NOW + 30))]) == 30


def test_heuristic_is_a_tenth_of_the_age_of_last_modified_and_capped() -> None:
    lm = ("Last-Modified", format_http_date(NOW - 1000))
    assert lifetime([lm, ("Date", DATE)]) == 100
    old = ("Last-Modified", format_http_date(NOW - 10**8))
    assert lifetime([old, ("Date", DATE)]) == 24 * 3600


def test_no_heuristic_for_statuses_that_are_not_cacheable_by_default() -> None:
    lm = ("Last-Modified", format_http_date(NOW - 1000))
    assert lifetime([lm, ("Date", DATE)], status=302) == 0
    assert lifetime([lm, ("Date", DATE), ("Cache-Control", "public")], status=302) == 100
    assert lifetime([("Date", DATE)]) == 0


def test_age_adds_resident_time_to_the_corrected_initial_age() -> None:
    headers = [("Date", format_http_date(NOW - 10)), ("Age", "3")]
    # apparent age 10 beats corrected Age 3 + 1 s of response delay
    assert current_age(headers, request_time=NOW - 1, response_time=NOW, now=NOW + 5) == 15
    headers = [("Date", DATE), ("Age", "30")]
    assert current_age(headers, request_time=NOW - 2, response_time=NOW, now=NOW) == 32


@given(st.integers(0, 10**6), st.integers(0, 10**4), st.floats(0, 100), st.floats(0, 10**5))
def test_age_never_decreases_with_time(age: int, skew: int, delay: float, resident: float) -> None:
    """current_age is monotonic in now and never below the Age header."""
    headers = [("Date", format_http_date(NOW - skew)), ("Age", str(age))]
    first = current_age(headers, request_time=NOW - delay, response_time=NOW, now=NOW)
    later = current_age(headers, request_time=NOW - delay, response_time=NOW, now=NOW + resident)
    assert age <= first <= later


def test_vary_names_are_lowercased_and_deduplicated() -> None:
    assert vary_names([("Vary", "Accept-Encoding, accept"), ("vary", "Accept")]) == (
        "accept-encoding",
        "accept",
    )


@pytest.mark.parametrize(
    "value",
    [
        "Thu, 18 Aug 2050 02:01:18 UTC",
        "Thu, 18 Aug 2050 02:01:18 AEST",
        "Thu, 18 Aug 50 02:01:18 GMT",
        "Thu 18 Aug 2050 02:01:18 GMT",
        "Thu, 18  Aug  2050 02:01:18 GMT",
        "Thu, 18-Aug-2050 02:01:18 GMT",
        "Thu, 18 Aug 2050 02.01.18 GMT",
        "Thu, 18 Aug 2050 2:01:18 GMT",
        "Thu, 31 Feb 2050 02:01:18 GMT",
        "Foo, 18 Aug 2050 02:01:18 GMT",
        "0",
        "-1",
    ],
)
def test_an_invalid_expires_means_already_expired(value: str) -> None:
    """RFC 9111 §5.3: anything but the three HTTP-date forms is a time in the past."""
    assert parse_http_date(value) is None
    assert lifetime([("Expires", value), ("Date", DATE)]) == 0


def test_dates_tolerate_the_case_of_names_and_read_rfc850_years_near_now() -> None:
    assert parse_http_date("THU, 18 AUG 2050 02:01:18 gmt") == 2544400878.0
    assert parse_http_date("Thursday, 18-Aug-50 02:01:18 GMT", now=NOW) == 2544400878.0
    assert parse_http_date("Sunday, 06-Nov-94 08:49:37 GMT", now=NOW) == 784111777.0


def test_two_expires_fields_mean_already_expired() -> None:
    future = format_http_date(NOW + 500)
    assert lifetime([("Expires", future), ("Expires", future), ("Date", DATE)]) == 0


@given(st.integers(0, 2**33))
def test_imf_fixdates_round_trip(when: int) -> None:
    """Every date this cache formats parses back to itself, whatever the year."""
    assert parse_http_date(format_http_date(when)) == when


@given(st.text(max_size=40))
def test_date_parsing_never_raises_and_is_none_or_a_time(text: str) -> None:
    result = parse_http_date(text)
    assert result is None or isinstance(result, float)


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        (["7200, 0"], 7200),
        (["7200", "0"], 7200),
        (["0,7200"], 0),
        (["abc"], None),
        (["-7200"], None),
        (["7200.0"], None),
        ([" 30 "], 30),
        (["99999999999"], 2**31),
    ],
)
def test_age_is_the_first_member_of_a_list_and_invalid_ones_are_ignored(
    values: list[str], expected: int | None
) -> None:
    assert age_value([("Age", v) for v in values]) == expected


@given(st.lists(st.text(max_size=12), max_size=3))
def test_age_parsing_never_raises(values: list[str]) -> None:
    result = age_value([("Age", v) for v in values])
    assert result is None or 0 <= result <= 2**31


def test_a_listed_age_makes_a_response_stale() -> None:
    headers = [("Date", DATE), ("Cache-Control", "max-age=3600"), ("Age", "7200, 0")]
    assert current_age(headers, request_time=NOW, response_time=NOW, now=NOW) == 7200


@pytest.mark.parametrize("status", [299, 400, 499, 500, 504, 599])
def test_explicit_freshness_makes_any_final_status_storable(status: int) -> None:
    assert storable("GET", [], status, [("Cache-Control", "max-age=60")])
    assert storable("GET", [], status, [("Expires", format_http_date(NOW + 60))])
    assert not storable("GET", [], status, [("Last-Modified", DATE)])


def test_interim_and_not_modified_answers_are_never_stored() -> None:
    for status in (100, 103, 304):
        assert not storable("GET", [], status, [("Cache-Control", "max-age=60")])


def test_must_understand_overrides_no_store_only_for_understood_statuses() -> None:
    cc = [("Cache-Control", "must-understand, no-store, max-age=60")]
    assert storable("GET", [], 200, cc)
    assert "must-understand" in storable("GET", [], 299, cc).reason
    assert not storable("GET", [("Cache-Control", "no-store")], 200, cc)


def test_set_cookie_responses_are_stored_only_when_public_and_explicitly_fresh() -> None:
    cookie = ("Set-Cookie", "a=b")
    assert storable("GET", [], 200, [cookie, ("Cache-Control", "public, max-age=60")])
    assert not storable("GET", [], 200, [cookie, ("Cache-Control", "public")])
    assert not storable("GET", [], 200, [cookie, ("Cache-Control", "max-age=60")])
    kept_out = ("Cache-Control", 'max-age=60, no-cache="Set-Cookie"')
    assert storable("GET", [], 200, [cookie, kept_out])


def test_qualified_private_is_storable_and_206_needs_one_known_range() -> None:
    assert storable("GET", [], 200, [("Cache-Control", 'private="x-user", max-age=60')])
    cc = ("Cache-Control", "max-age=60")
    assert storable("GET", [], 206, [cc, ("Content-Range", "bytes 4-9/10")])
    assert not storable("GET", [], 206, [cc, ("Content-Range", "bytes 4-9/*")])
    assert not storable("GET", [], 206, [cc, ("Content-Range", "bytes 9-4/10")])


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("max-age=3600", {"max-age": "3600"}),
        ("foobar, max-age=3600", {"foobar": None, "max-age": "3600"}),
        ("max-age=60;a=1, no-cache=?1, private=?0", {"max-age": "60", "no-cache": None}),
        ('max-age="10000"', {}),
        ("max-age=1.5", {}),
        ("MaX-aGe=3600", None),
        ("max-age =100", None),
        ("max-age= 100", None),
        ("max-age=10000, &&&&&", None),
        ("max-age=60,", None),
    ],
)
def test_targeted_fields_are_structured_dictionaries(
    value: str, expected: dict[str, str | None] | None
) -> None:
    assert parse_targeted_cache_control([value]) == expected


@given(st.text(max_size=30))
def test_targeted_parsing_never_raises(text: str) -> None:
    result = parse_targeted_cache_control([text])
    assert result is None or isinstance(result, dict)


def test_a_targeted_field_replaces_cache_control() -> None:
    cdn = [("Cache-Control", "no-store"), ("CDN-Cache-Control", "max-age=600")]
    assert storable("GET", [], 200, cdn)
    assert lifetime(cdn) == 600
    short = [("Cache-Control", "max-age=3600"), ("CDN-Cache-Control", "max-age=1")]
    assert lifetime(short) == 1
    ours = [*short, ("Podkit-Cache-Control", "max-age=20")]
    targeted = ("Podkit-Cache-Control", "CDN-Cache-Control")
    assert freshness_lifetime(200, ours, response_time=NOW, targeted=targeted) == 20
    assert response_directives(ours, targeted) == {"max-age": "20"}
    invalid = [("Cache-Control", "max-age=5"), ("CDN-Cache-Control", "max-age=60, &&")]
    assert lifetime(invalid) == 5  # an invalid targeted field is ignored
    private = [("Cache-Control", "max-age=60"), ("CDN-Cache-Control", "private")]
    assert not storable("GET", [], 200, private)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('"abc"', EntityTag("abc")),
        ('W/"abc"', EntityTag("abc", weak=True)),
        ('w/"abc"', EntityTag("abc", weak=True)),
        ("abc", EntityTag("abc")),
        ('"abcdefü"', EntityTag("abcdefü")),
        ('""', None),
        ('"a"b"', None),
        (None, None),
    ],
)
def test_entity_tags_parse_quoted_unquoted_and_weak(
    text: str | None, expected: EntityTag | None
) -> None:
    assert parse_entity_tag(text) == expected


def test_entity_tag_lists_keep_commas_inside_quotes_and_star_is_any() -> None:
    assert parse_entity_tags(['"a,b", W/"c"', '"d"']) == [
        EntityTag("a,b"),
        EntityTag("c", weak=True),
        EntityTag("d"),
    ]
    assert parse_entity_tags(["*"]) is None
    assert strong_match(EntityTag("a"), EntityTag("a"))
    assert not strong_match(EntityTag("a", weak=True), EntityTag("a"))
    assert weak_match(EntityTag("a", weak=True), EntityTag("a"))


_OPAQUE = st.text(
    alphabet=st.characters(min_codepoint=0x21, max_codepoint=0x7E, blacklist_characters='",'),
    min_size=1,
    max_size=12,
)


@given(st.lists(st.tuples(_OPAQUE, st.booleans()), min_size=1, max_size=5))
def test_entity_tag_lists_round_trip(tags: list[tuple[str, bool]]) -> None:
    expected = [EntityTag(opaque, weak) for opaque, weak in tags]
    assert parse_entity_tags([", ".join(map(str, expected))]) == expected


@given(st.text(max_size=30))
def test_entity_tag_parsing_never_raises(text: str) -> None:
    tags = parse_entity_tags([text])
    assert tags is None or all(isinstance(tag, EntityTag) for tag in tags)


def test_cache_control_directives_with_space_around_the_equals_sign_are_ignored() -> None:
    assert parse_cache_control(["max-age =3600, public"]) == {"public": None}
    assert parse_cache_control(["max-age= 3600"]) == {}
    assert parse_cache_control(['extension="max-age=3600", max-age=1']) == {
        "extension": "max-age=3600",
        "max-age": "1",
    }
    assert lifetime([("Cache-Control", "max-age=003600")]) == 3600
    assert lifetime([("Cache-Control", "max-age='3600'")]) == 0
