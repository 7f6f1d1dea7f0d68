"""
Tests for L{haven_agent.tls.transport} on real TCP sockets: the kernel's
FIN and OpenSSL's close_notify are the point, so nothing here is simulated.

The client is a blocking pyOpenSSL connection run in a thread, because it
must do exactly what the Go docker CLI does: send, close its own direction
(close_notify or a bare FIN), then keep reading until the server is done.
"""

import fcntl
import os
import socket
import ssl
import struct
import termios

from OpenSSL import SSL
from twisted.internet import reactor
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.interfaces import IHalfCloseableProtocol
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import deferLater
from twisted.internet.testing import StringTransport
from twisted.internet.threads import deferToThread
from twisted.trial.unittest import SynchronousTestCase, TestCase
from zope.interface import implementer

from haven_agent.tls.certificates import load_or_create_self_signed, server_context
from haven_agent.tls.failure import NoClientHello, describe_close
from haven_agent.tls.transport import serve_tls
from tests._twisted.test_eager_write import IdleProducer


@implementer(IHalfCloseableProtocol)
class EchoThenDone(Protocol):
    """
    Like `sh -c 'cat; echo done'`: echo until the client's input ends, then
    say done and close.
    """

    def connectionMade(self):
        self.factory.connected.append(self)
        self.received = b""

    def dataReceived(self, data):
        self.received += data
        self.transport.write(data)
        if b"bye" in self.received and self.factory.closeFirst:
            self.transport.write(b"ok")
            self.transport.loseWriteConnection()

    def readConnectionLost(self):
        if not self.factory.closeFirst:
            self.transport.write(b"done\n")
            self.transport.loseConnection()

    def writeConnectionLost(self):
        pass

    def connectionLost(self, reason):
        self.factory.lost.callback(self.received)


class PlainEcho(Protocol):
    def connectionMade(self):
        self.factory.connected.append(self)

    def dataReceived(self, data):
        self.transport.write(data)

    def connectionLost(self, reason):
        self.factory.lost.callback(None)


def tlsClient(port, send, tls12=False, finOnly=False, then=b""):
    """
    Send C{send}, close our direction, optionally send C{then} after the
    server closed its own, and read to the end. Returns (bytes, clean end).
    """
    context = SSL.Context(SSL.TLS_CLIENT_METHOD)
    context.set_alpn_protos([b"http/1.1"])
    if tls12:
        context.set_max_proto_version(SSL.TLS1_2_VERSION)
    sock = socket.create_connection(("127.0.0.1", port))
    # pyOpenSSL needs a blocking socket; a receive timeout still keeps a
    # broken server from hanging the test run.
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, struct.pack("ll", 20, 0))
    connection = SSL.Connection(context, sock)
    connection.set_connect_state()
    connection.do_handshake()
    connection.sendall(send)
    if not then:
        if finOnly:
            sock.shutdown(socket.SHUT_WR)
        else:
            connection.shutdown()
    received, clean = b"", False
    while True:
        try:
            data = connection.recv(65536)
        except SSL.ZeroReturnError:
            clean = True
            break
        except SSL.SysCallError:
            break
        if not data:
            break
        received += data
    if then:
        connection.sendall(then)
        connection.shutdown()
    version = connection.get_protocol_version_name()
    sock.close()
    return received, clean, version


