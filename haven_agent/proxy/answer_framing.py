# -*- test-case-name: tests.proxy.test_answer_framing -*-
"""
Framing dockerd's answers, so each one is matched to its request.

HTTP/1.1 answers come back in the order the requests went out (RFC 9112
section 9.3.2), so knowing where each answer ends is enough to know whose it
is. That is what lets the gate tell a hijack from an ordinary answer on a
connection that carries pipelined requests, give the access log dockerd's
status code and time to first byte, and answer a refusal right after the
last earlier answer instead of in the middle of it.

This module does no I/O and knows nothing of Twisted: `AnswerFramer.eventsIn`
takes the bytes as they arrive and returns what happened in them, with
offsets, while the caller passes the bytes on untouched. Only the head of
each answer is scanned (bounded); bodies cost arithmetic (Content-Length) or
a look at each chunk-size line (chunked), never a pass over their bytes.

The body of an answer ends per RFC 9112 section 6.3: no body for a HEAD
request or a 1xx, 204 or 304 status; interim 1xx answers (`100 Continue`)
come before the real one; `Transfer-Encoding` ending in chunked, else
Content-Length, else the answer runs until dockerd closes. A request that
may hijack (see `RequestHead.hijacks`) is hijacked when its answer is `101`
(dockerd's `101 UPGRADED`, WebSocket's `101 Switching Protocols`) or,
for clients that did not ask for an upgrade, dockerd's legacy `200` raw
stream (`application/vnd.docker.raw-stream` or `multiplexed-stream`
without framing): from then on the connection is raw both ways.
"""

from __future__ import annotations

import re
from enum import Enum
from typing import NamedTuple

from haven_agent.proxy.body_framing import ChunkedBody, FramingError
from haven_agent.proxy.http_head import head_end

MAX_ANSWER_HEAD_BYTES = 64 * 1024

_STATUS_LINE = re.compile(rb"HTTP/1\.[01] ([0-9]{3})(?:[ \t][^\r\n]*)?\r?\n")
_DIGITS = re.compile(rb"[0-9]{1,18}\Z")
_RAW_STREAM = b"application/vnd.docker."


class Event(Enum):
    """
    What happened to the answer at the front of the queue.
    """

    #: Its head is complete: C{status} is known (interim 1xx are skipped).
    ANSWERED = "answered"
    #: It is complete; the next answer, if any, starts at C{offset}.
    ENDED = "ended"
    #: dockerd hijacked the connection: raw both ways from C{offset} on.
    HIJACKED = "hijacked"
    #: Its body runs until dockerd closes: no later answer will come.
    UNTIL_CLOSE = "until close"
    #: It cannot be framed (C{message} says why): no later answer is known.
    UNFRAMEABLE = "unframeable"


class AnswerEvent(NamedTuple):
    kind: Event
    offset: int
    status: int = 0
    message: str = ""


class _Expected(NamedTuple):
    """
    What the framer needs of a request to frame its answer.
    """

    head: bool
    mayHijack: bool


#: The answer to a request the framer was not told of (dockerd answers a
#: request it could not read, then closes).
_UNSOLICITED = _Expected(False, False)

_NO_EVENTS: tuple[AnswerEvent, ...] = ()


#: Builds a named tuple from a tuple in C; the named tuple's own __new__ is
#: a Python function, called several times per request.
_new_tuple = tuple.__new__


class _State(Enum):
    HEAD = "head"
    LENGTH = "length"
    CHUNKED = "chunked"
    UNTIL_CLOSE = "until close"
    RAW = "raw"
    BROKEN = "broken"


#: States in which no further answer can be framed.
_FINAL = frozenset((_State.UNTIL_CLOSE, _State.RAW, _State.BROKEN))


