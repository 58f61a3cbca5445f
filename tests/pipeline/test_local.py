"""The in-process runner: every stage kind, barriers, dead letters and the word count example."""

from __future__ import annotations

import collections
import os
import random
import re
import stat
import sys
from pathlib import Path
from typing import Any

import pytest

from podkit.batch.pipeline.barrier import Outcome
from podkit.batch.pipeline.local import LocalRunner, RunResult
from podkit.batch.pipeline.model import load_pipeline, parse_pipeline

H = "tests.pipeline.handlers_for_tests"
ROOT = Path(__file__).parents[2]


def run(stages: dict[str, Any], items: list[Any], **extra: Any) -> RunResult:
    data = {"inputs": {"nums": {"items": items, "group": "g"}}, "stages": stages, **extra}
    return LocalRunner(parse_pipeline(data, base_dir=str(ROOT))).run()


def test_copier_filter_map_and_merger_chain() -> None:
    result = run(
        {
            "copy": {"from": "nums", "copier": {}, "to": ["a", "b"]},
            "even": {"from": "a", "filter": {"handler": f"{H}:is_even"}, "to": "evens"},
            "double": {"from": "b", "map": {"handler": f"{H}:double"}, "to": "doubled"},
            "merge": {"from": ["evens", "doubled"], "merger": {}, "to": "all"},
            "sum": {"from": "all", "reduce": {"handler": f"{H}:add", "initial": 0}, "to": "total"},
        },
        list(range(10)),
        outputs={"all": {"file": "/dev/null"}, "total": {"file": "/dev/null"}},
    )
    assert sorted(result.outputs["all"]) == sorted([0, 2, 4, 6, 8] + [2 * i for i in range(10)])
    assert result.outputs["total"] == [{"group": "g", "value": 20 + 90}]
    assert result.stages["copy"].items_out == 20
    assert not result.dead


def test_an_output_to_a_device_writes_to_it_and_never_replaces_it(tmp_path: Path) -> None:
    """``file: /dev/null`` (or a FIFO) is written to as it is, not renamed over."""
    fifo = tmp_path / "out.fifo"
    os.mkfifo(fifo)
    reader = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)
    try:
        run(
            {"copy": {"from": "nums", "copier": {}, "to": ["a", "b"]}},
            [1, 2],
            outputs={"a": {"file": "/dev/null"}, "b": {"file": str(fifo)}},
        )
        assert os.read(reader, 100) == b"1\n2\n"
    finally:
        os.close(reader)
    assert stat.S_ISCHR(os.stat("/dev/null").st_mode)
    assert stat.S_ISFIFO(os.stat(fifo).st_mode)


def test_a_splitter_routes_to_named_topics_and_a_generator_map_fans_out() -> None:
    result = run(
        {
            "route": {
                "from": "nums",
                "splitter": {"handler": f"{H}:route"},
                "to": ["small", "big"],
            },
            "explode": {"from": "small", "map": {"handler": f"{H}:explode"}, "to": "many"},
        },
        [0, 3, 12],
        outputs={"many": {"file": "/dev/null"}, "big": {"file": "/dev/null"}},
    )
    assert result.outputs["big"] == [0, 12]
    assert result.outputs["many"] == [3, 3, 3]


def test_a_sharder_sends_equal_keys_to_one_shard_and_moves_few_keys_when_it_grows() -> None:
    items = [{"k": f"key{i}"} for i in range(2000)]

    def placement(shards: int) -> dict[str, str]:
        result = run(
            {"s": {"from": "nums", "sharder": {"key": "$.k", "shards": shards}, "to": "c.{shard}"}},
            items + items,
            outputs={f"c.{i}": {"file": "/dev/null"} for i in range(shards)},
        )
        where: dict[str, str] = {}
        for topic, values in result.outputs.items():
            for v in values:
                assert where.setdefault(v["k"], topic) == topic
        return where

    four, five = placement(4), placement(5)
    moved = sum(four[k] != five[k] for k in four)
    assert moved / len(four) == pytest.approx(1 / 5, abs=0.05)
    assert all(five[k] == "c.4" for k in four if four[k] != five[k])


def test_a_command_map_reads_json_and_prints_lines() -> None:
    program = "import json,sys; v=json.load(sys.stdin); print(v*10); print('text')"
    result = run(
        {"cmd": {"from": "nums", "map": {"command": [sys.executable, "-c", program]}, "to": "o"}},
        [1, 2],
        outputs={"o": {"file": "/dev/null"}},
    )
    assert result.outputs["o"] == [10, "text", 20, "text"]


