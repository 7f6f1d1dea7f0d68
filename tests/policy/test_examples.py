"""
The example policies of docs/policy.md, read from the page itself: each
loads, and each lets through exactly what its text says the client does,
judged by the access decision as the gate asks it.
"""

from __future__ import annotations

import os
import re
from base64 import b64encode

from twisted.internet.defer import succeed
from twisted.trial.unittest import SynchronousTestCase

from haven_agent.policy.enforcement import PolicyRule
from haven_agent.policy.policy_file import read_policy
from haven_agent.proxy.auth import BasicAuthChecker
from haven_agent.proxy.decision import (
    AccessDecision,
    Allow,
    AllowAfterBody,
    AllowRewritten,
    AnswerMetrics,
    Identity,
)
from haven_agent.proxy.http_head import parse_head

DOCS = os.path.join(os.path.dirname(__file__), "..", "..", "docs", "policy.md")


def examples() -> list[str]:
    with open(DOCS, encoding="utf-8") as f:
        page = f.read()
    start = page.index("## Examples")
    section = page[start : page.index("\n## ", start)]
    return re.findall(r"```toml\n(.*?)```", section, re.S)


def labelled(path: bytes):
    """
    dockerd's answer for the examples' containers: "abc" carries the CI
    runner's label, "other" does not.
    """
    labels = {"com.example.owner": "ci"} if b"/abc/" in path else {}
    return succeed({"Config": {"Labels": labels}})


def judge(text: str, mode: str = "password") -> AccessDecision:
    policy = read_policy(text, "docs/policy.md")
    checker = BasicAuthChecker(
        "admin", "pw", lambda f, *a: succeed(f(*a)), extra=policy.users
    )
    return AccessDecision(checker, mode, rules=(PolicyRule(policy, inspect=labelled),))


class ExampleTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.examples = examples()

    def verdict(self, decision, line: bytes, user=b"admin", password=b"pw", who=None):
        auth = b"Authorization: Basic " + b64encode(user + b":" + password) + b"\r\n"
        head = parse_head(line + b" HTTP/1.1\r\nHost: docker\r\n" + auth + b"\r\n")
        return self.successResultOf(decision.verdict(head, who or Identity("10.0.0.9")))

    def assertAllowed(self, decision, lines, **who) -> None:
        for line in lines:
            verdict = self.verdict(decision, line, **who)
            self.assertIsInstance(
                verdict,
                (Allow, AllowAfterBody, AllowRewritten, AnswerMetrics),
                repr(line),
            )

    def assertRefused(self, decision, lines, **who) -> None:
        for line in lines:
            self.assertEqual(self.verdict(decision, line, **who).status, 403, line)

    def test_all_load(self) -> None:
        self.assertEqual(len(self.examples), 5)
        for text in self.examples:
            read_policy(text, "docs/policy.md")

    def test_haven_master(self) -> None:
        """
        Every call of the Haven master's, as it makes them (unversioned,
        absolute-form targets, its events poll), and none of what it never
        does.
        """
        master = judge(self.examples[0])
        self.assertAllowed(
            master,
            [
                b"GET https://10.0.0.5:8771/info",
                b"GET /_ping",
                b"GET /containers/json?all=1",
                b"GET /containers/web/json",
                b"GET /containers/web/logs?follow=1&stdout=1",
                b"GET /containers/web/stats?stream=1",
                b"GET /events?since=1764000000000&until=1764000090000",
                b"POST /containers/create?name=web",
                b"POST /containers/web/start",
                b"POST /containers/web/stop?t=10",
                b"POST /containers/web/restart",
                b"DELETE /containers/web?force=1",
                b"GET /images/json",
                b"GET /images/registry.example/app:1/json",
                b"POST /images/create?fromImage=nginx&tag=1",
                b"DELETE /images/nginx:1",
                b"GET /networks",
                b"POST /networks/create",
                b"GET /volumes",
                b"POST /volumes/create",
                b"GET /swarm",
                b"GET /v1.41/info",
            ],
        )
        self.assertRefused(
            master,
            [
                b"POST /containers/web/exec",
                b"GET /containers/web/archive?path=/",
                b"PUT /containers/web/archive?path=/",
                b"POST /build",
                b"GET /containers/web/export",
                b"POST /plugins/pull",
                b"GET /secrets",
                b"GET /debug/pprof/heap",
            ],
        )

    def test_traefik(self) -> None:
        traefik = judge(self.examples[1])
        who = {"user": b"traefik", "password": b"example"}
        self.assertAllowed(
            traefik,
            [
                b"HEAD /_ping",
                b"GET /v1.24/version",
                b"GET /v1.24/containers/json",
                b"GET /v1.24/containers/abc/json",
                b"GET /v1.24/events?filters=%7B%22type%22%3A%5B%22container%22%5D%7D",
                b"GET /v1.24/services",
                b"GET /v1.24/tasks",
                b"GET /v1.24/networks",
            ],
            **who,
        )
        self.assertRefused(
            traefik,
            [
                b"POST /containers/create",
                b"GET /containers/abc/logs",
                b"POST /containers/abc/attach",
                b"GET /images/json",
            ],
            **who,
        )
        self.assertRefused(traefik, [b"GET /info"], user=b"admin", password=b"pw")

    def test_dashboard(self) -> None:
        dashboard = judge(self.examples[2])
        who = {"user": b"dashboard", "password": b"example"}
        self.assertAllowed(
            dashboard,
            [
                b"GET /containers/json?all=1",
                b"GET /containers/abc/logs?follow=1&tail=100",
                b"GET /containers/abc/stats",
                b"GET /events",
            ],
            **who,
        )
        self.assertRefused(
            dashboard,
            [
                b"POST /containers/abc/stop",
                b"GET /containers/abc/attach/ws",
                b"POST /containers/abc/exec",
                b"GET /containers/abc/archive",
            ],
            **who,
        )

    def test_ci(self) -> None:
        ci = judge(self.examples[3], "cert")
        runner = {"who": Identity("10.0.0.9", "ci-runner-1")}
        self.assertAllowed(
            ci,
            [
                b"GET /containers/json",
                b"POST /containers/create",
                b"POST /containers/abc/kill?signal=TERM",
                b"POST /containers/abc/wait",
            ],
            **runner,
        )
        self.assertIsInstance(
            self.verdict(ci, b"POST /containers/create", **runner), AllowAfterBody
        )
        self.assertRefused(
            ci,
            [
                b"POST /containers/other/kill?signal=TERM",
                b"GET /containers/other/logs",
                b"POST /containers/abc/kill?signal=KILL",
                b"GET /libpod/info",
                b"GET /containers/abc/archive?path=/etc",
                b"GET /debug/pprof/heap",
                b"POST /containers/abc/exec",
                b"DELETE /images/abc",
            ],
            **runner,
        )
        laptop = {"who": Identity("10.0.0.9", "laptop")}
        self.assertRefused(ci, [b"GET /containers/json"], **laptop)

    def test_metrics(self) -> None:
        prometheus = judge(self.examples[4])
        who = {"user": b"prometheus", "password": b"example"}
        self.assertIsInstance(
            self.verdict(prometheus, b"GET /_agent/metrics", **who), AnswerMetrics
        )
        self.assertRefused(
            prometheus, [b"GET /containers/json", b"GET /info", b"GET /events"], **who
        )
