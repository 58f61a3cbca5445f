"""RFC 9111 rules: Cache-Control parsing, storability, freshness lifetime and age."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from podkit.serving.cache import (
    current_age,
    format_http_date,
    freshness_lifetime,
    parse_cache_control,
    parse_http_date,
    storable,
    vary_names,
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
