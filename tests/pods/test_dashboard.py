"""The dashboard's core: metrics pages become figures, the pod file becomes a graph."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry, generate_latest

from podkit.batch.pipeline.worker import StageMetrics
from podkit.engines.tcp import TCPStatistics, tcp_metrics
from podkit.pods.dashboard import DashboardCore, figures, histogram_quantile, parse_metrics
from podkit.pods.dashboard.core import pods_graph
from podkit.pods.model import parse_podfile
from podkit.runtime.config import load_yaml

QUICKSTART = Path(__file__).resolve().parents[2] / "examples" / "quickstart.yaml"

PAGE = """# HELP podkit_cache_http_responses_total Responses.
# TYPE podkit_cache_http_responses_total counter
podkit_cache_http_responses_total{{code="200"}} {ok}
podkit_cache_http_responses_total{{code="503"}} {bad}
podkit_cache_http_request_duration_seconds_bucket{{le="0.01"}} {fast}
podkit_cache_http_request_duration_seconds_bucket{{le="0.1"}} {medium}
podkit_cache_http_request_duration_seconds_bucket{{le="+Inf"}} {all}
podkit_cache_requests_total{{result="hit"}} {hit}
podkit_cache_requests_total{{result="miss"}} {miss}
podkit_balance_ready_backends 2.0
podkit_balance_backend_state{{backend="http://a:1",state="ready"}} 1.0
podkit_balance_backend_state{{backend="http://a:1",state="down"}} 0.0
podkit_balance_backend_state{{backend="http://b:1",state="draining"}} 1.0
podkit_balance_requests_total{{backend="http://a:1",code="2xx"}} {a}
podkit_balance_requests_total{{backend="http://b:1",code="2xx"}} {b}
elect_is_leader 1.0
elect_fencing_token 7.0
not a sample line
broken_value NaNx
"""


def page(**values: float) -> str:
    base = dict.fromkeys(("ok", "bad", "fast", "medium", "all", "hit", "miss", "a", "b"), 0)
    return PAGE.format(**{**base, **values})


def test_the_text_format_is_parsed_with_labels_and_escapes() -> None:
    samples = parse_metrics('m{a="x\\"y",b="2"} 3.5 1700000000\nplain 1e3\n# c\n')
    assert samples[("m", (("a", 'x"y'), ("b", "2")))] == 3.5
    assert samples[("plain", ())] == 1000.0


def test_two_pages_give_rates_errors_p99_hit_ratio_and_shares() -> None:
    before = parse_metrics(page())
    after = parse_metrics(
        page(ok=90, bad=10, fast=50, medium=99, all=100, hit=30, miss=10, a=75, b=25)
    )
    found = figures(before, after, 2.0)
    assert found["rps"] == 50.0
    assert found["errors"] == pytest.approx(0.1)
    assert 0.01 < found["p99"] <= 0.1
    assert found["hit_ratio"] == 0.75
    assert found["backends_ready"] == 2.0
    assert found["leader"] is True
    assert found["token"] == 7.0
    assert found["backends"] == [
        {"url": "http://a:1", "state": "ready", "share": 0.75},
        {"url": "http://b:1", "state": "draining", "share": 0.25},
    ]


def test_the_first_page_gives_gauges_but_no_rates() -> None:
    found = figures(None, parse_metrics(page(ok=5)), 0.0)
    assert "rps" not in found
    assert found["backends_ready"] == 2.0


def test_a_counter_reset_is_not_a_negative_rate() -> None:
    found = figures(parse_metrics(page(ok=100)), parse_metrics(page(ok=3)), 1.0)
    assert found["rps"] == 0.0


def test_histogram_quantile_interpolates_like_prometheus() -> None:
    assert histogram_quantile(0.5, {1.0: 50, 2.0: 100, math.inf: 100}) == 1.0
    assert histogram_quantile(0.75, {1.0: 50, 2.0: 100, math.inf: 100}) == 1.5
    assert histogram_quantile(0.99, {1.0: 0, math.inf: 10}) == 1.0
    assert histogram_quantile(0.99, {1.0: 0, math.inf: 0}) is None


@given(st.lists(st.integers(0, 1000), min_size=2, max_size=8), st.floats(0.01, 0.99))
def test_a_quantile_lies_within_the_finite_bounds(counts: list[int], q: float) -> None:
    bounds = [0.001 * 2**i for i in range(len(counts))]
    cumulative: dict[float, float] = {}
    running = 0
    for bound, count in zip(bounds, counts, strict=True):
        running += count
        cumulative[bound] = running
    cumulative[math.inf] = running
    value = histogram_quantile(q, cumulative)
    if running == 0:
        assert value is None
    else:
        assert value is not None
        assert 0.0 <= value <= bounds[-1]


def test_the_quickstart_graph_sends_cache_to_lb_to_web() -> None:
    podfile = parse_podfile(load_yaml(QUICKSTART), source="quickstart.yaml")
    graph = pods_graph(podfile)
    assert {"from": "cache", "to": "lb"} in graph["edges"]
    assert {"from": "lb", "to": "web"} in graph["edges"]
    column = {p["name"]: p["column"] for p in graph["pods"]}
    assert column["cache"] < column["lb"] < column["web"]
    assert {p["name"] for p in graph["pods"]} == set(podfile.pods)


def test_series_are_bounded_and_containers_that_left_are_forgotten() -> None:
    podfile = parse_podfile(load_yaml(QUICKSTART), source="quickstart.yaml")
    core = DashboardCore(podfile, history=3)
    for i in range(6):
        core.observe("lb-1/balance", page(ok=10 * i), float(i))
    core.failed("cache-1/proxy", "ConnectTimeout")
    snap = core.snapshot({"containers": [], "file": "q.yaml"})
    series = snap["figures"]["lb-1/balance"]["series"]["rps"]
    assert [t for t, _v in series] == [3.0, 4.0, 5.0]
    assert all(v == 10.0 for _t, v in series)
    assert snap["figures"]["cache-1/proxy"]["error"] == "ConnectTimeout"
    core.forget(["cache-1/proxy"])
    assert list(core.snapshot({})["figures"]) == ["cache-1/proxy"]


def test_a_shard_router_gives_its_shards_shares_rate_and_errors() -> None:
    def shard_page(a: float, b: float, errors: float) -> str:
        return (
            f'podkit_shard_requests_total{{shard="10.0.0.1:11211"}} {a}\n'
            f'podkit_shard_requests_total{{shard="10.0.0.2:11211"}} {b}\n'
            f'podkit_shard_errors_total{{shard="10.0.0.2:11211"}} {errors}\n'
            'podkit_shard_state{shard="10.0.0.1:11211",state="up"} 1.0\n'
            'podkit_shard_state{shard="10.0.0.2:11211",state="up"} 1.0\n'
        )

    found = figures(parse_metrics(shard_page(0, 0, 0)), parse_metrics(shard_page(60, 20, 4)), 4.0)
    assert found["rps"] == 20.0
    assert found["errors"] == pytest.approx(0.05)
    assert found["backends_of"] == "shard"
    assert [b["share"] for b in found["backends"]] == [0.75, 0.25]


def _exposition(registry: CollectorRegistry) -> str:
    return generate_latest(registry).decode()


def test_a_pipeline_stage_gives_items_in_and_out_per_second_pending_and_errors() -> None:
    """The figures of a stage worker's own metrics (podkit_pipeline_*, labelled by stage)."""
    registry = CollectorRegistry()
    metrics = StageMetrics(registry, "normalise")
    before = parse_metrics(_exposition(registry))
    metrics.items_in.inc(40)
    metrics.items_out.inc(120)
    metrics.retries.inc(3)
    metrics.dead.inc(1)
    metrics.pending.set(7)
    found = figures(before, parse_metrics(_exposition(registry)), 2.0)
    assert found["stage"] == "normalise"
    assert found["items_in"] == 20.0
    assert found["items_out"] == 60.0
    assert found["pending"] == 7.0
    assert found["stage_errors"] == 2.0  # (3 retries + 1 dead letter) in 2 s
    assert found["dead"] == 1.0
    assert "rps" not in found


