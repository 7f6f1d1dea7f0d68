# -*- test-case-name: tests.reporting.test_reporter -*-
"""
The services that report this node to the Haven master every interval.

Reporting must never hurt the agent's real job (the Docker API proxy) nor the
master: the Java agent had no timeouts towards the master, and the Python
agent's retry never fired. So a report here

  - starts right after start-up (plus a small random delay, so a fleet
    restarted at once does not report in lockstep), then every C{interval};
  - never overlaps the previous one: a tick that finds one running asks for a
    single follow-up, never a backlog;
  - never raises into the C{LoopingCall} (which would stop it for good);
  - times out its POST, and on failure retries with capped exponential
    backoff and jitter, each retry collecting a FRESH body;
  - logs each kind of failure once, when it starts (a wrong secret is named
    as such), and the recovery;
  - is cancelled entirely by C{stopService}: loop, timers and in-flight POST.

L{ReporterService} POSTs to the master; L{LogReporter}, used when no master is
configured, logs the same body so a newcomer sees what would be sent. Both
share the scheduling in L{_Schedule}.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import treq
from attrs import define, field
from twisted.application.service import Service
from twisted.internet.defer import CancelledError, Deferred, maybeDeferred, succeed
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python.failure import Failure

from haven_agent.backoff import backoff_delay
from haven_agent.reporting.node_identity import validate_node_name

# The first report comes after a random delay in [0, min(FIRST_REPORT_SPREAD,
# interval / 10)) seconds.
FIRST_REPORT_SPREAD = 5.0

# Backoff after failures: BACKOFF_BASE doubling, capped, with jitter
# (haven_agent.backoff).
BACKOFF_BASE = 1.0

# Characters of an error answer's body that go into the log.
BODY_EXCERPT = 200

# Minimum time-to-live the master honours.
MINIMUM_TTL = 60

REFUSED_SECRET = (
    "the master refused the node secret (X-Auth-Node): wrong or missing secret"
)


class NoAnswer(Exception):
    """The master did not answer (status and body) within the request timeout."""


_Outcome = bool | None
"""
What one report attempt came to: C{True} accepted, C{False} failed (back
off and retry), C{None} ended without a verdict (the body could not be
collected; the next tick tries again).
"""


def _positive(instance: object, attribute: Any, value: float) -> None:
    if not value > 0:
        raise ValueError(f"{attribute.name} must be > 0, not {value!r}")


def _not_negative(instance: object, attribute: Any, value: float) -> None:
    if not value >= 0:
        raise ValueError(f"{attribute.name} must be >= 0, not {value!r}")


def _node_name(instance: object, attribute: Any, value: str) -> None:
    validate_node_name(value)


def _master_url(instance: object, attribute: Any, value: str) -> None:
    parts = urlsplit(value)
    if (
        parts.scheme not in ("http", "https")
        or not parts.hostname
        or parts.query
        or parts.fragment
    ):
        raise ValueError(
            f"the master URL must look like http://HOST:PORT, "
            f"not {_loggable(value)!r}"
        )


def _header_safe(instance: object, attribute: Any, value: str | None) -> None:
    if value is not None and any(c in value for c in "\r\n\0"):
        # Never echo the secret itself.
        raise ValueError("the node secret contains a line break or NUL")


def _loggable(url: str) -> str:
    """C{url} without any user:password part."""
    parts = urlsplit(url)
    if "@" not in parts.netloc:
        return url
    host = parts.netloc.rpartition("@")[2]
    return urlunsplit(parts._replace(netloc=f"***@{host}"))


@define(eq=False)
class _Schedule:
    """
    When to attempt a report: the first one after a random delay, then a
    C{LoopingCall} every C{interval}, backoff retries after failures and
    debounced early reports; never two attempts at once.

    @ivar failures: consecutive failed attempts; 0 after a success.
    """

    _clock: IReactorTime
    _attempt_once: Callable[[], Deferred[_Outcome]]
    interval: float
    _random: Callable[[], float]
    debounce: float
    max_backoff: float

    failures: int = field(init=False, default=0)
    _active: bool = field(init=False, default=False)
    _loop: LoopingCall | None = field(init=False, default=None)
    _first: IDelayedCall | None = field(init=False, default=None)
    _retry: IDelayedCall | None = field(init=False, default=None)
    _soon: IDelayedCall | None = field(init=False, default=None)
    _current: Deferred[_Outcome] | None = field(init=False, default=None)
    _again: bool = field(init=False, default=False)
    _last_loop_tick: float | None = field(init=False, default=None)

    log = Logger()

    def start(self) -> None:
        self._active = True
        self.failures = 0
        spread = min(FIRST_REPORT_SPREAD, self.interval / 10)
        self._first = self._clock.callLater(self._random() * spread, self._start_loop)

    def stop(self) -> None:
        """Cancel everything; an attempt in flight is cancelled too."""
        self._active = False
        self._again = False
        for call in (self._first, self._retry, self._soon):
            if call is not None and call.active():
                call.cancel()
        self._first = self._retry = self._soon = None
        if self._loop is not None and self._loop.running:
            self._loop.stop()
        self._loop = None
        if self._current is not None:
            self._current.cancel()

    def soon(self) -> None:
        """
        Attempt a report C{debounce} seconds from now; calls meanwhile are
        folded into that one. Ignored while failing: the pending retry (or
        the next tick) collects a fresh body anyway.
        """
        if not self._active or self.failures:
            return
        if self._soon is not None and self._soon.active():
            return
        self._soon = self._clock.callLater(self.debounce, self._soon_due)

    def _start_loop(self) -> None:
        self._first = None
        loop = self._loop = LoopingCall(self._loop_tick)
        loop.clock = self._clock
        stopped = loop.start(self.interval, now=True)
        stopped.addErrback(
            lambda failure: self.log.failure("the report loop died", failure)
        )

    def _loop_tick(self) -> None:
        self._last_loop_tick = self._clock.seconds()
        self._attempt()

    def _soon_due(self) -> None:
        self._soon = None
        self._attempt()

    def _retry_due(self) -> None:
        self._retry = None
        self._attempt()

    def _next_loop_tick(self) -> float | None:
        loop = self._loop
        if loop is None or not loop.running:
            return None
        call = loop.call
        if call is not None and call.active():
            return call.getTime()
        if self._last_loop_tick is None:
            return None
        return self._last_loop_tick + self.interval

    def _attempt(self) -> None:
        # Called by the LoopingCall and by timers: must never raise.
        try:
            if not self._active:
                return
            if self._current is not None:
                self._again = True
                return
            if self._retry is not None and self._retry.active():
                self._retry.cancel()
            self._retry = None
            attempt = self._current = maybeDeferred(self._attempt_once)
            attempt.addBoth(self._finished)
        except Exception:
            self._current = None
            self.log.failure("a report attempt could not start")

    def _finished(self, outcome: _Outcome | Failure) -> None:
        self._current = None
        if isinstance(outcome, Failure):
            if not outcome.check(CancelledError):
                self.log.failure("a report attempt failed unexpectedly", outcome)
            outcome = None
        if not self._active:
            return
        again, self._again = self._again, False
        if outcome is False:
            # The retry (or the next tick) collects afresh: no follow-up.
            self.failures += 1
            self._schedule_retry()
            return
        if outcome is True:
            self.failures = 0
            if again:
                self._attempt()

    def _schedule_retry(self) -> None:
        cap = min(self.max_backoff, self.interval)
        delay = backoff_delay(self.failures - 1, cap, self._random, BACKOFF_BASE)
        next_tick = self._next_loop_tick()
        if next_tick is not None and self._clock.seconds() + delay >= next_tick:
            # The loop's next tick comes first and serves as the retry.
            return
        self._retry = self._clock.callLater(delay, self._retry_due)


class _PeriodicService(Service):
    """
    What both reporters share: the schedule's life cycle, early reports and
    the handling of a body that could not be collected.
    """

    log = Logger()
    node_name: str
    interval: float
    debounce: float
    _clock: IReactorTime
    _random: Callable[[], float]
    _schedule: _Schedule

    def _new_schedule(self, max_backoff: float) -> _Schedule:
        return _Schedule(
            clock=self._clock,
            attempt_once=self._report_once,
            interval=self.interval,
            random=self._random,
            debounce=self.debounce,
            max_backoff=max_backoff,
        )

    def _report_once(self) -> Deferred[_Outcome]:
        raise NotImplementedError

    def startService(self) -> None:
        Service.startService(self)
        self._schedule.start()

    def stopService(self) -> None:
        Service.stopService(self)
        self._schedule.stop()

    def report_soon(self) -> None:
        """
        Report early (a container changed), at most once per C{debounce}
        seconds; coalesced with a report in flight.
        """
        self._schedule.soon()

    @property
    def consecutive_failures(self) -> int:
        return self._schedule.failures

    def _collect_failed(self, failure: Failure) -> _Outcome:
        if failure.check(CancelledError) and not self.running:
            return None
        self.log.failure(
            "collecting the report of node {name} failed; next try at the next tick",
            failure,
            name=self.node_name,
        )
        return None


def _encode(body: dict[str, Any]) -> bytes:
    return json.dumps(body, separators=(",", ":"), allow_nan=False).encode("utf-8")


@define(eq=False)
class ReporterService(_PeriodicService):
    """
    POSTs this node's report to the Haven master every C{interval} seconds.

    @ivar clock: schedules everything (the reactor, or a C{Clock} in tests).
    @ivar http: treq's C{HTTPClient} or alike: C{post(url, data=, headers=,
        timeout=)} returning a Deferred response with C{.code}.
    @ivar collect: returns a Deferred of the report body (a dict).
    @ivar master: the master's base URL, e.g. C{http://10.0.0.1:8761}.
    @ivar secret: sent as C{X-Auth-Node} when set; never logged.
    @ivar request_timeout: seconds a POST (answer and body) may take.
    @ivar max_backoff: upper bound of the retry delay (also bounded by
        C{interval}).
    @ivar debounce: seconds an early report waits, gathering further
        requests into one.
    @ivar accepted_reports: how many reports the master accepted.
    @ivar metrics: counts each attempt by outcome (see `reporter_metrics`).
    """

    _clock: IReactorTime
    _http: Any
    _collect: Callable[[], Deferred[dict[str, Any]]]
    master: str = field(validator=_master_url)
    node_name: str = field(validator=_node_name)
    secret: str | None = field(default=None, repr=False, validator=_header_safe)
    interval: float = field(default=60.0, validator=_positive)
    _random: Callable[[], float] = random.random
    request_timeout: float = field(default=30.0, validator=_positive)
    max_backoff: float = field(default=300.0, validator=_positive)
    debounce: float = field(default=2.0, validator=_not_negative)
    metrics: Any = None

    accepted_reports: int = field(init=False, default=0)
    _started: float = field(init=False, default=0.0)
    _schedule: _Schedule = field(init=False)
    _outcome: str | None = field(init=False, default=None)
    #: Failed attempts since the master last accepted a report.
    _failedAttempts: int = field(init=False, default=0)

    def __attrs_post_init__(self) -> None:
        self._schedule = self._new_schedule(max_backoff=self.max_backoff)

    @property
    def ttl(self) -> int:
        """Seconds the master keeps the node without a report: 2 intervals."""
        return max(MINIMUM_TTL, int(2 * self.interval))

    @property
    def url(self) -> str:
        return (
            f"{self.master.rstrip('/')}/discovery/nodes/{self.node_name}"
            f"?ttl={self.ttl}"
        )

    def _report_once(self) -> Deferred[_Outcome]:
        self._started = self._clock.seconds()
        collected: Deferred[Any] = maybeDeferred(self._collect)
        collected.addCallbacks(self._send, self._collect_failed)
        return collected

    def _collect_failed(self, failure: Failure) -> _Outcome:
        if self.running:
            self._count("collect_failed", reached=False)
        return super()._collect_failed(failure)

    def _count(self, outcome: str, reached: bool = True) -> None:
        if self.metrics is not None:
            now = self._clock.seconds()
            self.metrics.reported(
                outcome, now - self._started if reached else None, now
            )

    def _send(self, body: dict[str, Any]) -> Deferred[_Outcome]:
        try:
            data = _encode(body)
        except (TypeError, ValueError):
            self.log.failure(
                "the report of node {name} is not JSON", name=self.node_name
            )
            return succeed(None)
        headers = {"Content-Type": "application/json"}
        if self.secret:
            headers["X-Auth-Node"] = self.secret
        answered = maybeDeferred(
            self._http.post,
            self.url,
            data=data,
            headers=headers,
            timeout=self.request_timeout,
        )
        answered.addCallback(self._read_answer)
        # treq's own timeout uses the global reactor (and a treq-like stand-in
        # may ignore it): this one runs on our clock and covers the body too.
        answered.addTimeout(
            self.request_timeout, self._clock, onTimeoutCancel=self._timed_out
        )
        answered.addCallbacks(self._answered, self._unreachable)
        return answered

    def _read_answer(self, response: Any) -> Deferred[tuple[int, bytes]]:
        reader = getattr(response, "content", None)
        body = reader() if callable(reader) else treq.content(response)
        return body.addCallback(lambda content: (response.code, content))

    def _timed_out(self, result: object, timeout: float) -> object:
        if isinstance(result, Failure):
            raise NoAnswer(f"no answer within {timeout:g} s")
        return result

    def _answered(self, answer: tuple[int, bytes]) -> _Outcome:
        code, body = answer
        url = _loggable(self.url)
        if 200 <= code < 300:
            self._count("accepted")
            self.accepted_reports += 1
            if self._outcome != "accepted":
                self.log.info(
                    "the master at {url} accepted the report of node {name}"
                    "{recovered}",
                    url=url,
                    name=self.node_name,
                    recovered=(
                        f" again, after {self._failedAttempts} failed attempts"
                        if self._outcome is not None
                        else ""
                    ),
                )
            self._outcome = "accepted"
            self._failedAttempts = 0
            return True
        if code == 401:
            self._count("refused_secret")
            if self._changed("refused-secret"):
                self.log.error(
                    REFUSED_SECRET + " ({configured}); the master at {url} "
                    "expects its dm.agent.notifier.secret",
                    configured=(
                        "a secret is configured"
                        if self.secret
                        else "no secret is configured: set dm_agent_notifier_secret"
                    ),
                    url=url,
                )
            return False
        self._count("http_error")
        excerpt = body.decode("utf-8", "replace")[:BODY_EXCERPT]
        if self._changed(f"http-{code}"):
            self.log.warn(
                "the master at {url} answered {code} to the report of node "
                "{name}: {excerpt!r}; retrying with backoff",
                url=url,
                code=code,
                name=self.node_name,
                excerpt=excerpt,
            )
        return False

    def _unreachable(self, failure: Failure) -> _Outcome:
        if not self.running:
            # Cancelled by stopService (treq wraps the CancelledError).
            return None
        self._count("timeout" if failure.check(NoAnswer) else "unreachable")
        reasons = getattr(failure.value, "reasons", None)
        if reasons:
            reason = "; ".join(str(each.getErrorMessage()) for each in reasons)
        else:
            reason = failure.getErrorMessage() or failure.type.__name__
        if self._changed("unreachable"):
            self.log.warn(
                "cannot report node {name} to {url}: {reason}; retrying with "
                "backoff",
                name=self.node_name,
                url=_loggable(self.url),
                reason=reason,
            )
        return False

    def _changed(self, outcome: str) -> bool:
        """Record a failure outcome; True when it differs from the last one."""
        changed = outcome != self._outcome
        self._outcome = outcome
        self._failedAttempts += 1
        return changed


@define(eq=False)
class LogReporter(_PeriodicService):
    """
    Used when no master is configured: logs the report body at info level on
    the same schedule, so the collection can be seen working.
    """

    _clock: IReactorTime
    _collect: Callable[[], Deferred[dict[str, Any]]]
    node_name: str = field(validator=_node_name)
    interval: float = field(default=60.0, validator=_positive)
    _random: Callable[[], float] = random.random
    debounce: float = field(default=2.0, validator=_not_negative)

    _schedule: _Schedule = field(init=False)

    def __attrs_post_init__(self) -> None:
        self._schedule = self._new_schedule(max_backoff=self.interval)

    def startService(self) -> None:
        self.log.info(
            "no master configured (dm_agent_notifier_server): the report of "
            "node {name} is logged every {interval:g} s instead of sent",
            name=self.node_name,
            interval=self.interval,
        )
        _PeriodicService.startService(self)

    def _report_once(self) -> Deferred[_Outcome]:
        collected: Deferred[Any] = maybeDeferred(self._collect)
        collected.addCallbacks(self._show, self._collect_failed)
        return collected

    def _show(self, body: dict[str, Any]) -> _Outcome:
        try:
            text = _encode(body).decode("utf-8")
        except (TypeError, ValueError):
            self.log.failure(
                "the report of node {name} is not JSON", name=self.node_name
            )
            return None
        self.log.info("report for node {name}: {body}", name=self.node_name, body=text)
        return True
