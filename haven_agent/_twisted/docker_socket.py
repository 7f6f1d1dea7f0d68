# -*- test-case-name: tests._twisted.test_docker_socket -*-
"""
Connecting to dockerd: its UNIX socket read with recv(), not recvmsg().

Twisted's UNIX transport reads every chunk with `recvmsg()` through a Python
wrapper that parses ancillary data, so that protocols can receive file
descriptors. dockerd never sends any, and on a proxied request that wrapper
cost as much as the TLS decryption of the answer. `PlainUNIXClientEndpoint`
connects a transport that reads and writes as a TCP one does; everything
else (connecting, half-close, flow control) is Twisted's UNIX client.

`docker_connector` picks it for `unix:` descriptions and Twisted's own
endpoint for any other (`tcp:` for a dockerd listening on TCP).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.internet import tcp, unix
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import (
    UNIXClientEndpoint,
    _WrappingFactory,
    clientFromString,
)
from twisted.internet.interfaces import IProtocol, IStreamClientEndpoint
from twisted.internet.protocol import Factory, Protocol
from zope.interface import implementer


class PlainUNIXClient(unix.Client):
    """
    A UNIX client transport that does not look for passed descriptors.
    """

    doRead = tcp.Connection.doRead
    writeSomeData = tcp.Connection.writeSomeData


class _PlainUNIXConnector(unix.Connector):
    def _makeTransport(self) -> unix.Client:
        return PlainUNIXClient(self.address, self, self.reactor, self.checkPID)


@implementer(IStreamClientEndpoint)
class PlainUNIXClientEndpoint:
    """
    Like `UNIXClientEndpoint`, with `PlainUNIXClient` transports.
    """

    def __init__(
        self, reactor: Any, path: str | bytes, timeout: float = 30, checkPID=False
    ) -> None:
        self._reactor = reactor
        self._path = path
        self._timeout = timeout
        self._checkPID = checkPID

    def connect(self, protocolFactory) -> Deferred[IProtocol]:
        wrapping = _WrappingFactory(protocolFactory)
        _PlainUNIXConnector(
            self._path, wrapping, self._timeout, self._reactor, self._checkPID
        ).connect()
        return wrapping._onConnection


class _ForOne(Factory):
    """
    Connects one given protocol, without a log line per connection.
    """

    noisy = False

    def __init__(self, protocol: Protocol) -> None:
        self._protocol = protocol

    def buildProtocol(self, addr) -> Protocol:
        return self._protocol


def docker_connector(reactor: Any, description: str) -> Callable[[Protocol], Deferred]:
    """
    A function that connects a given protocol to dockerd, as C{description}
    (a client endpoint description) says, and returns a Deferred that fires
    once it is connected.
    """
    endpoint = clientFromString(reactor, description)
    if isinstance(endpoint, UNIXClientEndpoint):
        endpoint = PlainUNIXClientEndpoint(
            reactor, endpoint._path, endpoint._timeout, endpoint._checkPID
        )
    return lambda protocol: endpoint.connect(_ForOne(protocol))
