"""The dashboard's decisions without I/O: the pods graph, metrics pages read, live figures.

Theory of operation. Every ``SCRAPE_INTERVAL`` the shell fetches ``GET /metrics`` of each
running component with an admin endpoint and hands the text, with the time it was read, to
:meth:`DashboardCore.observe`. The core parses the Prometheus text exposition format (0.0.4),
keeps the previous page of each container, and turns two pages into figures of the interval
between them — counters become rates, histogram buckets a p99 (the bucket interpolation of
Prometheus' ``histogram_quantile``) — and appends each figure to a bounded time series. The
page the browser shows is :meth:`DashboardCore.snapshot`: the graph, the supervisor's status
and the figures with their series, as plain JSON values.

Figures, from the metric names the components expose:

* ``rps`` and ``errors`` (the share of 5xx): the HTTP engine's ``*_http_responses_total``,
  ``whoami_requests_total``, or a worker's ``podkit_queue_items_processed_total``;
* ``p99`` (seconds): ``*_http_request_duration_seconds_bucket``;
* ``hit_ratio``: ``podkit_cache_requests_total`` hits over lookups in the interval;
* ``backends_ready`` and each backend's state and request share:
  ``podkit_balance_ready_backends``, ``podkit_balance_backend_state``,
  ``podkit_balance_requests_total``; a shard router's shards the same way, from
  ``podkit_shard_state`` and ``podkit_shard_requests_total`` (its requests/s and errors from
  those and ``podkit_shard_errors_total``);
* ``leader`` and ``token``: ``elect_is_leader``, ``elect_fencing_token``;
* ``depth`` and ``workers``: ``podkit_queue_backlog``, ``podkit_queue_workers``;
* a pipeline stage's worker: ``stage``, ``items_in`` and ``items_out`` (per second),
  ``pending``, ``stage_errors`` (failed attempts per second: retries and dead letters) and
  ``dead`` (dead letters so far), from ``podkit_pipeline_items_in_total``,
  ``podkit_pipeline_items_out_total``, ``podkit_pipeline_pending``,
  ``podkit_pipeline_retries_total`` and ``podkit_pipeline_dead_total``;
* a traffic split: ``arms`` (each arm's requests/s, share of 5xx and no answer, weight),
  ``candidate_weight`` (the share not sent to the primary) and ``diff_mismatch`` (compared
  answers with a difference that is not noise, over the interval; since start while the
  interval compared none), from ``podkit_split_requests_total``, ``podkit_split_weight``,
  ``podkit_split_diff_compared_total`` and ``podkit_split_diff_regressions_total``;
* an environment broker: ``environment``, ``connections`` and ``bytes_rate`` (bytes/s both
  ways, TCP mode), from ``podkit_broker_environment``, ``podkit_broker_{tcp,http}_connections``
  and ``podkit_broker_tcp_{received,sent}_bytes_total``.
"""

from __future__ import annotations

import math
import re
from collections import deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from podkit.pods.model import Discovery, PodFile

SCRAPE_INTERVAL = 2.0  # seconds between two reads of every /metrics page
HISTORY_SECONDS = 300.0  # the charts show the last five minutes
HISTORY_POINTS = int(HISTORY_SECONDS / SCRAPE_INTERVAL)
MAX_METRICS_BYTES = 4 << 20  # a /metrics page larger than this is not read
QUANTILE = 0.99
CHARTED = (
    "rps",
    "errors",
    "p99",
    "hit_ratio",
    "backends_ready",
    "depth",
    "workers",
    "token",
    "items_in",
    "items_out",
    "pending",
    "stage_errors",
    "candidate_weight",
    "diff_mismatch",
    "connections",
    "bytes_rate",
)
PRIMARY_ARM = "primary"  # the split's primary arm, when its metrics name one so

Labels = tuple[tuple[str, str], ...]
Samples = dict[tuple[str, Labels], float]

_SAMPLE = re.compile(
    r"^(?P<name>[a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(?P<labels>.*)\})?\s+(?P<value>\S+)(?:\s+\S+)?$"
)
_LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')
_TEMPLATE_POD = re.compile(r"\{pods\.([a-z0-9-]+)\.ip\}")


