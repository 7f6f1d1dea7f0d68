"""
Tests for L{haven_agent.tls.failure}: why a connection ended before its
first request, in words an operator understands.
"""

from OpenSSL import SSL
from twisted.internet.error import ConnectionDone
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from haven_agent.tls.failure import NoClientHello, describe_close, handshake_outcome


class DescribeCloseTests(SynchronousTestCase):
    def test_plain_http(self) -> None:
        error = SSL.Error([("SSL routines", "", "http request")])
        self.assertEqual(
            describe_close(Failure(error)),
            "TLS failed: plain HTTP on the TLS port (use https://)",
        )

    def test_unknown_reason_kept(self) -> None:
        error = SSL.Error([("SSL routines", "", "something new")])
        self.assertEqual(describe_close(Failure(error)), "TLS failed: something new")

    def test_repeated_reason_once(self) -> None:
        error = SSL.Error(
            [("SSL routines", "", "no shared cipher")] * 2
            + [("SSL routines", "", "other")]
        )
        self.assertEqual(
            describe_close(Failure(error)),
            "TLS failed: the client offered no cipher the agent accepts; other",
        )

    def test_error_without_queue(self) -> None:
        self.assertEqual(describe_close(Failure(SSL.Error())), "TLS failed")

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
            return Failure(SSL.Error([("SSL routines", "", reason)]))

        for reason, outcome in [
            (tls("peer did not return a certificate"), "no_client_certificate"),
            (tls("certificate verify failed"), "bad_client_certificate"),
            (tls("http request"), "failed"),
            (Failure(NoClientHello(5.0)), "timeout"),
            (Failure(ConnectionDone()), "failed"),
            (None, "failed"),
        ]:
            self.assertEqual(handshake_outcome(reason), outcome, reason)
