"""Log adapter: line parsers shared by the log normaliser and the log shipper."""

from podkit.adapter.logs.parsers import (
    FORMATS,
    LogEntry,
    Parser,
    make_parser,
    normalise_level,
    parse_line,
)

__all__ = ["FORMATS", "LogEntry", "Parser", "make_parser", "normalise_level", "parse_line"]
