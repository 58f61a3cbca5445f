"""What the cache does with a request and with the origin's answer (RFC 9111, RFC 5861).

Theory of operation. :class:`CachePolicy` wraps an :class:`ObjectStore` and answers, for each
request, one :class:`Lookup` (decide), which the shell then carries out (act):

* ``PASS`` — not a cacheable method: forward; after a non-error answer to an unsafe method
  the shell calls :meth:`CachePolicy.invalidate_after` (§4.4);
* ``HIT`` — a fresh stored response (or one the request's ``max-stale`` accepts): serve it
  with ``Age`` (§4.2), or a 304 when the request's own validators match (§4.3.2);
* ``STALE`` — stale but within ``stale-while-revalidate`` (RFC 5861 §3): serve it now and
  revalidate in the background;
* ``VALIDATE`` — stored but stale, ``no-cache`` or refused by the request's ``max-age``:
  send a conditional request built by :meth:`conditional_headers` (§4.3.1); a 304 freshens
  the stored response (:meth:`freshen`, §4.3.4), a full answer replaces it; if the origin
  fails, :meth:`stale_if_error` says whether the stale copy may still be served (RFC 5861 §4);
* ``MISS`` — nothing usable is stored: fetch (coalesced with concurrent misses), then
  :meth:`keep` what is storable;
* ``GATEWAY_TIMEOUT`` — ``only-if-cached`` and nothing usable (§5.2.1.7).

``must-revalidate``, ``proxy-revalidate`` and ``s-maxage`` forbid serving stale responses
(§5.2.2.2, §5.2.2.8, §5.2.2.10). Time (``now``) is passed in, as epoch seconds.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass
from urllib.parse import urlsplit

from podkit.serving.cache._ranges import (
    DEFAULT_MAX_RANGES,
    RangeSpec,
    combine,
    content_range,
    multipart_byteranges,
    parse_range,
    resolve,
)
from podkit.serving.cache._rules import (
    DEFAULT_MAX_HEURISTIC,
    DEFAULT_TARGETED,
    Headers,
    Storability,
    current_age,
    delta_seconds,
    field_names,
    freshness_lifetime,
    header,
    header_values,
    parse_cache_control,
    parse_entity_tag,
    parse_entity_tags,
    parse_http_date,
    partial_range,
    qualified,
    response_directives,
    storable,
    strong_match,
    weak_match,
)
from podkit.serving.cache._store import ObjectStore, StoredResponse, variant_for

CACHEABLE_METHODS = frozenset({"GET", "HEAD"})
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "TRACE"})
# Headers a 304 must not overwrite in the stored response (RFC 9111 §3.2: framing and
# content-describing fields belong to the stored body).
NOT_UPDATED_BY_304 = frozenset(
    {"content-length", "content-encoding", "content-type", "content-range", "transfer-encoding"}
)
# RFC 9110 §15.4.5: what a 304 sent to the client carries.
NOT_MODIFIED_HEADERS = frozenset(
    {"cache-control", "content-location", "date", "etag", "expires", "vary", "last-modified"}
)
ERROR_STATUSES = frozenset({500, 502, 503, 504})  # RFC 5861 §4: when stale-if-error applies


class LookupKind(enum.Enum):
    """What to do with a request (see the module docstring)."""

    PASS = "pass"
    HIT = "hit"
    STALE = "stale"
    VALIDATE = "validate"
    MISS = "miss"
    GATEWAY_TIMEOUT = "gateway_timeout"


@dataclass(frozen=True, slots=True)
class RangeAnswer:
    """A 206 or 416 built from stored bytes: status, fields (without ``Age``) and body."""

    status: int
    headers: list[tuple[str, str]]
    body: bytes


@dataclass(frozen=True, slots=True)
class Lookup:
    """The decision for one request.

    Attributes:
        kind: what to do.
        key: the primary cache key.
        entry: the stored response involved (HIT, STALE, VALIDATE), else None.
        age: the entry's current age in seconds (0 without an entry).
    """

    kind: LookupKind
    key: str
    entry: StoredResponse | None = None
    age: float = 0.0


def cache_key(host: str | None, target: str) -> str:
    """The primary cache key: the lower-cased host and the request target."""
    return f"{(host or '').strip().lower()}{target}"


def _allows_stale(response_cc: dict[str, str | None]) -> bool:
    return not ({"must-revalidate", "proxy-revalidate", "s-maxage"} & response_cc.keys())


def _request_cc(request_headers: Headers) -> dict[str, str | None]:
    # One pass over the request's fields: this runs on every lookup.
    values: list[str] = []
    pragma_no_cache = False
    for name, value in request_headers:
        lname = name.lower()
        if lname == "cache-control":
            values.append(value)
        elif lname == "pragma" and "no-cache" in value.lower():
            pragma_no_cache = True
    if not values:
        # RFC 9111 §5.4: Pragma: no-cache counts only when there is no Cache-Control.
        return {"no-cache": None} if pragma_no_cache else {}
    return parse_cache_control(values)


class CachePolicy:
    """RFC 9111 decisions for a shared cache over one :class:`ObjectStore`.

    Args:
        store: where responses are kept.
        max_heuristic: cap of heuristic freshness, in seconds.
        targeted: targeted cache-control fields obeyed over ``Cache-Control``, first one
            present wins (RFC 9213).
        max_ranges: a ``Range`` with more ranges than this is answered in full.
    """

    def __init__(
        self,
        store: ObjectStore,
        *,
        max_heuristic: float = DEFAULT_MAX_HEURISTIC,
        targeted: Sequence[str] = DEFAULT_TARGETED,
        max_ranges: int = DEFAULT_MAX_RANGES,
    ) -> None:
        self.store = store
        self.max_heuristic = max_heuristic
        self.targeted = tuple(targeted)
        self.max_ranges = max_ranges

    def lifetime(self, entry: StoredResponse) -> float:
        """The stored response's freshness lifetime in seconds."""
        lifetime = entry.derived.get("lifetime")
        if lifetime is None:
            lifetime = entry.derived["lifetime"] = freshness_lifetime(
                entry.status,
                entry.headers,
                response_time=entry.response_time,
                max_heuristic=self.max_heuristic,
                targeted=self.targeted,
            )
        return float(lifetime)

    def age(self, entry: StoredResponse, now: float) -> float:
        """The stored response's current age in seconds."""
        initial = entry.derived.get("initial_age")
        if initial is None:
            # Age at reception (corrected initial age); resident time is added per call.
            initial = entry.derived["initial_age"] = current_age(
                entry.headers,
                request_time=entry.request_time,
                response_time=entry.response_time,
                now=entry.response_time,
            )
        return float(initial) + max(0.0, now - entry.response_time)

    def directives(self, entry: StoredResponse) -> dict[str, str | None]:
        """The stored response's cache directives: its targeted field or ``Cache-Control``
        (parsed once)."""
        directives: dict[str, str | None] | None = entry.derived.get("directives")
        if directives is None:
            directives = entry.derived["directives"] = response_directives(
                entry.headers, self.targeted
            )
        return directives

    def lookup(self, method: str, key: str, request_headers: Headers, now: float) -> Lookup:
        """Decide what to do with a request (see :class:`LookupKind`)."""
        if method not in CACHEABLE_METHODS:
            return Lookup(LookupKind.PASS, key)
        request_cc = _request_cc(request_headers)
        entry = self.store.lookup(key, request_headers)
        if entry is None:
            if "only-if-cached" in request_cc:
                return Lookup(LookupKind.GATEWAY_TIMEOUT, key)
            return Lookup(LookupKind.MISS, key)
        return self._decide(key, entry, request_cc, now)

    def lookup_partial(
        self, key: str, request_headers: Headers, ranges: Sequence[RangeSpec], now: float
    ) -> Lookup:
        """A fresh stored 206 that holds every byte a ``Range`` request asks for: ``HIT``
        with it, else ``MISS`` (RFC 9111 §3.3: a partial response may answer a request for
        bytes it holds)."""
        entry = self.store.lookup(key, request_headers, partial=True)
        held = partial_range(entry.headers) if entry is not None else None
        if entry is None or held is None or not self.if_range_holds(request_headers, entry):
            return Lookup(LookupKind.MISS, key)
        first, last, length = held
        wanted = resolve(ranges, length)
        if not wanted or any(a < first or b > last for a, b in wanted):
            return Lookup(LookupKind.MISS, key)
        decision = self._decide(key, entry, _request_cc(request_headers), now)
        return decision if decision.kind is LookupKind.HIT else Lookup(LookupKind.MISS, key)

    @staticmethod
    def if_range_holds(request_headers: Headers, entry: StoredResponse) -> bool:
        """Whether ``If-Range`` (RFC 9110 §13.1.5) lets ``Range`` apply to ``entry``: absent,
        an entity-tag that matches its strong ``ETag``, or exactly its ``Last-Modified``."""
        condition = header(request_headers, "if-range")
        if condition is None:
            return True
        condition = condition.strip(" \t")
        if condition.startswith(('"', "W/", "w/")):
            asked = parse_entity_tag(condition)
            etag = parse_entity_tag(header(entry.headers, "etag"))
            return asked is not None and etag is not None and strong_match(asked, etag)
        last_modified = header(entry.headers, "last-modified")
        return last_modified is not None and last_modified.strip(" \t") == condition

    def range_answer(
        self, entry: StoredResponse, request_headers: Headers, *, boundary: str
    ) -> RangeAnswer | None:
        """The 206 or 416 answering the request's ``Range`` from ``entry`` (RFC 9110 §14), or
        None to answer in full (no usable ``Range``, or ``If-Range`` does not hold).

        Args:
            entry: a complete 200, or a stored 206 that holds the bytes asked for.
            request_headers: the request (``Range``, ``If-Range``).
            boundary: the multipart delimiter when several ranges are asked for.
        """
        if entry.status not in (200, 206):
            return None
        ranges = parse_range(header(request_headers, "range"), max_ranges=self.max_ranges)
        if ranges is None or not self.if_range_holds(request_headers, entry):
            return None
        if entry.status == 206:
            held = partial_range(entry.headers)
            if held is None or len(entry.body) != held[1] - held[0] + 1:
                return None  # not a part it can slice: answer with it as it is
            offset, end, length = held
        else:
            offset, end, length = 0, len(entry.body) - 1, len(entry.body)
        kept = [
            (n, v)
            for n, v in entry.headers
            if n.lower() not in ("content-length", "content-range", "age")
            and n.lower() not in entry.omitted
        ]
        wanted = resolve(ranges, length)
        if not wanted:
            return RangeAnswer(416, [("Content-Range", f"bytes */{length}")], b"")
        if any(first < offset or last > end for first, last in wanted):
            return None  # a part that lacks some of the bytes: answer with the part itself
        if len(wanted) == 1:
            first, last = wanted[0]
            body = entry.body[first - offset : last + 1 - offset]
            return RangeAnswer(
                206, [*kept, ("Content-Range", content_range(first, last, length))], body
            )
        content_type = header(entry.headers, "content-type")
        body = multipart_byteranges(
            entry.body,
            wanted,
            length=length,
            content_type=content_type,
            boundary=boundary,
            offset=offset,
        )
        fields = [(n, v) for n, v in kept if n.lower() != "content-type"]
        fields.append(("Content-Type", f"multipart/byteranges; boundary={boundary}"))
        return RangeAnswer(206, fields, body)

    def combined(self, entry: StoredResponse) -> StoredResponse:
        """What to store for a new 206 (RFC 9111 §3.4): a complete 200 when it holds every
        byte, alone or with the stored 206 of its variant; the two merged when they share a
        strong entity-tag and overlap or touch; else ``entry`` as it is."""
        held = partial_range(entry.headers)
        if entry.status != 206 or held is None:
            return entry
        first, last, length = held
        body = entry.body
        stored = self.store.partial_of(entry)
        before = partial_range(stored.headers) if stored is not None else None
        if stored is not None and before is not None and before[2] == length:
            new_tag = parse_entity_tag(header(entry.headers, "etag"))
            old_tag = parse_entity_tag(header(stored.headers, "etag"))
            if new_tag is not None and old_tag is not None and strong_match(new_tag, old_tag):
                merged = combine((before[0], before[1], stored.body), (first, last, body))
                if merged is not None:
                    first, last, body = merged
        headers = [(n, v) for n, v in entry.headers if n.lower() != "content-range"]
        status = 200
        if (first, last) != (0, length - 1):
            status = 206
            headers.append(("Content-Range", content_range(first, last, length)))
        if status == 206 and body is entry.body:
            return entry
        return StoredResponse(
            key=entry.key,
            status=status,
            headers=headers,
            body=body,
            request_time=entry.request_time,
            response_time=entry.response_time,
            variant=entry.variant,
            omitted=entry.omitted,
        )

    def _decide(
        self, key: str, entry: StoredResponse, request_cc: dict[str, str | None], now: float
    ) -> Lookup:
        age = self.age(entry, now)
        lifetime = self.lifetime(entry)
        response_cc = self.directives(entry)
        # A qualified no-cache="field" only keeps those fields out of a reuse (make_entry).
        no_cache = "no-cache" in response_cc and not qualified(response_cc, "no-cache")
        if no_cache or "no-cache" in request_cc:
            return self._validate(key, entry, age, request_cc)
        request_max_age = delta_seconds(request_cc, "max-age")
        if request_max_age is not None and age > request_max_age:
            return self._validate(key, entry, age, request_cc)
        min_fresh = delta_seconds(request_cc, "min-fresh")
        if age + max(min_fresh or 0, 0) < lifetime:
            return Lookup(LookupKind.HIT, key, entry, age)
        staleness = age - lifetime
        if _allows_stale(response_cc):
            if "max-stale" in request_cc:
                max_stale = delta_seconds(request_cc, "max-stale")
                if max_stale is None or max_stale == -1 or staleness <= max_stale:
                    return Lookup(LookupKind.HIT, key, entry, age)
            swr = delta_seconds(response_cc, "stale-while-revalidate")
            if swr is not None and swr >= 0 and staleness <= swr and min_fresh is None:
                return Lookup(LookupKind.STALE, key, entry, age)
        return self._validate(key, entry, age, request_cc)

    def _validate(
        self, key: str, entry: StoredResponse, age: float, request_cc: dict[str, str | None]
    ) -> Lookup:
        if "only-if-cached" in request_cc:
            return Lookup(LookupKind.GATEWAY_TIMEOUT, key)
        return Lookup(LookupKind.VALIDATE, key, entry, age)

    def stale_if_error(self, entry: StoredResponse, request_headers: Headers, now: float) -> bool:
        """Whether ``entry`` may be served because the origin failed (RFC 5861 §4)."""
        response_cc = self.directives(entry)
        if not _allows_stale(response_cc):
            return False
        staleness = self.age(entry, now) - self.lifetime(entry)
        if staleness <= 0:
            return True
        request_cc = _request_cc(request_headers)
        limits = [delta_seconds(cc, "stale-if-error") for cc in (response_cc, request_cc)]
        return any(limit is not None and limit >= 0 and staleness <= limit for limit in limits)

    @staticmethod
    def conditional_headers(entry: StoredResponse) -> list[tuple[str, str]]:
        """Validators to send when revalidating ``entry`` (RFC 9111 §4.3.1); an unquoted
        stored ``ETag`` is sent quoted."""
        validators = []
        etag = parse_entity_tag(header(entry.headers, "etag"))
        if etag is not None:
            validators.append(("If-None-Match", str(etag)))
        last_modified = header(entry.headers, "last-modified")
        if last_modified is not None:
            validators.append(("If-Modified-Since", last_modified))
        return validators

    @staticmethod
    def client_conditionals(request_headers: Headers) -> list[tuple[str, str]]:
        """The client's ``If-None-Match`` (entity-tags quoted) and ``If-Modified-Since``, to
        forward on a miss (RFC 9111 §4.3.2 lets the origin answer them)."""
        forwarded: list[tuple[str, str]] = []
        inm = header_values(request_headers, "if-none-match")
        if inm:
            tags = parse_entity_tags(inm)
            if tags is None:
                forwarded.append(("If-None-Match", "*"))
            elif tags:
                forwarded.append(("If-None-Match", ", ".join(map(str, tags))))
        since = header(request_headers, "if-modified-since")
        if since is not None and not inm:  # §13.1.3: ignored when If-None-Match is present
            forwarded.append(("If-Modified-Since", since))
        return forwarded

    def head_updates(self, entry: StoredResponse, status: int, head_headers: Headers) -> bool:
        """Whether a ``200`` to ``HEAD`` describes the stored response, so that it may update
        its fields (RFC 9111 §4.3.5): the same entity-tag, else the same ``Last-Modified``,
        else neither has a validator and the ``Content-Length`` agrees."""
        if status != 200 or entry.status != 200:
            return False
        stored_etag = parse_entity_tag(header(entry.headers, "etag"))
        new_etag = parse_entity_tag(header(head_headers, "etag"))
        if stored_etag is not None or new_etag is not None:
            return (
                stored_etag is not None
                and new_etag is not None
                and stored_etag.weak == new_etag.weak
                and weak_match(stored_etag, new_etag)
            )
        stored_lm = header(entry.headers, "last-modified")
        new_lm = header(head_headers, "last-modified")
        if stored_lm is not None or new_lm is not None:
            return stored_lm == new_lm
        length = header(head_headers, "content-length")
        return length is None or length.strip() == str(len(entry.body))

    def storability(
        self, method: str, request_headers: Headers, status: int, response_headers: Headers
    ) -> Storability:
        """Whether the origin's answer may be stored (and, if not, why)."""
        return storable(method, request_headers, status, response_headers, targeted=self.targeted)

    def make_entry(
        self,
        key: str,
        request_headers: Headers,
        status: int,
        response_headers: Headers,
        body: bytes,
        *,
        request_time: float,
        response_time: float,
    ) -> StoredResponse:
        """Build the stored form of an origin answer (its variant computed from ``Vary``).

        Fields named by a qualified ``no-cache="..."`` or ``private="..."`` are recorded in
        ``omitted``: they reach the client of this fetch, never one served from the store
        (RFC 9111 §5.2.2.4, §5.2.2.7).
        """
        return StoredResponse(
            key=key,
            status=status,
            headers=list(response_headers),
            omitted=self.omitted_fields(response_headers),
            body=body,
            request_time=request_time,
            response_time=response_time,
            variant=variant_for(request_headers, response_headers),
        )

    def omitted_fields(self, response_headers: Headers) -> frozenset[str]:
        """Fields a reuse must not send: those a qualified ``no-cache`` or ``private`` names."""
        directives = response_directives(response_headers, self.targeted)
        return field_names(directives, "no-cache") | field_names(directives, "private")

    def worth_storing(self, entry: StoredResponse) -> bool:
        """Whether keeping ``entry`` could ever save an origin request.

        A response that is stale on arrival, has no validator and no stale-serving
        extension would only take space.
        """
        held = partial_range(entry.headers) if entry.status == 206 else None
        if entry.status == 206 and (held is None or len(entry.body) != held[1] - held[0] + 1):
            return False  # a 206 whose body is not the range it claims could not be served
        if self.lifetime(entry) > self.age(entry, entry.response_time):
            return True
        cc = self.directives(entry)
        if "stale-while-revalidate" in cc or "stale-if-error" in cc:
            return True
        return bool(self.conditional_headers(entry))

    def keep(self, entry: StoredResponse) -> list[StoredResponse]:
        """Store ``entry`` if it is worth it. Returns the evicted objects."""
        if not self.worth_storing(entry):
            return []
        return self.store.put(entry)

    def freshen(
        self,
        entry: StoredResponse,
        not_modified_headers: Headers,
        *,
        request_time: float,
        response_time: float,
    ) -> StoredResponse:
        """Apply a 304 to a stored response (RFC 9111 §4.3.4) and keep the result.

        Returns:
            The updated response (already stored in place of ``entry``).
        """
        updated = {name.lower() for name, _ in not_modified_headers} - NOT_UPDATED_BY_304
        headers = [(n, v) for n, v in entry.headers if n.lower() not in updated]
        headers.extend((n, v) for n, v in not_modified_headers if n.lower() in updated)
        fresh = StoredResponse(
            key=entry.key,
            status=entry.status,
            headers=headers,
            body=entry.body,
            request_time=request_time,
            response_time=response_time,
            variant=entry.variant,
            omitted=self.omitted_fields(headers),
        )
        self.store.replace(entry, fresh)
        return fresh

    @staticmethod
    def not_modified(request_headers: Headers, entry: StoredResponse) -> bool:
        """Whether the client's own conditional request matches ``entry`` (send it a 304).

        RFC 9110 §13.1.2 / §13.2.2: ``If-None-Match`` with the weak comparison (``*`` matches
        any stored response); without it, ``If-Modified-Since`` against ``Last-Modified``,
        else ``Date``, else when the response was received (RFC 9111 §4.3.2). An invalid
        date is ignored.
        """
        if not 200 <= entry.status < 300 or entry.status == 206:
            return False
        inm: list[str] = []
        since_text: str | None = None
        for name, value in request_headers:
            if name[:3].lower() != "if-":
                continue
            lname = name.lower()
            if lname == "if-none-match":
                inm.append(value)
            elif lname == "if-modified-since" and since_text is None:
                since_text = value
        if inm:
            tags = parse_entity_tags(inm)
            if tags is None:
                return True
            etag = parse_entity_tag(header(entry.headers, "etag"))
            return etag is not None and any(weak_match(tag, etag) for tag in tags)
        if since_text is None:
            return False
        since = parse_http_date(since_text, now=entry.response_time)
        if since is None:
            return False
        modified = parse_http_date(header(entry.headers, "last-modified"), now=entry.response_time)
        if modified is None:
            modified = parse_http_date(header(entry.headers, "date"), now=entry.response_time)
        if modified is None:
            modified = entry.response_time
        return modified <= since

    @staticmethod
    def not_modified_headers(entry: StoredResponse) -> list[tuple[str, str]]:
        """The stored headers a 304 to the client repeats (RFC 9110 §15.4.5)."""
        return [
            (n, v)
            for n, v in entry.headers
            if n.lower() in NOT_MODIFIED_HEADERS and n.lower() not in entry.omitted
        ]

    def invalidate_after(
        self, method: str, status: int, key: str, host: str | None, response_headers: Headers
    ) -> list[str]:
        """RFC 9111 §4.4: an unsafe method's non-error answer invalidates the target URI and
        the same-origin ``Location`` and ``Content-Location`` URIs.

        Returns:
            The keys invalidated.
        """
        if method in SAFE_METHODS or not 200 <= status < 400:
            return []
        keys = [key]
        for name in ("location", "content-location"):
            value = header(response_headers, name)
            if value is None:
                continue
            parts = urlsplit(value.strip())
            if parts.netloc and parts.netloc.lower() != (host or "").lower():
                continue  # §4.4: only URIs with the same origin
            target = parts.path or "/"
            if parts.query:
                target += "?" + parts.query
            keys.append(cache_key(host, target))
        keys = list(dict.fromkeys(keys))
        for k in keys:
            self.store.invalidate(k)
        return keys


def strip_headers(headers: Headers, names: Sequence[str]) -> list[tuple[str, str]]:
    """``headers`` without those named (case-insensitive)."""
    drop = {n.lower() for n in names}
    return [(n, v) for n, v in headers if n.lower() not in drop]
