"""podkit handlers: ``bench.queue_apps.podkit_app:noop`` and ``...:chaos``."""

from __future__ import annotations

import time

from bench.queue_apps import count
from podkit.queue import Item


def noop(item: Item) -> None:
    count()


def chaos(item: Item) -> None:
    time.sleep(0.001)  # a little work, so kills land mid-item
    count(item.body)
