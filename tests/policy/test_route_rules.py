"""
Tests for L{haven_agent.policy.route_rules}: rules read only as routes of the
engine's table, matched by route, and paths that are not in canonical form
found whatever their spelling.
"""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from haven_agent.policy.route_rules import (
    RouteRule,
    RuleError,
    canonical_problem,
    request_route,
)
from haven_agent.proxy.http_head import parse_head


def head(line: bytes):
    return parse_head(line + b"\r\nHost: docker\r\n\r\n")


class ParseTests(SynchronousTestCase):
    def test_good(self) -> None:
        for text, methods, template, prefix in [
            ("GET,HEAD /_ping", {b"GET", b"HEAD"}, "/_ping", False),
            ("get /containers/{id}/json", {b"GET"}, "/containers/{id}/json", False),
            ("* /libpod/*", None, "/libpod/", True),
            ("GET *", {b"GET"}, "*", True),
            ("POST /containers/*", {b"POST"}, "/containers/", True),
            ("GET /_agent/metrics", {b"GET"}, "/_agent/metrics", False),
        ]:
            rule = RouteRule.parse(text)
            self.assertEqual(
                (
                    None if rule.methods is None else set(rule.methods),
                    rule.template,
                    rule.prefix,
                ),
                (methods, template, prefix),
                text,
            )

    def test_unknown_is_an_error(self) -> None:
        """
        What is not the engine's route (a regular expression, a typo, a
        placeholder of the wrong kind) is refused, not a rule that matches
        nothing.
        """
        for text in [
            "GET /containers/.*",
            "GET /versions",
            "GET /containers/{name}/json",
            "GET /images/{id}/json",
            "BREW /_ping",
            "/_ping",
            "GET /_ping extra",
            "GET containers/json",
            "GET /nothing/*",
        ]:
            with self.assertRaises(RuleError, msg=text):
                RouteRule.parse(text)
        with self.assertRaises(RuleError):
            RouteRule.parse(["GET", "/_ping"])  # type: ignore[arg-type]


class MatchTests(SynchronousTestCase):
    def test_by_route(self) -> None:
        """
        A request matches by the route dockerd's router gives it: any
        version prefix, any spelling of the same path.
        """
        rule = RouteRule.parse("GET /containers/{id}/json")
        for line in [
            b"GET /containers/abc/json HTTP/1.1",
            b"GET /v1.41/containers/abc/json HTTP/1.1",
            b"GET /v1.41./containers/abc/json HTTP/1.1",
            b"GET /v1.41.0/containers/abc/json?size=1 HTTP/1.1",
            b"GET /containers/json/json HTTP/1.1",
        ]:
            request = head(line)
            self.assertTrue(rule.matches(request.method, request_route(request)), line)
        for line in [
            b"GET /containers/json HTTP/1.1",
            b"POST /containers/abc/json HTTP/1.1",
            b"GET /containers/abc/logs HTTP/1.1",
            b"GET /images/abc/json HTTP/1.1",
        ]:
            request = head(line)
            self.assertFalse(rule.matches(request.method, request_route(request)), line)

    def test_prefix_and_any(self) -> None:
        libpod = RouteRule.parse("* /libpod/*")
        anyGet = RouteRule.parse("GET *")
        request = head(b"DELETE /v4.0.0/libpod/containers/abc HTTP/1.1")
        self.assertTrue(libpod.matches(request.method, request_route(request)))
        self.assertFalse(anyGet.matches(request.method, request_route(request)))
        unknown = head(b"GET /no/such/route HTTP/1.1")
        self.assertTrue(anyGet.matches(unknown.method, request_route(unknown)))
        self.assertFalse(libpod.matches(unknown.method, request_route(unknown)))


class CanonicalTests(SynchronousTestCase):
    def test_canonical(self) -> None:
        for target in [
            b"/containers/json",
            b"/v1.41/containers/json?all=1&filters=%7B%7D",
            b"/containers/a%62c/json",
            b"/images/registry.example:5000/team/app:1.2/json",
            b"http://docker/containers/json",
            b"/",
        ]:
            self.assertIsNone(
                canonical_problem(head(b"GET " + target + b" HTTP/1.1")), target
            )

    def test_not_canonical(self) -> None:
        """
        Every spelling dockerd would route elsewhere than it reads, or not
        at all, is found: dot segments (plain or encoded), empty segments,
        an encoded slash or backslash, a trailing slash.
        """
        for target in [
            b"/containers/../containers/json",
            b"/containers/./json",
            b"/containers/%2e%2e/containers/json",
            b"/containers/%2E/json",
            b"//containers/json",
            b"/containers//json",
            b"/containers%2Fjson",
            b"/containers%2fabc%2fjson",
            b"/containers%5Cjson",
            b"/containers/json/",
            b"/v1.41/../containers/json",
            b"http://docker//containers/json",
        ]:
            self.assertIsNotNone(
                canonical_problem(head(b"GET " + target + b" HTTP/1.1")), target
            )
