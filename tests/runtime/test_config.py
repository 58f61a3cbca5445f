"""Durations, sizes, addresses and YAML models are parsed once, with errors naming the field."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import BaseModel, ConfigDict

from podkit.errors import ConfigError
from podkit.runtime import RuntimeOptions
from podkit.runtime.config import (
    HostPort,
    format_duration,
    format_rate,
    load_model,
    load_yaml,
    parse_duration,
    parse_hostport,
    parse_rate,
    parse_size,
)


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("500ms", 0.5),
        ("2s", 2.0),
        ("1m", 60.0),
        ("1.5m", 90.0),
        ("1h", 3600.0),
        ("3", 3.0),
        (7, 7.0),
    ],
)
def test_durations_are_parsed_into_seconds(text: str | int, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "fast", "-1s", "2 weeks", "1d"])
def test_bad_durations_name_the_field(text: str) -> None:
    with pytest.raises(ConfigError, match="--interval"):
        parse_duration(text, field="--interval")


@given(st.integers(min_value=0, max_value=10**6))
def test_formatted_durations_parse_back(millis: int) -> None:
    seconds = millis / 1000
    assert parse_duration(format_duration(seconds)) == pytest.approx(seconds)


@pytest.mark.parametrize(
    ("text", "size"),
    [("512", 512), ("64KiB", 65536), ("256MiB", 256 << 20), ("1GiB", 1 << 30), ("10MB", 10**7)],
)
def test_sizes_are_parsed_into_bytes(text: str, size: int) -> None:
    assert parse_size(text) == size


def test_bad_size_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="expected a size"):
        parse_size("lots")


def test_addresses_parse_ipv4_ipv6_and_bare_ports() -> None:
    assert parse_hostport("127.0.0.1:80") == HostPort("127.0.0.1", 80)
    assert parse_hostport("[::1]:8080") == HostPort("::1", 8080)
    assert parse_hostport(":9000") == HostPort("127.0.0.1", 9000)
    assert str(HostPort("::1", 1)) == "[::1]:1"
    with pytest.raises(ConfigError):
        parse_hostport("localhost")
    with pytest.raises(ConfigError):
        parse_hostport("host:99999")
    with pytest.raises(ConfigError, match="give the host too"):
        parse_hostport(":9000", default_host=None)


def test_a_file_that_is_not_utf8_is_a_config_error_naming_the_line(tmp_path: Path) -> None:
    path = tmp_path / "pods.yaml"
    path.write_bytes(b"pods:\n  web\xff: {}\n")
    with pytest.raises(
        ConfigError, match=r"pods.yaml: line 2: not UTF-8 text \(byte 0xff at offset 11\)"
    ):
        load_yaml(path)


def test_runtime_options_parse_strings_and_refuse_bad_values_with_a_typed_error() -> None:
    options = RuntimeOptions(admin="127.0.0.1:9555", drain_timeout="2s")
    assert options.admin == HostPort("127.0.0.1", 9555)
    assert options.drain_timeout == 2.0
    assert RuntimeOptions(admin=HostPort("::1", 1)).admin == HostPort("::1", 1)
    for bad in (
        {"admin": "nowhere"},
        {"admin": ":9555"},
        {"drain_timeout": "soon"},
        {"log_format": "xml"},
        {"log_level": "loud"},
    ):
        with pytest.raises(ConfigError):
            RuntimeOptions(**bad)  # type: ignore[arg-type]


class _Inner(BaseModel):
    model_config = ConfigDict(extra="forbid")
    replicas: int


class _Outer(BaseModel):
    model_config = ConfigDict(extra="forbid")
    pods: dict[str, _Inner]


def test_model_errors_name_file_and_field_path(tmp_path: Path) -> None:
    path = tmp_path / "pod.yaml"
    path.write_text("pods:\n  web:\n    replicas: many\n")
    with pytest.raises(ConfigError) as info:
        load_model(_Outer, path)
    assert info.value.source == str(path)
    assert info.value.path == "pods.web.replicas"
    assert str(path) in str(info.value)


def test_unknown_keys_are_rejected_by_name(tmp_path: Path) -> None:
    path = tmp_path / "pod.yaml"
    path.write_text("pods:\n  web:\n    replicas: 1\n    replica: 2\n")
    with pytest.raises(ConfigError, match=r"pods\.web\.replica: unknown key"):
        load_model(_Outer, path)


def test_malformed_yaml_reports_line_and_column(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("pods:\n  web: [1, 2\n")
    with pytest.raises(ConfigError, match="line 3"):
        load_model(_Outer, path)


def test_missing_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read file"):
        load_model(_Outer, tmp_path / "nope.yaml")


def test_a_missing_server_binary_says_how_to_install_it() -> None:
    from podkit.errors import PodkitError
    from podkit.testing import require_binary

    with pytest.raises(PodkitError, match="apt-get install no-such-server-binary"):
        require_binary("no-such-server-binary")


def test_a_key_given_twice_is_an_error_naming_the_key_and_both_lines(tmp_path: Path) -> None:
    path = tmp_path / "pod.yaml"
    path.write_text("pods:\n  web:\n    replicas: 1\n  web:\n    replicas: 2\n")
    with pytest.raises(ConfigError) as info:
        load_yaml(path)
    assert info.value.source == str(path)
    assert "line 4, column 3: duplicate key 'web' (first at line 2)" in str(info.value)


def test_a_file_that_is_not_utf8_is_one_error_naming_the_file(tmp_path: Path) -> None:
    path = tmp_path / "pod.yaml"
    path.write_bytes(b"pods:\n  web: {name: caf\xe9}\n")
    with pytest.raises(ConfigError) as info:
        load_yaml(path)
    assert str(info.value) == (
        f"{path}: line 2: not UTF-8 text (byte 0xe9 at offset 23); save the file as UTF-8"
    )


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("- 1\n", "(top level): expected a mapping (key: value), got a list"),
        ("pods: [1]\n", "pods: expected a mapping (key: value), got a list"),
        ("pods:\n  web: null\n", "pods.web: expected a mapping (key: value), got nothing"),
        ("pods:\n  web: {replicas: many}\n", "expected a whole number, got the string 'many'"),
        ("pods:\n  web: {}\n", "pods.web.replicas: required key missing"),
    ],
)
def test_model_errors_are_in_our_words_not_the_validation_librarys(
    tmp_path: Path, text: str, message: str
) -> None:
    path = tmp_path / "pod.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        load_model(_Outer, path)
    assert message in str(info.value)
    for foreign in ("Input should be", "Value error", "instance of", "Field required"):
        assert foreign not in str(info.value)


@pytest.mark.parametrize(
    ("text", "per_second"),
    [("10/s", 10.0), ("100/m", 100 / 60), ("5/10s", 0.5), ("1/500ms", 2.0), (" 2.5 / s ", 2.5)],
)
def test_rates_are_events_per_second(text: str, per_second: float) -> None:
    assert parse_rate(text) == pytest.approx(per_second)


@pytest.mark.parametrize("text", ["10", "0/s", "10/0s", "ten/s", "10/d", "-1/s"])
def test_bad_rates_name_their_field(text: str) -> None:
    with pytest.raises(ConfigError, match="--shadow-max-rate"):
        parse_rate(text, field="--shadow-max-rate")


@pytest.mark.parametrize("per_second", [1000.0, 2.5, 0.5, 1 / 60])
def test_a_formatted_rate_reads_back(per_second: float) -> None:
    assert parse_rate(format_rate(per_second)) == pytest.approx(per_second)
