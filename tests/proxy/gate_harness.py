# -*- test-case-name: tests.proxy.test_gate,tests.proxy.test_gate_properties -*-
"""
The one in-memory harness for the request gate: a L{GateFactory} on a
C{Clock}, client connections to it over C{StringTransport}s, and the
connections the gate opens to dockerd.

C{tests.proxy.test_gate} plays dockerd and the reactor by hand, step by
step: the gate's connections to dockerd wait until L{GateHarness.acceptDocker},
the test feeds dockerd's answers and says when a connection is lost.
C{tests.proxy.test_gate_properties} lets the harness play both: an
L{AnsweringDockerd} parses what reaches it, checks that each request was
authorised and answers as dockerd does, closes are reported on the next turn
of the clock, and L{GateHarness.pump} runs everything until it settles.

Why one harness: both suites drive the same gate in the same way. With one,
how the gate is built (its factory's arguments, its accounts, how it reaches
dockerd) and what its transports do (half-closes, producers, certificates)
is written once, so a change to the gate's wiring is made in one place and
the example tests and the properties keep testing the same gate.
"""

from __future__ import annotations

import copy
from base64 import b64encode
from collections.abc import Iterable

import bcrypt
from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.error import ConnectionDone, ConnectionRefusedError
from twisted.internet.interfaces import IHalfCloseableProtocol
from twisted.internet.task import Clock, deferLater
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure

from haven_agent.proxy.auth import BasicAuthChecker
from haven_agent.proxy.body_framing import ChunkedBody, FramingError, LengthBody
from haven_agent.proxy.gate import GateFactory
from haven_agent.proxy.http_head import HeadError, HeadReader
from tests.fake_dockerd import UPGRADED

# The gate's accounts


def basic(credentials: bytes) -> bytes:
    """
    An C{Authorization} header line for HTTP Basic C{user:password}.
    """
    return b"Authorization: Basic " + b64encode(credentials) + b"\r\n"


#: The administrator's credentials, a wrong password, the read-only viewer's.
AUTH = basic(b"admin:pw")
BAD_AUTH = basic(b"admin:nope")
VIEWER = basic(b"viewer:look")

_HASHES = {
    secret: bcrypt.hashpw(secret, bcrypt.gensalt(4)).decode()
    for secret in (b"pw", b"look")
}


def plainChecker(runInThread=None) -> BasicAuthChecker:
    """
    The accounts with plain passwords, checked at once unless
    C{runInThread} says otherwise.
    """
    return BasicAuthChecker(
        "admin",
        "pw",
        runInThread or (lambda f, *a: succeed(f(*a))),
        readOnly=("viewer", "look"),
    )


def hashedChecker(runInThread) -> BasicAuthChecker:
    """
    The same accounts with bcrypt hashes, checked through C{runInThread}:
    a decision takes as long as that makes it.
    """
    return BasicAuthChecker(
        "admin", _HASHES[b"pw"], runInThread, readOnly=("viewer", _HASHES[b"look"])
    )


def user_of(check: BasicAuthChecker, head) -> str | None:
    """
    Whose credentials C{head} carries, by a checker that answers at once.
    """
    results = []
    check.check(head.first(b"authorization")).addCallback(results.append)
    return results[0]


HEALTH_PATH = b"/_agent/health"
READ_METHODS = (b"GET", b"HEAD")

#: The gate's timeouts here (its defaults, named so tests can count on them).
HEAD_TIMEOUT = 30.0
LINGER = 2.0
IDLE_TIMEOUT = 60.0

DOCKER_DESCRIPTION = "unix:/run/docker.sock"
CLIENT_ADDRESS = IPv4Address("TCP", "10.0.0.9", 4321)

# Transports


class ClientSide(StringTransport):
    """
    The client's connection as the gate sees it: half-closes and aborts are
    recorded, a write after closing is a problem, and no producer to
    unregister is fine (as with Twisted's transports, not StringTransport).
    A close is reported to the protocol only by the test, or (with the
    harness's C{closeLater}) on the next turn of the clock, as the reactor
    would.
    """

    side = "the client"

    def __init__(self, harness: GateHarness, certificate=None) -> None:
        super().__init__(peerAddress=CLIENT_ADDRESS)
        self.harness = harness
        self.protocol = None
        self.certificate = certificate
        self.writeClosed = False
        self.lost = False
        self.aborted = False

    def getPeerCertificate(self):
        return self.certificate

    def _writesEnded(self) -> bool:
        return self.writeClosed or self.lost

    def write(self, data: bytes) -> None:
        if self._writesEnded():
            self.harness.problem(f"write to {self.side} after closing: {data[:60]!r}")
        super().write(data)

    def loseWriteConnection(self) -> None:
        self.writeClosed = True

    def loseConnection(self) -> None:
        if not self.disconnecting:
            self.disconnecting = True
            if self.harness.closeLater:
                self.harness.clock.callLater(0, self.connectionLost)

    def abortConnection(self) -> None:
        self.aborted = True
        self.loseConnection()

    def unregisterProducer(self) -> None:
        self.producer = None
        self.streaming = None

    def connectionLost(self) -> None:
        """
        Tell the protocol its connection is gone (once).
        """
        if not self.lost:
            self.lost = True
            self.protocol.connectionLost(Failure(ConnectionDone()))


