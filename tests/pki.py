# -*- test-case-name: tests.tls.test_certificates,tests.tls.test_reload -*-
"""
A throw-away PKI for the tests, built with cryptography (EC P-256): CAs,
server and client certificates, and their PEM encodings.

One place, so that the TLS unit tests and the end-to-end helpers make their
certificates the same way. A certificate is valid from a day ago until
C{not_after} (90 days from now unless given).
"""

from __future__ import annotations

import datetime
import ipaddress
from collections.abc import Sequence
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

KeyAndCertificate = tuple[ec.EllipticCurvePrivateKey, x509.Certificate]


def subject(common_names: Sequence[str], organization: str | None = None) -> x509.Name:
    """A name of one or more common names (and an organisation)."""
    attributes = [
        x509.NameAttribute(NameOID.COMMON_NAME, name) for name in common_names
    ]
    if organization is not None:
        attributes.insert(
            0, x509.NameAttribute(NameOID.ORGANIZATION_NAME, organization)
        )
    return x509.Name(attributes)


def new_key() -> ec.EllipticCurvePrivateKey:
    """A fresh P-256 key: small and quick to make, and what the agent makes."""
    return ec.generate_private_key(ec.SECP256R1())


def _validity(
    builder: x509.CertificateBuilder, not_after: datetime.datetime | None
) -> x509.CertificateBuilder:
    """
    Valid from a day before now (or before C{not_after}, for a certificate
    that has already expired), so clock skew cannot make it not yet valid.
    """
    now = datetime.datetime.now(datetime.UTC)
    if not_after is None:
        not_after = now + datetime.timedelta(days=90)
    return builder.not_valid_before(
        min(now, not_after) - datetime.timedelta(days=1)
    ).not_valid_after(not_after)


def _key_usage(cert_sign: bool) -> x509.KeyUsage:
    """Signing only, and certificates and CRLs too for a CA."""
    return x509.KeyUsage(
        digital_signature=True,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=cert_sign,
        crl_sign=cert_sign,
        encipher_only=False,
        decipher_only=False,
    )


def make_ca(
    common_name: str,
    organization: str | None = None,
    path_length: int | None = None,
    key_usage: bool = False,
) -> KeyAndCertificate:
    """
    A self-signed CA certificate and its key; C{path_length} 0 forbids
    intermediates, and C{key_usage} adds the extension saying what the CA may
    sign, as strict verifiers such as Go's (the docker CLI) want.
    """
    key = new_key()
    name = subject([common_name], organization)
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .add_extension(
            x509.BasicConstraints(ca=True, path_length=path_length), critical=True
        )
        .add_extension(
            x509.SubjectKeyIdentifier.from_public_key(key.public_key()),
            critical=False,
        )
    )
    if key_usage:
        builder = builder.add_extension(_key_usage(cert_sign=True), critical=True)
    return key, _validity(builder, None).sign(key, hashes.SHA256())


def issue(
    ca: KeyAndCertificate,
    common_names: Sequence[str],
    usage: x509.ObjectIdentifier = ExtendedKeyUsageOID.CLIENT_AUTH,
    dns_names: Sequence[str] = (),
    key_usage: bool = False,
    ip_addresses: Sequence[str] = (),
    key: Any = None,
) -> KeyAndCertificate:
    """
    A leaf certificate issued by C{ca}: for clients unless C{usage} says
    otherwise, with C{ip_addresses} and C{dns_names} as subject alternative
    names, and a key usage extension when asked for; for C{key} (a new
    P-256 key unless given).
    """
    ca_key, ca_cert = ca
    if key is None:
        key = new_key()
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject(common_names))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
            critical=False,
        )
    )
    if key_usage:
        builder = builder.add_extension(_key_usage(cert_sign=False), critical=True)
    alternatives: list[x509.GeneralName] = [
        x509.IPAddress(ipaddress.ip_address(address)) for address in ip_addresses
    ]
    alternatives += [x509.DNSName(name) for name in dns_names]
    if alternatives:
        builder = builder.add_extension(
            x509.SubjectAlternativeName(alternatives), critical=False
        )
    return key, _validity(builder, None).sign(ca_key, hashes.SHA256())


def server_pair(
    common_name: str, not_after: datetime.datetime | None = None
) -> KeyAndCertificate:
    """A self-signed server certificate for localhost and its key."""
    key = new_key()
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject([common_name]))
        .issuer_name(subject([common_name]))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.DNSName(common_name)]
            ),
            critical=False,
        )
    )
    return key, _validity(builder, not_after).sign(key, hashes.SHA256())


def cert_pem(cert: x509.Certificate) -> bytes:
    """The certificate as the PEM text a certificate file holds."""
    return cert.public_bytes(serialization.Encoding.PEM)


def key_pem(
    key: ec.EllipticCurvePrivateKey,
    encryption: serialization.KeySerializationEncryption | None = None,
) -> bytes:
    """The key as PKCS#8 PEM, unencrypted unless C{encryption} says otherwise."""
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        encryption or serialization.NoEncryption(),
    )


def write(path: str, data: bytes) -> str:
    """Write C{data} to C{path}; return the path, to pass on to a loader."""
    with open(path, "wb") as f:
        f.write(data)
    return path
