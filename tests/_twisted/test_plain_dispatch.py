"""
PlainDispatch: the running epoll reactor serves connections as before, with
no log context per event, and an error in one event is logged without
stopping the others.
"""

from __future__ import annotations

from twisted.internet import defer, reactor
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.epollreactor import EPollReactor
from twisted.internet.protocol import Factory, Protocol
from twisted.python import context, log
from twisted.trial import unittest

from haven_agent._twisted.plain_dispatch import PlainDispatch


class Echo(Protocol):
    def dataReceived(self, data: bytes) -> None:
        self.transport.write(data)


class Client(Protocol):
    """Collects what it receives; records the log context it ran in."""

    def __init__(self) -> None:
        self.received = b""
        self.systems: list[str] = []
        self.lost: defer.Deferred[None] = defer.Deferred()
        self.wanted = 0
        self.arrived: defer.Deferred[bytes] = defer.Deferred()

    def dataReceived(self, data: bytes) -> None:
        self.systems.append(context.get(log.ILogContext)["system"])
        self.received += data
        if len(self.received) >= self.wanted and not self.arrived.called:
            self.arrived.callback(self.received)

    def connectionLost(self, reason) -> None:
        self.lost.callback(None)


class BrokenOnLoss(Client):
    def connectionLost(self, reason) -> None:
        super().connectionLost(reason)
        raise RuntimeError("connectionLost failed")


class PlainDispatchTests(unittest.TestCase):
    def setUp(self) -> None:
        if not isinstance(reactor, EPollReactor):
            raise unittest.SkipTest("the tests' reactor is not the epoll reactor")
        self.service = PlainDispatch(reactor)
        self.service.startService()
        self.addCleanup(self._stop)
        port = reactor.listenTCP(0, Factory.forProtocol(Echo), interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        self.port = port.getHost().port

    def _stop(self) -> None:
        if self.service.running:
            self.service.stopService()

    def connect(self, protocol: Client) -> defer.Deferred[Client]:
        endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", self.port)
        return connectProtocol(endpoint, protocol)

    def test_installed_and_removed(self) -> None:
        """The reactor polls with the plain loop only while the service runs."""
        self.assertIs(reactor.doIteration, reactor.doPoll)
        self.assertNotEqual(reactor.doPoll, EPollReactor.doPoll.__get__(reactor))
        self.service.stopService()
        self.assertEqual(reactor.doPoll, EPollReactor.doPoll.__get__(reactor))
        self.assertEqual(reactor.doIteration, EPollReactor.doIteration.__get__(reactor))

    @defer.inlineCallbacks
    def test_connections_served_without_a_context(self):
        """Bytes go both ways; the events ran without a per-connection context."""
        client = Client()
        client.wanted = 200_000
        yield self.connect(client)
        client.transport.write(b"x" * 200_000)
        received = yield client.arrived
        self.assertEqual(received, b"x" * 200_000)
        self.assertEqual(set(client.systems), {"-"})
        client.transport.loseConnection()
        yield client.lost

    @defer.inlineCallbacks
    def test_error_while_disconnecting_is_logged(self):
        """A connectionLost that raises is logged; the loop goes on serving."""
        broken = BrokenOnLoss()
        yield self.connect(broken)
        broken.transport.loseConnection()
        yield broken.lost
        # the next poll is the one that finds the closed descriptor
        client = Client()
        client.wanted = 5
        yield self.connect(client)
        client.transport.write(b"hello")
        self.assertEqual((yield client.arrived), b"hello")
        errors = self.flushLoggedErrors(RuntimeError)
        self.assertEqual([str(e.value) for e in errors], ["connectionLost failed"])
        client.transport.loseConnection()
        yield client.lost
