"""
The policy in the whole proxy, as `build_proxy_service` assembles it from a
`--policy` file, in front of the fake dockerd: what a profile denies never
reaches dockerd, what it allows reaches it byte for byte, and SIGHUP swaps
the policy or keeps it.
"""

from __future__ import annotations

import base64
import os
import signal

from twisted.internet.defer import inlineCallbacks
from twisted.logger import capturedLogs

from tests.policy.test_enforcement import HASH, POLICY
from tests.proxy.test_proxy_fake_dockerd import (
    ProxyTestCase,
    exchange,
    read_to_close,
    request,
    waitFor,
)

TRAEFIK = b"Basic " + base64.b64encode(b"traefik:t-pw")


class PolicyProxyCase(ProxyTestCase):
    """
    The proxy with a policy file of C{policyText}.
    """

    policyText = POLICY

    def setUp(self) -> None:
        super().setUp()
        self.fake, path = self.startFake()
        self.policyPath = os.path.abspath(self.mktemp())
        with open(self.policyPath, "w") as f:
            f.write(self.policyText)
        self.service = self.startService(
            path,
            policy=self.policyPath,
        )

    @inlineCallbacks
    def ask(self, method: bytes, target: bytes, auth: bytes = TRAEFIK):
        client = yield self.connect(self.agentPort, caFile=self.caFile)
        (answer,) = yield self.inThread(
            exchange, client, request(method, target, auth=auth), 1
        )
        client.close()
        return answer

    def reloads(self, outcome: str) -> float:
        return sum(
            sample.value
            for family in self.service.metrics.reloads.collect()
            for sample in family.samples
            if sample.name.endswith("_total") and sample.labels["outcome"] == outcome
        )


class PolicyProxyTests(PolicyProxyCase):
    @inlineCallbacks
    def test_denied_never_reaches_dockerd(self):
        answer = yield self.ask(b"GET", b"/v1.41/version")
        self.assertEqual(answer.status, 200)
        self.assertEqual([r.target for r in self.fake.requests], [b"/v1.41/version"])
        for method, target, status in [
            (b"POST", b"/v1.41/containers/create", 403),
            (b"GET", b"/version/", 400),
            (b"GET", b"/containers/../version", 400),
        ]:
            answer = yield self.ask(method, target)
            self.assertEqual(answer.status, status, target)
            self.assertIn("haven-agent: ", answer.json()["message"])
        self.assertEqual(len(self.fake.requests), 1)

    @inlineCallbacks
    def test_reload(self):
        """
        SIGHUP reads the file again: a valid one is used for the next
        request, an invalid one is logged with its line and the policy in
        force stays.
        """
        with open(self.policyPath, "w") as f:
            f.write(POLICY.replace('traefik = "discovery"', 'traefik = "full"'))
        os.kill(os.getpid(), signal.SIGHUP)
        yield waitFor(lambda: self.reloads("ok") == 1)
        answer = yield self.ask(b"POST", b"/upload")
        self.assertEqual(answer.status, 200)

        with open(self.policyPath, "w") as f:
            f.write('version = 1\n[profiles.p]\nallow = ["GET /nope"]\n')
        with capturedLogs() as events:
            os.kill(os.getpid(), signal.SIGHUP)
            yield waitFor(lambda: self.reloads("failed") == 1)
        failed = [e for e in events if "policy reload failed" in e["log_format"]]
        self.assertEqual(len(failed), 1)
        self.assertIn(f"{self.policyPath}:3: ", failed[0]["problem"])
        answer = yield self.ask(b"POST", b"/upload")
        self.assertEqual(answer.status, 200)


CI_POLICY = f"""
version = 1
[users]
ci = "{HASH}"
[identities]
ci = "ci"
[profiles.ci]
allow = ["POST /containers/create", "GET /version"]
create = {{ privileged = false, bind_sources = ["/srv/ci"] }}
"""
CI = b"Basic " + base64.b64encode(b"ci:t-pw")
PRIVILEGED = b'{"Image":"a","HostConfig":{"Privileged":true}}'
PLAIN = b'{"Image":"a","HostConfig":{"Binds":["/srv/ci/w:/w"]}}'


def chunked(body: bytes, size: int = 7) -> bytes:
    pieces = [body[i : i + size] for i in range(0, len(body), size)]
    return b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in pieces) + b"0\r\n\r\n"


