"""The lifecycle state machine allows exactly the documented transitions."""

from __future__ import annotations

import pytest

from podkit.runtime.lifecycle import IllegalTransition, Lifecycle, Phase


def test_a_new_component_is_starting_and_not_ready() -> None:
    lifecycle = Lifecycle()
    assert lifecycle.phase is Phase.STARTING
    assert not lifecycle.statistics().ready


def test_readiness_can_flip_until_draining() -> None:
    lifecycle = Lifecycle()
    assert lifecycle.ready()
    assert lifecycle.not_ready("backend down")
    assert lifecycle.reason == "backend down"
    assert lifecycle.ready()
    assert lifecycle.statistics().ready


def test_draining_is_final_for_readiness() -> None:
    lifecycle = Lifecycle()
    lifecycle.ready()
    assert lifecycle.drain("SIGTERM received")
    assert not lifecycle.drain()
    assert not lifecycle.ready()
    assert lifecycle.phase is Phase.DRAINING
    assert lifecycle.reason == "SIGTERM received"


def test_stopped_cannot_come_back() -> None:
    lifecycle = Lifecycle()
    lifecycle.stop()
    assert not lifecycle.ready()
    with pytest.raises(IllegalTransition):
        lifecycle._move(Phase.READY, "again")


def test_repeating_the_same_state_reports_no_change() -> None:
    lifecycle = Lifecycle()
    assert lifecycle.ready()
    assert not lifecycle.ready()
