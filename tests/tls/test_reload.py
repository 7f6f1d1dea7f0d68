# -*- test-case-name: tests.tls.test_reload -*-
"""
Tests for L{haven_agent.tls.reload}: reloading the TLS material while
serving, the expiry warning, SIGHUP, and client certificates.

Whether a reload reaches new connections and spares established ones, and
whether OpenSSL really refuses a client, is decided by real handshakes on real
sockets: the server is the agent's own half-closeable TLS wrapper on a
listening port, the client a blocking pyOpenSSL connection run in a thread
(as in L{tests.tls.test_transport}).  The rest runs on a C{Clock}.
"""

from __future__ import annotations

import datetime
import os
import signal
import socket
import ssl
import struct
from collections.abc import Callable, Sequence
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from OpenSSL import SSL
from twisted.internet import reactor
from twisted.internet.defer import Deferred, DeferredList, inlineCallbacks
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import Clock, deferLater
from twisted.internet.threads import deferToThread
from twisted.logger import LogLevel, capturedLogs, formatEvent
from twisted.trial.unittest import SynchronousTestCase, TestCase

from haven_agent.tls.certificates import (
    CertificateError,
    ServerCertificate,
    load_certificate_files,
    load_client_ca,
    sha256_fingerprint,
)
from haven_agent.tls.reload import (
    CHECK_INTERVAL,
    CertificateWatch,
    ReloadableServerOptions,
    client_identity,
    expiry_warning,
    install_reload_signal,
)
from haven_agent.tls.transport import serve_tls
from tests.pki import cert_pem, issue, key_pem, make_ca, server_pair, write

NOW = datetime.datetime(2030, 1, 2, 3, 4, 5, tzinfo=datetime.UTC)


class Files:
    """
    The certificate, key and client CA files of one test, and loaders
    reading them the way the agent does.
    """

    def __init__(self, directory: str) -> None:
        os.makedirs(directory)
        self.cert = os.path.join(directory, "cert.pem")
        self.key = os.path.join(directory, "key.pem")
        self.ca = os.path.join(directory, "client-ca.pem")

    def install(
        self, common_name: str, not_after: datetime.datetime | None = None
    ) -> str:
        """Write a new server certificate and key; return its fingerprint."""
        key, cert = server_pair(common_name, not_after)
        write(self.cert, cert_pem(cert))
        write(self.key, key_pem(key))
        return sha256_fingerprint(cert)

    def install_ca(self, *cas: tuple[Any, x509.Certificate]) -> None:
        write(self.ca, b"".join(cert_pem(cert) for _, cert in cas))

    def load(self) -> tuple[ServerCertificate, bytes | None]:
        return load_certificate_files(self.cert, self.key), None

    def load_with_client_ca(self) -> tuple[ServerCertificate, bytes | None]:
        return load_certificate_files(self.cert, self.key), load_client_ca(self.ca)


def logged(events: Sequence[dict[str, Any]]) -> str:
    return "\n".join(formatEvent(event) for event in events)


# --- a blocking TLS client, run in a thread ---------------------------------------


class BlockingClient:
    """
    A pyOpenSSL client on a blocking socket: connects and handshakes at once,
    then echoes on demand.  A receive timeout keeps a broken server from
    hanging the run.
    """

    def __init__(
        self,
        port: int,
        cert: x509.Certificate | None = None,
        key: ec.EllipticCurvePrivateKey | None = None,
        tls12: bool = False,
    ) -> None:
        context = SSL.Context(SSL.TLS_CLIENT_METHOD)
        context.set_alpn_protos([b"http/1.1"])
        if tls12:
            context.set_max_proto_version(SSL.TLS1_2_VERSION)
        if cert is not None and key is not None:
            context.use_certificate(cert)
            context.use_privatekey(key)
        self.sock = socket.create_connection(("127.0.0.1", port))
        self.sock.setsockopt(
            socket.SOL_SOCKET, socket.SO_RCVTIMEO, struct.pack("ll", 10, 0)
        )
        self.connection = SSL.Connection(context, self.sock)
        self.connection.set_connect_state()
        try:
            self.connection.do_handshake()
        except BaseException:
            self.sock.close()
            raise
        peer = self.connection.get_peer_certificate()
        assert peer is not None
        self.fingerprint = sha256_fingerprint(peer.to_cryptography())

    def echo(self, data: bytes) -> bytes:
        self.connection.sendall(data)
        received = b""
        while len(received) < len(data):
            chunk = self.connection.recv(65536)
            if not chunk:
                break
            received += chunk
        return received

    def close(self) -> None:
        try:
            self.connection.shutdown()
        except (SSL.Error, OSError):
            pass
        self.sock.close()


