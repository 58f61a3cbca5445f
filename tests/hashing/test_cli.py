"""``podkit hash`` prints KEY NODE lines, reads stdin, rejects bad input; ``bench`` measures."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from podkit.cli import main
from podkit.hashing import BoundedLoads, sharding_function

NODES = "10.0.0.1:11211,10.0.0.2:11211,10.0.0.3:11211"


def podkit(*args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "podkit", *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_lookup_prints_one_key_node_line_per_key_in_order_for_every_algorithm() -> None:
    sample = ["user:1", "user:2", "user:3", "cart 9", "user:1"]
    for algo in ("ring", "rendezvous", "jump", "maglev"):
        result = podkit("hash", "--algo", algo, "--nodes", NODES, *sample)
        assert result.returncode == 0, result.stderr
        function = sharding_function(algo, NODES.split(","))
        expected = [f"{key} {function.pick(key)}" for key in sample]
        assert result.stdout.splitlines() == expected


def test_keys_come_from_stdin_with_a_dash_among_other_keys() -> None:
    result = podkit("hash", "--nodes", NODES, "first", "-", "last", stdin="s1\ns2\n")
    assert result.returncode == 0, result.stderr
    assert [line.split(" ")[0] for line in result.stdout.splitlines()] == [
        "first",
        "s1",
        "s2",
        "last",
    ]


def test_options_may_follow_the_keys_and_a_key_may_be_named_bench() -> None:
    result = podkit("hash", "--nodes", "a,b", "bench", "k2", "--algo", "jump")
    assert result.returncode == 0, result.stderr
    function = sharding_function("jump", ["a", "b"])
    assert result.stdout.splitlines() == [
        f"bench {function.pick('bench')}",
        f"k2 {function.pick('k2')}",
    ]


def test_bounded_load_assigns_keys_in_order_under_the_cap() -> None:
    sample = [f"k{i}" for i in range(40)]
    result = podkit("hash", "--nodes", "a,b,c,d", "--bounded-load", "1.0", *sample)
    assert result.returncode == 0, result.stderr
    table = BoundedLoads(sharding_function("ring", ["a", "b", "c", "d"]), balance=1.0)
    assert result.stdout.splitlines() == [f"{k} {table.assign(k)}" for k in sample]
    counts = [line.split()[1] for line in result.stdout.splitlines()]
    assert max(counts.count(node) for node in "abcd") == 10


def test_weights_and_table_size_reach_the_algorithm() -> None:
    result = podkit(
        "hash",
        "--algo",
        "maglev",
        "--nodes",
        "a,b",
        "--weight",
        "b=3",
        "--table-size",
        "101",
        "x",
        "y",
    )
    assert result.returncode == 0, result.stderr
    function = sharding_function("maglev", ["a", "b"], weights={"b": 3}, table_size=101)
    assert result.stdout.splitlines() == [f"x {function.pick('x')}", f"y {function.pick('y')}"]


def test_bad_input_is_a_one_line_usage_error_with_exit_code_2(
    capsys: pytest.CaptureFixture[str],
) -> None:
    cases = [
        (["hash", "key"], "--nodes is required"),
        (["hash", "--nodes", "a,b"], "at least one KEY"),
        (["hash", "--nodes", "a,,b", "k"], "empty node name"),
        (["hash", "--nodes", "a,a", "k"], "listed twice"),
        (["hash", "--nodes", "a", "--weight", "a=0", "k"], "NODE=WEIGHT"),
        (["hash", "--algo", "jump", "--nodes", "a", "--weight", "a=2", "k"], "no weights"),
        (["hash", "--algo", "maglev", "--nodes", "a", "--table-size", "100", "k"], "prime"),
        (["hash", "--nodes", "a", "--table-size", "101", "k"], "maglev only"),
        (["hash", "--nodes", "a", "--bounded-load", "0.5", "k"], "balance"),
        (["hash", "--algo", "nope", "--nodes", "a", "k"], "nope"),
        (["hash", "bench", "--node-counts", "x"], "node-counts"),
        (["hash", "bench", "--algo", "ring,nope"], "nope"),
        (["hash", "bench", "--balance", "0.9"], "balance"),
    ]
    for args, reason in cases:
        # The console script's entry point, in this process: 13 interpreters would be slow.
        with pytest.raises(SystemExit) as exited:
            main(args)
        stderr = capsys.readouterr().err
        assert exited.value.code == 2, (args, stderr)
        assert stderr.startswith("podkit hash"), stderr
        assert reason in stderr, (args, stderr)
        assert len(stderr.strip().splitlines()) == 1, stderr
    # And once through a real process: one line, no traceback.
    result = podkit("hash", "--nodes", "a,a", "k")
    assert result.returncode == 2
    assert result.stderr == "podkit hash: error: node 'a' is listed twice\n"


def test_bench_reports_every_algorithm_with_movement_balance_and_rates() -> None:
    result = podkit(
        "hash",
        "bench",
        "--keys",
        "3000",
        "--node-counts",
        "5",
        "--single-keys",
        "500",
        "--format",
        "json",
    )
    assert result.returncode == 0, result.stderr
    rows = [json.loads(line) for line in result.stdout.splitlines()]
    names = [row["algorithm"] for row in rows]
    assert names[:4] == ["ring", "rendezvous", "jump", "maglev"]
    assert names[4:6] == ["bounded(ring,c=1.25)", "bounded(ring,c=1.1)"]
    for row in rows[:4]:
        assert row["nodes"] == 5
        assert row["keys"] == 3000
        assert row["peak_to_mean"] >= 1.0
        assert 0 < row["moved_add"] < 0.5
        assert 0 < row["moved_remove"] < 0.5
        assert abs(row["ideal_add"] - 1 / 6) < 1e-9
        assert row["lookups_per_s"] > 0
        assert row["batch_per_s"] > 0
        assert row["memory_bytes"] > 0
    assert rows[4]["peak_to_mean"] <= 1.25
    assert rows[5]["peak_to_mean"] <= 1.1


def test_bench_text_output_has_a_header_and_one_line_per_row() -> None:
    result = podkit(
        "hash",
        "bench",
        "--keys",
        "2000",
        "--node-counts",
        "3",
        "--algo",
        "maglev",
        "--no-peer",
        "--single-keys",
        "100",
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].startswith("# 2,000 keys; key hash xxh3-64")
    assert lines[1].split()[:3] == ["algorithm", "N", "peak/mean"]
    assert lines[2].split()[:2] == ["maglev", "3"]
    assert lines[3].startswith("bounded(ring,c=1.25)")
    assert lines[4].startswith("bounded(ring,c=1.1)")
    assert len(lines) == 5


def test_hash_is_listed_by_podkit_help_and_bench_names_its_own_path(
    capsys: pytest.CaptureFixture[str],
) -> None:
    result = podkit("--help")
    assert "hash" in result.stdout
    with pytest.raises(SystemExit):
        main(["hash", "bench", "--help"])
    assert "Usage: podkit hash bench [OPTIONS]" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        main(["hash", "bench", "--keys", "0"])
    assert capsys.readouterr().err.startswith("podkit hash bench: error:")
