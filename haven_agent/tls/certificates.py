# -*- test-case-name: tests.tls.test_certificates -*-
"""
The agent's TLS identity: the server certificate and the TLS options built from it.

The agent serves the Docker API, which is root on the node, so it only ever speaks
TLS.  An operator may hand us a certificate (L{load_certificate_files}); otherwise
each node mints its own self-signed certificate once, keeps it in its state
directory and reuses it on every restart (L{load_or_create_self_signed}), so the
fingerprint the master has pinned stays valid.  L{server_context} turns either
into the standard library's C{ssl.SSLContext} the listener uses.

Nothing here touches the reactor; generation happens once at start-up.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import re
import socket
import ssl
import tempfile
from collections.abc import Iterable, Sequence

import psutil
from attrs import field, frozen
from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.types import PublicKeyTypes
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

__all__ = [
    "CertificateError",
    "ServerCertificate",
    "load_certificate_files",
    "load_client_ca",
    "load_or_create_self_signed",
    "local_host_names",
    "local_ip_addresses",
    "parse_server_names",
    "server_context",
    "sha256_fingerprint",
]

# 825 days is the longest lifetime Apple platforms accept for a TLS server
# certificate, even one trusted explicitly by the user; a longer-lived
# self-signed certificate would be rejected by macOS/iOS clients.
SELF_SIGNED_LIFETIME = datetime.timedelta(days=825)

# Back-dated so a node whose clock runs a little ahead of its clients' clocks
# does not present a certificate that is "not yet valid".
CLOCK_SKEW_ALLOWANCE = datetime.timedelta(days=1)

TLS_DIR_NAME = "tls"
CERT_FILE_NAME = "agent-cert.pem"
KEY_FILE_NAME = "agent-key.pem"
ORGANIZATION = "haven-agent"

# What a DNS name may look like once IDNA-encoded: dot-separated labels of
# letters, digits, '-' and '_' (the latter is common in container host names),
# optionally led by one '*' wildcard label.
_DNS_NAME = re.compile(
    r"(\*\.)?([A-Za-z0-9_]([A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?\.)*"
    r"[A-Za-z0-9_]([A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?"
)
_MAX_DNS_NAME_LENGTH = 253
_MAX_COMMON_NAME_LENGTH = 64  # ub-common-name in RFC 5280


class CertificateError(ValueError):
    """
    A certificate or key file cannot be used.  The message names the file and
    is meant for the operator, since start-up stops on it.
    """


@frozen
class ServerCertificate:
    """
    The certificate the agent presents, with where it came from.

    C{cert_pem} holds the leaf first, followed by any chain certificates the
    certificate file carried, each re-encoded as PEM (so comments or other
    blocks in the operator's file are dropped).  C{key_pem} is kept out of
    C{repr} so the key can never end up in a log line.
    """

    cert_pem: bytes
    key_pem: bytes = field(repr=False)
    fingerprint: str
    cert_path: str
    key_path: str
    generated: bool
    not_after: datetime.datetime


def sha256_fingerprint(cert: x509.Certificate) -> str:
    """
    The SHA-256 fingerprint of C{cert}'s DER encoding in the form
    C{openssl x509 -fingerprint -sha256} prints (C{AB:CD:...}), which is what
    an operator compares by eye and what the master pins.
    """
    return ":".join(f"{byte:02X}" for byte in cert.fingerprint(hashes.SHA256()))


def parse_server_names(value: str) -> list[str]:
    """
    Split a configured list of extra server names (from an environment
    variable, where people write both C{"a,b"} and C{"a b"}) on commas and
    whitespace, dropping empty entries.
    """
    return [name for name in re.split(r"[\s,]+", value) if name]


def _dedupe(items: Iterable[str]) -> list[str]:
    """Drop empty and repeated entries, keeping the first occurrence's place."""
    return list(dict.fromkeys(item for item in items if item))


def local_host_names() -> list[str]:
    """
    The names this node is likely to be reached by: its host name, the short
    form of it, its fully qualified name and C{localhost}.

    C{socket.getfqdn} may consult the resolver, so call this at start-up, not
    from the reactor thread while serving.
    """
    host_name = socket.gethostname()
    return _dedupe(
        [host_name, host_name.split(".", 1)[0], socket.getfqdn(), "localhost"]
    )


def local_ip_addresses() -> list[str]:
    """
    Every IPv4 and IPv6 address on a local interface, loopback included, so a
    client connecting by address still matches the certificate.

    IPv6 link-local addresses (C{fe80::/10}) are skipped: they are only usable
    with a zone id, which a certificate cannot express.
    """
    addresses = []
    for interface_addresses in psutil.net_if_addrs().values():
        for entry in interface_addresses:
            if entry.family not in (socket.AF_INET, socket.AF_INET6):
                continue
            try:
                address = ipaddress.ip_address(entry.address.split("%", 1)[0])
            except ValueError:
                continue
            if address.version == 6 and address.is_link_local:
                continue
            addresses.append(str(address))
    return _dedupe(addresses)


def _read(path: str, what: str) -> bytes:
    """Read C{path}, turning the OS's complaint into a L{CertificateError}."""
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as e:
        raise CertificateError(
            f"cannot read TLS {what} file {path}: {e.strerror or e}"
        ) from e


def _parse_certificates(data: bytes, source: str) -> list[x509.Certificate]:
    """Every PEM certificate in C{data}, or a L{CertificateError} naming C{source}."""
    try:
        certificates = x509.load_pem_x509_certificates(data)
    except ValueError as e:
        raise CertificateError(f"{source} does not hold a PEM certificate") from e
    if not certificates:
        raise CertificateError(f"{source} does not hold a PEM certificate")
    return certificates


def _public_key_der(public_key: PublicKeyTypes) -> bytes:
    """The DER SubjectPublicKeyInfo of C{public_key}, for comparing keys."""
    return public_key.public_bytes(
        serialization.Encoding.DER,
        serialization.PublicFormat.SubjectPublicKeyInfo,
    )


def load_certificate_files(cert_path: str, key_path: str) -> ServerCertificate:
    """
    Read an operator-supplied PEM certificate (leaf first, optionally followed
    by its chain) and its unencrypted PEM private key.

    Everything is checked here, at start-up, so a bad file stops the agent
    with a message naming it instead of failing every later handshake.

    @raise CertificateError: if a file is missing or unreadable, is not PEM,
        the key is encrypted or of an unsupported kind, or the key does not
        belong to the (first) certificate.
    """
    cert_data = _read(cert_path, "certificate")
    key_data = _read(key_path, "private key")
    certificates = _parse_certificates(cert_data, f"TLS certificate file {cert_path}")
    try:
        key = serialization.load_pem_private_key(key_data, password=None)
    except TypeError as e:
        # cryptography raises TypeError for an encrypted key without password.
        raise CertificateError(
            f"TLS private key file {key_path} is encrypted; "
            "the agent needs an unencrypted key"
        ) from e
    except (ValueError, UnsupportedAlgorithm) as e:
        raise CertificateError(
            f"TLS private key file {key_path} does not hold a usable PEM private key"
        ) from e
    leaf = certificates[0]
    try:
        matches = _public_key_der(key.public_key()) == _public_key_der(
            leaf.public_key()
        )
    except (ValueError, UnsupportedAlgorithm) as e:
        raise CertificateError(
            f"TLS certificate file {cert_path} has an unsupported public key"
        ) from e
    if not matches:
        raise CertificateError(
            f"TLS private key file {key_path} does not match "
            f"the certificate in {cert_path}"
        )
    return ServerCertificate(
        cert_pem=b"".join(
            cert.public_bytes(serialization.Encoding.PEM) for cert in certificates
        ),
        key_pem=key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ),
        fingerprint=sha256_fingerprint(leaf),
        cert_path=cert_path,
        key_path=key_path,
        generated=False,
        not_after=leaf.not_valid_after_utc,
    )