SPLIT_PAGE = """# TYPE podkit_split_requests_total counter
podkit_split_requests_total{{arm="primary",code="2xx"}} {p2}
podkit_split_requests_total{{arm="primary",code="5xx"}} {p5}
podkit_split_requests_total{{arm="candidate",code="2xx"}} {c2}
podkit_split_requests_total{{arm="candidate",code="error"}} {ce}
podkit_split_weight{{arm="primary"}} 0.9
podkit_split_weight{{arm="candidate"}} 0.1
podkit_split_diff_compared_total{{route="GET /search"}} {compared}
podkit_split_diff_regressions_total{{route="GET /search"}} {regressions}
"""


def test_a_split_gives_each_arms_rate_errors_weight_and_the_diff_mismatch_rate() -> None:
    """Per-arm requests/s and error share (5xx and no answer), the candidate's weight, and the
    noise-corrected mismatch rate of the answers compared in the interval."""
    first = SPLIT_PAGE.format(p2=0, p5=0, c2=0, ce=0, compared=10, regressions=10)
    second = SPLIT_PAGE.format(p2=171, p5=9, c2=18, ce=2, compared=110, regressions=15)
    found = figures(parse_metrics(first), parse_metrics(second), 2.0)
    assert found["candidate_weight"] == pytest.approx(0.1)
    assert found["arms"] == [
        {"arm": "primary", "weight": 0.9, "rps": 90.0, "errors": 0.05},
        {"arm": "candidate", "weight": 0.1, "rps": 10.0, "errors": 0.1},
    ]
    assert found["diff_mismatch"] == pytest.approx(0.05)  # 5 of the 100 compared meanwhile
    quiet = figures(parse_metrics(second), parse_metrics(second), 2.0)
    assert quiet["diff_mismatch"] == pytest.approx(15 / 110)  # none compared: since start
    assert quiet["arms"][0]["rps"] == 0.0