def parse_metrics(text: str) -> Samples:
    """Samples of a Prometheus text page: ``(name, sorted labels) → value``.

    Comments, malformed lines and values that are not numbers are skipped.
    """
    samples: Samples = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        match = _SAMPLE.match(line.strip())
        if match is None:
            continue
        try:
            value = float(match.group("value"))
        except ValueError:
            continue
        labels = tuple(
            sorted(
                (k, v.replace('\\"', '"').replace("\\n", "\n").replace("\\\\", "\\"))
                for k, v in _LABEL.findall(match.group("labels") or "")
            )
        )
        samples[(match.group("name"), labels)] = value
    return samples


def _select(samples: Samples, predicate: Any) -> Iterable[tuple[str, dict[str, str], float]]:
    for (name, labels), value in samples.items():
        if predicate(name):
            yield name, dict(labels), value


def _is_error(labels: Mapping[str, str]) -> bool:
    code = labels.get("code", labels.get("status", ""))
    return code.startswith("5") or code == "error"


def _requests(samples: Samples) -> tuple[float, float] | None:
    """(all, errors) of the request counters of a page, or None if it has none."""
    names = (
        lambda n: n.endswith("_http_responses_total"),
        lambda n: n == "whoami_requests_total",
        lambda n: n == "podkit_queue_items_processed_total",
        lambda n: n == "podkit_shard_requests_total",
    )
    for predicate in names:
        rows = list(_select(samples, predicate))
        if not rows:
            continue
        total = sum(v for _n, _l, v in rows)
        name = rows[0][0]
        if name == "podkit_queue_items_processed_total":
            failed = _sum(samples, "podkit_queue_items_failed_total")
            return total + failed, failed
        if name == "podkit_shard_requests_total":
            return total, _sum(samples, "podkit_shard_errors_total")
        return total, sum(v for _n, labels, v in rows if _is_error(labels))
    return None


def _sum(samples: Samples, name: str) -> float:
    return sum(v for _n, _l, v in _select(samples, lambda n: n == name))


def _buckets(samples: Samples) -> dict[float, float]:
    found: dict[float, float] = {}
    for _name, labels, value in _select(
        samples, lambda n: n.endswith("_http_request_duration_seconds_bucket")
    ):
        le = labels.get("le")
        if le is None:
            continue
        bound = math.inf if le == "+Inf" else float(le)
        found[bound] = found.get(bound, 0.0) + value
    return found


def histogram_quantile(q: float, buckets: Mapping[float, float]) -> float | None:
    """The ``q`` quantile of cumulative ``buckets`` (upper bound → count), or None if empty.

    Linear interpolation inside the bucket, as Prometheus' ``histogram_quantile``; a quantile
    in the ``+Inf`` bucket is the largest finite bound.
    """
    bounds = sorted(buckets)
    if not bounds or buckets[bounds[-1]] <= 0:
        return None
    rank = q * buckets[bounds[-1]]
    lower_bound, lower_count = 0.0, 0.0
    for bound in bounds:
        count = buckets[bound]
        if count >= rank:
            if math.isinf(bound):
                return lower_bound
            if count == lower_count:
                return bound
            return lower_bound + (bound - lower_bound) * (rank - lower_count) / (
                count - lower_count
            )
        lower_bound, lower_count = bound, count
    return lower_bound


def _gauge(samples: Samples, name: str) -> float | None:
    values = [v for n, _l, v in _select(samples, lambda n: n == name)]
    return sum(values) if values else None