def attempt(port: int, **options: Any) -> tuple[str | None, str | None]:
    """
    Connect, echo once and close.  Returns (fingerprint, None) when the
    echo came back, else (None, what went wrong): with TLS 1.3 a refused
    client certificate only shows on the client's first read.
    """
    try:
        client = BlockingClient(port, **options)
    except (SSL.Error, OSError) as e:
        return None, repr(e)
    try:
        echoed = client.echo(b"ping")
    except (SSL.Error, OSError) as e:
        return None, repr(e)
    finally:
        client.close()
    if echoed != b"ping":
        return None, f"echo {echoed!r}"
    return client.fingerprint, None


class Echo(Protocol):
    """Echoes, noting the client's identity when its first bytes arrive."""

    identity: str | None = None

    def connectionMade(self) -> None:
        self.lost: Deferred[None] = Deferred()
        self.greeted = False
        self.factory.protocols.append(self)  # type: ignore[attr-defined]

    def dataReceived(self, data: bytes) -> None:
        if not self.greeted:
            self.greeted = True
            self.identity = client_identity(self.transport)
        self.transport.write(data)  # type: ignore[union-attr]

    def connectionLost(self, reason: object = None) -> None:
        self.lost.callback(None)


class ServingTestCase(TestCase):
    """Listens on a real port with the agent's TLS wrapper and cleans up."""

    def listen(self, options: ReloadableServerOptions) -> int:
        factory: Any = Factory.forProtocol(Echo)
        factory.protocols = []
        self.factory = factory
        self.clients: list[BlockingClient] = []
        tls: Any = serve_tls(options.current_context, factory)
        port: Any = reactor.listenTCP(  # type: ignore[attr-defined]
            0, tls, interface="127.0.0.1"
        )
        self.addCleanup(self._stop, port)
        return int(port.getHost().port)

    @inlineCallbacks
    def _stop(self, port: Any) -> Any:
        for client in self.clients:
            yield deferToThread(client.close)
        waiting = DeferredList([p.lost for p in self.factory.protocols])
        yield waiting.addTimeout(10, reactor)
        yield port.stopListening()

    @inlineCallbacks
    def connect(self, port: int, **options: Any) -> Any:
        client = yield deferToThread(BlockingClient, port, **options)
        self.clients.append(client)
        return client


# --- tests ------------------------------------------------------------------------


