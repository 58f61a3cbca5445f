"""The memcached text protocol, sans-IO: client requests in, upstream replies in.

Theory of operation (memcached's ``protocol.txt``). A request is one line of space-separated
tokens ending in ``\\r\\n``; storage commands (``set add replace append prepend cas``) are
followed by a data block of exactly ``<bytes>`` bytes and ``\\r\\n``. Replies are one line
(``STORED``, ``NOT_FOUND``, a number, ``VERSION x``...), except retrievals (``get gets gat
gats``), which answer ``VALUE <key> <flags> <bytes> [<cas>]`` items, each with its data
block, ended by ``END``. An upstream reply carries no request id, so its shape is known only
from the request it answers: the reader is told which kind of reply comes next.

:class:`RequestParser` takes the bytes a client sends, in pieces of any size, and returns
:class:`Request` values or :class:`Fault` values (a reply to send instead: the connection
stays usable when the framing is still known, for a value over the limit the data block is
read and thrown away, as memcached does). :class:`ReplyReader` cuts an upstream's bytes into
:class:`Reply` values. Nothing here reads a socket or a clock.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from enum import Enum

MAX_KEY_BYTES = 250  # memcached's KEY_MAX_LENGTH: part of the protocol, not a setting
DEFAULT_MAX_LINE_BYTES = 64 * 1024  # a get of ~250 long keys; memcached reads 2 KiB at a time
DEFAULT_MAX_VALUE_BYTES = 1024 * 1024  # memcached's default item size limit (-I 1m)
MAX_KEYS_PER_GET = 10_000  # bounds the fan-out work of one request

CRLF = b"\r\n"


class ReplyKind(Enum):
    """What an upstream sends back for a request."""

    LINE = "line"  # one line: STORED, DELETED, a number, VERSION...
    VALUES = "values"  # VALUE items then END (get, gets, gat, gats)
    META = "meta"  # a meta command's line, with a data block after "VA <size> ..."


class Local(Enum):
    """Requests the router answers itself."""

    VERSION = "version"
    QUIT = "quit"
    VERBOSITY = "verbosity"
    NOOP = "noop"  # meta no-op, mn


RETRIEVAL = frozenset({b"get", b"gets", b"gat", b"gats"})
STORAGE = frozenset({b"set", b"add", b"replace", b"append", b"prepend", b"cas"})
META = frozenset({b"mg", b"ms", b"md", b"ma"})  # meta commands routed by key
WRITES = STORAGE | {b"delete", b"incr", b"decr", b"touch", b"ms", b"md", b"ma"}
KEYED = RETRIEVAL | WRITES | META
# Meta flags the router cannot pass through: quiet mode (q) leaves replies out, which breaks
# the matching of replies to requests on a shared connection; base64 keys (b) would be
# placed by their encoded form.
REFUSED_META_FLAGS = (b"q", b"b")


@dataclass(slots=True)
class Request:
    """One client request.

    Attributes:
        command: the command, lower case (``get``, ``set``...).
        keys: the keys it names (several for retrievals, one otherwise, none for local ones).
        args: the tokens after the command (keys included), without ``noreply``.
        data: the data block of a storage command (without its ``\\r\\n``).
        noreply: the client asked for no reply.
        local: set for commands answered without an upstream.
    """

    command: bytes
    keys: list[bytes]
    args: list[bytes]
    data: bytes | None = None
    noreply: bool = False
    local: Local | None = None

    @property
    def reply_kind(self) -> ReplyKind:
        if self.command in RETRIEVAL:
            return ReplyKind.VALUES
        return ReplyKind.META if self.command in META else ReplyKind.LINE

    @property
    def is_write(self) -> bool:
        return self.command in WRITES

    def encode(self, keys: list[bytes] | None = None) -> bytes:
        """The request as sent upstream: always with a reply (``noreply`` dropped, so the
        upstream stays in step), for retrievals with ``keys`` instead of all of them."""
        if self.command in RETRIEVAL:
            head = [self.command]
            if self.command in (b"gat", b"gats"):
                head.append(self.args[0])
            return b" ".join([*head, *(self.keys if keys is None else keys)]) + CRLF
        line = b" ".join([self.command, *self.args]) + CRLF
        if self.data is not None:
            return line + self.data + CRLF
        return line

    def with_exptime(self, exptime: bytes) -> Request:
        """A copy of a storage request with another expiry time (``args[2]``)."""
        args = list(self.args)
        args[2] = exptime
        return Request(self.command, self.keys, args, self.data, self.noreply, self.local)


@dataclass(frozen=True, slots=True)
class Fault:
    """A reply the router sends instead of forwarding a request.

    Attributes:
        reply: the bytes to send (``ERROR``, ``CLIENT_ERROR ...``, ``SERVER_ERROR ...``).
        close: the connection cannot be read any further (its framing is lost).
    """

    reply: bytes
    close: bool = False


def client_error(message: str) -> bytes:
    return b"CLIENT_ERROR " + message.encode() + CRLF


def server_error(message: str) -> bytes:
    return b"SERVER_ERROR " + message.encode() + CRLF


_CONTROL = re.compile(rb"[\x00-\x20\x7f]")


def _valid_key(key: bytes, max_key: int) -> bool:
    # Keys are printable: no control characters (the tokeniser already split on spaces).
    return 0 < len(key) <= max_key and _CONTROL.search(key) is None


def _is_number(token: bytes) -> bool:
    if token.startswith(b"-"):
        token = token[1:]
    return token.isdigit()


@dataclass
class RequestParser:
    """Cut a client's bytes into requests.

    Args:
        max_line: longest request line (``CLIENT_ERROR line too long`` and close past it).
        max_value: largest data block (``SERVER_ERROR object too large for cache``).
        max_key: longest key (at most memcached's 250).
    """

    max_line: int = DEFAULT_MAX_LINE_BYTES
    max_value: int = DEFAULT_MAX_VALUE_BYTES
    max_key: int = MAX_KEY_BYTES
    # Unparsed bytes, kept as ``bytes``: slices of bytes are bytes, so lines and data blocks
    # come out without a copy to convert them, and a read of whole requests is parsed in place.
    _buf: bytes = b""
    _pending: Request | None = None  # a storage header waiting for its data block
    _need: int = 0  # bytes of data block (+ CRLF) still expected for _pending
    _skip: int = 0  # bytes of a refused data block still to throw away
    _closed: bool = False

    def feed(self, data: bytes) -> list[Request | Fault]:
        """Add bytes from the client; return every request (or fault) now complete."""
        if self._closed:
            return []
        buf = self._buf + data if self._buf else bytes(data)
        out: list[Request | Fault] = []
        pos = 0
        size = len(buf)
        while pos < size:
            if self._skip:
                taken = min(self._skip, size - pos)
                self._skip -= taken
                pos += taken
                continue
            pending = self._pending
            if pending is not None:
                if size - pos < self._need:
                    break
                end = pos + self._need
                if buf[end - 2 : end] != CRLF:
                    out.append(Fault(client_error("bad data chunk"), close=True))
                    self._closed = True
                    break
                pending.data = buf[pos : end - 2]
                self._pending = None
                pos = end
                out.append(pending)
                continue
            eol = buf.find(b"\n", pos)
            if eol < 0:
                if size - pos > self.max_line:
                    out.append(Fault(client_error("line too long"), close=True))
                    self._closed = True
                break
            if eol - pos > self.max_line:
                out.append(Fault(client_error("line too long"), close=True))
                self._closed = True
                break
            line = buf[pos : eol - 1] if eol > pos and buf[eol - 1] == 13 else buf[pos:eol]
            pos = eol + 1
            item = self._request(line)
            if item is not None:
                out.append(item)
        self._buf = b"" if self._closed else buf[pos:]
        return out

    def _request(self, line: bytes) -> Request | Fault | None:
        tokens = line.split()
        if not tokens:
            return Fault(b"ERROR\r\n")
        command = tokens[0].lower()
        args = tokens[1:]
        if command in RETRIEVAL:
            return self._retrieval(command, args)
        if command in STORAGE:
            return self._storage(command, args)
        if command in META:
            return self._meta(command, args)
        if command == b"mn" and not args:
            return Request(command, [], [], local=Local.NOOP)
        noreply = bool(args) and args[-1] == b"noreply"
        if noreply:
            args = args[:-1]
        if command == b"delete":
            # "delete <key> [0]": a time other than 0 was removed from the protocol.
            if not args or len(args) > 2 or (len(args) == 2 and args[1] != b"0"):
                return Fault(client_error("bad command line format.  Usage: delete <key>"))
            return self._keyed(command, args[:1], noreply)
        if command in (b"incr", b"decr"):
            if len(args) != 2 or not args[1].isdigit():
                return Fault(client_error("invalid numeric delta argument"))
            return self._keyed(command, args, noreply)
        if command == b"touch":
            if len(args) != 2 or not _is_number(args[1]):
                return Fault(client_error("bad command line format"))
            return self._keyed(command, args, noreply)
        if command == b"version" and not args:
            return Request(command, [], [], local=Local.VERSION)
        if command == b"quit":
            return Request(command, [], [], local=Local.QUIT)
        if command == b"verbosity":
            return Request(command, [], args, noreply=noreply, local=Local.VERBOSITY)
        return Fault(b"ERROR\r\n")

    def _meta(self, command: bytes, args: list[bytes]) -> Request | Fault | None:
        if not args:
            return Fault(client_error("bad command line format"))
        flags = args[2:] if command == b"ms" else args[1:]
        if any(flag[:1] in REFUSED_META_FLAGS for flag in flags):
            return Fault(client_error("meta flags q and b are not supported by podkit shard"))
        if command != b"ms":
            return self._keyed(command, args, False)
        if len(args) < 2 or not args[1].isdigit():
            return Fault(client_error("bad data chunk"))
        length = int(args[1])
        if length > self.max_value:
            self._skip = length + 2
            return Fault(server_error("object too large for cache"))
        if not _valid_key(args[0], self.max_key):
            self._skip = length + 2
            return Fault(client_error("bad command line format"))
        self._pending = Request(command, [args[0]], args)
        self._need = length + 2
        return None

    def _keyed(self, command: bytes, args: list[bytes], noreply: bool) -> Request | Fault:
        if not _valid_key(args[0], self.max_key):
            return Fault(client_error("bad command line format"))
        return Request(command, [args[0]], args, noreply=noreply)

    def _retrieval(self, command: bytes, args: list[bytes]) -> Request | Fault:
        keys = args
        if command in (b"gat", b"gats"):
            if len(args) < 2 or not _is_number(args[0]):
                return Fault(b"ERROR\r\n")
            keys = args[1:]
        if not keys:
            return Fault(b"ERROR\r\n")
        if len(keys) > MAX_KEYS_PER_GET:
            return Fault(client_error(f"too many keys (at most {MAX_KEYS_PER_GET})"))
        max_key = self.max_key
        for key in keys:
            if not _valid_key(key, max_key):
                return Fault(client_error("bad command line format"))
        return Request(command, keys, args)

    def _storage(self, command: bytes, args: list[bytes]) -> Request | Fault | None:
        noreply = bool(args) and args[-1] == b"noreply"
        if noreply:
            args = args[:-1]
        want = 5 if command == b"cas" else 4
        if len(args) != want or not all(_is_number(a) for a in args[1:]):
            return Fault(client_error("bad command line format"))
        length = int(args[3])
        if length < 0:
            return Fault(client_error("bad command line format"))
        if length > self.max_value:
            # memcached's own answer; the data block is read and dropped, the client goes on.
            self._skip = length + 2
            return Fault(server_error("object too large for cache"))
        if not _valid_key(args[0], self.max_key):
            self._skip = length + 2
            return Fault(client_error("bad command line format"))
        self._pending = Request(command, [args[0]], args, noreply=noreply)
        self._need = length + 2
        return None


@dataclass(slots=True)
class Reply:
    """One upstream reply.

    Attributes:
        raw: the reply's bytes, exactly as received.
        items: for retrievals, each ``VALUE`` item's key and bytes (data block included).
        error: the reply is ``ERROR``, ``CLIENT_ERROR ...`` or ``SERVER_ERROR ...``.
    """

    raw: bytes
    items: list[tuple[bytes, bytes]] = field(default_factory=list)
    error: bool = False

    @property
    def hit(self) -> bool:
        return bool(self.items)


_ERROR_PREFIXES = (b"ERROR", b"CLIENT_ERROR", b"SERVER_ERROR")


class UpstreamProtocolError(Exception):
    """An upstream sent bytes that are not a memcached reply (the connection is unusable)."""


@dataclass
class ReplyReader:
    """Cut an upstream's bytes into replies; the caller says which kind comes next."""

    max_value: int = DEFAULT_MAX_VALUE_BYTES * 2
    _buf: bytes = b""
    _pos: int = 0

    def feed(self, data: bytes) -> None:
        rest = self._buf[self._pos :] if self._pos < len(self._buf) else b""
        self._buf = rest + data if rest else bytes(data)
        self._pos = 0

    def next_reply(self, kind: ReplyKind) -> Reply | None:
        """The next complete reply of ``kind``, or None until more bytes arrive.

        Raises:
            UpstreamProtocolError: the bytes are not a reply of that kind.
        """
        buf = self._buf
        start = self._pos
        eol = buf.find(CRLF, start)
        if eol < 0:
            return None
        if kind is ReplyKind.LINE:
            self._pos = eol + 2
            raw = buf[start : eol + 2]
            return Reply(raw, error=raw.startswith(_ERROR_PREFIXES))
        if kind is ReplyKind.META:
            if not buf.startswith(b"VA ", start):
                self._pos = eol + 2
                raw = buf[start : eol + 2]
                return Reply(raw, error=raw.startswith(_ERROR_PREFIXES))
            header = buf[start + 3 : eol].split()
            if not header or not header[0].isdigit():
                raise UpstreamProtocolError(f"bad VA line {buf[start:eol]!r}")
            end = eol + 2 + int(header[0]) + 2
            if len(buf) < end:
                return None
            self._pos = end
            return Reply(buf[start:end])
        items: list[tuple[bytes, bytes]] = []
        pos = start
        while True:
            if eol < 0:
                return None
            if buf.startswith(b"END\r\n", pos):
                self._pos = pos + 5
                return Reply(buf[start : pos + 5], items)
            if not buf.startswith(b"VALUE ", pos):
                if items or not buf.startswith(_ERROR_PREFIXES, pos):
                    raise UpstreamProtocolError(f"unexpected reply line {buf[pos:eol]!r}")
                self._pos = eol + 2
                return Reply(buf[start : eol + 2], error=True)
            header = buf[pos + 6 : eol].split()
            if len(header) < 3 or not header[2].isdigit():
                raise UpstreamProtocolError(f"bad VALUE line {buf[pos:eol]!r}")
            length = int(header[2])
            if length > self.max_value:
                raise UpstreamProtocolError(f"value of {length} bytes over the limit")
            end = eol + 2 + length + 2
            if len(buf) < end:
                return None
            items.append((header[0], buf[pos:end]))
            pos = end
            eol = buf.find(CRLF, pos)


def merge_values(keys: list[bytes], replies: list[Reply]) -> bytes:
    """One retrieval reply for ``keys`` (in the order asked) from the replies of the shards
    that held them; a key asked twice is answered twice, as memcached does."""
    found = {key: item for reply in replies for key, item in reply.items}
    parts = [found[k] for k in keys if k in found]
    parts.append(b"END\r\n")
    return b"".join(parts)


def item_as_set(item: bytes, exptime: int) -> bytes:
    """A ``set`` request that stores a ``VALUE`` item (as a retrieval returned it) again,
    expiring after ``exptime`` seconds: how a hot key's copy is filled on another shard."""
    eol = item.index(CRLF)
    header = item[6:eol].split()
    key, flags, length = header[0], header[1], header[2]
    data = item[eol + 2 :]
    return b"set %s %s %d %s\r\n%s" % (key, flags, exptime, length, data)
