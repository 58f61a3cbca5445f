"""RFC 9111 rules for a shared cache: Cache-Control, storability, freshness and age.

Theory of operation. These are pure functions over header lists (``[(name, value), ...]``)
and times in seconds since the epoch passed in by the caller (``Date`` and ``Expires`` are
wall-clock values, so ages are computed on the wall clock too):

* :func:`parse_cache_control` splits the directives (quoted strings kept whole; the first
  occurrence of a directive wins, RFC 9111 §4.2.1);
* :func:`storable` answers §3 for a *shared* cache: GET only, a final status that is not
  partial, no ``no-store``, no ``private``, ``Authorization`` only with ``public``,
  ``s-maxage`` or ``must-revalidate`` (§3.5), no ``Vary: *``, and something that makes the
  response cacheable (explicit freshness, ``public`` or a heuristically cacheable status).
  Responses that set cookies are not stored either: in a shared cache they would hand one
  user's cookie to the next (a deliberate choice, as most CDNs make it);
* :func:`freshness_lifetime` is §4.2.1: ``s-maxage``, then ``max-age``, then
  ``Expires - Date``; the heuristic of §4.2.2 (10% of ``Date - Last-Modified``, capped) only
  when there is no explicit expiration and the status is heuristically cacheable or the
  response is ``public``;
* :func:`current_age` is the §4.2.3 calculation (apparent age, corrected ``Age``, resident
  time).
"""

from __future__ import annotations

import datetime
import email.utils
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

Headers = Sequence[tuple[str, str]]

MAX_DELTA_SECONDS = 2**31  # RFC 9111 §1.2.2: larger values are clamped to 2^31
HEURISTIC_FRACTION = 0.1  # RFC 9111 §4.2.2's suggested 10% of the time since Last-Modified
DEFAULT_MAX_HEURISTIC = 24 * 3600.0  # Squid and Varnish cap heuristics at a day or less

# RFC 9110 §15.1: statuses that are cacheable by default (heuristic freshness allowed).
# 206 is among them but this cache does not store partial content.
HEURISTICALLY_CACHEABLE = frozenset({200, 203, 204, 300, 301, 308, 404, 405, 410, 414, 501})
STORABLE_STATUSES = HEURISTICALLY_CACHEABLE | frozenset({302, 303, 307, 400, 403, 500, 502, 503})


def header_values(headers: Headers, name: str) -> list[str]:
    """Every value of a header (case-insensitive name), in order."""
    lname = name.lower()
    return [value for key, value in headers if key.lower() == lname]


def header(headers: Headers, name: str) -> str | None:
    """The first value of a header, or None."""
    lname = name.lower()
    for key, value in headers:
        if key.lower() == lname:
            return value
    return None


def _split_directives(text: str) -> Iterable[str]:
    part: list[str] = []
    quoted = escaped = False
    for char in text:
        if escaped:
            escaped = False
        elif char == "\\" and quoted:
            escaped = True
        elif char == '"':
            quoted = not quoted
        elif char == "," and not quoted:
            yield "".join(part)
            part = []
            continue
        part.append(char)
    yield "".join(part)


def parse_cache_control(values: Iterable[str]) -> dict[str, str | None]:
    """Parse ``Cache-Control`` field values into ``{directive: argument or None}``.

    Directive names are lower-cased; quoted arguments are unquoted; the first occurrence of a
    directive wins.
    """
    directives: dict[str, str | None] = {}
    for value in values:
        for item in _split_directives(value):
            name, sep, arg = item.strip().partition("=")
            name = name.strip().lower()
            if not name or name in directives:
                continue
            if not sep:
                directives[name] = None
                continue
            arg = arg.strip()
            if len(arg) >= 2 and arg[0] == arg[-1] == '"':
                arg = arg[1:-1].replace('\\"', '"').replace("\\\\", "\\")
            directives[name] = arg
    return directives


def cache_control(headers: Headers) -> dict[str, str | None]:
    """The parsed ``Cache-Control`` of a header list."""
    return parse_cache_control(header_values(headers, "cache-control"))


def delta_seconds(directives: dict[str, str | None], name: str) -> int | None:
    """A directive's delta-seconds argument; None when absent, -1 when present but invalid."""
    if name not in directives:
        return None
    arg = directives[name]
    if arg is None or not arg.isdigit():
        return -1
    return min(int(arg), MAX_DELTA_SECONDS)


