"""The metrics adapter's sans-IO parts: the page, statsd lines and maps, JSON maps, and the
built-in parsers on text captured from the real servers."""

from __future__ import annotations

import asyncio
import socket
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from podkit.adapter.metrics import (
    MetricsAdapter,
    MetricsMap,
    MetricsPage,
    StatsdAggregator,
    StatsdMap,
    make_source,
    map_document,
    parse_line,
    parse_output,
    sanitize_name,
)
from podkit.errors import ConfigError
from tests.adapter.conftest import promtool_check, samples


def test_a_page_groups_samples_by_family_and_escapes_label_values() -> None:
    page = MetricsPage()
    page.add("a_total", 1, type="counter", help="A.", labels={"x": 'q"uo\\te\nnl'})
    page.add("b", 2.5)
    page.add("a_total", 3, type="counter", labels={"x": "y"})
    assert not page.add("b", 1, type="counter")  # another type for the same name is refused
    text = page.render()
    assert text == (
        b"# HELP a_total A.\n# TYPE a_total counter\n"
        b'a_total{x="q\\"uo\\\\te\\nnl"} 1\na_total{x="y"} 3\n'
        b"# HELP b b\n# TYPE b gauge\nb 2.5\n"
    )
    promtool_check(text)


@given(st.text(max_size=30))
def test_any_text_sanitizes_to_a_valid_metric_name(text: str) -> None:
    page = MetricsPage()
    assert page.add(sanitize_name(text), 1)


def test_statsd_lines_of_every_type_with_rates_and_dogstatsd_tags() -> None:
    assert parse_line("api.hits:3|c|@0.5|#env:prod,zone:a") is not None
    agg = StatsdAggregator()
    for line in [
        "api.hits:3|c|@0.5|#env:prod",
        "api.hits:1|c|#env:prod",
        "queue.depth:10|g",
        "queue.depth:-3|g",
        "db.query:250|ms",
        "db.query:4|ms",
        "payload.size:2|h",
        "users:42|s",
        "garbage",
    ]:
        agg.feed_line(line)
    page = MetricsPage()
    agg.render_into(page)
    text = page.render()
    promtool_check(text)
    values = samples(text)
    assert values['api_hits_total{env="prod"}'] == 7
    assert values["queue_depth"] == 7
    assert values["db_query_count"] == 2
    assert values["db_query_sum"] == pytest.approx(0.254)
    assert values['db_query_bucket{le="0.005"}'] == 1
    assert values['db_query_bucket{le="0.25"}'] == 2
    assert values['payload_size_bucket{le="+Inf"}'] == 1
    assert agg.stats.bad_lines == 2  # the set and the garbage


def test_statsd_map_turns_dotted_names_into_labels_and_drops() -> None:
    mapping = StatsdMap.model_validate(
        {
            "mappings": [
                {"match": "debug.*", "action": "drop"},
                {
                    "match": "shop.*.requests.*",
                    "name": "shop_requests",
                    "labels": {"service": "$1", "outcome": "$2"},
                    "help": "Requests by service and outcome.",
                },
            ],
            "buckets": [0.1, 1],
        }
    )
    agg = StatsdAggregator(mapping)
    agg.feed_line("shop.cart.requests.ok:1|c")
    agg.feed_line("shop.cart.requests.ok:1|c")
    agg.feed_line("shop.pay.requests.error:1|c|#region:eu")
    agg.feed_line("debug.x:1|c")
    page = MetricsPage()
    agg.render_into(page, prefix="acme")
    text = page.render()
    promtool_check(text)
    values = samples(text)
    assert values['acme_shop_requests_total{outcome="ok",service="cart"}'] == 2
    assert values['acme_shop_requests_total{outcome="error",region="eu",service="pay"}'] == 1
    assert agg.stats.dropped_by_map == 1


def test_statsd_series_are_bounded() -> None:
    agg = StatsdAggregator(max_series=3)
    for n in range(10):
        agg.feed_line(f"m{n}:1|g")
    assert agg.series_count() == 3
    assert agg.stats.dropped_over_limit == 7