class BodyRuleProxyTests(PolicyProxyCase):
    """
    Bodies the create rules judge, read whole by the gate before anything
    of the request goes to dockerd.
    """

    policyText = CI_POLICY

    @inlineCallbacks
    def exchange(self, data: bytes, count: int = 1):
        client = yield self.connect(self.agentPort, caFile=self.caFile)
        answers = yield self.inThread(exchange, client, data, count)
        client.close()
        return answers

    def create(self, body: bytes, framing: str = "length", extra=()) -> bytes:
        headers = [(b"Content-Type", b"application/json"), *extra]
        if framing == "length":
            headers.append((b"Content-Length", b"%d" % len(body)))
            payload = body
        else:
            headers.append((b"Transfer-Encoding", b"chunked"))
            payload = chunked(body)
        return request(b"POST", b"/v1.41/containers/create", headers, payload, auth=CI)

    @inlineCallbacks
    def test_refused_bodies_never_reach_dockerd(self):
        for body, framing in [
            (PRIVILEGED, "length"),
            (PRIVILEGED, "chunked"),
            (
                b'{"Image":"a","HostConfig":{"Privileged":true},"HostConfig":{}}',
                "length",
            ),
            (b'{"Image":"a","HostConfig":{"Binds":["/:/h"]}}', "chunked"),
            (b"", "length"),
        ]:
            (answer,) = yield self.exchange(self.create(body, framing))
            self.assertEqual(answer.status, 403, body)
            self.assertIn(
                'profile "ci" denies POST /containers/create', answer.json()["message"]
            )
        self.assertEqual(self.fake.requests, [])

    @inlineCallbacks
    def test_allowed_body_forwarded_as_it_came(self):
        """
        Head and body reach dockerd byte for byte, chunk framing included,
        and a pipelined request after it is answered in order.
        """
        for framing in ("length", "chunked"):
            data = self.create(PLAIN, framing)
            answers = yield self.exchange(
                data + request(b"GET", b"/version", auth=CI), 2
            )
            self.assertEqual([a.status for a in answers], [201, 200])
            self.assertEqual(answers[0].body, data)

    @inlineCallbacks
    def test_expect_continue(self):
        """
        The agent answers 100 Continue itself: dockerd is not asked before
        the body is judged.
        """
        client = yield self.connect(self.agentPort, caFile=self.caFile)
        head = self.create(PLAIN, extra=[(b"Expect", b"100-continue")])
        headBytes, _, body = head.partition(b"\r\n\r\n")
        yield self.inThread(client.send, headBytes + b"\r\n\r\n")
        interim = yield self.inThread(client.read_until, b"\r\n\r\n")
        self.assertEqual(interim, b"HTTP/1.1 100 Continue\r\n\r\n")
        self.assertEqual(self.fake.requests, [])
        yield self.inThread(client.send, body)
        answers = []
        while not answers or answers[-1].status == 100:
            answers.append((yield self.inThread(client.read_response)))
        self.assertEqual(answers[-1].status, 201)
        client.close()

    @inlineCallbacks
    def test_too_big(self):
        big = b'{"Image":"a","Labels":{"x":"' + b"y" * (4 * 1024 * 1024) + b'"}}'
        (answer,) = yield self.exchange(self.create(big)[:600])
        self.assertEqual(answer.status, 413)
        self.assertEqual(self.fake.requests, [])


LIMITS_POLICY = f"""
version = 1
[users]
ci = "{HASH}"
[identities]
ci = "ci"
admin = "full"
[profiles.ci]
allow = ["GET /version"]
max_connections = 1
idle_timeout = 0.3
"""


class ConnectionTermsTests(PolicyProxyCase):
    """
    A profile's connection limit and idle timeout hold for its identities
    and nobody else.
    """

    policyText = LIMITS_POLICY

    @inlineCallbacks
    def test_limit_and_idle(self):
        first = yield self.connect(self.agentPort, caFile=self.caFile)
        (answer,) = yield self.inThread(
            exchange, first, request(b"GET", b"/version", auth=CI), 1
        )
        self.assertEqual(answer.status, 200)
        second = yield self.connect(self.agentPort, caFile=self.caFile)
        (refused,) = yield self.inThread(
            exchange, second, request(b"GET", b"/version", auth=CI), 1
        )
        self.assertEqual(refused.status, 503)
        self.assertIn("too many connections of user ci", refused.json()["message"])
        # The admin's profile sets no limit: the options' apply.
        admin = yield self.connect(self.agentPort, caFile=self.caFile)
        (allowed,) = yield self.inThread(
            exchange, admin, request(b"GET", b"/version"), 1
        )
        self.assertEqual(allowed.status, 200)
        # The idle ci connection is closed by the agent; the admin's stays.
        rest = yield self.inThread(read_to_close, first)
        self.assertEqual(rest, b"")
        yield waitFor(lambda: len(self.service._gate.connections) == 1)
        (again,) = yield self.inThread(exchange, admin, request(b"GET", b"/version"), 1)
        self.assertEqual(again.status, 200)
        admin.close()
