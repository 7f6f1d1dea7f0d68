"""
Tests for L{haven_agent.tls.failure}: why a connection ended before its
first request, in words an operator understands.
"""

from OpenSSL import SSL
from twisted.internet.error import ConnectionDone
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from haven_agent.tls.failure import describe_close


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
