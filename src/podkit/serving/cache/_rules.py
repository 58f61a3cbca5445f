"""RFC 9111 rules for a shared cache: Cache-Control, storability, freshness and age.

Theory of operation. These are pure functions over header lists (``[(name, value), ...]``)
and times in seconds since the epoch passed in by the caller (``Date`` and ``Expires`` are
wall-clock values, so ages are computed on the wall clock too):

* :func:`parse_cache_control` splits the directives (quoted strings kept whole; the first
  occurrence of a directive wins, RFC 9111 §4.2.1); :func:`response_directives` picks the
  first targeted field that parses as a Structured Fields Dictionary (``CDN-Cache-Control``
  and configured names, RFC 9213) instead of ``Cache-Control``;
* :func:`storable` answers §3 for a *shared* cache: GET only, a final status (any, with
  explicit freshness; without it only a heuristically cacheable one or ``public``), no
  ``no-store`` (which ``must-understand`` overrides for a status this cache implements,
  §5.2.2.3), no unqualified ``private``, ``Authorization`` only with ``public``,
  ``s-maxage`` or ``must-revalidate`` (§3.5), no ``Vary: *``, a 206 only with one byte
  range of known length. A response that sets a cookie is stored only with ``public`` and
  an explicit lifetime (or when ``no-cache``/``private`` name ``Set-Cookie``): in a shared
  cache the cookie would otherwise go from one user to the next (§7.3);
* :func:`parse_http_date` accepts exactly the three HTTP-date forms of RFC 9110 §5.6.7, so
  an ``Expires`` in another form counts as already expired (§5.3);
* :func:`freshness_lifetime` is §4.2.1: ``s-maxage``, then ``max-age``, then
  ``Expires - Date``; the heuristic of §4.2.2 (10% of ``Date - Last-Modified``, capped) only
  when there is no explicit expiration and the status is heuristically cacheable or the
  response is ``public``;
* :func:`current_age` is the §4.2.3 calculation (apparent age, corrected ``Age`` — the first
  member of a listed ``Age``, §5.1 — and resident time);
* :func:`parse_entity_tag` and friends read entity-tags and compare them (RFC 9110 §8.8.3).
"""

from __future__ import annotations

import datetime
import email.utils
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

Headers = Sequence[tuple[str, str]]

MAX_DELTA_SECONDS = 2**31  # RFC 9111 §1.2.2: larger values are clamped to 2^31
HEURISTIC_FRACTION = 0.1  # RFC 9111 §4.2.2's suggested 10% of the time since Last-Modified
DEFAULT_MAX_HEURISTIC = 24 * 3600.0  # Squid and Varnish cap heuristics at a day or less

# RFC 9110 §15.1: statuses that are cacheable by default (heuristic freshness allowed).
HEURISTICALLY_CACHEABLE = frozenset({200, 203, 204, 206, 300, 301, 308, 404, 405, 410, 414, 501})
# The final statuses RFC 9110 §15 defines, whose caching requirements this cache implements:
# what `must-understand` (RFC 9111 §5.2.2.3) asks of a cache before it stores a response.
UNDERSTOOD_STATUSES = frozenset(
    {200, 201, 202, 203, 204, 205, 206, 300, 301, 302, 303, 304, 305, 307, 308}
    | set(range(400, 418))
    | {421, 422, 426, 500, 501, 502, 503, 504, 505}
)
# RFC 9213 §2.1: the targeted field every CDN honours; more names go first, in order.
DEFAULT_TARGETED = ("CDN-Cache-Control",)


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
            name, sep, arg = item.strip(" \t").partition("=")
            if name != name.rstrip(" \t") or arg != arg.lstrip(" \t"):
                continue  # RFC 9111 §5.2: no whitespace around "="; "max-age =60" is invalid
            name = name.lower()
            if not name or name in directives:
                continue
            if not sep:
                directives[name] = None
                continue
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
    if arg is None or not (arg.isascii() and arg.isdigit()):
        return -1
    return min(int(arg), MAX_DELTA_SECONDS)


def field_names(directives: dict[str, str | None], name: str) -> frozenset[str]:
    """The lower-cased field names a qualified ``no-cache="..."`` or ``private="..."`` lists."""
    arg = directives.get(name)
    if not arg:
        return frozenset()
    return frozenset(n.strip().lower() for n in arg.split(",") if n.strip())


