"""Logs are one JSON object per line with the component name and any extra fields."""

from __future__ import annotations

import io
import json

from podkit.runtime.logging import configure_logging, get_logger


def test_json_lines_carry_component_and_extras() -> None:
    stream = io.StringIO()
    configure_logging("balance", log_format="json", level="info", stream=stream)
    get_logger("balance").info("picked", extra={"request_id": "r-1", "backend": "b1"})
    get_logger("balance").debug("hidden below the level")
    lines = stream.getvalue().splitlines()
    assert len(lines) == 1
    entry = json.loads(lines[0])
    assert entry["component"] == "balance"
    assert entry["msg"] == "picked"
    assert entry["request_id"] == "r-1"
    assert entry["level"] == "info"


def test_text_format_is_one_readable_line() -> None:
    stream = io.StringIO()
    configure_logging("cache", log_format="text", level="debug", stream=stream)
    get_logger("cache").debug("hit", extra={"key": "/a"})
    line = stream.getvalue().strip()
    assert "cache: hit key=/a" in line
