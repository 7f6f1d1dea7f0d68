# -*- test-case-name: tests._twisted.test_halfclose_tls -*-
"""
A TLS server transport that can close one direction at a time.

The docker CLI half-closes its side of a hijacked connection as soon as stdin
ends (`echo data | docker run -i ...`, and at once for `docker exec` without
-i): over TLS it sends a close_notify alert, older clients send a bare TCP FIN.
It then keeps reading until the server closes. Twisted's TLS wrapper answers a
close_notify by tearing the whole connection down, and it does not pass a TCP
FIN on as a half-close, so the container's output would be lost (twisted
issue 5341). OpenSSL itself allows it: after the peer's close_notify our
`send()` still works, and since TLS 1.3 close_notify closes only the sender's
direction (RFC 8446, section 6.1), which is what Go's `CloseWrite` relies on.

This module changes these things about Twisted's TLS transport:

- the peer's close_notify, or a TCP FIN, is delivered to the wrapped protocol
  as `readConnectionLost()` when it provides `IHalfCloseableProtocol`;
- `loseWriteConnection()` sends our close_notify and a TCP FIN once buffered
  data is flushed, and keeps reading;
- a full `loseConnection()` sends close_notify and then closes the socket at
  once instead of waiting for the peer's answering alert, which a half-closed
  peer has already sent or will never send;
- all records decrypted from one socket read reach the protocol in one call;
- a connection that sends nothing at all (no ClientHello) within the
  factory's C{helloTimeout} is aborted, so idle TCP connections cannot hold
  the places of clients that are waiting to authenticate;
- writes are encrypted at once rather than gathered until the next reactor
  turn (a `callLater(0)` per write, `BufferingTLSTransport`'s aggregation,
  which is why this subclasses `TLSMemoryBIOProtocol` instead), and all the
  TLS records one write makes go to the socket in one `write_now` (see
  `haven_agent._twisted.eager_write`). The proxy's writes are whole socket reads
  already, so there is nothing to gather, and the delay cost a reactor
  iteration per answer.

It relies on private attributes of Twisted's TLS wrapper, so setup.cfg pins
the Twisted release line it is tested with.
"""

from __future__ import annotations

from OpenSSL.SSL import Error, WantReadError, ZeroReturnError
from twisted.internet.interfaces import (
    IHalfCloseableProtocol,
    IProtocolFactory,
    IReactorTime,
)
from twisted.protocols.tls import TLSMemoryBIOFactory, TLSMemoryBIOProtocol
from twisted.python.failure import Failure
from zope.interface import implementer

from haven_agent._twisted.eager_write import write_now
from haven_agent.tls.failure import NoClientHello

#: Most plaintext one TLS record carries.
RECORD_PAYLOAD = 2**14
#: What one read of the send BIO asks for: the records of a 64 KiB socket
#: read, with their overhead, fit in one.
SEND_BIO_READ = 2**16 + 2**12


