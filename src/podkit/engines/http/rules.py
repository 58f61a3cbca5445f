"""The decisions of the HTTP/1.1 engine, without sockets: limits, framing and header rules.

Theory of operation. The byte-level grammar (request line, header syntax, chunk sizes, bare
LF, obs-fold) is checked by llhttp in its strict mode. This module decides everything that
needs the whole head (RFC 9112 §6.3 message body length, §3.2 Host; RFC 9110 §7.6 hop-by-hop
fields and ``Via``):

* :func:`check_request_head` takes a parsed request head and returns its
  :class:`RequestFraming`, or raises :class:`~podkit.errors.RemoteProtocolError` with the
  status to answer. Ambiguous framing (Content-Length with Transfer-Encoding, differing
  Content-Length values, a transfer coding other than a final ``chunked``) is refused, never
  guessed, because a proxy and its upstream that guess differently are the recipe for request
  smuggling.
* :func:`strip_hop_by_hop` and :func:`forwarded_headers` compute what goes upstream;
  :func:`response_framing` and :func:`response_head` what goes back to the client.

Nothing here reads a clock or does I/O; the shells in :mod:`.server` and :mod:`.client` act on
the decisions.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from enum import Enum
from http import HTTPStatus
from typing import Any

from podkit._pickling import reduce_dataclass
from podkit.errors import RemoteProtocolError

Headers = list[tuple[bytes, bytes]]

# --- limits -------------------------------------------------------------------------------------

DEFAULT_MAX_HEADER_BYTES = 32 * 1024  # nginx large_client_header_buffers 4x8 KiB; HAProxy 16 KiB
DEFAULT_MAX_HEADER_COUNT = 100  # Apache LimitRequestFields; HAProxy tune.http.maxhdr is 101
DEFAULT_MAX_URI_BYTES = 8 * 1024  # nginx's request-line buffer; 414 above it
DEFAULT_MAX_BODY_BYTES = 1 << 30  # 1 GiB: a proxy streams bodies, nginx's 1 MiB breaks uploads
DEFAULT_HEADER_TIMEOUT = 10.0  # slowloris guard; nginx client_header_timeout is 60 s
DEFAULT_BODY_TIMEOUT = 60.0  # idle time between request body bytes (nginx client_body_timeout)
DEFAULT_KEEPALIVE_TIMEOUT = 60.0  # idle time between requests; nginx 75 s, HAProxy 'timeout client'
DEFAULT_MAX_CONNECTIONS = 10_000  # below a default 'ulimit -n' of a server host
DEFAULT_BUFFER_BYTES = 256 * 1024  # per-stream buffer before reading pauses (back-pressure)
DEFAULT_MAX_PIPELINE = 64  # requests queued behind the one being answered (503 beyond it)
DEFAULT_HANDSHAKE_TIMEOUT = 10.0  # a TLS handshake on a live client takes milliseconds


@dataclass(frozen=True, slots=True, kw_only=True)
class ServerLimits:
    """Limits of the HTTP server; each has a default and answers with its own status.

    Attributes:
        max_header_bytes: request line plus headers, in bytes (431 above it).
        max_header_count: number of header fields (431 above it).
        max_uri_bytes: length of the request target (414 above it).
        max_body_bytes: request body size (413 above it, before forwarding when declared).
        header_timeout: seconds from a request's first byte to its complete head (408).
        body_timeout: seconds of silence allowed while a request body is being received.
        keepalive_timeout: seconds an idle keep-alive connection is kept open.
        max_connections: open client connections; new ones are closed at once above it.
        buffer_bytes: bytes buffered per body stream before the sender is paused.
        max_pipeline: pipelined requests queued behind the one in progress; reading pauses
            at a quarter of it, and a client that still sends more is answered 503.
        handshake_timeout: seconds from accept to a completed TLS handshake (HTTPS only);
            a client still handshaking then is closed. Handshaking clients count against
            ``max_connections``.
        underscores_in_headers: keep request fields whose names contain ``_``. Off by default
            (nginx's ``underscores_in_headers off``): CGI and WSGI apps read ``X_Client_Cert``
            as ``X-Client-Cert``, so a client could forge a field that a proxy sets.
    """

    max_header_bytes: int = DEFAULT_MAX_HEADER_BYTES
    max_header_count: int = DEFAULT_MAX_HEADER_COUNT
    max_uri_bytes: int = DEFAULT_MAX_URI_BYTES
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES
    header_timeout: float = DEFAULT_HEADER_TIMEOUT
    body_timeout: float = DEFAULT_BODY_TIMEOUT
    keepalive_timeout: float = DEFAULT_KEEPALIVE_TIMEOUT
    max_connections: int = DEFAULT_MAX_CONNECTIONS
    buffer_bytes: int = DEFAULT_BUFFER_BYTES
    max_pipeline: int = DEFAULT_MAX_PIPELINE
    underscores_in_headers: bool = False
    handshake_timeout: float = DEFAULT_HANDSHAKE_TIMEOUT

    def __reduce__(self) -> tuple[Any, ...]:
        return reduce_dataclass(self)  # picklable when compiled (see podkit._pickling)


# --- request framing ----------------------------------------------------------------------------

HOP_BY_HOP = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-connection",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"upgrade",
    }
)
# Framing fields the engine always writes itself; a handler's copies are ignored.
FRAMING = frozenset({b"content-length", b"transfer-encoding", b"connection", b"keep-alive"})
_FRAMING_OR_VIA = FRAMING | {b"via"}

_DIGITS = frozenset(b"0123456789")
# The request fields check_request_head looks at; every other field passes untouched.
_REQUEST_FRAMING_FIELDS = frozenset(
    {b"host", b"content-length", b"transfer-encoding", b"expect", b"connection", b"upgrade"}
)


@dataclass(slots=True)
class RequestFraming:
    """What the head of a request says about its body and connection.

    Attributes:
        content_length: the declared length, or None (chunked, or no body).
        chunked: the body uses the chunked transfer coding.
        expect_continue: the client waits for ``100 Continue`` before sending the body.
        upgrade: the protocol asked for in ``Upgrade`` (with ``Connection: upgrade``), or None.
        host: the Host field's value, or None (only HTTP/1.0 may omit it).
    """

    content_length: int | None = None
    chunked: bool = False
    expect_continue: bool = False
    upgrade: bytes | None = None
    host: bytes | None = None


def _reject(reason: str, status: int = 400) -> RemoteProtocolError:
    return RemoteProtocolError(reason, status=status)


def origin_form(target: bytes) -> tuple[bytes, bytes] | None:
    """``(origin-form target, authority)`` of an absolute-form request target, else None.

    ``GET http://a.example:8080/p?q HTTP/1.1`` becomes ``/p?q`` with Host ``a.example:8080``
    (RFC 9112 §3.2.2: the target's authority replaces the Host field). Targets in origin-form
    (``/p``), asterisk-form and authority-form (CONNECT) give None.

    Raises:
        RemoteProtocolError: 400 for an absolute target that is not ``http`` or ``https``,
            has no host, or carries userinfo (``user@host``, deprecated by RFC 9110 §4.2.4).
    """
    if not target or target[0] in b"/*":
        return None
    scheme, sep, rest = target.partition(b"://")
    if not sep:
        return None  # authority-form; CONNECT is refused elsewhere
    if scheme.lower() not in (b"http", b"https"):
        raise _reject("request target scheme must be http or https")
    end = len(rest)
    for mark in b"/?#":
        index = rest.find(bytes((mark,)))
        if index != -1 and index < end:
            end = index
    authority, tail = rest[:end], rest[end:]
    if not authority or b"@" in authority or not _valid_host(authority):
        raise _reject("invalid host in the request target")
    tail = tail.partition(b"#")[0]
    if not tail.startswith(b"/"):
        tail = b"/" + tail
    return tail, authority


def parse_content_length(values: Sequence[bytes]) -> int:
    """The single length that one or more Content-Length values declare.

    Raises:
        RemoteProtocolError: a value is not a decimal number, or the values differ (400).
    """
    length: int | None = None
    for raw in values:
        for part in raw.split(b","):
            part = part.strip(b" \t")
            if not part or not _DIGITS.issuperset(part) or len(part) > 18:
                raise _reject("invalid Content-Length")
            number = int(part)
            if length is not None and number != length:
                raise _reject("conflicting Content-Length values")
            length = number
    if length is None:
        raise _reject("invalid Content-Length")
    return length


_PLAIN_CONNECTION = {b"keep-alive": {b"keep-alive"}, b"close": {b"close"}}


def connection_tokens(value: bytes) -> set[bytes]:
    """The lower-cased tokens of a Connection field value."""
    plain = _PLAIN_CONNECTION.get(value.lower())
    if plain is not None:
        return set(plain)  # the common case, without splitting
    return {t.strip(b" \t").lower() for t in value.split(b",") if t.strip(b" \t")}


def check_request_head(
    method: str, http_version: str, headers: Headers, *, max_body_bytes: int
) -> RequestFraming:
    """Decide the framing of a request from its head, or refuse it.

    Args:
        method: the request method, e.g. ``"GET"``.
        http_version: ``"1.1"`` or ``"1.0"`` (what the parser saw).
        headers: the header fields as received.
        max_body_bytes: the body size limit (a larger declared length is refused with 413).

    Returns:
        The framing to read the body with and forward it by.

    Raises:
        RemoteProtocolError: with ``status`` 400 (ambiguous framing, bad or missing Host),
            413 (declared body too large), 501 (a transfer coding other than chunked, or
            CONNECT) or 505 (an HTTP version other than 1.x).
    """
    if not http_version.startswith("1."):
        raise _reject(f"HTTP/{http_version} is not supported", 505)
    framing = RequestFraming()
    lengths: list[bytes] | None = None
    codings: list[bytes] | None = None
    hosts = 0
    upgrade: bytes | None = None
    wants_upgrade = False
    for name, value in headers:
        lname = name.lower()
        if lname not in _REQUEST_FRAMING_FIELDS:
            continue  # most fields: one set test
        if lname == b"host":
            hosts += 1
            framing.host = value
        elif lname == b"content-length":
            if lengths is None:
                lengths = []
            lengths.append(value)
        elif lname == b"transfer-encoding":
            if codings is None:
                codings = []
            codings.extend(c.strip(b" \t").lower() for c in value.split(b","))
        elif lname == b"expect":
            if value.strip(b" \t").lower() == b"100-continue":
                framing.expect_continue = True
            else:
                raise _reject("unsupported expectation", 417)
        elif lname == b"connection":
            wants_upgrade = wants_upgrade or b"upgrade" in connection_tokens(value)
        elif lname == b"upgrade":
            upgrade = value.strip(b" \t")
    if hosts > 1:
        raise _reject("more than one Host field")
    if hosts == 0 and http_version != "1.0":
        raise _reject("missing Host field")
    if framing.host is not None and not _valid_host(framing.host):
        raise _reject("invalid Host field")
    if method == "CONNECT":
        raise _reject("CONNECT is not supported by a reverse proxy", 501)
    if codings is not None:
        if lengths is not None:
            raise _reject("both Content-Length and Transfer-Encoding")
        if http_version == "1.0":
            raise _reject("Transfer-Encoding in an HTTP/1.0 request")
        if codings != [b"chunked"]:
            if codings and codings[-1] == b"chunked" and b"chunked" not in codings[:-1]:
                raise _reject("transfer codings other than chunked are not supported", 501)
            raise _reject("invalid Transfer-Encoding")
        framing.chunked = True
    elif lengths is not None:
        framing.content_length = parse_content_length(lengths)
        if framing.content_length > max_body_bytes:
            raise _reject("request body too large", 413)
    if wants_upgrade and upgrade:
        framing.upgrade = upgrade
    return framing


_HOST_FORBIDDEN = frozenset(b" \t/\\?#@\x00\r\n")


_VALID_HOSTS: dict[bytes, bool] = {}  # clients send the same few Host values: check each once
_MAX_CACHED_HOSTS = 1024


def _valid_host(value: bytes) -> bool:
    # RFC 3986 authority without userinfo: a reg-name or [v6] plus an optional port.
    valid = _VALID_HOSTS.get(value)
    if valid is None:
        valid = len(value) <= 255 and not _HOST_FORBIDDEN.intersection(value)
        if len(_VALID_HOSTS) >= _MAX_CACHED_HOSTS:  # bounded: Host values are client input
            _VALID_HOSTS.clear()
        _VALID_HOSTS[value] = valid
    return valid


# --- header rewriting ---------------------------------------------------------------------------


def strip_hop_by_hop(headers: Iterable[tuple[bytes, bytes]]) -> Headers:
    """The end-to-end fields of ``headers``: hop-by-hop fields and those named in Connection
    removed, and Content-Length dropped (the sender writes its own framing)."""
    out: Headers = []
    named: set[bytes] | None = None
    for name, value in headers:
        lname = name.lower()
        if lname in HOP_BY_HOP or lname == b"content-length":
            if lname == b"connection":
                named = (
                    connection_tokens(value) if named is None else named | connection_tokens(value)
                )
            continue
        out.append((name, value))
    if named:
        out = [(n, v) for n, v in out if n.lower() not in named]
    return out


Network = ipaddress.IPv4Network | ipaddress.IPv6Network


@dataclass(frozen=True, slots=True, kw_only=True)
class Forwarding:
    """How a proxy describes the client to the upstream.

    Attributes:
        trusted_proxies: networks whose ``X-Forwarded-*`` fields are kept and extended; from
            any other client they are replaced, so a client cannot forge its address.
        via: the pseudonym added to ``Via`` on requests and responses, or None for none.
        forwarded_for: add ``X-Forwarded-For``.
        forwarded_proto: add ``X-Forwarded-Proto`` (``http``, or ``https`` behind TLS).
        forwarded_host: add ``X-Forwarded-Host`` from the request's Host.
    """

    trusted_proxies: tuple[Network, ...] = ()
    via: str | None = "podkit"
    forwarded_for: bool = True
    forwarded_proto: bool = True
    forwarded_host: bool = True
    _trust_cache: dict[str, bool] = field(
        default_factory=dict, init=False, compare=False, repr=False
    )
    _via_cache: dict[str, bytes] = field(
        default_factory=dict, init=False, compare=False, repr=False
    )

    def __reduce__(self) -> tuple[Any, ...]:
        return reduce_dataclass(self)  # picklable when compiled (see podkit._pickling)

    def via_hop(self, http_version: str) -> bytes:
        """This proxy's ``Via`` entry for a message of ``http_version`` (cached)."""
        hop = self._via_cache.get(http_version)
        if hop is None:
            hop = f"{http_version} {self.via}".encode("latin-1")
            self._via_cache[http_version] = hop
        return hop

    @classmethod
    def parse_trusted(
        cls, networks: Iterable[str]
    ) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
        """Networks from strings like ``10.0.0.0/8`` or ``127.0.0.1``.

        Raises:
            ValueError: a string is not an address or network.
        """
        return tuple(ipaddress.ip_network(n.strip(), strict=False) for n in networks)

    def trusts(self, client_ip: str) -> bool:
        """Whether ``client_ip`` is a trusted proxy (results are cached per address)."""
        if not self.trusted_proxies:
            return False
        cached = self._trust_cache.get(client_ip)
        if cached is None:
            try:
                address = ipaddress.ip_address(client_ip)
            except ValueError:
                cached = False
            else:
                cached = any(address in network for network in self.trusted_proxies)
            if len(self._trust_cache) > 4096:  # bounded: client addresses are unbounded
                self._trust_cache.clear()
            self._trust_cache[client_ip] = cached
        return cached


_XFF = b"x-forwarded-for"
_XFP = b"x-forwarded-proto"
_XFH = b"x-forwarded-host"
# Fields that describe the client's path: kept from a trusted proxy, dropped from anyone else
# (a client must not forge its address or scheme). X-Forwarded-* are then written anew.
_CLIENT_DESCRIPTIONS = frozenset({b"forwarded", b"x-real-ip"})
_FORWARDED = frozenset({_XFF, _XFP, _XFH}) | _CLIENT_DESCRIPTIONS
# Fields a request cannot do without: ``Connection`` naming them does not remove them.
_NEVER_NAMED = frozenset({b"host"})
# Connection options that name no field left to remove ("Close" is a reserved field name).
_NAMES_NO_FIELD = HOP_BY_HOP | _NEVER_NAMED | {b"close"}
# Every field forwarded_headers drops or rewrites; the others are copied as they are.
_REWRITTEN = HOP_BY_HOP | _FORWARDED | {b"content-length", b"via"}


def forwarded_headers(
    headers: Iterable[tuple[bytes, bytes]],
    *,
    client_ip: str,
    scheme: str,
    host: bytes | None,
    http_version: str,
    forwarding: Forwarding,
) -> Headers:
    """The fields to send upstream for a request: end-to-end fields plus X-Forwarded-* and Via.

    Args:
        headers: the request's fields as received.
        client_ip: the address of the directly connected client.
        scheme: ``"http"`` or ``"https"`` (the scheme the client used).
        host: the request's Host value, if any.
        http_version: the client's HTTP version, for ``Via``.
        forwarding: the policy.

    Returns:
        A new list; ``headers`` is not modified.
    """
    trusted = forwarding.trusts(client_ip)
    out: Headers = []
    named: set[bytes] | None = None
    prior_for: list[bytes] = []
    prior_proto: bytes | None = None
    prior_host: bytes | None = None
    prior_via: list[bytes] = []
    for name, value in headers:
        lname = name.lower()
        if lname not in _REWRITTEN:
            out.append((name, value))  # most fields: one set test
            continue
        if lname in HOP_BY_HOP or lname == b"content-length":
            if lname == b"connection":
                named = (
                    connection_tokens(value) if named is None else named | connection_tokens(value)
                )
            continue
        if lname in _FORWARDED:
            if trusted:
                if lname == _XFF:
                    prior_for.append(value)
                elif lname == _XFP:
                    prior_proto = value
                elif lname == _XFH:
                    prior_host = value
                else:
                    out.append((name, value))
            continue
        if lname == b"via" and forwarding.via:
            prior_via.append(value)
            continue
        out.append((name, value))
    if named and not named <= _NAMES_NO_FIELD:  # "Connection: keep-alive" names nothing left
        named -= _NEVER_NAMED
        out = [(n, v) for n, v in out if n.lower() not in named]
    if forwarding.forwarded_for:
        chain = b", ".join([*prior_for, client_ip.encode("ascii")])
        out.append((b"X-Forwarded-For", chain))
    if forwarding.forwarded_proto:
        out.append((b"X-Forwarded-Proto", prior_proto or scheme.encode("ascii")))
    if forwarding.forwarded_host and (prior_host or host):
        out.append((b"X-Forwarded-Host", prior_host or host or b""))
    if forwarding.via:
        hop = forwarding.via_hop(http_version)
        out.append((b"Via", b", ".join([*prior_via, hop]) if prior_via else hop))
    return out


def forwarded_request_head(
    method: str,
    target: str,
    headers: Iterable[tuple[bytes, bytes]],
    *,
    client_ip: str,
    scheme: str,
    host: bytes | None,
    http_version: str,
    forwarding: Forwarding,
    authority: bytes,
) -> bytes | None:
    """The head of a body-less request as it goes upstream, built in one pass.

    The same fields as :func:`forwarded_headers` in the same order, after an HTTP/1.1 request
    line, with ``Host: authority`` when the request has no Host. Returns None when the request's
    ``Connection`` names end-to-end fields to remove (rare): then use
    :func:`forwarded_headers`.
    """
    parts = [method.encode("ascii"), b" ", target.encode("latin-1"), b" HTTP/1.1\r\n"]
    trusted = forwarding.trusts(client_ip)
    prior_for: list[bytes] | None = None
    prior_proto: bytes | None = None
    prior_host: bytes | None = None
    prior_via: list[bytes] | None = None
    keep_via = not forwarding.via
    for name, value in headers:
        lname = name.lower()
        if lname not in _REWRITTEN:
            parts += (name, b": ", value, b"\r\n")  # most fields: one set test
        elif lname in HOP_BY_HOP or lname == b"content-length":
            if lname == b"connection" and not connection_tokens(value) <= _NAMES_NO_FIELD:
                return None
        elif lname in _FORWARDED:
            if trusted:
                if lname == _XFF:
                    if prior_for is None:
                        prior_for = []
                    prior_for.append(value)
                elif lname == _XFP:
                    prior_proto = value
                elif lname == _XFH:
                    prior_host = value
                else:
                    parts += (name, b": ", value, b"\r\n")
        elif keep_via:  # Via, with no Via entry of our own to add
            parts += (name, b": ", value, b"\r\n")
        elif prior_via is None:
            prior_via = [value]
        else:
            prior_via.append(value)
    if forwarding.forwarded_for:
        address = client_ip.encode("ascii")
        if prior_for is not None:
            address = b", ".join([*prior_for, address])
        parts += (b"X-Forwarded-For: ", address, b"\r\n")
    if forwarding.forwarded_proto:
        parts += (b"X-Forwarded-Proto: ", prior_proto or scheme.encode("ascii"), b"\r\n")
    if forwarding.forwarded_host and (prior_host or host):
        parts += (b"X-Forwarded-Host: ", prior_host or host or b"", b"\r\n")
    if forwarding.via:
        hop = forwarding.via_hop(http_version)
        if prior_via is not None:
            hop = b", ".join([*prior_via, hop])
        parts += (b"Via: ", hop, b"\r\n")
    if host is None:
        parts += (b"Host: ", authority, b"\r\n")
    parts.append(b"\r\n")
    return b"".join(parts)


def add_via(headers: Headers, *, http_version: str, via: str | bytes) -> None:
    """Append this proxy to the ``Via`` of a response's fields, in place.

    ``via`` is the pseudonym, or the whole ready-made entry as bytes.
    """
    hop = via if isinstance(via, bytes) else f"{http_version} {via}".encode("latin-1")
    for index, (name, value) in enumerate(headers):
        if name.lower() == b"via":
            headers[index] = (name, value + b", " + hop)
            return
    headers.append((b"Via", hop))


# --- response framing ---------------------------------------------------------------------------


class BodyMode(Enum):
    """How a response body is delimited on the wire (RFC 9112 §6.3)."""

    NONE = "none"  # HEAD, 1xx, 204, 304: no body whatever the fields say
    LENGTH = "length"  # Content-Length
    CHUNKED = "chunked"  # Transfer-Encoding: chunked
    CLOSE = "close"  # HTTP/1.0 client and unknown length: the end is the connection's close


def response_has_body(method: str, status: int) -> bool:
    """Whether a response to ``method`` with ``status`` carries a body (RFC 9112 §6.3 1-2)."""
    return not (method == "HEAD" or status < 200 or status == 204 or status == 304)


def response_framing(
    method: str, status: int, *, length: int | None, http10: bool, keep_alive: bool
) -> tuple[BodyMode, bool]:
    """How to frame a response body, and whether the connection stays open after it.

    Args:
        method: the request's method.
        status: the response status.
        length: the body length when known, else None (a stream).
        http10: the client speaks HTTP/1.0 (no chunked coding).
        keep_alive: whether the connection would otherwise stay open.

    Returns:
        ``(mode, keep_alive)``.
    """
    if not response_has_body(method, status):
        return BodyMode.NONE, keep_alive
    if length is not None:
        return BodyMode.LENGTH, keep_alive
    if http10:
        return BodyMode.CLOSE, False
    return BodyMode.CHUNKED, keep_alive


def _status_line(status: int, reason: bytes | None = None) -> bytes:
    if reason is None:
        try:
            reason = HTTPStatus(status).phrase.encode("ascii")
        except ValueError:
            reason = b"Unknown"
    return b"HTTP/1.1 %d %b\r\n" % (status, reason)


_STATUS_LINES = {status.value: _status_line(status.value) for status in HTTPStatus}


# Status lines with the reason an upstream sent ("200 OK"): a proxy relays the same few.
_RELAYED_LINES: dict[tuple[int, bytes], bytes] = {}
_MAX_RELAYED_LINES = 256


def status_line(status: int, reason: bytes | None = None) -> bytes:
    """``HTTP/1.1 <status> <reason>\\r\\n`` (cached for the standard and recent reasons)."""
    if reason is None:
        line = _STATUS_LINES.get(status)
        if line is not None:
            return line
        return _status_line(status, reason)
    key = (status, reason)
    line = _RELAYED_LINES.get(key)
    if line is None:
        line = _status_line(status, reason)
        if len(_RELAYED_LINES) >= _MAX_RELAYED_LINES:  # bounded: reasons come from upstreams
            _RELAYED_LINES.clear()
        _RELAYED_LINES[key] = line
    return line


def response_head(
    status: int,
    headers: Iterable[tuple[bytes, bytes]],
    *,
    mode: BodyMode,
    length: int | None,
    keep_alive: bool,
    http10: bool,
    reason: bytes | None = None,
    via: bytes | None = None,
) -> bytes:
    """The bytes of a response head with the engine's own framing fields.

    A handler's Content-Length, Transfer-Encoding, Connection and Keep-Alive are dropped and
    replaced, except that a response without a body (HEAD, 204, 304) keeps its Content-Length,
    which then describes the representation rather than this message. ``via`` is a ready-made
    ``Via`` entry to add as :func:`add_via` would (in the same pass over the fields).
    """
    parts = [status_line(status, reason)]
    append = parts.append
    for name, value in headers:
        lname = name.lower()
        if lname in _FRAMING_OR_VIA:
            if lname == b"via":
                if via is not None:
                    value = value + b", " + via
                    via = None
            elif not (mode is BodyMode.NONE and lname == b"content-length"):
                continue
        parts += (name, b": ", value, b"\r\n")
    if via is not None:
        append(b"Via: " + via + b"\r\n")
    if mode is BodyMode.LENGTH:
        append(b"Content-Length: %d\r\n" % (length or 0))
    elif mode is BodyMode.CHUNKED:
        append(b"Transfer-Encoding: chunked\r\n")
    if not keep_alive:
        append(b"Connection: close\r\n")
    elif http10:
        append(b"Connection: keep-alive\r\n")
    append(b"\r\n")
    return b"".join(parts)


def error_response(status: int, reason: str, *, keep_alive: bool = False) -> bytes:
    """A complete short plain-text response for ``status`` (the engine's own errors)."""
    body = f"{status} {_phrase(status)}: {reason}\n".encode("latin-1", "replace")
    head = status_line(status) + b"Content-Type: text/plain; charset=utf-8\r\n"
    head += b"Content-Length: %d\r\n" % len(body)
    if not keep_alive:
        head += b"Connection: close\r\n"
    return head + b"\r\n" + body


def _phrase(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Error"


__all__ = [
    "DEFAULT_BODY_TIMEOUT",
    "DEFAULT_BUFFER_BYTES",
    "DEFAULT_HEADER_TIMEOUT",
    "DEFAULT_KEEPALIVE_TIMEOUT",
    "DEFAULT_MAX_BODY_BYTES",
    "DEFAULT_MAX_CONNECTIONS",
    "DEFAULT_MAX_HEADER_BYTES",
    "DEFAULT_MAX_HEADER_COUNT",
    "DEFAULT_MAX_PIPELINE",
    "DEFAULT_MAX_URI_BYTES",
    "FRAMING",
    "HOP_BY_HOP",
    "BodyMode",
    "Forwarding",
    "Headers",
    "RequestFraming",
    "ServerLimits",
    "add_via",
    "check_request_head",
    "connection_tokens",
    "error_response",
    "forwarded_headers",
    "forwarded_request_head",
    "parse_content_length",
    "response_framing",
    "response_has_body",
    "response_head",
    "status_line",
    "strip_hop_by_hop",
]
