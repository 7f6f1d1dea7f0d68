# -*- test-case-name: tests.test_fake_dockerd -*-
"""
A fake Docker daemon that speaks HTTP/1.1 on a UNIX socket, for the proxy's tests.

The proxy promises to forward bytes untouched, to keep keep-alive and pipelining
intact, to propagate back-pressure and to relay hijacked (attach/exec) streams
including half-close.  Checking those promises needs an upstream whose wire
behaviour the test controls exactly, so this is a hand-rolled HTTP/1.1 server
protocol rather than C{twisted.web}: it sees the raw request head and raw body
framing, answers with byte-exact responses modelled on dockerd's (Go's
C{net/http}: canonical header names in sorted order; no C{Date} header so that
responses are deterministic), and switches to a raw echo after a hijack.

Start it with::

    path = short_socket_path()
    self.addCleanup(shutil.rmtree, os.path.dirname(path))
    fake = FakeDockerdFactory()
    port = reactor.listenUNIX(path, fake)
    self.addCleanup(port.stopListening)

Endpoints (an optional C{/vX.Y} prefix is ignored; see L{FakeDockerdProtocol}):

  - C{GET|HEAD /_ping}: 200 C{OK}.
  - C{GET /version}: 200 JSON C{{"ApiVersion":"1.41","Version":"fake"}}.
  - any method C{/echo-head...}: 200 whose body is the raw request head followed
    by the raw request body exactly as framed on the wire.
  - C{POST /upload}: 200 JSON C{{"bytes": N, "sha256": "..."}} of the decoded
    body, hashed incrementally (never buffered).
  - C{GET /stream?count=N&interval=S} and C{GET /slow?chunks=N&interval=S}:
    chunked, C{line0\\n} ... C{line<N-1>\\n}, S seconds apart on the factory's
    clock, then the last chunk.
  - C{GET /events}: chunked, never ends by itself; L{FakeDockerdFactory.emit_event}
    writes one chunk to every open /events response.
  - C{GET /big?bytes=N}: C{Content-Length: N} body of L{pattern_bytes}, written
    by a pull producer so a slow reader holds the fake back
    (L{FakeDockerdFactory.big_bytes_written} counts what reached the transport).
  - C{POST /containers/{id}/attach}, C{POST /exec/{id}/start}: read the request
    body, then hijack: C{101 UPGRADED} when the request has an C{Upgrade} header
    (as dockerd decides), else the legacy C{200 OK}; then echo every byte and,
    on the client's half-close, write C{\\ndone\\n} and close (like
    C{docker run -i IMAGE sh -c 'cat; echo done'}).
  - C{GET /close-after-response}: 200 with C{Connection: close}, then close.
  - anything else: 404 JSON C{{"message":"page not found"}}.
  - malformed requests: Go-style C{400 Bad Request} (431 for an oversized head)
    with C{Connection: close}, then close.
"""

from __future__ import annotations

import hashlib
import json
import re
import tempfile
from typing import TYPE_CHECKING, Any, cast
from urllib.parse import parse_qs

from attrs import Factory as AttrsFactory
from attrs import define, field, frozen
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import (
    IConsumer,
    IDelayedCall,
    IHalfCloseableProtocol,
    IPullProducer,
    IPushProducer,
    IReactorTime,
    ITCPTransport,
)
from twisted.internet.protocol import Factory, Protocol, connectionDone
from twisted.python.failure import Failure
from zope.interface import implementer

if TYPE_CHECKING:
    from twisted.internet.interfaces import IAddress

__all__ = [
    "LEGACY_HIJACKED",
    "UPGRADED",
    "FakeDockerdFactory",
    "FakeDockerdProtocol",
    "FakeRequest",
    "pattern_bytes",
    "short_socket_path",
]


def short_socket_path() -> str:
    """
    Return a fresh UNIX socket path short enough for C{bind()}.

    C{self.mktemp()} paths can exceed the ~107-byte C{sun_path} limit once made
    absolute, so the socket lives in a new directory under C{/tmp}.  The caller
    owns that directory and should remove it when done, e.g.
    C{self.addCleanup(shutil.rmtree, os.path.dirname(path), True)}.
    """
    return tempfile.mkdtemp(prefix="hfd", dir="/tmp") + "/d.sock"