class ReloadOverSocketsTests(ServingTestCase):
    def setUp(self) -> None:
        self.files = Files(self.mktemp())

    def test_context_kept_until_reload(self) -> None:
        """
        Every new connection gets the same context until a reload builds
        another; the one given out before is left as it was.
        """
        self.files.install("one")
        options = ReloadableServerOptions(self.files.load)
        first = options.current_context()
        self.assertIsInstance(first, ssl.SSLContext)
        self.assertIs(options.current_context(), first)
        self.assertTrue(options.reload())
        self.assertIsNot(options.current_context(), first)

    @inlineCallbacks
    def test_new_connections_get_new_certificate(self) -> Any:
        """
        After a reload new connections see the new certificate, while one
        opened before keeps working on the old one.
        """
        first_fingerprint = self.files.install("one")
        options = ReloadableServerOptions(self.files.load)
        port = self.listen(options)

        before = yield self.connect(port)
        self.assertEqual(before.fingerprint, first_fingerprint)
        self.assertEqual((yield deferToThread(before.echo, b"before")), b"before")

        second_fingerprint = self.files.install("two")
        self.assertNotEqual(second_fingerprint, first_fingerprint)
        with capturedLogs() as events:
            self.assertTrue(options.reload())
        text = logged(events)
        self.assertIn(f"reloaded TLS certificate {self.files.cert} (new)", text)
        self.assertIn(second_fingerprint, text)
        self.assertEqual(options.current_certificate.fingerprint, second_fingerprint)

        after = yield self.connect(port)
        self.assertEqual(after.fingerprint, second_fingerprint)
        self.assertEqual((yield deferToThread(after.echo, b"after")), b"after")

        big = b"still here " * 20000
        self.assertEqual((yield deferToThread(before.echo, big)), big)
        peer = before.connection.get_peer_certificate()
        self.assertEqual(sha256_fingerprint(peer.to_cryptography()), first_fingerprint)

    @inlineCallbacks
    def test_broken_key_keeps_old_certificate(self) -> Any:
        """
        A key file that cannot be read as a key fails the reload with an
        error naming it; new connections still get the old certificate,
        and a later reload with good files succeeds.
        """
        first_fingerprint = self.files.install("one")
        options = ReloadableServerOptions(self.files.load)
        port = self.listen(options)

        write(self.files.key, b"-----BEGIN PRIVATE KEY-----\nbroken\n")
        with capturedLogs() as events:
            self.assertFalse(options.reload())
        [event] = [e for e in events if e["log_level"] == LogLevel.error]
        text = formatEvent(event)
        self.assertIn(self.files.key, text)
        self.assertIn("TLS reload failed", text)
        self.assertIn(first_fingerprint, text)

        client = yield self.connect(port)
        self.assertEqual(client.fingerprint, first_fingerprint)
        self.assertEqual((yield deferToThread(client.echo, b"ok")), b"ok")

        third_fingerprint = self.files.install("three")
        self.assertTrue(options.reload())
        fingerprint, error = yield deferToThread(attempt, port)
        self.assertIsNone(error)
        self.assertEqual(fingerprint, third_fingerprint)

    @inlineCallbacks
    def test_sighup(self) -> Any:
        """
        A real SIGHUP to this process reloads the certificate once the
        reactor runs; restoring puts the previous handler back.
        """
        self.files.install("one")
        options = ReloadableServerOptions(self.files.load)
        port = self.listen(options)
        previous = signal.getsignal(signal.SIGHUP)
        restore = install_reload_signal(reactor, options)
        self.addCleanup(restore)
        self.assertIsNot(signal.getsignal(signal.SIGHUP), previous)

        second_fingerprint = self.files.install("two")
        with capturedLogs() as events:
            os.kill(os.getpid(), signal.SIGHUP)
            for _ in range(500):
                if options.current_certificate.fingerprint == second_fingerprint:
                    break
                yield deferLater(reactor, 0.01, lambda: None)
        self.assertEqual(options.current_certificate.fingerprint, second_fingerprint)
        text = logged(events)
        self.assertIn("SIGHUP: reloading", text)
        self.assertIn(f"reloaded TLS certificate {self.files.cert}", text)
        self.assertIn(second_fingerprint, text)

        fingerprint, error = yield deferToThread(attempt, port)
        self.assertIsNone(error)
        self.assertEqual(fingerprint, second_fingerprint)

        restore()
        self.assertEqual(signal.getsignal(signal.SIGHUP), previous)


class MutualTLSTests(ServingTestCase):
    """
    With a client CA, OpenSSL itself refuses clients without a certificate
    from it, and L{client_identity} names the ones it lets in.
    """

    def setUp(self) -> None:
        self.files = Files(self.mktemp())
        self.files.install("agent")
        self.ca = make_ca("Client CA")
        self.other_ca = make_ca("Other CA")
        self.files.install_ca(self.ca)

    @inlineCallbacks
    def assert_mutual_tls(self, tls12: bool) -> Any:
        options = ReloadableServerOptions(self.files.load_with_client_ca)
        port = self.listen(options)

        fingerprint, error = yield deferToThread(attempt, port, tls12=tls12)
        self.assertIsNone(fingerprint, "a client without a certificate got in")
        self.assertIn(
            "tls alert handshake failure" if tls12 else "certificate required",
            error,
        )

        intruder_key, intruder_cert = issue(self.other_ca, ["mallory"])
        fingerprint, error = yield deferToThread(
            attempt, port, cert=intruder_cert, key=intruder_key, tls12=tls12
        )
        self.assertIsNone(fingerprint, "a certificate from another CA got in")
        self.assertIn("unknown ca", error)

        key, cert = issue(self.ca, ["alice"], dns_names=["alice.example"])
        fingerprint, error = yield deferToThread(
            attempt, port, cert=cert, key=key, tls12=tls12
        )
        self.assertIsNone(error)
        identities = [p.identity for p in self.factory.protocols if p.greeted]
        self.assertEqual(identities, ["alice"])

    def test_tls13(self) -> Any:
        return self.assert_mutual_tls(tls12=False)

    def test_tls12(self) -> Any:
        return self.assert_mutual_tls(tls12=True)

    @inlineCallbacks
    def test_client_ca_reloaded(self) -> Any:
        """
        A reload reads the client CA again: certificates from the new CA get
        in, those from the old one no longer do.
        """
        options = ReloadableServerOptions(self.files.load_with_client_ca)
        port = self.listen(options)
        old_key, old_cert = issue(self.ca, ["alice"])
        new_key, new_cert = issue(self.other_ca, ["bob"])

        self.files.install_ca(self.other_ca)
        self.assertTrue(options.reload())

        fingerprint, error = yield deferToThread(
            attempt, port, cert=old_cert, key=old_key
        )
        self.assertIsNone(fingerprint)
        self.assertIn("unknown ca", error)
        fingerprint, error = yield deferToThread(
            attempt, port, cert=new_cert, key=new_key
        )
        self.assertIsNone(error)
        identities = [p.identity for p in self.factory.protocols if p.greeted]
        self.assertEqual(identities, ["bob"])


