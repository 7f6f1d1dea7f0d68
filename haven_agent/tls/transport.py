# -*- test-case-name: tests.tls.test_transport -*-
"""
The TLS server transport: the standard library's `ssl` over memory buffers.

Every client byte of the agent passes through here, so this is the layer
that decides what a connection costs. The standard library's `ssl.SSLObject`
is OpenSSL called from C; measured in one process against pyOpenSSL's
memory BIOs (cffi, behind Twisted's `TLSMemoryBIOProtocol`), a server
handshake took about 100 us less, the record work of one keep-alive request
about 5 us less, and an idle connection about 7 KiB less memory
(docs/performance.md). It also serves with the system's OpenSSL, which the
distribution patches, rather than the copy bundled with `cryptography`.

`TLSServerConnection` is the protocol of a stream transport (a TCP
connection, usually) and the transport of the application protocol above
it. What it does beyond encrypting and decrypting:

- the peer's close_notify, or a TCP FIN, is passed up as
  `readConnectionLost()` when the application provides
  `IHalfCloseableProtocol`: the docker CLI half-closes a hijacked
  connection when stdin ends (`echo data | docker run -i ...`) and then
  reads the container's output to the end, and since TLS 1.3 close_notify
  closes only the sender's direction (RFC 8446, section 6.1);
- `loseWriteConnection()` sends our close_notify and a TCP FIN after what
  was written, and keeps reading;
- `loseConnection()` sends close_notify and closes without waiting for the
  peer's answering alert, which a half-closed peer has already sent or
  will never send;
- every record decrypted from one socket read reaches the application in
  one call, and each write leaves as its records in one `write_now`;
- a connection that sends nothing (no ClientHello) within the factory's
  hello timeout is aborted, so idle TCP connections cannot hold the places
  of clients that are waiting to authenticate.

Flow control is the stream transport's own: a producer registered here is
registered there, and pausing this transport pauses its reads.
"""

from __future__ import annotations

import ssl
from collections.abc import Callable
from typing import Any

from cryptography import x509
from twisted.internet.interfaces import (
    IConsumer,
    IHalfCloseableProtocol,
    IHandshakeListener,
    IProtocolFactory,
    IPushProducer,
    IReactorTime,
    ISSLTransport,
    ITransport,
)
from twisted.internet.protocol import Factory, Protocol
from twisted.python.failure import Failure
from zope.interface import implementer

from haven_agent._twisted.eager_write import close_write_now, write_now
from haven_agent.tls.failure import NoClientHello

#: Most plaintext one TLS record carries, and so one `SSLObject.read`.
RECORD_PAYLOAD = 2**14

#: Where new connections take their TLS context from.
ContextSource = Callable[[], ssl.SSLContext]


