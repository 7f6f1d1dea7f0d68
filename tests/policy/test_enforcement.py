"""
Tests for L{haven_agent.policy.enforcement}: the policy in the access
decision, as a table of (identity, request) -> verdict, with the
example policy of docs/policy.md.
"""

from __future__ import annotations

from base64 import b64encode

import bcrypt
from twisted.internet.defer import succeed
from twisted.logger import capturedLogs
from twisted.trial.unittest import SynchronousTestCase

from haven_agent.policy.enforcement import PolicyRule
from haven_agent.policy.policy_file import default_policy, read_policy
from haven_agent.proxy.auth import BasicAuthChecker
from haven_agent.proxy.decision import AccessDecision, Allow, AnswerMetrics, Identity
from haven_agent.proxy.http_head import parse_head

HASH = bcrypt.hashpw(b"t-pw", bcrypt.gensalt(4)).decode()
POLICY = f"""
version = 1
[users]
traefik = "{HASH}"
learner = "{HASH}"
nobody = "{HASH}"
[identities]
admin = "full"
traefik = "discovery"
learner = "learning"
prom = "metrics"
"cert:ci-*" = "ci"
[profiles.discovery]
allow = ["GET,HEAD /_ping", "GET /version", "GET /events", "GET /containers/json",
         "GET /containers/{{id}}/json"]
[profiles.ci]
allow = ["GET *", "POST /containers/create", "POST /containers/{{id}}/start",
         "POST /containers/{{id}}/kill", "DELETE /containers/{{id}}"]
deny = ["* /libpod/*"]
query."POST /containers/{{id}}/kill".signal = ["USR1", "HUP"]
[profiles.learning]
mode = "log"
allow = ["GET /containers/json"]
"""


def head(line: bytes, auth: bytes = b""):
    return parse_head(line + b"\r\nHost: docker\r\n" + auth + b"\r\n")


def basic(user: bytes, password: bytes) -> bytes:
    return b"Authorization: Basic " + b64encode(user + b":" + password) + b"\r\n"


def decision(policy, mode="password") -> AccessDecision:
    checker = BasicAuthChecker(
        "admin",
        "pw",
        lambda f, *a: succeed(f(*a)),
        readOnly=("viewer", "ro"),
        extra=policy.users,
    )
    return AccessDecision(checker, mode, rules=(PolicyRule(policy),))


ADMIN = basic(b"admin", b"pw")
TRAEFIK = basic(b"traefik", b"t-pw")
NOBODY = basic(b"nobody", b"t-pw")
VIEWER = basic(b"viewer", b"ro")
LEARNER = basic(b"learner", b"t-pw")
NO_CERT = Identity("10.0.0.9")
CI = Identity("10.0.0.9", "ci-runner-3")
OTHER_CERT = Identity("10.0.0.9", "laptop")

OK = "allowed"

#: (who, credentials, request line, status or OK, words the message holds)
TABLE = [
    (NO_CERT, ADMIN, b"POST /containers/create", OK, ""),
    (NO_CERT, ADMIN, b"GET /containers/../containers/json", OK, ""),
    (NO_CERT, TRAEFIK, b"GET /v1.41/containers/json?all=1", OK, ""),
    (NO_CERT, TRAEFIK, b"HEAD /_ping", OK, ""),
    (NO_CERT, TRAEFIK, b"GET /containers/abc/json", OK, ""),
    (
        NO_CERT,
        TRAEFIK,
        b"POST /v1.41/containers/create",
        403,
        'haven-agent: profile "discovery" denies POST /containers/create: '
        "no rule allows it",
    ),
    (NO_CERT, TRAEFIK, b"GET /containers/abc/logs", 403, "no rule allows it"),
    (NO_CERT, TRAEFIK, b"GET /containers/abc/archive?path=/", 403, ""),
    (NO_CERT, TRAEFIK, b"GET /containers/json/", 400, "canonical"),
    (NO_CERT, TRAEFIK, b"GET /containers/x/../json", 400, "canonical"),
    (NO_CERT, TRAEFIK, b"GET /containers%2Fjson", 400, "encoded"),
    (NO_CERT, TRAEFIK, b"GET /_agent/metrics", 403, "no rule allows it"),
    (NO_CERT, NOBODY, b"GET /containers/json", 403, "user nobody has no profile"),
    (NO_CERT, NOBODY, b"GET /_ping", OK, ""),
    (NO_CERT, VIEWER, b"GET /containers/json", 403, "no profile"),
    (NO_CERT, LEARNER, b"POST /volumes/create", OK, ""),
]