def qualified(directives: dict[str, str | None], name: str) -> bool:
    """Whether ``no-cache`` / ``private`` is present with a field list (not the whole response)."""
    return bool(directives.get(name))


_SF_KEY = re.compile(r"[a-z*][a-z0-9_\-.*]*")
_SF_INTEGER = re.compile(r"-?[0-9]{1,15}")
_SF_DECIMAL = re.compile(r"-?[0-9]{1,12}\.[0-9]{1,3}")
_SF_TOKEN = re.compile(r"[A-Za-z*][!#$%&'*+\-.^_`|~0-9A-Za-z:/]*")
_SF_BYTES = re.compile(r":[A-Za-z0-9+/=]*:")
_SF_STRING = re.compile(r'"((?:[\x20\x21\x23-\x5b\x5d-\x7e]|\\["\\])*)"')
# Directives whose value must be an Integer in a targeted field (RFC 9213 §2.1): another
# type makes the directive ignored, as an invalid one is.
_INTEGER_DIRECTIVES = frozenset({"max-age", "s-maxage", "stale-while-revalidate", "stale-if-error"})


def _sf_bare_item(text: str, pos: int) -> tuple[str | None, str, int] | None:
    """One RFC 8941 bare item at ``pos``: (value as text, its type, end) or None if invalid."""
    for kind, pattern in (
        ("decimal", _SF_DECIMAL),
        ("integer", _SF_INTEGER),
        ("string", _SF_STRING),
        ("token", _SF_TOKEN),
        ("bytes", _SF_BYTES),
    ):
        match = pattern.match(text, pos)
        if match:
            if kind == "string":
                return match.group(1).replace('\\"', '"').replace("\\\\", "\\"), kind, match.end()
            return match.group(0), kind, match.end()
    if text.startswith(("?0", "?1"), pos):
        return (None if text[pos + 1] == "1" else "?0"), "boolean", pos + 2
    return None


def _sf_parameters(text: str, pos: int) -> int | None:
    """Skip an item's parameters (``;key[=value]``...); None if they are invalid."""
    while pos < len(text) and text[pos] == ";":
        pos += 1
        while pos < len(text) and text[pos] == " ":
            pos += 1
        key = _SF_KEY.match(text, pos)
        if key is None:
            return None
        pos = key.end()
        if pos < len(text) and text[pos] == "=":
            item = _sf_bare_item(text, pos + 1)
            if item is None:
                return None
            pos = item[2]
    return pos


def parse_targeted_cache_control(values: Sequence[str]) -> dict[str, str | None] | None:
    """A targeted cache-control field (RFC 9213) as directives; None when it is not a valid
    Structured Fields Dictionary (RFC 8941 §4.2.2), which means the field is ignored.

    Booleans ``?1`` (and bare keys) become directives without argument; a directive whose
    value has the wrong type (``max-age="60"``) is left out, as the RFC says; ``?0`` is false.
    """
    text = ",".join(values).strip(" \t")
    directives: dict[str, str | None] = {}
    pos = 0
    while pos < len(text):
        key = _SF_KEY.match(text, pos)
        if key is None:
            return None
        name, pos = key.group(0), key.end()
        value: str | None = None
        kind = "boolean"
        if pos < len(text) and text[pos] == "=":
            if text.startswith("(", pos + 1):
                return None  # inner lists carry nothing a cache directive uses; keep it strict
            item = _sf_bare_item(text, pos + 1)
            if item is None:
                return None
            value, kind, pos = item
        end = _sf_parameters(text, pos)
        if end is None:
            return None
        pos = end
        while pos < len(text) and text[pos] in " \t":
            pos += 1
        if pos < len(text):
            if text[pos] != ",":
                return None
            pos += 1
            while pos < len(text) and text[pos] in " \t":
                pos += 1
            if pos >= len(text):
                return None  # a trailing comma
        if value == "?0":
            directives.pop(name, None)  # RFC 8941: the last member with a key wins
            continue
        if name in _INTEGER_DIRECTIVES and kind != "integer":
            directives.pop(name, None)
            continue
        directives[name] = value
    return directives


