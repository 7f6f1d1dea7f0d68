# -*- test-case-name: tests.proxy.test_splice -*-
"""
The splice: the two connections of one proxied client connection, the flow
control between them and how each side is closed.

Like `twisted.protocols.portforward`, each transport is registered as the
other's streaming producer so a slow reader on one side stops reads on the
other instead of growing buffers. Unlike it, pausing is shared: the gate also
pauses the client while it decides about a request head, and a transport's
pause/resume is not counted, so both reasons go through `PauseReasons`. The
membranes also swallow the `stopProducing` a transport sends its producer when
it dies: closing the other side is the proxy's decision, made with a flush and
a proper half-close, not a side effect.

`Splice` holds those decisions: half-close each way (a client that stops
sending is passed on to dockerd as the same half-close, and dockerd's end of
a raw stream to the client), and the last answer of a connection (a refusal,
a timeout) written, then the client's write side closed while what it still
sends is drained for a moment, so unread input does not make the kernel
reset the connection before the answer is read. The gate decides when; the
splice knows how.
"""

from __future__ import annotations

import socket
from collections.abc import Callable
from typing import Any
from typing import Protocol as TypingProtocol

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import (
    IDelayedCall,
    IHalfCloseableProtocol,
    IPushProducer,
    IReactorTime,
)
from twisted.internet.protocol import Protocol
from zope.interface import implementer

from haven_agent._twisted.eager_write import close_write_now, write_now


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

    The reasons are a tuple: there are a handful at most, and an empty
    tuple costs an idle connection nothing where an empty set costs 216
    bytes (two per connection).
    """

    __slots__ = ("_transport", "_reasons")

    def __init__(self, transport) -> None:
        self._transport = transport
        self._reasons: tuple[str, ...] = ()

    def pause(self, reason: str) -> None:
        if not self._reasons:
            self._transport.pauseProducing()
        if reason not in self._reasons:
            self._reasons += (reason,)

    def resume(self, reason: str) -> None:
        if reason in self._reasons:
            self._reasons = tuple(r for r in self._reasons if r != reason)
            if not self._reasons:
                self._transport.resumeProducing()

    def clear(self) -> None:
        """
        Drop every reason and let the transport read again.
        """
        if self._reasons:
            self._reasons = ()
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

    # Protocol's own two attributes too: without them every connection
    # carries an instance dictionary.
    __slots__ = ("transport", "connected", "_listener", "pauser", "closed")

    def __init__(self, listener: UpstreamListener) -> None:
        self.transport = None
        self.connected = 0
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


class Splice:
    """
    A client transport and, once connected, its dockerd connection.

    @ivar clientPauser: the client's reads, paused for any reason that stands.
    @ivar docker: the dockerd connection, once connected.
    """

    __slots__ = (
        "client",
        "clientPauser",
        "docker",
        "connecting",
        "lingering",
        "_clock",
        "_lingerTimeout",
        "_dockerClosing",
        "_clientWired",
        "_linger",
    )

    def __init__(self, client: Any, clock: IReactorTime, lingerTimeout: float) -> None:
        self.client = client
        self.clientPauser = PauseReasons(client)
        self.docker: DockerConnection | None = None
        self.connecting = False
        self.lingering = False
        self._clock = clock
        self._lingerTimeout = lingerTimeout
        self._dockerClosing = False
        self._clientWired = False
        self._linger: IDelayedCall | None = None

    @property
    def dockerOpen(self) -> bool:
        return self.docker is not None and not self.docker.closed

    def connect(
        self,
        connectDocker: Callable[[Protocol], Deferred[Any]],
        listener: UpstreamListener,
    ) -> Deferred[DockerConnection]:
        """
        Connect to dockerd; fires with the connection once it is wired.
        """
        docker = DockerConnection(listener)
        self.connecting = True

        def connected(_: object) -> DockerConnection:
            self.connecting = False
            return docker

        def failed(failure):
            self.connecting = False
            return failure

        return connectDocker(docker).addCallbacks(connected, failed)

    def wire(self, docker: DockerConnection) -> None:
        """
        Each side is the other's streaming producer from now on.
        """
        self.docker = docker
        self.client.registerProducer(docker.pauser, True)
        self._clientWired = True
        docker.transport.registerProducer(self.clientPauser, True)

    def unwireClient(self) -> None:
        """
        dockerd's side no longer produces into the client (once only).
        """
        if self._clientWired:
            self._clientWired = False
            self.client.unregisterProducer()

    def toDocker(self, data: bytes) -> None:
        write_now(self.docker.transport, data)  # type: ignore[union-attr]

    def closeDockerWrite(self) -> None:
        """
        Half-close towards dockerd: it has all it will get, and may finish.
        """
        docker = self.docker
        if docker is not None and not docker.closed:
            docker.transport.unregisterProducer()
            close_write_now(docker.transport)

    def closeDocker(self) -> None:
        """
        Close the dockerd connection after what was written to it; its
        producer goes first, since a paused one would hold the close back.
        """
        docker = self.docker
        if docker is not None and not docker.closed and not self._dockerClosing:
            self._dockerClosing = True
            docker.transport.unregisterProducer()
            docker.transport.loseConnection()

    def closeClientWrite(self) -> None:
        """
        dockerd ended a raw stream: end the client's side the same way.
        """
        self.unwireClient()
        self.client.loseWriteConnection()

    def answerLast(self, response: bytes, clientReadDone: bool) -> None:
        """
        Send C{response}, then close without losing it: half-close and
        drain what the client still sends for a moment.
        """
        self.lingering = True
        # dockerd's side produces into the client no more; a producer still
        # registered would hold the TLS close back.
        self.unwireClient()
        self.client.write(response)
        self.client.loseWriteConnection()
        self.clientPauser.clear()
        if clientReadDone:
            self.client.loseConnection()
        else:
            self._linger = self._clock.callLater(
                self._lingerTimeout, self.client.loseConnection
            )

    def cancelLinger(self) -> None:
        if self._linger is not None and self._linger.active():
            self._linger.cancel()
        self._linger = None


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
