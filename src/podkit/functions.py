"""Functions and event-driven processing: ``podkit functions serve app.py``.

Decorate plain or ``async`` functions with a trigger (``on_http``, ``on_event``, ``on_queue``,
``on_timer``) and wrap them with behaviour (``validate``, ``defaults``, ``timeout``,
``retry``, ``rate_limit``, ``idempotent``); ``emit`` publishes CloudEvents to the functions
subscribed to them, at least once, through the work queue. The implementation lives in
:mod:`podkit.serving.functions`.
"""

from podkit.serving.functions._cloudevents import CloudEvent
from podkit.serving.functions._context import Emitted, emit
from podkit.serving.functions._errors import (
    FunctionError,
    FunctionTimeout,
    InProgress,
    InvalidInput,
    Overloaded,
    RateLimited,
)
from podkit.serving.functions._model import (
    FunctionApp,
    FunctionSpec,
    load_app,
    on_event,
    on_http,
    on_queue,
    on_timer,
)
from podkit.serving.functions._request import FunctionRequest, FunctionResponse
from podkit.serving.functions._runner import FunctionRunner
from podkit.serving.functions._wrappers import (
    defaults,
    idempotent,
    rate_limit,
    retry,
    timeout,
    validate,
)

__all__ = [
    "CloudEvent",
    "Emitted",
    "FunctionApp",
    "FunctionError",
    "FunctionRequest",
    "FunctionResponse",
    "FunctionRunner",
    "FunctionSpec",
    "FunctionTimeout",
    "InProgress",
    "InvalidInput",
    "Overloaded",
    "RateLimited",
    "defaults",
    "emit",
    "idempotent",
    "load_app",
    "on_event",
    "on_http",
    "on_queue",
    "on_timer",
    "rate_limit",
    "retry",
    "timeout",
    "validate",
]