def response_directives(
    headers: Headers, targeted: Sequence[str] = DEFAULT_TARGETED
) -> dict[str, str | None]:
    """The cache directives this cache obeys for a response (RFC 9213 §2.1).

    The first targeted field in ``targeted`` that the response has and that parses replaces
    ``Cache-Control`` entirely; without one, ``Cache-Control`` applies.
    """
    for name in targeted:
        values = header_values(headers, name)
        if values:
            parsed = parse_targeted_cache_control(values)
            if parsed is not None:
                return parsed
    return cache_control(headers)


_MONTHS = {
    m: i
    for i, m in enumerate(
        ("jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec"), 1
    )
}
_DAYS = frozenset({"mon", "tue", "wed", "thu", "fri", "sat", "sun"})
_LONG_DAYS = frozenset(
    {"monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday"}
)
_TIME = r"([0-9]{2}):([0-9]{2}):([0-9]{2})"
# RFC 9110 §5.6.7: the three formats a recipient accepts, exactly (one space, GMT, a comma
# after the day name; two-digit years only in the obsolete RFC 850 form). Names are matched
# without regard to case: "THU" or "gMT" are still unambiguous.
_IMF_FIXDATE = re.compile(
    rf"([A-Za-z]{{3}}), ([0-9]{{2}}) ([A-Za-z]{{3}}) ([0-9]{{4}}) {_TIME} GMT\Z", re.IGNORECASE
)
_RFC850_DATE = re.compile(
    rf"([A-Za-z]{{6,9}}), ([0-9]{{2}})-([A-Za-z]{{3}})-([0-9]{{2}}) {_TIME} GMT\Z", re.IGNORECASE
)
_ASCTIME_DATE = re.compile(
    rf"([A-Za-z]{{3}}) ([A-Za-z]{{3}}) ([0-9]{{2}}| [0-9]) {_TIME} ([0-9]{{4}})\Z", re.IGNORECASE
)
TWO_DIGIT_YEAR_WINDOW = 50  # RFC 9110 §5.6.7: more than 50 years ahead means the past century


