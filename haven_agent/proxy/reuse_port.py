# -*- test-case-name: tests.workers.test_workers -*-
"""
Listening sockets that several processes bind at once (SO_REUSEPORT).

With `--workers N` every process of the agent binds its own socket to the
same address with SO_REUSEPORT, and the kernel spreads new connections
across them by a hash of the connection's addresses: no process hands
connections to another, and one that is busy or gone takes none of the
others' load. Linux allows it only to processes of the same user, which is
also who could kill or trace the agent anyway.
"""

from __future__ import annotations

import socket
from typing import Any

from attrs import frozen
from twisted.application.service import Service
from twisted.internet.endpoints import (
    TCP4ServerEndpoint,
    TCP6ServerEndpoint,
    serverFromString,
)

from haven_agent._twisted.endpoints import tcp_bind_address


@frozen
class ListenAddress:
    """
    Where one TCP listener binds: family, interface, port, backlog.
    """

    family: int
    interface: str
    port: int
    backlog: int

    def bound(self, port: int) -> ListenAddress:
        return ListenAddress(self.family, self.interface, port, self.backlog)

    def as_json(self) -> list[Any]:
        return [self.family, self.interface, self.port, self.backlog]

    @classmethod
    def from_json(cls, value: list[Any]) -> ListenAddress:
        family, interface, port, backlog = value
        return cls(int(family), str(interface), int(port), int(backlog))


def listen_addresses(descriptions: tuple[str, ...]) -> list[ListenAddress]:
    """
    The TCP addresses of server endpoint descriptions (C{tcp:8771},
    C{tcp:port=8771:interface=10.0.0.1}, C{tcp6:8771:interface=\\:\\:}).

    @raise ValueError: for a description that is not plain TCP (a UNIX
        socket, systemd, ...): those cannot be shared between processes.
    """
    addresses = []
    for description in descriptions:
        try:
            # Parsing only: the endpoint is never listened on.
            endpoint = serverFromString(None, description)
        except (ValueError, TypeError, KeyError) as e:
            raise ValueError(f"{description}: {e}") from None
        if isinstance(endpoint, TCP6ServerEndpoint):
            family = socket.AF_INET6
        elif isinstance(endpoint, TCP4ServerEndpoint):
            family = socket.AF_INET
        else:
            raise ValueError(
                f"{description}: several workers can only share TCP listeners "
                "(tcp:PORT or tcp6:PORT)"
            )
        interface, port, backlog = tcp_bind_address(endpoint)
        interface = interface or ("::" if family == socket.AF_INET6 else "")
        addresses.append(ListenAddress(family, interface, port, backlog))
    return addresses


def bind_reuse_port(address: ListenAddress) -> socket.socket:
    """
    A non-blocking listening socket on C{address}, shareable by processes.
    """
    sock = socket.socket(address.family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        if address.family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        sock.bind((address.interface, address.port))
        sock.listen(address.backlog)
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock


class ReusePortListener(Service):
    """
    Serves C{factory} on C{address} through a SO_REUSEPORT socket.

    The socket is bound in C{privilegedStartService}, like a strports
    listener, so a port that cannot be bound stops start-up.

    @ivar port: the listening port once bound (the real number when the
        address asked for port 0).
    """

    def __init__(self, address: ListenAddress, factory: Any, reactor: Any) -> None:
        self.address = address
        self._factory = factory
        self._reactor = reactor
        self._listening: Any = None
        self.port: int | None = None

    def privilegedStartService(self) -> None:
        super().privilegedStartService()
        self._listen()

    def startService(self) -> None:
        super().startService()
        if self._listening is None:
            self._listen()

    def _listen(self) -> None:
        sock = bind_reuse_port(self.address)
        try:
            self._listening = self._reactor.adoptStreamPort(
                sock.fileno(), self.address.family, self._factory
            )
        finally:
            # The reactor holds its own duplicate of the descriptor.
            sock.close()
        self.port = self._listening.getHost().port

    def stopService(self):
        super().stopService()
        listening, self._listening = self._listening, None
        if listening is not None:
            return listening.stopListening()
        return None