def test_json_map_paths_wildcards_keys_and_literals() -> None:
    mapping = MetricsMap.model_validate(
        {
            "metrics": [
                {"name": "up_flag", "path": "ok"},
                {"name": "temp", "path": "sensors[*]", "value": "c", "labels": {"id": "{id}"}},
                {"name": "depth", "path": "q.*", "labels": {"q": "{@key}", "dc": "x"}},
                {"name": "text", "path": "version"},
            ]
        }
    )
    document = {
        "ok": True,
        "sensors": [{"id": "s1", "c": 21.5}, {"id": "s2", "c": "19"}],
        "q": {"a": 1, "b": 2},
        "version": "v1.2",
    }
    page = MetricsPage()
    skipped = map_document(page, document, mapping, prefix="")
    values = samples(page.render())
    assert values["up_flag"] == 1
    assert values['temp{id="s1"}'] == 21.5
    assert values['temp{id="s2"}'] == 19
    assert values['depth{dc="x",q="b"}'] == 2
    assert skipped == 1  # "v1.2" is not a number


def test_command_output_as_key_value_lines() -> None:
    assert parse_output("# comment\nqueue.depth=4\nworkers: 2\n") == {
        "queue.depth": "4",
        "workers": "2",
    }
    mapping = MetricsMap.model_validate({"metrics": [{"name": "q", "path": "queue.depth"}]})
    page = MetricsPage()
    map_document(page, parse_output("queue.depth=4"), mapping, prefix="job")
    assert samples(page.render())["job_q"] == 4


def test_a_bad_map_file_names_the_file_and_field(tmp_path: Path) -> None:
    path = tmp_path / "map.yaml"
    path.write_text("metrics:\n  - name: 9bad\n    path: x\n")
    with pytest.raises(ConfigError, match=r"map\.yaml: metrics\[0\]\.name: "):
        make_source("json", "http://127.0.0.1:1/", map_file=str(path), max_series=10)
    with pytest.raises(ConfigError, match="needs --map"):
        make_source("command", "true", map_file=None, max_series=10)


async def test_statsd_over_udp_shows_on_the_page() -> None:
    source = make_source("statsd", "127.0.0.1:0", map_file=None, max_series=100)
    await source.start()
    try:
        adapter = MetricsAdapter(source)
        port = source.port  # type: ignore[attr-defined]
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.sendto(b"app.logins:1|c\napp.logins:2|c\napp.latency:12|ms", ("127.0.0.1", port))
        deadline = asyncio.get_running_loop().time() + 5
        while True:
            values = samples((await adapter.scrape()).render())
            if values.get("app_logins_total") == 3 or asyncio.get_running_loop().time() > deadline:
                break
            await asyncio.sleep(0.02)
        page = (await adapter.scrape()).render()
        promtool_check(page)
        assert values["statsd_up"] == 1
        assert values["app_logins_total"] == 3
        assert values["app_latency_count"] == 1
        assert values["statsd_lines_total"] == 3
    finally:
        await source.aclose()


class _SlowSource:
    """A source that counts its collections and takes a while (a stand-in for a server)."""

    namespace = "slow"
    description = "slow source"
    mapped = False

    def __init__(self) -> None:
        self.collections = 0
        self.release = asyncio.Event()

    async def start(self) -> None:
        return None

    async def aclose(self) -> None:
        return None

    async def collect(self, page: MetricsPage, prefix: str, timeout: float) -> None:
        self.collections += 1
        await self.release.wait()
        page.add(f"{prefix}_things", self.collections)


async def test_concurrent_scrapes_share_one_collection_and_the_next_one_is_fresh() -> None:
    source = _SlowSource()
    adapter = MetricsAdapter(source, timeout=5)
    scrapes = [asyncio.ensure_future(adapter.scrape()) for _ in range(10)]
    source.release.set()  # the scrapes have not run yet: they all find the first in flight
    pages = await asyncio.gather(*scrapes)
    assert source.collections == 1
    assert all(samples(page.render())["slow_things"] == 1 for page in pages)
    page = await adapter.scrape()
    assert source.collections == 2
    assert samples(page.render())["slow_things"] == 2


async def test_a_command_with_too_much_output_or_a_failure_is_down_with_the_reason(
    tmp_path: Path,
) -> None:
    map_file = tmp_path / "map.yaml"
    map_file.write_text("metrics:\n  - {name: n, path: n}\n")
    big = make_source("command", "yes n=1 | head -c 100000", map_file=str(map_file), max_bytes=1000)
    values = samples((await MetricsAdapter(big).scrape()).render())
    assert values["command_up"] == 0
    assert values['command_scrape_error{reason="output larger than 1000 bytes"}'] == 1
    failing = make_source("command", "echo n=1; echo no db >&2; exit 4", map_file=str(map_file))
    values = samples((await MetricsAdapter(failing).scrape()).render())
    assert values['command_scrape_error{reason="exit status 4: no db"}'] == 1
    fine = make_source("command", "echo n=7", map_file=str(map_file))
    assert samples((await MetricsAdapter(fine).scrape()).render())["n"] == 7
