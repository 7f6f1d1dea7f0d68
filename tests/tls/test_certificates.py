# -*- test-case-name: tests.tls.test_certificates -*-
"""
Tests for L{haven_agent.tls.certificates}: the node's self-signed certificate, loading
operator-supplied files, and the TLS server context, the latter exercised with
real handshakes over in-memory connections.
"""

from __future__ import annotations

import datetime
import hashlib
import ipaddress
import os
import re
import socket
import ssl
import stat
from collections import namedtuple
from typing import Any

import psutil
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from OpenSSL import SSL
from twisted.internet.interfaces import IHandshakeListener
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.ssl import Certificate, optionsForClientTLS
from twisted.internet.task import Clock
from twisted.protocols.tls import TLSMemoryBIOFactory
from twisted.test.iosim import connectedServerAndClient
from twisted.trial.unittest import SkipTest, SynchronousTestCase
from zope.interface import implementer

from haven_agent.tls import certificates
from haven_agent.tls.certificates import (
    CertificateError,
    ServerCertificate,
    load_certificate_files,
    load_client_ca,
    load_or_create_self_signed,
    local_host_names,
    local_ip_addresses,
    parse_server_names,
    server_context,
    sha256_fingerprint,
)
from haven_agent.tls.transport import serve_tls
from tests.pki import cert_pem, issue, key_pem, make_ca, new_key, write

NOW = datetime.datetime(2030, 1, 2, 3, 4, 5, tzinfo=datetime.UTC)
HOSTS = ["node1.example", "node1"]
IPS = ["192.0.2.10", "2001:db8::10"]


# --- helpers ---------------------------------------------------------------------


