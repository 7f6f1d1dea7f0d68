# -*- test-case-name: tests.policy.test_enforcement -*-
"""
The policy as one rule of the access decision (`proxy.decision.Rule`).

After authentication, the identity's profile judges the request: none for
an identity the policy does not list (it gets nothing), a 400 for a path a
restricted identity sends in a form other than the canonical one, a 403
whose message the docker CLI prints ("haven-agent: profile "ci" denies POST
/containers/create: no rule allows it") for what the profile denies, or in
log mode one log line and the request forwarded. The policy is swapped as
a whole on reload (`replace`), so a request is judged by the old policy or
the new one, never a mixture.
"""

from __future__ import annotations

from twisted.internet.defer import Deferred
from twisted.logger import Logger

from haven_agent.policy.body_rules import JUDGED_ROUTES, QUERY_ROUTES
from haven_agent.policy.policy_file import Policy
from haven_agent.policy.profiles import PING, Profile
from haven_agent.policy.route_rules import canonical_problem, request_route
from haven_agent.policy.scope import NARROWED, Inspect, Scope, ScopeError
from haven_agent.proxy.decision import Allow, JudgeBody, Lookup, Refuse, Rewrite
from haven_agent.proxy.http_head import RequestHead, first_query_value
from haven_agent.proxy.log_safe import printable_bytes

log = Logger(namespace="haven_agent.policy")


class PolicyRule:
    """
    Judges each allowed request by its identity's profile.
    """

    def __init__(
        self,
        policy: Policy,
        readOnlyIdle: float | None = None,
        inspect: Inspect | None = None,
    ) -> None:
        self.policy = policy
        #: Reads dockerd's JSON on a side connection (a container's labels).
        self.inspect = inspect
        #: --idle-timeout: how long the read-only profile's idle
        #: connections are kept.
        self.readOnlyIdle = readOnlyIdle

    def replace(self, policy: Policy) -> None:
        self.policy = policy

    def __call__(self, head: RequestHead, allowed: Allow) -> Refuse | JudgeBody | None:
        byCertificate = allowed.auth == "cert"
        profile = self.policy.profile_of(allowed.user, byCertificate)
        who = ("certificate " if byCertificate else "user ") + allowed.user
        request = f"{printable_bytes(head.method)} {printable_bytes(head.apiPath)}"
        if profile is None:
            if PING.matches(head.method, request_route(head)):
                return None
            return self._refuse(
                403, f"haven-agent: {who} has no profile in the policy", allowed
            )
        if profile.everything:
            return None
        problem = canonical_problem(head)
        if problem is not None:
            status, message = 400, (
                f"haven-agent: {problem}: profile {profile.name!r} takes paths "
                f"in canonical form only"
            )
        else:
            denial = profile.denial(head)
            if denial is None:
                answer = self._bodyRule(head, profile, who, request, allowed.user)
                if profile.scope is None or type(answer) is Refuse:
                    return answer
                return self._scoped(head, profile, who, request, allowed.user, answer)
            status, message = 403, (
                f'haven-agent: profile "{profile.name}" denies {request}: {denial}'
            )
        if profile.mode == "log":
            self._wouldDeny(who, request, status, message, profile, allowed.user)
            return None
        return self._refuse(status, message, allowed)

    def _bodyRule(
        self, head: RequestHead, profile: Profile, who: str, request: str, user: str
    ) -> JudgeBody | Refuse | None:
        """
        For a route whose body the profile's create rules judge, the check
        the gate runs once the body is in (for a build, whose body is its
        context, the query is judged at once).
        """
        route = request_route(head)
        rules = profile.create
        if rules is None:
            return None
        if route in QUERY_ROUTES:
            problem = rules.buildProblem(head.target)
            if problem is None:
                return None
            message = (
                f'haven-agent: profile "{profile.name}" denies {request}: {problem}'
            )
            if profile.mode == "log":
                self._wouldDeny(who, request, 403, message, profile, user)
                return None
            return Refuse(403, message, user=user)
        if route not in JUDGED_ROUTES:
            return None

        def check(body: bytes) -> str | None:
            if route == "/plugins/pull":
                problem = rules.pluginProblem(body)
            else:
                problem = rules.problem(route, body)
            if problem is None:
                return None
            message = (
                f'haven-agent: profile "{profile.name}" denies {request}: {problem}'
            )
            if profile.mode == "log":
                self._wouldDeny(who, request, 403, message, profile, user)
                return None
            return message

        return JudgeBody(check)

    @staticmethod
    def _wouldDeny(
        who: str, request: str, status: int, message: str, profile: Profile, user: str
    ) -> None:
        log.info(
            "{who} {request}: would be refused {status} ({message}); "
            "forwarded, profile {profile} is in log mode",
            who=who,
            request=request,
            status=status,
            message=message,
            profile=profile.name,
            identity=user,
            rule=message,
            event="policy would deny",
        )

    def _scoped(
        self,
        head: RequestHead,
        profile: Profile,
        who: str,
        request: str,
        user: str,
        body: JudgeBody | None,
    ) -> JudgeBody | Lookup | Rewrite | Refuse | None:
        """
        The scope's part: lists narrowed, one container's labels looked up,
        a create's body held to carry the label (see `scope`).
        """
        scope: Scope = profile.scope  # type: ignore[assignment]
        route = request_route(head) or ""

        def denied(problem: str, status: int = 403) -> Refuse | None:
            message = (
                f'haven-agent: profile "{profile.name}" denies {request}: {problem}'
            )
            if profile.mode == "log":
                self._wouldDeny(who, request, status, message, profile, user)
                return None
            return Refuse(status, message, user=user)

        if route in NARROWED:
            try:
                return Rewrite(scope.narrowed(head))
            except ScopeError as e:
                return denied(str(e), 400)
        if route == "/containers/create":
            first = body.check if body is not None else (lambda _: None)

            def check(raw: bytes) -> str | None:
                problem = scope.bodyProblem(raw)
                if problem is not None:
                    refusal = denied(problem)
                    return None if refusal is None else refusal.message
                return first(raw)

            return JudgeBody(check)
        parts = head.apiPath.split(b"/")
        if route.startswith(("/containers/{id}", "/exec/{id}")) and len(parts) > 2:
            target, isExec = parts[2].decode("utf-8", "replace"), route.startswith(
                "/exec/"
            )
        elif route == "/commit":
            named = first_query_value(head.target, b"container")
            if named is None:
                return denied("commit names no container")
            target, isExec = named.decode("utf-8", "replace"), False
        else:
            return body
        inspect = self.inspect
        if inspect is None:
            return denied("the scope cannot be checked here")

        def fetch() -> Deferred[Refuse | None]:
            checking = scope.check(inspect, target, isExec)
            checking.addCallback(
                lambda problem: None if problem is None else denied(problem)
            )
            return checking

        return Lookup(fetch, body)

    def terms(self, allowed: Allow) -> tuple[int | None, float | None]:
        """
        The connection terms of C{allowed}'s profile (the gate's
        C{terms}): its connection limit and idle timeout, None for the
        options' own.
        """
        profile = self.policy.profile_of(allowed.user, allowed.auth == "cert")
        if profile is None:
            return None, None
        idle = profile.idleTimeout
        if idle is None and profile.name == "read-only":
            idle = self.readOnlyIdle
        return profile.maxConnections, idle

    @staticmethod
    def _refuse(status: int, message: str, allowed: Allow) -> Refuse:
        return Refuse(status, message, user=allowed.user)
