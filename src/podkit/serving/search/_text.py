"""Text analysis shared by the index and the query: one tokenizer, so both agree.

A token is a maximal run of Unicode letters and digits (``\\w`` without the underscore),
lower-cased with :meth:`str.casefold`. No stemming and no stop words: what is indexed is what
a reader typed, and the exactness tests compare like with like.
"""

from __future__ import annotations

import re

_TOKEN = re.compile(r"[^\W_]+")
MAX_TOKEN_CHARS = 64  # longer runs are base64 blobs or hex dumps, not words anyone searches
SNIPPET_CHARS = 160  # about two lines of a result page


def tokenize(text: str) -> list[str]:
    """The tokens of ``text`` in order (repeats kept), lower-cased; over-long runs skipped."""
    return [token.casefold() for token in _TOKEN.findall(text) if len(token) <= MAX_TOKEN_CHARS]


def query_terms(text: str) -> list[str]:
    """The distinct tokens of a query, sorted: a repeated word counts once."""
    return sorted(set(tokenize(text)))


def snippet(text: str, terms: list[str], *, width: int = SNIPPET_CHARS) -> str:
    """About ``width`` characters of ``text`` around the first query term found in it."""
    flat = " ".join(text.split())
    lowered = flat.casefold()
    first = -1
    for term in terms:
        match = re.search(rf"(?<![^\W_]){re.escape(term)}(?![^\W_])", lowered)
        if match is not None and (first < 0 or match.start() < first):
            first = match.start()
    start = first - width // 4 if first >= 0 else 0
    if start < width // 4:
        start = 0  # so near the beginning that cutting it off would hide more than it shows
    if start > 0:
        space = flat.find(" ", start)
        start = space + 1 if 0 <= space < start + 20 else start
    cut = flat[start : start + width]
    if start + width < len(flat):
        space = cut.rfind(" ")
        cut = (cut[:space] if space > width // 2 else cut) + " ..."
    return ("... " if start > 0 else "") + cut
