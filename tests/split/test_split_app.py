"""``podkit split`` on the engine against real upstreams on loopback (in the test's loop)."""

from __future__ import annotations

import asyncio
import itertools
import json
import time
from pathlib import Path

from prometheus_client import CollectorRegistry, generate_latest

from podkit.ambassador.split import RouteRule, StickyKey, TableSpec
from podkit.ambassador.split._config import ArmSpec
from podkit.ambassador.split._ramp import parse_rollback_rules
from podkit.ambassador.split.app import (
    RampOptions,
    ShadowOptions,
    SplitOptions,
    open_splitter,
)
from podkit.engines.http import HTTPServer, Request, Response
from podkit.runtime import Request as AdminRequest
from tests.split.conftest import JSONApp, client, serve_app, serve_splitter, wait_until


def table(primary: str, candidate: str, weight: float = 0.0, **kw: object) -> TableSpec:
    return TableSpec(
        (ArmSpec("primary", primary), ArmSpec("candidate", candidate)),
        {"candidate": weight},
        **kw,  # type: ignore[arg-type]
    )


async def test_route_rules_and_weights_send_requests_to_their_arm() -> None:
    prim, cand = JSONApp("p"), JSONApp("c")
    async with serve_app(prim) as pu, serve_app(cand) as cu:
        spec = table(pu, cu, 0.0, routes=(RouteRule.parse("header:X-Canary=1 -> candidate"),))
        async with serve_splitter(SplitOptions(table=spec)) as (splitter, port), client(port) as c:
            served = [(await c.get("/a"))[1]["x-served-by"] for _ in range(20)]
            assert set(served) == {"p"}
            status, headers, _ = await c.get("/a", headers={"X-Canary": "1"})
            assert (status, headers["x-served-by"]) == (200, "c")
            splitter.set_weights({"candidate": 1.0})
            assert (await c.get("/a"))[1]["x-served-by"] == "c"
            view = splitter.split_view()
            arms = {a["name"]: a for a in view["arms"]}
            assert arms["primary"]["requests"] == 20
            assert arms["candidate"]["requests"] == 2
            assert arms["candidate"]["status"]["2xx"] == 2
            assert arms["candidate"]["weight"] == "100%"


async def test_admin_weights_endpoint_changes_and_refuses_weights() -> None:
    async with (
        serve_app(JSONApp("p")) as pu,
        serve_app(JSONApp("c")) as cu,
        serve_splitter(SplitOptions(table=table(pu, cu))) as (splitter, _),
    ):

        async def post(body: bytes, target: str = "/split/weights") -> tuple[int, str]:
            answer = await splitter.admin_weights(
                AdminRequest("POST", target, [], body, ("127.0.0.1", 1))
            )
            assert isinstance(answer.body, bytes)
            return answer.status, answer.body.decode()

        status, body = await post(b'{"candidate": "20%"}')
        assert status == 200
        assert json.loads(body)["arms"][1]["weight"] == "20%"
        assert (await post(b"", "/split/weights?candidate=30%"))[0] == 200
        assert splitter.table.weights == {"candidate": 0.3}
        status, body = await post(b'{"candidate": "120%"}')
        assert status == 400
        assert "between 0% and 100%" in body
        status, body = await post(b'{"blue": "1%"}')
        assert (status, "no arm 'blue'" in body) == (400, True)
        assert (await post(b"[1]"))[0] == 400
        assert splitter.table.weights == {"candidate": 0.3}


async def test_per_arm_metrics_count_status_classes_and_latency() -> None:
    async with serve_app(JSONApp("p")) as pu, serve_app(JSONApp("c", status=503)) as cu:
        registry = CollectorRegistry()
        options = SplitOptions(table=table(pu, cu, 1.0))
        async with (
            open_splitter(options, registry=registry) as splitter,
            HTTPServer(splitter.handle, port=0) as server,
            client(server.port) as c,
        ):
            for _ in range(3):
                assert (await c.get())[0] == 503
            text = generate_latest(registry).decode()
    assert 'podkit_split_requests_total{arm="candidate",code="5xx"} 3.0' in text
    assert 'podkit_split_request_seconds_count{arm="candidate"} 3.0' in text
    assert 'podkit_split_weight{arm="candidate"} 1.0' in text


