"""
Tests for haven_agent.proxy.decision: the access decision as a table of
(mode, identity, request) -> verdict.
"""

from __future__ import annotations

from base64 import b64encode

import bcrypt
from twisted.internet.defer import Deferred, succeed
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from haven_agent.proxy.auth import NOT_KNOWN_YET, BasicAuthChecker
from haven_agent.proxy.decision import (
    AUTHENTICATE,
    HEALTH,
    AccessDecision,
    Allow,
    AnswerMetrics,
    Identity,
    Refuse,
)
from haven_agent.proxy.http_head import parse_head
from haven_agent.proxy.throttle import FailureThrottle


def basic(credentials: bytes) -> bytes:
    return b"Authorization: Basic " + b64encode(credentials) + b"\r\n"


ADMIN = basic(b"admin:pw")
VIEWER = basic(b"viewer:ro")
WRONG = basic(b"admin:nope")


def head(line: bytes, auth: bytes = b"") -> object:
    return parse_head(line + b"\r\nHost: docker\r\n" + auth + b"\r\n")


def checker(runInThread=None) -> BasicAuthChecker:
    return BasicAuthChecker(
        "admin",
        "pw",
        runInThread or (lambda f, *a: succeed(f(*a))),
        readOnly=("viewer", "ro"),
    )


NO_CERT = Identity("10.0.0.9")
CERT = Identity("10.0.0.9", "ci-runner")
CERT_MESSAGE = "a client certificate signed by the agent's client CA is required"

#: (mode, identity, request line, credentials, expected verdict)
TABLE = [
    ("password", NO_CERT, b"GET /info HTTP/1.1", ADMIN, Allow("admin", "password")),
    (
        "password",
        NO_CERT,
        b"GET /info HTTP/1.1",
        b"",
        Refuse(
            401,
            "authentication required: send HTTP Basic credentials",
            AUTHENTICATE,
            reason="no_credentials",
        ),
    ),
    (
        "password",
        NO_CERT,
        b"GET /info HTTP/1.1",
        WRONG,
        Refuse(
            401,
            "wrong user name or password",
            AUTHENTICATE,
            reason="wrong_credentials",
        ),
    ),
    ("password", NO_CERT, b"GET /_agent/health HTTP/1.1", b"", HEALTH),
    ("password", NO_CERT, b"HEAD /_agent/health HTTP/1.1", WRONG, HEALTH),
    (
        "password",
        NO_CERT,
        b"POST /_agent/health HTTP/1.1",
        b"",
        Refuse(
            401,
            "authentication required: send HTTP Basic credentials",
            AUTHENTICATE,
            reason="no_credentials",
        ),
    ),
    (
        "password",
        NO_CERT,
        b"GET /v1.43/containers/json HTTP/1.1",
        VIEWER,
        Allow("viewer", "password", readOnly=True),
    ),
    (
        "password",
        NO_CERT,
        b"POST /v1.43/containers/create HTTP/1.1",
        VIEWER,
        Refuse(
            403,
            "user viewer is read-only: POST is not a read " "(POST /containers/create)",
        ),
    ),
    (
        "password",
        NO_CERT,
        b"GET /_agent/metrics HTTP/1.1",
        ADMIN,
        AnswerMetrics(Allow("admin", "password")),
    ),
    (
        "password",
        NO_CERT,
        b"GET /_agent/metrics HTTP/1.1",
        b"",
        Refuse(
            401,
            "authentication required: send HTTP Basic credentials",
            AUTHENTICATE,
            reason="no_credentials",
        ),
    ),
    # Not a route of the read-only account: refused 403 below.
    (
        "password",
        NO_CERT,
        b"GET /_agent/metrics HTTP/1.1",
        VIEWER,
        Refuse(403, "user viewer is read-only"),
    ),
    # Any other method is not the agent's: dockerd answers it.
    (
        "password",
        NO_CERT,
        b"POST /_agent/metrics HTTP/1.1",
        ADMIN,
        Allow("admin", "password"),
    ),
    (
        "cert",
        CERT,
        b"POST /containers/create HTTP/1.1",
        b"",
        Allow("ci-runner", "cert"),
    ),
    (
        "cert",
        NO_CERT,
        b"GET /info HTTP/1.1",
        ADMIN,
        Refuse(401, CERT_MESSAGE, AUTHENTICATE, reason="no_client_certificate"),
    ),
    ("both", CERT, b"GET /info HTTP/1.1", ADMIN, Allow("admin", "cert+password")),
    (
        "both",
        NO_CERT,
        b"GET /info HTTP/1.1",
        ADMIN,
        Refuse(401, CERT_MESSAGE, AUTHENTICATE, reason="no_client_certificate"),
    ),
    (
        "both",
        CERT,
        b"GET /info HTTP/1.1",
        WRONG,
        Refuse(
            401,
            "wrong user name or password",
            AUTHENTICATE,
            reason="wrong_credentials",
        ),
    ),
]