@implementer(
    IHalfCloseableProtocol, ITransport, ISSLTransport, IPushProducer, IConsumer
)
class TLSServerConnection(Protocol):
    """
    One server-side TLS connection over a stream transport.

    @ivar wrapped: the application protocol; this object is its transport.
    @ivar disconnecting: a close was asked for (it may wait for the
        handshake or a producer).
    """

    # Protocol's own attributes too: without them every connection carries
    # an instance dictionary.
    __slots__ = (
        "transport",
        "connected",
        "factory",
        "wrapped",
        "disconnecting",
        "_tls",
        "_incoming",
        "_outgoing",
        "_handshakeDone",
        "_broken",
        "_lost",
        "_readClosed",
        "_writeClosed",
        "_writeClosePending",
        "_closePending",
        "_early",
        "_producer",
        "_reason",
        "_helloTimer",
    )

    def __init__(self, factory: TLSServerFactory, wrapped: Any) -> None:
        self.transport: Any = None
        self.connected = 0
        self.factory = factory
        self.wrapped = wrapped
        self.disconnecting = False
        self._tls: ssl.SSLObject | None = None
        self._incoming: ssl.MemoryBIO | None = None
        self._outgoing: ssl.MemoryBIO | None = None
        self._handshakeDone = False
        # OpenSSL reported an error: nothing more is read or written.
        self._broken = False
        self._lost = False
        self._readClosed = False
        self._writeClosed = False
        # loseWriteConnection / loseConnection, waiting for the handshake
        # (writes made before it) or for the producer to be unregistered.
        self._writeClosePending = False
        self._closePending = False
        # What the application wrote before the handshake finished.
        self._early: list[bytes] | None = None
        self._producer: Any = None
        self._reason: Failure | None = None
        self._helloTimer: Any = None

    def logPrefix(self) -> str:
        prefix = getattr(self.wrapped, "logPrefix", None)
        return prefix() if prefix is not None else type(self.wrapped).__name__

    # The stream transport's events

    def connectionMade(self) -> None:
        incoming = self._incoming = ssl.MemoryBIO()
        outgoing = self._outgoing = ssl.MemoryBIO()
        self._tls = self.factory.context().wrap_bio(
            incoming, outgoing, server_side=True
        )
        factory = self.factory
        if factory.helloTimeout is not None:
            self._helloTimer = factory.clock.callLater(  # type: ignore[union-attr]
                factory.helloTimeout, self._silent
            )
        self.wrapped.makeConnection(self)

    def dataReceived(self, data: bytes) -> None:
        if self._helloTimer is not None:
            self._helloTimer.cancel()
            self._helloTimer = None
        if self._broken or self._lost or self._readClosed:
            # Nothing after close_notify is application data.
            return
        self._incoming.write(data)  # type: ignore[union-attr]
        if self._handshakeDone:
            self._readRecords()
        elif self._handshake():
            # What came with the client's Finished is read first: a close
            # asked for before the handshake would otherwise meet it in
            # OpenSSL's shutdown, which takes it as a fatal error.
            self._readRecords()
            if self._writeClosePending:
                self._finishWriteClose()
            if self._closePending:
                self._finishClose()

    def readConnectionLost(self) -> None:
        """
        A TCP FIN. Older docker clients half-close that way, without a
        close_notify: it means the same. OpenSSL is not told about the end
        of its input, since OpenSSL 3 takes that as a fatal error that would
        forbid our own writes, and every complete record received was
        already read.
        """
        if self._lost or self._readClosed or self._broken:
            self._closeIfBothDone()
            return
        if not self._handshakeDone:
            # A FIN in the middle of the handshake: nothing to half-close.
            self.transport.loseConnection()  # type: ignore[union-attr]
            return
        self._peerFinishedSending()

    def writeConnectionLost(self) -> None:
        """Our TCP FIN is out; nothing to do until reading ends too."""

    def connectionLost(self, reason: Failure = None) -> None:  # type: ignore[assignment]
        self._lost = True
        self._readClosed = True
        self.connected = False
        if self._helloTimer is not None:
            self._helloTimer.cancel()
            self._helloTimer = None
        self.wrapped.connectionLost(self._reason or reason)

    # TLS

    def _handshake(self) -> bool:
        """
        Take the handshake one step; whether it is done (and the connection
        still open).
        """
        try:
            self._tls.do_handshake()  # type: ignore[union-attr]
        except ssl.SSLWantReadError:
            self._flush()
            return False
        except ssl.SSLError:
            self._fail(Failure())
            return False
        self._handshakeDone = True
        self._flush()
        listener = IHandshakeListener(self.wrapped, None)
        if listener is not None:
            listener.handshakeCompleted()
        early, self._early = self._early, None
        if early and not self._writeClosed:
            self._send(b"".join(early))
        return not (self._lost or self._broken)

    def _readRecords(self) -> None:
        """
        Decrypt every complete record received and hand the plaintext up in
        one call: a 64 KiB socket read of an upload holds four records, and
        one call instead of four saves the gate's per-call work and three
        writes to dockerd.
        """
        read = self._tls.read  # type: ignore[union-attr]
        incoming = self._incoming
        received: list[bytes] = []
        while True:
            try:
                data = read(RECORD_PAYLOAD)
            except ssl.SSLWantReadError:
                break
            except ssl.SSLZeroReturnError:
                data = b""
            except ssl.SSLError:
                self._deliver(received)
                self._fail(Failure())
                return
            if not data:
                # The peer's close_notify: its direction is done, ours is
                # not. What came before it goes first.
                self._deliver(received)
                self._flush()
                if not self._lost and not self._readClosed:
                    self._peerFinishedSending()
                return
            received.append(data)
            if not incoming.pending:  # type: ignore[union-attr]
                # Nothing left to decrypt: spare the exception OpenSSL's
                # "want read" costs. A record's plaintext fits in one read.
                break
        self._deliver(received)
        if self._outgoing.pending:  # type: ignore[union-attr]
            # A TLS 1.3 key update answered, say.
            self._flush()

    def _deliver(self, received: list[bytes]) -> None:
        if received and not self._lost:
            self.wrapped.dataReceived(
                received[0] if len(received) == 1 else b"".join(received)
            )

    def _flush(self) -> None:
        """Send everything OpenSSL has ready, in one write."""
        data = self._outgoing.read()  # type: ignore[union-attr]
        if data:
            write_now(self.transport, data)

    def _send(self, data: bytes) -> None:
        try:
            self._tls.write(data)  # type: ignore[union-attr]
        except ssl.SSLError:
            self._fail(Failure())
            return
        self._flush()

    def _fail(self, failure: Failure) -> None:
        """
        OpenSSL gave up (a bad handshake, a corrupt record): send its alert,
        close, and report this error, not the bare close, to the
        application.
        """
        self._broken = True
        if self._reason is None:
            self._reason = failure
        self._flush()
        self.transport.loseConnection()  # type: ignore[union-attr]

    def _silent(self) -> None:
        self._helloTimer = None
        self._reason = Failure(NoClientHello(self.factory.helloTimeout or 0))
        self.transport.abortConnection()  # type: ignore[union-attr]

    def _peerFinishedSending(self) -> None:
        self._readClosed = True
        protocol = IHalfCloseableProtocol(self.wrapped, None)
        if protocol is None:
            # The application cannot take a half-close: close it all.
            self.loseConnection()
            return
        protocol.readConnectionLost()
        self._closeIfBothDone()

    def _sendCloseNotify(self) -> None:
        if self._writeClosed:
            return
        self._writeClosed = True
        if not self._handshakeDone or self._broken or self._lost:
            return
        try:
            # Sends ours; raises "want read" while the peer's is to come.
            self._tls.unwrap()  # type: ignore[union-attr]
        except ssl.SSLWantReadError:
            pass
        except ssl.SSLError:
            self._broken = True
        self._flush()

    def _closeIfBothDone(self) -> None:
        if self._readClosed and self._writeClosed and not self._lost:
            self.transport.loseConnection()  # type: ignore[union-attr]

    # The transport the application writes to

    def write(self, data: bytes) -> None:
        if self._writeClosed or self._broken or self._lost:
            return
        if not self._handshakeDone:
            if self._early is None:
                self._early = []
            self._early.append(data)
            return
        self._send(data)

    def writeSequence(self, data: Any) -> None:
        self.write(b"".join(data))

    def loseWriteConnection(self) -> None:
        """
        Send close_notify and a TCP FIN after everything written so far.
        """
        if self._writeClosed or self._lost or self._broken:
            return
        self._writeClosePending = True
        self._finishWriteClose()

    def _finishWriteClose(self) -> None:
        """
        Send the close_notify asked for once nothing can be written before
        it any more: the writes made before the handshake are out and the
        producer is unregistered.
        """
        if not self._writeClosePending or self._lost:
            return
        if self._early or self._producer is not None:
            return
        self._writeClosePending = False
        self._sendCloseNotify()
        if self._readClosed:
            self.transport.loseConnection()  # type: ignore[union-attr]
        else:
            close_write_now(self.transport)

    def loseConnection(self) -> None:
        if self.disconnecting or self._lost:
            return
        self.disconnecting = True
        self._closePending = True
        self._finishClose()

    def _finishClose(self) -> None:
        if not self._closePending or self._lost:
            return
        if (self._early and not self._broken) or self._producer is not None:
            return
        self._closePending = False
        self._sendCloseNotify()
        self.transport.loseConnection()  # type: ignore[union-attr]

    def abortConnection(self) -> None:
        self.disconnecting = True
        self._broken = True
        self.transport.abortConnection()  # type: ignore[union-attr]

    def getPeer(self) -> Any:
        return self.transport.getPeer()  # type: ignore[union-attr]

    def getHost(self) -> Any:
        return self.transport.getHost()  # type: ignore[union-attr]

    def getTcpNoDelay(self) -> bool:
        return self.transport.getTcpNoDelay()  # type: ignore[union-attr]

    def setTcpNoDelay(self, enabled: bool) -> None:
        self.transport.setTcpNoDelay(enabled)  # type: ignore[union-attr]

    def getTcpKeepAlive(self) -> bool:
        return self.transport.getTcpKeepAlive()  # type: ignore[union-attr]

    def setTcpKeepAlive(self, enabled: bool) -> None:
        self.transport.setTcpKeepAlive(enabled)  # type: ignore[union-attr]

    def getPeerCertificate(self) -> x509.Certificate | None:
        """
        The client's certificate, as verified in the handshake (this
        connection's or, when resumed, the session's), or None.
        """
        if not self._handshakeDone or self._tls is None:
            return None
        der = self._tls.getpeercert(binary_form=True)
        return x509.load_der_x509_certificate(der) if der else None

    @property
    def negotiatedProtocol(self) -> bytes | None:
        """The ALPN protocol agreed on, if any (Twisted's C{INegotiated})."""
        if self._tls is None:
            return None
        protocol = self._tls.selected_alpn_protocol()
        return protocol.encode("ascii") if protocol else None

    # Flow control: the stream transport's own

    def registerProducer(self, producer: Any, streaming: bool) -> None:
        self._producer = producer
        self.transport.registerProducer(producer, streaming)  # type: ignore[union-attr]

    def unregisterProducer(self) -> None:
        if self._producer is None:
            return
        self._producer = None
        self.transport.unregisterProducer()  # type: ignore[union-attr]
        self._finishWriteClose()
        self._finishClose()

    def pauseProducing(self) -> None:
        self.transport.pauseProducing()  # type: ignore[union-attr]

    def resumeProducing(self) -> None:
        self.transport.resumeProducing()  # type: ignore[union-attr]

    def stopProducing(self) -> None:
        self.transport.stopProducing()  # type: ignore[union-attr]