def private_key_der(pem_or_key: bytes | ec.EllipticCurvePrivateKey) -> bytes:
    """A private key's DER encoding, to compare keys by value."""
    key = (
        serialization.load_pem_private_key(pem_or_key, None)
        if isinstance(pem_or_key, bytes)
        else pem_or_key
    )
    return key.private_bytes(
        serialization.Encoding.DER,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def peer_certificate(connection: SSL.Connection) -> x509.Certificate:
    certificate = connection.get_peer_certificate()
    assert certificate is not None
    return certificate.to_cryptography()


def mode_of(path: str) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def generate(test: SynchronousTestCase, **kwargs: object) -> ServerCertificate:
    """A fresh self-signed certificate in a new state directory."""
    kwargs.setdefault("host_names", HOSTS)
    kwargs.setdefault("ip_addresses", IPS)
    kwargs.setdefault("now", NOW)
    return load_or_create_self_signed(test.mktemp(), **kwargs)  # type: ignore[arg-type]


def parsed(server: ServerCertificate) -> x509.Certificate:
    return x509.load_pem_x509_certificate(server.cert_pem)


# --- helpers: handshakes over pyOpenSSL memory BIOs ------------------------------


def tls_factory(
    options: Any, is_client: bool, wrapped: Any, clock: Any = None
) -> TLSMemoryBIOFactory:
    """
    A L{TLSMemoryBIOFactory}; its arguments are typed loosely because mypy
    cannot see which zope interfaces Twisted's classes provide.
    """
    return TLSMemoryBIOFactory(options, is_client, wrapped, clock)


class ServerConnection:
    """
    The server side of a handshake: the standard library's C{SSLObject}
    over memory BIOs, as the agent's transport serves, with the part of
    pyOpenSSL's memory-BIO API that L{handshake} drives.
    """

    def __init__(self, context: ssl.SSLContext) -> None:
        self.incoming, self.outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
        self.tls = context.wrap_bio(self.incoming, self.outgoing, server_side=True)

    def set_accept_state(self) -> None:
        pass

    def do_handshake(self) -> None:
        self.tls.do_handshake()

    def bio_read(self, size: int) -> bytes:
        return self.outgoing.read(size)

    def bio_write(self, data: bytes) -> None:
        self.incoming.write(data)

    def peer_certificate(self) -> x509.Certificate | None:
        der = self.tls.getpeercert(binary_form=True)
        return x509.load_der_x509_certificate(der) if der else None


def server_connection(context: ssl.SSLContext) -> ServerConnection:
    return ServerConnection(context)


def client_context(
    cert: x509.Certificate | None = None, key: ec.EllipticCurvePrivateKey | None = None
) -> SSL.Context:
    """A plain client context offering ALPN http/1.1, with an optional client cert."""
    context = SSL.Context(SSL.TLS_CLIENT_METHOD)
    context.set_alpn_protos([b"http/1.1"])
    if cert is not None and key is not None:
        context.use_certificate(cert)
        context.use_privatekey(key)
    return context


def handshake(server: ServerConnection, client: SSL.Connection) -> dict[str, Any]:
    """
    Drive a handshake between two memory-BIO connections and return the error
    each side failed with (empty when both completed).  After the handshake
    the client reads once, so a server that rejects the client only after the
    client's last flight (TLS 1.3 client certificates) is seen by both sides.
    """
    server.set_accept_state()
    client.set_connect_state()
    errors: dict[str, Any] = {}
    done: set[str] = set()
    for _ in range(20):
        for name, connection in (("client", client), ("server", server)):
            if name in errors or name in done:
                continue
            try:
                connection.do_handshake()
            except (SSL.WantReadError, ssl.SSLWantReadError):
                pass
            except (SSL.Error, ssl.SSLError) as e:
                errors[name] = e
            else:
                done.add(name)
        moved = False
        for source, sink in ((client, server), (server, client)):
            try:
                data = source.bio_read(65536)
            except (SSL.WantReadError, ssl.SSLWantReadError):
                continue
            if data:
                sink.bio_write(data)
                moved = True
        if not moved and (errors.keys() | done) == {"client", "server"}:
            break
    if "client" not in errors and "server" in errors:
        try:
            client.recv(1)
        except SSL.WantReadError:
            pass
        except SSL.Error as e:
            errors["client"] = e
    return errors


def reasons(error: ssl.SSLError) -> str:
    """OpenSSL's reason for a server-side failure, as its error strings spell it."""
    return (error.reason or "").lower().replace("_", " ")


# --- helpers: a Twisted-level loopback -------------------------------------------


@implementer(IHandshakeListener)
class HandshakeRecorder(Protocol):
    """Records whether Twisted reported the TLS handshake done, and why it ended."""

    completed = False
    lost = None

    def handshakeCompleted(self) -> None:
        self.completed = True

    def connectionLost(self, reason: object = None) -> None:
        self.lost = reason


def twisted_loopback(
    server_context: ssl.SSLContext, client_options: Any
) -> tuple[Any, ...]:
    """
    Connect a Twisted TLS client and the agent's TLS server transport in
    memory and run the handshake.
    """
    client_app, server_app = HandshakeRecorder(), HandshakeRecorder()
    clock = Clock()
    client_factory = tls_factory(
        client_options, True, Factory.forProtocol(lambda: client_app), clock
    )
    server_factory = serve_tls(
        server_context, Factory.forProtocol(lambda: server_app), clock
    )
    server_tls, client_tls, pump = connectedServerAndClient(
        lambda: server_factory.buildProtocol(None),
        lambda: client_factory.buildProtocol(None),
        clock=clock,
    )
    pump.flush()
    return server_tls, client_tls, server_app, client_app


# --- tests -----------------------------------------------------------------------


class ParseServerNamesTests(SynchronousTestCase):
    def test_commas_and_whitespace(self) -> None:
        self.assertEqual(
            parse_server_names(" a.example, b.example\tc.example,,\n192.0.2.1 , "),
            ["a.example", "b.example", "c.example", "192.0.2.1"],
        )

    def test_empty(self) -> None:
        self.assertEqual(parse_server_names(""), [])
        self.assertEqual(parse_server_names(" , ,"), [])


class FingerprintTests(SynchronousTestCase):
    def test_openssl_format(self) -> None:
        """
        Upper-case hex pairs of the SHA-256 of the DER, joined by colons, as
        C{openssl x509 -fingerprint -sha256} prints them.
        """
        cert = make_ca("fingerprint")[1]
        digest = hashlib.sha256(cert.public_bytes(serialization.Encoding.DER))
        expected = ":".join(re.findall("..", digest.hexdigest().upper()))
        self.assertEqual(sha256_fingerprint(cert), expected)
        self.assertEqual(
            sha256_fingerprint(cert),
            ":".join(f"{b:02X}" for b in cert.fingerprint(hashes.SHA256())),
        )
        self.assertRegex(sha256_fingerprint(cert), r"^([0-9A-F]{2}:){31}[0-9A-F]{2}$")


FakeAddress = namedtuple("FakeAddress", "family address netmask broadcast ptp")


class LocalNamesTests(SynchronousTestCase):
    def test_host_names(self) -> None:
        """Host name, its short form, the FQDN and localhost, without repeats."""
        self.patch(socket, "gethostname", lambda: "node1.example")
        self.patch(socket, "getfqdn", lambda *a: "node1.example")
        self.assertEqual(local_host_names(), ["node1.example", "node1", "localhost"])
        self.patch(socket, "gethostname", lambda: "node1")
        self.patch(socket, "getfqdn", lambda *a: "node1.dc.example")
        self.assertEqual(local_host_names(), ["node1", "node1.dc.example", "localhost"])

    def test_ip_addresses(self) -> None:
        """
        IPv4 and IPv6 addresses of every interface, loopback included; no link
        addresses, no IPv6 link-local ones, no repeats, no zone ids.
        """
        packet = getattr(socket, "AF_PACKET", getattr(socket, "AF_LINK", -1))
        fake = {
            "lo": [
                FakeAddress(socket.AF_INET, "127.0.0.1", None, None, None),
                FakeAddress(socket.AF_INET6, "::1", None, None, None),
            ],
            "eth0": [
                FakeAddress(packet, "02:42:ac:11:00:02", None, None, None),
                FakeAddress(socket.AF_INET, "192.0.2.10", None, None, None),
                FakeAddress(
                    socket.AF_INET6, "fe80::42:acff:fe11:2%eth0", None, None, None
                ),
                FakeAddress(socket.AF_INET6, "2001:db8::10", None, None, None),
            ],
            "eth1": [FakeAddress(socket.AF_INET, "192.0.2.10", None, None, None)],
        }
        self.patch(psutil, "net_if_addrs", lambda: fake)
        self.assertEqual(
            local_ip_addresses(), ["127.0.0.1", "::1", "192.0.2.10", "2001:db8::10"]
        )

    def test_real_interfaces(self) -> None:
        """On this machine the list includes loopback and parses as addresses."""
        addresses = local_ip_addresses()
        self.assertIn("127.0.0.1", addresses)
        for address in addresses:
            ipaddress.ip_address(address)


class SelfSignedTests(SynchronousTestCase):
    def test_files_and_modes(self) -> None:
        """
        The state and tls directories are created 0700, the key 0600, and the
        files hold what the record says; no temporary files are left behind.
        """
        state_dir = self.mktemp()
        server = load_or_create_self_signed(
            state_dir, host_names=HOSTS, ip_addresses=IPS, now=NOW
        )
        tls_dir = os.path.join(state_dir, "tls")
        self.assertTrue(server.generated)
        self.assertEqual(server.cert_path, os.path.join(tls_dir, "agent-cert.pem"))
        self.assertEqual(server.key_path, os.path.join(tls_dir, "agent-key.pem"))
        self.assertEqual(mode_of(state_dir), 0o700)
        self.assertEqual(mode_of(tls_dir), 0o700)
        self.assertEqual(mode_of(server.key_path), 0o600)
        self.assertEqual(
            sorted(os.listdir(tls_dir)), ["agent-cert.pem", "agent-key.pem"]
        )
        with open(server.cert_path, "rb") as f:
            self.assertEqual(f.read(), server.cert_pem)
        with open(server.key_path, "rb") as f:
            self.assertEqual(f.read(), server.key_pem)

    def test_odd_umask(self) -> None:
        """
        The directories are exactly 0700 and the key 0600 whatever the umask,
        even one that would strip the owner's own write permission.
        """
        state_dir = self.mktemp()  # before the umask: it creates parent directories
        self.addCleanup(os.umask, os.umask(0o277))
        server = load_or_create_self_signed(
            state_dir, host_names=HOSTS, ip_addresses=IPS
        )
        self.assertEqual(mode_of(state_dir), 0o700)
        self.assertEqual(mode_of(os.path.dirname(server.key_path)), 0o700)
        self.assertEqual(mode_of(server.key_path), 0o600)

    def test_existing_state_dir_left_alone(self) -> None:
        """An existing state directory keeps the mode its owner gave it."""
        state_dir = self.mktemp()
        os.mkdir(state_dir)
        os.chmod(state_dir, 0o755)
        load_or_create_self_signed(state_dir, host_names=HOSTS, ip_addresses=IPS)
        self.assertEqual(mode_of(state_dir), 0o755)
        self.assertEqual(mode_of(os.path.join(state_dir, "tls")), 0o700)

    def test_reused_on_restart(self) -> None:
        """
        A second call loads the same certificate instead of minting one, even
        when the node's names changed.
        """
        state_dir = self.mktemp()
        first = load_or_create_self_signed(
            state_dir, host_names=HOSTS, ip_addresses=IPS, now=NOW
        )
        second = load_or_create_self_signed(
            state_dir, ["new.example"], host_names=["renamed"], ip_addresses=[]
        )
        self.assertFalse(second.generated)
        self.assertEqual(second.fingerprint, first.fingerprint)
        self.assertEqual(second.cert_pem, first.cert_pem)
        self.assertEqual(
            private_key_der(second.key_pem), private_key_der(first.key_pem)
        )
        self.assertEqual(second.not_after, first.not_after)

    def test_subject_alternative_names(self) -> None:
        """
        Host names and extra names become DNS entries, addresses and IP-looking
        extra names become IPAddress entries, each once; unusable names are
        skipped rather than fatal.
        """
        server = generate(
            self,
            extra_names=["api.example", "198.51.100.7", "NODE1", "[2001:db8::99]", ""],
            host_names=["Node1.Example", "node1", "bad name", "bücher.example", ""],
            ip_addresses=["192.0.2.10", "::1", "192.0.2.10"],
        )
        san = parsed(server).extensions.get_extension_for_class(
            x509.SubjectAlternativeName
        )
        self.assertFalse(san.critical)
        self.assertEqual(
            san.value.get_values_for_type(x509.DNSName),
            ["node1.example", "node1", "xn--bcher-kva.example", "api.example"],
        )
        self.assertEqual(
            san.value.get_values_for_type(x509.IPAddress),
            [
                ipaddress.ip_address("198.51.100.7"),
                ipaddress.ip_address("2001:db8::99"),
                ipaddress.ip_address("192.0.2.10"),
                ipaddress.ip_address("::1"),
            ],
        )

    def test_defaults_to_local_names(self) -> None:
        """Without explicit names, the local host names and addresses are used."""
        self.patch(certificates, "local_host_names", lambda: ["here.example"])
        self.patch(certificates, "local_ip_addresses", lambda: ["203.0.113.5"])
        san = parsed(
            load_or_create_self_signed(self.mktemp(), now=NOW)
        ).extensions.get_extension_for_class(x509.SubjectAlternativeName)
        self.assertEqual(
            list(san.value),
            [
                x509.DNSName("here.example"),
                x509.IPAddress(ipaddress.ip_address("203.0.113.5")),
            ],
        )

    def test_key_and_extensions(self) -> None:
        """
        An ECDSA P-256 key; a SHA-256 signed, self-issued end-entity certificate
        for TLS servers only.
        """
        server = generate(self)
        cert = parsed(server)
        key = serialization.load_pem_private_key(server.key_pem, None)
        self.assertIsInstance(key, ec.EllipticCurvePrivateKey)
        assert isinstance(key, ec.EllipticCurvePrivateKey)
        self.assertIsInstance(key.curve, ec.SECP256R1)
        self.assertEqual(cert.public_key(), key.public_key())
        self.assertIsInstance(cert.signature_hash_algorithm, hashes.SHA256)
        self.assertEqual(cert.issuer, cert.subject)
        cert.verify_directly_issued_by(cert)
        self.assertEqual(
            cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value,
            "node1.example",
        )
        self.assertEqual(
            cert.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)[0].value,
            "haven-agent",
        )
        basic = cert.extensions.get_extension_for_class(x509.BasicConstraints)
        self.assertTrue(basic.critical)
        self.assertFalse(basic.value.ca)
        usage = cert.extensions.get_extension_for_class(x509.KeyUsage)
        self.assertTrue(usage.critical)
        self.assertTrue(usage.value.digital_signature)
        self.assertFalse(usage.value.key_encipherment)
        self.assertFalse(usage.value.key_cert_sign)
        extended = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage)
        self.assertEqual(list(extended.value), [ExtendedKeyUsageOID.SERVER_AUTH])
        self.assertNotIn(server.key_pem.decode(), repr(server))
        self.assertNotIn("key_pem", repr(server))

    def test_serial_numbers_differ(self) -> None:
        """Each node's certificate has its own random serial number."""
        self.assertNotEqual(
            parsed(generate(self)).serial_number, parsed(generate(self)).serial_number
        )

    def test_validity(self) -> None:
        """
        Valid from a day before C{now} (clock skew) for 825 days; not_after is
        reported as an aware UTC datetime matching the certificate.
        """
        server = generate(self, now=NOW + datetime.timedelta(microseconds=999))
        cert = parsed(server)
        self.assertEqual(cert.not_valid_before_utc, NOW - datetime.timedelta(days=1))
        self.assertEqual(cert.not_valid_after_utc, NOW + datetime.timedelta(days=825))
        self.assertEqual(server.not_after, cert.not_valid_after_utc)
        self.assertEqual(server.not_after.utcoffset(), datetime.timedelta(0))

    def test_aware_non_utc_now(self) -> None:
        """An aware C{now} in another zone means the same instant."""
        plus_two = datetime.timezone(datetime.timedelta(hours=2))
        server = generate(self, now=NOW.astimezone(plus_two))
        self.assertEqual(server.not_after, NOW + datetime.timedelta(days=825))

    def test_long_common_name_truncated(self) -> None:
        """A host name longer than a common name may be is cut to 64 characters."""
        long_name = "a" * 40 + "." + "b" * 40 + ".example"
        cert = parsed(generate(self, host_names=[long_name]))
        self.assertEqual(
            cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value,
            long_name[:64],
        )
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName)
        self.assertEqual(san.value.get_values_for_type(x509.DNSName), [long_name])

    def _lone_file(self, which: str) -> None:
        """Only one of the two files exists: an error, and the file is untouched."""
        state_dir = self.mktemp()
        server = load_or_create_self_signed(
            state_dir, host_names=HOSTS, ip_addresses=IPS
        )
        other = server.cert_path if which == "key" else server.key_path
        kept = server.key_path if which == "key" else server.cert_path
        os.remove(other)
        with open(kept, "rb") as f:
            before = f.read()
        error = self.assertRaises(
            CertificateError,
            load_or_create_self_signed,
            state_dir,
            host_names=HOSTS,
            ip_addresses=IPS,
        )
        self.assertIn(kept, str(error))
        self.assertIn(other, str(error))
        self.assertIn("delete", str(error))
        self.assertFalse(os.path.exists(other))
        with open(kept, "rb") as f:
            self.assertEqual(f.read(), before)

    def test_lone_key_not_overwritten(self) -> None:
        self._lone_file("key")

    def test_lone_certificate_not_overwritten(self) -> None:
        self._lone_file("cert")

    def test_corrupt_files(self) -> None:
        """Files that do not load are reported with the way out, not replaced."""
        state_dir = self.mktemp()
        server = load_or_create_self_signed(
            state_dir, host_names=HOSTS, ip_addresses=IPS
        )
        write(server.cert_path, b"not a certificate\n")
        error = self.assertRaises(
            CertificateError, load_or_create_self_signed, state_dir
        )
        self.assertIn(server.cert_path, str(error))
        self.assertIn("delete", str(error))
        with open(server.cert_path, "rb") as f:
            self.assertEqual(f.read(), b"not a certificate\n")

    def test_failed_write_leaves_nothing(self) -> None:
        """
        If writing the key fails, no key file and no temporary file remain, and
        the error names the file.
        """

        def fail(source: str, destination: str) -> None:
            raise OSError(28, "No space left on device")

        self.patch(os, "replace", fail)
        state_dir = self.mktemp()
        error = self.assertRaises(
            CertificateError,
            load_or_create_self_signed,
            state_dir,
            host_names=HOSTS,
            ip_addresses=IPS,
        )
        key_path = os.path.join(state_dir, "tls", "agent-key.pem")
        self.assertIn(key_path, str(error))
        self.assertEqual(os.listdir(os.path.join(state_dir, "tls")), [])


class LoadCertificateFilesTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.directory = self.mktemp()
        os.mkdir(self.directory)
        self.ca_key, self.ca_cert = make_ca("Operator CA")
        self.key, self.cert = issue(
            (self.ca_key, self.ca_cert),
            ["node1.example"],
            ExtendedKeyUsageOID.SERVER_AUTH,
            dns_names=["node1.example"],
        )

    def path(self, name: str) -> str:
        return os.path.join(self.directory, name)

    def test_chain(self) -> None:
        """
        A leaf followed by its chain is kept whole, leaf first; fingerprint and
        expiry are the leaf's.
        """
        cert_path = write(
            self.path("cert.pem"),
            b"leaf:\n" + cert_pem(self.cert) + b"chain:\n" + cert_pem(self.ca_cert),
        )
        key_path = write(self.path("key.pem"), key_pem(self.key))
        server = load_certificate_files(cert_path, key_path)
        self.assertEqual(server.cert_pem, cert_pem(self.cert) + cert_pem(self.ca_cert))
        self.assertEqual(server.fingerprint, sha256_fingerprint(self.cert))
        self.assertEqual(server.not_after, self.cert.not_valid_after_utc)
        self.assertFalse(server.generated)
        self.assertEqual((server.cert_path, server.key_path), (cert_path, key_path))
        self.assertEqual(private_key_der(server.key_pem), private_key_der(self.key))

    def test_mismatched_key(self) -> None:
        cert_path = write(self.path("cert.pem"), cert_pem(self.cert))
        key_path = write(self.path("key.pem"), key_pem(self.ca_key))
        error = self.assertRaises(
            CertificateError, load_certificate_files, cert_path, key_path
        )
        self.assertIn(key_path, str(error))
        self.assertIn("does not match", str(error))

    def test_key_of_chain_certificate_rejected(self) -> None:
        """The key must be the leaf's, not that of a later chain certificate."""
        cert_path = write(
            self.path("cert.pem"), cert_pem(self.cert) + cert_pem(self.ca_cert)
        )
        key_path = write(self.path("key.pem"), key_pem(self.ca_key))
        self.assertRaises(CertificateError, load_certificate_files, cert_path, key_path)

    def test_missing_files(self) -> None:
        cert_path = write(self.path("cert.pem"), cert_pem(self.cert))
        key_path = write(self.path("key.pem"), key_pem(self.key))
        missing = self.path("missing.pem")
        error = self.assertRaises(
            CertificateError, load_certificate_files, missing, key_path
        )
        self.assertIn(missing, str(error))
        self.assertIn("certificate", str(error))
        error = self.assertRaises(
            CertificateError, load_certificate_files, cert_path, missing
        )
        self.assertIn(missing, str(error))
        self.assertIn("key", str(error))

    def test_not_pem(self) -> None:
        cert_path = write(self.path("cert.pem"), cert_pem(self.cert))
        key_path = write(self.path("key.pem"), key_pem(self.key))
        der = write(
            self.path("cert.der"), self.cert.public_bytes(serialization.Encoding.DER)
        )
        error = self.assertRaises(
            CertificateError, load_certificate_files, der, key_path
        )
        self.assertIn(der, str(error))
        garbage = write(self.path("garbage.pem"), b"hello\n")
        error = self.assertRaises(
            CertificateError, load_certificate_files, cert_path, garbage
        )
        self.assertIn(garbage, str(error))
        # A key where the certificate should be is not a certificate either.
        error = self.assertRaises(
            CertificateError, load_certificate_files, key_path, key_path
        )
        self.assertIn(key_path, str(error))

    def test_encrypted_key(self) -> None:
        cert_path = write(self.path("cert.pem"), cert_pem(self.cert))
        key_path = write(
            self.path("key.pem"),
            key_pem(self.key, serialization.BestAvailableEncryption(b"secret")),
        )
        error = self.assertRaises(
            CertificateError, load_certificate_files, cert_path, key_path
        )
        self.assertIn(key_path, str(error))
        self.assertIn("encrypted", str(error))


