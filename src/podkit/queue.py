"""Work queues: a source lists work, a queue holds it, workers process it (at least once).

The public API of the work queue pattern; the implementation lives in
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

__all__ = [
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
    "open_queue",
]
