# -*- test-case-name: tests.tls.test_failure -*-
"""
Why a connection ended before its first request, in words.

A failed TLS handshake reaches the gate as OpenSSL's error queue, a list
of (library, function, reason) tuples such as
C{[('SSL routines', '', 'http request')]}: true, but an operator reading
the log wants "plain HTTP on the TLS port". The reasons clients cause every
day get a sentence; anything else is OpenSSL's own reason strings.
"""

from __future__ import annotations

from OpenSSL import SSL
from twisted.python.failure import Failure

#: OpenSSL reason strings -> what they mean at this port.
_MEANINGS = {
    "http request": "plain HTTP on the TLS port (use https://)",
    "https proxy request": "an HTTP proxy request on the TLS port",
    "wrong version number": "not TLS, or a TLS version below 1.2",
    "unsupported protocol": "the client offered only TLS versions below 1.2",
    "no shared cipher": "the client offered no cipher the agent accepts",
    "no application protocol": "the client offered no ALPN protocol but http/1.1",
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
    if isinstance(reason.value, SSL.Error):
        return describe_tls_error(reason.value)
    return reason.getErrorMessage()


def describe_tls_error(error: SSL.Error) -> str:
    reasons = []
    queue = error.args[0] if error.args else []
    if isinstance(queue, list):
        for entry in queue:
            if isinstance(entry, tuple) and len(entry) == 3:
                reasons.append(str(entry[2]))
    if not reasons:
        return f"TLS failed: {error}" if str(error) else "TLS failed"
    meanings = [_MEANINGS.get(reason, reason) for reason in reasons]
    return "TLS failed: " + "; ".join(dict.fromkeys(meanings))


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
    if isinstance(reason.value, SSL.Error):
        queue = reason.value.args[0] if reason.value.args else []
        for entry in queue if isinstance(queue, list) else ():
            if isinstance(entry, tuple) and len(entry) == 3:
                outcome = _CERTIFICATE_OUTCOMES.get(str(entry[2]))
                if outcome is not None:
                    return outcome
    return "failed"
