"""The search benchmark's corpus: the English man pages installed on this machine, as JSON lines.

Each page is split at its top-level sections (``.SH``): a document is one section of one
page, with id ``PAGE(SECTION)/HEADING`` and title ``PAGE(SECTION) HEADING``. Troff requests
are dropped and font escapes removed: crude, but the same text goes to every index compared.

    python bench/search_corpus.py --out /tmp/manpages.jsonl --docs 40000
"""

from __future__ import annotations

import argparse
import gzip
import json
import re
from collections.abc import Iterator
from pathlib import Path

MAN_ROOT = Path("/usr/share/man")
SECTIONS = ("man1", "man2", "man3", "man4", "man5", "man7", "man8")
_ESCAPE = re.compile(r"\\(f[BIRPCW]|f\(..|f\[[^\]]*\]|s[-+]?\d|\(..|\[[^\]]*\]|[-&e|^~0 ])")
_COMMENT = re.compile(r'^\.\s*\\"|^\'\\"')


def _clean(line: str) -> str:
    line = _ESCAPE.sub(lambda m: "-" if m.group(1) == "-" else " ", line)
    return line.replace("\\", "")


def _sections(text: str) -> Iterator[tuple[str, str]]:
    heading, lines = "PREAMBLE", []
    for raw in text.splitlines():
        if _COMMENT.match(raw):
            continue
        if raw.startswith((".SH", ".Sh")):
            if lines:
                yield heading, " ".join(lines)
            heading, lines = _clean(raw[3:]).strip().strip('"') or "SECTION", []
            continue
        if raw.startswith((".", "'")):
            # A request: keep the words of font and paragraph macros (.B name, .IR file).
            parts = raw.split(None, 1)
            if len(parts) == 2 and parts[0].lstrip(".'") in (
                "B",
                "I",
                "BR",
                "IR",
                "RB",
                "RI",
                "BI",
                "IB",
                "SS",
                "TP",
                "IP",
                "Nm",
                "Nd",
                "Fn",
                "Ar",
                "Fl",
            ):
                lines.append(_clean(parts[1]).replace('"', ""))
            continue
        cleaned = _clean(raw).strip()
        if cleaned:
            lines.append(cleaned)
    if lines:
        yield heading, " ".join(lines)


def documents(limit: int) -> Iterator[dict[str, str]]:
    """Up to ``limit`` documents, pages in sorted order (the same corpus on every run)."""
    count = 0
    for section in SECTIONS:
        for path in sorted((MAN_ROOT / section).glob("*.gz")):
            try:
                text = gzip.decompress(path.read_bytes()).decode("utf-8", errors="replace")
            except (OSError, EOFError):
                continue
            if text.startswith(".so "):
                continue  # a link to another page
            page = path.name.removesuffix(".gz")
            name, _, number = page.rpartition(".")
            seen: dict[str, int] = {}
            for heading, body in _sections(text):
                if len(body) < 20:
                    continue
                n = seen.get(heading, 0)
                seen[heading] = n + 1
                suffix = f"#{n}" if n else ""
                yield {
                    "id": f"{name}({number})/{heading}{suffix}",
                    "title": f"{name}({number}) {heading}",
                    "body": body,
                }
                count += 1
                if count >= limit:
                    return


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--docs", type=int, default=40_000)
    args = parser.parse_args()
    written = 0
    with args.out.open("w", encoding="utf-8") as handle:
        for doc in documents(args.docs):
            handle.write(json.dumps(doc, ensure_ascii=False) + "\n")
            written += 1
    print(f"{written} documents -> {args.out}")


if __name__ == "__main__":
    main()
