"""
Tests for L{haven_agent._twisted.eager_write} on real sockets: whether the kernel took
the bytes at once is the point, so the transports are Twisted's own.
"""

import os
import socket

from twisted.internet import reactor
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.interfaces import IHalfCloseableProtocol, IPushProducer
from twisted.internet.protocol import ClientFactory, Factory, Protocol
from twisted.internet.task import deferLater
from twisted.internet.testing import StringTransport
from twisted.internet.threads import deferToThread
from twisted.trial.unittest import TestCase
from zope.interface import implementer

from haven_agent._twisted.eager_write import close_write_now, write_now


def queued(transport) -> int:
    """
    How many bytes the transport holds that the kernel has not taken.
    """
    return len(transport.dataBuffer) - transport.offset + transport._tempDataLen


class Collect(Protocol):
    def connectionMade(self):
        self.factory.connected.callback(self)

    def dataReceived(self, data):
        self.factory.received.append(data)

    def connectionLost(self, reason):
        self.factory.lost.callback(b"".join(self.factory.received))


@implementer(IPushProducer)
class IdleProducer:
    """A streaming producer that never has anything to produce."""

    def pauseProducing(self):
        pass

    def resumeProducing(self):
        pass

    def stopProducing(self):
        pass


@inlineCallbacks
def serveOne(testCase, protocol):
    """
    Serve C{protocol} on 127.0.0.1 and connect a plain blocking client
    socket to it: (the server protocol, the client socket).
    """
    factory = Factory.forProtocol(protocol)
    factory.connected = Deferred()
    factory.received = []
    factory.lost = Deferred()
    port = reactor.listenTCP(0, factory, interface="127.0.0.1")
    testCase.addCleanup(port.stopListening)
    client = socket.create_connection(("127.0.0.1", port.getHost().port))
    testCase.addCleanup(client.close)
    client.settimeout(10)
    server = yield factory.connected
    testCase.addCleanup(server.transport.abortConnection)
    return server, client


class EagerWriteTests(TestCase):
    """
    A server transport on 127.0.0.1 with a plain blocking client socket: the
    client decides when it reads, so the send buffer's state is known.
    """

    @inlineCallbacks
    def connect(self):
        server, client = yield serveOne(self, Collect)
        return server.transport, client

    def recvExactly(self, client, size):
        chunks, left = [], size
        while left:
            chunk = client.recv(min(left, 1 << 20))
            if not chunk:
                break
            chunks.append(chunk)
            left -= len(chunk)
        return b"".join(chunks)

    @inlineCallbacks
    def test_sentAtOnce(self):
        """
        With nothing queued, the bytes are in the kernel when write_now
        returns: the client reads them without the reactor turning.
        """
        transport, client = yield self.connect()
        write_now(transport, b"pong")
        self.assertEqual(queued(transport), 0)
        self.assertEqual(self.recvExactly(client, 4), b"pong")

    @inlineCallbacks
    def test_plainWriteQueues(self):
        """
        The contrast that makes the test above mean something: Twisted's own
        write() leaves the bytes queued until the reactor turns.
        """
        transport, client = yield self.connect()
        transport.write(b"pong")
        self.assertEqual(queued(transport), 4)
        yield deferLater(reactor, 0.05, lambda: None)
        self.assertEqual(self.recvExactly(client, 4), b"pong")

    @inlineCallbacks
    def test_neverOvertakesQueuedBytes(self):
        """
        Bytes written after queued ones go behind them, not straight out.
        """
        transport, client = yield self.connect()
        transport.write(b"first ")
        write_now(transport, b"second")
        self.assertEqual(queued(transport), 12)
        yield deferLater(reactor, 0.05, lambda: None)
        self.assertEqual(self.recvExactly(client, 12), b"first second")

    @inlineCallbacks
    def test_restQueuedWhenTheKernelIsFull(self):
        """
        More than the socket buffers take: what the kernel refused is queued
        and follows in order once the client reads.
        """
        transport, client = yield self.connect()
        data = os.urandom(16 * 1024 * 1024)
        write_now(transport, data[:1000])
        write_now(transport, data[1000:])
        self.assertGreater(queued(transport), 0)
        received = yield deferToThread(self.recvExactly, client, len(data))
        self.assertEqual(received, data)

    @inlineCallbacks
    def test_closingTransportWritesAsUsual(self):
        """
        Once a close is asked for, the bytes take the ordinary path and go
        out when Twisted's write() would have sent them: before the FIN that
        was asked for first, as Twisted does.
        """
        transport, client = yield self.connect()
        transport.loseWriteConnection()
        write_now(transport, b"late")
        self.assertEqual(queued(transport), 4)
        yield deferLater(reactor, 0.05, lambda: None)
        self.assertEqual(self.recvExactly(client, 4), b"late")
        self.assertEqual(client.recv(10), b"")

    def test_otherTransportsWriteAsUsual(self):
        """
        A transport that is not a socket transport gets a plain write().
        """
        transport = StringTransport()
        write_now(transport, b"data")
        self.assertEqual(transport.value(), b"data")

    @inlineCallbacks
    def test_unixSocketClient(self):
        """
        The dockerd side is a UNIX client transport: written at once too.
        """
        # Short and absolute: UNIX socket paths are limited to ~107 bytes.
        path = f"/tmp/hvew-{os.getpid()}-{id(self)}.sock"
        server = socket.socket(socket.AF_UNIX)
        self.addCleanup(server.close)
        self.addCleanup(lambda: os.path.exists(path) and os.unlink(path))
        server.bind(path)
        server.listen(1)
        factory = ClientFactory.forProtocol(Collect)
        factory.connected = Deferred()
        factory.received = []
        factory.lost = Deferred()
        reactor.connectUNIX(path, factory)
        protocol = yield factory.connected
        self.addCleanup(protocol.transport.abortConnection)
        accepted, _ = server.accept()
        self.addCleanup(accepted.close)
        accepted.settimeout(10)
        request = b"GET /_ping HTTP/1.1\r\n\r\n"
        write_now(protocol.transport, request)
        self.assertEqual(queued(protocol.transport), 0)
        self.assertEqual(self.recvExactly(accepted, len(request)), request)