class VerdictTableTests(SynchronousTestCase):
    def test_table(self) -> None:
        """
        Each row's verdict, known at once (plain passwords, certificates),
        and the same through the Deferred path.
        """
        for mode, who, line, auth, expected in TABLE:
            decision = AccessDecision(checker(), mode)
            request = head(line, auth)
            got = decision.verdictNow(request, who)
            if isinstance(expected, Refuse) and expected.status == 403:
                # The read-only route list words its own reasons.
                self.assertIsInstance(got, Refuse, (mode, line))
                self.assertEqual(got.status, 403)
                self.assertTrue(got.message.startswith("user viewer is read-only: "))
                self.assertTrue(got.message.endswith(request.apiPath.decode() + ")"))
                continue
            self.assertEqual(got, expected, (mode, who, line, auth))
            self.assertEqual(
                self.successResultOf(decision.verdict(request, who)), expected
            )

    def test_unknownModeRefused(self) -> None:
        self.assertRaises(ValueError, AccessDecision, checker(), "token")

    def test_usesCertificates(self) -> None:
        self.assertFalse(AccessDecision(checker(), "password").usesCertificates)
        self.assertTrue(AccessDecision(checker(), "cert").usesCertificates)
        self.assertTrue(AccessDecision(checker(), "both").usesCertificates)


class BcryptTests(SynchronousTestCase):
    def test_notKnownYetThenVerdict(self) -> None:
        """
        A bcrypt verdict not yet remembered is not known at once; the
        Deferred path runs bcrypt (here: when the test says) and the next
        verdict for the same credentials is known at once.
        """
        pending: list = []

        def later(f, *args):
            d: Deferred = Deferred()
            pending.append((d, f, args))
            return d

        hashed = bcrypt.hashpw(b"pw", bcrypt.gensalt(4)).decode()
        decision = AccessDecision(BasicAuthChecker("admin", hashed, later))
        request = head(b"GET /info HTTP/1.1", ADMIN)
        self.assertIs(decision.verdictNow(request, NO_CERT), NOT_KNOWN_YET)
        deciding = decision.verdict(request, NO_CERT)
        self.assertNoResult(deciding)
        d, f, args = pending.pop()
        d.callback(f(*args))
        self.assertEqual(self.successResultOf(deciding), Allow("admin", "password"))
        self.assertEqual(
            decision.verdictNow(request, NO_CERT), Allow("admin", "password")
        )


class ThrottleTests(SynchronousTestCase):
    def test_failuresDelayed(self) -> None:
        """
        Failed authentications from one host make its next refusals wait;
        another host and right credentials are not delayed.
        """
        clock = Clock()
        decision = AccessDecision(checker(), throttle=FailureThrottle(clock))
        wrong = head(b"GET /info HTTP/1.1", WRONG)
        first = decision.verdictNow(wrong, NO_CERT)
        second = decision.verdictNow(wrong, NO_CERT)
        self.assertEqual(first.delay, 0.0)
        self.assertGreater(second.delay, 0.0)
        self.assertEqual(decision.verdictNow(wrong, Identity("10.0.0.10")).delay, 0.0)
        self.assertEqual(
            decision.verdictNow(head(b"GET /info HTTP/1.1", ADMIN), NO_CERT),
            Allow("admin", "password"),
        )


class RuleTests(SynchronousTestCase):
    def test_extraRuleApplied(self) -> None:
        """
        A rule set plugs in: each allowed request also passes every rule,
        in order, and the first refusal wins.
        """

        def noExec(request, allowed):
            if b"/exec" in request.apiPath:
                return Refuse(403, f"{allowed.user} may not exec")
            return None

        decision = AccessDecision(checker(), rules=(noExec,))
        self.assertEqual(
            decision.verdictNow(head(b"POST /exec/e/start HTTP/1.1", ADMIN), NO_CERT),
            Refuse(403, "admin may not exec", user="admin"),
        )
        self.assertEqual(
            decision.verdictNow(head(b"GET /info HTTP/1.1", ADMIN), NO_CERT),
            Allow("admin", "password"),
        )
