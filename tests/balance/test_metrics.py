"""Per-backend traffic metrics: plain counters on the hot path, Prometheus families on scrape."""

from __future__ import annotations

from prometheus_client import CollectorRegistry
from prometheus_client.exposition import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from podkit.engines.errors import UpstreamConnectError
from podkit.engines.http import Response, UpstreamPool
from podkit.serving.balance import BackendSpec
from podkit.serving.balance.app import BalanceOptions, Balancer

A, B = "http://127.0.0.1:9001", "http://127.0.0.1:9002"


def samples(registry: CollectorRegistry) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    text = generate_latest(registry).decode()
    found = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            found[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return found


async def test_answers_errors_and_latency_are_exported_per_backend() -> None:
    registry = CollectorRegistry()
    options = BalanceOptions(backends=(BackendSpec(A), BackendSpec(B)))
    async with UpstreamPool() as upstreams, UpstreamPool() as probes:
        clock = iter([10.0, 10.0004, 11.0, 11.2, 12.0, 12.0]).__next__
        balancer = Balancer(
            options, upstreams=upstreams, probes=probes, registry=registry, clock=clock
        )
        a, b = balancer.pool.get(A), balancer.pool.get(B)
        assert a is None
        assert b is None
        balancer.clock = lambda: 0.0
        balancer.reload()
        balancer.clock = clock
        a, b = balancer.pool.get(A), balancer.pool.get(B)
        assert a is not None
        assert b is not None
        balancer.pool.begin(a)
        balancer._attempt_answered(a, Response(200, [], b"ok"), balancer.clock())
        balancer.pool.begin(a)
        balancer._attempt_answered(a, Response(503, [], b"no"), balancer.clock())
        balancer.pool.begin(b)
        balancer._attempt_failed(b, UpstreamConnectError("refused", upstream="b"))
    found = samples(registry)
    code = "podkit_balance_requests_total"
    assert found[(code, (("backend", A), ("code", "2xx")))] == 1
    assert found[(code, (("backend", A), ("code", "5xx")))] == 1
    assert found[(code, (("backend", A), ("code", "error")))] == 0
    assert found[(code, (("backend", B), ("code", "error")))] == 1
    errors = "podkit_balance_errors_total"
    assert found[(errors, (("backend", A), ("kind", "server_error")))] == 1
    assert found[(errors, (("backend", B), ("kind", "connect_failure")))] == 1
    hist = "podkit_balance_request_seconds"
    assert found[(f"{hist}_count", (("backend", A),))] == 2
    assert abs(found[(f"{hist}_sum", (("backend", A),))] - 0.2004) < 1e-9
    # 0.4 ms lands in the first bucket (le 0.0005); 200 ms in le 0.25 and above
    assert found[(f"{hist}_bucket", (("backend", A), ("le", "0.0005")))] == 1
    assert found[(f"{hist}_bucket", (("backend", A), ("le", "0.1")))] == 1
    assert found[(f"{hist}_bucket", (("backend", A), ("le", "0.25")))] == 2
    assert found[(f"{hist}_bucket", (("backend", A), ("le", "+Inf")))] == 2
    assert (f"{hist}_count", (("backend", B),)) in found  # listed, with no answers
    assert found[(f"{hist}_count", (("backend", B),))] == 0
