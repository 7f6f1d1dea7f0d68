# -*- test-case-name: tests.tls.test_failure -*-
"""
Why a connection ended before its first request, in words.

A failed TLS handshake reaches the gate as the standard library's
C{ssl.SSLError}, whose C{reason} is OpenSSL's name for it, such as
C{HTTP_REQUEST}: true, but an operator reading the log wants "plain HTTP
on the TLS port". The reasons clients cause every day get a sentence;
anything else is OpenSSL's own reason, in words.
"""

from __future__ import annotations

import ssl

from twisted.python.failure import Failure

#: OpenSSL reason strings -> what they mean at this port.
_MEANINGS = {
    "http request": "plain HTTP on the TLS port (use https://)",
    "https proxy request": "an HTTP proxy request on the TLS port",
    "wrong version number": "not TLS, or a TLS version below 1.2",
    "unsupported protocol": "the client offered only TLS versions below 1.2",
    "no shared cipher": "the client offered no cipher the agent accepts",
    "peer did not return a certificate": "no client certificate",
    "certificate verify failed": "a client certificate the client CA did not sign",
    "tlsv1 alert unknown ca": "the client does not trust the agent's certificate",
    "sslv3 alert bad certificate": "the client refused the agent's certificate",
    "sslv3 alert certificate unknown": "the client refused the agent's certificate",
}


class NoClientHello(Exception):
    """
    The client sent nothing, not even a TLS ClientHello, in time.
    """

    def __init__(self, seconds: float) -> None:
        super().__init__(f"no TLS handshake begun within {seconds:g} s")


def describe_close(reason: Failure | None) -> str:
    """
    Why a connection closed, for the log line of one that made no request.
    """
    if reason is None:
        return "closed"
    if isinstance(reason.value, ssl.SSLError):
        return describe_tls_error(reason.value)
    return reason.getErrorMessage()


def _reason(error: ssl.SSLError) -> str | None:
    """OpenSSL's reason, as its own error strings spell it ("http request")."""
    reason = getattr(error, "reason", None)
    return reason.lower().replace("_", " ") if reason else None


def describe_tls_error(error: ssl.SSLError) -> str:
    reason = _reason(error)
    if reason is None:
        detail = error.strerror or (str(error) if error.args else "")
        return f"TLS failed: {detail}" if detail else "TLS failed"
    meaning = _MEANINGS.get(reason, reason)
    verify_message = getattr(error, "verify_message", None)
    if verify_message:
        meaning = f"{meaning} ({verify_message})"
    return f"TLS failed: {meaning}"


#: OpenSSL reason strings that name a client certificate problem.
_CERTIFICATE_OUTCOMES = {
    "peer did not return a certificate": "no_client_certificate",
    "certificate verify failed": "bad_client_certificate",
}


def handshake_outcome(reason: Failure | None) -> str:
    """
    How the TLS handshake of a connection that closed before completing
    one failed, as the C{outcome} label of the handshake metric: a
    client certificate missing or not signed by the client CA, no
    ClientHello in time, or otherwise "failed".
    """
    if reason is None:
        return "failed"
    if isinstance(reason.value, NoClientHello):
        return "timeout"
    if isinstance(reason.value, ssl.SSLError):
        return _CERTIFICATE_OUTCOMES.get(_reason(reason.value) or "", "failed")
    return "failed"