@implementer(IHalfCloseableProtocol)
class HalfCloseableTLSTransport(TLSMemoryBIOProtocol):
    """
    Twisted's TLS transport with independent read and write shutdown.

    @ivar _readClosed: the peer will send no more application data (its
        close_notify or a TCP FIN arrived).
    @ivar _writeClosed: our close_notify has been queued; no more writes.
    @ivar _writeClosePending: `loseWriteConnection` was asked for, and waits
        until writes buffered behind the handshake have drained and the
        producer is unregistered.
    """

    _readClosed = False
    _writeClosed = False
    _writeClosePending = False

    def _flushReceiveBIO(self) -> None:
        """
        Decrypt every complete record received and hand the plaintext to the
        protocol in one call: a 64 KiB socket read of an upload holds four
        records, and one call instead of four saves the gate's per-call work
        and three writes to dockerd.
        """
        received: list[bytes] = []
        while not self._lostTLSConnection and not self._readClosed:
            try:
                received.append(self._tlsConnection.recv(RECORD_PAYLOAD))
            except WantReadError:
                break
            except ZeroReturnError:
                # The peer's close_notify: its direction is done, ours is
                # not. What came before it goes first.
                self._deliver(received)
                received = []
                self._peerFinishedSending()
                break
            except Error:
                self._deliver(received)
                received = []
                self._tlsShutdownFinished(Failure())
        self._deliver(received)
        self._flushSendBIO()

    def _deliver(self, received: list[bytes]) -> None:
        if received and not self._aborted:
            self.wrappedProtocol.dataReceived(
                received[0] if len(received) == 1 else b"".join(received)
            )

    def _flushSendBIO(self) -> None:
        """
        Send everything OpenSSL has ready, in one write.
        """
        # Closing a TCP transport whose write side is already shut down
        # reports connectionLost at once, which drops the OpenSSL connection
        # while this wrapper may still be on the stack.
        connection = self._tlsConnection
        if connection is None:
            return
        try:
            data = connection.bio_read(SEND_BIO_READ)
        except WantReadError:
            return
        if len(data) == SEND_BIO_READ:
            chunks = [data]
            while len(data) == SEND_BIO_READ:
                try:
                    data = connection.bio_read(SEND_BIO_READ)
                except WantReadError:
                    break
                chunks.append(data)
            data = b"".join(chunks)
        write_now(self.transport, data)

    def _write(self, data: bytes) -> None:
        """
        Encrypt C{data} into records and send them together.
        """
        if self._lostTLSConnection:
            return
        connection = self._tlsConnection
        view = memoryview(data)
        size = len(data)
        sent = 0
        while sent < size:
            try:
                sent += connection.send(view[sent : sent + RECORD_PAYLOAD])
            except WantReadError:
                # A handshake still under way: keep the rest until the
                # peer's bytes let OpenSSL go on.
                self._bufferedWrite(data[sent:])
                break
            except Error:
                self._tlsShutdownFinished(Failure())
                return
        self._flushSendBIO()

    _helloTimer = None
    _noHello: Failure | None = None

    def makeConnection(self, transport) -> None:
        timeout = self.factory.helloTimeout
        if timeout is not None:
            self._helloTimer = self.factory.clock.callLater(timeout, self._silent)
        super().makeConnection(transport)

    def _silent(self) -> None:
        self._helloTimer = None
        self._noHello = Failure(NoClientHello(self.factory.helloTimeout))
        self.transport.abortConnection()

    def dataReceived(self, data: bytes) -> None:
        if self._helloTimer is not None:
            self._helloTimer.cancel()
            self._helloTimer = None
        if self._readClosed and self._handshakeDone:
            # Anything after close_notify is not application data.
            return
        super().dataReceived(data)

    def readConnectionLost(self) -> None:
        """
        The TCP connection was half-closed by the peer (a FIN) without a
        close_notify, as older docker clients do: treat it the same way.

        OpenSSL is not told about the end of its input: since OpenSSL 3 an
        unexpected EOF is a fatal error that would forbid our own writes,
        and every complete record received was already processed.
        """
        if self._lostTLSConnection or self._readClosed:
            self._closeIfBothDone()
            return
        if not self._handshakeDone:
            # A FIN in the middle of the handshake: nothing to half-close.
            self.transport.loseConnection()
            return
        self._peerFinishedSending()

    def writeConnectionLost(self) -> None:
        """
        Our TCP FIN has been sent; nothing to do until reading ends too.
        """

    def _peerFinishedSending(self) -> None:
        self._readClosed = True
        protocol = IHalfCloseableProtocol(self.wrappedProtocol, None)
        if protocol is None:
            # The application cannot take a half-close: behave as before.
            self.loseConnection()
            return
        protocol.readConnectionLost()
        self._closeIfBothDone()

    def loseWriteConnection(self) -> None:
        """
        Send close_notify and a TCP FIN after everything written so far.
        """
        if self._writeClosed or self._lostTLSConnection or not self.connected:
            return
        self._writeClosePending = True
        self._finishWriteClose()

    def _finishWriteClose(self) -> None:
        """
        Send the close_notify asked for, once nothing can be written before it
        any more: writes buffered behind the handshake have drained and the
        producer is unregistered.
        """
        if not self._writeClosePending or self._lostTLSConnection:
            return
        if self._appSendBuffer or self._producer is not None:
            return
        self._writeClosePending = False
        self._queueCloseNotify()
        if self._readClosed:
            self.transport.loseConnection()
        else:
            self.transport.loseWriteConnection()

    def _queueCloseNotify(self) -> None:
        if self._writeClosed or self._lostTLSConnection:
            return
        self._writeClosed = True
        try:
            self._tlsConnection.shutdown()
        except Error:
            pass
        self._flushSendBIO()

    def _closeIfBothDone(self) -> None:
        if self._readClosed and self._writeClosed:
            self.transport.loseConnection()

    def _unbufferPendingWrites(self) -> None:
        super()._unbufferPendingWrites()
        self._finishWriteClose()

    def unregisterProducer(self) -> None:
        super().unregisterProducer()
        self._finishWriteClose()

    def _shutdownTLS(self) -> None:
        """
        Send close_notify, then close the socket without waiting for the
        peer's alert: a half-closed peer has already sent it, and a peer that
        simply closes would otherwise hold the connection open.
        """
        self._queueCloseNotify()
        self.transport.loseConnection()

    def write(self, data: bytes) -> None:  # type: ignore[override]
        if not self._writeClosed:
            super().write(data)

    def writeSequence(self, sequence) -> None:
        self.write(b"".join(sequence))

    def connectionLost(self, reason) -> None:
        # Whatever OpenSSL still holds was delivered as it arrived; do not
        # report a half-close on the way to the full close.
        self._readClosed = True
        if self._helloTimer is not None:
            self._helloTimer.cancel()
            self._helloTimer = None
        super().connectionLost(self._noHello or reason)


class HalfCloseableTLSFactory(TLSMemoryBIOFactory):
    """
    Wraps an application factory in `HalfCloseableTLSTransport` connections.

    @ivar helloTimeout: seconds a connection gets to send its first byte,
        or None for no limit.
    @ivar clock: what times C{helloTimeout}.
    """

    protocol = HalfCloseableTLSTransport
    helloTimeout: float | None = None
    clock: IReactorTime | None = None


def wrapWithHalfCloseableTLS(
    contextFactory,
    wrappedFactory: IProtocolFactory,
    clock: IReactorTime | None = None,
    helloTimeout: float | None = None,
) -> HalfCloseableTLSFactory:
    """
    Put server-side TLS, with half-close, on top of C{wrappedFactory};
    with C{helloTimeout} (and the C{clock} to time it), a connection that
    sends nothing within that many seconds is aborted.
    """
    # Given a clock, Twisted's factory does not import the global reactor
    # (which would install the default one as a side effect).
    factory = HalfCloseableTLSFactory(
        contextFactory, False, wrappedFactory, clock=clock
    )
    if helloTimeout is not None:
        if clock is None:
            raise ValueError("a hello timeout needs a clock")
        factory.helloTimeout = helloTimeout
        factory.clock = clock
    return factory
