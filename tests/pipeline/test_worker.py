"""A stage worker: back-pressure from a full topic, and several workers of one reduce."""

from __future__ import annotations

from pathlib import Path

from podkit.batch.pipeline.model import parse_pipeline
from podkit.batch.pipeline.processes import feed_inputs, store_for
from podkit.batch.pipeline.stages import StageLogic
from podkit.batch.pipeline.store import sub_name
from podkit.batch.pipeline.worker import (
    BACKPRESSURE_POLL,
    StageWorker,
    WorkerOptions,
    worker_subs,
)

ROOT = Path(__file__).parents[2]
H = "tests.pipeline.handlers_for_tests"


def spec_for(tmp_path: Path, max_pending: int) -> object:
    return parse_pipeline(
        {
            "name": "bp",
            "topics": {"backend": f"sqlite:///{tmp_path}/p.db", "max_pending": max_pending},
            "inputs": {"nums": {"items": list(range(1, 41)), "group": "g"}},
            "stages": {
                "explode": {"from": "nums", "map": {"handler": f"{H}:explode"}, "to": "many"},
                "sum": {"from": "many", "reduce": {"handler": f"{H}:add", "initial": 0}, "to": "t"},
            },
            "outputs": {"t": {"file": str(tmp_path / "t.txt")}},
        },
        base_dir=str(ROOT),
    )


def test_a_full_topic_makes_its_producer_wait_and_the_job_still_finishes(tmp_path: Path) -> None:
    spec = spec_for(tmp_path, max_pending=30)
    store = store_for(spec)  # type: ignore[arg-type]
    feed_inputs(spec, store)  # type: ignore[arg-type]
    options = WorkerOptions(batch=5, max_pending=30)
    many = [sub_name("many", "sum")]
    nums = [sub_name("nums", "explode")]
    consumer = StageWorker(spec, StageLogic(spec, "sum"), store, options)  # type: ignore[arg-type]
    waits: list[float] = []
    highest = [0]

    def sleep(seconds: float) -> None:
        # While the producer waits, the consumer takes a batch.
        waits.append(seconds)
        highest[0] = max(highest[0], store.backlog(many))
        consumer.run_once()

    def stop() -> bool:
        highest[0] = max(highest[0], store.backlog(many))
        return store.backlog(nums) == 0

    producer = StageWorker(spec, StageLogic(spec, "explode"), store, options, sleep=sleep)  # type: ignore[arg-type]
    producer.serve(stop)
    assert BACKPRESSURE_POLL in waits
    # One batch may overshoot the bound: 5 items of up to 40 outputs each.
    assert highest[0] < options.max_pending + 5 * 40
    while consumer.run_once():
        pass
    for group in store.open_barriers("sum"):
        consumer._fire(group)
    assert store.outputs("t") == [{"group": "g", "value": sum(i * i for i in range(1, 41))}]
    store.close()


def test_the_workers_of_a_sharded_reduce_split_its_topics() -> None:
    spec = parse_pipeline(
        {
            "inputs": {"nums": {"items": [1]}},
            "stages": {
                "s": {"from": "nums", "sharder": {"key": "$.k", "shards": 4}, "to": "c.{shard}"},
                "r": {"from": "c.*", "reduce": {"handler": "m:f"}, "to": "t"},
            },
        }
    )
    assert worker_subs(spec, "r", 0, 2) == ["c.0>r", "c.2>r"]
    assert worker_subs(spec, "r", 1, 2) == ["c.1>r", "c.3>r"]
    assert worker_subs(spec, "r", 0, 8) == ["c.0>r", "c.1>r", "c.2>r", "c.3>r"]


def test_a_worker_folds_by_the_items_group_path_and_buries_items_without_it(
    tmp_path: Path,
) -> None:
    items = [{"job": "a", "n": 1}, {"job": "b", "n": 2}, {"n": 3}, {"job": "a", "n": 4}]
    spec = parse_pipeline(
        {
            "name": "rg",
            "topics": {"backend": f"sqlite:///{tmp_path}/p.db"},
            "inputs": {"nums": {"items": items, "group": "g"}},
            "stages": {
                "sum": {
                    "from": "nums",
                    "reduce": {
                        "handler": f"{H}:add_n",
                        "group": "$.job",
                        "initial": 0,
                        "allow_failures": 1,
                    },
                    "to": "t",
                }
            },
            "outputs": {"t": {"file": str(tmp_path / "t.txt")}},
        },
        base_dir=str(ROOT),
    )
    store = store_for(spec)
    feed_inputs(spec, store)
    worker = StageWorker(spec, StageLogic(spec, "sum"), store, WorkerOptions(batch=10))
    while worker.run_once():
        pass
    for group in store.open_barriers("sum"):
        worker._fire(group)
    assert sorted(store.outputs("t"), key=lambda v: v["group"]) == [
        {"group": "a", "value": 5},
        {"group": "b", "value": 2},
    ]
    [dead] = store.dead("sum")
    assert dead.value == {"n": 3}
    assert dead.error == "ItemError: item has no field $.job"
    store.close()
