"""Container log files: stamped lines, size rotation, selection, merging and following."""

from __future__ import annotations

from pathlib import Path

import pytest

from podkit.errors import UsageError
from podkit.pods.logs import (
    LogFollower,
    RotatingLog,
    log_name,
    log_sources,
    merged,
    parse_since,
    read_lines,
    select_sources,
    stamp,
)

T0 = 1_796_000_000.0  # a fixed wall time: the tests pass times in, they never read a clock


def write(path: Path, lines: list[tuple[float, str]], max_bytes: int = 1 << 20) -> None:
    with RotatingLog(path, max_bytes=max_bytes) as log:
        for wall, line in lines:
            log.write(line, wall=wall)


def test_each_line_is_stored_after_a_fixed_width_utc_stamp(tmp_path: Path) -> None:
    path = tmp_path / log_name("web", 2, "app")
    write(path, [(T0, "hello"), (T0 + 0.5, "caf\u00e9")])
    assert path.name == "web-2.app.log"
    lines = path.read_text(encoding="utf-8").splitlines()
    assert lines == [f"{stamp(T0)} hello", f"{stamp(T0 + 0.5)} caf\u00e9"]
    assert stamp(T0).endswith("Z")
    assert len(stamp(T0)) == len(stamp(T0 + 0.5))


def test_a_file_past_its_size_moves_to_dot_1_and_at_most_two_files_are_kept(
    tmp_path: Path,
) -> None:
    path = tmp_path / "web-1.app.log"
    lines = [(T0 + i, f"line {i:03}") for i in range(100)]
    write(path, lines, max_bytes=400)
    assert path.stat().st_size <= 400
    rotated = path.with_name("web-1.app.log.1")
    assert rotated.stat().st_size <= 400
    assert sorted(p.name for p in tmp_path.iterdir()) == ["web-1.app.log", "web-1.app.log.1"]
    [source] = log_sources(tmp_path)
    kept = [text for _, text in read_lines(source)]
    # What is kept is the newest lines, in order, with no gap.
    assert kept == [f"line {i:03}" for i in range(100 - len(kept), 100)]
    assert len(kept) > 10


def test_targets_select_a_pod_a_replica_or_a_container(tmp_path: Path) -> None:
    for name in ("web-1.app.log", "web-2.app.log", "web-2.tail.log", "lb-1.balance.log"):
        (tmp_path / name).write_text("")
    (tmp_path / "web-1.app.log.1").write_text("")
    (tmp_path / "notes.txt").write_text("")
    sources = log_sources(tmp_path)
    labels = [s.label for s in sources]
    assert labels == ["lb-1/balance", "web-1/app", "web-2/app", "web-2/tail"]

    def chosen(target: str | None) -> list[str]:
        return [s.label for s in select_sources(sources, target)]

    assert chosen(None) == labels
    assert chosen("web") == ["web-1/app", "web-2/app", "web-2/tail"]
    assert chosen("web-2") == ["web-2/app", "web-2/tail"]
    assert chosen("web/app") == ["web-1/app", "web-2/app"]
    assert chosen("web-2/tail") == ["web-2/tail"]
    with pytest.raises(UsageError, match=r"no logs for 'db'.*lb-1/balance"):
        select_sources(sources, "db")


def test_several_containers_merge_in_time_order_and_since_and_tail_cut(tmp_path: Path) -> None:
    write(tmp_path / "a-1.x.log", [(T0, "a0"), (T0 + 2, "a2"), (T0 + 4, "a4")])
    write(tmp_path / "b-1.x.log", [(T0 + 1, "b1"), (T0 + 3, "b3")])
    sources = log_sources(tmp_path)
    assert [text for _, _, text in merged(sources)] == ["a0", "b1", "a2", "b3", "a4"]
    since = parse_since("2s", now=T0 + 4)
    assert [text for _, _, text in merged(sources, since=since)] == ["a2", "b3", "a4"]
    assert [text for _, _, text in merged(sources, tail=1)] == ["b3", "a4"]
    assert parse_since("1970-01-01T00:00:10Z", now=T0) == stamp(10.0)
    with pytest.raises(UsageError, match="--since: expected a duration"):
        parse_since("5 minutes", now=T0)


def test_a_follower_reads_new_lines_across_a_rotation_without_losing_one(tmp_path: Path) -> None:
    path = tmp_path / "web-1.app.log"
    log = RotatingLog(path, max_bytes=300)
    log.write("before", wall=T0)
    [source] = log_sources(tmp_path)
    follower = LogFollower(source)
    assert follower.read_new() == []
    seen: list[str] = []
    for i in range(40):
        log.write(f"line {i}", wall=T0 + i)
        if i % 7 == 0:
            seen += [text for _, text in follower.read_new()]
    seen += [text for _, text in follower.read_new()]
    log.close()
    follower.close()
    assert seen == [f"line {i}" for i in range(40)]