class HalfCloseTests(TestCase):
    def listen(self, protocol, closeFirst=False):
        directory = self.mktemp()
        certificate = load_or_create_self_signed(
            directory, host_names=["localhost"], ip_addresses=["127.0.0.1"]
        )
        factory = Factory.forProtocol(protocol)
        factory.connected = []
        factory.lost = Deferred()
        factory.closeFirst = closeFirst
        self.factory = factory
        tls = serve_tls(server_context(certificate), factory)
        port = reactor.listenTCP(0, tls, interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        return port.getHost().port

    @inlineCallbacks
    def assertOutputSurvivesHalfClose(self, **clientOptions):
        port = self.listen(EchoThenDone)
        received, clean, version = yield deferToThread(
            tlsClient, port, b"data\n", **clientOptions
        )
        self.assertEqual(received, b"data\ndone\n")
        self.assertTrue(clean, "the server ends with its own close_notify")
        serverSaw = yield self.factory.lost
        self.assertEqual(serverSaw, b"data\n")
        return version

    @inlineCallbacks
    def test_closeNotifyTLS13(self):
        version = yield self.assertOutputSurvivesHalfClose()
        self.assertEqual(version, "TLSv1.3")

    @inlineCallbacks
    def test_closeNotifyTLS12(self):
        version = yield self.assertOutputSurvivesHalfClose(tls12=True)
        self.assertEqual(version, "TLSv1.2")

    def test_bareFIN(self):
        return self.assertOutputSurvivesHalfClose(finOnly=True)

    def test_bareFINTLS12(self):
        return self.assertOutputSurvivesHalfClose(finOnly=True, tls12=True)

    @inlineCallbacks
    def test_serverClosesItsDirectionFirst(self):
        port = self.listen(EchoThenDone, closeFirst=True)
        received, clean, _ = yield deferToThread(
            tlsClient, port, b"bye", then=b"still reading"
        )
        self.assertEqual(received, b"byeok")
        self.assertTrue(clean)
        serverSaw = yield self.factory.lost
        self.assertEqual(serverSaw, b"byestill reading")

    @inlineCallbacks
    def test_notHalfCloseableClosesAsBefore(self):
        port = self.listen(PlainEcho)
        received, clean, _ = yield deferToThread(tlsClient, port, b"data")
        self.assertEqual(received, b"data")
        yield self.factory.lost

    @inlineCallbacks
    def test_largeOutputAfterHalfClose(self):
        """
        Several MB written after the client's close_notify all arrive: the
        close waits for buffered TLS data to flush.
        """
        big = b"x" * (8 * 1024 * 1024)

        @implementer(IHalfCloseableProtocol)
        class BigAfterEOF(EchoThenDone):
            def readConnectionLost(self):
                self.transport.write(big)
                self.transport.write(b"done\n")
                self.transport.loseConnection()

        port = self.listen(BigAfterEOF)
        received, clean, _ = yield deferToThread(tlsClient, port, b"go")
        self.assertEqual(len(received), len(b"go") + len(big) + len(b"done\n"))
        self.assertTrue(received.endswith(b"xdone\n"))
        self.assertTrue(clean)
        yield self.factory.lost

    @inlineCallbacks
    def test_writeCloseWaitsForProducer(self):
        """
        With a producer registered, loseWriteConnection waits until it is
        unregistered: what is still written meanwhile arrives before the
        close_notify.
        """

        @implementer(IHalfCloseableProtocol)
        class ProducerThenClose(EchoThenDone):
            def readConnectionLost(self):
                self.transport.registerProducer(IdleProducer(), True)
                self.transport.write(b"first ")
                self.transport.loseWriteConnection()
                reactor.callLater(0.05, self.finish)

            def finish(self):
                self.transport.write(b"second")
                self.transport.unregisterProducer()

        port = self.listen(ProducerThenClose)
        received, clean, _ = yield deferToThread(tlsClient, port, b"go ")
        self.assertEqual(received, b"go first second")
        self.assertTrue(clean)
        yield self.factory.lost


class CountingSocket:
    """
    A socket that counts the bytes send() handed to the kernel.
    """

    def __init__(self, sock):
        self._sock = sock
        self.sent = 0

    def send(self, data, *flags):
        sent = self._sock.send(data, *flags)
        self.sent += sent
        return sent

    def __getattr__(self, name):
        return getattr(self._sock, name)


def listenTLS(testCase, protocol):
    """
    Serve C{protocol} over the half-closeable TLS wrapper on 127.0.0.1;
    the factory is C{testCase.factory}. Returns the port number.
    """
    certificate = load_or_create_self_signed(
        testCase.mktemp(), host_names=["localhost"], ip_addresses=["127.0.0.1"]
    )
    factory = Factory.forProtocol(protocol)
    factory.connected = []
    factory.lost = Deferred()
    tls = serve_tls(server_context(certificate), factory)
    port = reactor.listenTCP(0, tls, interface="127.0.0.1")
    testCase.addCleanup(port.stopListening)
    testCase.factory = factory
    return port.getHost().port


class ImmediateWriteTests(TestCase):
    """
    Writes are encrypted and handed to the socket at once, not gathered for
    the next reactor turn, and large writes keep their bytes in order.
    """

    listen = listenTLS

    @inlineCallbacks
    def test_answerLeavesAtOnce(self):
        """
        The TLS record of a write is in the kernel when write() returns.
        """

        class Answer(PlainEcho):
            def connectionMade(self):
                tcp = self.transport.transport
                tcp.socket = CountingSocket(tcp.socket)

            def dataReceived(self, data):
                counting = self.transport.transport.socket
                before = counting.sent
                self.transport.write(b"answer to " + data)
                self.factory.sentByWrite.append(counting.sent - before)
                self.transport.loseConnection()

        port = self.listen(Answer)
        self.factory.sentByWrite = []
        received, _, _ = yield deferToThread(tlsClient, port, b"ping")
        self.assertEqual(received, b"answer to ping")
        [sent] = self.factory.sentByWrite
        # One TLS 1.3 record: 5 bytes of header, the text, its content type
        # and a 16-byte tag.
        self.assertEqual(sent, 5 + len(b"answer to ping") + 1 + 16)
        yield self.factory.lost

    @inlineCallbacks
    def test_largeWritesInOrder(self):
        """
        Writes of many records, of sizes that are not multiples of a record,
        arrive whole and in order.
        """
        pieces = [os.urandom(size) for size in (1, 16383, 16385, 70000, 1 << 20, 5)]

        @implementer(IHalfCloseableProtocol)
        class Pieces(EchoThenDone):
            def readConnectionLost(self):
                for piece in pieces:
                    self.transport.write(piece)
                self.transport.loseConnection()

        port = self.listen(Pieces)
        self.factory.closeFirst = False
        received, clean, _ = yield deferToThread(tlsClient, port, b"go")
        self.assertEqual(received, b"go" + b"".join(pieces))
        self.assertTrue(clean)
        yield self.factory.lost


def unread(sock) -> int:
    """
    Bytes waiting in C{sock}'s receive queue.
    """
    return struct.unpack(
        "i", fcntl.ioctl(sock.fileno(), termios.FIONREAD, b"\0\0\0\0")
    )[0]


class ReceiveBatchTests(TestCase):
    """
    All the records of one socket read reach the protocol in one call.
    """

    @inlineCallbacks
    def test_recordsOfOneReadTogether(self):
        calls = []
        paused = Deferred()
        everything = Deferred()
        size = 40000  # three TLS records
        # TLS 1.3 with AES-GCM: 5 bytes of header, a content type byte and a
        # 16-byte tag per record.
        wire = size + 3 * (5 + 1 + 16)

        class Collect(PlainEcho):
            def dataReceived(self, data):
                if not calls and data == b"hello":
                    # Hold reading until the client's records are all in
                    # the kernel, so that one read takes them.
                    self.transport.pauseProducing()
                    self.transport.write(b"paused")
                    calls.append(data)
                    paused.callback(self)
                    return
                calls.append(data)
                if sum(map(len, calls[1:])) == size:
                    everything.callback(None)

        port = listenTLS(self, Collect)

        def client():
            context = SSL.Context(SSL.TLS_CLIENT_METHOD)
            sock = socket.create_connection(("127.0.0.1", port))
            sock.setsockopt(
                socket.SOL_SOCKET, socket.SO_RCVTIMEO, struct.pack("ll", 20, 0)
            )
            connection = SSL.Connection(context, sock)
            connection.set_connect_state()
            connection.do_handshake()
            connection.sendall(b"hello")
            assert connection.recv(100) == b"paused"
            connection.sendall(b"x" * size)
            return connection, sock

        connection, sock = yield deferToThread(client)
        self.addCleanup(sock.close)
        server = yield paused
        sock = server.transport.transport.socket
        while unread(sock) < wire:
            yield deferLater(reactor, 0.01, lambda: None)
        server.transport.resumeProducing()
        yield everything
        self.assertEqual(calls[1:], [b"x" * size])


class Recorder(Protocol):
    def connectionMade(self):
        self.factory.connected.append(self)

    def connectionLost(self, reason):
        # A list: a Failure given to callback() would errback.
        self.factory.lost.callback([reason])


class HelloDeadlineTests(TestCase):
    """A connection that sends nothing is aborted after the hello timeout;
    one that begins its handshake is not."""

    def listen(self, helloTimeout):
        certificate = load_or_create_self_signed(
            self.mktemp(), host_names=["localhost"], ip_addresses=["127.0.0.1"]
        )
        factory = Factory.forProtocol(Recorder)
        factory.connected = []
        factory.lost = Deferred()
        self.factory = factory
        tls = serve_tls(
            server_context(certificate),
            factory,
            clock=reactor,
            helloTimeout=helloTimeout,
        )
        port = reactor.listenTCP(0, tls, interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        return port.getHost().port

    @inlineCallbacks
    def test_silentConnectionAborted(self):
        port = self.listen(0.2)
        sock = socket.create_connection(("127.0.0.1", port))
        self.addCleanup(sock.close)
        [reason] = yield self.factory.lost
        self.assertIsInstance(reason.value, NoClientHello)
        self.assertEqual(describe_close(reason), "no TLS handshake begun within 0.2 s")
        sock.settimeout(5)
        try:
            self.assertEqual(sock.recv(1), b"")
        except ConnectionResetError:
            pass  # aborted: a reset, as intended

    @inlineCallbacks
    def test_handshakeInTimeKeepsConnection(self):
        port = self.listen(0.5)
        received = yield deferToThread(tlsClient, port, b"", then=b"")
        self.assertEqual(received[0], b"")
        yield deferLater(reactor, 0.8, lambda: None)
        self.assertEqual(len(self.factory.connected), 1)
        [reason] = yield self.factory.lost
        self.assertNotIsInstance(reason.value, NoClientHello)


class AnswersAtOnce(Protocol):
    """Answers and closes as soon as it is connected, before any handshake:
    the gate does so when it refuses an overloaded connection."""

    def connectionMade(self):
        self.factory.connected.append(self)
        self.transport.write(b"busy, ")
        self.transport.write(b"try later")
        self.transport.loseConnection()

    def connectionLost(self, reason):
        self.factory.lost.callback([reason])


class BeforeAndAfterHandshakeTests(TestCase):
    def listen(self, protocol):
        certificate = load_or_create_self_signed(
            self.mktemp(), host_names=["localhost"], ip_addresses=["127.0.0.1"]
        )
        factory = Factory.forProtocol(protocol)
        factory.connected = []
        factory.lost = Deferred()
        self.factory = factory
        port = reactor.listenTCP(
            0, serve_tls(server_context(certificate), factory), interface="127.0.0.1"
        )
        self.addCleanup(port.stopListening)
        return port.getHost().port

    @inlineCallbacks
    def test_writesBeforeHandshakeSentAfterIt(self):
        """
        What the application wrote before the handshake, and its close,
        wait for the handshake: the client reads it all, then close_notify.
        """
        port = self.listen(AnswersAtOnce)
        received, clean, _ = yield deferToThread(tlsClient, port, b"", then=b"")
        self.assertEqual(received, b"busy, try later")
        self.assertTrue(clean)
        [reason] = yield self.factory.lost
        self.assertNotIsInstance(reason.value, ssl.SSLError)

    @inlineCallbacks
    def test_handshakeFailureReported(self):
        """
        Plain HTTP on the TLS port: the application's connectionLost gets
        OpenSSL's error, which says what happened, and the client gets the
        alert and the close, not a hang.
        """
        port = self.listen(Recorder)

        def plainHTTP():
            with socket.create_connection(("127.0.0.1", port), timeout=20) as sock:
                sock.sendall(b"GET /_ping HTTP/1.1\r\nHost: node\r\n\r\n")
                answer = b""
                while True:
                    data = sock.recv(65536)
                    if not data:
                        return answer
                    answer += data

        answer = yield deferToThread(plainHTTP)
        # A TLS alert record (content type 21), if anything.
        self.assertIn(answer[:1], (b"", b"\x15"))
        [reason] = yield self.factory.lost
        self.assertIsInstance(reason.value, ssl.SSLError)
        self.assertEqual(
            describe_close(reason),
            "TLS failed: plain HTTP on the TLS port (use https://)",
        )

    @inlineCallbacks
    def test_peerCertificateAndProtocol(self):
        """
        Without a client CA there is no client certificate to name; the
        ALPN protocol is http/1.1, and neither is asked before the
        handshake.
        """
        seen = []

        class Look(Protocol):
            def connectionMade(self):
                seen.append(("made", self.transport.getPeerCertificate()))

            def dataReceived(self, data):
                transport = self.transport
                seen.append(("data", transport.getPeerCertificate()))
                seen.append(("alpn", transport.negotiatedProtocol))
                transport.write(data)
                transport.loseConnection()

        port = self.listen(Look)
        received, _, _ = yield deferToThread(tlsClient, port, b"hi", then=b"")
        self.assertEqual(received, b"hi")
        self.assertEqual(seen, [("made", None), ("data", None), ("alpn", b"http/1.1")])


class CloseAskedBeforeHandshakeTests(SynchronousTestCase):
    """
    A half-close asked for before the handshake (the gate's 503 to an
    overloaded client) waits until the request that came with the client's
    Finished is read: OpenSSL's shutdown would otherwise meet that record
    and fail the connection.
    """

    def test_requestWithFinishedReadFirst(self):
        certificate = load_or_create_self_signed(
            self.mktemp(), host_names=["localhost"], ip_addresses=["127.0.0.1"]
        )
        received = []

        @implementer(IHalfCloseableProtocol)
        class Busy(Protocol):
            def connectionMade(self):
                self.transport.write(b"busy")
                self.transport.loseWriteConnection()

            def dataReceived(self, data):
                received.append(data)

            def readConnectionLost(self):
                pass

            def writeConnectionLost(self):
                pass

        tls = serve_tls(server_context(certificate), Factory.forProtocol(Busy))
        server = tls.buildProtocol(None)

        class HalfCloseableWire(StringTransport):
            writeClosed = False

            def loseWriteConnection(self):
                self.writeClosed = True

        wire = HalfCloseableWire()
        server.makeConnection(wire)
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
        client = context.wrap_bio(incoming, outgoing, server_side=False)
        self.assertRaises(ssl.SSLWantReadError, client.do_handshake)
        server.dataReceived(outgoing.read())
        incoming.write(wire.value())
        wire.clear()
        client.do_handshake()
        client.write(b"GET /_ping HTTP/1.1\r\n\r\n")
        # The client's Finished and its request in one socket read.
        server.dataReceived(outgoing.read())
        incoming.write(wire.value())
        self.assertEqual(received, [b"GET /_ping HTTP/1.1\r\n\r\n"])
        self.assertFalse(server._broken)
        answer = b""
        while True:
            try:
                data = client.read(1000)
            except ssl.SSLZeroReturnError:
                break
            if not data:
                break
            answer += data
        self.assertEqual(answer, b"busy")
        self.assertTrue(wire.writeClosed)
        self.assertFalse(wire.disconnecting, "still reading: only a half-close")