async def test_an_arm_that_is_down_answers_502_and_counts_as_error() -> None:
    async with serve_app(JSONApp("p")) as pu:
        spec = table(pu, "http://127.0.0.1:9", 1.0)
        async with serve_splitter(SplitOptions(table=spec)) as (splitter, port), client(port) as c:
            status, _, body = await c.get()
            assert status == 502
            assert body.startswith(b"candidate failed")
            assert splitter.traffic["candidate"].by_class[6] == 1


async def test_the_config_file_is_reread_when_it_changes(tmp_path: Path) -> None:
    async with serve_app(JSONApp("p")) as pu, serve_app(JSONApp("c")) as cu:
        config = tmp_path / "split.yaml"
        config.write_text(
            f"primary: {pu}\ncandidates: {{candidate: {cu}}}\nweights: {{candidate: 0%}}\n"
        )
        from podkit.ambassador.split import read_split_config

        options = SplitOptions(table=read_split_config(config), config=config)
        async with serve_splitter(options) as (splitter, port), client(port) as c:
            assert (await c.get())[1]["x-served-by"] == "p"
            config.write_text(
                f"primary: {pu}\ncandidates: {{candidate: {cu}}}\nweights: {{candidate: 100%}}\n"
                "routes: ['header:X-Old=1 -> primary']\n"
            )
            await wait_until(lambda: splitter.reloads == 1, what="config reloaded")
            assert (await c.get())[1]["x-served-by"] == "c"
            assert (await c.get(headers={"X-Old": "1"}))[1]["x-served-by"] == "p"
            config.write_text("primary: ftp://nowhere\n")
            await wait_until(lambda: splitter.reload_errors == 1, what="bad config refused")
            assert (await c.get())[1]["x-served-by"] == "c"
            assert splitter.split_view()["config"] == {
                "path": str(config),
                "reloads": 1,
                "errors": 1,
            }


async def test_sticky_by_client_ip_keeps_one_arm() -> None:
    async with serve_app(JSONApp("p")) as pu, serve_app(JSONApp("c")) as cu:
        spec = table(pu, cu, 0.5, sticky=StickyKey.parse("client-ip"))
        async with serve_splitter(SplitOptions(table=spec)) as (_, port), client(port) as c:
            served = {(await c.get())[1]["x-served-by"] for _ in range(30)}
            assert len(served) == 1


# -- shadow ----------------------------------------------------------------------------------