class ReloadFailureTests(SynchronousTestCase):
    """
    Whatever goes wrong, a reload keeps the material in use, says which file
    is at fault, and does not raise.
    """

    def setUp(self) -> None:
        self.files = Files(self.mktemp())
        self.fingerprint = self.files.install("one")
        self.ca = make_ca("Client CA")
        self.files.install_ca(self.ca)

    def assert_kept(
        self, options: ReloadableServerOptions, *names: str
    ) -> dict[str, Any]:
        kept = options.current_context()
        with capturedLogs() as events:
            self.assertFalse(options.reload())
        self.assertIs(options.current_context(), kept)
        self.assertEqual(options.current_certificate.fingerprint, self.fingerprint)
        [event] = [e for e in events if e["log_level"] == LogLevel.error]
        text = formatEvent(event)
        for name in names:
            self.assertIn(name, text)
        self.assertEqual(event.get("message", ()), ())
        return event

    def test_start_up_failure_raises(self) -> None:
        """At start-up a bad file is fatal, so twistd stops with the reason."""
        os.remove(self.files.key)
        error = self.assertRaises(
            CertificateError, ReloadableServerOptions, self.files.load
        )
        self.assertIn(self.files.key, str(error))

    def test_missing_certificate(self) -> None:
        options = ReloadableServerOptions(self.files.load)
        os.remove(self.files.cert)
        self.assert_kept(options, self.files.cert, "cannot read")

    def test_key_mismatch(self) -> None:
        """
        The new certificate is in place but the key is still the old one,
        as half-way through copying a renewal: nothing changes.
        """
        options = ReloadableServerOptions(self.files.load)
        _, cert = server_pair("two")
        write(self.files.cert, cert_pem(cert))
        self.assert_kept(options, self.files.key, "does not match")

    def test_bad_client_ca(self) -> None:
        """
        A client CA file that no longer holds a certificate keeps the old
        CA: mutual TLS is never switched off by a reload.
        """
        options = ReloadableServerOptions(self.files.load_with_client_ca)
        ca_pem = options.client_ca_pem
        self.assertIsNotNone(ca_pem)
        write(self.files.ca, b"garbage")
        self.assert_kept(options, self.files.ca)
        self.assertEqual(options.client_ca_pem, ca_pem)
        self.assertEqual(options.current_context().verify_mode, ssl.CERT_REQUIRED)

    def test_missing_client_ca(self) -> None:
        options = ReloadableServerOptions(self.files.load_with_client_ca)
        os.remove(self.files.ca)
        self.assert_kept(options, self.files.ca)

    def test_unexpected_error(self) -> None:
        """An unexpected exception from the loader is logged with its traceback."""
        calls: list[None] = []

        def load() -> tuple[ServerCertificate, bytes | None]:
            calls.append(None)
            if len(calls) > 1:
                raise RuntimeError("surprise")
            return self.files.load()

        options = ReloadableServerOptions(load)
        with capturedLogs() as events:
            self.assertFalse(options.reload())
        self.assertEqual(options.current_certificate.fingerprint, self.fingerprint)
        self.assertIn(self.files.cert, logged(events))
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)

    def test_unchanged_files(self) -> None:
        options = ReloadableServerOptions(self.files.load)
        with capturedLogs() as events:
            self.assertTrue(options.reload())
        self.assertIn("(unchanged)", logged(events))


def certificate(
    not_after: datetime.datetime, generated: bool = False
) -> ServerCertificate:
    return ServerCertificate(
        cert_pem=b"",
        key_pem=b"",
        fingerprint="AB:CD:EF",
        cert_path="/etc/haven/agent-cert.pem",
        key_path="/etc/haven/agent-key.pem",
        generated=generated,
        not_after=not_after,
    )