class ServerContextTests(SynchronousTestCase):
    def setUp(self) -> None:
        # Valid now, since clients below check the validity period.
        self.server = generate(self, now=None)

    def test_context(self) -> None:
        context = server_context(self.server)
        self.assertIsInstance(context, ssl.SSLContext)
        self.assertEqual(context.minimum_version, ssl.TLSVersion.TLSv1_2)
        self.assertEqual(context.verify_mode, ssl.CERT_NONE)
        self.assertEqual(context.num_tickets, 1)

    def test_handshake_negotiates_http11(self) -> None:
        """A modern client completes the handshake and agrees on http/1.1."""
        server = server_connection(server_context(self.server))
        client = SSL.Connection(client_context(), None)
        self.assertEqual(handshake(server, client), {})
        self.assertEqual(client.get_alpn_proto_negotiated(), b"http/1.1")
        self.assertEqual(server.tls.selected_alpn_protocol(), "http/1.1")
        self.assertIn(client.get_protocol_version_name(), ("TLSv1.2", "TLSv1.3"))
        self.assertEqual(
            sha256_fingerprint(peer_certificate(client)),
            self.server.fingerprint,
        )

    def test_tls12_client(self) -> None:
        """TLS 1.2 is still accepted."""
        context = client_context()
        context.set_max_proto_version(SSL.TLS1_2_VERSION)
        server = server_connection(server_context(self.server))
        client = SSL.Connection(context, None)
        self.assertEqual(handshake(server, client), {})
        self.assertEqual(client.get_protocol_version_name(), "TLSv1.2")

    def test_tls11_client_rejected(self) -> None:
        """
        A client that can only speak TLS 1.1 is turned away by the server.  The
        same client against a server that allows TLS 1.1 shows it really can
        speak it, so the rejection is the options' doing.
        """
        context = client_context()
        context.set_max_proto_version(SSL.TLS1_1_VERSION)
        context.set_cipher_list(b"DEFAULT:@SECLEVEL=0")

        lax = server_context(self.server)
        lax.minimum_version = ssl.TLSVersion.TLSv1_1
        lax.set_ciphers("DEFAULT:@SECLEVEL=0")
        if handshake(server_connection(lax), SSL.Connection(context, None)):
            raise SkipTest("this OpenSSL cannot negotiate TLS 1.1 at all")

        # Relax the cipher policy too, so only the version floor stands in the way.
        strict = server_context(self.server)
        strict.set_ciphers("DEFAULT:@SECLEVEL=0")
        errors = handshake(server_connection(strict), SSL.Connection(context, None))
        self.assertIn("server", errors)
        self.assertIn("unsupported protocol", reasons(errors["server"]))
        self.assertIn("client", errors)

    def test_no_static_rsa_or_sha1_suites(self) -> None:
        """
        A TLS 1.2 client offering only suites without forward secrecy or
        with SHA-1 MACs finds none it shares with the server; the same
        client gets through with a forward-secret one.
        """
        server_certificate = load_certificate_files(*self.rsa_files())
        for suite in ("AES128-GCM-SHA256", "ECDHE-RSA-AES128-SHA"):
            context = client_context()
            context.set_max_proto_version(SSL.TLS1_2_VERSION)
            context.set_cipher_list(suite.encode())
            errors = handshake(
                server_connection(server_context(server_certificate)),
                SSL.Connection(context, None),
            )
            self.assertIn("server", errors, suite)
            self.assertEqual(reasons(errors["server"]), "no shared cipher", suite)
        context = client_context()
        context.set_max_proto_version(SSL.TLS1_2_VERSION)
        context.set_cipher_list(b"ECDHE-RSA-AES128-GCM-SHA256")
        self.assertEqual(
            handshake(
                server_connection(server_context(server_certificate)),
                SSL.Connection(context, None),
            ),
            {},
        )

    def rsa_files(self) -> tuple[str, str]:
        """An RSA server certificate and key, as an operator may bring."""
        key, cert = issue(
            make_ca("Operator CA"),
            ["node1"],
            ExtendedKeyUsageOID.SERVER_AUTH,
            key=rsa.generate_private_key(public_exponent=65537, key_size=2048),
        )
        directory = self.mktemp()
        os.mkdir(directory)
        return (
            write(os.path.join(directory, "c.pem"), cert_pem(cert)),
            write(os.path.join(directory, "k.pem"), key_pem(key)),
        )

    def test_chain_sent(self) -> None:
        """Certificates after the leaf in cert_pem are sent as the chain."""
        ca_key, ca_cert = make_ca("Operator CA")
        key, cert = issue(
            (ca_key, ca_cert),
            ["node1.example"],
            ExtendedKeyUsageOID.SERVER_AUTH,
            dns_names=["node1.example"],
        )
        directory = self.mktemp()
        os.mkdir(directory)
        server_certificate = load_certificate_files(
            write(os.path.join(directory, "c.pem"), cert_pem(cert) + cert_pem(ca_cert)),
            write(os.path.join(directory, "k.pem"), key_pem(key)),
        )
        server = server_connection(server_context(server_certificate))
        client = SSL.Connection(client_context(), None)
        self.assertEqual(handshake(server, client), {})
        self.assertEqual(
            [c.to_cryptography() for c in client.get_peer_cert_chain() or []],
            [cert, ca_cert],
        )

    def test_client_certificate_required(self) -> None:
        """
        With a client CA, a client without a certificate, or with one from
        another CA, fails; one with a certificate from the CA succeeds.
        """
        ca_key, ca_cert = make_ca("Client CA")
        other_ca_key, other_ca_cert = make_ca("Other CA")
        extra_ca_cert = make_ca("Second trusted CA")[1]
        options = server_context(
            self.server, client_ca_pem=cert_pem(extra_ca_cert) + cert_pem(ca_cert)
        )

        errors = handshake(
            server_connection(options), SSL.Connection(client_context(), None)
        )
        self.assertIn("server", errors)
        self.assertIn("client", errors)

        key, cert = issue(
            (other_ca_key, other_ca_cert),
            ["intruder"],
            ExtendedKeyUsageOID.CLIENT_AUTH,
            dns_names=["intruder"],
        )
        errors = handshake(
            server_connection(options), SSL.Connection(client_context(cert, key), None)
        )
        self.assertIn("server", errors)

        key, cert = issue(
            (ca_key, ca_cert),
            ["master"],
            ExtendedKeyUsageOID.CLIENT_AUTH,
            dns_names=["master"],
        )
        server = server_connection(options)
        self.assertEqual(
            handshake(server, SSL.Connection(client_context(cert, key), None)), {}
        )
        self.assertEqual(server.peer_certificate(), cert)
        self.assertEqual(server.tls.selected_alpn_protocol(), "http/1.1")

    def test_no_client_certificate_needed_by_default(self) -> None:
        server = server_connection(server_context(self.server))
        self.assertEqual(handshake(server, SSL.Connection(client_context(), None)), {})
        self.assertIsNone(server.peer_certificate())

    def test_bad_client_ca(self) -> None:
        error = self.assertRaises(
            CertificateError, server_context, self.server, b"not pem"
        )
        self.assertIn("client CA", str(error))

    def test_without_memfd(self) -> None:
        """
        Where Linux's memory files are missing, the chain and key are loaded
        from a file in a private temporary directory that is gone after.
        """

        def no_memfd(name: str, flags: int = 0) -> int:
            raise OSError(38, "Function not implemented")

        temporary = self.mktemp()
        os.mkdir(temporary)
        self.patch(certificates.os, "memfd_create", no_memfd)
        self.patch(certificates.tempfile, "tempdir", temporary)
        made: list[str] = []
        real = certificates.tempfile.TemporaryDirectory

        def recorded(*args: Any, **kwargs: Any) -> Any:
            directory = real(*args, **kwargs)
            made.append(directory.name)
            return directory

        self.patch(certificates.tempfile, "TemporaryDirectory", recorded)
        server = server_connection(server_context(self.server))
        client = SSL.Connection(client_context(), None)
        self.assertEqual(handshake(server, client), {})
        self.assertEqual(
            sha256_fingerprint(peer_certificate(client)), self.server.fingerprint
        )
        [directory] = made
        self.assertEqual(os.path.dirname(directory), temporary)
        self.assertEqual(os.listdir(temporary), [])

    def test_twisted_client_verifies_names(self) -> None:
        """
        Through Twisted on both ends, a client that trusts the generated
        certificate verifies it for the node's host names and addresses and
        negotiates http/1.1 while also offering h2; an unlisted name fails.
        """
        trust = Certificate.loadPEM(self.server.cert_pem)
        for name in HOSTS + IPS:
            server_tls, client_tls, server_app, client_app = twisted_loopback(
                server_context(self.server),
                optionsForClientTLS(
                    name, trustRoot=trust, acceptableProtocols=[b"h2", b"http/1.1"]
                ),
            )
            self.assertTrue(client_app.completed, name)
            self.assertTrue(server_app.completed, name)
            self.assertEqual(client_tls.negotiatedProtocol, b"http/1.1")
            self.assertEqual(server_tls.negotiatedProtocol, b"http/1.1")

        server_tls, client_tls, server_app, client_app = twisted_loopback(
            server_context(self.server),
            optionsForClientTLS("elsewhere.example", trustRoot=trust),
        )
        self.assertFalse(client_app.completed)
        self.assertIsNotNone(client_app.lost)


