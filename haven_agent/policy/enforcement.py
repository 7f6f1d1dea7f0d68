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

    def __call__(
        self, head: RequestHead, allowed: Allow
    ) -> Refuse | JudgeBody | Lookup | Rewrite | None:
        byCertificate = allowed.auth == "cert"
        profile = self.policy.profile_of(allowed.user, byCertificate)
        who = ("certificate " if byCertificate else "user ") + allowed.user
        if profile is None:
            if PING.matches(head.method, request_route(head)):
                return None
            return Refuse(
                403,
                f"haven-agent: {who} has no profile in the policy",
                user=allowed.user,
            )
        if profile.everything:
            return None
        judging = _Judging(profile, who, allowed.user, head)
        problem = canonical_problem(head)
        if problem is not None:
            return judging.refuse(
                f"haven-agent: {problem}: profile {profile.name!r} takes paths "
                f"in canonical form only",
                400,
            )
        denial = profile.denial(head)
        if denial is not None:
            return judging.deny(denial)
        answer = self._bodyRule(head, judging)
        if profile.scope is None or type(answer) is Refuse:
            return answer
        return self._scoped(head, judging, answer)  # type: ignore[arg-type]

    @staticmethod
    def _bodyRule(head: RequestHead, judging: _Judging) -> JudgeBody | Refuse | None:
        """
        For a route whose body the profile's create rules judge, the check
        the gate runs once the body is in (for a build, whose body is its
        context, the query is judged at once).
        """
        route = request_route(head)
        rules = judging.profile.create
        if rules is None:
            return None
        if route in QUERY_ROUTES:
            problem = rules.buildProblem(head.target)
            return None if problem is None else judging.deny(problem)
        if route not in JUDGED_ROUTES:
            return None

        def check(body: bytes) -> str | None:
            if route == "/plugins/pull":
                problem = rules.pluginProblem(body)
            else:
                problem = rules.problem(route, body)
            return None if problem is None else judging.bodyDenial(problem)

        return JudgeBody(check)

    def _scoped(
        self, head: RequestHead, judging: _Judging, body: JudgeBody | None
    ) -> JudgeBody | Lookup | Rewrite | Refuse | None:
        """
        The scope's part: lists narrowed, one container's labels looked up,
        a create's body held to carry the label (see `scope`).
        """
        scope: Scope = judging.profile.scope  # type: ignore[assignment]
        route = request_route(head) or ""
        if route in NARROWED:
            try:
                return Rewrite(scope.narrowed(head))
            except ScopeError as e:
                return judging.deny(str(e), 400)
        if route == "/containers/create":
            first = body.check if body is not None else (lambda _: None)

            def check(raw: bytes) -> str | None:
                problem = scope.bodyProblem(raw)
                if problem is not None:
                    return judging.bodyDenial(problem)
                return first(raw)

            return JudgeBody(check)
        parts = head.apiPath.split(b"/")
        if route.startswith(("/containers/{id}", "/exec/{id}")) and len(parts) > 2:
            target = parts[2].decode("utf-8", "replace")
            isExec = route.startswith("/exec/")
        elif route == "/commit":
            named = first_query_value(head.target, b"container")
            if named is None:
                return judging.deny("commit names no container")
            target, isExec = named.decode("utf-8", "replace"), False
        else:
            return body
        inspect = self.inspect
        if inspect is None:
            return judging.deny("the scope cannot be checked here")

        def fetch() -> Deferred[Refuse | None]:
            checking = scope.check(inspect, target, isExec)
            checking.addCallback(
                lambda problem: None if problem is None else judging.deny(problem)
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


class _Judging:
    """
    One request being judged by a profile: how each refusal is worded, and
    what log mode makes of it (one line, and the request forwarded).
    """

    def __init__(self, profile: Profile, who: str, user: str, head: RequestHead):
        self.profile = profile
        self._who = who
        self._user = user
        self._request = (
            f"{printable_bytes(head.method)} {printable_bytes(head.apiPath)}"
        )

    def deny(self, problem: str, status: int = 403) -> Refuse | None:
        """
        The refusal naming the profile, the request and C{problem}; None in
        log mode.
        """
        return self.refuse(
            f'haven-agent: profile "{self.profile.name}" denies {self._request}: '
            f"{problem}",
            status,
        )

    def bodyDenial(self, problem: str) -> str | None:
        """
        A body check's answer: the refusal's message, or None (log mode).
        """
        refusal = self.deny(problem)
        return None if refusal is None else refusal.message

    def refuse(self, message: str, status: int) -> Refuse | None:
        if self.profile.mode == "log":
            log.info(
                "{who} {request}: would be refused {status} ({message}); "
                "forwarded, profile {profile} is in log mode",
                who=self._who,
                request=self._request,
                status=status,
                message=message,
                profile=self.profile.name,
                identity=self._user,
                rule=message,
                event="policy would deny",
            )
            return None
        return Refuse(status, message, user=self._user)
