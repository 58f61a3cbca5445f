"""The backends file format: URL per line, optional weight, comments, clear errors."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from podkit.errors import ConfigError
from podkit.serving.balance import BackendSpec, parse_backend, parse_backends, read_backends_file


def test_parse_urls_weights_and_comments() -> None:
    text = """
    # the pool
    http://127.0.0.1:8001
    http://127.0.0.1:8002 weight=2   # bigger
    http://localhost/
    """
    assert parse_backends(text) == [
        BackendSpec("http://127.0.0.1:8001", 1),
        BackendSpec("http://127.0.0.1:8002", 2),
        BackendSpec("http://localhost:80", 1),
    ]


def test_ipv6_backends_keep_their_brackets() -> None:
    assert parse_backend("http://[::1]:9000").url == "http://[::1]:9000"


def test_https_backends_default_to_port_443() -> None:
    assert parse_backend("https://example.com").url == "https://example.com:443"


def test_the_pod_supervisors_discovery_file_parses() -> None:
    text = (
        "# podkit discovery: ready replicas of pod web on port 8000, one per line\n"
        "http://127.0.1.1:8000\nhttp://127.0.1.2:8000\n"
    )
    assert [s.url for s in parse_backends(text)] == [
        "http://127.0.1.1:8000",
        "http://127.0.1.2:8000",
    ]


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("ftp://127.0.0.1:1", "expected a backend URL"),
        ("127.0.0.1:8001", "expected a backend URL"),
        ("http://127.0.0.1:99999", "bad port"),
        ("http://127.0.0.1:1/path", "no path"),
        ("http://127.0.0.1:1 weight=0", "weight must be"),
        ("http://127.0.0.1:1 weight=x", "weight must be"),
        ("http://127.0.0.1:1 backup", "unknown backend option"),
    ],
)
def test_bad_lines_name_the_file_and_line(line: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message) as info:
        parse_backends(f"# header\n{line}\n", source="pool.txt")
    assert info.value.source == "pool.txt"
    assert info.value.path == "line 2"


def test_a_duplicate_url_is_an_error() -> None:
    with pytest.raises(ConfigError, match="already listed on line 1"):
        parse_backends("http://a:1\nhttp://a:1/\n")


def test_read_a_file_and_report_a_missing_one(tmp_path: Path) -> None:
    path = tmp_path / "backends"
    path.write_text("http://127.0.0.1:8001 weight=3\n")
    assert read_backends_file(path) == [BackendSpec("http://127.0.0.1:8001", 3)]
    with pytest.raises(ConfigError, match="cannot read backends file"):
        read_backends_file(tmp_path / "missing")
    path.write_bytes(b"\xff\xfe")
    with pytest.raises(ConfigError, match="UTF-8"):
        read_backends_file(path)


@given(
    st.lists(
        st.tuples(
            st.integers(min_value=1, max_value=65535), st.integers(min_value=1, max_value=99)
        ),
        unique_by=lambda t: t[0],
        max_size=20,
    )
)
def test_written_files_parse_back(entries: list[tuple[int, int]]) -> None:
    """A file written in the documented format parses back to the same backends."""
    text = "".join(f"http://127.0.0.1:{port} weight={w}  # c\n\n" for port, w in entries)
    assert parse_backends(text) == [BackendSpec(f"http://127.0.0.1:{p}", w) for p, w in entries]
