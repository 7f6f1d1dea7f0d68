"""
Tests for L{haven_agent.tls.failure}: why a connection ended before its
first request, in words an operator understands.
"""

import ssl

from twisted.internet.error import ConnectionDone
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from haven_agent.tls.certificates import load_or_create_self_signed, server_context
from haven_agent.tls.failure import NoClientHello, describe_close, handshake_outcome


def tls_error(reason: str, cls: type[ssl.SSLError] = ssl.SSLError) -> ssl.SSLError:
    """An error as the standard library raises it for OpenSSL's C{reason}."""
    error = cls(1, f"[SSL: {reason}] {reason.lower().replace('_', ' ')}")
    error.library = "SSL"
    error.reason = reason
    return error


class DescribeCloseTests(SynchronousTestCase):
    def test_plain_http(self) -> None:
        """
        What OpenSSL really raises when a client speaks plain HTTP to the
        agent's TLS context.
        """
        certificate = load_or_create_self_signed(
            self.mktemp(), host_names=["localhost"], ip_addresses=["127.0.0.1"]
        )
        incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
        server = server_context(certificate).wrap_bio(
            incoming, outgoing, server_side=True
        )
        incoming.write(b"GET /_ping HTTP/1.1\r\nHost: node\r\n\r\n")
        error = self.assertRaises(ssl.SSLError, server.do_handshake)
        self.assertEqual(
            describe_close(Failure(error)),
            "TLS failed: plain HTTP on the TLS port (use https://)",
        )

    def test_unknown_reason_kept(self) -> None:
        self.assertEqual(
            describe_close(Failure(tls_error("SOMETHING_NEW"))),
            "TLS failed: something new",
        )

    def test_verify_message_added(self) -> None:
        error = tls_error("CERTIFICATE_VERIFY_FAILED", ssl.SSLCertVerificationError)
        error.verify_message = "certificate has expired"
        self.assertEqual(
            describe_close(Failure(error)),
            "TLS failed: a client certificate the client CA did not sign "
            "(certificate has expired)",
        )

    def test_error_without_reason(self) -> None:
        self.assertEqual(
            describe_close(Failure(ssl.SSLError(5, "EOF occurred"))),
            "TLS failed: EOF occurred",
        )
        self.assertEqual(describe_close(Failure(ssl.SSLError())), "TLS failed")

    def test_not_tls(self) -> None:
        self.assertEqual(
            describe_close(Failure(ConnectionDone())),
            "Connection was closed cleanly.",
        )

    def test_none(self) -> None:
        self.assertEqual(describe_close(None), "closed")


class HandshakeOutcomeTests(SynchronousTestCase):
    """
    The outcome label of a handshake that never completed.
    """

    def test_outcomes(self) -> None:
        def tls(reason: str) -> Failure:
            return Failure(tls_error(reason))

        for reason, outcome in [
            (tls("PEER_DID_NOT_RETURN_A_CERTIFICATE"), "no_client_certificate"),
            (tls("CERTIFICATE_VERIFY_FAILED"), "bad_client_certificate"),
            (tls("HTTP_REQUEST"), "failed"),
            (Failure(NoClientHello(5.0)), "timeout"),
            (Failure(ConnectionDone()), "failed"),
            (None, "failed"),
        ]:
            self.assertEqual(handshake_outcome(reason), outcome, reason)