def parse_http_date(text: str | None) -> float | None:
    """An HTTP-date as seconds since the epoch, or None when absent or invalid."""
    if not text:
        return None
    try:
        parsed = email.utils.parsedate_to_datetime(text.strip())
    except (TypeError, ValueError, IndexError):
        return None
    if parsed.tzinfo is None:  # RFC 850 / asctime dates are GMT by definition
        parsed = parsed.replace(tzinfo=datetime.UTC)
    return parsed.timestamp()


def format_http_date(when: float) -> str:
    """Seconds since the epoch as an IMF-fixdate (``Sun, 06 Nov 1994 08:49:37 GMT``)."""
    return email.utils.formatdate(when, usegmt=True)


@dataclass(frozen=True, slots=True)
class Storability:
    """Whether a response may be stored, and why not."""

    ok: bool
    reason: str

    def __bool__(self) -> bool:
        return self.ok


def storable(
    method: str, request_headers: Headers, status: int, response_headers: Headers
) -> Storability:
    """RFC 9111 §3 for a shared cache (see the module docstring for the rules)."""
    if method != "GET":
        return Storability(False, f"method {method} is not cached")
    if status not in STORABLE_STATUSES:
        return Storability(False, f"status {status} is not cached")
    request_cc = cache_control(request_headers)
    response_cc = cache_control(response_headers)
    if "no-store" in request_cc or "no-store" in response_cc:
        return Storability(False, "no-store")
    if "private" in response_cc:
        return Storability(False, "private")
    if header(request_headers, "authorization") is not None and not (
        {"public", "s-maxage", "must-revalidate"} & response_cc.keys()
    ):
        return Storability(False, "authorization without public, s-maxage or must-revalidate")
    if header(response_headers, "set-cookie") is not None:
        return Storability(False, "set-cookie")
    if any(v.strip() == "*" for v in _vary_names_raw(response_headers)):
        return Storability(False, "vary: *")
    explicit = {"public", "max-age", "s-maxage"} & response_cc.keys() or header(
        response_headers, "expires"
    ) is not None
    if not explicit and status not in HEURISTICALLY_CACHEABLE:
        return Storability(False, f"status {status} needs explicit freshness")
    return Storability(True, "storable")


def _vary_names_raw(headers: Headers) -> list[str]:
    return [n for v in header_values(headers, "vary") for n in v.split(",") if n.strip()]


def vary_names(headers: Headers) -> tuple[str, ...]:
    """The lower-cased header names a response varies on (``*`` included if present)."""
    return tuple(dict.fromkeys(n.strip().lower() for n in _vary_names_raw(headers)))


def freshness_lifetime(
    status: int,
    headers: Headers,
    *,
    response_time: float,
    max_heuristic: float = DEFAULT_MAX_HEURISTIC,
) -> float:
    """RFC 9111 §4.2.1 (shared cache): how long the response is fresh, in seconds.

    Args:
        status: the response status.
        headers: the response headers.
        response_time: when the response was received (stands in for a missing ``Date``).
        max_heuristic: cap of heuristic freshness.
    """
    cc = cache_control(headers)
    for name in ("s-maxage", "max-age"):
        value = delta_seconds(cc, name)
        if value is not None:
            return float(max(value, 0))
    date = parse_http_date(header(headers, "date"))
    if date is None:
        date = response_time
    expires_values = header_values(headers, "expires")
    if expires_values:
        expires = parse_http_date(expires_values[0])
        return max(0.0, expires - date) if expires is not None else 0.0
    if status in HEURISTICALLY_CACHEABLE or "public" in cc:
        last_modified = parse_http_date(header(headers, "last-modified"))
        if last_modified is not None and last_modified < date:
            return min((date - last_modified) * HEURISTIC_FRACTION, max_heuristic)
    return 0.0


def current_age(
    headers: Headers, *, request_time: float, response_time: float, now: float
) -> float:
    """RFC 9111 §4.2.3: the age of a stored response at ``now``.

    Args:
        headers: the stored response's headers (``Date`` and ``Age`` are read).
        request_time: when the request that produced it was sent.
        response_time: when the response was received.
        now: the current time.
    """
    date = parse_http_date(header(headers, "date"))
    apparent_age = max(0.0, response_time - date) if date is not None else 0.0
    age_text = header(headers, "age")
    age_value = int(age_text) if age_text is not None and age_text.strip().isdigit() else 0
    response_delay = max(0.0, response_time - request_time)
    corrected_age_value = min(age_value, MAX_DELTA_SECONDS) + response_delay
    corrected_initial_age = max(apparent_age, corrected_age_value)
    resident_time = max(0.0, now - response_time)
    return corrected_initial_age + resident_time
