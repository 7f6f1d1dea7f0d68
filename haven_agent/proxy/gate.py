# -*- test-case-name: tests.proxy.test_gate -*-
"""
The gate: every request head on a client connection is read, judged and
then let through to dockerd byte for byte.

One client connection maps to one connection to dockerd, opened when the
first request has been allowed. Both directions are framed: the client's
requests (`http_head`, `body_framing`: bounded heads, bodies followed to
their end so the next head is gated too) and dockerd's answers
(`answer_framing`: each matched to its request in order). What may pass is
decided by `decision`, how the bytes flow and each side closes by `splice`,
and each request is logged by `access_log` when its answer is complete.

The connection is in one `Phase` at a time:

- READING: request bytes are read; each complete head is judged.
- DECIDING: a head waits for its verdict (bcrypt in a thread), the health
  probe, or the connection to dockerd; client bytes are parked.
- BODY: a request whose body decides (a policy's create rules) is read
  whole, at most a few MiB, before any of it goes to dockerd; then it is
  refused or forwarded, head and body as they came.
- HOLDING: a request that may hijack (attach, exec start, any Upgrade) went
  to dockerd; client bytes are parked until its answer's head says whether
  it did. Pipelined requests before it are answered first, and the framing
  of their answers tells which answer is its.
- PIPE: dockerd hijacked: raw bytes both ways for the rest of the life.
- CLOSING: the last answer (a refusal, a timeout) is on its way or the
  agent is stopping: client bytes are dropped.
- CLOSED: the client connection is gone.

Refusals (401, 400, 431, 502, ...) are JSON bodies like dockerd's own
errors, followed by a close; one on a keep-alive connection waits until
dockerd's earlier answers are complete, so it is never spliced into one.

Time bounds apply only before a request head is complete: the first head
(and the TLS handshake before it) and any later head once its first byte has
arrived. Established streams never time out: the Haven master keeps
`/events` open for hours. Peers that vanish are found by TCP keep-alive.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from enum import Enum
from typing import Any

from attrs import define, field
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import (
    IHalfCloseableProtocol,
    IHandshakeListener,
    IReactorTime,
)
from twisted.internet.protocol import Factory, Protocol
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from haven_agent.metrics.proxy_metrics import (
    HEALTH_ROUTE,
    METRICS_ROUTE,
    STREAM_ROUTES,
    ProxyMetrics,
    stream_kind,
)
from haven_agent.proxy.access_log import (
    RequestRecord,
    log_request,
    log_stream_opened,
)
from haven_agent.proxy.answer_framing import AnswerFramer, Event
from haven_agent.proxy.auth import NOT_KNOWN_YET, BasicAuthChecker
from haven_agent.proxy.body_framing import (
    MAX_CHUNK_FRAMING,
    MAX_JUDGED_BODY,
    ChunkedBody,
    FramingError,
    LengthBody,
    dechunk,
)
from haven_agent.proxy.connection_limits import (
    ConnectionLimits,
    Overload,
    source_of,
)
from haven_agent.proxy.decision import (
    AUTH_MODES,
    DEFAULT_RULES,
    AccessDecision,
    Allow,
    AllowAfterBody,
    AllowRewritten,
    AnswerHealth,
    AnswerMetrics,
    AnswerTicket,
    Identity,
    Refuse,
    Rule,
    Verdict,
)
from haven_agent.proxy.health import DockerProbe, health_response
from haven_agent.proxy.http_head import (
    HeadError,
    HeadReader,
    RequestHead,
    first_query_value,
)
from haven_agent.proxy.log_safe import printable
from haven_agent.proxy.read_only import is_stream
from haven_agent.proxy.responses import (
    error_response,
    json_response,
    metrics_response,
)
from haven_agent.proxy.splice import DockerConnection, Splice, tune_socket
from haven_agent.proxy.terminal import TerminalAccess
from haven_agent.proxy.throttle import FailureThrottle
from haven_agent.tls.failure import describe_close, handshake_outcome
from haven_agent.tls.reload import client_identity

__all__ = ["AUTH_MODES", "GateFactory", "GateProtocol", "Phase", "peer_label"]

log = Logger(namespace="haven_agent.requests")


class Phase(Enum):
    READING = "reading"
    DECIDING = "deciding"
    BODY = "body"
    HOLDING = "holding"
    PIPE = "pipe"
    CLOSING = "closing"
    CLOSED = "closed"


#: The phases a connection may go to from each phase.
TRANSITIONS: dict[Phase, frozenset[Phase]] = {
    Phase.READING: frozenset(
        (
            Phase.DECIDING,
            Phase.BODY,
            Phase.HOLDING,
            Phase.PIPE,
            Phase.CLOSING,
            Phase.CLOSED,
        )
    ),
    Phase.DECIDING: frozenset((Phase.READING, Phase.BODY, Phase.CLOSING, Phase.CLOSED)),
    Phase.BODY: frozenset((Phase.READING, Phase.CLOSING, Phase.CLOSED)),
    Phase.HOLDING: frozenset((Phase.READING, Phase.PIPE, Phase.CLOSING, Phase.CLOSED)),
    Phase.PIPE: frozenset((Phase.CLOSING, Phase.CLOSED)),
    Phase.CLOSING: frozenset((Phase.CLOSED,)),
    Phase.CLOSED: frozenset(),
}

TOO_BIG_TO_JUDGE = (
    f"this request's body is judged by the policy, and a body over "
    f"{MAX_JUDGED_BODY} bytes is not"
)

#: Why the client's reads are paused, as PauseReasons keys.
PAUSED_FOR = {Phase.DECIDING: "deciding", Phase.HOLDING: "awaiting dockerd's answer"}


@define(eq=False, slots=False)
class GateFactory(Factory):
    """
    Builds one `GateProtocol` per accepted (TLS-wrapped) client connection.

    @ivar connectDocker: connects a protocol to dockerd and returns a
        Deferred that fires once it is connected.
    @ivar dockerDescription: how dockerd is reached, for error messages.
    """

    noisy = False

    checker: BasicAuthChecker
    connectDocker: Callable[[Protocol], Deferred[Any]]
    dockerDescription: str
    clock: IReactorTime
    firstHeadTimeout: float = 30.0
    nextHeadTimeout: float = 30.0
    lingerTimeout: float = 2.0
    authMode: str = "password"
    throttle: FailureThrottle | None = None
    limits: ConnectionLimits = field(factory=ConnectionLimits)
    #: Seconds an idle keep-alive connection of the read-only user is kept.
    idleTimeout: float = 60.0
    probe: DockerProbe | None = None
    #: What the connections count, and the page `GET /_agent/metrics`
    #: is answered with; None where nobody asks (unit tests of the gate).
    metrics: ProxyMetrics | None = None
    metricsPage: Callable[[], Deferred[bytes]] | None = None
    #: The rules an authenticated request must pass (the policy's); None
    #: for the decision's defaults (the read-only account's route list).
    rules: Sequence[Rule] | None = None
    #: The connection terms of an identity (its profile's): the most
    #: connections it may hold and the seconds after which an idle one is
    #: closed, each None for the defaults (the per-user limit; idle
    #: connections closed only for the read-only account).
    terms: Callable[[Allow], tuple[int | None, float | None]] | None = None
    #: The Haven web terminal's controls (see `terminal`), if any is on.
    terminal: TerminalAccess | None = None
    decision: AccessDecision = field(init=False)
    connections: set[GateProtocol] = field(init=False, factory=set)

    def __attrs_post_init__(self) -> None:
        self.decision = AccessDecision(
            self.checker,
            self.authMode,
            self.throttle,
            DEFAULT_RULES if self.rules is None else self.rules,
            self.terminal,
        )
        if self.probe is None:
            self.probe = DockerProbe(self.connectDocker, self.clock)

    def buildProtocol(self, addr):
        return GateProtocol(self, addr)

    def closeAll(self, grace: float) -> Deferred[None]:
        """
        Let open connections end on their own for up to C{grace} seconds,
        then close the rest (flushing what is on its way), and abort what
        is still open a moment later.
        """
        done: Deferred[None] = Deferred()

        def check(deadline: float, then) -> None:
            if not self.connections:
                done.callback(None)
            elif self.clock.seconds() >= deadline:
                then()
            else:
                self.clock.callLater(0.1, check, deadline, then)

        def closeRest() -> None:
            log.info(
                "closing {count} connections still open after {grace} s",
                count=len(self.connections),
                grace=grace,
            )
            for protocol in list(self.connections):
                protocol.shutDown()
            check(self.clock.seconds() + self.lingerTimeout, abortRest)

        def abortRest() -> None:
            for protocol in list(self.connections):
                protocol.transport.abortConnection()
            done.callback(None)

        check(self.clock.seconds() + grace, closeRest)
        return done


def peer_label(peer) -> str:
    """
    C{host:port} of a client for the log and the throttle: an IPv4 client of
    a dual-stack socket as its IPv4 address (not C{::ffff:10.0.0.5}), an IPv6
    one in brackets.
    """
    host = str(getattr(peer, "host", peer))
    port = getattr(peer, "port", "")
    if host.startswith("::ffff:") and "." in host:
        host = host[len("::ffff:") :]
    elif ":" in host:
        host = f"[{host}]"
    return f"{host}:{port}"


class _JudgedBody:
    """
    A request whose body is being read to be judged: its head, its verdict
    and the body's bytes as they came (chunk framing included).
    """

    __slots__ = ("head", "verdict", "tracker", "raw")

    def __init__(
        self,
        head: RequestHead,
        verdict: AllowAfterBody,
        tracker: LengthBody | ChunkedBody,
    ) -> None:
        self.head = head
        self.verdict = verdict
        self.tracker = tracker
        self.raw = bytearray()


@implementer(IHalfCloseableProtocol, IHandshakeListener)
class GateProtocol(Protocol):
    """
    One client connection: the gate in front, the splice to dockerd behind.
    """

    # Slots keep an idle stream's gate small: with some thirty attributes
    # an instance dictionary would be the largest object of a connection.
    # Protocol's own two attributes too: without them every connection
    # carries an instance dictionary.
    __slots__ = (
        "transport",
        "connected",
        "_answers",
        "_body",
        "_clientReadDone",
        "_clock",
        "_dockerReadDone",
        "_factory",
        "_firstToClose",
        "_handshaken",
        "_heldBody",
        "_holdFor",
        "_identity",
        "_idleStream",
        "_idleTimeout",
        "_idleTimer",
        "_idleWatch",
        "_judged",
        "_lastActivity",
        "_metrics",
        "_parked",
        "_peer",
        "_phase",
        "_reader",
        "_records",
        "_refusal",
        "_requests",
        "_sending",
        "_source",
        "_splice",
        "_timer",
        "_user",
    )

    def __init__(self, factory: GateFactory, peer) -> None:
        self.transport = None
        self.connected = 0
        self._factory = factory
        self._clock = factory.clock
        self._peer = peer_label(peer)
        self._source = source_of(str(getattr(peer, "host", peer)))
        self._phase = Phase.READING
        self._reader = HeadReader()
        self._body: LengthBody | ChunkedBody | None = None
        self._answers = AnswerFramer()
        self._splice: Splice | None = None
        #: Client bytes read while DECIDING or HOLDING, read again after.
        self._parked = b""
        #: Requests sent to dockerd whose answers are not complete, in order.
        #: A list, not a deque: an empty deque takes 600 bytes, and this holds
        #: at most what fits in dockerd's socket buffer (Go serves one
        #: request of a connection at a time), so pop(0) stays cheap.
        self._records: list[RequestRecord] = []
        #: The request whose bytes are going to dockerd.
        self._sending: RequestRecord | None = None
        #: The request that may hijack, until its answer's head says.
        self._holdFor: RequestRecord | None = None
        self._refusal: bytes | None = None
        self._identity: Identity | None = None
        self._requests = 0
        self._timer = None
        self._clientReadDone = False
        self._dockerReadDone = False
        #: Who the connection counts against, once authenticated.
        self._user: str | None = None
        #: Read-only connections are closed when idle (see _idleCheck).
        self._idleWatch = False
        self._idleTimeout = factory.idleTimeout
        self._idleStream = False
        self._idleTimer = None
        self._lastActivity = 0.0
        self._firstToClose: str | None = None
        self._metrics = factory.metrics
        self._handshaken = False
        #: The request whose body is being read to be judged (BODY).
        self._judged: _JudgedBody | None = None
        #: Its body once judged, until it goes to dockerd after its head.
        self._heldBody: bytes | None = None

    # Phases

    def _enter(self, phase: Phase) -> None:
        if phase not in TRANSITIONS[self._phase]:
            raise RuntimeError(f"gate: no way from {self._phase} to {phase}")
        self._phase = phase

    def _closing(self) -> None:
        """
        To CLOSING from wherever the connection is (not CLOSED).
        """
        if self._phase is not Phase.CLOSING and self._phase is not Phase.CLOSED:
            self._enter(Phase.CLOSING)

    def _park(self, phase: Phase, data: bytes) -> None:
        """
        Wait in C{phase} (DECIDING, HOLDING); what the client sent after the
        current request is read once L{_continue} is called. The client is
        paused only if it sends more meanwhile (L{dataReceived}): most wait
        for the answer, and a pause and resume are two `epoll_ctl` calls.
        """
        self._enter(phase)
        self._parked = data

    def _continue(self) -> None:
        """
        Back to READING: what was parked is read now.
        """
        paused = self._phase
        self._enter(Phase.READING)
        self._splice.clientPauser.resume(PAUSED_FOR[paused])
        data, self._parked = self._parked, b""
        if data:
            self._readRequests(data)
        self._passClientEOFIfDue()

    # Client events

    def connectionMade(self) -> None:
        factory = self._factory
        factory.connections.add(self)
        tune_socket(self.transport)
        self._splice = Splice(self.transport, self._clock, factory.lingerTimeout)
        if self._metrics is not None:
            self._metrics.connectionAccepted()
        overload = factory.limits.arrived(self._source)
        if overload is not None:
            self._overloaded(overload)
        else:
            self._startTimer(factory.firstHeadTimeout)

    def handshakeCompleted(self) -> None:
        self._handshaken = True
        if self._metrics is not None:
            self._metrics.handshakes.labels("ok").inc()

    @property
    def state(self) -> str:
        """
        What the connection is doing, as the open connections gauge says:
        "unauthenticated", "http" or "stream".
        """
        if self._phase is Phase.PIPE or any(r.streamOpen for r in self._records):
            return "stream"
        return "unauthenticated" if self._user is None else "http"

    def _overloaded(self, overload: Overload) -> None:
        log.warn(
            "{peer}: refused, {problem} (limit {limit})",
            peer=self._peer,
            problem=overload.problem,
            limit=overload.limit,
        )
        if self._metrics is not None:
            self._metrics.refused.labels(overload.reason).inc()
        self._refuse(503, f"{overload.problem}; try again later", None, None)

    def dataReceived(self, data: bytes) -> None:
        if self._idleWatch:
            self._lastActivity = self._clock.seconds()
        phase = self._phase
        if phase is Phase.READING:
            self._readRequests(data)
        elif phase is Phase.PIPE:
            self._toDocker(data)
        elif phase is Phase.BODY:
            self._bodyReceived(data)
        elif phase is Phase.DECIDING or phase is Phase.HOLDING:
            # Kept for after the verdict or the answer, and no more read
            # until then.
            self._parked += data
            self._splice.clientPauser.pause(PAUSED_FOR[phase])

    def readConnectionLost(self) -> None:
        self._clientReadDone = True
        self._firstToClose = self._firstToClose or "client"
        if self._splice.lingering:
            self.transport.loseConnection()
        elif self._phase is Phase.READING or self._phase is Phase.PIPE:
            self._passClientEOF()
        elif self._phase is Phase.BODY:
            self._refuseJudged(400, "the request body ended before its end")

    def writeConnectionLost(self) -> None:
        pass

    def connectionLost(self, reason=None) -> None:
        if not self._handshaken and self._metrics is not None:
            self._metrics.handshakes.labels(handshake_outcome(reason)).inc()
        if not self._requests and self._phase is not Phase.CLOSING:
            # Nothing else will say this connection existed: a failed TLS
            # handshake, garbage, plain HTTP, or a client that just left.
            log.info(
                "{peer}: closed before any request ({why})",
                peer=self._peer,
                why=describe_close(reason),
            )
        self._phase = Phase.CLOSED
        if self in self._factory.connections:
            self._factory.connections.discard(self)
            self._factory.limits.left(self._source, self._user)
        self._cancelTimer()
        self._splice.cancelLinger()
        if self._idleTimer is not None and self._idleTimer.active():
            self._idleTimer.cancel()
        self._idleTimer = None
        self._logOutstanding("client closed")
        self._splice.closeDocker()

    # Reading requests

    def _readRequests(self, data: bytes) -> None:
        """
        Read request bytes in READING: bodies go to dockerd, each complete
        head is judged; stop where the phase changes.
        """
        while data:
            phase = self._phase
            if phase is not Phase.READING:
                if phase is Phase.PIPE:
                    self._toDocker(data)
                elif phase is Phase.BODY:
                    self._bodyReceived(data)
                elif phase is Phase.DECIDING or phase is Phase.HOLDING:
                    self._parked += data
                return
            if self._body is not None:
                data = self._forwardBody(data)
                continue
            if self._holdFor is not None:
                self._park(Phase.HOLDING, data)
                return
            # A later head is timed from its first byte. The timer is
            # started only when these bytes leave the head incomplete: a
            # head that arrives whole (the usual case) needs no timer, and
            # starting and cancelling one per request is wasted work.
            timeNextHead = not self._reader.started and self._requests
            try:
                head, data = self._reader.headAndRest(data)
            except HeadError as error:
                self._refuse(error.status, error.message, None, None)
                return
            if head is None:
                # Only once a head has begun: empty lines between requests
                # are skipped, and a stream must not time out.
                if timeNextHead and self._reader.started:
                    self._startTimer(self._factory.nextHeadTimeout)
                return
            if self._timer is not None:
                self._cancelTimer()
            # Parked first: a verdict that comes back at once through a
            # Deferred reads what follows from there.
            self._parked = data
            self._judge(head)
            if self._phase is Phase.DECIDING:
                return
            if self._phase is Phase.BODY:
                # The body's reader took what followed the head.
                return
            data, self._parked = self._parked, b""

    def _forwardBody(self, data: bytes) -> bytes:
        """
        Forward the body bytes at the start of C{data}; return the rest.
        """
        try:
            end = self._body.endIn(data)
        except FramingError as error:
            self._toDocker(data[: error.end])
            self._malformedBody(error.message)
            return b""
        self._toDocker(data if end == len(data) else data[:end])
        if self._body.done:
            self._body = None
            self._requestSent()
        return data[end:]

    def _requestSent(self) -> None:
        record = self._sending
        if record is not None:
            record.sent = True
            if record.answered:
                self._logAnswered(record)

    # Judging a head

    def _judge(self, head: RequestHead) -> None:
        try:
            head.framing  # noqa: B018 (raises when the framing is refused)
        except HeadError as error:
            self._refuse(error.status, error.message, head, None)
            return
        decision = self._factory.decision
        if self._identity is None:
            self._identity = Identity(
                self._peer.rsplit(":", 1)[0],
                client_identity(self.transport) if decision.usesCertificates else None,
            )
        verdict = decision.verdictNow(head, self._identity)
        if verdict is NOT_KNOWN_YET:
            self._enter(Phase.DECIDING)
            deciding = decision.verdict(head, self._identity)
            deciding.addCallback(self._verdictKnown, head)
            deciding.addErrback(self._unexpected)
            return
        # Known at once (the usual case): no Deferred, but an error is
        # treated as the Deferred path's errback would.
        try:
            self._apply(verdict, head)
        except Exception:
            self._unexpected(Failure())

    def _verdictKnown(self, verdict, head: RequestHead) -> None:
        if self._phase is not Phase.DECIDING:
            return
        self._apply(verdict, head)
        if self._phase is Phase.DECIDING and not self._splice.connecting:
            # Allowed and forwarded at once (dockerd already connected).
            self._continue()

    def _apply(self, verdict: Verdict, head: RequestHead) -> None:
        """
        Act on C{head}'s verdict, known at once or later: the one place
        each kind of verdict is acted on.
        """
        kind = type(verdict)
        if kind is Allow:
            self._allowed(verdict, head)  # type: ignore[arg-type]
        elif kind is Refuse:
            self._refused(verdict, head)  # type: ignore[arg-type]
        elif kind is AnswerHealth:
            self._answerHealth(head)
        elif kind is AnswerMetrics:
            self._answerMetrics(head, verdict.allowed)  # type: ignore[union-attr]
        elif kind is AnswerTicket:
            self._answerTicket(head, verdict.allowed)  # type: ignore[union-attr]
        elif kind is AllowRewritten:
            self._allowed(verdict.allowed, verdict.head)  # type: ignore[union-attr]
        elif kind is AllowAfterBody:
            self._allowedAfterBody(verdict, head)  # type: ignore[arg-type]
        else:
            raise TypeError(f"not a verdict: {verdict!r}")

    def _authenticated(self, allowed: Allow) -> bool:
        """
        Count the connection against C{allowed}'s user at its first allowed
        request; False when that is over the user's limit (refused).
        """
        if self._user is None:
            self._user = allowed.user
            factory = self._factory
            most, idle = (
                (None, None) if factory.terms is None else factory.terms(allowed)
            )
            if idle is None and allowed.readOnly:
                idle = factory.idleTimeout
            self._idleWatch = idle is not None
            self._idleTimeout = idle or factory.idleTimeout
            overload = factory.limits.authenticated(self._source, allowed.user, most)
            if overload is not None:
                self._overloaded(overload)
                return False
        return True

    def _allowed(self, allowed: Allow, head: RequestHead) -> None:
        if self._user is None and not self._authenticated(allowed):
            return
        if self._splice.docker is None:
            self._connectDocker(head, allowed)
        else:
            self._forward(head, allowed)

    def _refused(self, refusal: Refuse, head: RequestHead) -> None:
        metrics = self._metrics
        if metrics is not None and refusal.status == 401:
            metrics.authFailures.labels(refusal.reason).inc()
            if refusal.delay > 0:
                metrics.throttledAnswers.inc()
        if refusal.delay <= 0:
            self._refuse(
                refusal.status, refusal.message, head, refusal.user, refusal.headers
            )
            return
        # Answer later; meanwhile read nothing more from this client.
        self._enter(Phase.CLOSING)
        self._cancelTimer()
        self._timer = self._clock.callLater(
            refusal.delay,
            self._refuse,
            refusal.status,
            refusal.message,
            head,
            refusal.user,
            refusal.headers,
        )

    def _answerHealth(self, head: RequestHead) -> None:
        if self._phase is Phase.READING:
            self._enter(Phase.DECIDING)
        asking = self._factory.probe.isUp()
        asking.addCallback(self._healthKnown, head)
        asking.addErrback(self._unexpected)

    def _healthKnown(self, dockerUp: bool, head: RequestHead) -> None:
        if self._phase is Phase.CLOSED:
            return
        response = health_response(dockerUp)
        record = RequestRecord.of(head, None, self._clock.seconds())
        record.bytesOut = len(response)
        record.status = 200 if dockerUp else 503
        record.route = HEALTH_ROUTE
        # Health checks come every few seconds: keep them out of the access
        # log unless asked for.
        self._log(record, "health: docker " + ("up" if dockerUp else "down"), log.debug)
        self._answerLast(response)

    def _allowedAfterBody(self, verdict: AllowAfterBody, head: RequestHead) -> None:
        """
        Read the whole body before any of the request goes to dockerd, so
        that its check judges exactly what dockerd would read; an
        C{Expect: 100-continue} is answered here, since dockerd is not
        asked yet (the head, forwarded as it came, may draw a second one
        from dockerd, which clients take as they take any interim answer).
        """
        if not self._authenticated(verdict.allowed):
            return
        framing = head.framing
        if framing.length > MAX_JUDGED_BODY:
            self._refuse(413, TOO_BIG_TO_JUDGE, head, verdict.allowed.user)
            return
        paused = self._phase is Phase.DECIDING
        self._enter(Phase.BODY)
        if paused:
            self._splice.clientPauser.resume(PAUSED_FOR[Phase.DECIDING])
        self._judged = _JudgedBody(
            head,
            verdict,
            ChunkedBody() if framing.chunked else LengthBody(framing.length),
        )
        expect = head.first(b"expect")
        if (
            expect is not None
            and expect.lower() == b"100-continue"
            and not self._records
        ):
            self.transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        self._startTimer(self._factory.nextHeadTimeout)
        data, self._parked = self._parked, b""
        self._bodyReceived(data)

    def _bodyReceived(self, data: bytes) -> None:
        judged = self._judged
        head, allowed = judged.head, judged.verdict.allowed
        try:
            end = judged.tracker.endIn(data)
        except FramingError as error:
            self._refuseJudged(400, f"malformed request body: {error.message}")
            return
        judged.raw += data if end == len(data) else data[:end]
        if len(judged.raw) > MAX_JUDGED_BODY + MAX_CHUNK_FRAMING:
            self._refuseJudged(413, TOO_BIG_TO_JUDGE)
            return
        if not judged.tracker.done:
            return
        self._cancelTimer()
        self._judged = None
        self._parked = data[end:]
        raw = bytes(judged.raw)
        try:
            body = dechunk(raw) if head.framing.chunked else raw
        except FramingError as error:
            self._refuse(
                400, f"malformed request body: {error.message}", head, allowed.user
            )
            return
        message = judged.verdict.check(body)
        if message is not None:
            self._refuse(403, message, head, allowed.user)
            return
        self._enter(Phase.READING)
        self._heldBody = raw
        if self._splice.docker is None:
            self._connectDocker(head, allowed)
            return
        self._forward(head, allowed)
        data, self._parked = self._parked, b""
        if data:
            self._readRequests(data)
        self._passClientEOFIfDue()

    def _refuseJudged(self, status: int, message: str) -> None:
        """
        Refuse the request whose body is being read to be judged.
        """
        judged = self._judged
        self._refuse(status, message, judged.head, judged.verdict.allowed.user)

    def _answerTicket(self, head: RequestHead, allowed: Allow) -> None:
        """
        Issue an attach ticket for the container the query names.
        """
        if not self._authenticated(allowed):
            return
        container = first_query_value(head.target, b"container")
        name = "" if container is None else container.decode("utf-8", "replace")
        try:
            ticket, expires = self._factory.terminal.tickets.issue(
                allowed.user, name, self._clock.seconds()
            )
        except ValueError as e:
            self._refuse(400, f"give ?container=<name or ID>: {e}", head, allowed.user)
            return
        self._answerOwn(
            head,
            allowed,
            json_response(
                200, {"ticket": ticket, "container": name, "expires": expires}
            ),
            f"attach ticket issued for container {printable(name)}",
        )

    def _answerOwn(
        self,
        head: RequestHead,
        allowed: Allow,
        response: bytes,
        outcome: str,
        route: str | None = None,
    ) -> None:
        """
        Answer C{allowed}'s request with the agent's own 200 C{response}
        (its metrics page, a ticket), log it, and close.
        """
        record = RequestRecord.of(head, allowed.user, self._clock.seconds())
        record.auth = allowed.auth
        if route is not None:
            record.route = route
        record.bytesOut = len(response)
        record.status = 200
        self._log(record, outcome)
        self._answerLast(response)

    def _answerMetrics(self, head: RequestHead, allowed: Allow) -> None:
        if not self._authenticated(allowed):
            return
        if self._phase is Phase.READING:
            self._enter(Phase.DECIDING)
        page = self._factory.metricsPage
        if page is None:
            self._refuse(404, "metrics are not served here", head, allowed.user)
            return
        rendering = page()
        rendering.addCallbacks(
            self._metricsRendered,
            self._metricsFailed,
            callbackArgs=(head, allowed),
            errbackArgs=(head, allowed),
        )
        rendering.addErrback(self._unexpected)

    def _metricsRendered(self, body: bytes, head: RequestHead, allowed: Allow) -> None:
        if self._phase is Phase.CLOSED:
            return
        self._answerOwn(head, allowed, metrics_response(body), "metrics", METRICS_ROUTE)

    def _metricsFailed(
        self, failure: Failure, head: RequestHead, allowed: Allow
    ) -> None:
        log.failure("rendering the metrics failed", failure)
        if self._phase is not Phase.CLOSED:
            self._refuse(500, "the metrics could not be rendered", head, allowed.user)

    # dockerd's side

    def _connectDocker(self, head: RequestHead, allowed: Allow) -> None:
        if self._phase is Phase.READING:
            self._enter(Phase.DECIDING)
        connecting = self._splice.connect(self._factory.connectDocker, self)
        connecting.addCallbacks(
            self._dockerConnected,
            self._dockerUnreachable,
            callbackArgs=(head, allowed),
            errbackArgs=(head, allowed),
        )
        connecting.addErrback(self._unexpected)

    def _dockerConnected(
        self, docker: DockerConnection, head: RequestHead, allowed: Allow
    ) -> None:
        if self._phase is not Phase.DECIDING:
            # Closed or closing meanwhile.
            docker.transport.loseConnection()
            return
        self._splice.wire(docker)
        self._forward(head, allowed)
        if self._phase is Phase.DECIDING:
            self._continue()

    def _dockerUnreachable(
        self, failure: Failure, head: RequestHead, allowed: Allow
    ) -> None:
        if self._phase is Phase.CLOSED:
            return
        message = (
            f"cannot reach the Docker daemon at {self._factory.dockerDescription}: "
            f"{failure.getErrorMessage()}"
        )
        log.warn("{problem}", problem=message)
        if self._metrics is not None:
            self._metrics.dialErrors.inc()
        self._refuse(502, message, head, allowed.user)

    def _forward(self, head: RequestHead, allowed: Allow) -> None:
        """
        Send C{head} to dockerd and follow its body; a request that may
        hijack holds what comes after it until its answer is known.
        """
        self._requests += 1
        record = RequestRecord.of(head, allowed.user, self._clock.seconds())
        record.auth = allowed.auth
        if self._identity is not None and self._identity.certificate is not None:
            record.certificate = printable(self._identity.certificate)
        hijacks = head.hijacks
        if self._metrics is not None:
            record.route = route = self._metrics.routes.of(head)
            record.stream = STREAM_ROUTES.get(route)
            if hijacks:
                upgrade = head.first(b"upgrade")
                record.websocket = (
                    upgrade is not None and upgrade.lower() == b"websocket"
                )
        self._records.append(record)
        self._sending = record
        self._answers.expect(head.method, hijacks)
        self._toDocker(head.raw)
        if self._idleWatch:
            self._idleStream = is_stream(head)
        if hijacks:
            self._holdFor = record
        held, self._heldBody = self._heldBody, None
        framing = head.framing
        if held is not None:
            # Read and judged already: sent as it came.
            self._toDocker(held)
            record.sent = True
        elif framing.chunked:
            self._body = ChunkedBody()
        elif framing.length:
            self._body = LengthBody(framing.length)
        else:
            record.sent = True

    # dockerd events (UpstreamListener)

    def upstreamDataReceived(self, data: bytes) -> None:
        if self._idleWatch:
            self._answerArrived()
        self.transport.write(data)
        records = self._records
        if records:
            front = records[0]
            if front.firstByte is None:
                front.firstByte = self._clock.seconds()
            if len(records) == 1 and self._refusal is None:
                # The usual keep-alive answer: one whole answer in one read.
                status = self._answers.statusOfWhole(data)
                if status:
                    records.pop(0)
                    front.status = status
                    if front.stream is not None:
                        # A stream that ended in its first read.
                        self._streamOpened(front)
                        self._streamClosed(front, self._endedBy())
                    front.bytesOut += len(data)
                    front.answered = True
                    if front.sent:
                        self._logAnswered(front)
                    return
        events = self._answers.eventsIn(data)
        if not events:
            if records:
                records[0].bytesOut += len(data)
            return
        self._answerEvents(data, events)

    def _answerEvents(self, data: bytes, events) -> None:
        """
        Act on what the answer framer found in C{data}: statuses, answers
        complete, a hijack; what was parked for a hijack's answer is read
        after all of them.
        """
        records = self._records
        position = 0
        release = False
        for event in events:
            front = records[0] if records else None
            if front is not None:
                front.bytesOut += event.offset - position
            position = event.offset
            kind = event.kind
            if front is None:
                if kind is Event.UNFRAMEABLE:
                    self._unframeable(event.message)
                continue
            if kind is Event.ENDED:
                records.pop(0)
                front.answered = True
                if front.streamOpen:
                    self._streamClosed(front, self._endedBy())
                if front.sent:
                    self._logAnswered(front)
                if records and position < len(data):
                    records[0].firstByte = self._clock.seconds()
                continue
            if kind is Event.UNFRAMEABLE:
                self._unframeable(event.message)
                break
            front.status = event.status
            if kind is Event.HIJACKED:
                front.hijacked = True
                if self._metrics is not None:
                    front.stream = stream_kind(front.route, True, front.websocket)
                log_stream_opened(self._peer, front)
            if front.stream is not None and not front.streamOpen:
                self._streamOpened(front)
            if front is self._holdFor:
                self._holdFor = None
                release = True
        if records:
            records[0].bytesOut += len(data) - position
        if self._refusal is not None and not records:
            self._refusalDue()
        elif release:
            self._released(events[-1].kind is Event.HIJACKED)

    def _released(self, hijacked: bool) -> None:
        """
        The answer to the request that may hijack is known.
        """
        if self._phase is Phase.CLOSING or self._phase is Phase.CLOSED:
            return
        if hijacked:
            self._body = None
            parked, self._parked = self._parked, b""
            if self._phase is Phase.HOLDING:
                self._splice.clientPauser.resume(PAUSED_FOR[Phase.HOLDING])
            self._enter(Phase.PIPE)
            if parked:
                self._toDocker(parked)
            if self._clientReadDone:
                self._passClientEOF()
        elif self._phase is Phase.HOLDING:
            self._continue()

    def _unframeable(self, problem: str) -> None:
        """
        dockerd's answer cannot be framed: no later answer can be matched
        to its request, so no later request is let through.
        """
        log.warn(
            "{peer}: dockerd's answer cannot be framed ({problem}); "
            "closing the connection after it",
            peer=self._peer,
            problem=problem,
        )
        self._closing()
        self._parked = b""
        self._splice.closeDockerWrite()

    def _answerArrived(self) -> None:
        """
        dockerd is answering a read-only request: once the answer has
        started, a connection quiet for C{idleTimeout} is an idle keep-alive
        one (an answer in flight is not idle, and a stream never is).
        """
        self._lastActivity = self._clock.seconds()
        if (
            self._idleTimer is None
            and not self._idleStream
            and self._phase is not Phase.PIPE
        ):
            self._idleTimer = self._clock.callLater(self._idleTimeout, self._idleCheck)

    def _idleCheck(self) -> None:
        self._idleTimer = None
        if self._phase in (Phase.CLOSED, Phase.PIPE) or self._idleStream:
            return
        quiet = self._clock.seconds() - self._lastActivity
        timeout = self._idleTimeout
        if quiet < timeout or self._phase is Phase.DECIDING or self._reader.started:
            self._idleTimer = self._clock.callLater(
                max(timeout - quiet, 0.1), self._idleCheck
            )
            return
        log.info(
            "{peer} {user}: idle for {seconds} s; closing",
            peer=self._peer,
            user=self._user,
            seconds=timeout,
        )
        self._logOutstanding("done")
        self._enter(Phase.CLOSING)
        self.transport.loseConnection()
        self._splice.closeDocker()

    def upstreamReadClosed(self) -> None:
        self._dockerReadDone = True
        self._firstToClose = self._firstToClose or "docker"
        if self._phase is not Phase.PIPE or self._refusal is not None:
            # Outside a raw stream dockerd's end of output is the end of the
            # connection: no later request could be answered.
            self._splice.closeDocker()
            return
        self._splice.closeClientWrite()
        if self._clientReadDone:
            self._splice.closeDocker()

    def upstreamClosed(self) -> None:
        if self._phase is Phase.CLOSED:
            return
        self._splice.unwireClient()
        if self._refusal is not None:
            self._refusalDue()
            return
        if self._splice.lingering:
            # The connection's last answer is out; the linger closes it.
            return
        self._logOutstanding(
            "client closed" if self._clientReadDone else "docker closed"
        )
        self._closing()
        self.transport.loseConnection()

    # Endings

    def shutDown(self) -> None:
        """
        The agent is stopping: close both sides, after what is on its way.
        """
        self._closing()
        self._cancelTimer()
        self._firstToClose = self._firstToClose or "the agent, stopping"
        self._logOutstanding("closed by the agent, stopping")
        self._splice.unwireClient()
        self._splice.closeDocker()
        self.transport.loseConnection()

    def _passClientEOFIfDue(self) -> None:
        if self._clientReadDone and self._phase is Phase.READING:
            self._passClientEOF()

    def _passClientEOF(self) -> None:
        """
        The client will send no more: tell dockerd the same way.
        """
        splice = self._splice
        if splice.dockerOpen:
            if self._reader.started:
                log.info(
                    "{peer}: client closed in the middle of a request head",
                    peer=self._peer,
                )
            if self._dockerReadDone:
                splice.closeDocker()
            else:
                splice.closeDockerWrite()
        elif not splice.connecting:
            self.transport.loseConnection()

    def _refuse(self, status, message, head, user, headers=()) -> None:
        if self._phase is Phase.CLOSED:
            return
        response = error_response(status, message, headers)
        record = RequestRecord.of(head, user, self._clock.seconds())
        record.bytesOut = len(response)
        record.status = status
        if head is not None and self._metrics is not None:
            record.route = self._metrics.routes.of(head)
        self._log(record, f"refused {status}: {message}")
        self._answerLast(response)

    def _answerLast(self, response: bytes) -> None:
        """
        Answer with C{response} and close, once dockerd has finished the
        answers it owes on this connection.
        """
        self._closing()
        self._parked = b""
        self._cancelTimer()
        self._splice.clientPauser.clear()
        if not self._splice.dockerOpen or not self._records:
            # Answer first: closing dockerd's side may report it closed at
            # once, and that must find the answer on its way.
            self._logOutstanding("done")
            self._splice.answerLast(response, self._clientReadDone)
            self._splice.closeDocker()
        else:
            # Earlier answers are still on their way: let dockerd finish
            # them (it ends a stream when its input ends), then answer.
            self._refusal = response
            self._splice.closeDockerWrite()

    def _refusalDue(self) -> None:
        response, self._refusal = self._refusal, None
        self._logOutstanding("docker closed")
        self._splice.answerLast(response, self._clientReadDone)
        self._splice.closeDocker()

    def _malformedBody(self, message: str) -> None:
        log.info(
            "{peer}: malformed request body ({problem}); leaving the answer "
            "to dockerd",
            peer=self._peer,
            problem=message,
        )
        self._enter(Phase.CLOSING)
        self._body = None
        self._splice.closeDockerWrite()

    def _unexpected(self, failure) -> None:
        log.failure("unexpected error in the gate for {peer}", failure, peer=self._peer)
        self.transport.abortConnection()

    # Time bounds

    def _startTimer(self, seconds: float) -> None:
        self._cancelTimer()
        self._timer = self._clock.callLater(seconds, self._headTimedOut)

    def _cancelTimer(self) -> None:
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None

    def _headTimedOut(self) -> None:
        self._timer = None
        if self._phase is Phase.BODY:
            self._refuseJudged(408, "request body not received in time")
        elif self._reader.started:
            self._refuse(408, "request head not received in time", None, None)
        else:
            log.info(
                "{peer}: no request within {seconds} s; closing",
                peer=self._peer,
                seconds=self._factory.firstHeadTimeout,
            )
            self._enter(Phase.CLOSING)
            self.transport.loseConnection()

    # Bookkeeping

    def _toDocker(self, data: bytes) -> None:
        if self._sending is not None:
            self._sending.bytesIn += len(data)
        self._splice.toDocker(data)

    def _logAnswered(self, record: RequestRecord) -> None:
        if record is self._sending:
            self._sending = None
        now = self._clock.seconds()
        log_request(self._peer, record, "done", now)
        if self._metrics is not None:
            self._metrics.requestDone(record)

    def _endedBy(self) -> str:
        """
        Who ended a streamed answer that dockerd finished: the client, when
        it had closed its side first (dockerd ends `events` or `logs -f`
        once its input ends), else dockerd.
        """
        return _side(self._firstToClose or "docker")

    def _streamOpened(self, record: RequestRecord) -> None:
        record.streamOpen = True
        self._metrics.streamOpened(record.stream)

    def _streamClosed(self, record: RequestRecord, side: str) -> None:
        record.streamOpen = False
        self._metrics.streamClosed(record.stream, side)

    def _logOutstanding(self, outcome: str) -> None:
        """
        Log the requests still without a complete answer, as C{outcome}.
        """
        records, self._records = self._records, []
        sending, self._sending = self._sending, None
        if sending is not None and sending.answered and not sending.sent:
            # Answered before its body was all sent: still to be logged.
            records.appendleft(sending)
        for record in records:
            if record.streamOpen:
                self._streamClosed(record, _side(self._firstToClose or outcome))
            if record.hijacked:
                self._log(
                    record, f"stream closed, first by {self._firstToClose or outcome}"
                )
            else:
                self._log(record, outcome)

    def _log(self, record: RequestRecord, outcome: str, emit=None) -> None:
        log_request(self._peer, record, outcome, self._clock.seconds(), emit)
        if self._metrics is not None:
            self._metrics.requestDone(record)


def _side(closedBy: str) -> str:
    """
    The C{closed_by} label of what closed a stream first ("client",
    "docker closed", "the agent, stopping", "done" for an idle close).
    """
    if closedBy.startswith("client"):
        return "client"
    if closedBy.startswith("docker"):
        return "docker"
    return "agent"
