# -*- test-case-name: tests.proxy.test_splice -*-
"""
The dockerd side of a proxied connection, and the flow control between sides.

Like `twisted.protocols.portforward`, each transport is registered as the
other's streaming producer so a slow reader on one side stops reads on the
other instead of growing buffers. Unlike it, pausing is shared: the gate also
pauses the client while it decides about a request head, and a transport's
pause/resume is not counted, so both reasons go through `PauseReasons`. The
membranes also swallow the `stopProducing` a transport sends its producer when
it dies: closing the other side is the proxy's decision, made with a flush and
a proper half-close, not a side effect.
"""

from __future__ import annotations

import socket
from typing import Protocol as TypingProtocol

from twisted.internet.interfaces import IHalfCloseableProtocol, IPushProducer
from twisted.internet.protocol import Protocol
from zope.interface import implementer


class UpstreamListener(TypingProtocol):
    """
    What the client side must handle about the dockerd connection.
    """

    def upstreamDataReceived(self, data: bytes) -> None: ...

    def upstreamReadClosed(self) -> None: ...

    def upstreamClosed(self) -> None: ...


@implementer(IPushProducer)
class PauseReasons:
    """
    Pauses a transport while any reason to pause stands.
    """

    def __init__(self, transport) -> None:
        self._transport = transport
        self._reasons: set[str] = set()

    def pause(self, reason: str) -> None:
        if not self._reasons:
            self._transport.pauseProducing()
        self._reasons.add(reason)

    def resume(self, reason: str) -> None:
        if reason in self._reasons:
            self._reasons.discard(reason)
            if not self._reasons:
                self._transport.resumeProducing()

    def clear(self) -> None:
        """
        Drop every reason and let the transport read again.
        """
        if self._reasons:
            self._reasons.clear()
            self._transport.resumeProducing()

    @property
    def paused(self) -> bool:
        return bool(self._reasons)

    # IPushProducer, for the transport that consumes this one's bytes.
    def pauseProducing(self) -> None:
        self.pause("consumer is full")

    def resumeProducing(self) -> None:
        self.resume("consumer is full")

    def stopProducing(self) -> None:
        pass


@implementer(IHalfCloseableProtocol)
class DockerConnection(Protocol):
    """
    One connection to dockerd, carrying one client connection's requests.

    Its bytes are never parsed: they go to the client as they come.
    """

    def __init__(self, listener: UpstreamListener) -> None:
        self._listener = listener
        self.pauser: PauseReasons | None = None
        self.closed = False

    def connectionMade(self) -> None:
        tune_socket(self.transport)
        self.pauser = PauseReasons(self.transport)

    def dataReceived(self, data: bytes) -> None:
        self._listener.upstreamDataReceived(data)

    def readConnectionLost(self) -> None:
        self._listener.upstreamReadClosed()

    def writeConnectionLost(self) -> None:
        pass

    def connectionLost(self, reason=None) -> None:
        self.closed = True
        self._listener.upstreamClosed()


def tune_socket(transport) -> None:
    """
    Turn Nagle's algorithm off and TCP keep-alive on for a TCP transport.

    Nagle plus delayed ACKs stall small interactive writes by 40 ms; keep-alive
    probes find peers that vanished without a FIN, so that streams, which
    never time out, are still cleaned up when nobody is left to read them.
    C{transport} may be wrapped (TLS); UNIX sockets are left alone.
    """
    while True:
        handle = getattr(transport, "getHandle", lambda: None)()
        if isinstance(handle, socket.socket):
            break
        transport = getattr(transport, "transport", None)
        if transport is None:
            return
    if handle.family not in (socket.AF_INET, socket.AF_INET6):
        return
    handle.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    handle.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    for option, value in (
        ("TCP_KEEPIDLE", 60),
        ("TCP_KEEPINTVL", 15),
        ("TCP_KEEPCNT", 4),
    ):
        if hasattr(socket, option):
            handle.setsockopt(socket.IPPROTO_TCP, getattr(socket, option), value)