class AnswerFramer:
    """
    Follows dockerd's answers on one connection, in request order.

    Tell it of each request forwarded (L{expect}); feed it dockerd's bytes
    (L{eventsIn}).
    """

    __slots__ = ("_limit", "_queue", "_state", "_buffer", "_remaining", "_chunks")

    def __init__(self, limit: int = MAX_ANSWER_HEAD_BYTES) -> None:
        self._limit = limit
        # A list, not a deque (600 bytes empty): see GateProtocol._records.
        self._queue: list[_Expected] = []
        self._state = _State.HEAD
        self._buffer = b""
        self._remaining = 0
        self._chunks: ChunkedBody | None = None

    def expect(self, method: bytes, mayHijack: bool) -> None:
        """
        A request with C{method} went to dockerd; its answer comes after
        those of the requests before it.
        """
        self._queue.append(_new_tuple(_Expected, (method == b"HEAD", mayHijack)))

    @property
    def outstanding(self) -> int:
        """
        How many requests told of have no complete answer yet.
        """
        return len(self._queue)

    def eventsIn(self, data: bytes) -> tuple[AnswerEvent, ...] | list[AnswerEvent]:
        """
        What happened to the answers in C{data}, in order; offsets index
        C{data}. Most reads of a long body return no events at all.
        """
        state = self._state
        if state is _State.LENGTH:
            # The bulk case, kept to one comparison and one subtraction.
            if len(data) < self._remaining:
                self._remaining -= len(data)
                return _NO_EVENTS
        elif state in _FINAL:
            return _NO_EVENTS
        events: list[AnswerEvent] = []
        position = 0
        size = len(data)
        while position < size:
            state = self._state
            if state is _State.LENGTH:
                take = min(self._remaining, size - position)
                position += take
                self._remaining -= take
                if not self._remaining:
                    self._ended(position, events)
            elif state is _State.HEAD:
                after = -1 if self._buffer else head_end(data, position)
                if 0 <= after - position <= self._limit:
                    # A whole head in this read (the usual case).
                    self._answerHead(data[position:after], after, events)
                    position = after
                else:
                    position = self._readHead(data, position, events)
            elif state is _State.CHUNKED:
                try:
                    position = self._chunks.endIn(data, position)  # type: ignore[union-attr]
                except FramingError as error:
                    self._broken(
                        error.end, f"malformed chunked answer: {error}", events
                    )
                    break
                if self._chunks.done:  # type: ignore[union-attr]
                    self._chunks = None
                    self._ended(position, events)
            else:
                break
        return events

    def statusOfWhole(self, data: bytes) -> int:
        """
        The status of the answer that C{data} is, when it is exactly one
        whole ordinary answer (a head with one Content-Length, and that
        body) to the only request outstanding, which is then done; else 0,
        and nothing has changed: ask L{eventsIn}.

        The keep-alive request's usual answer, found without building an
        event for it.
        """
        queue = self._queue
        if self._state is not _State.HEAD or self._buffer or len(queue) != 1:
            return 0
        expected = queue[0]
        if expected.head or expected.mayHijack:
            return 0
        after = head_end(data)
        if after < 0 or after > self._limit:
            return 0
        line = _STATUS_LINE.match(data, 0, after)
        if line is None:
            return 0
        status = int(line.group(1))
        if status < 200 or status == 204 or status == 304:
            return 0
        length = _plain_length(data[:after])
        if length < 0 or after + length != len(data):
            return 0
        queue.pop(0)
        return status

    def _readHead(self, data: bytes, position: int, events: list) -> int:
        if self._buffer:
            start = len(self._buffer)
            buffered = self._buffer + data[position:]
            stop = head_end(buffered, max(0, start - 3))
            if stop < 0:
                self._keep(buffered, len(data), events)
                return len(data)
            head = buffered[:stop]
            self._buffer = b""
            after = position + stop - start
        else:
            after = head_end(data, position)
            if after < 0:
                self._keep(data[position:], len(data), events)
                return len(data)
            head = data[position:after]
        if len(head) > self._limit:
            self._broken(after, "answer head larger than 64 KiB", events)
            return len(data)
        self._answerHead(head, after, events)
        return after

    def _keep(self, partial: bytes, size: int, events: list) -> None:
        if len(partial) > self._limit:
            self._broken(size, "answer head larger than 64 KiB", events)
        else:
            self._buffer = partial

    def _answerHead(self, head: bytes, after: int, events: list) -> None:
        line = _STATUS_LINE.match(head)
        if line is None:
            self._broken(after, "malformed status line", events)
            return
        status = int(line.group(1))
        expected = self._queue[0] if self._queue else _UNSOLICITED
        if status == 101:
            if expected.mayHijack:
                self._state = _State.RAW
                events.append(
                    _new_tuple(AnswerEvent, (Event.HIJACKED, after, status, ""))
                )
            else:
                self._broken(
                    after, "101 to a request that did not ask to upgrade", events
                )
            return
        if status < 200:
            # Interim (100 Continue, 102, 103): the real answer follows.
            return
        if expected.head or status in (204, 304):
            events.append(_new_tuple(AnswerEvent, (Event.ANSWERED, after, status, "")))
            self._ended(after, events)
            return
        if not expected.mayHijack:
            length = _plain_length(head)
            if length >= 0:
                events.append(
                    _new_tuple(AnswerEvent, (Event.ANSWERED, after, status, ""))
                )
                if length:
                    self._state = _State.LENGTH
                    self._remaining = length
                else:
                    self._ended(after, events)
                return
        encodings, lengths, contentType = _framing_fields(head)
        if (
            expected.mayHijack
            and status == 200
            and not encodings
            and not lengths
            and contentType.startswith(_RAW_STREAM)
        ):
            self._state = _State.RAW
            events.append(_new_tuple(AnswerEvent, (Event.HIJACKED, after, status, "")))
            return
        events.append(_new_tuple(AnswerEvent, (Event.ANSWERED, after, status, "")))
        if encodings:
            if encodings[-1].lower() == b"chunked":
                self._state = _State.CHUNKED
                self._chunks = ChunkedBody()
            else:
                self._untilClose(after, status, events)
        elif not lengths:
            self._untilClose(after, status, events)
        elif len(set(lengths)) != 1 or _DIGITS.match(lengths[0]) is None:
            self._broken(after, "invalid Content-Length in an answer", events)
        elif not int(lengths[0]):
            self._ended(after, events)
        else:
            self._state = _State.LENGTH
            self._remaining = int(lengths[0])

    def _ended(self, offset: int, events: list) -> None:
        if self._queue:
            self._queue.pop(0)
        self._state = _State.HEAD
        events.append(_new_tuple(AnswerEvent, (Event.ENDED, offset, 0, "")))

    def _untilClose(self, offset: int, status: int, events: list) -> None:
        self._state = _State.UNTIL_CLOSE
        events.append(_new_tuple(AnswerEvent, (Event.UNTIL_CLOSE, offset, status, "")))

    def _broken(self, offset: int, message: str, events: list) -> None:
        self._state = _State.BROKEN
        self._buffer = b""
        events.append(_new_tuple(AnswerEvent, (Event.UNFRAMEABLE, offset, 0, message)))


