"""Dramatiq actor on the benchmark's redis: ``dramatiq bench.queue_apps.dramatiq_app``."""

from __future__ import annotations

import dramatiq
from dramatiq.brokers.redis import RedisBroker

from bench.queue_apps import REDIS_URL, count

dramatiq.set_broker(RedisBroker(url=REDIS_URL))


@dramatiq.actor(max_retries=0)
def noop() -> None:
    count()
