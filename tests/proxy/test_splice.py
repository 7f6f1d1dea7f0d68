"""
Tests for haven_agent.proxy.splice on its own: the producer wiring both
ways (as twisted's C{test_registerProducers} checks portforward's), the
half-closes and the last answer with its linger.
"""

from __future__ import annotations

from twisted.internet.defer import succeed
from twisted.internet.task import Clock
from twisted.test.proto_helpers import StringTransport
from twisted.trial.unittest import SynchronousTestCase

from haven_agent.proxy.splice import DockerConnection, PauseReasons, Splice


class HalfCloseTransport(StringTransport):
    writeClosed = False

    def loseWriteConnection(self) -> None:
        self.writeClosed = True


class Listener:
    def __init__(self) -> None:
        self.received: list[bytes] = []
        self.readClosed = False
        self.closed = False

    def upstreamDataReceived(self, data: bytes) -> None:
        self.received.append(data)

    def upstreamReadClosed(self) -> None:
        self.readClosed = True

    def upstreamClosed(self) -> None:
        self.closed = True


def wired(testCase: SynchronousTestCase):
    clock = Clock()
    client = HalfCloseTransport()
    splice = Splice(client, clock, lingerTimeout=2.0)
    listener = Listener()
    dockerTransport = HalfCloseTransport()

    def connect(protocol):
        protocol.makeConnection(dockerTransport)
        return succeed(protocol)

    docker = testCase.successResultOf(splice.connect(connect, listener))
    splice.wire(docker)
    return clock, client, splice, docker, dockerTransport, listener


class ProducerWiringTests(SynchronousTestCase):
    def test_registerProducers(self) -> None:
        """
        Each side is registered as the other's streaming producer: a full
        client stops dockerd's reads, a full dockerd stops the client's.
        """
        clock, client, splice, docker, dockerTransport, _ = wired(self)
        self.assertIsInstance(docker, DockerConnection)
        self.assertIs(client.producer, docker.pauser)
        self.assertTrue(client.streaming)
        self.assertIs(dockerTransport.producer, splice.clientPauser)
        self.assertTrue(dockerTransport.streaming)

        client.producer.pauseProducing()
        self.assertEqual(dockerTransport.producerState, "paused")
        client.producer.resumeProducing()
        self.assertEqual(dockerTransport.producerState, "producing")

        dockerTransport.producer.pauseProducing()
        self.assertEqual(client.producerState, "paused")
        dockerTransport.producer.resumeProducing()
        self.assertEqual(client.producerState, "producing")

    def test_stopProducingClosesNothing(self) -> None:
        """
        A transport that dies tells its producer to stop; closing the other
        side is the gate's decision, so the membranes ignore it.
        """
        _, client, _, _, dockerTransport, _ = wired(self)
        client.producer.stopProducing()
        dockerTransport.producer.stopProducing()
        self.assertFalse(client.disconnecting)
        self.assertFalse(dockerTransport.disconnecting)

    def test_pauseReasonsCount(self) -> None:
        """
        The client stays paused while any reason stands.
        """
        transport = StringTransport()
        pauser = PauseReasons(transport)
        pauser.pause("deciding")
        pauser.pauseProducing()
        pauser.resume("deciding")
        self.assertEqual(transport.producerState, "paused")
        pauser.resumeProducing()
        self.assertEqual(transport.producerState, "producing")

    def test_bytesBothWays(self) -> None:
        _, _, splice, docker, dockerTransport, listener = wired(self)
        splice.toDocker(b"GET /_ping HTTP/1.1\r\n\r\n")
        self.assertEqual(dockerTransport.value(), b"GET /_ping HTTP/1.1\r\n\r\n")
        docker.dataReceived(b"HTTP/1.1 200 OK\r\n")
        self.assertEqual(listener.received, [b"HTTP/1.1 200 OK\r\n"])


class ClosingTests(SynchronousTestCase):
    def test_halfCloseTowardsDocker(self) -> None:
        """
        The client's end of input goes to dockerd as a half-close, with
        dockerd's producer unregistered first (a paused one would hold the
        FIN back).
        """
        _, client, splice, _, dockerTransport, _ = wired(self)
        dockerTransport.producer.pauseProducing()
        splice.closeDockerWrite()
        self.assertTrue(dockerTransport.writeClosed)
        self.assertIsNone(dockerTransport.producer)
        self.assertFalse(dockerTransport.disconnecting)

    def test_halfCloseTowardsClient(self) -> None:
        _, client, splice, _, _, _ = wired(self)
        splice.closeClientWrite()
        self.assertTrue(client.writeClosed)
        self.assertIsNone(client.producer)
        splice.unwireClient()  # once only: a second call is harmless

    def test_closeDockerOnce(self) -> None:
        _, _, splice, docker, dockerTransport, listener = wired(self)
        splice.closeDocker()
        splice.closeDocker()
        self.assertTrue(dockerTransport.disconnecting)
        docker.connectionLost(None)
        self.assertTrue(listener.closed)
        self.assertFalse(splice.dockerOpen)

    def test_answerLastLingers(self) -> None:
        """
        The last answer is written, the write side closed, and what the
        client still sends is drained for the linger time before the close.
        """
        clock, client, splice, _, _, _ = wired(self)
        splice.clientPauser.pause("deciding")
        splice.answerLast(b"HTTP/1.1 401 Unauthorized\r\n\r\n", clientReadDone=False)
        self.assertEqual(client.value(), b"HTTP/1.1 401 Unauthorized\r\n\r\n")
        self.assertTrue(client.writeClosed)
        self.assertIsNone(client.producer)
        self.assertEqual(client.producerState, "producing", "draining the client")
        self.assertFalse(client.disconnecting)
        clock.advance(2.0)
        self.assertTrue(client.disconnecting)

    def test_answerLastAfterClientFinished(self) -> None:
        _, client, splice, _, _, _ = wired(self)
        splice.answerLast(b"HTTP/1.1 408 Request Timeout\r\n\r\n", clientReadDone=True)
        self.assertTrue(client.disconnecting)

    def test_connectFailureClearsConnecting(self) -> None:
        from twisted.internet.defer import fail
        from twisted.internet.error import ConnectionRefusedError

        splice = Splice(HalfCloseTransport(), Clock(), 2.0)
        connecting = splice.connect(
            lambda protocol: fail(ConnectionRefusedError()), Listener()
        )
        self.assertTrue(splice.connecting is False)
        self.failureResultOf(connecting, ConnectionRefusedError)
