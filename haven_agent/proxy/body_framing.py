# -*- test-case-name: tests.proxy.test_body_framing -*-
"""
Finding where a request body ends while its bytes stream past untouched.

A keep-alive connection carries one request after another, and each must
pass the gate, so the proxy has to know where each body ends. Bodies have no
size limit (`docker load` and `docker build` send gigabytes, chunked), so the
trackers never keep body bytes: they count through chunk payloads and only
look at the few bytes of chunk-size lines and trailers, each bounded.
"""

from __future__ import annotations

import re

MAX_CHUNK_LINE = 4096
MAX_TRAILERS = 64 * 1024

_CHUNK_SIZE = re.compile(rb"[0-9a-fA-F]{1,15}")


class FramingError(Exception):
    """
    The body's framing is malformed; bytes up to `end` were part of it.
    """

    def __init__(self, message: str, end: int) -> None:
        super().__init__(message)
        self.message = message
        self.end = end


class LengthBody:
    """
    A body of a known number of bytes (Content-Length, or none at all).
    """

    def __init__(self, length: int) -> None:
        self._remaining = length

    @property
    def done(self) -> bool:
        return self._remaining == 0

    def endIn(self, data: bytes, start: int = 0) -> int:
        """
        Consume body bytes from C{data[start:]}; return where the body ends
        in C{data}, or C{len(data)} when it goes on.
        """
        take = min(self._remaining, len(data) - start)
        self._remaining -= take
        return start + take


_SIZE, _DATA, _DATA_END, _TRAILER, _DONE = range(5)


class ChunkedBody:
    """
    A chunked body (RFC 9112 section 7.1), parsed as leniently as Go's
    net/http, which is what dockerd will use to read the same bytes.
    """

    def __init__(self) -> None:
        self._state = _SIZE
        self._line = b""
        self._remaining = 0
        self._trailerBytes = 0

    @property
    def done(self) -> bool:
        return self._state == _DONE

    def endIn(self, data: bytes, start: int = 0) -> int:
        """
        Consume body bytes from C{data[start:]}; return where the body ends
        in C{data}, or C{len(data)} when it goes on.

        @raise FramingError: on a malformed chunk-size line, a missing CRLF
            after chunk data, or lines beyond their bounds.
        """
        position = start
        size = len(data)
        while position < size:
            state = self._state
            if state == _DATA:
                take = min(self._remaining, size - position)
                position += take
                self._remaining -= take
                if self._remaining == 0:
                    self._state = _DATA_END
            elif state == _DONE:
                return position
            else:
                newline = data.find(b"\n", position)
                end = size if newline < 0 else newline
                self._checkLineLength(position, end)
                if newline < 0:
                    self._line += data[position:]
                    return size
                line = self._line + data[position:newline]
                self._line = b""
                position = newline + 1
                self._lineComplete(line.rstrip(b"\r"), position)
        return position

    def _checkLineLength(self, start: int, end: int) -> None:
        """
        Refuse a line that outgrows its bound, at the byte where it does: the
        same stream offset however the bytes were cut into reads.
        """
        limit = MAX_TRAILERS if self._state == _TRAILER else MAX_CHUNK_LINE
        prior = len(self._line)
        if prior + (end - start) > limit:
            raise FramingError("chunk line too long", start + limit + 1 - prior)

    def _lineComplete(self, line: bytes, end: int) -> None:
        state = self._state
        if state == _SIZE:
            sizeField = line.split(b";", 1)[0].strip(b" \t")
            if _CHUNK_SIZE.fullmatch(sizeField) is None:
                raise FramingError("malformed chunk size", end)
            self._remaining = int(sizeField, 16)
            self._state = _DATA if self._remaining else _TRAILER
        elif state == _DATA_END:
            if line:
                raise FramingError("chunk data not followed by CRLF", end)
            self._state = _SIZE
        else:
            self._trailerBytes += len(line) + 2
            if self._trailerBytes > MAX_TRAILERS:
                raise FramingError("trailers too long", end)
            if not line:
                self._state = _DONE


#: Bodies a policy judges are read whole by the gate, up to this many bytes
#: (as dockerd's own authorization plugins read them); larger ones are
#: refused with 413 rather than let through unread.
MAX_JUDGED_BODY = 4 * 1024 * 1024
#: What chunk framing may add to a judged body: the size lines and
#: trailers of a body of many small chunks.
MAX_CHUNK_FRAMING = 1024 * 1024


def dechunk(raw: bytes) -> bytes:
    """
    The payload of a complete chunked body (as `ChunkedBody` found its
    end), without its framing.

    @raise FramingError: when it is not one.
    """
    payload = []
    position = 0
    while True:
        newline = raw.find(b"\n", position)
        if newline < 0:
            raise FramingError("chunked body without its end", position)
        sizeField = raw[position:newline].rstrip(b"\r").split(b";", 1)[0].strip(b" \t")
        if _CHUNK_SIZE.fullmatch(sizeField) is None:
            raise FramingError("malformed chunk size", newline)
        size = int(sizeField, 16)
        position = newline + 1
        if not size:
            return b"".join(payload)
        payload.append(raw[position : position + size])
        position += size
        if raw[position : position + 2] == b"\r\n":
            position += 2
        elif raw[position : position + 1] == b"\n":
            position += 1
        else:
            raise FramingError("chunk data not followed by CRLF", position)