@implementer(IHalfCloseableProtocol)
class HalfCloseable(Collect):
    writeClosed = False

    def readConnectionLost(self):
        self.transport.loseConnection()

    def writeConnectionLost(self):
        self.writeClosed = True


class CloseWriteNowTests(TestCase):
    """
    L{close_write_now}: the FIN leaves before the call returns when nothing
    is queued, and after the queued bytes otherwise.
    """

    recvExactly = EagerWriteTests.recvExactly

    @inlineCallbacks
    def connect(self):
        self.server, client = yield serveOne(self, HalfCloseable)
        return self.server.transport, client

    @inlineCallbacks
    def test_finAtOnce(self):
        """
        Nothing queued: the client sees the end of the stream without the
        reactor turning, the protocol hears its write side is done, the
        socket is never registered for writing, and reading goes on.
        """
        transport, client = yield self.connect()
        write_now(transport, b"last")
        close_write_now(transport)
        self.assertTrue(self.server.writeClosed)
        self.assertNotIn(transport, reactor.getWriters())
        self.assertEqual(self.recvExactly(client, 5), b"last")
        self.assertEqual(client.recv(1), b"")
        client.sendall(b"still heard")
        client.shutdown(socket.SHUT_WR)
        received = yield self.server.factory.lost
        self.assertEqual(received, b"still heard")

    @inlineCallbacks
    def test_finAfterQueuedBytes(self):
        """
        Bytes still queued: the ordinary half-close, after them.
        """
        transport, client = yield self.connect()
        transport.write(b"queued")
        close_write_now(transport)
        self.assertFalse(self.server.writeClosed)
        self.assertIn(transport, reactor.getWriters())
        data = yield deferToThread(self.recvExactly, client, 7)
        self.assertEqual(data, b"queued")
        self.assertTrue(self.server.writeClosed)

    @inlineCallbacks
    def test_producerWaitedFor(self):
        """
        A registered producer may still write: the ordinary path, which
        waits for it.
        """
        transport, client = yield self.connect()
        transport.registerProducer(IdleProducer(), True)
        close_write_now(transport)
        self.assertFalse(self.server.writeClosed)