def _date_parts(text: str, now: float | None) -> tuple[int, int, int, str, str, str] | None:
    if match := _IMF_FIXDATE.match(text):
        day_name, day, month, year, *hms = match.groups()
        if day_name.lower() not in _DAYS:
            return None
        return int(year), _MONTHS.get(month.lower(), 0), int(day), hms[0], hms[1], hms[2]
    if match := _RFC850_DATE.match(text):
        day_name, day, month, yy, *hms = match.groups()
        if day_name.lower() not in _LONG_DAYS:
            return None
        this_year = datetime.datetime.fromtimestamp(now or 0, datetime.UTC).year if now else 1970
        year = (this_year // 100) * 100 + int(yy)
        if year > this_year + TWO_DIGIT_YEAR_WINDOW:
            year -= 100
        elif now is None and year < this_year:
            year += 100  # no reference time: read 00-69 as 2000-2069, 70-99 as 1970-1999
        return year, _MONTHS.get(month.lower(), 0), int(day), hms[0], hms[1], hms[2]
    if match := _ASCTIME_DATE.match(text):
        day_name, month, day, *hms, year = match.groups()
        if day_name.lower() not in _DAYS:
            return None
        return int(year), _MONTHS.get(month.lower(), 0), int(day), hms[0], hms[1], hms[2]
    return None


def parse_http_date(text: str | None, *, now: float | None = None) -> float | None:
    """An HTTP-date (RFC 9110 §5.6.7) as seconds since the epoch; None when absent or invalid.

    Only the three formats of the RFC are dates: IMF-fixdate (``Sun, 06 Nov 1994 08:49:37
    GMT``), the obsolete RFC 850 form (``Sunday, 06-Nov-94 08:49:37 GMT``) and asctime (``Sun
    Nov  6 08:49:37 1994``). Another zone (``UTC``), a missing comma, doubled spaces, dashes
    in an IMF-fixdate, a two-digit year outside the RFC 850 form or ``02.01.18`` are invalid.

    Args:
        text: the field value.
        now: the current time, to place an RFC 850 two-digit year (the most recent year with
            those digits that is not more than 50 years ahead); without it, 00-69 are 2000-2069.
    """
    if not text:
        return None
    parts = _date_parts(text.strip(" \t"), now)
    if parts is None:
        return None
    year, month, day, hour, minute, second = parts
    try:
        when = datetime.datetime(
            year, month, day, int(hour), int(minute), min(int(second), 59), tzinfo=datetime.UTC
        )
    except ValueError:  # month 0 (unknown name), 31 Feb, hour 25...
        return None
    return when.timestamp()


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


def has_explicit_freshness(directives: dict[str, str | None], headers: Headers) -> bool:
    """Whether the response states its own lifetime (``s-maxage``, ``max-age``, ``Expires``)."""
    return (
        "max-age" in directives
        or "s-maxage" in directives
        or header(headers, "expires") is not None
    )


def storable(
    method: str,
    request_headers: Headers,
    status: int,
    response_headers: Headers,
    *,
    targeted: Sequence[str] = DEFAULT_TARGETED,
) -> Storability:
    """RFC 9111 §3 for a shared cache (see the module docstring for the rules)."""
    if method != "GET":
        return Storability(False, f"method {method} is not cached")
    if status < 200 or status == 304:
        return Storability(False, f"status {status} is not a final response to store")
    request_cc = cache_control(request_headers)
    response_cc = response_directives(response_headers, targeted)
    if "must-understand" in response_cc:
        # §5.2.2.3: a cache that implements the status may ignore no-store; others must not
        # store the response at all.
        if status not in UNDERSTOOD_STATUSES:
            return Storability(False, f"must-understand with status {status}")
    elif "no-store" in response_cc:
        return Storability(False, "no-store")
    if "no-store" in request_cc:
        return Storability(False, "no-store")
    if "private" in response_cc and not qualified(response_cc, "private"):
        return Storability(False, "private")
    if header(request_headers, "authorization") is not None and not (
        {"public", "s-maxage", "must-revalidate"} & response_cc.keys()
    ):
        return Storability(False, "authorization without public, s-maxage or must-revalidate")
    if any(v.strip() == "*" for v in _vary_names_raw(response_headers)):
        return Storability(False, "vary: *")
    explicit = has_explicit_freshness(response_cc, response_headers)
    kept_out = field_names(response_cc, "no-cache") | field_names(response_cc, "private")
    if (
        header(response_headers, "set-cookie") is not None
        and "set-cookie" not in kept_out  # no-cache="Set-Cookie": the cookie is never reused
        and not (explicit and "public" in response_cc)
    ):
        return Storability(False, "set-cookie without public and explicit freshness")
    if status == 206 and partial_range(response_headers) is None:
        return Storability(False, "status 206 without one byte range of a known length")
    if not explicit and "public" not in response_cc and status not in HEURISTICALLY_CACHEABLE:
        return Storability(False, f"status {status} needs explicit freshness")
    return Storability(True, "storable")


def partial_range(headers: Headers) -> tuple[int, int, int] | None:
    """A 206's ``Content-Range: bytes first-last/length`` as numbers; None otherwise."""
    values = header_values(headers, "content-range")
    if len(values) != 1:
        return None
    match = _CONTENT_RANGE.fullmatch(values[0].strip())
    if match is None:
        return None
    first, last, length = (int(g) for g in match.groups())
    if first > last or last >= length:
        return None
    return first, last, length


_CONTENT_RANGE = re.compile(r"bytes ([0-9]{1,18})-([0-9]{1,18})/([0-9]{1,18})", re.IGNORECASE)


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
    targeted: Sequence[str] = DEFAULT_TARGETED,
) -> float:
    """RFC 9111 §4.2.1 (shared cache): how long the response is fresh, in seconds.

    Args:
        status: the response status.
        headers: the response headers.
        response_time: when the response was received (stands in for a missing ``Date``).
        max_heuristic: cap of heuristic freshness.
        targeted: targeted cache-control fields, by precedence (RFC 9213).
    """
    cc = response_directives(headers, targeted)
    for name in ("s-maxage", "max-age"):
        value = delta_seconds(cc, name)
        if value is not None:
            return float(max(value, 0))
    date = parse_http_date(header(headers, "date"), now=response_time)
    if date is None:
        date = response_time
    expires_values = header_values(headers, "expires")
    if expires_values:
        # §5.3: an invalid date means "already expired"; Expires is a singleton, so two
        # field lines (or a list) are invalid too.
        if len(expires_values) > 1:
            return 0.0
        expires = parse_http_date(expires_values[0], now=response_time)
        return max(0.0, expires - date) if expires is not None else 0.0
    if status in HEURISTICALLY_CACHEABLE or "public" in cc:
        last_modified = parse_http_date(header(headers, "last-modified"), now=response_time)
        if last_modified is not None and last_modified < date:
            return min((date - last_modified) * HEURISTIC_FRACTION, max_heuristic)
    return 0.0