def load_client_ca(path: str) -> bytes:
    """
    Read the PEM bundle of CAs whose client certificates the agent accepts
    (C{--tls-client-ca}), as C{dockerd --tlsverify --tlscacert} does.

    Checked when loaded, so a wrong file stops start-up (or a reload) with a
    message naming it, instead of every client being refused later.

    @return: every certificate of the file, re-encoded as PEM (comments and
        other blocks dropped), for L{server_context}.
    @raise CertificateError: if the file is missing or unreadable, or holds no
        PEM certificate.
    """
    data = _read(path, "client CA")
    certificates = _parse_certificates(data, f"TLS client CA file {path}")
    return b"".join(
        cert.public_bytes(serialization.Encoding.PEM) for cert in certificates
    )


def _dns_name(name: str) -> str | None:
    """
    C{name} as an ASCII (A-label) DNS name fit for a certificate, or C{None}
    when it cannot be one; a stray host name must not stop the agent.
    """
    name = name.strip().rstrip(".")
    if not name:
        return None
    try:
        name = name.encode("ascii").decode("ascii")
    except UnicodeEncodeError:
        try:
            name = name.encode("idna").decode("ascii")
        except UnicodeError:
            return None
    if len(name) > _MAX_DNS_NAME_LENGTH or not _DNS_NAME.fullmatch(name):
        return None
    return name.lower()


