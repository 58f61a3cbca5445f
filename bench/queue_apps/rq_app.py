"""RQ job: ``bench.queue_apps.rq_app.noop``."""

from __future__ import annotations

from bench.queue_apps import count


def noop() -> None:
    count()