class LoadClientCATests(SynchronousTestCase):
    def setUp(self) -> None:
        self.directory = self.mktemp()
        os.makedirs(self.directory)

    def test_bundle(self) -> None:
        """
        Every certificate of the bundle is returned as PEM, comments dropped,
        and the result is accepted as the client CA of the TLS options.
        """
        first, second = make_ca("CA one")[1], make_ca("CA two")[1]
        path = write(
            os.path.join(self.directory, "ca.pem"),
            b"# our client CAs\n" + cert_pem(first) + b"\n" + cert_pem(second),
        )
        bundle = load_client_ca(path)
        self.assertEqual(bundle, cert_pem(first) + cert_pem(second))
        context = server_context(generate(self), client_ca_pem=bundle)
        self.assertEqual(context.verify_mode, ssl.CERT_REQUIRED)

    def test_missing_file(self) -> None:
        path = os.path.join(self.directory, "absent.pem")
        error = self.assertRaises(CertificateError, load_client_ca, path)
        self.assertIn(f"TLS client CA file {path}", str(error))

    def test_not_a_certificate(self) -> None:
        """
        A file without a PEM certificate (empty, garbage, a lone key) is
        refused with a message naming it.
        """
        key = new_key()
        for name, data in [
            ("empty.pem", b""),
            ("garbage.pem", b"not pem at all"),
            ("key.pem", key_pem(key)),
        ]:
            path = write(os.path.join(self.directory, name), data)
            error = self.assertRaises(CertificateError, load_client_ca, path)
            self.assertIn(path, str(error), name)
            self.assertIn("does not hold a PEM certificate", str(error), name)