def test_a_failing_item_is_retried_then_dead_lettered_and_counts_as_a_failed_child() -> None:
    result = run(
        {
            "m": {
                "from": "nums",
                "map": {"handler": f"{H}:fail_on_odd"},
                "to": "o",
                "max_attempts": 2,
            },
            "j": {"from": "o", "join": {"allow_failures": 2}, "to": "done"},
        },
        [1, 2, 4, 5],
        outputs={"done": {"file": "/dev/null"}},
    )
    assert [d.value for d in result.dead] == [1, 5]
    assert result.dead[0].attempts == 2
    assert "RuntimeError: odd 1" in result.dead[0].error
    assert result.stages["m"].retries == 2
    assert result.outputs["done"] == [
        {"group": "g", "outcome": "succeeded", "items": 2, "done": 4, "failed": 2}
    ]


def test_a_failing_reduce_handler_dead_letters_its_item_and_the_group_fails_under_all() -> None:
    result = run(
        {"r": {"from": "nums", "reduce": {"handler": f"{H}:add_or_fail", "initial": 0}, "to": "t"}},
        [1, 13, 2],
        outputs={"t": {"file": "/dev/null"}},
    )
    assert [(d.stage, d.value) for d in result.dead] == [("r", 13)]
    assert result.outcomes[("r", "g")] is Outcome.FAILED
    assert result.outputs["t"] == []


def test_a_reduce_with_allow_failures_emits_the_rest() -> None:
    result = run(
        {
            "r": {
                "from": "nums",
                "reduce": {"handler": f"{H}:add_or_fail", "initial": 0, "allow_failures": 1},
                "to": "t",
            }
        },
        [1, 13, 2],
        outputs={"t": {"file": "/dev/null"}},
    )
    assert result.outputs["t"] == [{"group": "g", "value": 3}]


def test_a_second_barrier_waits_for_the_first_ones_outputs() -> None:
    result = run(
        {
            "per_value": {
                "from": "nums",
                "reduce": {"handler": f"{H}:count_one", "key": "$.v", "initial": 0},
                "to": "sums",
            },
            "count": {"from": "sums", "join": {}, "to": "done"},
        },
        [{"v": "a"}, {"v": "a"}, {"v": "b"}],
        outputs={"sums": {"file": "/dev/null"}, "done": {"file": "/dev/null"}},
    )
    assert sorted(result.outputs["sums"], key=str) == [
        {"group": "g", "key": "a", "value": 2},
        {"group": "g", "key": "b", "value": 1},
    ]
    assert result.outputs["done"] == [
        {"group": "g/per_value", "outcome": "succeeded", "items": 2, "done": 2, "failed": 0}
    ]


def write_corpus(root: Path, files: int, lines: int, seed: int) -> collections.Counter[str]:
    rng = random.Random(seed)
    vocabulary = ["Alpha", "beta", "gamma42", "it's", "über", "x", "a-b", "Ünïcode", "the"]
    expected: collections.Counter[str] = collections.Counter()
    for i in range(files):
        path = root / ("sub" if i % 2 else "") / f"f{i}.txt"
        path.parent.mkdir(parents=True, exist_ok=True)
        text = "\n".join(
            " ".join(rng.choice(vocabulary) for _ in range(rng.randint(0, 15)))
            for _ in range(lines)
        )
        path.write_text(text, encoding="utf-8")
    for path in sorted(root.rglob("*")):
        if path.is_file():
            for line in path.read_text(encoding="utf-8").splitlines():
                expected.update(re.findall(r"[a-z0-9]+", line.lower()))
    return expected


def read_counts(path: Path) -> dict[str, int]:
    counts: dict[str, int] = {}
    for line in path.read_text().splitlines():
        word, count = line.split(" ")
        assert word not in counts
        counts[word] = int(count)
    return counts


def test_the_wordcount_example_equals_counter(tmp_path: Path) -> None:
    corpus = tmp_path / "in"
    expected = write_corpus(corpus, files=7, lines=300, seed=3)
    out = tmp_path / "out" / "counts.txt"
    spec = load_pipeline(
        ROOT / "examples" / "wordcount" / "pipeline.yaml",
        {"input": str(corpus), "output": str(out)},
    )
    result = LocalRunner(spec).run()
    assert read_counts(out) == dict(expected)
    assert result.stages["count"].fired == 1
    assert not result.dead


@pytest.mark.parametrize(("quorum", "outcome"), [("50%", "succeeded"), ("90%", "failed")])
def test_quorum_is_a_share_of_the_children(quorum: str, outcome: str) -> None:
    result = run(
        {
            "m": {
                "from": "nums",
                "map": {"handler": f"{H}:fail_on_odd"},
                "to": "o",
                "max_attempts": 1,
            },
            "j": {"from": "o", "join": {"quorum": quorum}, "to": "done"},
        },
        list(range(1, 11)),
        outputs={"done": {"file": "/dev/null"}},
    )
    (summary,) = result.outputs["done"]
    assert summary["outcome"] == outcome
    assert len(result.dead) == 5


