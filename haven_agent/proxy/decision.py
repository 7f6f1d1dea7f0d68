# -*- test-case-name: tests.proxy.test_decision -*-
"""
The access decision: may this request head pass, and as whom?

One pure object answers it for every request, from the head and who is on
the other end of the connection (its address, its client certificate's
name), and nothing else: no transport, no reactor. The authentication modes
are written here once (password, client certificate, or both), then the
rules of the account that authenticated (the read-only account's route
list) are applied in order. A verdict is an `Allow` (who, how), a `Refuse`
(status, message, headers, and how long to wait before answering, from the
failure throttle) or `HEALTH` (the agent answers itself).

Most verdicts are known at once: a plain password, a remembered bcrypt
verdict, a certificate. `verdictNow` gives those without a Deferred and
says `NOT_KNOWN_YET` when bcrypt must run in a thread first, which
`verdict` does. A later rule set (per-credential policy) is one more
`Rule` in the list each account's verdict passes through.

`GET /_agent/metrics` is judged like any request (authenticated, then the
account's rules: the read-only account's route list does not hold it), and
once allowed it is an `AnswerMetrics`: the agent answers it itself.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Protocol

from attrs import evolve, frozen
from twisted.internet.defer import Deferred, succeed

from haven_agent.proxy.auth import NOT_KNOWN_YET, BasicAuthChecker, NotKnownYet
from haven_agent.proxy.health import HEALTH_PATH
from haven_agent.proxy.http_head import RequestHead, parse_head
from haven_agent.proxy.log_safe import printable_bytes
from haven_agent.proxy.read_only import read_only_refusal
from haven_agent.proxy.terminal import (
    TICKETS_PATH,
    TerminalAccess,
    is_websocket_upgrade,
)
from haven_agent.proxy.throttle import FailureThrottle

AUTH_MODES = ("password", "cert", "both")
#: How each mode authenticates, as the access log's `auth` field says it.
AUTH_METHODS = {"password": "password", "cert": "cert", "both": "cert+password"}
AUTHENTICATE = (("WWW-Authenticate", 'Basic realm="haven-agent"'),)
READ_METHODS = (b"GET", b"HEAD")
METRICS_PATH = b"/_agent/metrics"


@frozen
class Identity:
    """
    Who is on the other end of a connection, before any request: the
    client's host (for the throttle) and its certificate's name, if any.
    """

    host: str
    certificate: str | None = None


@frozen
class Allow:
    """
    Let the request through to dockerd, as C{user}, authenticated by C{auth}.
    """

    user: str
    auth: str
    readOnly: bool = False


@frozen
class Refuse:
    """
    Answer C{status} with C{message} instead, after C{delay} seconds;
    C{user} is who was refused, when they authenticated.
    """

    status: int
    message: str
    headers: tuple[tuple[str, str], ...] = ()
    delay: float = 0.0
    user: str | None = None
    #: Why authentication failed (a 401), as the metrics count it.
    reason: str = ""


@frozen
class JudgeBody:
    """
    A rule's answer for a request whose body decides: C{check} gives the
    refusal's message for a body it refuses, None for one it lets through.
    """

    check: Callable[[bytes], str | None]


@frozen
class Lookup:
    """
    A rule's answer that needs dockerd first (a container's labels):
    C{fetch} fires with the refusal or None, and when None, C{then} is the
    rule's answer (a L{JudgeBody}, or None).
    """

    fetch: Callable[[], Deferred[Refuse | None]]
    then: JudgeBody | None = None


@frozen
class Rewrite:
    """
    A rule's answer that lets the request through with its head replaced
    by C{raw} (a list narrowed to a profile's scope).
    """

    raw: bytes


@frozen
class AllowRewritten:
    """
    Let the request through as C{allowed}, but send C{head} in its place.
    """

    allowed: Allow
    head: RequestHead


@frozen
class AllowAfterBody:
    """
    Let the request through as C{allowed} once its whole body (read by the
    gate, at most a few MiB) passes C{check}; else 403 with its message.
    """

    allowed: Allow
    check: Callable[[bytes], str | None]


@frozen
class AnswerMetrics:
    """
    The agent's metrics, for C{allowed}: answered by the agent.
    """

    allowed: Allow


@frozen
class AnswerTicket:
    """
    An attach ticket for C{allowed} (see `terminal`): answered by the agent.
    """

    allowed: Allow


@frozen
class AnswerHealth:
    """
    The agent's own health check: answered by the agent, without credentials.
    """


HEALTH = AnswerHealth()

Verdict = (
    Allow
    | Refuse
    | AnswerHealth
    | AnswerMetrics
    | AnswerTicket
    | AllowAfterBody
    | AllowRewritten
)


class Rule(Protocol):
    """
    One rule an allowed request must also pass: None to let it, or the
    refusal.
    """

    def __call__(
        self, head: RequestHead, allowed: Allow
    ) -> Refuse | JudgeBody | Lookup | Rewrite | None: ...


def read_only_rule(head: RequestHead, allowed: Allow) -> Refuse | None:
    """
    The read-only account gets its route list and nothing else.
    """
    if not allowed.readOnly:
        return None
    refusal = read_only_refusal(head)
    if refusal is None:
        return None
    return Refuse(
        403,
        f"user {allowed.user} is read-only: {refusal} "
        f"({printable_bytes(head.method)} {printable_bytes(head.apiPath)})",
        user=allowed.user,
    )


DEFAULT_RULES: tuple[Rule, ...] = (read_only_rule,)


class AccessDecision:
    """
    Turns (request head, identity) into a verdict.

    @param throttle: counts failed authentications per host and says how
        long to hold the next answer; None for no throttle.
    """

    def __init__(
        self,
        checker: BasicAuthChecker,
        authMode: str = "password",
        throttle: FailureThrottle | None = None,
        rules: Sequence[Rule] = DEFAULT_RULES,
        terminal: TerminalAccess | None = None,
    ) -> None:
        if authMode not in AUTH_MODES:
            raise ValueError(f"auth mode must be one of {', '.join(AUTH_MODES)}")
        self._checker = checker
        self._mode = authMode
        self._auth = AUTH_METHODS[authMode]
        self._throttle = throttle
        self._rules = tuple(rules)
        self._terminal = terminal if terminal is not None and terminal.active else None
        #: The Allow of each user name seen (verdicts are immutable).
        self._allows: dict[str, Allow] = {}

    @property
    def usesCertificates(self) -> bool:
        """
        Does a verdict need the client certificate's name in the identity?
        """
        return self._mode != "password"

    def verdictNow(self, head: RequestHead, who: Identity) -> Verdict | NotKnownYet:
        """
        The verdict when it is known without waiting, else L{NOT_KNOWN_YET}
        (then ask L{verdict}).
        """
        if head.method in READ_METHODS and head.path == HEALTH_PATH:
            return HEALTH
        if self._terminal is not None and is_websocket_upgrade(head):
            early = self._terminal.verdict(head, who.host)
            if type(early) is tuple:
                user, how = early
                return Allow(user, how)
            if early is not None:
                return Refuse(403, f"haven-agent: {early}")
        if self._mode == "cert":
            return self._judge(head, who, who.certificate)
        user = self._checker.checkNow(head.first(b"authorization"))
        if user is NOT_KNOWN_YET:
            return NOT_KNOWN_YET
        return self._judge(head, who, user)  # type: ignore[arg-type]

    def verdict(self, head: RequestHead, who: Identity) -> Deferred[Verdict]:
        """
        The verdict, once known (bcrypt runs in a thread when it must).
        """
        known = self.verdictNow(head, who)
        if known is not NOT_KNOWN_YET:
            return succeed(known)  # type: ignore[arg-type]
        if self._mode == "cert":
            checking: Deferred[str | None] = succeed(who.certificate)
        else:
            checking = self._checker.check(head.first(b"authorization"))
        checking.addCallback(lambda user: self._judge(head, who, user, resolve=True))
        return checking

    def _judge(
        self, head: RequestHead, who: Identity, user: str | None, resolve: bool = False
    ) -> Any:
        """
        The verdict for C{user} (who the password or certificate says, or
        None), by the mode: with "both", a right password counts only over
        a connection with a client certificate.
        """
        if self._mode == "both" and who.certificate is None:
            user = None
        if user is None:
            return self._unauthenticated(head, who)
        allowed = self._allows.get(user)
        if allowed is None:
            allowed = Allow(user, self._auth, self._checker.isReadOnly(user))
            if len(self._allows) < 1024:
                self._allows[user] = allowed
        # The usual case, every rule letting the request pass at once,
        # without the general walk below.
        for index, rule in enumerate(self._rules):
            answer = rule(head, allowed)
            if answer is not None:
                return self._rulesFrom(
                    index, head, allowed, None, None, resolve, answer
                )
        path = head.path
        if path == METRICS_PATH or path == TICKETS_PATH:
            return self._final(head, allowed, None, None)
        return allowed

    def _rulesFrom(
        self,
        start: int,
        head: RequestHead,
        allowed: Allow,
        body: JudgeBody | None,
        raw: bytes | None,
        resolve: bool,
        first: Any = None,
    ) -> Any:
        """
        The rules from C{start} on (C{first}: the answer of rule C{start},
        when it was asked already): the verdict, L{NOT_KNOWN_YET} when a
        rule must ask dockerd first and C{resolve} is false, or a Deferred
        of the verdict when it is true.
        """
        rules = self._rules
        for index in range(start, len(rules)):
            if first is not None and index == start:
                answer = first
            else:
                answer = rules[index](head, allowed)
            if answer is None:
                continue
            kind = type(answer)
            if kind is JudgeBody:
                body = answer  # type: ignore[assignment]
                continue
            if kind is Rewrite:
                raw = answer.raw  # type: ignore[union-attr]
                continue
            if kind is Lookup:
                if not resolve:
                    return NOT_KNOWN_YET
                lookup: Lookup = answer  # type: ignore[assignment]
                asking = lookup.fetch()
                return asking.addCallback(
                    self._looked, index + 1, head, allowed, lookup.then or body, raw
                )
            return self._refusal(answer, allowed)  # type: ignore[arg-type]
        return self._final(head, allowed, body, raw)

    def _looked(
        self,
        refusal: Refuse | None,
        start: int,
        head: RequestHead,
        allowed: Allow,
        body: JudgeBody | None,
        raw: bytes | None,
    ) -> Any:
        if refusal is not None:
            return self._refusal(refusal, allowed)
        return self._rulesFrom(start, head, allowed, body, raw, True)

    @staticmethod
    def _refusal(refusal: Refuse, allowed: Allow) -> Refuse:
        return refusal if refusal.user else evolve(refusal, user=allowed.user)

    def _final(
        self,
        head: RequestHead,
        allowed: Allow,
        body: JudgeBody | None,
        raw: bytes | None,
    ) -> Verdict:
        if head.path == METRICS_PATH and head.method == b"GET":
            return AnswerMetrics(allowed)
        if head.path == TICKETS_PATH and head.method == b"POST":
            if self._terminal is None or self._terminal.tickets is None:
                return Refuse(404, "attach tickets are not enabled (--attach-tickets)")
            return AnswerTicket(allowed)
        if body is not None:
            return AllowAfterBody(allowed, body.check)
        if raw is not None:
            return AllowRewritten(allowed, parse_head(raw))
        return allowed

    def _unauthenticated(self, head: RequestHead, who: Identity) -> Refuse:
        if self._mode != "password" and who.certificate is None:
            message = "a client certificate signed by the agent's client CA is required"
            reason = "no_client_certificate"
        elif head.first(b"authorization") is None:
            message = "authentication required: send HTTP Basic credentials"
            reason = "no_credentials"
        else:
            message = "wrong user name or password"
            reason = "wrong_credentials"
        throttle = self._throttle
        delay = throttle.failed(who.host) if throttle is not None else 0.0
        return Refuse(401, message, AUTHENTICATE, max(delay, 0.0), reason=reason)