def test_a_broker_gives_its_environment_connections_and_bytes_per_second() -> None:
    """The TCP broker's current environment, open connections and bytes both ways."""

    def broker_page(open_: int, bytes_in: int, bytes_out: int) -> str:
        stats = TCPStatistics(open_, 5, bytes_in, bytes_out, 0, 0, 0)
        metrics = "".join(
            f"{sample.name} {sample.value}\n"
            for family in tcp_metrics([stats], prefix="podkit_broker_tcp")
            for sample in family.samples
        )
        return (
            metrics
            + 'podkit_broker_environment{environment="staging"} 1.0\n'
            + "podkit_broker_epoch 2.0\n"
        )

    found = figures(
        parse_metrics(broker_page(1, 100, 1000)), parse_metrics(broker_page(3, 4100, 9000)), 4.0
    )
    assert found["environment"] == "staging"
    assert found["connections"] == 3.0
    assert found["bytes_rate"] == 3000.0  # (4000 + 8000) bytes in 4 s


def test_the_new_figures_are_charted() -> None:
    """Stage, split and broker figures get a time series like the others."""
    core = DashboardCore(parse_podfile(load_yaml(QUICKSTART), source=str(QUICKSTART)))
    first = SPLIT_PAGE.format(p2=0, p5=0, c2=0, ce=0, compared=0, regressions=0)
    second = SPLIT_PAGE.format(p2=10, p5=0, c2=1, ce=0, compared=4, regressions=1)
    core.observe("shadow-1/split", first, 100.0)
    core.observe("shadow-1/split", second, 102.0)
    series = core.snapshot({})["figures"]["shadow-1/split"]["series"]
    assert series["candidate_weight"][-1] == (102.0, pytest.approx(0.1))
    assert series["diff_mismatch"][-1] == (102.0, 0.25)
