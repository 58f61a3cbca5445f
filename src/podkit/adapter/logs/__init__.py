"""Log adapter: line parsers shared by the log normaliser and the log shipper, the multi-line
joiner, and the OpenTelemetry and ECS schemas."""

from podkit.adapter.logs.multiline import DEFAULT_MAX_RECORD_LINES, MultilineJoiner
from podkit.adapter.logs.normaliser import LogNormaliser, NormaliserStatistics
from podkit.adapter.logs.parsers import (
    FORMATS,
    LogEntry,
    Parser,
    make_parser,
    normalise_level,
    parse_line,
)
from podkit.adapter.logs.schema import SCHEMAS, missing_fields, to_ecs, to_otel, to_utc

__all__ = [
    "DEFAULT_MAX_RECORD_LINES",
    "FORMATS",
    "SCHEMAS",
    "LogEntry",
    "LogNormaliser",
    "MultilineJoiner",
    "NormaliserStatistics",
    "Parser",
    "make_parser",
    "missing_fields",
    "normalise_level",
    "parse_line",
    "to_ecs",
    "to_otel",
    "to_utc",
]
