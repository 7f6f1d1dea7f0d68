# -*- test-case-name: tests.proxy.test_http_head -*-
"""
Reading and judging one HTTP/1.x request head, without touching its bytes.

The proxy must decide three things about every request before it lets the
request through: who sent it (the Authorization header), where its body ends
(so the next request on a keep-alive connection is gated too), and whether
dockerd will turn the connection into a raw stream (attach, exec, upgrades).
Everything else is dockerd's business: the head is parsed only to answer
those questions and is then forwarded exactly as it arrived.

Framing follows RFC 9112 section 6 strictly, and refuses the ambiguous cases
(Content-Length together with Transfer-Encoding, differing lengths) that
would let a proxy and a server disagree about where a request ends.
"""

from __future__ import annotations

import re
from urllib.parse import unquote_to_bytes

from attrs import frozen

MAX_HEAD_BYTES = 64 * 1024

_TOKEN = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+\Z")
_VERSION = re.compile(rb"HTTP/1\.[01]\Z")
_BAD_TARGET_BYTE = re.compile(rb"[\x00-\x20\x7f]")
_BAD_FIELD_BYTE = re.compile(rb"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]|\r(?!\n)")
_DIGITS = re.compile(rb"[0-9]{1,18}\Z")
_API_PREFIX = re.compile(rb"\A/v[0-9.]+(?=/)")
_HIJACK_PATHS = (
    re.compile(rb"\A/containers/.+/attach\Z", re.S),
    re.compile(rb"\A/exec/.+/start\Z", re.S),
)


class HeadError(Exception):
    """
    The request head cannot be accepted; `status` is the HTTP answer.
    """

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


@frozen
class Framing:
    """
    Where a request body ends: `chunked`, or else `length` bytes (0 for none).
    """

    chunked: bool = False
    length: int = 0


class RequestHead:
    """
    One request head: the exact bytes received and what was read from them.

    Header names are lower-cased and values stripped of surrounding
    whitespace in `headers`; `raw` is what is forwarded. A head is not
    changed once parsed.

    `path`, `apiPath`, `framing` and `hijacks` are computed on first use and
    remembered (the gate asks for each more than once per request); a
    `framing` that raises is not remembered, so it raises again on every
    access. Plain slots, not attrs' cached properties: those cost a failed
    attribute lookup and a generated C{__getattr__} each, three times for
    every request.
    """

    __slots__ = (
        "raw",
        "method",
        "target",
        "version",
        "headers",
        "_path",
        "_apiPath",
        "_framing",
        "_hijacks",
    )

    def __init__(
        self,
        raw: bytes,
        method: bytes,
        target: bytes,
        version: bytes,
        headers: tuple[tuple[bytes, bytes], ...],
    ) -> None:
        self.raw = raw
        self.method = method
        self.target = target
        self.version = version
        self.headers = headers
        self._path: bytes | None = None
        self._apiPath: bytes | None = None
        self._framing: Framing | None = None
        self._hijacks: bool | None = None

    def __repr__(self) -> str:
        return f"RequestHead({self.raw!r})"

    def values(self, name: bytes) -> list[bytes]:
        """
        All values of the header C{name} (lower-case), in order.
        """
        return [value for key, value in self.headers if key == name]

    def first(self, name: bytes) -> bytes | None:
        for key, value in self.headers:
            if key == name:
                return value
        return None

    @property
    def path(self) -> bytes:
        """
        The target's path, without query, percent-decoded and normalised
        (no dot segments, no empty segments), for deciding what a request
        is; the target itself is forwarded as it came.
        """
        path = self._path
        if path is None:
            target = self.target
            if target.startswith((b"http://", b"https://")):
                slash = target.find(b"/", target.find(b"//") + 2)
                target = target[slash:] if slash >= 0 else b"/"
            decoded = unquote_to_bytes(target.split(b"?", 1)[0].split(b"#", 1)[0])
            path = self._path = normalize_path(decoded)
        return path

    @property
    def apiPath(self) -> bytes:
        """
        L{path} without a leading C{/vX.Y} API version.
        """
        apiPath = self._apiPath
        if apiPath is None:
            apiPath = self._apiPath = _API_PREFIX.sub(b"", self.path, count=1)
        return apiPath

    @property
    def framing(self) -> Framing:
        """
        Where the body ends.

        @raise HeadError: for framing that is refused (see L{_framing}).
        """
        framing = self._framing
        if framing is None:
            framing = self._framing = _framing(self)
        return framing

    @property
    def hijacks(self) -> bool:
        """
        May dockerd turn this connection into a raw two-way stream?

        Any C{Upgrade} request may (tcp for attach/exec, h2c for BuildKit
        sessions, websocket for the attach/ws terminal), and so may attach
        and exec start without one: older clients get a C{200} raw stream.
        Whether it did is told by the answer (see `answer_framing`).
        """
        hijacks = self._hijacks
        if hijacks is None:
            if self.first(b"upgrade") is not None:
                hijacks = True
            elif self.method != b"POST":
                hijacks = False
            else:
                hijacks = any(pattern.match(self.apiPath) for pattern in _HIJACK_PATHS)
            self._hijacks = hijacks
        return hijacks


def first_query_value(target: bytes, name: bytes) -> bytes | None:
    """
    The first value of the query parameter C{name}, percent-decoded, as
    Go's C{url.Values.Get} gives it (None when absent).
    """
    _, question, query = target.partition(b"?")
    if not question:
        return None
    for pair in query.split(b"&"):
        key, _, value = pair.partition(b"=")
        if unquote_to_bytes(key.replace(b"+", b" ")) == name:
            return unquote_to_bytes(value.replace(b"+", b" "))
    return None


