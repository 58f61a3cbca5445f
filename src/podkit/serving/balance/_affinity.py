"""Affinity keys: which part of a request decides its backend under the ``hash`` policy.

``client-ip`` uses the socket's peer address, or, when that peer is a trusted proxy, the
right-most address in ``X-Forwarded-For`` that is not itself a trusted proxy (the left part
of the header is written by the client and cannot be believed). ``header:NAME`` and
``cookie:NAME`` use that header's or cookie's value; a request without it falls back to its
client IP, so it still lands somewhere stable. ``uri`` uses the request target (path and
query) and ``path`` the path alone: in front of cache replicas each URL is cached on one of
them, so the tier holds N times one cache's objects (a sharded cache).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Literal

from podkit.errors import ConfigError

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
AffinitySource = Literal["client-ip", "header", "cookie", "uri", "path"]
MAX_FORWARDED_HOPS = 32  # a longer X-Forwarded-For chain is an attack, not a topology


@dataclass(frozen=True, slots=True)
class AffinityKey:
    """What to hash: ``client-ip``, ``uri``, ``path``, ``header:NAME`` or ``cookie:NAME``."""

    source: AffinitySource
    name: str = ""

    @classmethod
    def parse(cls, text: str) -> AffinityKey:
        """Parse the ``--hash-on`` syntax.

        Raises:
            ConfigError: the text is none of the three forms.
        """
        text = text.strip()
        if text == "client-ip":
            return cls("client-ip")
        if text == "uri":
            return cls("uri")
        if text == "path":
            return cls("path")
        kind, sep, name = text.partition(":")
        if sep and name.strip() and kind in ("header", "cookie"):
            return cls("header" if kind == "header" else "cookie", name.strip())
        raise ConfigError(
            f"expected client-ip, uri, path, header:NAME or cookie:NAME, got {text!r}",
            path="--hash-on",
        )

    def __str__(self) -> str:
        return self.source if not self.name else f"{self.source}:{self.name}"

    def extract(
        self,
        peer: str,
        headers: Sequence[tuple[str, str]],
        *,
        trusted: Sequence[IPNetwork] = (),
        target: str = "",
    ) -> str:
        """The affinity key of a request.

        Args:
            peer: the socket peer's IP address.
            headers: the request headers as (name, value) pairs.
            trusted: proxies whose ``X-Forwarded-For`` is believed.
            target: the request target as sent (``/a/b?c=1``), for ``uri`` and ``path``.
        """
        if self.source == "uri":
            return target
        if self.source == "path":
            return target.partition("?")[0]
        if self.source == "header":
            value = _header(headers, self.name)
            if value is not None and value.strip():
                return value.strip()
        elif self.source == "cookie":
            value = _cookie(headers, self.name)
            if value:
                return value
        return client_ip(peer, headers, trusted=trusted)


def parse_networks(
    texts: Iterable[str], *, field: str = "--trusted-proxy"
) -> tuple[IPNetwork, ...]:
    """Parse address or CIDR network values such as ``--trusted-proxy``.

    Args:
        texts: the values.
        field: the option named in errors.

    Raises:
        ConfigError: a value is not an address or network.
    """
    networks: list[IPNetwork] = []
    for text in texts:
        try:
            networks.append(ipaddress.ip_network(text.strip(), strict=False))
        except ValueError as exc:
            raise ConfigError(
                f"expected an IP address or network such as 10.0.0.0/8, got {text!r}",
                path=field,
            ) from exc
    return tuple(networks)


def _is_trusted(address: str, trusted: Sequence[IPNetwork]) -> bool:
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    return any(ip in network for network in trusted)


def client_ip(
    peer: str, headers: Sequence[tuple[str, str]], *, trusted: Sequence[IPNetwork]
) -> str:
    """The client's address: the peer, or the first untrusted hop of ``X-Forwarded-For``."""
    if not trusted or not _is_trusted(peer, trusted):
        return peer
    hops: list[str] = []
    for name, value in headers:
        if name.lower() == "x-forwarded-for":
            hops.extend(h.strip() for h in value.split(","))
    hops = [h for h in hops if h][-MAX_FORWARDED_HOPS:]
    for hop in reversed(hops):
        if not _is_trusted(hop, trusted):
            return _strip_port(hop)
    # Every hop is a trusted proxy: the left-most is the closest to the client we know.
    return _strip_port(hops[0]) if hops else peer


def _strip_port(hop: str) -> str:
    if hop.startswith("["):  # "[2001:db8::1]:443"
        return hop[1:].partition("]")[0]
    if hop.count(":") == 1:  # "203.0.113.7:5050"
        return hop.partition(":")[0]
    return hop


def _header(headers: Sequence[tuple[str, str]], name: str) -> str | None:
    lname = name.lower()
    for key, value in headers:
        if key.lower() == lname:
            return value
    return None


def _cookie(headers: Sequence[tuple[str, str]], name: str) -> str | None:
    for key, value in headers:
        if key.lower() != "cookie":
            continue
        for pair in value.split(";"):
            cname, sep, cvalue = pair.strip().partition("=")
            if sep and cname == name:
                return cvalue.strip().strip('"')
    return None