def _ip_address(name: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """C{name} as an IP address (zone id and URL brackets dropped), else C{None}."""
    name = name.strip()
    if name.startswith("[") and name.endswith("]"):
        name = name[1:-1]
    try:
        return ipaddress.ip_address(name.split("%", 1)[0])
    except ValueError:
        return None


def _subject_alternative_names(
    host_names: Sequence[str],
    extra_names: Sequence[str],
    ip_addresses: Sequence[str],
) -> list[x509.GeneralName]:
    """
    The SAN entries for a self-signed certificate, deduplicated and in a
    stable order: host names, extra names, then addresses.  An extra name
    that is an IP address becomes an IPAddress entry; unusable names are
    skipped.
    """
    entries: list[x509.GeneralName] = []

    def add_dns(name: str) -> None:
        dns_name = _dns_name(name)
        if dns_name is not None:
            try:
                entries.append(x509.DNSName(dns_name))
            except ValueError:
                pass

    def add_ip(name: str) -> bool:
        address = _ip_address(name)
        if address is None:
            return False
        entries.append(x509.IPAddress(address))
        return True

    for name in host_names:
        add_dns(name)
    for name in extra_names:
        if not add_ip(name):
            add_dns(name)
    for name in ip_addresses:
        add_ip(name)
    return list(dict.fromkeys(entries))


def _ensure_private_directory(path: str) -> None:
    """
    Create C{path} readable by the agent's user only.  A directory that
    already exists is left as the operator made it.
    """
    try:
        os.makedirs(path, mode=0o700)
    except FileExistsError:
        if not os.path.isdir(path):
            raise CertificateError(f"{path} exists and is not a directory") from None
        return
    except OSError as e:
        raise CertificateError(
            f"cannot create directory {path}: {e.strerror or e}"
        ) from e
    # makedirs' mode is filtered through the umask; make sure it is exact.
    os.chmod(path, 0o700)


def _write_atomically(path: str, data: bytes, mode: int) -> None:
    """
    Write C{data} to C{path} through a temporary file in the same directory
    and a rename, so a crash leaves either no file or the whole file, never
    half a key.  The temporary file is created 0600 and only then filled.
    """
    directory, base_name = os.path.split(path)
    try:
        fd, temporary_path = tempfile.mkstemp(
            dir=directory, prefix=f".{base_name}.", suffix=".tmp"
        )
    except OSError as e:
        raise CertificateError(f"cannot write {path}: {e.strerror or e}") from e
    try:
        with os.fdopen(fd, "wb") as f:
            os.fchmod(f.fileno(), mode)
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(temporary_path, path)
    except BaseException as e:
        try:
            os.unlink(temporary_path)
        except OSError:
            pass
        if isinstance(e, OSError):
            raise CertificateError(f"cannot write {path}: {e.strerror or e}") from e
        raise


def _fsync_directory(path: str) -> None:
    """Make the renames into C{path} durable; best effort, as not every OS can."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _self_signed(
    key: ec.EllipticCurvePrivateKey,
    names: list[x509.GeneralName],
    now: datetime.datetime,
) -> x509.Certificate:
    """A self-signed TLS server certificate for C{key} valid for C{names}."""
    dns_names = [entry.value for entry in names if isinstance(entry, x509.DNSName)]
    common_name = (dns_names[0] if dns_names else ORGANIZATION)[
        :_MAX_COMMON_NAME_LENGTH
    ]
    subject = x509.Name(
        [
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, ORGANIZATION),
        ]
    )
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - CLOCK_SKEW_ALLOWANCE)
        .not_valid_after(now + SELF_SIGNED_LIFETIME)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False
        )
        .add_extension(
            x509.SubjectKeyIdentifier.from_public_key(key.public_key()),
            critical=False,
        )
    )
    if names:
        # An empty SAN extension is invalid DER-wise (RFC 5280 requires at least
        # one entry), so it is left out rather than written empty.
        builder = builder.add_extension(
            x509.SubjectAlternativeName(names), critical=False
        )
    return builder.sign(key, hashes.SHA256())


def load_or_create_self_signed(
    state_dir: str,
    extra_names: Sequence[str] = (),
    *,
    now: datetime.datetime | None = None,
    host_names: Sequence[str] | None = None,
    ip_addresses: Sequence[str] | None = None,
) -> ServerCertificate:
    """
    This node's self-signed certificate: generated once into
    C{<state_dir>/tls/agent-cert.pem} and C{agent-key.pem}, then reused on
    every restart even if the node's names or addresses changed, because the
    master pins its fingerprint.

    The key is ECDSA P-256: small, fast to generate and to handshake with, and
    accepted by every current TLS client.  The certificate names every host
    name (C{host_names}, else L{local_host_names}), every C{extra_names} entry
    (IP-looking ones as addresses) and every local address (C{ip_addresses},
    else L{local_ip_addresses}).

    @param now: the current time, for tests; defaults to the wall clock.

    @raise CertificateError: if only one of the two files exists or they cannot
        be loaded; the operator's files are never overwritten, the message says
        to delete them to regenerate.
    """
    tls_dir = os.path.join(state_dir, TLS_DIR_NAME)
    cert_path = os.path.join(tls_dir, CERT_FILE_NAME)
    key_path = os.path.join(tls_dir, KEY_FILE_NAME)
    regenerate_hint = (
        f"delete {cert_path} and {key_path} to have a new self-signed "
        "certificate generated"
    )

    cert_exists = os.path.lexists(cert_path)
    key_exists = os.path.lexists(key_path)
    if cert_exists and key_exists:
        try:
            return load_certificate_files(cert_path, key_path)
        except CertificateError as e:
            raise CertificateError(f"{e}; {regenerate_hint}") from e
    if cert_exists or key_exists:
        present, missing = (
            (cert_path, key_path) if cert_exists else (key_path, cert_path)
        )
        raise CertificateError(
            f"found {present} but not {missing}; refusing to overwrite it, "
            f"{regenerate_hint}"
        )

    if now is None:
        now = datetime.datetime.now(datetime.UTC)
    elif now.tzinfo is None:
        now = now.replace(tzinfo=datetime.UTC)
    else:
        now = now.astimezone(datetime.UTC)
    # Certificates carry whole seconds; dropping the rest up front makes the
    # returned not_after equal to what is in the certificate.
    now = now.replace(microsecond=0)

    names = _subject_alternative_names(
        local_host_names() if host_names is None else host_names,
        extra_names,
        local_ip_addresses() if ip_addresses is None else ip_addresses,
    )
    key = ec.generate_private_key(ec.SECP256R1())
    certificate = _self_signed(key, names, now)
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    cert_pem = certificate.public_bytes(serialization.Encoding.PEM)

    _ensure_private_directory(state_dir)
    _ensure_private_directory(tls_dir)
    # Key first: a certificate on disk then always has its whole key beside it.
    _write_atomically(key_path, key_pem, 0o600)
    _write_atomically(cert_path, cert_pem, 0o644)
    _fsync_directory(tls_dir)

    return ServerCertificate(
        cert_pem=cert_pem,
        key_pem=key_pem,
        fingerprint=sha256_fingerprint(certificate),
        cert_path=cert_path,
        key_path=key_path,
        generated=True,
        not_after=certificate.not_valid_after_utc,
    )


#: The TLS 1.2 suites (TLS 1.3's are OpenSSL's, all AEAD): forward-secret
#: key exchange and AEAD or SHA-2 MACs, as CPython's own secure default.
TLS12_CIPHERS = (
    "@SECLEVEL=2:ECDH+AESGCM:ECDH+CHACHA20:ECDH+AES:DHE+AES"
    ":!aNULL:!eNULL:!aDSS:!SHA1:!AESCCM"
)


def _load_chain(context: ssl.SSLContext, cert_pem: bytes, key_pem: bytes) -> None:
    """
    Give C{context} the certificate chain and key, which the standard
    library loads only from a file: an anonymous memory file (memfd) where
    Linux has one, so the key is never written to a disk again, else a
    file in a private temporary directory, removed at once.
    """
    data = cert_pem + key_pem
    memfd_create = getattr(os, "memfd_create", None)
    if memfd_create is not None:
        try:
            fd = memfd_create("haven-agent-tls", os.MFD_CLOEXEC)
        except OSError:
            pass
        else:
            try:
                _write_all(fd, data)
                path = f"/proc/self/fd/{fd}"
                if os.path.exists(path):
                    context.load_cert_chain(path)
                    return
            finally:
                os.close(fd)
    with tempfile.TemporaryDirectory(prefix="haven-agent-tls-") as directory:
        path = os.path.join(directory, "chain.pem")
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            _write_all(fd, data)
        finally:
            os.close(fd)
        context.load_cert_chain(path)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def server_context(
    server: ServerCertificate, client_ca_pem: bytes | None = None
) -> ssl.SSLContext:
    """
    The TLS context of the listener, built once from C{server}.

    TLS 1.2 is the floor, with forward-secret suites only
    (L{TLS12_CIPHERS}) at OpenSSL security level 2, no compression and the
    server's preference order; client-initiated renegotiation is refused.
    ALPN offers only C{http/1.1}: the Docker API is spoken over HTTP/1.1,
    hijacked streams included, and a client that offers only other
    protocols gets no ALPN answer. When C{client_ca_pem}
    is given, clients must present a certificate issued by one of its CAs.

    Session tickets are issued, so that a client that reconnects for every
    call (the Haven master does) resumes its session instead of a full
    handshake: OpenSSL's stateless tickets, sealed with a key this context
    makes at random, so a new context (a restart, a certificate or CA
    reload, another worker process) makes the old tickets worthless and the
    client falls back to a full handshake. A resumed session keeps the
    client certificate checked in its full handshake. One ticket per
    handshake (TLS 1.3), which is all a client reconnecting in turn needs.

    @raise CertificateError: if C{client_ca_pem} holds no PEM certificate.
    @raise ssl.SSLError: if OpenSSL refuses the certificate or key.
    """
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    # Named here, since a Python built to use OpenSSL's DEFAULT list (as
    # Debian's is) would otherwise also offer static RSA and SHA-1 suites.
    context.set_ciphers(TLS12_CIPHERS)
    context.options |= getattr(ssl, "OP_NO_RENEGOTIATION", 0)
    # One TLS 1.3 ticket per handshake, not OpenSSL's two: a client that
    # reconnects uses one and gets a new one each time, and each ticket
    # sealed costs about 20 us of a 300 us handshake.
    context.num_tickets = 1
    context.set_alpn_protocols(["http/1.1"])
    _load_chain(context, server.cert_pem, server.key_pem)
    if client_ca_pem is not None:
        certificates = _parse_certificates(client_ca_pem, "the client CA bundle")
        context.load_verify_locations(
            cadata=b"".join(
                cert.public_bytes(serialization.Encoding.DER) for cert in certificates
            )
        )
        context.verify_mode = ssl.CERT_REQUIRED
    return context
