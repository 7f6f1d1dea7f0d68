"""
Tests for L{haven_agent.policy.scope}: lists narrowed by rewriting their
filters (replacing, since Go reads the first), one container's labels
looked up before its request is let through, and a create held to carry the
label; in the access decision with a stand-in for dockerd's answers.
"""

from __future__ import annotations

import json
from base64 import b64encode
from urllib.parse import parse_qs, urlsplit

from twisted.internet.defer import fail, succeed
from twisted.trial.unittest import SynchronousTestCase

from haven_agent.policy.enforcement import PolicyRule
from haven_agent.policy.policy_file import read_policy
from haven_agent.policy.scope import Scope, ScopeError
from haven_agent.proxy.auth import BasicAuthChecker
from haven_agent.proxy.decision import (
    AccessDecision,
    Allow,
    AllowAfterBody,
    AllowRewritten,
    Identity,
)
from haven_agent.proxy.http_head import parse_head

SCOPE = Scope("com.example.owner", "ci")
ADMIN = b"Authorization: Basic " + b64encode(b"admin:pw") + b"\r\n"


def head(line: bytes, auth: bytes = b""):
    return parse_head(line + b" HTTP/1.1\r\nHost: docker\r\n" + auth + b"\r\n")


def filters_of(raw: bytes) -> tuple[list[str], dict]:
    target = raw.split(b"\r\n", 1)[0].split(b" ")[1].decode()
    query = parse_qs(urlsplit(target).query)
    return query.get("filters", []), query


class NarrowTests(SynchronousTestCase):
    def test_label_added_and_first_kept(self) -> None:
        raw = SCOPE.narrowed(
            head(
                b'GET /v1.41/containers/json?all=1&filters={"status":["running"]}'
                b'&filters={"label":["x=y"]}'
            )
        )
        values, query = filters_of(raw)
        self.assertEqual(len(values), 1)
        self.assertEqual(
            json.loads(values[0]),
            {"status": ["running"], "label": ["com.example.owner=ci"]},
        )
        self.assertEqual(query["all"], ["1"])
        self.assertTrue(raw.endswith(b"\r\nHost: docker\r\n\r\n"))

    def test_map_form_and_encoded_name(self) -> None:
        raw = SCOPE.narrowed(
            head(
                b"GET /events?since=1&%66ilters="
                b"%7B%22label%22%3A%7B%22a%3Db%22%3Atrue%7D%7D"
            )
        )
        values, query = filters_of(raw)
        self.assertEqual(
            json.loads(values[0]), {"label": ["a=b", "com.example.owner=ci"]}
        )
        self.assertNotIn("%66ilters", raw.decode())
        self.assertEqual(query["since"], ["1"])

    def test_no_filters(self) -> None:
        values, _ = filters_of(SCOPE.narrowed(head(b"POST /containers/prune")))
        self.assertEqual(json.loads(values[0]), {"label": ["com.example.owner=ci"]})

    def test_bad_filters(self) -> None:
        for target in (
            b"/containers/json?filters=nope",
            b"/containers/json?filters=[1]",
        ):
            with self.assertRaises(ScopeError):
                SCOPE.narrowed(head(b"GET " + target))


