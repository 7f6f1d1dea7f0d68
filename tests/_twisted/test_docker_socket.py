"""
Tests for L{haven_agent._twisted.docker_socket}: the dockerd connection on a real
UNIX socket, with a blocking socket playing dockerd.
"""

import os
import socket

from twisted.internet import reactor
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.error import ConnectError
from twisted.internet.interfaces import IHalfCloseableProtocol
from twisted.internet.protocol import Protocol
from twisted.internet.threads import deferToThread
from twisted.trial.unittest import TestCase
from zope.interface import implementer

from haven_agent._twisted.docker_socket import PlainUNIXClient, docker_connector


@implementer(IHalfCloseableProtocol)
class Recorder(Protocol):
    def __init__(self):
        self.received = b""
        self.readClosed = Deferred()
        self.lost = Deferred()

    def dataReceived(self, data):
        self.received += data

    def readConnectionLost(self):
        self.readClosed.callback(self.received)

    def writeConnectionLost(self):
        pass

    def connectionLost(self, reason):
        self.lost.callback(None)


class DockerConnectorTests(TestCase):
    def listen(self):
        # Short and absolute: UNIX socket paths are limited to ~107 bytes.
        path = f"/tmp/hvds-{os.getpid()}-{id(self)}.sock"
        server = socket.socket(socket.AF_UNIX)
        server.bind(path)
        server.listen(1)
        self.addCleanup(server.close)
        self.addCleanup(os.unlink, path)
        return server, path

    @inlineCallbacks
    def test_bothWaysAndHalfClose(self):
        """
        Bytes go both ways, the client's half-close reaches dockerd, and
        dockerd's answer after it still arrives, then its own end of output.
        """
        server, path = self.listen()
        protocol = Recorder()
        connected = yield docker_connector(reactor, "unix:" + path)(protocol)
        self.assertIs(connected, protocol)
        self.assertIsInstance(protocol.transport, PlainUNIXClient)
        accepted, _ = server.accept()
        self.addCleanup(accepted.close)
        accepted.settimeout(10)

        protocol.transport.write(b"GET /_ping HTTP/1.1\r\n\r\n")
        protocol.transport.loseWriteConnection()

        def dockerd():
            received = b""
            while chunk := accepted.recv(65536):
                received += chunk
            accepted.sendall(b"HTTP/1.1 200 OK\r\n\r\nOK")
            accepted.shutdown(socket.SHUT_WR)
            return received

        dockerdSaw = yield deferToThread(dockerd)
        self.assertEqual(dockerdSaw, b"GET /_ping HTTP/1.1\r\n\r\n")
        received = yield protocol.readClosed
        self.assertEqual(received, b"HTTP/1.1 200 OK\r\n\r\nOK")
        protocol.transport.loseConnection()
        yield protocol.lost

    @inlineCallbacks
    def test_largeAnswer(self):
        """
        Several MB from dockerd arrive whole and in order.
        """
        server, path = self.listen()
        protocol = Recorder()
        yield docker_connector(reactor, "unix:" + path)(protocol)
        accepted, _ = server.accept()
        data = os.urandom(8 * 1024 * 1024)

        def dockerd():
            accepted.sendall(data)
            accepted.close()

        yield deferToThread(dockerd)
        received = yield protocol.readClosed
        self.assertEqual(received, data)
        protocol.transport.loseConnection()
        yield protocol.lost

    def test_noSocket(self):
        """
        A socket path with nobody listening fails the connection attempt.
        """
        connecting = docker_connector(reactor, "unix:/tmp/hvds-nobody-here.sock")(
            Recorder()
        )
        return self.assertFailure(connecting, ConnectError)

    @inlineCallbacks
    def test_tcpDescription(self):
        """
        A dockerd on TCP is reached with Twisted's own TCP transport.
        """
        server = socket.socket()
        self.addCleanup(server.close)
        server.bind(("127.0.0.1", 0))
        server.listen(1)
        port = server.getsockname()[1]
        protocol = Recorder()
        yield docker_connector(reactor, f"tcp:127.0.0.1:{port}")(protocol)
        self.assertNotIsInstance(protocol.transport, PlainUNIXClient)
        accepted, _ = server.accept()
        accepted.sendall(b"hello")
        accepted.close()
        received = yield protocol.readClosed
        self.assertEqual(received, b"hello")
        protocol.transport.loseConnection()
        yield protocol.lost