class DockerSide(ClientSide):
    """
    One connection the gate opened to dockerd; remembers when each write
    happened relative to the answering dockerd's answers.
    """

    side = "dockerd"

    def __init__(self, harness: GateHarness) -> None:
        super().__init__(harness)
        self.writes: list[tuple[int, int]] = []

    def _writesEnded(self) -> bool:
        return self.writeClosed or self.disconnecting

    def write(self, data: bytes) -> None:
        self.writes.append((len(self.value()), self.harness.deliveries))
        super().write(data)

    def deliveriesBefore(self, offset: int) -> int:
        """
        How many answers dockerd had sent when the byte at C{offset} was
        written to it.
        """
        count = 0
        for start, deliveries in self.writes:
            if start > offset:
                break
            count = deliveries
        return count


# The answering dockerd

OK_ANSWER = (
    b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
    b"Content-Length: 2\r\n\r\n{}"
)
HEAD_ANSWER = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n"
NOT_FOUND = (
    b"HTTP/1.1 404 Not Found\r\nContent-Type: application/json\r\n"
    b'Content-Length: 28\r\n\r\n{"message":"No such thing"}\n'
)
BAD_BODY = b"HTTP/1.1 400 Bad Request\r\nConnection: close\r\n\r\n"


class AnsweringDockerd:
    """
    dockerd behind the gate: parses the requests it gets, checks each was
    authorised, and answers them in order once every request it has is
    complete (so an answer never arrives between two pipelined requests'
    answers). Attach and exec start are hijacked (101) or refused (404) as
    the harness's C{hijacks} say; pipelined ones are always hijacked, which
    is what the gate then takes as given.
    """

    def __init__(self, harness: GateHarness, protocol) -> None:
        self.harness = harness
        self.protocol = protocol
        self.transport = DockerSide(harness)
        self.transport.protocol = protocol
        self.reader = HeadReader()
        self.head = None
        self.body = None
        self.mode = "http"
        self.seen = 0
        self.heads: list[int] = []  # offsets where forwarded heads start
        self.answers: list[bytes] = []
        self.hijackNext = False
        self.readClosed = False
        self.delivered = 0
        self.sent = b""

    def step(self) -> bool:
        """
        Do the next thing there is to do; say if there was one.
        """
        if self.transport.lost or self.readClosed:
            return False
        received = self.transport.value()
        if received and self.delivered >= self.harness.dockerdDies >= 0:
            if len(received) > self.seen:
                # What arrived before it went away was received all the
                # same: its heads are where the forwarded requests start.
                data, start = received[self.seen :], self.seen
                self.seen = len(received)
                self._parse(data, start)
            self.die()
            return True
        # One thing at a time: what the gate does in reply may change what
        # comes next.
        if len(received) > self.seen:
            data, start = received[self.seen :], self.seen
            self.seen = len(received)
            self._parse(data, start)
        elif self.mode == "broken":
            self._deliverRaw(b"".join(self.answers) + BAD_BODY)
            self._close()
        elif self.answers and (self.body is None or self.transport.writeClosed):
            self._deliver()
        elif self.transport.writeClosed:
            # dockerd answers what it can, then closes: at the end of the
            # input, or after a body it cannot read.
            self._close()
        else:
            return False
        return True

    def _close(self) -> None:
        self.readClosed = True
        if IHalfCloseableProtocol.providedBy(self.protocol):
            self.protocol.readConnectionLost()
        else:
            self.transport.loseConnection()

    def die(self) -> None:
        """
        dockerd goes away (restarted): its end of the connection closes.
        """
        self.mode = "dead"
        self.harness.died = True
        self.readClosed = True
        self.protocol.readConnectionLost()
        self.transport.loseConnection()

    def _deliver(self) -> None:
        answers, self.answers = b"".join(self.answers), []
        if self.hijackNext:
            self.mode = "raw"
        self._deliverRaw(answers)

    def _deliverRaw(self, data: bytes) -> None:
        self.answers = []
        self.harness.deliveries += 1
        self.delivered += 1
        self.sent += data
        self.harness.dockerSent += data
        self.protocol.dataReceived(data)

    def _parse(self, data: bytes, start: int) -> None:
        position = 0
        while position < len(data) and self.mode == "http" and not self.hijackNext:
            if self.body is not None:
                try:
                    end = self.body.endIn(data, position)
                except FramingError:
                    self.mode = "broken"
                    return
                position = end
                if self.body.done:
                    self.body = None
                    self._answer()
                continue
            try:
                head, rest = self.reader.headAndRest(data[position:])
            except HeadError as error:
                self.harness.problem(f"dockerd got a bad head: {error.message}")
                self.mode = "raw"
                return
            if head is None:
                return
            position = len(data) - len(rest)
            self._request(head, start + position - len(head.raw))

    def _request(self, head, offset: int) -> None:
        harness = self.harness
        self.heads.append(offset)
        try:
            framing = head.framing
        except HeadError as error:
            harness.problem(f"dockerd got bad framing: {error.message}")
            self.mode = "raw"
            return
        if head.method in READ_METHODS and head.path == HEALTH_PATH:
            harness.problem("a health check reached dockerd")
        user = user_of(harness.checker, head)
        if user is None:
            harness.problem(f"an unauthorised request reached dockerd: {head.raw!r}")
        elif harness.checker.isReadOnly(user) and (
            head.method not in READ_METHODS or head.hijacks
        ):
            harness.problem(f"a read-only user's write reached dockerd: {head.raw!r}")
        self.head = head
        if framing.chunked:
            self.body = ChunkedBody()
        elif framing.length:
            self.body = LengthBody(framing.length)
        else:
            self._answer()

    def _answer(self) -> None:
        head = self.head
        if not head.hijacks:
            self.answers.append(HEAD_ANSWER if head.method == b"HEAD" else OK_ANSWER)
            return
        previous = self.heads[-2] if len(self.heads) > 1 else None
        current = self.heads[-1]
        pipelined = previous is not None and self.transport.deliveriesBefore(
            previous
        ) == self.transport.deliveriesBefore(current)
        if pipelined or self.harness.nextHijack():
            self.answers.append(UPGRADED)
            self.hijackNext = True
        else:
            self.answers.append(NOT_FOUND)


