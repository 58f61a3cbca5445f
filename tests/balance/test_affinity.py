"""Affinity keys: client IP, X-Forwarded-For from trusted proxies, headers and cookies."""

from __future__ import annotations

import pytest

from podkit.errors import ConfigError
from podkit.serving.balance import AffinityKey, client_ip, parse_networks

TRUSTED = parse_networks(["10.0.0.0/8", "127.0.0.1"])


def test_parse_the_three_forms() -> None:
    assert AffinityKey.parse("client-ip") == AffinityKey("client-ip")
    assert AffinityKey.parse("header:X-User") == AffinityKey("header", "X-User")
    assert AffinityKey.parse("cookie:session") == AffinityKey("cookie", "session")
    assert str(AffinityKey.parse("cookie:session")) == "cookie:session"


@pytest.mark.parametrize("text", ["", "ip", "header:", "cookie", "query:x"])
def test_parse_rejects_other_forms(text: str) -> None:
    with pytest.raises(ConfigError, match="--hash-on"):
        AffinityKey.parse(text)


def test_untrusted_peer_forwarded_for_is_ignored() -> None:
    headers = [("X-Forwarded-For", "1.2.3.4")]
    assert client_ip("192.0.2.9", headers, trusted=TRUSTED) == "192.0.2.9"
    assert client_ip("10.1.1.1", headers, trusted=()) == "10.1.1.1"


def test_the_rightmost_untrusted_hop_is_the_client() -> None:
    headers = [("X-Forwarded-For", "6.6.6.6, 203.0.113.7"), ("x-forwarded-for", "10.0.0.2")]
    assert client_ip("10.0.0.1", headers, trusted=TRUSTED) == "203.0.113.7"


def test_forwarded_hops_with_ports_are_stripped() -> None:
    assert client_ip("127.0.0.1", [("X-Forwarded-For", "203.0.113.7:5050")], trusted=TRUSTED) == (
        "203.0.113.7"
    )
    assert client_ip("127.0.0.1", [("X-Forwarded-For", "[2001:db8::1]:443")], trusted=TRUSTED) == (
        "2001:db8::1"
    )


def test_all_trusted_hops_give_the_leftmost() -> None:
    headers = [("X-Forwarded-For", "10.9.9.9, 10.0.0.3")]
    assert client_ip("10.0.0.1", headers, trusted=TRUSTED) == "10.9.9.9"
    assert client_ip("10.0.0.1", [], trusted=TRUSTED) == "10.0.0.1"


def test_header_and_cookie_keys_fall_back_to_the_client_ip() -> None:
    header = AffinityKey.parse("header:X-User")
    cookie = AffinityKey.parse("cookie:sid")
    assert header.extract("192.0.2.1", [("x-user", " alice ")]) == "alice"
    assert header.extract("192.0.2.1", []) == "192.0.2.1"
    assert cookie.extract("192.0.2.1", [("Cookie", 'a=1; sid="s-42"; b=2')]) == "s-42"
    assert cookie.extract("192.0.2.1", [("Cookie", "a=1")]) == "192.0.2.1"


def test_bad_trusted_proxy_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="--trusted-proxy"):
        parse_networks(["not-an-ip"])


def test_uri_and_path_hash_the_request_target() -> None:
    uri, path = AffinityKey.parse("uri"), AffinityKey.parse("path")
    assert str(uri) == "uri"
    assert str(path) == "path"
    assert uri.extract("192.0.2.9", [], target="/a/b?x=1") == "/a/b?x=1"
    assert path.extract("192.0.2.9", [], target="/a/b?x=1") == "/a/b"