CERT_TABLE = [
    (CI, b"GET /containers/json", OK, ""),
    (CI, b"GET /images/registry:5000/a/b:1/json", OK, ""),
    (CI, b"POST /containers/create?name=x", OK, ""),
    (CI, b"POST /containers/abc/kill?signal=USR1", OK, ""),
    (CI, b"POST /containers/abc/kill?signal=HUP&signal=KILL", OK, ""),
    (CI, b"POST /containers/abc/kill?signal=KILL", 403, "signal=KILL"),
    (CI, b"POST /containers/abc/kill?signal=KILL&signal=USR1", 403, "signal=KILL"),
    (CI, b"POST /containers/abc/kill", 403, "signal is required"),
    (CI, b"POST /containers/abc/kill?sig%6Eal=KILL", 403, "signal=KILL"),
    (CI, b"POST /containers/abc/kill?signal=%55SR1", OK, ""),
    (CI, b"GET /libpod/info", 403, 'denied by "* /libpod/*"'),
    (CI, b"GET /v4.0.0/libpod/containers/json", 403, "libpod"),
    (CI, b"POST /containers/abc/exec", 403, "no rule allows it"),
    (CI, b"DELETE /containers/abc", OK, ""),
    (CI, b"DELETE /images/abc", 403, ""),
    (OTHER_CERT, b"GET /containers/json", 403, "certificate laptop has no profile"),
]