# The harness


class GateHarness:
    """
    A gate, a client connection to it (more with L{another}), and the
    connections it opens to dockerd.

    @ivar client: the client's L{ClientSide}; C{protocol}, the gate on it.
    @ivar checker: the accounts' plain checker, for working out what is
        expected (the gate's own may be slow).
    @ivar connects: with C{connect="later"}, the gate's dockerd connections
        not yet accepted, as (protocol, Deferred).
    @ivar docker: the gate's dockerd protocol L{acceptDocker} connected, on
        C{dockerTransport}.
    @ivar dockerds: with C{connect="answer"}, every L{AnsweringDockerd}.
    @ivar problems: what the transports and dockerd saw go wrong.
    @ivar sent: what L{send} delivered to the client connection.
    """

    def __init__(
        self,
        connect: str = "later",
        *,
        clock: Clock | None = None,
        checker: BasicAuthChecker | None = None,
        slow: bool = False,
        closeLater: bool = False,
        certificate=None,
        hijacks: Iterable[bool] = (),
        dockerdDies: int = -1,
        **options,
    ) -> None:
        """
        @param connect: how the gate's connections to dockerd go:
            C{"later"}, held in C{connects} until L{acceptDocker};
            C{"answer"}, to an L{AnsweringDockerd}; C{"refuse"}, refused.
        @param checker: the gate's checker, by default L{plainChecker}
            (L{hashedChecker} with C{slow}).
        @param slow: password checks (bcrypt "in a thread") and connecting
            to an answering dockerd take a turn of the clock rather than
            none.
        @param closeLater: a transport told to close reports it to its
            protocol on the next turn of the clock, as the reactor does;
            otherwise the test says when a connection is lost.
        @param certificate: the client's TLS certificate (cryptography's
            C{x509.Certificate}).
        @param hijacks: whether the answering dockerd hijacks each attach
            or exec start in turn (after the last: it does).
        @param dockerdDies: how many answers the answering dockerd sends
            before it goes away (-1: it stays).
        @param options: more L{GateFactory} arguments.
        """
        self.clock = clock or Clock()
        self.connectMode = connect
        self.slow = slow
        self.closeLater = closeLater
        self.checker = plainChecker()
        self.dockerdDies = dockerdDies
        self.problems: list[str] = []
        self.connects: list[tuple[object, Deferred]] = []
        self.dockerds: list[AnsweringDockerd] = []
        self.deliveries = 0
        self.dockerSent = b""
        self.died = False
        self._hijacks = iter(hijacks)
        self._certificate = certificate
        if checker is None and slow:
            checker = hashedChecker(lambda f, *a: deferLater(self.clock, 0, f, *a))
        elif checker is None:
            checker = self.checker
        timeouts = {
            "firstHeadTimeout": HEAD_TIMEOUT,
            "nextHeadTimeout": HEAD_TIMEOUT,
            "lingerTimeout": LINGER,
            "idleTimeout": IDLE_TIMEOUT,
        }
        self.factory = GateFactory(
            checker=checker,
            connectDocker=self._connect,
            dockerDescription=DOCKER_DESCRIPTION,
            clock=self.clock,
            **(timeouts | options),
        )
        self._connectClient()

    def _connectClient(self) -> None:
        self.client = ClientSide(self, self._certificate)
        self.protocol = self.factory.buildProtocol(self.client.getPeer())
        self.client.protocol = self.protocol
        self.docker = None
        self.dockerTransport: DockerSide | None = None
        self._sent = bytearray()
        self.eof = False
        self.protocol.makeConnection(self.client)

    def another(self) -> GateHarness:
        """
        A second client connection to the same gate; the factory, the clock
        and the dockerd connections are shared.
        """
        other = copy.copy(self)
        other._connectClient()
        return other

    def problem(self, text: str) -> None:
        self.problems.append(text)

    def nextHijack(self) -> bool:
        return next(self._hijacks, True)

    # dockerd

    def _connect(self, protocol):
        if self.connectMode == "refuse":
            return fail(ConnectionRefusedError("Connection refused"))
        if self.connectMode == "later":
            d: Deferred = Deferred()
            self.connects.append((protocol, d))
            return d
        if self.slow:
            return deferLater(self.clock, 0, self._answering, protocol)
        return succeed(self._answering(protocol))

    def _answering(self, protocol):
        dockerd = AnsweringDockerd(self, protocol)
        self.dockerds.append(dockerd)
        protocol.makeConnection(dockerd.transport)
        return protocol

    def acceptDocker(self) -> DockerSide:
        """
        Connect the first connection the gate is waiting for: the test
        plays dockerd with C{self.docker.dataReceived} and L{dockerCloses}.
        """
        protocol, d = self.connects.pop(0)
        self.docker = protocol
        self.dockerTransport = DockerSide(self)
        self.dockerTransport.protocol = protocol
        protocol.makeConnection(self.dockerTransport)
        d.callback(protocol)
        return self.dockerTransport

    def dockerCloses(self) -> None:
        """
        The dockerd that L{acceptDocker} connected closes its connection.
        """
        self.dockerTransport.loseConnection()
        self.dockerTransport.connectionLost()

    @property
    def dockerd(self) -> AnsweringDockerd | None:
        """
        The answering dockerd requests went to (health probes send none).
        """
        used = [d for d in self.dockerds if d.transport.value()]
        assert len(used) <= 1, "one dockerd connection per client connection"
        return used[0] if used else None

    @property
    def forwarded(self) -> bytes:
        dockerd = self.dockerd
        return dockerd.transport.value() if dockerd is not None else b""

    # The client

    @property
    def sent(self) -> bytes:
        return bytes(self._sent)

    def send(self, data: bytes) -> bool:
        """
        Deliver C{data} unless the connection is gone; say if it was.
        """
        if self.client.lost or self.eof:
            return False
        self._sent += data
        self.protocol.dataReceived(data)
        return True

    def endInput(self) -> None:
        """
        The client half-closes: it will send no more.
        """
        if not self.client.lost and not self.eof:
            self.eof = True
            self.protocol.readConnectionLost()

    # Time

    def pump(self) -> None:
        """
        Let what is due on the clock and the answering dockerds run until
        nothing more happens.
        """
        for _ in range(10_000):
            progressed = False
            if any(
                call.getTime() <= self.clock.seconds()
                for call in self.clock.getDelayedCalls()
            ):
                self.clock.advance(0)
                progressed = True
            for dockerd in list(self.dockerds):
                progressed = dockerd.step() or progressed
            if not progressed:
                return
        raise AssertionError("the gate and dockerd never settle")

    def advance(self, seconds: float) -> None:
        self.clock.advance(seconds)
        self.pump()

    def outcome(self) -> tuple:
        """
        What can be seen from outside, for comparing runs.
        """
        dockerd = self.dockerd
        return (
            self.client.value(),
            self.forwarded,
            self.client.writeClosed,
            self.client.disconnecting,
            dockerd.mode if dockerd else None,
            dockerd.transport.writeClosed if dockerd else None,
            len(self.clock.getDelayedCalls()),
        )
