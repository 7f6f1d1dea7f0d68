# -*- test-case-name: tests.policy.test_route_rules -*-
"""
The routes a profile names: `"GET,HEAD /containers/{id}/json"`.

A rule is methods and a route template of the engine's route table
(`proxy.engine_routes`), so that it means exactly what dockerd's router
means: a template that is not in the table is an error when the policy is
loaded, not a rule that silently matches nothing. `*` as the methods is any
method; `*` as the route is any path; a template ending in `*` is a prefix
of templates (`/containers/*`, `/libpod/*`). A request is matched by its
route, as `route_of` finds it on the percent-decoded path without the
`/vX.Y` prefix; the bytes forwarded are never changed.

Hand-written regular expressions over the raw path are what socket proxies'
users keep getting wrong (`/containers/json` matched by `/containers/.*`,
`/v1.41/..` escaping a prefix): here a path that is not in canonical form
(dot segments, `//`, an encoded `/`, a trailing `/`) is refused to any
restricted identity, so it cannot be routed anywhere but where it says.
"""

from __future__ import annotations

from urllib.parse import unquote_to_bytes

from attrs import frozen

from haven_agent.proxy.engine_routes import ENGINE_ROUTES, route_of
from haven_agent.proxy.http_head import RequestHead, normalize_path

#: The agent's own routes a policy may name.
AGENT_ROUTES = {
    b"/_agent/metrics": "/_agent/metrics",
    b"/_agent/attach-tickets": "/_agent/attach-tickets",
}
#: Every template a rule may name: the engine's and the agent's.
TEMPLATES = frozenset(t for _, t in ENGINE_ROUTES) | frozenset(AGENT_ROUTES.values())
METHODS = frozenset((b"GET", b"HEAD", b"POST", b"PUT", b"DELETE", b"OPTIONS", b"PATCH"))


class RuleError(ValueError):
    """
    A rule that cannot be read, with why.
    """


def request_route(head: RequestHead) -> str | None:
    """
    The template of the route C{head} reaches, or None for none.
    """
    path = head.apiPath
    agent = AGENT_ROUTES.get(path)
    if agent is not None:
        return agent
    return route_of(head.method, path)


def canonical_problem(head: RequestHead) -> str | None:
    """
    Why C{head}'s path is not in canonical form, or None when it is: the
    form in which what a rule matches is what dockerd serves.
    """
    target = head.target
    if target.startswith((b"http://", b"https://")):
        slash = target.find(b"/", target.find(b"//") + 2)
        target = target[slash:] if slash >= 0 else b"/"
    if b"#" in target:
        # A client never sends a fragment; dockerd would keep it in the path.
        return "a # in the request target"
    raw = target.split(b"?", 1)[0]
    if b"%2f" in raw.lower() or b"%5c" in raw.lower():
        return "an encoded / or \\ in the path"
    decoded = unquote_to_bytes(raw)
    if decoded != normalize_path(decoded):
        return "dot segments, an empty segment or a trailing / in the path"
    return None


@frozen
class RouteRule:
    """
    One rule: C{methods} (None: any) and a template, a prefix of
    templates (C{prefix}), or any route (template C{"*"}).
    """

    text: str
    methods: frozenset[bytes] | None
    template: str
    prefix: bool

    @classmethod
    def parse(cls, text: str) -> RouteRule:
        """
        @raise RuleError: for anything but "METHODS TEMPLATE" with known
            methods and a template of the route table.
        """
        if not isinstance(text, str):
            raise RuleError(f"a route rule is a string, not {text!r}")
        parts = text.split()
        if len(parts) != 2:
            raise RuleError(
                f"{text!r} is not a route rule: write methods and a route, "
                f'such as "GET,HEAD /containers/{{id}}/json"'
            )
        methodsText, template = parts
        methods: frozenset[bytes] | None = None
        if methodsText != "*":
            names = methodsText.upper().split(",")
            unknown = [m for m in names if m.encode() not in METHODS]
            if unknown:
                raise RuleError(f"{text!r}: unknown method {unknown[0]!r}")
            methods = frozenset(m.encode() for m in names)
        if template == "*":
            return cls(text, methods, "*", True)
        if template.endswith("*"):
            stem = template[:-1]
            if not stem.startswith("/") or not any(
                t.startswith(stem) for t in TEMPLATES
            ):
                raise RuleError(
                    f"{text!r}: no route of the engine starts with {stem!r}"
                )
            return cls(text, methods, stem, True)
        if template not in TEMPLATES:
            raise RuleError(
                f"{text!r}: {template!r} is not a route of the engine (see "
                f"docs/policy.md for the table; {{id}} is one path segment, "
                f"{{name}} an image, plugin, network or volume name)"
            )
        return cls(text, methods, template, False)

    def matches(self, method: bytes, route: str | None) -> bool:
        if self.methods is not None and method not in self.methods:
            return False
        if self.template == "*":
            return True
        if route is None:
            return False
        if self.prefix:
            return route.startswith(self.template)
        return route == self.template
