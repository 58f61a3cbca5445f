"""The tail tracker follows content through rename, copy-truncate and restarts (sans-IO)."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from podkit.sidecar._retry import Backoff
from podkit.sidecar.logship._batch import Batcher
from podkit.sidecar.logship._tail import (
    CheckpointEntry,
    Close,
    FileStat,
    LineSplitter,
    Open,
    Rotated,
    Seek,
    StreamState,
    TailTracker,
    Truncated,
    fingerprint_of,
)

FP_A = fingerprint_of(b"first line of generation A\n")
FP_B = fingerprint_of(b"first line of generation B\n")


def opens(actions: list[object]) -> list[Open]:
    return [a for a in actions if isinstance(a, Open)]


def test_a_new_file_is_read_from_its_start() -> None:
    tracker = TailTracker()
    actions = tracker.observe([FileStat("/l/app.log", 1, 10, 500, FP_A)], now=0.0)
    assert actions == [Open(1, "/l/app.log", 1, 10, 0)]


def test_a_renamed_file_keeps_its_stream_and_the_new_file_starts_at_zero() -> None:
    tracker = TailTracker()
    tracker.observe([FileStat("/l/app.log", 1, 10, 500, FP_A)], now=0.0)
    tracker.advance(1, 500, at_eof=True)
    actions = tracker.observe(
        [FileStat("/l/app.log", 1, 11, 0, None), FileStat("/l/app.log.1", 1, 10, 520, FP_A)],
        now=1.0,
    )
    assert Rotated(1, "/l/app.log", "/l/app.log.1", "rename") in actions
    assert opens(actions) == [Open(2, "/l/app.log", 1, 11, 0)]
    assert tracker.streams[1].path == "/l/app.log.1"
    assert tracker.streams[1].read_offset == 500


def test_a_file_no_glob_matches_is_closed_after_its_end_and_the_grace_period() -> None:
    tracker = TailTracker(close_after=5.0)
    tracker.observe([FileStat("/l/app.log", 1, 10, 500, FP_A)], now=0.0)
    tracker.advance(1, 500, at_eof=True)
    assert tracker.observe([], now=1.0) == []
    assert tracker.observe([], now=5.0) == []
    assert tracker.observe([], now=6.5) == [Close(1, "/l/app.log")]
    assert tracker.streams[1].state is StreamState.CLOSED
    tracker.commit({1: 500})
    assert 1 not in tracker.streams


def test_an_unmatched_file_that_is_still_being_read_stays_open() -> None:
    tracker = TailTracker(close_after=1.0)
    tracker.observe([FileStat("/l/app.log", 1, 10, 500, FP_A)], now=0.0)
    tracker.advance(1, 200, at_eof=False)
    tracker.observe([], now=1.0)
    assert tracker.observe([], now=10.0) == []


def test_copy_truncate_continues_the_stream_in_a_matched_copy() -> None:
    tracker = TailTracker()
    tracker.observe([FileStat("/l/app.log", 1, 10, 500, FP_A)], now=0.0)
    tracker.advance(1, 500, at_eof=True)
    # The copy appears before the truncation is seen: it must stay dormant, not be read.
    actions = tracker.observe(
        [FileStat("/l/app.log", 1, 10, 600, FP_A), FileStat("/l/app.log.1", 1, 20, 600, FP_A)],
        now=1.0,
    )
    assert actions == []
    # Then the original is truncated and written again.
    actions = tracker.observe(
        [FileStat("/l/app.log", 1, 10, 40, FP_B), FileStat("/l/app.log.1", 1, 20, 600, FP_A)],
        now=2.0,
    )
    assert Close(1, "/l/app.log") in actions
    assert Open(1, "/l/app.log.1", 1, 20, 500) in actions
    assert Truncated(1, "/l/app.log", copy_found=True) in actions
    assert Open(2, "/l/app.log", 1, 10, 0) in actions


def test_copy_truncate_asks_the_shell_to_find_an_unmatched_copy() -> None:
    tracker = TailTracker()
    tracker.observe([FileStat("/l/app.log", 1, 10, 500, FP_A)], now=0.0)
    tracker.advance(1, 500, at_eof=True)
    actions = tracker.observe([FileStat("/l/app.log", 1, 10, 0, None)], now=1.0)
    assert Seek(1, "/l", 1, 10, FP_A, 500) in actions
    assert Open(2, "/l/app.log", 1, 10, 0) in actions
    resolved = tracker.resolve(1, FileStat("/l/app.log-2026", 1, 30, 650, FP_A), matched=False)
    assert Open(1, "/l/app.log-2026", 1, 30, 500) in resolved
    assert Truncated(1, "/l/app.log", copy_found=True) in resolved
    assert tracker.streams[1].matched is False


def test_a_truncation_without_a_copy_is_reported_and_the_stream_ends() -> None:
    tracker = TailTracker()
    tracker.observe([FileStat("/l/app.log", 1, 10, 500, FP_A)], now=0.0)
    tracker.advance(1, 500, at_eof=True)
    tracker.observe([FileStat("/l/app.log", 1, 10, 0, None)], now=1.0)
    assert tracker.resolve(1, None, matched=False) == [Truncated(1, "/l/app.log", copy_found=False)]
    assert tracker.streams[1].state is StreamState.CLOSED


def test_a_restart_resumes_each_file_at_its_checkpointed_offset() -> None:
    tracker = TailTracker()
    tracker.restore([CheckpointEntry("/l/app.log", 1, 10, FP_A, 300)])
    actions = tracker.observe([FileStat("/l/app.log", 1, 10, 500, FP_A)], now=0.0)
    assert actions == [Open(1, "/l/app.log", 1, 10, 300)]


def test_a_restart_after_a_rename_finds_the_file_by_inode_in_its_directory() -> None:
    tracker = TailTracker()
    tracker.restore([CheckpointEntry("/l/app.log", 1, 10, FP_A, 300)])
    actions = tracker.observe([FileStat("/l/app.log", 1, 11, 50, FP_B)], now=0.0)
    assert Seek(1, "/l", 1, 10, FP_A, 300) in actions
    assert Open(2, "/l/app.log", 1, 11, 0) in actions
    resolved = tracker.resolve(1, FileStat("/l/app.log.1", 1, 10, 500, FP_A), matched=False)
    assert Open(1, "/l/app.log.1", 1, 10, 300) in resolved


def test_a_reused_inode_with_other_content_is_a_new_file() -> None:
    tracker = TailTracker()
    tracker.restore([CheckpointEntry("/l/app.log", 1, 10, FP_A, 300)])
    actions = tracker.observe([FileStat("/l/app.log", 1, 10, 900, FP_B)], now=0.0)
    assert Open(2, "/l/app.log", 1, 10, 0) in actions
    assert tracker.resolve(1, None, matched=False) == []
    tracker.commit({})
    assert [e.offset for e in tracker.checkpoint()] == [0]


def test_the_checkpoint_holds_acknowledged_offsets_only() -> None:
    tracker = TailTracker()
    tracker.observe([FileStat("/l/app.log", 1, 10, 500, FP_A)], now=0.0)
    tracker.advance(1, 500, at_eof=True)
    assert tracker.checkpoint() == [CheckpointEntry("/l/app.log", 1, 10, FP_A, 0)]
    tracker.commit({1: 200})
    assert tracker.checkpoint() == [CheckpointEntry("/l/app.log", 1, 10, FP_A, 200)]


def test_the_fingerprint_is_the_first_line_and_unknown_before_it_is_complete() -> None:
    assert fingerprint_of(b"") is None
    assert fingerprint_of(b"partial") is None
    assert fingerprint_of(b"line\nmore") == fingerprint_of(b"line\nother")
    assert fingerprint_of(b"x" * 5000) is not None


@given(st.lists(st.binary(max_size=40), max_size=30), st.integers(min_value=1, max_value=7))
def test_the_line_splitter_fed_in_any_pieces_yields_the_same_lines(
    pieces: list[bytes], step: int
) -> None:
    data = b"".join(pieces)
    splitter = LineSplitter(max_line=1 << 20)
    lines: list[bytes] = []
    for i in range(0, len(data), step):
        lines.extend(splitter.feed(data[i : i + step]))
    lines.extend(splitter.flush())
    expected = data.split(b"\n")
    if expected and expected[-1] == b"":
        expected.pop()
    assert lines == expected


def test_a_line_longer_than_the_limit_is_cut() -> None:
    splitter = LineSplitter(max_line=8)
    assert splitter.feed(b"0123456789") == [b"0123456789"]
    assert splitter.cut_lines == 1
    assert splitter.feed(b"ab\n") == [b"ab"]


def test_batches_are_cut_by_size_and_by_age() -> None:
    batcher = Batcher(size=2, flush_after=1.0)
    batcher.note_start(10.0)
    batcher.current.lines.append(b"a")
    assert not batcher.full()
    assert batcher.due_at() == 11.0
    batcher.current.lines.append(b"b")
    assert batcher.full()
    batch = batcher.cut()
    assert batch is not None
    assert batch.lines == [b"a", b"b"]
    assert batcher.cut() is None


@given(st.integers(min_value=0, max_value=200), st.floats(min_value=0, max_value=0.999))
def test_backoff_grows_and_never_passes_its_cap_plus_jitter(attempt: int, rand: float) -> None:
    backoff = Backoff(initial=0.1, maximum=5.0, jitter=0.2)
    delay = backoff.delay(attempt, rand=rand)
    assert 0.08 <= delay <= 6.0
    assert backoff.delay(attempt + 1, rand=rand) >= delay


class FakeDirectory:
    """Inodes and names, as a log directory sees appends, renames, copies and truncation."""

    def __init__(self) -> None:
        self.inodes: dict[int, bytearray] = {}
        self.names: dict[str, int] = {}
        self.next_ino = 100

    def create(self, path: str) -> None:
        self.next_ino += 1
        self.inodes[self.next_ino] = bytearray()
        self.names[path] = self.next_ino

    def stat(self, path: str) -> FileStat:
        ino = self.names[path]
        data = bytes(self.inodes[ino])
        return FileStat(path, 1, ino, len(data), fingerprint_of(data[:4096]))

    def listing(self, prefix: str) -> list[FileStat]:
        return [self.stat(p) for p in sorted(self.names) if p.startswith(prefix)]


def run_shell(tracker: TailTracker, fs: FakeDirectory, shipped: list[bytes], now: float) -> None:
    """One poll of a shell that reads every bound stream to its end."""
    actions = tracker.observe(fs.listing("/l/app.log"), now=now)  # the glob /l/app.log*
    while actions:
        action = actions.pop(0)
        if isinstance(action, Seek):
            found = None
            for path in sorted(fs.names):
                stat = fs.stat(path)
                if (
                    stat.fingerprint == action.fingerprint
                    and stat.size >= action.min_size
                    and stat.key not in tracker.bound_keys()
                ):
                    found = stat
                    break
            actions[0:0] = tracker.resolve(action.stream, found, matched=False)
    for stream in tracker.reading():
        data = bytes(fs.inodes[stream.ino])
        end = data.rfind(b"\n") + 1
        if end > stream.read_offset:
            shipped.extend(data[stream.read_offset : end].splitlines())
            tracker.advance(stream.id, end, at_eof=True)
        else:
            tracker.advance(stream.id, stream.read_offset, at_eof=True)
    tracker.commit({s.id: s.read_offset for s in tracker.streams.values()})


@given(
    st.lists(st.sampled_from(["append", "append", "poll", "rename", "copytruncate"]), max_size=40)
)
def test_every_line_is_shipped_once_whatever_the_rotations(operations: list[str]) -> None:
    """Appends, rename and copy-truncate rotations in any order, with a glob that matches the
    rotated names too: each line is shipped once."""
    fs = FakeDirectory()
    fs.create("/l/app.log")
    tracker = TailTracker(close_after=0.0)
    written: list[bytes] = []
    shipped: list[bytes] = []
    now = 0.0
    run_shell(tracker, fs, shipped, now)  # the shipper runs before the first rotation
    rotated_since_poll = False
    for op in operations:
        now += 1.0
        if op in ("rename", "copytruncate"):
            # Rotations are far apart compared with polls: the previous one was seen.
            if rotated_since_poll:
                run_shell(tracker, fs, shipped, now)
            rotated_since_poll = True
        if op == "poll":
            run_shell(tracker, fs, shipped, now)
            rotated_since_poll = False
        elif op == "append":
            line = f"line {len(written)} at {now}".encode()
            written.append(line)
            fs.inodes[fs.names["/l/app.log"]] += line + b"\n"
        elif op == "rename":
            fs.names.pop("/l/app.log.1", None)
            fs.names["/l/app.log.1"] = fs.names.pop("/l/app.log")
            fs.create("/l/app.log")
        elif op == "copytruncate":
            content = bytes(fs.inodes[fs.names["/l/app.log"]])
            fs.create("/l/app.log.1")
            fs.inodes[fs.names["/l/app.log.1"]] += content
            fs.inodes[fs.names["/l/app.log"]].clear()
    for _ in range(3):
        now += 1.0
        run_shell(tracker, fs, shipped, now)
    assert sorted(shipped) == sorted(written)  # each once; order across files may differ
