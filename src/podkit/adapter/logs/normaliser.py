"""Lines in, one schema out (sans-IO): the parser, the multi-line joiner and the schema
together, as ``podkit adapt logs`` runs them. The caller passes the observed time."""

from __future__ import annotations

import datetime
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from podkit.adapter.logs._fast import AccessRecord, access_ecs, access_otel
from podkit.adapter.logs.multiline import DEFAULT_MAX_RECORD_LINES, MultilineJoiner
from podkit.adapter.logs.parsers import (
    TRACEBACK_START,
    LogEntry,
    make_parser,
    parse_line,
    parse_python,
)
from podkit.adapter.logs.schema import SchemaName, to_ecs, to_otel

SchemaFunction = Callable[..., dict[str, Any]]


@dataclass(slots=True)
class NormaliserStatistics:
    lines: int = 0
    records: int = 0
    unparsed: int = 0
    joined: int = 0  # records of more than one line


class LogNormaliser:
    """Turn lines into records of one schema.

    Args:
        format: a parser name (``auto``, ``nginx``...).
        schema: ``otel`` or ``ecs``.
        year: completes RFC 3164 syslog times.
        zone: the zone of source times that carry none.
        multiline: join continuation lines into the record before them.
        max_lines: the most lines one record holds.
        resource, attributes: added to every record.

    Raises:
        ValueError: an unknown format or schema.
    """

    def __init__(
        self,
        *,
        format: str = "auto",
        schema: SchemaName = "otel",
        year: int,
        zone: datetime.tzinfo,
        multiline: bool = True,
        max_lines: int = DEFAULT_MAX_RECORD_LINES,
        resource: Mapping[str, str] | None = None,
        attributes: Mapping[str, Any] | None = None,
    ) -> None:
        if schema not in ("otel", "ecs"):
            raise ValueError(f"unknown schema {schema!r}: expected otel or ecs")
        self.parser = make_parser(format, year=year)
        self.format = format
        self.schema: SchemaFunction = to_otel if schema == "otel" else to_ecs
        self.zone = zone
        self.joiner = MultilineJoiner(max_lines=max_lines) if multiline else None
        self.resource = dict(resource or {})
        self.attributes = dict(attributes or {})
        self.stats = NormaliserStatistics()
        self._fast: AccessRecord | None = None
        if format in ("nginx", "apache"):
            fast = access_otel if schema == "otel" else access_ecs
            self._fast = fast(format, zone=zone, resource=self.resource, attributes=self.attributes)

    def record(self, lines: list[str], observed: str) -> dict[str, Any]:
        """One record from its lines (the first is parsed, the others are joined to it)."""
        if self._fast is not None and len(lines) == 1:
            fast = self._fast(lines[0], observed)
            if fast is not None:
                self.stats.records += 1
                return fast
        first, rest = lines[0], lines[1:]
        entry: LogEntry
        if first.startswith(TRACEBACK_START) and self.format in ("auto", "python"):
            entry = parse_python("\n".join(lines)) or LogEntry(first)
            rest = []
            entry.message = "\n".join(lines)
        else:
            entry = parse_line(first, self.parser)
        self.stats.records += 1
        if len(lines) > 1:
            self.stats.joined += 1
        if entry.format == "raw":
            self.stats.unparsed += 1
        return self.schema(
            entry,
            observed=observed,
            zone=self.zone,
            rest=rest,
            resource=self.resource,
            attributes=self.attributes,
        )

    def feed(self, lines: Iterable[str], observed: str) -> list[dict[str, Any]]:
        """Records completed by ``lines``; the last one may wait for :meth:`flush`."""
        return list(self.iter_records(lines, observed))

    def iter_records(self, lines: Iterable[str], observed: str) -> Iterator[dict[str, Any]]:
        """:meth:`feed`, one record at a time: a caller that encodes each record at once
        keeps only a few alive (and the allocator reuses their memory)."""
        record = self.record
        count = 0
        try:
            if self.joiner is None:
                for line in lines:
                    count += 1
                    if line:
                        yield record([line], observed)
                return
            feed = self.joiner.feed
            for line in lines:
                count += 1
                done = feed(line)
                if done is not None:
                    yield record(done, observed)
        finally:
            self.stats.lines += count

    def flush(self, observed: str) -> list[dict[str, Any]]:
        """The record in progress, if any (end of input, or a quiet spell)."""
        if self.joiner is None:
            return []
        done = self.joiner.flush()
        return [] if done is None else [self.record(done, observed)]