class TLSServerFactory(Factory):
    """
    Puts each connection of C{wrappedFactory} behind a L{TLSServerConnection}.

    @ivar context: gives the TLS context for each new connection; a reload
        swaps what it returns, and connections keep the one they began with.
    @ivar helloTimeout: seconds a connection gets to send its first byte,
        or None for no limit.
    @ivar clock: what times C{helloTimeout}.
    """

    protocol = TLSServerConnection  # type: ignore[assignment]
    # The wrapped factory says when it starts, if it wants to.
    noisy = False

    def __init__(
        self,
        context: ContextSource,
        wrappedFactory: IProtocolFactory,
        clock: IReactorTime | None = None,
        helloTimeout: float | None = None,
    ) -> None:
        self.context = context
        self.wrappedFactory = wrappedFactory
        self.clock = clock
        self.helloTimeout = helloTimeout

    def logPrefix(self) -> str:
        prefix = getattr(self.wrappedFactory, "logPrefix", None)
        name = prefix() if prefix is not None else type(self.wrappedFactory).__name__
        return f"{name} (TLS)"

    def doStart(self) -> None:
        super().doStart()
        self.wrappedFactory.doStart()

    def doStop(self) -> None:
        super().doStop()
        self.wrappedFactory.doStop()

    def buildProtocol(self, addr: Any) -> TLSServerConnection | None:
        wrapped = self.wrappedFactory.buildProtocol(addr)
        if wrapped is None:
            return None
        return TLSServerConnection(self, wrapped)


def serve_tls(
    contexts: ssl.SSLContext | ContextSource,
    wrappedFactory: IProtocolFactory,
    clock: IReactorTime | None = None,
    helloTimeout: float | None = None,
) -> TLSServerFactory:
    """
    Put server-side TLS, with half-close, on top of C{wrappedFactory}.

    @param contexts: one TLS context for every connection, or what gives
        the current one (`ReloadableServerOptions.current_context`).
    @param helloTimeout: with the C{clock} to time it, a connection that
        sends nothing within that many seconds is aborted.
    """
    if helloTimeout is not None and clock is None:
        raise ValueError("a hello timeout needs a clock")
    if isinstance(contexts, ssl.SSLContext):
        fixed = contexts

        def context() -> ssl.SSLContext:
            return fixed

    else:
        context = contexts
    return TLSServerFactory(context, wrappedFactory, clock, helloTimeout)