@dataclass(frozen=True, slots=True)
class EntityTag:
    """An entity-tag (RFC 9110 §8.8.3): the opaque value without its quotes, and weakness."""

    opaque: str
    weak: bool = False

    def __str__(self) -> str:
        return f'{"W/" if self.weak else ""}"{self.opaque}"'


def parse_entity_tag(text: str | None) -> EntityTag | None:
    """One entity-tag, or None when absent or invalid.

    Quoted tags are the standard form; an unquoted one (``abcdef``) is read as if quoted,
    and a lower-case ``w/`` as weak, since origins send both and nothing else is meant.
    """
    if text is None:
        return None
    tag = text.strip(" \t")
    weak = tag[:2] in ("W/", "w/")
    if weak:
        tag = tag[2:]
    if len(tag) >= 2 and tag[0] == tag[-1] == '"':
        tag = tag[1:-1]
        forbidden = '"'  # etagc: anything visible but DQUOTE
    else:
        forbidden = '", \t'  # unquoted: one token
    if not tag or any(c in tag for c in forbidden) or any(ord(c) < 0x21 for c in tag):
        return None
    return EntityTag(tag, weak)


def _split_list(values: Sequence[str]) -> list[str]:
    """The members of a comma-separated entity-tag list (commas inside quotes kept; an
    entity-tag has no escapes, so a backslash is an ordinary character)."""
    members: list[str] = []
    for value in values:
        part: list[str] = []
        quoted = False
        for char in value:
            if char == '"':
                quoted = not quoted
            elif char == "," and not quoted:
                members.append("".join(part))
                part = []
                continue
            part.append(char)
        members.append("".join(part))
    return [m.strip(" \t") for m in members if m.strip(" \t")]


def parse_entity_tags(values: Sequence[str]) -> list[EntityTag] | None:
    """An ``If-None-Match`` / ``If-Match`` list: its valid tags, or None for ``*``."""
    members = _split_list(values)
    if "*" in members:
        return None
    return [tag for tag in map(parse_entity_tag, members) if tag is not None]


def strong_match(a: EntityTag, b: EntityTag) -> bool:
    """RFC 9110 §8.8.3.2 strong comparison: neither weak and the same opaque value."""
    return not a.weak and not b.weak and a.opaque == b.opaque


def weak_match(a: EntityTag, b: EntityTag) -> bool:
    """RFC 9110 §8.8.3.2 weak comparison: the same opaque value, weak or not."""
    return a.opaque == b.opaque


def age_value(headers: Headers) -> int | None:
    """The ``Age`` of a response (RFC 9111 §5.1), or None when absent or invalid.

    ``Age`` is a singleton, but a list (``Age: 7200, 0`` or two field lines) counts by its
    first member; a member that is not a non-negative integer (``-5``, ``7200.0``, ``abc``)
    makes the field ignored.
    """
    values = header_values(headers, "age")
    if not values:
        return None
    first = values[0].split(",", 1)[0].strip(" \t")
    if not (first.isascii() and first.isdigit()):
        return None
    return min(int(first), MAX_DELTA_SECONDS)


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
    date = parse_http_date(header(headers, "date"), now=response_time)
    apparent_age = max(0.0, response_time - date) if date is not None else 0.0
    response_delay = max(0.0, response_time - request_time)
    corrected_age_value = (age_value(headers) or 0) + response_delay
    corrected_initial_age = max(apparent_age, corrected_age_value)
    resident_time = max(0.0, now - response_time)
    return corrected_initial_age + resident_time
