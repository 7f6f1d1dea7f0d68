# -*- test-case-name: tests.policy.test_profiles -*-
"""
A profile: what the identities given it may ask, and what happens to the
rest.

A request passes when a rule of `allow` matches it and no rule of `deny`
does (deny beats allow; nothing allowed is denied: default deny). Query
rules then hold the parameters named: `query."POST
/containers/{id}/kill".signal = ["USR1", "HUP"]` lets a kill through only
with one of those signals, read as dockerd's Go server reads a query: the
first of repeated parameters counts, and a form-encoded body could override
it, so such a request with a body is refused. `GET,HEAD /_ping` is always
allowed, since every client pings first.

In "log" mode a request the profile would deny is forwarded and logged
with the rule that would have denied it: the way to learn what a client
needs before enforcing a profile.

The built-in profiles: `full` (everything), `read-only` (the read-only
account's route list, `proxy.read_only`), `metrics` (only
`GET /_agent/metrics`). A profile may also cap the connections each of
its identities holds and close their idle keep-alive connections.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

from attrs import field, frozen

from haven_agent.policy.body_rules import CreateRules
from haven_agent.policy.route_rules import RouteRule, request_route
from haven_agent.policy.scope import Scope
from haven_agent.proxy.http_head import RequestHead, first_query_value
from haven_agent.proxy.read_only import read_only_refusal

MODES = ("enforce", "log")
PING = RouteRule.parse("GET,HEAD /_ping")


@frozen
class QueryRule:
    """
    On requests matching C{route}, the parameter C{name} must be present
    and its first value one of C{values}.
    """

    route: RouteRule
    name: str
    values: frozenset[str]

    def problem(self, head: RequestHead) -> str | None:
        found = first_query_value(head.target, self.name.encode("utf-8"))
        if found is None:
            return f"query parameter {self.name} is required"
        if found.decode("utf-8", "replace") not in self.values:
            return f"query parameter {self.name}={found.decode('utf-8', 'replace')}"
        if head.framing.chunked or head.framing.length:
            # Go's ParseForm lets a form body override the query.
            return f"a body beside query parameter {self.name}"
        return None


@frozen
class Profile:
    """
    What its identities may ask. C{check} replaces the rules for a built-in
    profile that has a check of its own (the read-only route list).
    """

    name: str
    allow: tuple[RouteRule, ...] = ()
    deny: tuple[RouteRule, ...] = ()
    query: tuple[QueryRule, ...] = ()
    mode: str = "enforce"
    #: What bodies of the routes that create or change containers must
    #: hold to (`body_rules`), if the profile says.
    create: CreateRules | None = None
    #: The most connections one identity of the profile may hold, and the
    #: seconds an idle keep-alive connection of it is kept; None for the
    #: options' (--max-connections-per-user; --idle-timeout, applied to
    #: the read-only profile only).
    maxConnections: int | None = None
    idleTimeout: float | None = None
    #: The containers its identities may touch (`scope`), if limited.
    scope: Scope | None = None
    #: Everything allowed: no rule to check, any path form.
    everything: bool = False
    check: Callable[[RequestHead], str | None] | None = field(default=None, eq=False)

    def denial(self, head: RequestHead) -> str | None:
        """
        Why this profile denies C{head} (the rule, as written), or None.
        """
        if self.everything:
            return None
        method = head.method
        route = request_route(head)
        if PING.matches(method, route):
            return None
        if self.check is not None:
            return self.check(head)
        for rule in self.deny:
            if rule.matches(method, route):
                return f'denied by "{rule.text}"'
        if not any(rule.matches(method, route) for rule in self.allow):
            return "no rule allows it"
        for queryRule in self.query:
            if queryRule.route.matches(method, route):
                problem = queryRule.problem(head)
                if problem is not None:
                    return problem
        return None


FULL = Profile("full", everything=True)
READ_ONLY = Profile("read-only", check=read_only_refusal)
METRICS = Profile("metrics", allow=(RouteRule.parse("GET /_agent/metrics"),))
BUILT_IN: Mapping[str, Profile] = {p.name: p for p in (FULL, READ_ONLY, METRICS)}