class ContainerTests(SynchronousTestCase):
    def test_holds(self) -> None:
        self.assertTrue(
            SCOPE.holds({"Config": {"Labels": {"com.example.owner": "ci"}}})
        )
        for answer in (
            {"Config": {"Labels": {"com.example.owner": "cd"}}},
            {"Config": {"Labels": None}},
            {"Config": {}},
            [],
        ):
            self.assertFalse(SCOPE.holds(answer), answer)

    def test_check(self) -> None:
        asked = []
        answers = {
            b"/exec/e1/json": {"ContainerID": "c1"},
            b"/containers/c1/json": {"Config": {"Labels": {"com.example.owner": "ci"}}},
            b"/containers/other/json": {"Config": {"Labels": {}}},
        }

        def inspect(path: bytes):
            asked.append(path)
            if path in answers:
                return succeed(answers[path])
            return fail(ValueError("dockerd answered 404"))

        self.assertIsNone(self.successResultOf(SCOPE.check(inspect, "c1", False)))
        self.assertIsNone(self.successResultOf(SCOPE.check(inspect, "e1", True)))
        self.assertIn(
            "not labelled", self.successResultOf(SCOPE.check(inspect, "other", False))
        )
        self.assertIn(
            "not in scope", self.successResultOf(SCOPE.check(inspect, "gone", False))
        )
        self.assertEqual(
            asked[:3],
            [b"/containers/c1/json", b"/exec/e1/json", b"/containers/c1/json"],
        )
        self.successResultOf(SCOPE.check(inspect, "a/../b", False))
        self.assertEqual(asked[-1], b"/containers/a%2F..%2Fb/json")

    def test_body(self) -> None:
        self.assertIsNone(
            SCOPE.bodyProblem(b'{"Image":"x","Labels":{"com.example.owner":"ci"}}')
        )
        for body in (
            b'{"Image":"x"}',
            b'{"Image":"x","Labels":{"com.example.owner":"cd"}}',
            b'{"Labels":{"com.example.owner":"cd"},"labels":{"com.example.owner":"ci"}}',
        ):
            self.assertIsNotNone(SCOPE.bodyProblem(body), body)


POLICY = """
version = 1
[identities]
admin = "ci"
[profiles.ci]
allow = ["GET *", "POST /containers/create", "POST /containers/{id}/start",
         "POST /containers/prune", "POST /exec/{id}/start"]
scope = { label = "com.example.owner=ci" }
"""


class DecisionTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.answers = {
            b"/containers/mine/json": {
                "Config": {"Labels": {"com.example.owner": "ci"}}
            },
            b"/containers/theirs/json": {"Config": {"Labels": {}}},
            b"/exec/e1/json": {"ContainerID": "theirs"},
        }

        def inspect(path: bytes):
            if path in self.answers:
                return succeed(self.answers[path])
            return fail(ValueError("404"))

        policy = read_policy(POLICY)
        checker = BasicAuthChecker("admin", "pw", lambda f, *a: succeed(f(*a)))
        self.judge = AccessDecision(
            checker, rules=(PolicyRule(policy, inspect=inspect),)
        )

    def verdict(self, line: bytes):
        request = head(line, ADMIN)
        who = Identity("10.0.0.9")
        now = self.judge.verdictNow(request, who)
        if now.__class__.__name__ != "NotKnownYet":
            return now
        return self.successResultOf(self.judge.verdict(request, who))

    def test_objects(self) -> None:
        self.assertIsInstance(self.verdict(b"GET /containers/mine/json"), Allow)
        self.assertIsInstance(self.verdict(b"POST /containers/mine/start"), Allow)
        for line in (
            b"GET /containers/theirs/json",
            b"POST /containers/theirs/start",
            b"GET /containers/gone/logs",
            b"POST /exec/e1/start",
        ):
            refused = self.verdict(line)
            self.assertEqual(refused.status, 403, line)
            self.assertIn('profile "ci" denies', refused.message)

    def test_lists_and_create(self) -> None:
        listed = self.verdict(b"GET /containers/json?all=1")
        self.assertIsInstance(listed, AllowRewritten)
        values, _ = filters_of(listed.head.raw)
        self.assertEqual(json.loads(values[0]), {"label": ["com.example.owner=ci"]})
        self.assertIsInstance(self.verdict(b"GET /events"), AllowRewritten)
        self.assertIsInstance(self.verdict(b"POST /containers/prune"), AllowRewritten)
        created = self.verdict(b"POST /containers/create")
        self.assertIsInstance(created, AllowAfterBody)
        self.assertIn("must carry the label", created.check(b'{"Image":"x"}'))
        self.assertIsNone(
            created.check(b'{"Image":"x","Labels":{"com.example.owner":"ci"}}')
        )
        # Not scoped: images carry no owner.
        self.assertIsInstance(self.verdict(b"GET /images/json"), Allow)