def test_progress_is_a_table_on_a_terminal_and_json_lines_otherwise() -> None:
    import io
    import json

    from podkit.batch.pipeline.local import StageStats
    from podkit.batch.pipeline.progress import ProgressPrinter

    ticks = iter([0.0, 1.0, 2.0])
    rows = [StageStats("words", "map", items_in=50, items_out=200, pending=50)]
    table = io.StringIO()
    printer = ProgressPrinter(table, table=True, clock=lambda: next(ticks))
    printer(rows)
    printer(rows)
    text = table.getvalue()
    assert "words" in text
    assert "[##########..........]  50%" in text
    assert "\x1b[3F" in text  # the second drawing moves up over the first
    lines = io.StringIO()
    json_ticks = iter([0.0, 0.5])
    ProgressPrinter(lines, table=False, clock=lambda: next(json_ticks))(rows)
    record = json.loads(lines.getvalue())
    assert record["stages"][0] == {
        "stage": "words", "kind": "map", "in": 50, "out": 200, "pending": 50, "retries": 0,
        "dead": 0, "fired": 0, "rate": 100.0,
    }  # fmt: skip


def test_an_item_that_fails_after_yielding_leaves_no_output_and_the_rest_keep_their_order() -> None:
    result = run(
        {
            "m": {"from": "nums", "map": {"handler": f"{H}:explode_or_fail"}, "to": "o"},
            "s": {
                "from": "nums",
                "splitter": {"handler": f"{H}:flaky_split"},
                "to": ["small", "big"],
            },
        },
        [1, 2, 3, 4],
        outputs={
            "o": {"file": "/dev/null"},
            "small": {"file": "/dev/null"},
            "big": {"file": "/dev/null"},
        },
    )
    assert result.outputs["o"] == [1, 10, 2, 20, 4, 40]
    assert result.outputs["small"] == [1, 2, 4]
    assert result.outputs["big"] == [10, 20, 40]
    assert sorted((d.stage, d.value) for d in result.dead) == [("m", 3), ("s", 3)]
    assert result.stages["m"].items_out == 6
    assert result.groups["g"].failed == 2


def test_items_without_the_key_fail_in_a_sharder_and_a_keyed_reduce_with_the_field_named() -> None:
    items = [{"w": "a", "n": 1}, {"n": 2}, {"w": "a", "n": 3}, [4], {"w": 5, "n": 5}]
    result = run(
        {
            "sh": {"from": "nums", "sharder": {"key": "$.w", "shards": 2}, "to": "s.{shard}"},
            "r": {
                "from": "nums",
                "reduce": {
                    "handler": f"{H}:add_n",
                    "key": "$.w",
                    "initial": 0,
                    "allow_failures": 4,
                },
                "to": "t",
            },
        },
        items,
        outputs={"t": {"file": "/dev/null"}},
        topics={"backend": "memory://"},
    )
    errors = sorted((d.stage, d.error) for d in result.dead)
    assert errors == [
        ("r", "ItemError: item has no field $.w"),
        ("r", "ItemError: item has no field $.w"),
        ("sh", "ItemError: item has no field $.w"),
        ("sh", "ItemError: item has no field $.w"),
    ]
    assert sorted((v["key"], v["value"]) for v in result.outputs["t"]) == [("5", 5), ("a", 4)]


def test_a_batch_larger_than_a_chunk_is_cut_and_every_item_is_counted() -> None:
    result = run(
        {
            "m": {"from": "nums", "map": {"handler": f"{H}:explode"}, "to": "o"},
            "r": {"from": "o", "reduce": {"handler": f"{H}:count_one", "initial": 0}, "to": "t"},
        },
        [2500, 1700],
        outputs={"t": {"file": "/dev/null"}},
    )
    assert result.outputs["t"] == [{"group": "g", "value": 4200}]
    assert result.stages["r"].items_in == 4200
    assert result.groups["g"].done == 4202


def test_a_stage_without_outputs_runs_its_handler_for_each_item() -> None:
    result = run(
        {"m": {"from": "nums", "map": {"handler": f"{H}:fail_on_odd"}, "max_attempts": 1}},
        [1, 2, 4],
    )
    assert result.stages["m"].items_in == 3
    assert result.stages["m"].items_out == 0
    assert [d.value for d in result.dead] == [1]
