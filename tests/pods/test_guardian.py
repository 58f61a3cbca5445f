"""The guardian's bookkeeping: the groups still listed when the supervisor's pipe closes."""

from __future__ import annotations

from podkit.pods._guardian import guard


def test_groups_added_and_not_removed_are_the_ones_left() -> None:
    assert guard(["+100\n", "+200\n", "-100\n", "+300\n"]) == {200, 300}


def test_malformed_lines_are_ignored() -> None:
    assert guard(["+\n", "x12\n", "+-3\n", "+4 5\n", "+7\n", ""]) == {7}
