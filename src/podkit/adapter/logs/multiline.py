"""Join the lines of one multi-line record (sans-IO): tracebacks, stack traces, indented
continuations.

Theory of operation. Lines go in one at a time; complete records (lists of lines) come
out. A line continues the record before it when:

* it is indented (a space or a tab first): the ``File ...`` lines of a Python traceback,
  Java's ``\\tat ...`` and ``\\t... 5 more``, any wrapped message;
* it is ``Traceback (most recent call last):`` and the record before it has no traceback
  yet: ``logging.exception`` writes the traceback right after its line;
* it ends a traceback: the first unindented line after an indented one in a traceback is the
  exception (``ValueError: bad``); so are Python's chaining lines (``During handling of the
  above exception...``, ``The above exception was the direct cause...``);
* it begins with ``Caused by:`` or is a Java exception (``java.lang.IllegalStateException:
  ...``, a dotted class name ending in ``Exception``, ``Error`` or ``Throwable``: logback
  writes it after the line that logged it); ``Exception in thread "main" ...``, an
  uncaught exception, starts a record of its own;
* it is empty, inside a record (Python separates chained tracebacks with empty lines).

An empty line outside a record is no record, and empty lines that end a record are not
part of it: an empty line carries nothing to keep.

Any other line starts a new record. A record is also closed at ``max_lines`` lines (the rest
then starts a record of its own) so one runaway trace cannot hold memory. The shell calls
:meth:`MultilineJoiner.flush` at the end of the input and after a quiet spell, since the
last record is only known complete when the next one begins.
"""

from __future__ import annotations

import re
from typing import Final

from podkit.adapter.logs.parsers import TRACEBACK_START

DEFAULT_MAX_RECORD_LINES = 500  # Fluent Bit's multiline buffer is 2 MiB; a trace rarely tops 200
_CHAINED: Final = (
    "During handling of the above exception, another exception occurred:",
    "The above exception was the direct cause of the following exception:",
)
# The first characters of every line that may continue a record (indentation, "Traceback",
# "During handling", "The above exception", "Caused by"); any other line may still be a Java
# exception, which names Exception, Error or Throwable.
_CONTINUATION_FIRST: Final = frozenset(" \tTDC")
_JAVA_EXCEPTION = re.compile(
    r"^(?:Caused by: |Suppressed: )?"
    r"(?:[a-zA-Z_$][\w$]*\.)+[\w$]*(?:Exception|Error|Throwable)\b"
)


class MultilineJoiner:
    """Collect lines into records.

    Args:
        max_lines: the most lines one record holds.
    """

    def __init__(self, *, max_lines: int = DEFAULT_MAX_RECORD_LINES) -> None:
        if max_lines < 1:
            raise ValueError("max_lines must be at least 1")
        self.max_lines = max_lines
        self._lines: list[str] = []
        self._in_traceback = False  # after "Traceback", before its exception line
        self._had_traceback = False

    @property
    def pending(self) -> bool:
        return bool(self._lines)

    def _continues(self, line: str) -> bool:
        if not self._lines:
            return False
        if not line:
            return True
        first = line[0]
        if first in " \t":
            return True
        if line.startswith(TRACEBACK_START):
            return not self._had_traceback or self._lines[-1] in _CHAINED or not self._lines[-1]
        if self._in_traceback:
            return True  # the exception line that ends the traceback
        if line in _CHAINED:
            return self._had_traceback
        if line.startswith("Caused by:"):
            return True
        # A cheap necessary condition first: this runs for every line of every log.
        if "Exception" not in line and "Error" not in line and "Throwable" not in line:
            return False
        return _JAVA_EXCEPTION.match(line) is not None

    def feed(self, line: str) -> list[str] | None:
        """Take one line (without its newline).

        Returns:
            The record this line closed, if it closed one.
        """
        if (
            line
            and line[0] not in _CONTINUATION_FIRST
            and not self._in_traceback
            and "Exception" not in line
            and "Error" not in line
            and "Throwable" not in line
        ):  # the common case, decided cheaply: this line starts a record
            closed = self.flush() if self._lines else None
            self._lines = [line]
            return closed
        done: list[str] | None = None
        if not self._continues(line) or len(self._lines) >= self.max_lines:
            done = self.flush()
            if not line:  # an empty line starts no record
                return done
        if line.startswith(TRACEBACK_START):
            self._in_traceback = True
            self._had_traceback = True
        elif self._in_traceback and line and line[0] not in " \t":
            self._in_traceback = False
        self._lines.append(line)
        return done

    def flush(self) -> list[str] | None:
        """Close the record in progress (end of input, or nothing came for a while)."""
        if not self._lines:
            return None
        done = self._lines
        while done and not done[-1]:
            done.pop()
        self._lines = []
        self._in_traceback = False
        self._had_traceback = False
        return done or None
