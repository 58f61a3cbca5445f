"""The latency simulator reproduces the Tail at Scale effect, repeatably."""

from __future__ import annotations

from podkit.serving.search.simulate import LeafModel, simulate


def test_the_same_seed_gives_the_same_figures() -> None:
    """Seeded: two runs agree to the last digit."""
    assert simulate(50, 200, seed=3) == simulate(50, 200, seed=3)


def test_waiting_for_more_leaves_makes_the_tail_the_median() -> None:
    """With a 1 % hiccup, one leaf's p50 is fast but 100 leaves' p50 meets a hiccup."""
    one = simulate(1, 4000)
    hundred = simulate(100, 1000)
    model = LeafModel()
    assert one.wait_all[0] < 2 * model.median
    assert hundred.wait_all[0] > 5 * model.median  # most queries wait for a hiccup


def test_hedging_and_cut_off_bring_the_tail_back() -> None:
    """Over 100 leaves hedging and a 99 % cut-off halve the median and lower the p99, with
    hedges within 5 % of the requests."""
    result = simulate(100, 1000)
    assert result.hedged[0] < result.wait_all[0] / 2
    assert result.cut_off[0] < result.wait_all[0] / 2
    assert result.hedged[1] < result.wait_all[1]
    assert result.cut_off[1] < result.wait_all[1]
    assert result.extra_requests <= 0.05