def figures(previous: Samples | None, current: Samples, seconds: float) -> dict[str, Any]:
    """The figures of the interval between two pages of one component (see the module)."""
    out: dict[str, Any] = {}
    now_requests = _requests(current)
    if previous is not None and now_requests is not None and seconds > 0:
        before = _requests(previous) or (0.0, 0.0)
        total = max(0.0, now_requests[0] - before[0])
        errors = max(0.0, now_requests[1] - before[1])
        out["rps"] = total / seconds
        out["errors"] = errors / total if total else 0.0
    if previous is not None:
        now_b, before_b = _buckets(current), _buckets(previous)
        if now_b:
            delta = {b: max(0.0, c - before_b.get(b, 0.0)) for b, c in now_b.items()}
            p99 = histogram_quantile(QUANTILE, delta)
            if p99 is not None:
                out["p99"] = p99
    lookups = {
        labels.get("result", ""): v
        for _n, labels, v in _select(current, lambda n: n == "podkit_cache_requests_total")
    }
    if lookups:
        before_l = {
            labels.get("result", ""): v
            for _n, labels, v in _select(
                previous or {}, lambda n: n == "podkit_cache_requests_total"
            )
        }
        hits = lookups.get("hit", 0.0) - before_l.get("hit", 0.0)
        looked = sum(lookups.get(k, 0.0) - before_l.get(k, 0.0) for k in ("hit", "miss", "stale"))
        if looked > 0:
            out["hit_ratio"] = hits / looked
        elif (ratio := _gauge(current, "podkit_cache_hit_ratio")) is not None:
            out["hit_ratio"] = ratio
    for key, name in (
        ("backends_ready", "podkit_balance_ready_backends"),
        ("depth", "podkit_queue_backlog"),
        ("workers", "podkit_queue_workers"),
        ("token", "elect_fencing_token"),
    ):
        value = _gauge(current, name)
        if value is not None:
            out[key] = value
    leader = _gauge(current, "elect_is_leader")
    if leader is not None:
        out["leader"] = leader >= 1
    for kind, label in (("balance", "backend"), ("shard", "shard")):
        states = [
            (labels[label], labels.get("state", ""))
            for _n, labels, v in _select(current, lambda n, k=kind: n == _STATE_METRIC[k])
            if v >= 1 and label in labels
        ]
        if states:
            shares = _shares(previous, current, kind=kind, label=label)
            out["backends_of"] = kind  # a balancer's backends can be drained; shards cannot
            out["backends"] = [
                {"url": url, "state": state, "share": shares.get(url)}
                for url, state in sorted(states)
            ]
            break
    out.update(_pipeline_figures(previous, current, seconds))
    out.update(_split_figures(previous, current, seconds))
    out.update(_broker_figures(previous, current, seconds))
    return out


def _delta(previous: Samples | None, current: Samples, name: str) -> float | None:
    """How much the counter ``name`` (all its series) grew since ``previous`` (after a reset,
    from zero), or None without a previous page or the counter."""
    now = _gauge(current, name)
    if previous is None or now is None:
        return None
    before = _gauge(previous, name) or 0.0
    return now - before if now >= before else now


def _pipeline_figures(previous: Samples | None, current: Samples, seconds: float) -> dict[str, Any]:
    out: dict[str, Any] = {}
    stages = sorted(
        {
            labels["stage"]
            for _n, labels, _v in _select(current, lambda n: n.startswith("podkit_pipeline_"))
            if "stage" in labels
        }
    )
    if not stages:
        return out
    out["stage"] = ", ".join(stages)
    pending = _gauge(current, "podkit_pipeline_pending")
    if pending is not None:
        out["pending"] = pending
    dead = _gauge(current, "podkit_pipeline_dead_total")
    if dead is not None:
        out["dead"] = dead
    if seconds > 0:
        for key, name in (
            ("items_in", "podkit_pipeline_items_in_total"),
            ("items_out", "podkit_pipeline_items_out_total"),
        ):
            grew = _delta(previous, current, name)
            if grew is not None:
                out[key] = grew / seconds
        retries = _delta(previous, current, "podkit_pipeline_retries_total")
        died = _delta(previous, current, "podkit_pipeline_dead_total")
        if retries is not None or died is not None:
            out["stage_errors"] = ((retries or 0.0) + (died or 0.0)) / seconds
    return out


_Rows = dict[str, list[tuple[dict[str, str], float]]]


def _per_label(samples: Samples | None, name: str, label: str) -> _Rows:
    """The series of ``name`` grouped by the value of ``label``, in page order."""
    found: _Rows = {}
    for _n, labels, v in _select(samples or {}, lambda n: n == name):
        if label in labels:
            found.setdefault(labels[label], []).append((labels, v))
    return found


def _arm_totals(rows: list[tuple[dict[str, str], float]]) -> tuple[float, float]:
    return sum(v for _l, v in rows), sum(v for labels, v in rows if _is_error(labels))


