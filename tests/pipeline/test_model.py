"""The pipeline file: validation errors name the file and the field; --set fills {KEY}."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from podkit.batch.pipeline.model import load_pipeline, parse_pipeline, parse_set
from podkit.errors import ConfigError

BASE: dict[str, Any] = {
    "inputs": {"nums": {"items": [1, 2, 3]}},
    "stages": {"double": {"from": "nums", "map": {"handler": "m:f"}, "to": "out"}},
}


def error_of(data: dict[str, Any], **kwargs: Any) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        parse_pipeline(data, source="p.yaml", **kwargs)
    return info.value


def test_a_valid_file_parses_with_defaults() -> None:
    spec = parse_pipeline(BASE, source="p.yaml")
    assert spec.stages["double"].kind == "map"
    assert spec.stages["double"].from_ == ["nums"]
    assert spec.topics.backend == "memory://"
    assert spec.consumers("nums") == ["double"]


def test_set_fills_placeholders_and_leaves_shard() -> None:
    data = {
        "inputs": {"files": {"dir": "{input}"}},
        "stages": {
            "s": {"from": "files", "sharder": {"key": "$.k", "shards": 3}, "to": "c.{shard}"},
            "r": {"from": "c.*", "reduce": {"handler": "m:add"}, "to": "t"},
        },
        "outputs": {"t": {"file": "{output}"}},
    }
    spec = parse_pipeline(data, values={"input": "/data", "output": "/o.txt"})
    assert spec.inputs["files"].dir == "/data"
    assert spec.outputs["t"].file == "/o.txt"
    assert spec.stage_outputs("s") == ["c.0", "c.1", "c.2"]
    assert spec.stage_inputs("r") == ["c.0", "c.1", "c.2"]


def test_a_placeholder_without_value_names_the_field_and_the_flag() -> None:
    error = error_of({**BASE, "outputs": {"out": {"file": "{output}"}}})
    assert error.source == "p.yaml"
    assert error.path == "outputs.out.file"
    assert "--set output=VALUE" in error.reason


@pytest.mark.parametrize(
    ("stage", "path", "words"),
    [
        ({"from": "nums", "to": "x"}, "stages.s", "exactly one stage kind"),
        ({"from": "nums", "map": {}, "to": "x"}, "stages.s.map", "exactly one of handler"),
        (
            {"from": "nums", "map": {"handler": "nocolon"}},
            "stages.s.map.handler",
            "module:function",
        ),
        (
            {"from": "nums", "map": {"handler": "m:f", "concurrency": 0}},
            "stages.s.map.concurrency",
            "",
        ),
        (
            {"from": "nums", "sharder": {"key": "word", "shards": 2}, "to": "c.{shard}"},
            "stages.s.sharder.key",
            "$.word",
        ),
        (
            {"from": "nums", "sharder": {"key": "$.w", "shards": 2}, "to": "c"},
            "stages.s.to",
            "{shard}",
        ),
        ({"from": "nope", "copier": {}, "to": "x"}, "stages.s.from", "'nope'"),
        ({"from": "no.*", "merger": {}, "to": "x"}, "stages.s.from", "matching"),
        ({"from": "nums", "join": {"quorum": "150%"}, "to": "x"}, "stages.s.join.quorum", "90%"),
        (
            {"from": "nums", "join": {"quorum": "50%", "allow_failures": 1}, "to": "x"},
            "stages.s.join",
            "not both",
        ),
        ({"from": "nums", "map": {"handler": "m:f"}, "to": ["a", "b"]}, "stages.s.to", "copier"),
        ({"from": "nums", "copier": {}, "to": "nums"}, "stages.s.to", "input"),
        ({"from": "nums", "copier": {}, "to": "x", "speed": 3}, "stages.s.speed", "unknown key"),
    ],
)
def test_bad_stages_are_errors_naming_the_field(
    stage: dict[str, Any], path: str, words: str
) -> None:
    error = error_of({"inputs": BASE["inputs"], "stages": {"s": stage}})
    assert error.source == "p.yaml"
    assert error.path == path, error
    assert words in error.reason


def test_a_cycle_is_refused() -> None:
    data = {
        "inputs": BASE["inputs"],
        "stages": {
            "a": {"from": ["nums", "y"], "merger": {}, "to": "x"},
            "b": {"from": "x", "copier": {}, "to": "y"},
        },
    }
    assert "no cycles" in error_of(data).reason


def test_a_bad_backend_url_names_the_field() -> None:
    error = error_of({**BASE, "topics": {"backend": "postgres://x"}})
    assert error.path == "topics.backend"


def test_parse_set_needs_key_equals_value() -> None:
    assert parse_set(["a=1", "b=x=y"]) == {"a": "1", "b": "x=y"}
    with pytest.raises(ConfigError, match="KEY=VALUE"):
        parse_set(["novalue"])
    with pytest.raises(ConfigError, match="filled while running"):
        parse_set(["shard=1"])


def test_load_pipeline_reports_yaml_errors_with_the_file(tmp_path: Path) -> None:
    path = tmp_path / "p.yaml"
    path.write_text("stages: [\n")
    with pytest.raises(ConfigError) as info:
        load_pipeline(path)
    assert info.value.source == str(path)


def test_the_wordcount_example_is_valid() -> None:
    root = Path(__file__).parents[2] / "examples" / "wordcount" / "pipeline.yaml"
    spec = load_pipeline(root, {"input": "in", "output": "out"})
    assert [s.kind for s in spec.stages.values()] == ["splitter", "map", "sharder", "reduce"]


def test_pack_bytes_is_a_size_within_its_bounds() -> None:
    spec = parse_pipeline({**BASE, "topics": {"pack_bytes": "64KiB"}})
    assert spec.topics.pack_bytes == 64 * 1024
    for value, words in (("lots", "64KiB"), ("100", "1024"), ("1GiB", "67108864")):
        error = error_of({**BASE, "topics": {"pack_bytes": value}})
        assert error.path == "topics.pack_bytes", error
        assert words in error.reason, error


def test_a_bad_visibility_names_the_file_and_the_field() -> None:
    error = error_of({**BASE, "topics": {"visibility": "soon"}})
    assert (error.source, error.path) == ("p.yaml", "topics.visibility")
    assert "500ms" in error.reason
