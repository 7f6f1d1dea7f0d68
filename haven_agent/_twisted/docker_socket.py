# -*- test-case-name: tests._twisted.test_docker_socket -*-
"""
Connecting to dockerd: its UNIX socket read with recv(), not recvmsg().

Twisted's UNIX transport reads every chunk with `recvmsg()` through a Python
wrapper that parses ancillary data, so that protocols can receive file
descriptors. dockerd never sends any, and on a proxied request that wrapper
cost as much as the TLS decryption of the answer. `PlainUNIXClient` reads
and writes as a TCP transport does, and is connected to the one protocol it
is for without an endpoint's wrapping protocol in between; everything else
(connecting, half-close, flow control) is Twisted's UNIX client.

`docker_connector` picks it for `unix:` descriptions and Twisted's own
endpoint for any other (`tcp:` for a dockerd listening on TCP).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.internet import tcp, unix
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import UNIXClientEndpoint, clientFromString
from twisted.internet.protocol import ClientFactory, Factory, Protocol


class PlainUNIXClient(unix.Client):
    """
    A UNIX client transport that does not look for passed descriptors, and
    tells its factory once its protocol is connected.
    """

    doRead = tcp.Connection.doRead
    writeSomeData = tcp.Connection.writeSomeData

    def _connectDone(self) -> None:
        super()._connectDone()
        self.connector.factory.protocolConnected(self.protocol)


class _PlainUNIXConnector(unix.Connector):
    def _makeTransport(self) -> unix.Client:
        return PlainUNIXClient(self.address, self, self.reactor, self.checkPID)


class _ForOne(ClientFactory):
    """
    Connects one given protocol, without a log line per connection;
    C{connected} fires with it once its connectionMade has run.
    """

    noisy = False

    def __init__(self, protocol: Protocol) -> None:
        self._protocol = protocol
        self.connected: Deferred[Protocol] = Deferred()

    def buildProtocol(self, addr) -> Protocol:
        return self._protocol

    def protocolConnected(self, protocol: Protocol) -> None:
        self.connected.callback(protocol)

    def clientConnectionFailed(self, connector, reason) -> None:
        self.connected.errback(reason)


def _connect_unix(reactor: Any, endpoint: UNIXClientEndpoint, protocol: Protocol):
    """
    Connect C{protocol} to the socket of C{endpoint} with a L{PlainUNIXClient}
    directly: no endpoint's wrapping protocol between the transport and it,
    which would add a call to every read and an object to every connection.
    """
    factory = _ForOne(protocol)
    _PlainUNIXConnector(
        endpoint._path, factory, endpoint._timeout, reactor, endpoint._checkPID
    ).connect()
    return factory.connected


def docker_connector(reactor: Any, description: str) -> Callable[[Protocol], Deferred]:
    """
    A function that connects a given protocol to dockerd, as C{description}
    (a client endpoint description) says, and returns a Deferred that fires
    once it is connected.
    """
    endpoint = clientFromString(reactor, description)
    if isinstance(endpoint, UNIXClientEndpoint):
        unix_endpoint = endpoint
        return lambda protocol: _connect_unix(reactor, unix_endpoint, protocol)
    return lambda protocol: endpoint.connect(_Once(protocol))


class _Once(Factory):
    """For Twisted's own endpoints: one given protocol, no log line."""

    noisy = False

    def __init__(self, protocol: Protocol) -> None:
        self._protocol = protocol

    def buildProtocol(self, addr) -> Protocol:
        return self._protocol
