"""Huey app on the benchmark's redis: ``huey_consumer bench.queue_apps.huey_app.huey``."""

from __future__ import annotations

from huey import RedisHuey

from bench.queue_apps import REDIS_URL, count

huey = RedisHuey("bench", url=REDIS_URL, results=False)


@huey.task()
def noop() -> None:
    count()
