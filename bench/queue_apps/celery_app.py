"""Celery app on the benchmark's redis: ``celery -A bench.queue_apps.celery_app worker``."""

from __future__ import annotations

from celery import Celery

from bench.queue_apps import REDIS_URL, count

app = Celery("bench", broker=REDIS_URL)
app.conf.update(
    task_ignore_result=True,
    worker_prefetch_multiplier=64,
    worker_hijack_root_logger=False,
    broker_connection_retry_on_startup=True,
)


@app.task(name="noop")
def noop() -> None:
    count()
