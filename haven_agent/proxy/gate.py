# -*- test-case-name: tests.proxy.test_gate -*-
"""
The gate: every request head on a client connection is read, judged and
then let through to dockerd byte for byte.

One client connection maps to one connection to dockerd, opened when the
first request has been authorised. For each request the gate reads the head
(bounded), checks its Basic credentials, forwards the head and follows the
body's framing to find the next head, which is gated again. A request that
dockerd hijacks (attach, exec start, any Upgrade) turns the connection into a
raw two-way pipe for the rest of its life. dockerd's replies are not parsed;
they flow back under flow control only. The one exception is the head of the
answer to a request that may hijack: attach and exec start are answered
without a hijack when detached or refused (404, 409), and the requests after
such an answer must pass the gate like any other. Client bytes after such a
request wait for that answer head. Were the request pipelined behind others
whose answers have not begun, the answer head seen next would not be its
own, so then the hijack is taken as given.

Refusals (401, 400, 431, 502, ...) are JSON bodies like dockerd's own errors,
followed by a close. A refusal of a later request on a keep-alive connection
waits until dockerd has finished what it was still sending, so the answer is
never spliced into the middle of an earlier response.

Time bounds apply only before a request head is complete: the first head
(and the TLS handshake before it) and any later head once its first byte has
arrived. Established streams never time out: the Haven master keeps
`/events` open for hours. Peers that vanish are found by TCP keep-alive.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from attrs import define, field
from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IHalfCloseableProtocol, IReactorTime
from twisted.internet.protocol import Factory, Protocol
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from haven_agent._twisted.eager_write import write_now
from haven_agent.proxy.auth import NOT_KNOWN_YET, BasicAuthChecker
from haven_agent.proxy.body_framing import ChunkedBody, FramingError, LengthBody
from haven_agent.proxy.connection_limits import ConnectionLimits, source_of
from haven_agent.proxy.health import HEALTH_PATH, DockerProbe, health_response
from haven_agent.proxy.http_head import (
    Framing,
    HeadError,
    HeadReader,
    HijackAnswer,
    RequestHead,
)
from haven_agent.proxy.log_safe import printable, printable_bytes
from haven_agent.proxy.read_only import is_stream, read_only_refusal
from haven_agent.proxy.responses import error_response
from haven_agent.proxy.splice import DockerConnection, PauseReasons, tune_socket
from haven_agent.proxy.throttle import FailureThrottle
from haven_agent.tls.failure import describe_close
from haven_agent.tls.reload import client_identity

AUTHENTICATE = (("WWW-Authenticate", 'Basic realm="haven-agent"'),)
AUTH_MODES = ("password", "cert", "both")
# What the access log's `auth` field says for each mode.
AUTH_METHODS = {"password": "password", "cert": "cert", "both": "cert+password"}
READ_METHODS = (b"GET", b"HEAD")

log = Logger(namespace="haven_agent.requests")

#: The access log's message as a twisted.logger format over the event's
#: fields; `GateProtocol._logRequest` writes the same text ready-made.
ACCESS_LOG_FORMAT = (
    "{peer} {user} {method} {path}: {outcome}; {bytesIn} bytes in, "
    "{bytesOut} bytes out, {duration:.3f} s"
)


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
    connections: set[GateProtocol] = field(init=False, factory=set)

    def __attrs_post_init__(self) -> None:
        if self.authMode not in AUTH_MODES:
            raise ValueError(f"auth mode must be one of {', '.join(AUTH_MODES)}")
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


@define(eq=False)
class RequestRecord:
    """
    What the access log says about one request.
    """

    method: str
    path: str
    user: str | None
    started: float
    auth: str = "-"
    certificate: str | None = None
    bytesIn: int = 0
    bytesOut: int = 0
    hijacked: bool = False

    @classmethod
    def of(cls, head: RequestHead | None, user: str | None, now: float):
        if head is None:
            return cls("-", "-", user, now)
        target = head.target
        if len(target) > 256:
            target = target[:256] + b"..."
        return cls(
            printable_bytes(head.method),
            printable_bytes(target),
            printable(user) if user is not None else None,
            now,
        )


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


@implementer(IHalfCloseableProtocol)
class GateProtocol(Protocol):
    """
    One client connection: the gate in front, the splice to dockerd behind.
    """

    def __init__(self, factory: GateFactory, peer) -> None:
        self._factory = factory
        self._clock = factory.clock
        self._peer = peer_label(peer)
        self._source = source_of(str(getattr(peer, "host", peer)))
        self._reader = HeadReader()
        self._body: LengthBody | ChunkedBody | None = None
        self._docker: DockerConnection | None = None
        self._connecting = False
        self._piping = False
        self._answer: HijackAnswer | None = None
        self._dockerSpokeSinceForward = False
        self._deciding = False
        self._processing = False
        self._discarding = False
        self._lingering = False
        self._finished = False
        self._clientReadDone = False
        self._dockerReadDone = False
        self._dockerClosing = False
        self._pending = b""
        self._refusal: bytes | None = None
        self._request: RequestRecord | None = None
        self._requests = 0
        self._timer = None
        self._clientPauser: PauseReasons | None = None
        #: Who the connection counts against, once authenticated.
        self._user: str | None = None
        #: Read-only connections are closed when idle (see _idleCheck).
        self._idleWatch = False
        self._idleStream = False
        self._idleTimer = None
        self._lastActivity = 0.0
        self._certificateName: str | None = None
        self._firstToClose: str | None = None

    # Client events

    def connectionMade(self) -> None:
        factory = self._factory
        factory.connections.add(self)
        tune_socket(self.transport)
        self._clientPauser = PauseReasons(self.transport)
        overload = factory.limits.arrived(self._source)
        if overload is not None:
            self._overloaded(*overload)
        else:
            self._startTimer(factory.firstHeadTimeout)

    def _overloaded(self, problem: str, limit: int) -> None:
        log.warn(
            "{peer}: refused, {problem} (limit {limit})",
            peer=self._peer,
            problem=problem,
            limit=limit,
        )
        self._refuse(503, f"{problem}; try again later", None, None)

    def dataReceived(self, data: bytes) -> None:
        if self._idleWatch:
            self._lastActivity = self._clock.seconds()
        if self._discarding:
            return
        if self._piping:
            self._toDocker(data)
        elif self._waiting():
            self._pending += data
        else:
            self._process(data)

    def readConnectionLost(self) -> None:
        self._clientReadDone = True
        self._firstToClose = self._firstToClose or "client"
        if self._lingering:
            self.transport.loseConnection()
        elif not (self._waiting() or self._discarding):
            self._passClientEOF()

    def writeConnectionLost(self) -> None:
        pass

    def connectionLost(self, reason=None) -> None:
        if not self._requests and not self._discarding:
            # Nothing else will say this connection existed: a failed TLS
            # handshake, garbage, plain HTTP, or a client that just left.
            log.info(
                "{peer}: closed before any request ({why})",
                peer=self._peer,
                why=describe_close(reason),
            )
        self._finished = True
        if self in self._factory.connections:
            self._factory.connections.discard(self)
            self._factory.limits.left(self._source, self._user)
        self._cancelTimer()
        if self._idleTimer is not None and self._idleTimer.active():
            self._idleTimer.cancel()
        self._idleTimer = None
        self._finishRequest("client closed")
        self._closeDocker()

    def _waiting(self) -> bool:
        """
        Are client bytes held back: while a head is decided, and after the
        body of a request that may hijack until dockerd's answer tells?
        """
        return self._deciding or (self._answer is not None and self._body is None)

    # Reading heads and bodies

    def _process(self, data: bytes) -> None:
        self._processing = True
        try:
            while data and not self._discarding:
                if self._piping:
                    self._toDocker(data)
                    return
                if self._body is not None:
                    data = self._feedBody(data)
                    continue
                if self._answer is not None:
                    self._pending = data
                    self._clientPauser.pause("awaiting dockerd's answer")
                    return
                # A later head is timed from its first byte. The timer is
                # started only when these bytes leave the head incomplete: a
                # head that arrives whole (the usual case) needs no timer,
                # and starting and cancelling one per request is wasted work.
                timeNextHead = not self._reader.started and self._requests
                try:
                    head, data = self._reader.feed(data)
                except HeadError as error:
                    self._refuse(error.status, error.message, None, None)
                    return
                if head is None:
                    # Only once a head has begun: empty lines between
                    # requests are skipped, and a stream must not time out.
                    if timeNextHead and self._reader.started:
                        self._startTimer(self._factory.nextHeadTimeout)
                    return
                if self._timer is not None:
                    self._cancelTimer()
                self._deciding = True
                self._pending = data
                self._decide(head)
                if self._deciding:
                    self._clientPauser.pause("deciding")
                    return
                data, self._pending = self._pending, b""
        finally:
            self._processing = False

    def _feedBody(self, data: bytes) -> bytes:
        try:
            end = self._body.feed(data)
        except FramingError as error:
            self._toDocker(data[: error.end])
            self._malformedBody(error.message)
            return b""
        self._toDocker(data if end == len(data) else data[:end])
        if self._body.done:
            self._body = None
        return data[end:]

    # Deciding about a head

    def _decide(self, head: RequestHead) -> None:
        try:
            framing = head.framing
        except HeadError as error:
            self._refuse(error.status, error.message, head, None)
            return
        if head.method in READ_METHODS and head.path == HEALTH_PATH:
            self._answerHealth(head)
            return
        user = self._authenticateNow(head)
        if user is NOT_KNOWN_YET:
            checking = self._authenticate(head)
            checking.addCallback(self._authorised, head, framing)
            checking.addErrback(self._unexpected)
            return
        # The verdict is known at once (the usual case: plain password, a
        # remembered bcrypt verdict, or a certificate): decide without a
        # Deferred, but treat an error as the Deferred path's errback would.
        try:
            self._authorised(user, head, framing)
        except Exception:
            self._unexpected(Failure())

    def _authenticateNow(self, head: RequestHead):
        """
        Who sent C{head}, when known without waiting: a user name, None for
        nobody, or C{NOT_KNOWN_YET} when L{_authenticate} must be asked.
        """
        mode = self._factory.authMode
        if mode != "password" and self._certificateName is None:
            self._certificateName = client_identity(self.transport)
        if mode == "cert":
            return self._certificateName
        user = self._factory.checker.checkNow(head.first(b"authorization"))
        if mode == "both" and user is not NOT_KNOWN_YET:
            return user if self._certificateName is not None else None
        return user

    def _authenticate(self, head: RequestHead) -> Deferred[str | None]:
        """
        Who sent C{head}: by password, by client certificate, or by both.
        """
        mode = self._factory.authMode
        if mode != "password" and self._certificateName is None:
            self._certificateName = client_identity(self.transport)
        if mode == "cert":
            return succeed(self._certificateName)
        checking = self._factory.checker.check(head.first(b"authorization"))
        if mode == "both":
            checking.addCallback(
                lambda user: user if self._certificateName is not None else None
            )
        return checking

    def _authMethod(self) -> str:
        return AUTH_METHODS[self._factory.authMode]

    def _authorised(self, user: str | None, head: RequestHead, framing) -> None:
        if self._finished:
            return
        if user is None:
            self._unauthenticated(head)
            return
        if self._factory.checker.isReadOnly(user):
            refusal = read_only_refusal(head)
            if refusal is not None:
                self._refuse(
                    403,
                    f"user {user} is read-only: {refusal} "
                    f"({printable_bytes(head.method)} {printable_bytes(head.apiPath)})",
                    head,
                    user,
                )
                return
        if self._user is None:
            self._user = user
            self._idleWatch = self._factory.checker.isReadOnly(user)
            overload = self._factory.limits.authenticated(self._source, user)
            if overload is not None:
                self._overloaded(*overload)
                return
        if self._docker is None:
            self._connectDocker(head, framing, user)
        else:
            self._forward(head, framing, user)

    def _unauthenticated(self, head: RequestHead) -> None:
        if self._factory.authMode == "cert" or (
            self._factory.authMode == "both" and self._certificateName is None
        ):
            message = "a client certificate signed by the agent's client CA is required"
        elif head.first(b"authorization") is None:
            message = "authentication required: send HTTP Basic credentials"
        else:
            message = "wrong user name or password"
        throttle = self._factory.throttle
        delay = throttle.failed(self._peerHost()) if throttle is not None else 0.0
        if delay <= 0:
            self._refuse(401, message, head, None, AUTHENTICATE)
            return
        # Answer later; meanwhile read nothing more from this client.
        self._discarding = True
        self._deciding = False
        self._cancelTimer()
        self._timer = self._clock.callLater(
            delay, self._refuse, 401, message, head, None, AUTHENTICATE
        )

    def _peerHost(self) -> str:
        return self._peer.rsplit(":", 1)[0]

    def _answerHealth(self, head: RequestHead) -> None:
        asking = self._factory.probe.isUp()
        asking.addCallback(self._healthKnown, head)
        asking.addErrback(self._unexpected)

    def _healthKnown(self, dockerUp: bool, head: RequestHead) -> None:
        if self._finished:
            return
        response = health_response(dockerUp)
        self._finishRequest("done")
        record = RequestRecord.of(head, None, self._clock.seconds())
        record.bytesOut = len(response)
        # Health checks come every few seconds: keep them out of the access
        # log unless asked for.
        self._logRequest(
            record, "health: docker " + ("up" if dockerUp else "down"), log.debug
        )
        self._answerLast(response)

    def _connectDocker(self, head: RequestHead, framing: Framing, user: str) -> None:
        docker = DockerConnection(self)
        self._connecting = True
        connecting = self._factory.connectDocker(docker)
        connecting.addCallbacks(
            lambda _: self._dockerConnected(docker, head, framing, user),
            lambda failure: self._dockerUnreachable(failure, head, user),
        )
        connecting.addErrback(self._unexpected)

    def _dockerConnected(self, docker, head, framing, user) -> None:
        self._connecting = False
        if self._finished:
            docker.transport.loseConnection()
            return
        self._docker = docker
        self.transport.registerProducer(docker.pauser, True)
        docker.transport.registerProducer(self._clientPauser, True)
        self._forward(head, framing, user)

    def _dockerUnreachable(self, failure, head: RequestHead, user: str) -> None:
        self._connecting = False
        if self._finished:
            return
        message = (
            f"cannot reach the Docker daemon at {self._factory.dockerDescription}: "
            f"{failure.getErrorMessage()}"
        )
        log.warn("{problem}", problem=message)
        self._refuse(502, message, head, user)

    def _forward(self, head: RequestHead, framing: Framing, user: str) -> None:
        self._finishRequest("done")
        # Pipelined: earlier requests went to dockerd and nothing has come
        # back since, so the next answer head is not this request's.
        pipelined = self._requests > 0 and not self._dockerSpokeSinceForward
        self._dockerSpokeSinceForward = False
        self._requests += 1
        self._request = RequestRecord.of(head, user, self._clock.seconds())
        self._request.auth = self._authMethod()
        self._request.certificate = (
            printable(self._certificateName)
            if self._certificateName is not None
            else None
        )
        self._toDocker(head.raw)
        if self._idleWatch:
            self._idleStream = is_stream(head)
        hijacks = head.hijacks
        if hijacks and pipelined:
            # Which answer is whose would need dockerd's replies parsed:
            # take the hijack as given, as for any stream.
            self._startPiping()
        else:
            if hijacks:
                self._answer = HijackAnswer()
            if framing.chunked:
                self._body = ChunkedBody()
            elif framing.length:
                self._body = LengthBody(framing.length)
        self._deciding = False
        self._clientPauser.resume("deciding")
        if not self._processing:
            data, self._pending = self._pending, b""
            if data:
                self._process(data)
            self._passClientEOFIfDue()

    # dockerd events (UpstreamListener)

    def upstreamDataReceived(self, data: bytes) -> None:
        if self._idleWatch:
            self._answerArrived()
        self._dockerSpokeSinceForward = True
        if self._request is not None:
            self._request.bytesOut += len(data)
        self.transport.write(data)
        if self._answer is not None:
            hijacked = self._answer.feed(data)
            if hijacked is not None:
                self._answered(hijacked)

    def _answerArrived(self) -> None:
        """
        dockerd is answering a read-only request: once the answer has
        started, a connection quiet for C{idleTimeout} is an idle keep-alive
        one (an answer in flight is not idle, and a stream never is).
        """
        self._lastActivity = self._clock.seconds()
        if self._idleTimer is None and not self._idleStream and not self._piping:
            self._idleTimer = self._clock.callLater(
                self._factory.idleTimeout, self._idleCheck
            )

    def _idleCheck(self) -> None:
        self._idleTimer = None
        if self._finished or self._idleStream or self._piping:
            return
        quiet = self._clock.seconds() - self._lastActivity
        timeout = self._factory.idleTimeout
        if quiet < timeout or self._deciding or self._reader.started:
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
        self._finishRequest("done")
        self._discarding = True
        self.transport.loseConnection()
        self._closeDocker()

    def _answered(self, hijacked: bool) -> None:
        """
        dockerd has answered a request that may hijack: either the connection
        is a raw pipe from now on, or the next request passes the gate.
        """
        self._answer = None
        if hijacked:
            self._startPiping()
        self._clientPauser.resume("awaiting dockerd's answer")
        data, self._pending = self._pending, b""
        if data:
            self._process(data)
        self._passClientEOFIfDue()

    def _startPiping(self) -> None:
        self._piping = True
        self._body = None
        record = self._request
        if record is not None:
            record.hijacked = True
            log.info(
                "{peer} {user} {method} {path}: stream opened ({auth})",
                peer=self._peer,
                user=record.user or "-",
                method=record.method,
                path=record.path,
                auth=record.auth,
                event="stream opened",
            )

    def upstreamReadClosed(self) -> None:
        self._dockerReadDone = True
        self._firstToClose = self._firstToClose or "docker"
        if not self._piping or self._refusal is not None:
            # Outside a raw stream dockerd's end of output is the end of the
            # connection: no later request could be answered.
            self._closeDocker()
            return
        self.transport.unregisterProducer()
        self.transport.loseWriteConnection()
        if self._clientReadDone:
            self._closeDocker()

    def upstreamClosed(self) -> None:
        if self._finished:
            return
        self.transport.unregisterProducer()
        if self._refusal is not None:
            response, self._refusal = self._refusal, None
            self._answerAndClose(response)
            return
        self._finishRequest(
            "client closed" if self._clientReadDone else "docker closed"
        )
        self.transport.loseConnection()

    # Endings

    def shutDown(self) -> None:
        """
        The agent is stopping: close both sides, after what is on its way.
        """
        self._discarding = True
        self._cancelTimer()
        self._firstToClose = self._firstToClose or "the agent, stopping"
        self._finishRequest("closed by the agent, stopping")
        self.transport.unregisterProducer()
        self._closeDocker()
        self.transport.loseConnection()

    def _passClientEOFIfDue(self) -> None:
        if self._clientReadDone and not (self._waiting() or self._discarding):
            self._passClientEOF()

    def _closeDocker(self) -> None:
        """
        Close the dockerd connection after what was written to it; its
        producer goes first, since a paused one would hold the close back.
        """
        docker = self._docker
        if docker is not None and not docker.closed and not self._dockerClosing:
            self._dockerClosing = True
            docker.transport.unregisterProducer()
            docker.transport.loseConnection()

    def _passClientEOF(self) -> None:
        """
        The client will send no more: tell dockerd the same way.
        """
        docker = self._docker
        if docker is not None and not docker.closed:
            if self._reader.started:
                log.info(
                    "{peer}: client closed in the middle of a request head",
                    peer=self._peer,
                )
            if self._dockerReadDone:
                self._closeDocker()
            else:
                docker.transport.unregisterProducer()
                docker.transport.loseWriteConnection()
        elif not self._connecting:
            self.transport.loseConnection()

    def _refuse(self, status, message, head, user, headers=()) -> None:
        if self._finished:
            return
        response = error_response(status, message, headers)
        self._finishRequest("done")
        record = RequestRecord.of(head, user, self._clock.seconds())
        record.bytesOut = len(response)
        self._logRequest(record, f"refused {status}: {message}")
        self._answerLast(response)

    def _answerLast(self, response: bytes) -> None:
        """
        Answer with C{response} and close, once dockerd has finished sending
        what it was sending on this connection.
        """
        self._finishRequest("done")
        self._discarding = True
        self._deciding = False
        self._pending = b""
        self._cancelTimer()
        docker = self._docker
        if docker is None or docker.closed:
            self._answerAndClose(response)
        else:
            # An earlier response may still be on its way: let dockerd finish
            # it, then answer.
            self._refusal = response
            docker.transport.unregisterProducer()
            docker.transport.loseWriteConnection()

    def _malformedBody(self, message: str) -> None:
        log.info(
            "{peer}: malformed request body ({problem}); leaving the answer "
            "to dockerd",
            peer=self._peer,
            problem=message,
        )
        self._discarding = True
        self._docker.transport.unregisterProducer()
        self._docker.transport.loseWriteConnection()

    def _answerAndClose(self, response: bytes) -> None:
        """
        Send C{response}, then close without losing it: half-close and drain
        what the client still sends for a moment, so unread input does not
        make the kernel reset the connection before the answer is read.
        """
        self._discarding = True
        self._lingering = True
        self.transport.write(response)
        self.transport.loseWriteConnection()
        self._clientPauser.clear()
        if self._clientReadDone:
            self.transport.loseConnection()
        else:
            self._timer = self._clock.callLater(
                self._factory.lingerTimeout, self.transport.loseConnection
            )

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
        if self._reader.started:
            self._refuse(408, "request head not received in time", None, None)
        else:
            log.info(
                "{peer}: no request within {seconds} s; closing",
                peer=self._peer,
                seconds=self._factory.firstHeadTimeout,
            )
            self._discarding = True
            self.transport.loseConnection()

    # Bookkeeping

    def _toDocker(self, data: bytes) -> None:
        if self._request is not None:
            self._request.bytesIn += len(data)
        write_now(self._docker.transport, data)

    def _finishRequest(self, outcome: str) -> None:
        record, self._request = self._request, None
        if record is not None:
            if record.hijacked:
                outcome = f"stream closed, first by {self._firstToClose or outcome}"
            self._logRequest(record, outcome)

    def _logRequest(self, record: RequestRecord, outcome: str, emit=None) -> None:
        """
        The access log: one event per request, with the record's fields.

        The message is formatted here with one f-string and handed over as
        the private field C{_text} (which the JSON log leaves out, as it does
        every C{_} field): twisted.logger's own formatting of a format string
        with a dozen fields, which each observer would do again, cost more
        than the rest of the request. The text is the same as formatting
        C{ACCESS_LOG_FORMAT} with the fields would give.
        """
        user = record.user or "-"
        duration = self._clock.seconds() - record.started
        (emit or log.info)(
            "{_text}",
            _text=(
                f"{self._peer} {user} {record.method} {record.path}: {outcome}; "
                f"{record.bytesIn} bytes in, {record.bytesOut} bytes out, "
                f"{duration:.3f} s"
            ),
            peer=self._peer,
            user=user,
            auth=record.auth,
            certificate=record.certificate,
            method=record.method,
            path=record.path,
            outcome=outcome,
            bytesIn=record.bytesIn,
            bytesOut=record.bytesOut,
            duration=duration,
            hijacked=record.hijacked,
        )
