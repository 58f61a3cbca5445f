"""Work queues: a source lists work, a queue holds it, workers process it (at least once).

The public API of the work queue pattern (:class:`Queue` for asyncio code,
:class:`SyncQueue` for code without an event loop); the implementation lives in
:mod:`podkit.batch.queue` and the stores in :mod:`podkit.backends`.
"""

from podkit.backends.queues import PutResult, QueueStats
from podkit.batch.queue.client import (
    DEFAULT_KEY_TTL,
    DEFAULT_MAX_ITEM_BYTES,
    DEFAULT_VISIBILITY_TIMEOUT,
    DeadItem,
    Item,
    PutRequest,
    Queue,
    Receipt,
    open_queue,
)
from podkit.batch.queue.states import (
    DEFAULT_MAX_ATTEMPTS,
    IllegalItemTransition,
    ItemEvent,
    ItemState,
    RetryPolicy,
)
from podkit.batch.queue.sync import DEFAULT_CALL_TIMEOUT, SyncQueue, open_sync_queue

__all__ = [
    "DEFAULT_CALL_TIMEOUT",
    "DEFAULT_KEY_TTL",
    "DEFAULT_MAX_ATTEMPTS",
    "DEFAULT_MAX_ITEM_BYTES",
    "DEFAULT_VISIBILITY_TIMEOUT",
    "DeadItem",
    "IllegalItemTransition",
    "Item",
    "ItemEvent",
    "ItemState",
    "PutRequest",
    "PutResult",
    "Queue",
    "QueueStats",
    "Receipt",
    "RetryPolicy",
    "SyncQueue",
    "open_queue",
    "open_sync_queue",
]