class ExpiryWarningTests(SynchronousTestCase):
    def test_within_window(self) -> None:
        warning = expiry_warning(certificate(NOW + datetime.timedelta(days=10)), NOW)
        assert warning is not None
        self.assertIn("/etc/haven/agent-cert.pem", warning)
        self.assertIn("expires on 2030-01-12 03:04:05 UTC, in 10 days", warning)
        self.assertIn("SHA-256 fingerprint AB:CD:EF", warning)
        self.assertIn("/etc/haven/agent-key.pem", warning)
        self.assertIn("SIGHUP", warning)

    def test_outside_window(self) -> None:
        self.assertIsNone(
            expiry_warning(
                certificate(NOW + datetime.timedelta(days=30, seconds=1)), NOW
            )
        )
        self.assertIsNone(
            expiry_warning(certificate(NOW + datetime.timedelta(days=8)), NOW, days=7)
        )

    def test_boundary(self) -> None:
        self.assertIsNotNone(
            expiry_warning(certificate(NOW + datetime.timedelta(days=30)), NOW)
        )

    def test_last_day(self) -> None:
        warning = expiry_warning(certificate(NOW + datetime.timedelta(hours=5)), NOW)
        assert warning is not None
        self.assertIn("in less than a day", warning)
        warning = expiry_warning(
            certificate(NOW + datetime.timedelta(days=1, hours=5)), NOW
        )
        assert warning is not None
        self.assertIn("in 1 day ", warning)

    def test_expired(self) -> None:
        for not_after in (NOW, NOW - datetime.timedelta(days=3)):
            warning = expiry_warning(certificate(not_after), NOW)
            assert warning is not None
            self.assertIn("expired on", warning)
            self.assertIn("/etc/haven/agent-cert.pem", warning)
            self.assertIn("AB:CD:EF", warning)

    def test_naive_now_is_utc(self) -> None:
        warning = expiry_warning(
            certificate(NOW + datetime.timedelta(days=10)), NOW.replace(tzinfo=None)
        )
        assert warning is not None
        self.assertIn("in 10 days", warning)

    def test_generated_certificate_advice(self) -> None:
        warning = expiry_warning(
            certificate(NOW + datetime.timedelta(days=10), generated=True), NOW
        )
        assert warning is not None
        self.assertIn("delete it and /etc/haven/agent-key.pem", warning)
        self.assertIn("self-signed", warning)


class CertificateWatchTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.files = Files(self.mktemp())
        self.clock = Clock()
        self.clock.advance(NOW.timestamp())

    def watch(self, days_left: int) -> tuple[CertificateWatch, ReloadableServerOptions]:
        self.files.install("one", NOW + datetime.timedelta(days=days_left))
        options = ReloadableServerOptions(self.files.load)
        return CertificateWatch(options, self.clock), options

    def test_warns_at_start_and_daily(self) -> None:
        watch, options = self.watch(days_left=10)
        with capturedLogs() as events:
            watch.startService()
            self.assertEqual(len(events), 1)
            self.clock.advance(CHECK_INTERVAL - 1)
            self.assertEqual(len(events), 1)
            self.clock.advance(1)
            self.assertEqual(len(events), 2)
        first, second = (formatEvent(event) for event in events)
        self.assertIn("in 10 days", first)
        self.assertIn("in 9 days", second)
        fingerprint = options.current_certificate.fingerprint
        for event in events:
            self.assertEqual(event["log_level"], LogLevel.warn)
            self.assertEqual(event["path"], self.files.cert)
            self.assertEqual(event["fingerprint"], fingerprint)
            self.assertEqual(event.get("message", ()), ())
            self.assertNotIn("warning", event)
        self.assertIn(self.files.cert, first)
        self.assertIn(fingerprint, first)

        watch.stopService()
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_quiet_while_far_from_expiry(self) -> None:
        watch, _ = self.watch(days_left=90)
        with capturedLogs() as events:
            watch.startService()
            self.clock.advance(CHECK_INTERVAL)
        self.assertEqual(events, [])
        watch.stopService()
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_judges_reloaded_certificate(self) -> None:
        watch, options = self.watch(days_left=10)
        watch.startService()
        self.addCleanup(watch.stopService)
        self.files.install("renewed", NOW + datetime.timedelta(days=400))
        self.assertTrue(options.reload())
        with capturedLogs() as events:
            self.clock.advance(CHECK_INTERVAL)
        self.assertEqual(events, [])

    def test_check_never_raises(self) -> None:
        class Broken:
            @property
            def current_certificate(self) -> ServerCertificate:
                raise RuntimeError("boom")

        watch = CertificateWatch(Broken(), self.clock)  # type: ignore[arg-type]
        watch.startService()
        self.clock.advance(CHECK_INTERVAL)
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 2)
        watch.stopService()