_BLOCK_SIZE = 65536
_BLOCK = bytes(range(256)) * (_BLOCK_SIZE // 256)


def pattern_bytes(offset: int, length: int) -> bytes:
    """
    The C{/big} body from byte C{offset} for C{length} bytes: byte M is C{M % 256}.
    """
    start = offset % 256
    reps = -(-(start + length) // len(_BLOCK))
    if reps == 1:
        return _BLOCK[start : start + length]
    return (_BLOCK * reps)[start : start + length]


@frozen
class FakeRequest:
    """
    One request head as the fake received it.

    @ivar method: e.g. C{"GET"}.
    @ivar target: the raw request-target, e.g. C{b"/v1.41/_ping?x=1"}.
    @ivar path: the target's path without the C{/vX.Y} prefix and the query.
    @ivar query: the parsed query string.
    @ivar version: C{b"HTTP/1.1"} or C{b"HTTP/1.0"}.
    @ivar raw_head: the request line through the blank line, as received.
    @ivar headers: C{(name, value)} pairs in order, names as sent, values
        stripped of surrounding whitespace.
    @ivar connection: the number of the connection it arrived on (1-based, in
        the order of L{FakeDockerdFactory.connections_made}).
    """

    method: str
    target: bytes
    path: str
    query: dict[str, list[str]] = field(hash=False)
    version: bytes
    raw_head: bytes
    headers: list[tuple[bytes, bytes]] = field(hash=False)
    connection: int

    def header_values(self, name: bytes) -> list[bytes]:
        """All values of the header C{name} (case-insensitive), in order."""
        lowered = name.lower()
        return [v for (k, v) in self.headers if k.lower() == lowered]

    def header(self, name: bytes) -> bytes | None:
        """The first value of the header C{name}, or L{None}."""
        values = self.header_values(name)
        return values[0] if values else None


class _Malformed(Exception):
    """
    The request cannot be parsed; the connection gets a 400 (or C{status}) and
    is closed.
    """

    def __init__(self, reason: str, status: bytes = b"400 Bad Request") -> None:
        super().__init__(reason)
        self.reason = reason
        self.status = status


_TOKEN = re.compile(rb"^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$")
_BAD_VALUE = re.compile(rb"[\x00-\x08\x0a-\x1f\x7f]")
_HEX = re.compile(rb"^[0-9a-fA-F]{1,16}$")
_VERSION_PREFIX = re.compile(r"^/v[0-9.]+(?=/)")
#: Answered 201 with the request's own bytes (head and body as they came).
CREATE = "/containers/create"
_ATTACH = re.compile(r"^/containers/[^/]+/attach$")
_EXEC_START = re.compile(r"^/exec/[^/]+/start$")
_MAX_CHUNK_LINE = 4096

_JSON = b"application/json"
_TEXT = b"text/plain; charset=utf-8"
_OCTETS = b"application/octet-stream"
_RAW_STREAM = b"application/vnd.docker.raw-stream"

#: dockerd's answer when it hijacks a request that asked for an upgrade.
UPGRADED = (
    b"HTTP/1.1 101 UPGRADED\r\n"
    b"Content-Type: application/vnd.docker.raw-stream\r\n"
    b"Connection: Upgrade\r\n"
    b"Upgrade: tcp\r\n"
    b"\r\n"
)
#: dockerd's legacy hijack answer, to a client that did not ask to upgrade.
LEGACY_HIJACKED = (
    b"HTTP/1.1 200 OK\r\nContent-Type: application/vnd.docker.raw-stream\r\n\r\n"
)
_CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"
_LAST_CHUNK = b"0\r\n\r\n"
_DONE = b"\ndone\n"


def _chunk(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


def _json(value: Any) -> bytes:
    # Like Go's json.Encoder as dockerd uses it: compact, newline-terminated.
    return json.dumps(value, separators=(",", ":")).encode("utf-8") + b"\n"


def _parse_head(raw_head: bytes, connection: int, require_host: bool) -> FakeRequest:
    """
    Parse C{raw_head} (request line through the blank line) or raise
    L{_Malformed}.
    """
    lines = raw_head[:-4].split(b"\r\n")
    parts = lines[0].split(b" ")
    if len(parts) != 3:
        raise _Malformed("malformed request line")
    method, target, version = parts
    if not _TOKEN.match(method):
        raise _Malformed("malformed method")
    if not target or _BAD_VALUE.search(target) or b"\t" in target:
        raise _Malformed("malformed request target")
    if version not in (b"HTTP/1.1", b"HTTP/1.0"):
        raise _Malformed("unsupported HTTP version")
    headers = []
    for line in lines[1:]:
        name, colon, value = line.partition(b":")
        if not colon or not _TOKEN.match(name):
            raise _Malformed("malformed MIME header line")
        value = value.strip(b" \t")
        if _BAD_VALUE.search(value):
            raise _Malformed("invalid header value")
        headers.append((name, value))
    if not target.startswith(b"/"):
        raise _Malformed("malformed request target")
    path_bytes, _, query_bytes = target.partition(b"?")
    path = _VERSION_PREFIX.sub("", path_bytes.decode("latin-1"), count=1)
    query = parse_qs(query_bytes.decode("latin-1"))
    request = FakeRequest(
        method=method.decode("ascii"),
        target=target,
        path=path,
        query=query,
        version=version,
        raw_head=raw_head,
        headers=headers,
        connection=connection,
    )
    hosts = request.header_values(b"host")
    if require_host and version == b"HTTP/1.1" and len(hosts) != 1:
        raise _Malformed("missing required Host header")
    return request


def _tokens(request: FakeRequest, name: bytes) -> set[bytes]:
    """The lower-cased comma-separated tokens of every C{name} header."""
    return {
        token.strip().lower()
        for value in request.header_values(name)
        for token in value.split(b",")
        if token.strip()
    }


@define(eq=False)
class _ChunkedDecoder:
    """
    Incremental decoder of a chunked request body.

    L{feed} reports how many bytes it consumed, so the bytes after the last
    chunk stay with the protocol (the next pipelined request) and the consumed
    bytes are exactly the body as framed on the wire.
    """

    _state: str = "size"
    _remaining: int = 0

    @property
    def done(self) -> bool:
        return self._state == "done"

    def feed(self, data: bytes) -> tuple[int, list[bytes]]:
        pos = 0
        out: list[bytes] = []
        end = len(data)
        while pos < end and self._state != "done":
            if self._state == "data":
                n = min(self._remaining, end - pos)
                out.append(data[pos : pos + n])
                pos += n
                self._remaining -= n
                if not self._remaining:
                    self._state = "crlf"
            elif self._state == "crlf":
                if end - pos < 2:
                    break
                if data[pos : pos + 2] != b"\r\n":
                    raise _Malformed("malformed chunk data terminator")
                pos += 2
                self._state = "size"
            else:
                eol = data.find(b"\r\n", pos)
                if eol < 0:
                    if end - pos > _MAX_CHUNK_LINE:
                        raise _Malformed("chunk line too long")
                    break
                line = data[pos:eol]
                pos = eol + 2
                if self._state == "trailer":
                    if not line:
                        self._state = "done"
                    continue
                size = line.split(b";", 1)[0].rstrip(b" \t")
                if not _HEX.match(size):
                    raise _Malformed("malformed chunk size")
                self._remaining = int(size, 16)
                self._state = "data" if self._remaining else "trailer"
        return pos, out


@define(eq=False)
class _Body:
    """
    Where a request body goes: always counted and hashed; kept raw (as framed)
    only when the endpoint echoes it.
    """

    keep_raw: bool
    length: int | None  # remaining Content-Length bytes, or None if chunked
    decoder: _ChunkedDecoder | None
    raw: list[bytes] = AttrsFactory(list)
    decoded_bytes: int = 0
    sha256: Any = AttrsFactory(hashlib.sha256)

    @property
    def done(self) -> bool:
        if self.decoder is not None:
            return self.decoder.done
        return self.length == 0

    def consume(self, data: bytes) -> int:
        """Take what belongs to this body from C{data}; return how much."""
        if self.decoder is not None:
            used, pieces = self.decoder.feed(data)
        else:
            assert self.length is not None
            used = min(self.length, len(data))
            pieces = [data[:used]]
            self.length -= used
        if self.keep_raw and used:
            self.raw.append(data[:used])
        for piece in pieces:
            self.decoded_bytes += len(piece)
            self.sha256.update(piece)
        return used


def _framing(request: FakeRequest) -> tuple[int | None, _ChunkedDecoder | None]:
    """
    The body framing of C{request}: C{(content_length, None)} or
    C{(None, decoder)}.  As in Go, chunked wins over Content-Length.
    """
    codings = [
        c.strip().lower()
        for v in request.header_values(b"transfer-encoding")
        for c in v.split(b",")
    ]
    if codings:
        if codings != [b"chunked"]:
            raise _Malformed("unsupported transfer encoding")
        return None, _ChunkedDecoder()
    lengths = set(request.header_values(b"content-length"))
    if len(lengths) > 1:
        raise _Malformed("conflicting Content-Length")
    if not lengths:
        return 0, None
    (value,) = lengths
    if not value.isdigit() or len(value) > 18:
        raise _Malformed("bad Content-Length")
    return int(value), None


@implementer(IPullProducer)
@define(eq=False)
class _BigProducer:
    """
    Writes the C{/big} body one block per C{resumeProducing}: the transport
    asks for the next block only once it has flushed the previous one to the
    kernel, so a reader that stops reading stops the fake.
    """

    _protocol: FakeDockerdProtocol
    _remaining: int
    _offset: int = 0
    _stopped: bool = False

    def resumeProducing(self) -> None:
        if self._stopped or not self._remaining:
            return
        n = min(_BLOCK_SIZE, self._remaining)
        block = pattern_bytes(self._offset, n)
        self._offset += n
        self._remaining -= n
        self._protocol.factory.big_bytes_written += n
        consumer = self._protocol._consumer
        consumer.write(block)
        if not self._remaining:
            self._stopped = True
            consumer.unregisterProducer()
            self._protocol._response_done()

    def stopProducing(self) -> None:
        self._stopped = True


@implementer(IHalfCloseableProtocol)
@define(eq=False)
class FakeDockerdProtocol(Protocol):
    """
    One connection to the fake daemon.

    Requests are handled strictly one after another, so pipelined requests are
    answered in order: while a response is still being written (C{/stream},
    C{/big}, C{/events}), later bytes wait in the buffer.  Request bodies are
    consumed as they arrive.

    A half-close by the client (FIN) ends an C{/events} response, lets other
    responses and already buffered requests finish, then closes; after a hijack
    it writes C{\\ndone\\n} and closes.  Responses always say C{HTTP/1.1}.
    """

    factory: FakeDockerdFactory = field(repr=False)
    number: int
    _buffer: bytes = field(default=b"", repr=False)
    # head -> body -> busy -> head ..., or -> raw (hijacked), or -> closed
    _state: str = "head"
    _request: FakeRequest | None = None
    _body: _Body | None = None
    _read_closed: bool = False
    _advancing: bool = False
    _delayed: IDelayedCall | None = None
    _producer: _BigProducer | None = None
    _in_events: bool = False

    # Protocol

    def connectionMade(self) -> None:
        self.factory.open_connections += 1

    def dataReceived(self, data: bytes) -> None:
        self.factory.bytes_received += len(data)
        if self._state == "raw":
            self._echo(data)
        elif self._state != "closed":
            self._buffer += data
            self._advance()

    def readConnectionLost(self) -> None:
        self._read_closed = True
        if self._state == "raw":
            self._state = "closed"
            self._consumer.unregisterProducer()
            self._write(_DONE)
            self._close()
        elif self._in_events:
            self._end_events()
        elif self._state in ("head", "body"):
            self._advance()

    def writeConnectionLost(self) -> None:
        # The fake never half-closes its own side.
        pass

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self._state = "closed"
        if self._delayed is not None and self._delayed.active():
            self._delayed.cancel()
        self._delayed = None
        if self._producer is not None:
            self._producer.stopProducing()
            self._producer = None
        if self._in_events:
            self._in_events = False
            self.factory._events.remove(self)
        self.factory._connection_closed(self)

    # Parsing

    def _advance(self) -> None:
        """Parse and answer what the buffer holds, as far as possible."""
        if self._advancing:
            return
        self._advancing = True
        try:
            self._advance_once()
        finally:
            self._advancing = False
        if self._state == "head" and self._read_closed:
            # No complete request is left and none can come.
            self._close()

    def _advance_once(self) -> None:
        while True:
            if self._state == "head":
                if not self._read_head():
                    return
            elif self._state == "body":
                if not self._read_body():
                    return
            elif self._state == "raw":
                data, self._buffer = self._buffer, b""
                if data:
                    self._echo(data)
                return
            else:  # busy or closed
                return

    def _read_head(self) -> bool:
        # Like Go, tolerate stray CRLFs between requests.
        buffer = self._buffer.lstrip(b"\r\n")
        if len(buffer) != len(self._buffer):
            self._buffer = buffer
        limit = self.factory.max_head_bytes
        end = self._buffer.find(b"\r\n\r\n", 0, limit + 4)
        if end < 0:
            if len(self._buffer) > limit:
                self._bad(
                    _Malformed("", b"431 Request Header Fields Too Large"),
                )
            return False
        raw_head = self._buffer[: end + 4]
        self._buffer = self._buffer[end + 4 :]
        try:
            request = _parse_head(raw_head, self.number, self.factory.require_host)
            length, decoder = _framing(request)
        except _Malformed as e:
            self._bad(e)
            return False
        self.factory.requests.append(request)
        self._request = request
        keep_raw = request.path.startswith("/echo-head") or request.path == CREATE
        self._body = _Body(keep_raw=keep_raw, length=length, decoder=decoder)
        self._state = "body"
        if (
            not self._body.done
            and request.version == b"HTTP/1.1"
            and b"100-continue" in _tokens(request, b"expect")
        ):
            self._write(_CONTINUE)
        return True

    def _read_body(self) -> bool:
        body = self._body
        assert body is not None and self._request is not None
        if not body.done:
            try:
                used = body.consume(self._buffer)
            except _Malformed as e:
                self._bad(e)
                return False
            self._buffer = self._buffer[used:]
        if not body.done:
            if self._read_closed:
                self._close()
            return False
        self._state = "busy"
        self._dispatch(self._request, body)
        return True

    def _bad(self, error: _Malformed) -> None:
        self.factory.bad_requests.append(error.reason or error.status.decode())
        public = error.status
        if error.reason:
            public += b": " + error.reason.encode("ascii")
        self._write(
            b"HTTP/1.1 "
            + error.status
            + b"\r\nContent-Type: text/plain; charset=utf-8\r\n"
            + b"Connection: close\r\n\r\n"
            + public
        )
        self._close()

    # Answering

    def _dispatch(self, request: FakeRequest, body: _Body) -> None:
        path, method = request.path, request.method
        if path.startswith("/echo-head"):
            data = request.raw_head + b"".join(body.raw)
            return self._respond(request, b"200 OK", _OCTETS, data)
        if path == CREATE and method == "POST":
            # Created; the answer is what arrived, for tests of what the
            # agent let through.
            data = request.raw_head + b"".join(body.raw)
            return self._respond(request, b"201 Created", _OCTETS, data)
        if _ATTACH.match(path) or _EXEC_START.match(path):
            if method != "POST":
                return self._not_allowed(request)
            return self._hijack(request)
        routes = {
            "/_ping": ("GET", "HEAD"),
            "/version": ("GET", "HEAD"),
            "/upload": ("POST", "PUT"),
            "/stream": ("GET", "HEAD"),
            "/slow": ("GET", "HEAD"),
            "/events": ("GET", "HEAD"),
            "/big": ("GET", "HEAD"),
            "/close-after-response": ("GET", "HEAD"),
        }
        if path not in routes:
            data = _json({"message": "page not found"})
            return self._respond(request, b"404 Not Found", _JSON, data)
        if method not in routes[path]:
            return self._not_allowed(request)
        try:
            if path == "/_ping":
                self._respond(request, b"200 OK", _TEXT, b"OK")
            elif path == "/version":
                data = _json({"ApiVersion": "1.41", "Version": "fake"})
                self._respond(request, b"200 OK", _JSON, data)
            elif path == "/upload":
                data = _json(
                    {"bytes": body.decoded_bytes, "sha256": body.sha256.hexdigest()}
                )
                self._respond(request, b"200 OK", _JSON, data)
            elif path == "/stream":
                count = self._int_param(request, "count", 3)
                interval = self._float_param(request, "interval", 0.0)
                self._stream(request, count, interval)
            elif path == "/slow":
                count = self._int_param(request, "chunks", 3)
                interval = self._float_param(request, "interval", 0.1)
                self._stream(request, count, interval)
            elif path == "/events":
                self._events(request)
            elif path == "/big":
                self._big(request, self._int_param(request, "bytes", 1024))
            else:
                self._respond(request, b"200 OK", _TEXT, b"bye\n", close=True)
        except ValueError as e:
            data = _json({"message": str(e)})
            self._respond(request, b"400 Bad Request", _JSON, data)

    @staticmethod
    def _int_param(request: FakeRequest, name: str, default: int) -> int:
        values = request.query.get(name)
        if not values:
            return default
        if not values[0].isdigit():
            raise ValueError(f"bad parameter {name}")
        return int(values[0])

    @staticmethod
    def _float_param(request: FakeRequest, name: str, default: float) -> float:
        values = request.query.get(name)
        if not values:
            return default
        try:
            value = float(values[0])
        except ValueError:
            raise ValueError(f"bad parameter {name}") from None
        if not 0 <= value < 3600:
            raise ValueError(f"bad parameter {name}")
        return value

    def _wants_close(self, request: FakeRequest) -> bool:
        connection = _tokens(request, b"connection")
        if request.version == b"HTTP/1.0":
            return b"keep-alive" not in connection
        return b"close" in connection

    def _head(
        self,
        request: FakeRequest,
        status: bytes,
        content_type: bytes,
        extra: list[tuple[bytes, bytes]],
        close: bool,
    ) -> bytes:
        headers = [
            (b"Api-Version", b"1.41"),
            (b"Content-Type", content_type),
            (b"Docker-Experimental", b"false"),
            (b"Ostype", b"linux"),
            (b"Server", b"Docker/fake (linux)"),
            *extra,
        ]
        if close or self._wants_close(request):
            headers.append((b"Connection", b"close"))
        headers.sort()
        lines = [b"HTTP/1.1 " + status]
        lines.extend(name + b": " + value for (name, value) in headers)
        return b"\r\n".join(lines) + b"\r\n\r\n"

    def _respond(
        self,
        request: FakeRequest,
        status: bytes,
        content_type: bytes,
        data: bytes,
        close: bool = False,
    ) -> None:
        length = [(b"Content-Length", b"%d" % len(data))]
        head = self._head(request, status, content_type, length, close)
        self._write(head if request.method == "HEAD" else head + data)
        self._response_done(close)

    def _not_allowed(self, request: FakeRequest) -> None:
        data = _json({"message": "method not allowed"})
        self._respond(request, b"405 Method Not Allowed", _JSON, data)

    def _start_chunked(self, request: FakeRequest, content_type: bytes) -> bool:
        """Write a chunked response head; False if that was all (HEAD)."""
        chunked = [(b"Transfer-Encoding", b"chunked")]
        self._write(self._head(request, b"200 OK", content_type, chunked, False))
        if request.method == "HEAD":
            self._response_done()
            return False
        return True

    def _stream(self, request: FakeRequest, count: int, interval: float) -> None:
        if not self._start_chunked(request, _TEXT):
            return
        clock = self.factory.clock

        def tick(i: int) -> None:
            self._delayed = None
            if i < count:
                self._write(_chunk(b"line%d\n" % i))
            if i + 1 < count:
                self._delayed = clock.callLater(interval, tick, i + 1)
            else:
                self._write(_LAST_CHUNK)
                self._response_done()

        tick(0)

    def _events(self, request: FakeRequest) -> None:
        if not self._start_chunked(request, _JSON):
            return
        self._in_events = True
        self.factory._events.append(self)

    def _emit(self, data: bytes) -> None:
        self._write(_chunk(data))

    def _end_events(self) -> None:
        self._in_events = False
        self.factory._events.remove(self)
        self._write(_LAST_CHUNK)
        self._response_done()

    def _big(self, request: FakeRequest, size: int) -> None:
        length = [(b"Content-Length", b"%d" % size)]
        self._write(self._head(request, b"200 OK", _OCTETS, length, False))
        if request.method == "HEAD" or not size:
            self._response_done()
            return
        self._producer = _BigProducer(self, size)
        self._consumer.registerProducer(self._producer, False)

    def _hijack(self, request: FakeRequest) -> None:
        # dockerd sends 101 when the request has an Upgrade header at all.
        upgrade = bool(request.header_values(b"upgrade"))
        self._write(UPGRADED if upgrade else LEGACY_HIJACKED)
        self._state = "raw"
        # Echo with back-pressure: the transport produces into itself, so it
        # stops reading while its write buffer is full.
        self._consumer.registerProducer(cast(IPushProducer, self.transport), True)
        data, self._buffer = self._buffer, b""
        if data:
            self._echo(data)
        if self._read_closed:
            self.readConnectionLost()

    def _echo(self, data: bytes) -> None:
        self._write(data)

    def _response_done(self, close: bool = False) -> None:
        """The current response is complete: go on with the next request."""
        self._producer = None
        request = self._request
        self._request = self._body = None
        if self._state == "closed":
            return
        if close or (request is not None and self._wants_close(request)):
            self._close()
            return
        self._state = "head"
        self._advance()

    @property
    def _consumer(self) -> IConsumer:
        """The transport, typed as what it also is: a consumer of producers."""
        assert self.transport is not None
        return cast(IConsumer, self.transport)

    def _write(self, data: bytes) -> None:
        assert self.transport is not None
        self.transport.write(data)

    def _close(self) -> None:
        self._state = "closed"
        self._buffer = b""
        assert self.transport is not None
        self.transport.loseConnection()


@define(eq=False)
class FakeDockerdFactory(Factory):
    """
    Builds L{FakeDockerdProtocol}s and keeps what tests assert on.

    @ivar requests: every parsed request head, in arrival order.
    @ivar bad_requests: the reasons of requests answered with 400/431.
    @ivar connections_made: connections accepted so far.
    @ivar open_connections: connections not yet lost.
    @ivar bytes_received: bytes received on all connections.
    @ivar big_bytes_written: C{/big} body bytes handed to transports so far.
    @ivar max_head_bytes: a longer request head gets a 431.
    @ivar require_host: answer HTTP/1.1 requests without exactly one C{Host}
        header with a 400, as Go does.
    """

    _clock: IReactorTime | None = field(default=None, alias="clock")
    max_head_bytes: int = 1 << 20
    require_host: bool = True
    requests: list[FakeRequest] = AttrsFactory(list)
    bad_requests: list[str] = AttrsFactory(list)
    connections_made: int = 0
    open_connections: int = 0
    bytes_received: int = 0
    big_bytes_written: int = 0
    _events: list[FakeDockerdProtocol] = field(factory=list, repr=False)
    _protocols: set[FakeDockerdProtocol] = field(factory=set, repr=False)
    _idle_waiters: list[Deferred[None]] = field(factory=list, repr=False)

    noisy = False

    @property
    def clock(self) -> IReactorTime:
        """The injected clock, or the global reactor (imported only here)."""
        if self._clock is None:
            from twisted.internet import reactor

            self._clock = cast(IReactorTime, reactor)
        return self._clock

    def buildProtocol(  # type: ignore[override]
        self, addr: IAddress | None
    ) -> FakeDockerdProtocol:
        # (Twisted's typing wants a settable Any-typed .factory on protocols.)
        self.connections_made += 1
        protocol = FakeDockerdProtocol(self, self.connections_made)
        self._protocols.add(protocol)
        return protocol

    @property
    def event_listeners(self) -> int:
        """How many C{/events} responses are open."""
        return len(self._events)

    def emit_event(self, data: bytes) -> None:
        """Write C{data} as one chunk to every open C{/events} response."""
        if not data:
            raise ValueError("an empty chunk would end the response")
        for protocol in list(self._events):
            protocol._emit(data)

    def end_events(self) -> None:
        """Finish every open C{/events} response with the last chunk."""
        for protocol in list(self._events):
            protocol._end_events()

    def when_idle(self) -> Deferred[None]:
        """A Deferred that fires once no connection is open."""
        d: Deferred[None] = Deferred()
        if self.open_connections == 0:
            d.callback(None)
        else:
            self._idle_waiters.append(d)
        return d

    def abort_all(self) -> None:
        """Abort every open connection (test cleanup)."""
        for protocol in list(self._protocols):
            if protocol.transport is not None:
                cast(ITCPTransport, protocol.transport).abortConnection()

    def _connection_closed(self, protocol: FakeDockerdProtocol) -> None:
        self.open_connections -= 1
        self._protocols.discard(protocol)
        if self.open_connections == 0:
            waiters, self._idle_waiters = self._idle_waiters, []
            for d in waiters:
                d.callback(None)
