"""RESP2, the Redis serialisation protocol, sans-IO: client commands in, upstream replies in.

Theory of operation (https://redis.io/docs/reference/protocol-spec/, RESP2). A client sends
a command as an array of bulk strings (``*2\\r\\n$3\\r\\nGET\\r\\n$1\\r\\nk\\r\\n``) or as an
inline line (``PING\\r\\n``); a server answers with one value: a simple string (``+``), an
error (``-``), an integer (``:``), a bulk string (``$``, ``$-1`` for nil) or an array
(``*``, nested). Every value says its own length, so replies are cut without knowing what
they answer.

:class:`CommandParser` returns :class:`Command` values (the arguments and the exact bytes,
which are forwarded unchanged) or :class:`Fault` values. A bulk string over the value limit
is read and thrown away and its command answered with an error, so the connection goes on;
a framing error (a bad length, a line past the limit) answers ``-ERR Protocol error`` and
closes, as Redis does. :class:`ReplyReader` cuts an upstream's bytes into raw replies.
"""

from __future__ import annotations

from dataclasses import dataclass

DEFAULT_MAX_VALUE_BYTES = (
    64 * 1024 * 1024
)  # a single value; Redis allows 512 MiB (proto-max-bulk-len)
DEFAULT_MAX_KEY_BYTES = 64 * 1024  # longer keys are a mistake; Redis itself allows 512 MiB
MAX_INLINE_BYTES = 64 * 1024  # Redis's PROTO_INLINE_MAX_SIZE
MAX_ARGS = 1024 * 1024  # Redis's own limit on a multibulk length is 1024*1024*1024
CRLF = b"\r\n"


@dataclass(slots=True)
class Command:
    """One client command.

    Attributes:
        args: the arguments; ``args[0]`` is the command name as sent.
        raw: the bytes of the command as received (an inline command is re-encoded).
    """

    args: list[bytes]
    raw: bytes

    @property
    def name(self) -> bytes:
        return self.args[0].upper()


@dataclass(frozen=True, slots=True)
class Fault:
    """A reply to send instead of forwarding (and whether the connection must close)."""

    reply: bytes
    close: bool = False


def error(message: str) -> bytes:
    """An error reply: ``-ERR message``."""
    return b"-ERR " + message.replace("\r", " ").replace("\n", " ").encode() + CRLF


def encode_command(args: list[bytes]) -> bytes:
    """A command as an array of bulk strings."""
    parts = [b"*%d\r\n" % len(args)]
    for arg in args:
        parts.append(b"$%d\r\n" % len(arg))
        parts.append(arg)
        parts.append(CRLF)
    return b"".join(parts)


def integer(value: int) -> bytes:
    return b":%d\r\n" % value


def bulk(value: bytes | None) -> bytes:
    if value is None:
        return b"$-1\r\n"
    return b"$%d\r\n%s\r\n" % (len(value), value)


def array(items: list[bytes]) -> bytes:
    """An array of already encoded values."""
    return b"*%d\r\n" % len(items) + b"".join(items)


class _Incomplete(Exception):
    pass


class _Framing(Exception):
    pass


