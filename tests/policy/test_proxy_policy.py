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
import socket

from twisted.internet import reactor
from twisted.internet.defer import inlineCallbacks
from twisted.logger import capturedLogs

from haven_agent.config import ProxyConfig
from haven_agent.proxy.service import build_proxy_service
from haven_agent.thread_pools import ThreadPools
from tests.policy.test_enforcement import POLICY
from tests.proxy.test_proxy_fake_dockerd import (
    PASSWORD,
    USER,
    ProxyTestCase,
    exchange,
    request,
    waitFor,
)

TRAEFIK = b"Basic " + base64.b64encode(b"traefik:t-pw")


class PolicyProxyTests(ProxyTestCase):
    def setUp(self) -> None:
        super().setUp()
        self.fake, path = self.startFake()
        probe = socket.socket()
        probe.bind(("127.0.0.1", 0))
        self.agentPort = probe.getsockname()[1]
        probe.close()
        stateDir = os.path.abspath(self.mktemp())
        self.policyPath = os.path.abspath(self.mktemp())
        with open(self.policyPath, "w") as f:
            f.write(POLICY)
        config = ProxyConfig(
            listen=(f"tcp:{self.agentPort}:interface=127.0.0.1",),
            docker="unix:" + path,
            user=USER.decode(),
            password=PASSWORD.decode(),
            passwordIsDefault=False,
            tlsCert=None,
            tlsKey=None,
            stateDir=stateDir,
            serverNames=(),
            policy=self.policyPath,
        )
        threads = ThreadPools(reactor)
        self.service = build_proxy_service(config, reactor, threads)
        self.service.setServiceParent(threads)
        threads.startService()
        self.addCleanup(threads.stopService)
        self.caFile = os.path.join(stateDir, "tls", "agent-cert.pem")

    @inlineCallbacks
    def ask(self, method: bytes, target: bytes, auth: bytes = TRAEFIK):
        client = yield self.connect(self.agentPort, caFile=self.caFile)
        (answer,) = yield self.inThread(
            exchange, client, request(method, target, auth=auth), 1
        )
        client.close()
        return answer

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

    def reloads(self, outcome: str) -> float:
        return sum(
            sample.value
            for family in self.service.metrics.reloads.collect()
            for sample in family.samples
            if sample.name.endswith("_total") and sample.labels["outcome"] == outcome
        )