class FakeSignal:
    """The parts of the L{signal} module L{install_reload_signal} uses."""

    SIGHUP = 1
    SIG_DFL = 0

    def __init__(self, previous: object) -> None:
        self.handlers: dict[int, object] = {self.SIGHUP: previous}

    def signal(self, signum: int, handler: object) -> object:
        previous = self.handlers[signum]
        self.handlers[signum] = handler
        return previous


class FakeReactor(Clock):
    def __init__(self) -> None:
        super().__init__()
        self.from_thread: list[Callable[[], None]] = []

    def callFromThread(self, f: Callable[..., None], *args: object) -> None:
        self.from_thread.append(lambda: f(*args))


class InstallReloadSignalTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.files = Files(self.mktemp())
        self.files.install("one")
        self.reactor = FakeReactor()
        self.reactor.advance(NOW.timestamp())

    def test_handler_defers_to_reactor(self) -> None:
        """
        The signal handler only schedules the reload; the reactor runs it,
        then checks the new certificate's expiry.
        """
        options = ReloadableServerOptions(self.files.load)
        previous = object()
        signals = FakeSignal(previous)
        restore = install_reload_signal(self.reactor, options, signals)
        handler = signals.handlers[signals.SIGHUP]
        assert callable(handler)

        fingerprint = self.files.install("two", NOW + datetime.timedelta(days=5))
        handler(signals.SIGHUP, None)
        self.assertNotEqual(options.current_certificate.fingerprint, fingerprint)
        [scheduled] = self.reactor.from_thread
        with capturedLogs() as events:
            scheduled()
        self.assertEqual(options.current_certificate.fingerprint, fingerprint)
        text = logged(events)
        self.assertIn("reloaded TLS certificate", text)
        self.assertIn("expires on", text)

        restore()
        self.assertIs(signals.handlers[signals.SIGHUP], previous)
        signals.handlers[signals.SIGHUP] = "someone else's"
        restore()
        self.assertEqual(signals.handlers[signals.SIGHUP], "someone else's")

    def test_failed_reload_does_not_raise(self) -> None:
        options = ReloadableServerOptions(self.files.load)
        signals = FakeSignal(None)
        install_reload_signal(self.reactor, options, signals)
        os.remove(self.files.key)
        signals.handlers[signals.SIGHUP](signals.SIGHUP, None)  # type: ignore[operator]
        with capturedLogs() as events:
            self.reactor.from_thread[0]()
        self.assertIn(self.files.key, logged(events))

    def test_previous_handler_not_from_python(self) -> None:
        """signal.signal returns None for a handler set outside Python."""
        options = ReloadableServerOptions(self.files.load)
        signals = FakeSignal(None)
        install_reload_signal(self.reactor, options, signals)()
        self.assertEqual(signals.handlers[signals.SIGHUP], signals.SIG_DFL)

    def test_no_sighup(self) -> None:
        class NoSighup:
            pass

        options = ReloadableServerOptions(self.files.load)
        restore = install_reload_signal(self.reactor, options, NoSighup())
        restore()


class FakeTransport:
    def __init__(self, cert: x509.Certificate | None) -> None:
        self.peer = cert

    def getPeerCertificate(self) -> x509.Certificate | None:
        return self.peer


class ClientIdentityTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.ca = make_ca("Client CA")

    def identity(self, common_names: list[str], dns_names: list[str] = ()) -> Any:  # type: ignore[assignment]
        _, cert = issue(self.ca, common_names, dns_names=dns_names)
        return client_identity(FakeTransport(cert))

    def test_common_name(self) -> None:
        self.assertEqual(self.identity(["alice"], ["alice.example"]), "alice")

    def test_last_common_name_counts(self) -> None:
        self.assertEqual(self.identity(["team", "alice"]), "alice")

    def test_first_dns_name_without_common_name(self) -> None:
        self.assertEqual(
            self.identity([], ["ci.example", "other.example"]), "ci.example"
        )

    def test_no_name(self) -> None:
        self.assertIsNone(self.identity([]))

    def test_no_certificate(self) -> None:
        self.assertIsNone(client_identity(FakeTransport(None)))

    def test_not_tls(self) -> None:
        self.assertIsNone(client_identity(object()))