@dataclass
class CommandParser:
    """Cut a client's bytes into commands.

    Args:
        max_value: largest bulk string (``-ERR value too large`` past it, connection kept).
        max_args: most arguments in one command.
    """

    max_value: int = DEFAULT_MAX_VALUE_BYTES
    max_args: int = MAX_ARGS
    # Unparsed bytes. Kept as ``bytes``, not a bytearray: slices of bytes are bytes, so the
    # arguments and the raw command come out without a copy to convert them, and a read
    # that holds whole commands (the usual case) is parsed in place.
    _buf: bytes = b""
    _skip: int = 0  # bytes of an oversized bulk still to drop
    _discard: int = 0  # elements of a refused command still to drop after the current one
    _refusing: bool = False
    _closed: bool = False

    def feed(self, data: bytes) -> list[Command | Fault]:
        """Add bytes from the client; return every command (or fault) now complete."""
        if self._closed:
            return []
        buf = self._buf + data if self._buf else bytes(data)
        out: list[Command | Fault] = []
        pos = 0
        size = len(buf)
        try:
            while True:
                if self._refusing:
                    pos = self._drop(buf, pos, size)
                    if self._refusing:
                        break
                    out.append(Fault(error(f"value too large (at most {self.max_value} bytes)")))
                    continue
                if pos >= size:
                    break
                if buf[pos] == 42:  # b"*"
                    try:
                        pos = self._multibulk(buf, pos, out)
                    except _Incomplete:
                        break
                else:
                    eol = buf.find(b"\n", pos)
                    if eol < 0:
                        if size - pos > MAX_INLINE_BYTES:
                            raise _Framing("too big inline request")
                        break
                    line = buf[pos:eol].rstrip(b"\r")
                    pos = eol + 1
                    args = line.split()
                    if args:  # an empty line is ignored, as Redis does
                        out.append(Command(args, encode_command(args)))
        except _Framing as exc:
            out.append(Fault(error(f"Protocol error: {exc}"), close=True))
            self._closed = True
            self._buf = b""
            return out
        self._buf = buf[pos:]
        return out

    def _line_int(self, buf: bytes, pos: int) -> tuple[int, int]:
        eol = buf.find(CRLF, pos)
        if eol < 0:
            if len(buf) - pos > 32:
                raise _Framing("length line too long")
            raise _Incomplete
        try:
            value = int(buf[pos + 1 : eol])
        except ValueError:
            raise _Framing(f"invalid length {buf[pos + 1 : eol]!r}") from None
        return value, eol + 2

    def _multibulk(self, buf: bytes, pos: int, out: list[Command | Fault]) -> int:
        # The hot path of the proxy: written out, with no helper calls per argument.
        start = pos
        count, pos = self._line_int(buf, pos)
        if count > self.max_args:
            raise _Framing("invalid multibulk length")
        if count <= 0:
            return pos  # "*0" and "*-1" are ignored, as Redis does
        args: list[bytes] = []
        append = args.append
        find = buf.find
        size = len(buf)
        max_value = self.max_value
        for index in range(count):
            if pos >= size:
                raise _Incomplete
            if buf[pos] != 36:  # b"$"
                raise _Framing(f"expected '$', got '{chr(buf[pos])}'")
            eol = find(CRLF, pos)
            if eol < 0:
                if size - pos > 32:
                    raise _Framing("length line too long")
                raise _Incomplete
            try:
                length = int(buf[pos + 1 : eol])
            except ValueError:
                raise _Framing(f"invalid length {buf[pos + 1 : eol]!r}") from None
            pos = eol + 2
            if length < 0:
                raise _Framing("invalid bulk length")
            if length > max_value:
                # Drop this bulk and the rest of the command as they arrive; answer an error.
                self._refusing = True
                self._skip = length + 2
                self._discard = count - index - 1
                return pos
            end = pos + length
            if end + 2 > size:
                raise _Incomplete
            if buf[end] != 13 or buf[end + 1] != 10:
                raise _Framing("bulk string not followed by CRLF")
            append(buf[pos:end])
            pos = end + 2
        out.append(Command(args, buf[start:pos]))
        return pos

    def _drop(self, buf: bytes, pos: int, size: int) -> int:
        """Drop the rest of a refused command; returns the new position."""
        while True:
            if self._skip:
                taken = min(self._skip, size - pos)
                self._skip -= taken
                pos += taken
                if self._skip:
                    return pos
            if not self._discard:
                self._refusing = False
                return pos
            if pos >= size:
                return pos
            if buf[pos] != 36:
                raise _Framing(f"expected '$', got '{chr(buf[pos])}'")
            try:
                length, pos = self._line_int(buf, pos)
            except _Incomplete:
                return pos
            if length < 0:
                raise _Framing("invalid bulk length")
            self._skip = length + 2
            self._discard -= 1


class UpstreamProtocolError(Exception):
    """An upstream sent bytes that are not RESP (the connection is unusable)."""


def value_end(buf: bytes | bytearray, pos: int) -> int:
    """The offset just past the RESP value starting at ``pos``, or -1 if it is incomplete.

    Raises:
        UpstreamProtocolError: the bytes are not RESP.
    """
    if pos >= len(buf):
        return -1
    eol = buf.find(CRLF, pos)
    if eol < 0:
        return -1
    kind = buf[pos]
    if kind in (43, 45, 58):  # + - :
        return eol + 2
    try:
        length = int(buf[pos + 1 : eol])
    except ValueError:
        raise UpstreamProtocolError(f"bad length line {bytes(buf[pos:eol])!r}") from None
    if kind == 36:  # $
        if length < 0:
            return eol + 2
        end = eol + 2 + length + 2
        return end if end <= len(buf) else -1
    if kind == 42:  # *
        pos = eol + 2
        for _ in range(max(length, 0)):
            pos = value_end(buf, pos)
            if pos < 0:
                return -1
        return pos
    raise UpstreamProtocolError(f"unknown reply type {chr(kind)!r}")


@dataclass
class ReplyReader:
    """Cut an upstream's bytes into raw replies."""

    _buf: bytes = b""
    _pos: int = 0

    def feed(self, data: bytes) -> None:
        rest = self._buf[self._pos :] if self._pos < len(self._buf) else b""
        self._buf = rest + data if rest else bytes(data)
        self._pos = 0

    def next_reply(self) -> bytes | None:
        """The next complete reply's bytes, or None until more arrive.

        Raises:
            UpstreamProtocolError: the bytes are not RESP.
        """
        start = self._pos
        end = value_end(self._buf, start)
        if end < 0:
            return None
        self._pos = end
        return self._buf[start:end]


def array_items(raw: bytes) -> list[bytes] | None:
    """The raw elements of an array reply, or None when ``raw`` is not an array."""
    if not raw.startswith(b"*"):
        return None
    eol = raw.index(CRLF)
    count = int(raw[1:eol])
    items: list[bytes] = []
    pos = eol + 2
    for _ in range(max(count, 0)):
        end = value_end(raw, pos)
        items.append(raw[pos:end])
        pos = end
    return items


def integer_value(raw: bytes) -> int | None:
    """The number of an integer reply, or None for any other reply."""
    if raw.startswith(b":"):
        return int(raw[1:-2])
    return None


def is_error(raw: bytes) -> bool:
    return raw.startswith(b"-")