def _split_figures(previous: Samples | None, current: Samples, seconds: float) -> dict[str, Any]:
    out: dict[str, Any] = {}
    weights = {
        arm: rows[0][1] for arm, rows in _per_label(current, "podkit_split_weight", "arm").items()
    }
    now = _per_label(current, "podkit_split_requests_total", "arm")
    if not weights and not now:
        return out
    if weights:
        primary = PRIMARY_ARM if PRIMARY_ARM in weights else next(iter(weights))
        out["candidate_weight"] = max(0.0, 1.0 - weights[primary])
    before = _per_label(previous, "podkit_split_requests_total", "arm")
    arms: list[dict[str, Any]] = []
    for arm in dict.fromkeys([*weights, *now]):
        row: dict[str, Any] = {"arm": arm, "weight": weights.get(arm)}
        if previous is not None and seconds > 0 and arm in now:
            all_now, errors_now = _arm_totals(now[arm])
            all_before, errors_before = _arm_totals(before.get(arm, []))
            total = all_now - all_before if all_now >= all_before else all_now
            errors = errors_now - errors_before if errors_now >= errors_before else errors_now
            row["rps"] = total / seconds
            row["errors"] = errors / total if total > 0 else 0.0
        arms.append(row)
    out["arms"] = arms
    compared = _gauge(current, "podkit_split_diff_compared_total")
    if compared is not None:
        regressions = _gauge(current, "podkit_split_diff_regressions_total") or 0.0
        new_compared = _delta(previous, current, "podkit_split_diff_compared_total")
        new_regressions = _delta(previous, current, "podkit_split_diff_regressions_total")
        if new_compared and new_regressions is not None:
            out["diff_mismatch"] = new_regressions / new_compared
        elif compared > 0:
            out["diff_mismatch"] = regressions / compared
    return out


def _broker_figures(previous: Samples | None, current: Samples, seconds: float) -> dict[str, Any]:
    out: dict[str, Any] = {}
    envs = [
        labels["environment"]
        for _n, labels, v in _select(current, lambda n: n == "podkit_broker_environment")
        if v >= 1 and "environment" in labels
    ]
    connections = _gauge(current, "podkit_broker_tcp_connections")
    if connections is None:
        connections = _gauge(current, "podkit_broker_http_connections")
    if not envs and _gauge(current, "podkit_broker_epoch") is None:
        return out
    out["environment"] = envs[0] if envs else None
    if connections is not None:
        out["connections"] = connections
    if seconds > 0:
        moved = [
            _delta(previous, current, f"podkit_broker_tcp_{way}_bytes_total")
            for way in ("received", "sent")
        ]
        if any(m is not None for m in moved):
            out["bytes_rate"] = sum(m or 0.0 for m in moved) / seconds
    return out


_STATE_METRIC = {"balance": "podkit_balance_backend_state", "shard": "podkit_shard_state"}
_REQUESTS_METRIC = {
    "balance": "podkit_balance_requests_total",
    "shard": "podkit_shard_requests_total",
}


def _shares(
    previous: Samples | None, current: Samples, *, kind: str, label: str
) -> dict[str, float]:
    """Each backend's (or shard's) share of the requests in the interval."""

    def per_backend(samples: Samples) -> dict[str, float]:
        found: dict[str, float] = {}
        for _n, labels, v in _select(samples, lambda n: n == _REQUESTS_METRIC[kind]):
            if label in labels:
                found[labels[label]] = found.get(labels[label], 0.0) + v
        return found

    now, before = per_backend(current), per_backend(previous or {})
    delta = {b: max(0.0, v - before.get(b, 0.0)) for b, v in now.items()}
    total = sum(delta.values())
    return {b: v / total for b, v in delta.items()} if total else {}


# -- the graph -------------------------------------------------------------------------------