def head_end(data: bytes | bytearray, start: int = 0) -> int:
    """
    Where the head in C{data[start:]} ends (after its empty line), or -1.

    The head ends at the first line feed followed by an empty line, CRLF
    or bare LF alike: what the regular expression C{\\r?\\n\\r?\\n} finds,
    from two C{find}s, which scan in C many times faster than the regular
    expression engine tries each position.
    """
    bare = data.find(b"\n\n", start)
    crlf = data.find(b"\n\r\n", start)
    if crlf >= 0 and (bare < 0 or crlf < bare):
        return crlf + 3
    return bare + 2 if bare >= 0 else -1


def normalize_path(path: bytes) -> bytes:
    """
    Remove dot segments (RFC 3986 section 5.2.4) and empty segments, the
    way dockerd's router cleans paths before matching them.
    """
    segments: list[bytes] = []
    for segment in path.split(b"/"):
        if segment == b"..":
            if segments:
                segments.pop()
        elif segment not in (b"", b"."):
            segments.append(segment)
    return b"/" + b"/".join(segments)


def _framing(head: RequestHead) -> Framing:
    encodings = _list_values(head.values(b"transfer-encoding"))
    lengths = _list_values(head.values(b"content-length"))
    if encodings:
        if lengths:
            raise HeadError(400, "both Transfer-Encoding and Content-Length given")
        if head.version == b"HTTP/1.0":
            raise HeadError(400, "Transfer-Encoding is not allowed in HTTP/1.0")
        if [coding.lower() for coding in encodings] != [b"chunked"]:
            raise HeadError(501, "only the chunked transfer coding is supported")
        return Framing(chunked=True)
    if lengths:
        if any(_DIGITS.match(value) is None for value in lengths):
            raise HeadError(400, "invalid Content-Length")
        if len(set(lengths)) != 1:
            raise HeadError(400, "conflicting Content-Length values")
        return Framing(length=int(lengths[0]))
    return Framing()


def _list_values(values: list[bytes]) -> list[bytes]:
    return [item.strip() for value in values for item in value.split(b",")]


def parse_head(raw: bytes) -> RequestHead:
    """
    Parse a complete head (request line through the empty line).

    @raise HeadError: 400 for anything that is not a well-formed HTTP/1.0 or
        HTTP/1.1 request head.
    """
    lines = raw.split(b"\n")
    # The head ends with an empty line, so the split ends with two empties.
    lines = [line[:-1] if line.endswith(b"\r") else line for line in lines[:-2]]
    parts = lines[0].split(b" ")
    if len(parts) != 3:
        raise HeadError(400, "malformed request line")
    method, target, version = parts
    if _TOKEN.match(method) is None:
        raise HeadError(400, "malformed request method")
    if _VERSION.match(version) is None:
        raise HeadError(400, "only HTTP/1.0 and HTTP/1.1 are served here")
    if not target or _BAD_TARGET_BYTE.search(target):
        raise HeadError(400, "malformed request target")
    if not (target.startswith((b"/", b"http://", b"https://")) or target == b"*"):
        raise HeadError(400, "malformed request target")
    # One scan of all header lines for bytes no field may hold (control
    # bytes other than tab, a CR not ending a line), instead of one per line.
    if _BAD_FIELD_BYTE.search(raw, len(lines[0])):
        raise HeadError(400, "invalid character in a header line")
    headers = []
    # Bound once: this loop runs for every header of every request.
    isToken, append = _TOKEN.match, headers.append
    for line in lines[1:]:
        name, colon, value = line.partition(b":")
        if not colon or isToken(name) is None:
            raise HeadError(400, "malformed header line")
        append((name.lower(), value.strip(b" \t")))
    return RequestHead(raw, method, target, version, tuple(headers))


class HeadReader:
    """
    Collects bytes until one request head is complete, within a size bound.

    Empty lines before a request line are dropped (RFC 9112 section 2.2:
    some clients send a CRLF after a request body).
    """

    __slots__ = ("_limit", "_buffer")

    def __init__(self, limit: int = MAX_HEAD_BYTES) -> None:
        self._limit = limit
        # A bytearray grows in place: a head trickling in a byte at a time
        # must not cost a copy of everything so far per byte.
        self._buffer = bytearray()

    @property
    def started(self) -> bool:
        """
        Has any byte of the next head arrived?
        """
        return bool(self._buffer)

    def headAndRest(self, data: bytes) -> tuple[RequestHead | None, bytes]:
        """
        Add C{data}; return the head once complete, with the bytes after it.

        @raise HeadError: 431 when the head outgrows the limit, 400 when it
            is malformed.
        """
        buffer = self._buffer
        if not buffer:
            # The usual case: a whole head in one read. Look for its end in
            # C{data} itself rather than copying it into the buffer and out.
            data = data.lstrip(b"\r\n")
            stop = head_end(data)
            if stop >= 0:
                if stop > self._limit:
                    buffer += data  # as the general path leaves it
                    raise HeadError(431, "request head larger than 64 KiB")
                return parse_head(data[:stop]), data[stop:]
            buffer += data
            if len(buffer) > self._limit:
                raise HeadError(431, "request head larger than 64 KiB")
            return None, b""
        searchFrom = max(0, len(buffer) - 3)
        buffer += data
        stop = head_end(buffer, searchFrom)
        if stop < 0:
            if len(buffer) > self._limit:
                raise HeadError(431, "request head larger than 64 KiB")
            return None, b""
        if stop > self._limit:
            raise HeadError(431, "request head larger than 64 KiB")
        self._buffer = bytearray()
        return parse_head(bytes(buffer[:stop])), bytes(buffer[stop:])
