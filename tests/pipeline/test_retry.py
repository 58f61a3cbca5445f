"""Retries with backoff: the policy, its place in the pipeline file, and both runners."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from podkit.batch.pipeline.local import LocalRunner
from podkit.batch.pipeline.model import parse_pipeline
from podkit.batch.pipeline.processes import feed_inputs, store_for
from podkit.batch.pipeline.retry import RetryPolicy
from podkit.batch.pipeline.stages import StageLogic
from podkit.batch.pipeline.worker import StageWorker, WorkerOptions
from podkit.errors import ConfigError

ROOT = Path(__file__).parents[2]
H = "tests.pipeline.handlers_for_tests"


@given(
    attempts=st.integers(1, 20),
    initial=st.floats(0.001, 5),
    multiplier=st.floats(1, 10),
    cap=st.floats(0.001, 60),
    rands=st.lists(st.floats(0, 1, exclude_max=True), min_size=20, max_size=20),
)
def test_waits_grow_stay_under_the_cap_and_jitter_within_half(
    attempts: int, initial: float, multiplier: float, cap: float, rands: list[float]
) -> None:
    policy = RetryPolicy(attempts, initial, multiplier, max(cap, initial))
    bases = [policy.base(k) for k in range(1, attempts)]
    assert bases == sorted(bases)
    assert all(b <= policy.cap for b in bases)
    for k, (base, rand) in enumerate(zip(bases, rands, strict=False), start=1):
        assert base / 2 <= policy.delay(k, rand) <= base
    assert policy.worst_case() == pytest.approx(sum(bases))


def test_without_backoff_a_retry_does_not_wait() -> None:
    policy = RetryPolicy(attempts=5)
    assert [policy.delay(k, 0.7) for k in range(1, 5)] == [0.0] * 4


def stages(**stage: Any) -> dict[str, Any]:
    return {
        "m": {"from": "nums", "map": {"handler": f"{H}:fail_on_odd"}, "to": "o", **stage},
        "j": {"from": "o", "join": {"allow_failures": 10}, "to": "done"},
    }


def pipeline(tmp_path: Path, backend: str = "memory://", **stage: Any) -> Any:
    return parse_pipeline(
        {
            "name": "retry",
            "topics": {"backend": backend, "visibility": "1m"},
            "inputs": {"nums": {"items": [1, 2, 3, 4], "group": "g"}},
            "stages": stages(**stage),
            "outputs": {"done": {"file": str(tmp_path / "done.txt")}},
        },
        source="p.yaml",
        base_dir=str(ROOT),
    )


def test_retries_and_backoff_parse_from_the_file(tmp_path: Path) -> None:
    spec = pipeline(tmp_path, retries=4, backoff="500ms")
    policy = spec.stages["m"].retry_policy
    assert (policy.attempts, policy.initial, policy.multiplier, policy.cap) == (5, 0.5, 2.0, 30.0)
    spec = pipeline(tmp_path, retries=2, backoff={"initial": "2s", "max": "3s", "multiplier": 3})
    assert spec.stages["m"].retry_policy == RetryPolicy(3, 2.0, 3.0, 3.0)
    assert pipeline(tmp_path, max_attempts=2).stages["m"].retry_policy == RetryPolicy(2)


@pytest.mark.parametrize(
    ("stage", "path", "words"),
    [
        ({"retries": 2, "max_attempts": 3}, "stages.m", "not both"),
        ({"retries": -1}, "stages.m.retries", "0"),
        ({"retries": 100}, "stages.m.retries", "99"),
        ({"backoff": "soon"}, "stages.m.backoff.initial", "500ms"),
        ({"backoff": "0s"}, "stages.m.backoff.initial", "positive"),
        ({"backoff": {"initial": "2s", "max": "1s"}}, "stages.m.backoff", "at least initial"),
        ({"backoff": {"initial": "1s", "multiplier": 50}}, "stages.m.backoff.multiplier", "10"),
        ({"backoff": {"initial": "1s", "jitter": 1}}, "stages.m.backoff.jitter", "unknown key"),
        ({"retries": 5, "backoff": "10s"}, "stages.m.backoff", "topics.visibility"),
    ],
)
def test_bad_retry_settings_name_the_file_and_field(
    tmp_path: Path, stage: dict[str, Any], path: str, words: str
) -> None:
    with pytest.raises(ConfigError) as info:
        pipeline(tmp_path, **stage)
    assert info.value.source == "p.yaml"
    assert info.value.path == path, info.value
    assert words in info.value.reason


def test_the_in_process_runner_waits_longer_before_each_round_of_retries(tmp_path: Path) -> None:
    waits: list[float] = []
    spec = pipeline(tmp_path, retries=3, backoff={"initial": "1s", "max": "3s"})
    result = LocalRunner(spec, sleep=waits.append, random=lambda: 0.999).run()
    # The two failing items of the batch are retried together: one wait per round.
    assert waits == pytest.approx([1.0, 2.0, 3.0], abs=0.01)
    assert [d.value for d in result.dead] == [1, 3]
    assert result.dead[0].attempts == 4
    assert result.stages["m"].retries == 6
    assert result.outputs["done"][0]["failed"] == 2


def test_a_worker_retries_a_batch_s_failures_in_rounds_after_the_backoff(tmp_path: Path) -> None:
    spec = pipeline(tmp_path, f"sqlite:///{tmp_path}/p.db", retries=2, backoff="200ms")
    store = store_for(spec)
    try:
        feed_inputs(spec, store)
        waits: list[float] = []
        worker = StageWorker(
            spec,
            StageLogic(spec, "m"),
            store,
            WorkerOptions(batch=10),
            sleep=waits.append,
            random=lambda: 0.0,
        )
        batches = 0
        while worker.run_once():
            batches += 1
        # Each batch that holds failures waits once per round, however many items failed.
        rounds = len(waits) // 2
        assert 1 <= rounds <= batches
        assert waits == pytest.approx([0.1, 0.2] * rounds)
        assert sorted(d.value for d in store.dead()) == [1, 3]
        assert all(d.error == f"RuntimeError: odd {d.value}" for d in store.dead())
        counts = {c.stage: c for c in store.counts(["m"], {"m": ["nums>m"]})}
        assert (counts["m"].retries, counts["m"].dead, counts["m"].items_out) == (4, 2, 2)
    finally:
        store.close()


def test_a_reduce_worker_folds_a_failed_item_again_after_the_backoff(tmp_path: Path) -> None:
    spec = parse_pipeline(
        {
            "name": "fold",
            "topics": {"backend": f"sqlite:///{tmp_path}/p.db"},
            "inputs": {"nums": {"items": [1, 13, 2], "group": "g"}},
            "stages": {
                "r": {
                    "from": "nums",
                    "reduce": {"handler": f"{H}:add_or_fail", "initial": 0, "allow_failures": 1},
                    "to": "t",
                    "retries": 1,
                    "backoff": "1s",
                }
            },
            "outputs": {"t": {"file": str(tmp_path / "t.txt")}},
        },
        base_dir=str(ROOT),
    )
    store = store_for(spec)
    try:
        feed_inputs(spec, store)
        waits: list[float] = []
        worker = StageWorker(
            spec, StageLogic(spec, "r"), store, WorkerOptions(), sleep=waits.append
        )
        while worker.run_once():
            pass
        for group in store.open_barriers("r"):
            worker._fire(group)
        assert len(waits) == 1
        assert 0.5 <= waits[0] <= 1.0
        assert [d.value for d in store.dead()] == [13]
        assert store.outputs("t") == [{"group": "g", "value": 3}]
    finally:
        store.close()


def test_items_that_succeed_on_a_retry_go_on_with_their_batch(tmp_path: Path) -> None:
    items = [101, 102, 103]
    spec = parse_pipeline(
        {
            "inputs": {"nums": {"items": items, "group": "g"}},
            "stages": {
                "m": {
                    "from": "nums",
                    "map": {"handler": f"{H}:fail_first_time"},
                    "to": "o",
                    "retries": 1,
                    "backoff": "1s",
                },
                "s": {"from": "o", "reduce": {"handler": f"{H}:add", "initial": 0}, "to": "t"},
            },
            "outputs": {"t": {"file": str(tmp_path / "t.txt")}},
        },
        base_dir=str(ROOT),
    )
    waits: list[float] = []
    result = LocalRunner(spec, sleep=waits.append, random=lambda: 0.5).run()
    assert waits == [0.75]
    assert result.dead == []
    assert result.stages["m"].retries == 3
    assert result.outputs["t"] == [{"group": "g", "value": 2 * sum(items)}]