class VerdictTableTests(SynchronousTestCase):
    def assertVerdict(self, verdict, expected, words, case) -> None:
        if expected == OK:
            self.assertIsInstance(verdict, Allow, case)
            return
        self.assertEqual(getattr(verdict, "status", None), expected, (case, verdict))
        self.assertIn(words, verdict.message, case)

    def test_passwords(self) -> None:
        judge = decision(read_policy(POLICY))
        for who, auth, line, expected, words in TABLE:
            verdict = judge.verdictNow(head(line + b" HTTP/1.1", auth), who)
            if verdict.__class__.__name__ == "NotKnownYet":
                verdict = self.successResultOf(
                    judge.verdict(head(line + b" HTTP/1.1", auth), who)
                )
            self.assertVerdict(verdict, expected, words, line)

    def test_certificates(self) -> None:
        judge = decision(read_policy(POLICY), "cert")
        for who, line, expected, words in CERT_TABLE:
            verdict = judge.verdictNow(head(line + b" HTTP/1.1"), who)
            self.assertVerdict(verdict, expected, words, line)

    def test_ping_always(self) -> None:
        """
        Every identity with a profile may ping, whatever its rules say.
        """
        policy = read_policy(
            'version = 1\n[identities]\nadmin = "strict"\n'
            '[profiles.strict]\nallow = ["GET /version"]\n'
        )
        judge = decision(policy)
        for line in (b"GET /_ping", b"HEAD /v1.41/_ping"):
            self.assertIsInstance(
                judge.verdictNow(head(line + b" HTTP/1.1", ADMIN), NO_CERT), Allow
            )

    def test_metrics_profile(self) -> None:
        """
        The metrics profile allows exactly the metrics page (and a ping).
        """
        policy = read_policy(
            f'version = 1\n[users]\nprom = "{HASH}"\n[identities]\nprom = "metrics"\n'
        )
        judge = decision(policy)
        prom = basic(b"prom", b"t-pw")

        def verdict(line: bytes):
            request = head(line + b" HTTP/1.1", prom)
            return self.successResultOf(judge.verdict(request, NO_CERT))

        self.assertIsInstance(verdict(b"GET /_agent/metrics"), AnswerMetrics)
        self.assertIsInstance(verdict(b"GET /_ping"), Allow)
        for line in (b"GET /containers/json", b"GET /info", b"POST /_agent/metrics"):
            self.assertEqual(verdict(line).status, 403, line)

    def test_log_mode(self) -> None:
        """
        A profile in log mode forwards what it would deny, and says so
        once, naming the profile and the rule.
        """
        judge = decision(read_policy(POLICY))
        with capturedLogs() as events:
            verdict = self.successResultOf(
                judge.verdict(head(b"POST /volumes/create HTTP/1.1", LEARNER), NO_CERT)
            )
        self.assertIsInstance(verdict, Allow)
        [event] = [e for e in events if e.get("event") == "policy would deny"]
        self.assertEqual(event["profile"], "learning")
        self.assertIn("no rule allows it", event["rule"])

    def test_default_policy(self) -> None:
        """
        Without a file, the admin is full and the read-only account gets
        its route list: what the options have always meant.
        """
        judge = decision(default_policy("admin", "viewer", False))
        self.assertIsInstance(
            judge.verdictNow(head(b"POST /containers/create HTTP/1.1", ADMIN), NO_CERT),
            Allow,
        )
        self.assertIsInstance(
            judge.verdictNow(head(b"GET /containers/json HTTP/1.1", VIEWER), NO_CERT),
            Allow,
        )
        refused = judge.verdictNow(
            head(b"GET /containers/abc/archive HTTP/1.1", VIEWER), NO_CERT
        )
        self.assertEqual(refused.status, 403)

    def test_replace(self) -> None:
        """
        A reloaded policy is used whole for the next request.
        """
        rule = PolicyRule(read_policy(POLICY))
        checker = BasicAuthChecker(
            "admin", "pw", lambda f, *a: succeed(f(*a)), extra=read_policy(POLICY).users
        )
        judge = AccessDecision(checker, rules=(rule,))
        request = head(b"POST /containers/create HTTP/1.1", TRAEFIK)
        self.assertEqual(
            self.successResultOf(judge.verdict(request, NO_CERT)).status, 403
        )
        rule.replace(
            read_policy(POLICY.replace('traefik = "discovery"', 'traefik = "full"'))
        )
        self.assertIsInstance(
            self.successResultOf(judge.verdict(request, NO_CERT)), Allow
        )


class CreateRoutesTests(SynchronousTestCase):
    def test_which_routes_wait_for_their_body(self) -> None:
        from haven_agent.proxy.decision import AllowAfterBody

        policy = read_policy(
            'version = 1\n[identities]\nadmin = "p"\n[profiles.p]\nallow = ["* *"]\n'
            "create = { privileged = false, host_namespaces = false }\n"
        )
        judge = decision(policy)

        def verdict(line: bytes):
            return judge.verdictNow(head(line + b" HTTP/1.1", ADMIN), NO_CERT)

        for line in (
            b"POST /containers/create",
            b"POST /containers/abc/update",
            b"POST /containers/abc/exec",
            b"POST /volumes/create",
            b"POST /services/create",
            b"POST /services/abc/update",
            b"POST /plugins/pull?remote=x",
        ):
            self.assertIsInstance(verdict(line), AllowAfterBody, line)
        for line in (b"GET /containers/json", b"POST /containers/abc/start"):
            self.assertIsInstance(verdict(line), Allow, line)
        refused = verdict(b"POST /build?networkmode=host")
        self.assertEqual(refused.status, 403)
        self.assertIn("networkmode=host", refused.message)
        self.assertIsInstance(verdict(b"POST /build?t=x"), Allow)
        check = verdict(b"POST /plugins/pull?remote=x").check
        self.assertIn(
            "plugin privileges", check(b'[{"Name": "network", "Value": ["host"]}]')
        )
