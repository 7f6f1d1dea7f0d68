"""
Tests for L{tests.fake_dockerd}.

The proxy's tests trust the fake daemon to show exactly what reached dockerd
and to behave like dockerd at the byte level (framing, pipelining,
back-pressure, hijack and half-close).  A fake that is wrong would make those
tests prove nothing, so it is checked here on its own: parsing and timing with
L{StringTransport} and a L{Clock}, and the kernel-dependent parts (half-close,
back-pressure, pipelining over a socket) on a real UNIX socket.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Callable
from typing import cast

from attrs import define, field
from twisted.internet import reactor
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.endpoints import UNIXClientEndpoint, connectProtocol
from twisted.internet.interfaces import IHalfCloseableProtocol, IReactorUNIX
from twisted.internet.protocol import Protocol, connectionDone
from twisted.internet.task import Clock, deferLater
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase, TestCase
from zope.interface import implementer

from tests.fake_dockerd import (
    LEGACY_HIJACKED,
    UPGRADED,
    FakeDockerdFactory,
    pattern_bytes,
    short_socket_path,
)

PING = b"GET /_ping HTTP/1.1\r\nHost: docker\r\n\r\n"


@define
class Response:
    """One parsed HTTP response; C{raw_body} keeps the chunk framing."""

    status: bytes
    headers: list[tuple[bytes, bytes]]
    body: bytes
    raw_body: bytes

    def header(self, name: bytes) -> bytes | None:
        for key, value in self.headers:
            if key.lower() == name.lower():
                return value
        return None


def parse_responses(data: bytes) -> tuple[list[Response], bytes]:
    """
    Split C{data} into complete HTTP responses (Content-Length or chunked
    bodies) and the unparsed rest.
    """
    responses: list[Response] = []
    while True:
        end = data.find(b"\r\n\r\n")
        if end < 0:
            return responses, data
        lines = data[:end].split(b"\r\n")
        headers = [(k, v) for (k, _, v) in (x.partition(b": ") for x in lines[1:])]
        response = Response(lines[0], headers, b"", b"")
        rest = data[end + 4 :]
        if response.header(b"transfer-encoding") == b"chunked":
            pos, pieces = 0, []
            while True:
                eol = rest.find(b"\r\n", pos)
                if eol < 0:
                    return responses, data
                size = int(rest[pos:eol], 16)
                if len(rest) < eol + 2 + size + 2:
                    return responses, data
                pieces.append(rest[eol + 2 : eol + 2 + size])
                assert rest[eol + 2 + size : eol + 4 + size] == b"\r\n"
                pos = eol + 4 + size
                if not size:
                    break
            response.body, response.raw_body = b"".join(pieces), rest[:pos]
            data = rest[pos:]
        else:
            length = int(response.header(b"content-length") or b"0")
            if len(rest) < length:
                return responses, data
            response.body = response.raw_body = rest[:length]
            data = rest[length:]
        responses.append(response)


@implementer(IHalfCloseableProtocol)
@define(eq=False)
class Client(Protocol):
    """Collects what the fake sends; tests wait for conditions on it."""

    data: bytearray = field(factory=bytearray)
    read_closed: bool = False
    lost: bool = False
    _waiters: list[tuple[Callable[[bytearray], bool], Deferred[bytes]]] = field(
        factory=list
    )
    _lost_waiters: list[Deferred[None]] = field(factory=list)

    def dataReceived(self, data: bytes) -> None:
        self.data += data
        self._check()

    def until(self, predicate: Callable[[bytearray], bool]) -> Deferred[bytes]:
        """
        Fire with the data received once C{predicate} holds for it (it is
        given the live buffer, not a copy, so it stays cheap on big bodies).
        """
        d: Deferred[bytes] = Deferred()
        self._waiters.append((predicate, d))
        self._check()
        return d

    def responses(self, n: int) -> Deferred[list[Response]]:
        """Fire with the first C{n} complete responses."""
        d = self.until(lambda data: len(parse_responses(bytes(data))[0]) >= n)
        return d.addCallback(lambda data: parse_responses(data)[0][:n])

    def when_lost(self) -> Deferred[None]:
        d: Deferred[None] = Deferred()
        if self.lost:
            d.callback(None)
        else:
            self._lost_waiters.append(d)
        return d

    def _check(self) -> None:
        for waiter in list(self._waiters):
            predicate, d = waiter
            if predicate(self.data):
                self._waiters.remove(waiter)
                d.callback(bytes(self.data))
            elif self.lost:
                self._waiters.remove(waiter)
                got = bytes(self.data[:500])
                d.errback(AssertionError(f"connection lost; got {got!r}"))

    def readConnectionLost(self) -> None:
        # The fake never half-closes: end of input means it closed, so finish
        # our side too (a half-closeable protocol is not closed for us).
        self.read_closed = True
        assert self.transport is not None
        self.transport.loseConnection()

    def writeConnectionLost(self) -> None:
        pass

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self.lost = True
        self._check()
        waiters, self._lost_waiters = self._lost_waiters, []
        for d in waiters:
            d.callback(None)


class FakeDockerdSocketTests(TestCase):
    """The fake on a real UNIX socket with the real reactor."""

    timeout = 5

    def setUp(self) -> None:
        self.path = short_socket_path()
        self.addCleanup(shutil.rmtree, os.path.dirname(self.path), True)
        self.factory = FakeDockerdFactory()
        port = cast(IReactorUNIX, reactor).listenUNIX(self.path, self.factory)
        self.addCleanup(port.stopListening)
        self.addCleanup(self.factory.when_idle)

    @inlineCallbacks
    def connect(self):
        client = Client()
        endpoint = UNIXClientEndpoint(reactor, self.path)
        yield connectProtocol(endpoint, client)

        def close() -> Deferred[None]:
            if not client.lost:
                client.transport.abortConnection()
            return client.when_lost()

        self.addCleanup(close)
        return client

    @inlineCallbacks
    def test_ping_and_version(self):
        """
        C{/_ping} answers C{OK} and C{/version} a JSON document, with or
        without an API version prefix.
        """
        client = yield self.connect()
        client.transport.write(
            PING + b"GET /v1.41/version HTTP/1.1\r\nHost: docker\r\n\r\n"
        )
        ping, version = yield client.responses(2)
        self.assertEqual(ping.status, b"HTTP/1.1 200 OK")
        self.assertEqual(ping.body, b"OK")
        self.assertEqual(ping.header(b"Api-Version"), b"1.41")
        self.assertEqual(
            json.loads(version.body), {"ApiVersion": "1.41", "Version": "fake"}
        )
        self.assertEqual(
            [(r.method, r.path) for r in self.factory.requests],
            [("GET", "/_ping"), ("GET", "/version")],
        )

    @inlineCallbacks
    def test_echo_head(self):
        """
        C{/echo-head} answers with the request head and body exactly as
        received, odd spacing, header case and chunk framing included.
        """
        head = (
            b"PUT /v1.24/echo-head/x?a=%20b HTTP/1.1\r\n"
            b"host:   docker  \r\n"
            b"X-ODD-case: a\tb\r\n"
            b"Transfer-Encoding: chunked\r\n"
            b"\r\n"
        )
        body = b"5;ext=1\r\nhello\r\n1\r\n \r\n5\r\nworld\r\n0\r\nTrailer: x\r\n\r\n"
        client = yield self.connect()
        client.transport.write(head + body[:7])
        client.transport.write(body[7:])
        (response,) = yield client.responses(1)
        self.assertEqual(response.body, head + body)
        self.assertEqual(self.factory.requests[0].raw_head, head)
        self.assertEqual(self.factory.requests[0].header(b"X-Odd-Case"), b"a\tb")

    @inlineCallbacks
    def test_pipelined(self):
        """
        Requests written back to back on one connection, including one with a
        slow streamed answer, are answered in order on that connection.
        """
        client = yield self.connect()
        client.transport.write(
            b"GET /stream?count=2&interval=0.02 HTTP/1.1\r\nHost: d\r\n\r\n"
            + PING
            + b"POST /echo-head HTTP/1.1\r\nHost: d\r\nContent-Length: 3\r\n\r\nabc"
            + b"GET /nope HTTP/1.1\r\nHost: d\r\n\r\n"
        )
        stream, ping, echo, missing = yield client.responses(4)
        self.assertEqual(stream.body, b"line0\nline1\n")
        self.assertEqual(ping.body, b"OK")
        self.assertTrue(echo.body.endswith(b"\r\n\r\nabc"))
        self.assertEqual(missing.status, b"HTTP/1.1 404 Not Found")
        self.assertEqual(json.loads(missing.body), {"message": "page not found"})
        self.assertEqual(self.factory.connections_made, 1)
        self.assertEqual({r.connection for r in self.factory.requests}, {1})

    @inlineCallbacks
    def test_chunked_upload(self):
        """
        C{/upload} reports the length and SHA-256 of the decoded chunked body.
        """
        payload = os.urandom(300_000)
        client = yield self.connect()
        client.transport.write(
            b"POST /upload HTTP/1.1\r\nHost: d\r\nTransfer-Encoding: chunked\r\n\r\n"
        )
        for start in range(0, len(payload), 70_001):
            piece = payload[start : start + 70_001]
            client.transport.write(b"%x\r\n%s\r\n" % (len(piece), piece))
        client.transport.write(b"0\r\n\r\n")
        (response,) = yield client.responses(1)
        self.assertEqual(
            json.loads(response.body),
            {"bytes": len(payload), "sha256": hashlib.sha256(payload).hexdigest()},
        )

    @inlineCallbacks
    def test_upgrade_hijack_half_close(self):
        """
        An attach with C{Upgrade: tcp} gets C{101 UPGRADED}, then an echo; after
        the client's half-close the fake adds C{\\ndone\\n} and closes.
        """
        client = yield self.connect()
        client.transport.write(
            b"POST /v1.41/containers/abc/attach?stream=1&stdin=1 HTTP/1.1\r\n"
            b"Host: docker\r\nConnection: Upgrade\r\nUpgrade: tcp\r\n"
            b"Content-Length: 0\r\n\r\n"
        )
        yield client.until(lambda data: data == UPGRADED)
        client.transport.write(b"hello ")
        yield client.until(lambda data: data.endswith(b"hello "))
        client.transport.write(b"world")
        client.transport.loseWriteConnection()
        yield client.when_lost()
        self.assertEqual(bytes(client.data), UPGRADED + b"hello world\ndone\n")

    @inlineCallbacks
    def test_legacy_hijack_half_close(self):
        """
        An exec start without Upgrade headers gets the legacy C{200 OK} after
        its JSON body is read; bytes sent with the request are already stream.
        """
        body = b'{"Detach":false,"Tty":false}'
        client = yield self.connect()
        client.transport.write(
            b"POST /exec/e1/start HTTP/1.1\r\nHost: docker\r\n"
            b"Content-Type: application/json\r\n"
            b"Content-Length: %d\r\n\r\n%sinput" % (len(body), body)
        )
        yield client.until(lambda data: data == LEGACY_HIJACKED + b"input")
        client.transport.loseWriteConnection()
        yield client.when_lost()
        self.assertEqual(bytes(client.data), LEGACY_HIJACKED + b"input\ndone\n")

    @inlineCallbacks
    def test_stream(self):
        """
        C{/stream} sends N lines as chunks, spaced in time, ends the chunked
        body and keeps the connection open for the next request.
        """
        client = yield self.connect()
        client.transport.write(
            b"GET /v1.41/stream?count=3&interval=0.05 HTTP/1.1\r\nHost: d\r\n\r\n"
        )
        (response,) = yield client.responses(1)
        self.assertEqual(response.header(b"Transfer-Encoding"), b"chunked")
        self.assertEqual(
            response.raw_body,
            b"6\r\nline0\n\r\n6\r\nline1\n\r\n6\r\nline2\n\r\n0\r\n\r\n",
        )
        client.transport.write(PING)
        yield client.responses(2)
        self.assertFalse(client.lost)

    @inlineCallbacks
    def test_events(self):
        """
        C{/events} stays open and writes a chunk per L{emit_event}; a
        half-close by the client ends it and the connection.
        """
        client = yield self.connect()
        client.transport.write(b"GET /events HTTP/1.1\r\nHost: d\r\n\r\n")
        yield client.until(lambda data: data.endswith(b"\r\n\r\n"))
        self.assertEqual(self.factory.event_listeners, 1)
        self.factory.emit_event(b'{"status":"start"}\n')
        yield client.until(lambda data: data.endswith(b'{"status":"start"}\n\r\n'))
        client.transport.loseWriteConnection()
        yield client.when_lost()
        self.assertTrue(bytes(client.data).endswith(b"\r\n0\r\n\r\n"))
        self.assertEqual(self.factory.event_listeners, 0)

    @inlineCallbacks
    def test_big_back_pressure(self):
        """
        A client that stops reading stops C{/big} after a bounded amount; once
        it reads again it receives every byte of the pattern.
        """
        size = 64 * 1024 * 1024
        client = yield self.connect()
        client.transport.pauseProducing()
        client.transport.write(b"GET /big?bytes=%d HTTP/1.1\r\nHost: d\r\n\r\n" % size)
        yield deferLater(reactor, 0.2)
        written = self.factory.big_bytes_written
        self.assertGreater(written, 0)
        self.assertLess(written, 8 * 1024 * 1024)
        yield deferLater(reactor, 0.1)
        self.assertEqual(self.factory.big_bytes_written, written)

        client.transport.resumeProducing()
        data = yield client.until(
            lambda data: len(data) - data.find(b"\r\n\r\n") - 4 >= size
        )
        head, _, body = data.partition(b"\r\n\r\n")
        self.assertIn(b"Content-Length: %d" % size, head.split(b"\r\n"))
        self.assertEqual(len(body), size)
        self.assertTrue(body == pattern_bytes(0, size))
        self.assertEqual(self.factory.big_bytes_written, size)

    @inlineCallbacks
    def test_close_after_response(self):
        """
        C{/close-after-response} says C{Connection: close} and closes;
        requests pipelined after it are not answered.
        """
        client = yield self.connect()
        client.transport.write(
            b"GET /close-after-response HTTP/1.1\r\nHost: d\r\n\r\n" + PING
        )
        yield client.when_lost()
        (response,), rest = parse_responses(bytes(client.data))
        self.assertEqual(response.header(b"Connection"), b"close")
        self.assertEqual(rest, b"")

    @inlineCallbacks
    def test_malformed(self):
        """
        A malformed request gets a 400 and the connection is closed.
        """
        client = yield self.connect()
        client.transport.write(b"GET /_ping HTTP/1.1\r\nHost: d\r\nbad header\r\n\r\n")
        yield client.when_lost()
        self.assertEqual(
            bytes(client.data),
            b"HTTP/1.1 400 Bad Request\r\n"
            b"Content-Type: text/plain; charset=utf-8\r\n"
            b"Connection: close\r\n\r\n"
            b"400 Bad Request: malformed MIME header line",
        )
        self.assertEqual(self.factory.requests, [])
        self.assertEqual(self.factory.bad_requests, ["malformed MIME header line"])

    @inlineCallbacks
    def test_half_close_when_idle(self):
        """
        A half-close after complete requests gets their answers, then the
        fake closes; connection counters follow.
        """
        client = yield self.connect()
        client.transport.write(PING)
        client.transport.loseWriteConnection()
        yield client.when_lost()
        (response,), rest = parse_responses(bytes(client.data))
        self.assertEqual((response.body, rest), (b"OK", b""))
        yield self.factory.when_idle()
        self.assertEqual(
            (self.factory.connections_made, self.factory.open_connections), (1, 0)
        )


class FakeDockerdMemoryTests(SynchronousTestCase):
    """The fake on a L{StringTransport}, with a L{Clock}."""

    def setUp(self) -> None:
        self.clock = Clock()
        self.factory = FakeDockerdFactory(clock=self.clock)
        self.protocol = self.factory.buildProtocol(None)
        self.transport = StringTransport()
        self.protocol.makeConnection(self.transport)

    def test_stream_uses_clock(self) -> None:
        """
        C{/stream} lines come C{interval} seconds apart on the injected clock.
        """
        self.protocol.dataReceived(
            b"GET /stream?count=2&interval=5 HTTP/1.1\r\nHost: d\r\n\r\n"
        )
        self.assertTrue(self.transport.value().endswith(b"\r\n\r\n6\r\nline0\n\r\n"))
        self.clock.advance(4.9)
        self.assertTrue(self.transport.value().endswith(b"line0\n\r\n"))
        self.clock.advance(0.1)
        self.assertTrue(self.transport.value().endswith(b"line1\n\r\n0\r\n\r\n"))
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_slow(self) -> None:
        """
        C{/slow?chunks=N&interval=S} is a slow chunked stream as well.
        """
        self.protocol.dataReceived(
            b"GET /slow?chunks=3&interval=1 HTTP/1.1\r\nHost: d\r\n\r\n"
        )
        self.clock.pump([1, 1])
        (response,), _ = parse_responses(self.transport.value())
        self.assertEqual(response.body, b"line0\nline1\nline2\n")

    def test_stream_cancelled_on_disconnect(self) -> None:
        """
        A lost connection cancels the pending stream timer.
        """
        self.protocol.dataReceived(
            b"GET /stream?count=5&interval=1 HTTP/1.1\r\nHost: d\r\n\r\n"
        )
        self.protocol.connectionLost(connectionDone)
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.assertEqual(self.factory.open_connections, 0)

    def test_big_pull_producer(self) -> None:
        """
        C{/big} writes one block per C{resumeProducing}, counts it, and
        unregisters when done so the next pipelined request is answered.
        """
        self.protocol.dataReceived(
            b"GET /big?bytes=150000 HTTP/1.1\r\nHost: d\r\n\r\n" + PING
        )
        producer = self.transport.producer
        assert producer is not None
        self.assertFalse(self.transport.streaming)
        self.assertEqual(self.factory.big_bytes_written, 0)
        producer.resumeProducing()
        self.assertEqual(self.factory.big_bytes_written, 65536)
        producer.resumeProducing()
        producer.resumeProducing()
        self.assertEqual(self.factory.big_bytes_written, 150000)
        self.assertIsNone(self.transport.producer)
        (big, ping), _ = parse_responses(self.transport.value())
        self.assertEqual(big.body, pattern_bytes(0, 150000))
        self.assertEqual(ping.body, b"OK")

    def test_head_ping(self) -> None:
        """
        C{HEAD /_ping} gets the headers of C{GET /_ping} and no body.
        """
        self.protocol.dataReceived(b"HEAD /_ping HTTP/1.1\r\nHost: d\r\n\r\n")
        self.assertEqual(
            self.transport.value(),
            b"HTTP/1.1 200 OK\r\nApi-Version: 1.41\r\nContent-Length: 2\r\n"
            b"Content-Type: text/plain; charset=utf-8\r\n"
            b"Docker-Experimental: false\r\nOstype: linux\r\n"
            b"Server: Docker/fake (linux)\r\n\r\n",
        )

    def test_byte_by_byte(self) -> None:
        """
        Requests split at every byte parse as if sent whole.
        """
        data = (
            b"POST /echo-head HTTP/1.1\r\nHost: d\r\nTransfer-Encoding: chunked\r\n"
            b"\r\n3\r\nabc\r\n0\r\n\r\n" + PING
        )
        for i in range(len(data)):
            self.protocol.dataReceived(data[i : i + 1])
        (echo, ping), rest = parse_responses(self.transport.value())
        self.assertEqual(echo.body, data[: -len(PING)])
        self.assertEqual((ping.body, rest), (b"OK", b""))

    def test_expect_continue(self) -> None:
        """
        A body announced with C{Expect: 100-continue} gets an interim 100.
        """
        self.protocol.dataReceived(
            b"POST /upload HTTP/1.1\r\nHost: d\r\nContent-Length: 2\r\n"
            b"Expect: 100-continue\r\n\r\n"
        )
        self.assertEqual(self.transport.value(), b"HTTP/1.1 100 Continue\r\n\r\n")
        self.protocol.dataReceived(b"hi")
        self.assertIn(b'{"bytes":2,', self.transport.value())

    def test_bad_requests(self) -> None:
        """
        Missing Host, bad Content-Length, unknown transfer coding, a bad
        chunk size and a bad request line each get a 400 and a close.
        """
        for request in [
            b"GET /_ping HTTP/1.1\r\n\r\n",
            b"POST /upload HTTP/1.1\r\nHost: d\r\nContent-Length: -1\r\n\r\n",
            b"POST /upload HTTP/1.1\r\nHost: d\r\nTransfer-Encoding: gzip\r\n\r\n",
            b"POST /upload HTTP/1.1\r\nHost: d\r\nTransfer-Encoding: chunked\r\n"
            b"\r\nzz\r\n",
            b"GET  /_ping HTTP/1.1\r\nHost: d\r\n\r\n",
            b"GET /_ping HTTP/2.0\r\nHost: d\r\n\r\n",
        ]:
            protocol = self.factory.buildProtocol(None)
            transport = StringTransport()
            protocol.makeConnection(transport)
            protocol.dataReceived(request)
            self.assertTrue(
                transport.value().startswith(b"HTTP/1.1 400 Bad Request\r\n"), request
            )
            self.assertTrue(transport.disconnecting, request)
        self.assertEqual(len(self.factory.bad_requests), 6)

    def test_oversized_head(self) -> None:
        """
        A head longer than C{max_head_bytes} gets a 431 and a close.
        """
        factory = FakeDockerdFactory(clock=self.clock, max_head_bytes=100)
        protocol = factory.buildProtocol(None)
        protocol.makeConnection(self.transport)
        protocol.dataReceived(b"GET /_ping HTTP/1.1\r\nX: " + b"a" * 200)
        self.assertTrue(self.transport.value().startswith(b"HTTP/1.1 431 "))
        self.assertTrue(self.transport.disconnecting)

    def test_http10_closes(self) -> None:
        """
        An HTTP/1.0 request without keep-alive is answered, then closed.
        """
        self.protocol.dataReceived(b"GET /_ping HTTP/1.0\r\n\r\n")
        self.assertIn(b"\r\nConnection: close\r\n", self.transport.value())
        self.assertTrue(self.transport.disconnecting)

    def test_hijack_registers_echo_back_pressure(self) -> None:
        """
        After a hijack the transport is its own streaming producer, so a full
        write buffer stops reading; the half-close unregisters it again.
        """
        self.protocol.dataReceived(
            b"POST /containers/c/attach HTTP/1.1\r\nHost: d\r\nUpgrade: tcp\r\n"
            b"Connection: Upgrade\r\n\r\nx"
        )
        self.assertIs(self.transport.producer, self.transport)
        self.assertTrue(self.transport.streaming)
        self.protocol.readConnectionLost()
        self.assertIsNone(self.transport.producer)
        self.assertEqual(self.transport.value(), UPGRADED + b"x\ndone\n")
        self.assertTrue(self.transport.disconnecting)

    def test_events_emit(self) -> None:
        """
        L{FakeDockerdFactory.emit_event} reaches every open C{/events} response
        and L{FakeDockerdFactory.end_events} finishes them.
        """
        other = self.factory.buildProtocol(None)
        other_transport = StringTransport()
        other.makeConnection(other_transport)
        for protocol in [self.protocol, other]:
            protocol.dataReceived(b"GET /events HTTP/1.1\r\nHost: d\r\n\r\n")
        self.assertEqual(self.factory.event_listeners, 2)
        self.factory.emit_event(b"e1\n")
        self.factory.end_events()
        for transport in [self.transport, other_transport]:
            (response,), _ = parse_responses(transport.value())
            self.assertEqual(response.body, b"e1\n")
        self.assertEqual(self.factory.event_listeners, 0)
