"""
TLS session resumption: a client that offers the ticket of its last
connection skips the full handshake, as long as the material it was issued
with is still the one served; a resumed session keeps the identity of the
client certificate checked in the full handshake.
"""

from __future__ import annotations

import os
import socket
import ssl
from typing import Any

from twisted.internet.defer import inlineCallbacks
from twisted.internet.threads import deferToThread

from haven_agent.tls.reload import ReloadableServerOptions
from tests.pki import cert_pem, issue, key_pem, make_ca, write
from tests.tls.test_reload import Files, ServingTestCase


class Client:
    """The standard library's TLS client: one echo per connection."""

    def __init__(
        self, tls12: bool = False, cert: Any = None, key: Any = None, directory=""
    ) -> None:
        self.context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        self.context.check_hostname = False
        self.context.verify_mode = ssl.CERT_NONE
        if tls12:
            self.context.maximum_version = ssl.TLSVersion.TLSv1_2
        if cert is not None:
            cert_path = write(os.path.join(directory, "client.pem"), cert_pem(cert))
            key_path = write(os.path.join(directory, "client-key.pem"), key_pem(key))
            self.context.load_cert_chain(cert_path, key_path)

    def echo(self, port: int, session: ssl.SSLSession | None = None):
        """(the echo, whether the session was resumed, the session to offer next)."""
        with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
            with self.context.wrap_socket(sock, session=session) as tls:
                tls.sendall(b"ping")
                # TLS 1.3 tickets come after the handshake, before the echo.
                echoed = tls.recv(4)
                return echoed, tls.session_reused, tls.session


class SessionResumptionTests(ServingTestCase):
    def setUp(self) -> None:
        self.files = Files(self.mktemp())
        self.files.install("agent")

    @inlineCallbacks
    def assert_resumed(self, tls12: bool) -> Any:
        port = self.listen(ReloadableServerOptions(self.files.load))
        client = Client(tls12=tls12)
        echoed, reused, session = yield deferToThread(client.echo, port)
        self.assertEqual((echoed, reused), (b"ping", False))
        self.assertTrue(session.has_ticket)
        echoed, reused, _ = yield deferToThread(client.echo, port, session)
        self.assertEqual((echoed, reused), (b"ping", True))

    def test_tls13(self) -> Any:
        return self.assert_resumed(tls12=False)

    def test_tls12(self) -> Any:
        return self.assert_resumed(tls12=True)

    @inlineCallbacks
    def test_reload_ends_old_sessions(self) -> Any:
        """After a reload the old ticket is refused: a full handshake, served."""
        options = ReloadableServerOptions(self.files.load)
        port = self.listen(options)
        client = Client()
        _, _, session = yield deferToThread(client.echo, port)
        self.assertTrue(options.reload())
        echoed, reused, _ = yield deferToThread(client.echo, port, session)
        self.assertEqual((echoed, reused), (b"ping", False))

    @inlineCallbacks
    def test_client_certificate_identity_kept(self) -> Any:
        """
        A resumed session is still the certificate holder's; once the client
        CA is replaced, its ticket no longer lets a certificate of the old CA
        back in.
        """
        ca, other_ca = make_ca("Client CA"), make_ca("Other CA")
        self.files.install_ca(ca)
        options = ReloadableServerOptions(self.files.load_with_client_ca)
        port = self.listen(options)
        key, cert = issue(ca, ["alice"])
        directory = self.mktemp()
        os.makedirs(directory)
        client = Client(cert=cert, key=key, directory=directory)
        _, _, session = yield deferToThread(client.echo, port)
        echoed, reused, _ = yield deferToThread(client.echo, port, session)
        self.assertEqual((echoed, reused), (b"ping", True))
        identities = [p.identity for p in self.factory.protocols if p.greeted]
        self.assertEqual(identities, ["alice", "alice"])

        self.files.install_ca(other_ca)
        self.assertTrue(options.reload())
        with self.assertRaises((ssl.SSLError, OSError)):
            yield deferToThread(client.echo, port, session)
