"""The config sync's decisions: rendering, failures, readiness and backoff (no I/O)."""

from __future__ import annotations

import signal

import pytest

from podkit.backends.etcd_client import prefix_end
from podkit.errors import ConfigError
from podkit.sidecar._retry import Backoff
from podkit.sidecar.configsync import (
    Stage,
    SyncFailure,
    SyncHealth,
    load_template,
    open_source,
    parse_signal,
    render,
    substitute,
)


def test_without_a_template_the_body_is_written_as_it_is() -> None:
    assert render(b"any bytes\x00", None, source="s") == b"any bytes\x00"


def test_a_template_sees_the_json_keys_the_whole_data_and_the_source() -> None:
    template = load_template("{{ port }} {{ data.hosts | join(',') }} {{ source }}\n")
    out = render(b'{"port": 80, "hosts": ["a", "b"]}', template, source="etcd x")
    assert out == b"80 a,b etcd x\n"


def test_a_body_that_is_not_json_fails_at_parse() -> None:
    with pytest.raises(SyncFailure) as info:
        render(b"<html>", load_template("{{ data }}"), source="s")
    assert info.value.stage is Stage.PARSE


def test_a_missing_variable_fails_at_render_instead_of_writing_an_empty_value() -> None:
    with pytest.raises(SyncFailure) as info:
        render(b'{"port": 80}', load_template("{{ hostname }}"), source="s")
    assert info.value.stage is Stage.RENDER


def test_a_python_error_inside_the_template_fails_at_render() -> None:
    with pytest.raises(SyncFailure) as info:
        render(b'{"port": "80"}', load_template("{{ port + 1 }}"), source="s")
    assert info.value.stage is Stage.RENDER


def test_a_template_with_a_syntax_error_names_the_line() -> None:
    with pytest.raises(SyncFailure, match="line 2"):
        load_template("ok\n{% if %}\n", name="app.j2")


def test_braces_in_commands_become_the_file_path() -> None:
    assert substitute(["nginx", "-t", "-c", "{}"], "/tmp/x") == ["nginx", "-t", "-c", "/tmp/x"]
    assert substitute(["check", "--file={}"], "/c") == ["check", "--file=/c"]


def test_readiness_waits_for_a_good_file_then_reports_failures_with_their_stage() -> None:
    health = SyncHealth(backoff=Backoff(initial=1.0, maximum=8.0, jitter=0.0))
    assert health.readiness().ready is False
    assert "waiting" in health.readiness().reason
    assert health.failure(SyncFailure(Stage.FETCH, "down"), 0.0, rand=0.5) == 1.0
    assert health.readiness().reason == "no good config yet: fetch: down"
    health.good_file()
    health.success(1.0)
    assert health.readiness().ready is True
    delays = [health.failure(SyncFailure(Stage.PARSE, "junk"), 2.0, rand=0.5) for _ in range(5)]
    assert delays == [1.0, 2.0, 4.0, 8.0, 8.0]
    assert health.readiness().reason == "keeping the last good config: parse: junk"
    health.success(3.0)
    assert health.readiness().ready is True


def test_prefix_end_is_the_next_key_after_every_key_with_the_prefix() -> None:
    assert prefix_end(b"svc/") == b"svc0"
    assert prefix_end(b"a\xff") == b"b"
    assert prefix_end(b"\xff\xff") == b"\x00"


def test_signals_are_named_with_or_without_sig() -> None:
    assert parse_signal("HUP") is signal.SIGHUP
    assert parse_signal("sigusr1") is signal.SIGUSR1
    assert parse_signal("15") is signal.SIGTERM
    with pytest.raises(ConfigError):
        parse_signal("NOPE")


@pytest.mark.parametrize("url", ["ftp://x/y", "etcd://127.0.0.1:2379/", "http:///nohost"])
def test_bad_source_urls_are_config_errors(url: str) -> None:
    with pytest.raises(ConfigError):
        open_source(url, every=1.0)