def pods_graph(podfile: PodFile) -> dict[str, Any]:
    """Pods, their containers, and who sends traffic to whom (from the pod file).

    An edge ``A → B`` when a container of A follows B's replicas (a discovery reference) or
    names B's address (``{pods.B.ip}``). ``column`` places each pod after those that send it
    traffic, for a left-to-right drawing.
    """
    edges: list[dict[str, str]] = []
    for name, pod in podfile.pods.items():
        targets: list[str] = []
        for container in pod.containers.values():
            values: list[Any] = [*container.options.values(), *container.env.values()]
            values += list(container.args) + list(container.command) + list(container.run or [])
            for value in values:
                items = value if isinstance(value, list) else [value]
                for item in items:
                    if isinstance(item, Discovery):
                        targets.append(item.pod)
                    elif isinstance(item, str):
                        targets += _TEMPLATE_POD.findall(item)
        edges += [
            {"from": name, "to": target}
            for target in dict.fromkeys(targets)
            if target in podfile.pods and target != name
        ]
    column = dict.fromkeys(podfile.pods, 0)
    for _ in range(len(podfile.pods)):  # longest path, bounded so a cycle cannot loop
        changed = False
        for edge in edges:
            if column[edge["to"]] < column[edge["from"]] + 1:
                column[edge["to"]] = column[edge["from"]] + 1
                changed = True
        if not changed:
            break
    return {
        "pods": [
            {
                "name": name,
                "containers": list(pod.containers),
                "replicas": pod.replicas,
                "column": column[name],
                "components": {
                    cname: c.component or (c.run or [""])[0] for cname, c in pod.containers.items()
                },
            }
            for name, pod in podfile.pods.items()
        ],
        "edges": edges,
    }


# -- the state of the page -------------------------------------------------------------------


@dataclass(slots=True)
class _Target:
    previous: Samples | None = None
    at: float | None = None
    latest: dict[str, Any] = field(default_factory=dict)
    series: dict[str, deque[tuple[float, float]]] = field(default_factory=dict)
    error: str | None = None


class DashboardCore:
    """Figures and their history per container (``POD-R/CONTAINER``); no I/O, no clock.

    Args:
        podfile: the pod file, for the graph.
        history: points kept per series.
    """

    def __init__(self, podfile: PodFile, *, history: int = HISTORY_POINTS) -> None:
        self.graph = pods_graph(podfile)
        self.history = history
        self._targets: dict[str, _Target] = {}

    def observe(self, container: str, text: str, now: float) -> dict[str, Any]:
        """Take one ``/metrics`` page read at ``now`` (wall-clock seconds); return figures."""
        target = self._targets.setdefault(container, _Target())
        current = parse_metrics(text)
        seconds = now - target.at if target.at is not None else 0.0
        found = figures(target.previous, current, seconds)
        target.previous, target.at, target.error = current, now, None
        target.latest = found
        for key in CHARTED:
            value = found.get(key)
            if isinstance(value, int | float) and math.isfinite(value):
                series = target.series.setdefault(key, deque(maxlen=self.history))
                series.append((round(now, 3), float(value)))
        return found

    def failed(self, container: str, reason: str) -> None:
        """The page of ``container`` could not be read: its figures are kept, marked stale."""
        self._targets.setdefault(container, _Target()).error = reason

    def forget(self, keep: Iterable[str]) -> None:
        """Drop containers that are gone (scaled away)."""
        wanted = set(keep)
        for name in list(self._targets):
            if name not in wanted:
                del self._targets[name]

    def snapshot(self, status: Mapping[str, Any]) -> dict[str, Any]:
        """The page's data: the graph, the supervisor's status and every container's figures."""
        figures_: dict[str, Any] = {}
        for name, target in self._targets.items():
            figures_[name] = {
                "latest": target.latest,
                "error": target.error,
                "series": {k: list(v) for k, v in target.series.items()},
            }
        containers = [
            {
                key: row.get(key)
                for key in (
                    "pod",
                    "replica",
                    "container",
                    "state",
                    "pid",
                    "restarts",
                    "ready",
                    "exit_code",
                    "address",
                    "admin",
                )
            }
            for row in status.get("containers", [])
        ]
        return {
            "file": status.get("file"),
            "pid": status.get("pid"),
            "stopping": status.get("stopping", False),
            "replicas": status.get("replicas", {}),
            "ready_pods": status.get("ready_pods", []),
            "failed_pods": status.get("failed_pods", []),
            "problems": [
                {"container": p.get("container"), "message": p.get("message")}
                for p in status.get("problems", [])
            ][-5:],
            "graph": self.graph,
            "containers": containers,
            "figures": figures_,
        }
