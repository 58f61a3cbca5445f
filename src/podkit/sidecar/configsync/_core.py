"""Decisions of the config sync, without I/O: render, compare, and the health it reports.

Theory of operation. Each round fetches the source, renders it (a Jinja2 template over the
fetched JSON, or the bytes as they are), compares the result with the file on disk and only
when they differ validates, writes and notifies. Every stage can fail; a failure never touches
the destination (the last good file stays) and is remembered by :class:`SyncHealth`, which
answers when to try again (exponential backoff) and what ``/readyz`` says: not ready until the
first good file is in place, and not ready with the failing stage and error while failures
last. A notification that failed is owed: it is retried on the next round even when the
content did not change again.
"""

from __future__ import annotations

import enum
import json
from dataclasses import dataclass
from typing import Any

import jinja2

from podkit.errors import PodkitError
from podkit.sidecar._retry import Backoff


class Stage(enum.Enum):
    """Where a round failed (the label of ``configsync_failures_total``)."""

    FETCH = "fetch"
    PARSE = "parse"
    RENDER = "render"
    VALIDATE = "validate"
    WRITE = "write"
    NOTIFY = "notify"


class SyncFailure(PodkitError):
    """A round of the config sync failed at ``stage``; the destination was left as it was."""

    def __init__(self, stage: Stage, message: str) -> None:
        self.stage = stage
        self.message = message
        super().__init__(f"{stage.value}: {message}")


def load_template(text: str, *, name: str = "template") -> jinja2.Template:
    """Compile a Jinja2 template; an undefined variable is an error, not an empty string.

    Raises:
        SyncFailure: (stage ``render``) the template has a syntax error.
    """
    env = jinja2.Environment(
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True,
        autoescape=False,  # configuration files, not HTML
    )
    env.filters["tojson"] = lambda value, indent=None: json.dumps(value, indent=indent)
    try:
        return env.from_string(text)
    except jinja2.TemplateSyntaxError as exc:
        raise SyncFailure(Stage.RENDER, f"{name} line {exc.lineno}: {exc.message}") from exc


def render(body: bytes, template: jinja2.Template | None, *, source: str) -> bytes:
    """The destination's content for a fetched ``body``.

    Without a template the body is the content. With one, the body must be JSON; the
    template sees it as ``data`` and, when it is an object, each key as a variable, plus
    ``source`` (the source's description).

    Raises:
        SyncFailure: the body is not JSON (``parse``) or the template failed (``render``).
    """
    if template is None:
        return body
    try:
        data: Any = json.loads(body)
    except ValueError as exc:
        raise SyncFailure(Stage.PARSE, f"source did not return JSON: {exc}") from exc
    context: dict[str, Any] = {}
    if isinstance(data, dict):
        context.update({k: v for k, v in data.items() if isinstance(k, str)})
    context["data"] = data
    context["source"] = source
    try:
        return template.render(context).encode()
    except (
        jinja2.TemplateError,
        # A template's expressions run Python operations on the data (``{{ port + 1 }}``
        # with a string port): their errors are the template's failures too.
        TypeError,
        ValueError,
        ArithmeticError,
        LookupError,
        AttributeError,
    ) as exc:
        raise SyncFailure(Stage.RENDER, f"{exc.__class__.__name__}: {exc}") from exc


def substitute(argv: list[str], path: str) -> list[str]:
    """``argv`` with every ``{}`` replaced by ``path`` (the candidate or destination file)."""
    return [arg.replace("{}", path) for arg in argv]


@dataclass(frozen=True, slots=True)
class Readiness:
    ready: bool
    reason: str


class SyncHealth:
    """The outcome of rounds: when to retry, and what readiness reports.

    Args:
        backoff: delays between retries after failures.
    """

    def __init__(self, *, backoff: Backoff) -> None:
        self.backoff = backoff
        self.has_good_file = False
        self.notify_owed = False
        self.failures_in_a_row = 0
        self.last_failure: SyncFailure | None = None
        self.failing_since: float | None = None
        self.last_success: float | None = None

    def good_file(self) -> None:
        """The destination holds a validated rendering of the source."""
        self.has_good_file = True

    def success(self, now: float) -> None:
        """A round finished without failure."""
        self.failures_in_a_row = 0
        self.last_failure = None
        self.failing_since = None
        self.last_success = now

    def failure(self, failure: SyncFailure, now: float, *, rand: float) -> float:
        """A round failed. Returns the seconds to wait before the next attempt."""
        if self.failing_since is None:
            self.failing_since = now
        delay = self.backoff.delay(self.failures_in_a_row, rand=rand)
        self.failures_in_a_row += 1
        self.last_failure = failure
        return delay

    def readiness(self) -> Readiness:
        if not self.has_good_file:
            if self.last_failure is None:
                return Readiness(False, "waiting for the first good config")
            return Readiness(False, f"no good config yet: {self.last_failure}")
        if self.last_failure is not None:
            return Readiness(False, f"keeping the last good config: {self.last_failure}")
        return Readiness(True, "ready")