async def timed_requests(c, n: int, *, concurrency: int = 8) -> tuple[list[float], list[int]]:  # type: ignore[no-untyped-def]
    latencies: list[float] = []
    statuses: list[int] = []

    async def one() -> None:
        for _ in range(n // concurrency):
            started = time.monotonic()
            status, _, _ = await c.get("/item")
            latencies.append(time.monotonic() - started)
            statuses.append(status)

    async with asyncio.TaskGroup() as group:
        for _ in range(concurrency):
            group.create_task(one())
    return latencies, statuses


async def test_a_slow_shadow_never_holds_the_client_and_loses_nothing() -> None:
    prim, shadow_app = JSONApp("p"), JSONApp("s", delay=2.0)
    async with serve_app(prim) as pu, serve_app(shadow_app) as su:
        options = SplitOptions(
            table=TableSpec((ArmSpec("primary", pu),)),
            shadow=ShadowOptions(url=su, queue=50, concurrency=8, timeout=5.0),
        )
        async with serve_splitter(options) as (splitter, port), client(port) as c:
            latencies, statuses = await timed_requests(c, 400)
            assert statuses == [200] * 400
            # The shadow takes 2 s: any client that waited for it would have taken as long.
            assert max(latencies) < 1.0
            assert prim.hits == 400
            shadow = splitter.shadow
            assert shadow is not None
            counts = shadow.counts
            assert counts["dropped"] > 0  # 8 in flight and 50 queued cannot hold 400 copies
            assert counts["sent"] + counts["dropped"] + shadow.queue.qsize() <= 400
            await wait_until(lambda: shadow_app.hits >= 8, what="shadow copies arrive")


class Recorder:
    """An upstream that answers 200 at once and keeps what it was sent, and when."""

    def __init__(self) -> None:
        self.seen: list[tuple[float, str, str, dict[str, str]]] = []

    async def __call__(self, request: Request) -> Response:
        await request.read()
        fields = {n.decode().lower(): v.decode() for n, v in request.headers}
        self.seen.append((time.monotonic(), request.method, request.target, fields))
        return Response(200, [(b"Content-Type", b"text/plain")], b"ok\n")


async def test_copies_of_answered_requests_go_out_at_once_as_the_primary_got_them() -> None:
    prim, shadow_app = Recorder(), Recorder()
    async with serve_app(prim) as pu, serve_app(shadow_app) as su:
        options = SplitOptions(
            table=TableSpec((ArmSpec("primary", pu),)), shadow=ShadowOptions(url=su)
        )
        async with serve_splitter(options) as (splitter, port), client(port) as c:
            for n in range(20):
                await c.get(f"/item?n={n}", headers={"X-Trace": f"t{n}"})
                await wait_until(lambda n=n: len(shadow_app.seen) > n, what=f"copy {n}")  # type: ignore[misc]
            shadow = splitter.shadow
            assert shadow is not None
            # The first copy opens the shadow's connection (through the workers); the rest
            # are written on it from the primary's answer, without a task or the queue.
            assert shadow.sent_direct >= 18
            await wait_until(lambda: shadow.counts["answered"] == 20, what="copies answered")
            assert shadow.counts["sent"] == 20
            assert shadow.in_flight == 0
        for (_, pm, pt, pf), (_, sm, st, sf) in zip(prim.seen, shadow_app.seen, strict=True):
            assert (sm, st) == (pm, pt)
            assert sf["x-trace"] == pf["x-trace"]
            assert sf.get("x-forwarded-for") == pf.get("x-forwarded-for") == "127.0.0.1"


async def test_the_workers_space_their_sends_by_the_maximum_rate() -> None:
    prim, shadow_app = Recorder(), Recorder()
    async with serve_app(prim) as pu, serve_app(shadow_app) as su:
        options = SplitOptions(
            table=TableSpec((ArmSpec("primary", pu),)),
            # Bodies go through the queue and the workers; 20/s: one send every 50 ms.
            shadow=ShadowOptions(url=su, unsafe=True, concurrency=8, max_rate=20.0),
        )
        async with serve_splitter(options) as (_, port), client(port) as c:
            await asyncio.gather(*(c.get("/w", method="POST", body=b"x") for _ in range(6)))
            await wait_until(lambda: len(shadow_app.seen) == 6, what="six copies")
        times = [t for t, *_ in shadow_app.seen]
        gaps = [b - a for a, b in itertools.pairwise(times)]
        assert min(gaps) >= 0.045, gaps  # eight free workers, yet one send per 50 ms


async def test_copies_beyond_the_maximum_rate_are_dropped_not_queued() -> None:
    prim, shadow_app = Recorder(), Recorder()
    async with serve_app(prim) as pu, serve_app(shadow_app) as su:
        options = SplitOptions(
            table=TableSpec((ArmSpec("primary", pu),)),
            shadow=ShadowOptions(url=su, concurrency=1, max_rate=1.0),
        )
        async with serve_splitter(options) as (splitter, port), client(port) as c:
            for _ in range(10):
                assert (await c.get("/r"))[0] == 200
            shadow = splitter.shadow
            assert shadow is not None
            await wait_until(lambda: shadow.in_flight == 0 and shadow.queue.empty())
            assert shadow.counts["sent"] <= 2
            assert shadow.counts["sent"] + shadow.counts["dropped"] == 10
            assert len(prim.seen) == 10


async def test_a_shadow_that_is_down_changes_nothing_for_clients() -> None:
    prim = JSONApp("p")
    async with serve_app(prim) as pu:
        options = SplitOptions(
            table=TableSpec((ArmSpec("primary", pu),)),
            shadow=ShadowOptions(url="http://127.0.0.1:9", timeout=1.0),
        )
        async with serve_splitter(options) as (splitter, port), client(port) as c:
            _, statuses = await timed_requests(c, 200)
            assert statuses == [200] * 200
            shadow = splitter.shadow
            assert shadow is not None
            # Each copy fails, or is dropped when the burst outran the shadow's bound or rate.
            await wait_until(
                lambda: shadow.counts["failed"] + shadow.counts["dropped"] == 200,
                what="copies failed or dropped",
            )
            assert shadow.counts["failed"] > 0
            assert shadow.counts["answered"] == 0


async def test_unsafe_methods_large_bodies_and_sampling_are_skipped_and_counted() -> None:
    prim, shadow_app = JSONApp("p"), JSONApp("s")
    async with serve_app(prim) as pu, serve_app(shadow_app) as su:
        options = SplitOptions(
            table=TableSpec((ArmSpec("primary", pu),)),
            shadow=ShadowOptions(url=su, max_body=10),
        )
        async with serve_splitter(options) as (splitter, port), client(port) as c:
            assert (await c.get("/x", method="POST", body=b"hi"))[0] == 200
            assert splitter.shadow is not None
            assert splitter.shadow.counts["skipped-unsafe"] == 1
        options = SplitOptions(
            table=TableSpec((ArmSpec("primary", pu),)),
            shadow=ShadowOptions(url=su, max_body=10, unsafe=True),
        )
        async with serve_splitter(options) as (splitter, port), client(port) as c:
            assert (await c.get("/x", method="POST", body=b"small"))[0] == 200
            assert (await c.get("/x", method="POST", body=b"x" * 11))[0] == 200
            shadow = splitter.shadow
            assert shadow is not None
            await wait_until(lambda: shadow.counts["answered"] == 1, what="small body mirrored")
            assert shadow.counts["skipped-body"] == 1
            assert shadow_app.bodies == [b"small"]
            assert prim.bodies[-2:] == [b"small", b"x" * 11]
        options = SplitOptions(
            table=TableSpec((ArmSpec("primary", pu),)), shadow=ShadowOptions(url=su, rate=0.0)
        )
        async with serve_splitter(options) as (splitter, port), client(port) as c:
            await c.get()
            assert splitter.shadow is not None
            assert splitter.shadow.counts["skipped-sampled-out"] == 1


# -- diff ------------------------------------------------------------------------------------


async def test_diff_reports_a_changed_field_by_path_and_a_timestamp_as_noise() -> None:
    clock = iter(range(10**6))

    def stamped() -> dict[str, object]:
        return {"ts": next(clock), "price": 10}

    prim = JSONApp("x", extra=stamped)
    prim_b = JSONApp("x", extra=stamped)
    shadow_app = JSONApp("x", extra=lambda: {"ts": next(clock), "price": 12})
    async with serve_app(prim) as pu, serve_app(prim_b) as bu, serve_app(shadow_app) as su:
        options = SplitOptions(
            table=TableSpec((ArmSpec("primary", pu),)),
            shadow=ShadowOptions(url=su),
            diff=True,
            primary_b=bu,
        )
        async with serve_splitter(options) as (splitter, port), client(port) as c:
            for _ in range(10):
                assert (await c.get("/item"))[0] == 200
            board = splitter.board
            assert board is not None
            await wait_until(lambda: board.compared == 10, what="10 comparisons")
            answer = await splitter.admin_diff(AdminRequest("GET", "/diff", [], b"", ("", 0)))
            assert isinstance(answer.body, bytes)
            view = json.loads(answer.body)
    route = view["routes"]["GET /item"]
    assert route["compared"] == 10
    assert route["paths"]["$.price"]["regressions"] == 10
    assert route["paths"]["$.ts"]["noise"] == 10
    assert route["paths"]["$.ts"]["regressions"] == 0
    assert 0 < len(route["examples"]) <= 5
    assert route["examples"][0]["paths"] == ["$.price"]


# -- ramp ------------------------------------------------------------------------------------


async def drive(c, stop: asyncio.Event) -> None:  # type: ignore[no-untyped-def]
    while not stop.is_set():
        await c.get("/r")


async def ramp_run(
    candidate: JSONApp, *, until: str, rules: str = "5xx>1%,p99>1.5x"
) -> tuple[list[str], dict[str, object]]:
    async with serve_app(JSONApp("p")) as pu, serve_app(candidate) as cu:
        options = SplitOptions(
            table=table(pu, cu, 0.0),
            ramp=RampOptions(
                steps=(0.1, 0.5, 1.0),
                every=0.4,
                rules=parse_rollback_rules(rules),
                min_requests=10,
            ),
        )
        async with serve_splitter(options) as (splitter, port), client(port) as c:
            stop = asyncio.Event()
            ramp = splitter.ramp
            assert ramp is not None
            async with asyncio.TaskGroup() as group:
                for _ in range(4):
                    group.create_task(drive(c, stop))
                try:
                    await wait_until(lambda: ramp.state.value == until, timeout=20, what=until)
                except AssertionError as exc:
                    stats = ramp.statistics(splitter.clock())
                    traffic = [(k, v.as_json()) for k, v in splitter.traffic.items()]
                    raise AssertionError(f"{exc}: {stats} {traffic}") from None
                finally:
                    stop.set()
            view = splitter.split_view()
            return [d.action for d in ramp.trace], view


async def test_a_healthy_candidate_ramps_to_100_percent() -> None:
    # The 5xx rule only: both arms share this test's event loop on a shared machine, where
    # the p99 of a 0.4 s window is noise (the p99 rule is tested on the core).
    actions, view = await ramp_run(JSONApp("c"), until="complete", rules="5xx>1%")
    assert actions[0] == "start"
    assert actions[-1] == "complete"
    assert "rollback" not in actions
    arms = {a["name"]: a for a in view["arms"]}  # type: ignore[index]
    assert arms["candidate"]["weight"] == "100%"


async def test_a_candidate_answering_500_is_rolled_back_within_one_window() -> None:
    actions, view = await ramp_run(JSONApp("c", status=500), until="rolled-back")
    assert actions == ["start", "rollback"]  # no window ended before the rollback
    ramp = view["ramp"]
    assert ramp["state"] == "rolled-back"  # type: ignore[index]
    assert "5xx" in ramp["reason"]  # type: ignore[index]
    arms = {a["name"]: a for a in view["arms"]}  # type: ignore[index]
    assert arms["candidate"]["weight"] == "0%"
    assert ramp["trace"][-1]["rules"] == ["5xx"]  # type: ignore[index]


async def test_client_ip_stickiness_believes_a_trusted_proxy() -> None:
    from podkit.serving.balance import parse_networks

    async with serve_app(JSONApp("p")) as pu, serve_app(JSONApp("c")) as cu:
        spec = table(pu, cu, 0.5, sticky=StickyKey.parse("client-ip"))
        options = SplitOptions(table=spec, trusted_proxies=parse_networks(["127.0.0.0/8"]))
        async with serve_splitter(options) as (_, port), client(port) as c:
            seen: dict[str, set[str]] = {}
            for i in range(40):
                for _ in range(2):
                    _, headers, _ = await c.get(headers={"X-Forwarded-For": f"203.0.113.{i}"})
                    seen.setdefault(str(i), set()).add(headers["x-served-by"])
    assert all(len(arms) == 1 for arms in seen.values())
    assert {arm for arms in seen.values() for arm in arms} == {"p", "c"}


async def test_a_candidate_whose_answers_differ_is_rolled_back_on_the_diff_rule() -> None:
    async with serve_app(JSONApp("p")) as pu, serve_app(JSONApp("c")) as cu:
        options = SplitOptions(
            table=table(pu, cu, 0.0),
            shadow=ShadowOptions(url=cu),
            diff=True,
            ramp=RampOptions(
                steps=(0.1, 1.0),
                every=60.0,
                rules=parse_rollback_rules("diff>0.5%"),
                min_requests=10,
            ),
        )
        async with serve_splitter(options) as (splitter, port), client(port) as c:
            ramp = splitter.ramp
            assert ramp is not None
            await wait_until(lambda: ramp.started, what="ramp started")
            for _ in range(40):
                await c.get("/item")
                if ramp.state.value == "rolled-back":
                    break
            await wait_until(lambda: ramp.state.value == "rolled-back", what="rollback")
            assert "diff mismatch" in ramp.reason
            assert splitter.table.weights == {"candidate": 0.0}
