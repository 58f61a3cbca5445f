"""``podkit logship --schema otel|ecs`` ships the records ``podkit adapt logs`` writes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from podkit.adapter.logs import missing_fields
from podkit.testing import PodkitProcess
from podkit.testing.net import wait_for

NGINX = '10.0.0.1 - - [07/Dec/2026:03:00:00 +0100] "GET /x HTTP/1.1" 404 12 "-" "curl/8"'


@pytest.mark.parametrize("schema", ["otel", "ecs"])
def test_logship_ships_records_in_the_chosen_schema(tmp_path: Path, schema: str) -> None:
    log = tmp_path / "access.log"
    log.write_text(NGINX + "\nnot a log line\n")
    sink = tmp_path / "out.jsonl"
    with PodkitProcess(
        "logship", "--path", str(log), "--to", f"file://{sink}", "--format", "nginx",
        "--schema", schema, "--flush", "100ms", "--poll", "50ms",
    ):  # fmt: skip
        wait_for(
            lambda: sink.exists() and sink.read_text().count("\n") == 2,
            timeout=15,
            what="two records",
        )
    first, second = (json.loads(line) for line in sink.read_text().splitlines())
    assert missing_fields(first, schema) == []  # type: ignore[arg-type]
    assert missing_fields(second, schema) == []  # type: ignore[arg-type]
    if schema == "otel":
        assert first["Timestamp"] == "2026-12-07T02:00:00Z"
        assert first["Attributes"]["http.response.status_code"] == 404
        assert first["Attributes"]["log.file.path"] == str(log)
        assert first["Attributes"]["log.offset"] == 0
        assert "podkit.parse_error" in second["Attributes"]
    else:
        assert first["@timestamp"] == "2026-12-07T02:00:00Z"
        assert first["http"]["response"]["status_code"] == 404
        assert first["log"]["offset"] == 0
        assert second["tags"] == ["_parse_failure"]