def _plain_length(head: bytes) -> int:
    """
    The body length of an answer head with one Content-Length and no
    Transfer-Encoding (the usual answer), or -1 for any other head: found
    with C{find}, without building lists of every field.
    """
    lowered = head.lower()
    if b"\ntransfer-encoding:" in lowered:
        return -1
    at = lowered.find(b"\ncontent-length:")
    if at < 0 or lowered.find(b"\ncontent-length:", at + 16) >= 0:
        return -1
    value = lowered[at + 16 : lowered.find(b"\n", at + 16)].strip()
    if not value.isdigit() or len(value) > 18:
        return -1
    return int(value)


def _framing_fields(head: bytes) -> tuple[list[bytes], list[bytes], bytes]:
    """
    The Transfer-Encoding codings, Content-Length values and Content-Type
    of an answer's head. Other fields are not looked at: they cannot change
    where the answer ends.

    The head is lower-cased once and each field found with C{find}, which
    scans in C: a Python loop over every header line of every answer cost
    more than the rest of the gate's work for a keep-alive request.
    """
    lowered = head.lower()
    encodings = [
        item.strip()
        for value in _field_values(lowered, b"\ntransfer-encoding:")
        for item in value.split(b",")
        if item.strip()
    ]
    lengths = [
        item.strip()
        for value in _field_values(lowered, b"\ncontent-length:")
        for item in value.split(b",")
    ]
    types = _field_values(lowered, b"\ncontent-type:")
    return encodings, lengths, types[-1].strip() if types else b""


def _field_values(lowered: bytes, name: bytes) -> list[bytes]:
    """
    The values of every C{name} field line (C{b"\\nname:"}) in C{lowered}.
    """
    values = []
    start = lowered.find(name)
    while start >= 0:
        start += len(name)
        end = lowered.find(b"\n", start)
        values.append(lowered[start:end].rstrip(b"\r").strip(b" \t"))
        start = lowered.find(name, end)
    return values
