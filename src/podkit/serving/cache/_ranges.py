"""Byte ranges (RFC 9110 §14): parsing ``Range``, answering it from stored bytes, and
combining partial responses (RFC 9111 §3.4).

Theory of operation. Pure functions over strings and bytes:

* :func:`parse_range` reads ``Range: bytes=...`` into specs ``(first, last)`` where either
  side may be missing (``500-``, ``-200``); a header it cannot read, another unit, or more
  than ``max_ranges`` specs means "no Range" (§14.2: a server may ignore it);
* :func:`resolve` turns the specs into inclusive ``(first, last)`` byte positions within a
  representation of ``length`` bytes; an empty result means 416 (no spec is satisfiable);
* :func:`multipart_byteranges` builds the ``multipart/byteranges`` body for several ranges
  (§14.6), with a boundary the caller chooses;
* :func:`combine` merges two pieces of one representation when they overlap or touch.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

# More specs than this and the Range is ignored (the whole body is sent), as with Apache's
# MaxRanges (200 there): clients ask for one range or a few; hundreds are an amplification.
DEFAULT_MAX_RANGES = 16
_SPEC = re.compile(r"([0-9]{1,18})?-([0-9]{1,18})?")

RangeSpec = tuple[int | None, int | None]


def parse_range(
    value: str | None, *, max_ranges: int = DEFAULT_MAX_RANGES
) -> list[RangeSpec] | None:
    """The specs of a ``Range`` field, or None when it is absent, not ``bytes``, invalid, or
    asks for more than ``max_ranges`` ranges (all of which mean: ignore it)."""
    if value is None:
        return None
    unit, sep, text = value.strip(" \t").partition("=")
    if not sep or unit.strip(" \t").lower() != "bytes":
        return None
    specs: list[RangeSpec] = []
    for member in text.split(","):
        member = member.strip(" \t")
        if not member:
            continue  # RFC 9110 §5.6.1: empty list elements are ignored
        match = _SPEC.fullmatch(member)
        if match is None:
            return None
        first_text, last_text = match.groups()
        first = int(first_text) if first_text is not None else None
        last = int(last_text) if last_text is not None else None
        if first is None and last is None:
            return None
        if first is not None and last is not None and last < first:
            return None
        specs.append((first, last))
    if not specs or len(specs) > max_ranges:
        return None
    return specs


def resolve(specs: Sequence[RangeSpec], length: int) -> list[tuple[int, int]]:
    """The satisfiable specs as inclusive byte positions in ``length`` bytes (§14.1.2).

    An empty list means that none is satisfiable (answer 416).
    """
    ranges: list[tuple[int, int]] = []
    for first, last in specs:
        if first is None:
            assert last is not None
            if last == 0 or length == 0:
                continue
            ranges.append((max(0, length - last), length - 1))
        elif first < length:
            ranges.append((first, length - 1 if last is None else min(last, length - 1)))
    return ranges


def content_range(first: int, last: int, length: int) -> str:
    """A ``Content-Range`` value for bytes ``first``-``last`` of ``length``."""
    return f"bytes {first}-{last}/{length}"


def multipart_byteranges(
    body: bytes,
    ranges: Sequence[tuple[int, int]],
    *,
    length: int,
    content_type: str | None,
    boundary: str,
    offset: int = 0,
) -> bytes:
    """The ``multipart/byteranges`` body for ``ranges`` (RFC 9110 §14.6).

    Args:
        body: the bytes held, which start at position ``offset`` of the representation.
        ranges: inclusive positions in the representation, all within what ``body`` holds.
        length: the representation's complete length.
        content_type: the representation's ``Content-Type``, repeated in each part.
        boundary: the delimiter (must not occur in ``body``).
        offset: the position of ``body[0]`` in the representation.
    """
    parts: list[bytes] = []
    for first, last in ranges:
        head = f"--{boundary}\r\n"
        if content_type is not None:
            head += f"Content-Type: {content_type}\r\n"
        head += f"Content-Range: {content_range(first, last, length)}\r\n\r\n"
        parts += (head.encode("latin-1"), body[first - offset : last + 1 - offset], b"\r\n")
    parts.append(f"--{boundary}--\r\n".encode("latin-1"))
    return b"".join(parts)


def combine(a: tuple[int, int, bytes], b: tuple[int, int, bytes]) -> tuple[int, int, bytes] | None:
    """Two pieces ``(first, last, bytes)`` of one representation as one, or None when there
    is a gap between them. Where they overlap, ``b`` (the newer one) wins."""
    (a_first, a_last, a_body), (b_first, b_last, b_body) = a, b
    if b_first > a_last + 1 or a_first > b_last + 1:
        return None
    first, last = min(a_first, b_first), max(a_last, b_last)
    merged = bytearray(last - first + 1)
    merged[a_first - first : a_last - first + 1] = a_body
    merged[b_first - first : b_last - first + 1] = b_body
    return first, last, bytes(merged)
