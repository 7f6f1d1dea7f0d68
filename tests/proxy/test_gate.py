"""
Tests for L{haven_agent.proxy.gate}: the per-request gate and the splice wiring,
driven over C{StringTransport}s and a C{Clock} by L{tests.proxy.gate_harness}.
"""

from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.logger import capturedLogs, formatEvent
from twisted.trial.unittest import SynchronousTestCase

from haven_agent.proxy.connection_limits import ConnectionLimits
from tests.fake_dockerd import LEGACY_HIJACKED, UPGRADED
from tests.proxy.gate_harness import (
    AUTH,
    BAD_AUTH,
    VIEWER,
    GateHarness,
    hashedChecker,
)


def get(path: bytes = b"/info", auth: bytes = AUTH, extra: bytes = b"") -> bytes:
    return b"GET " + path + b" HTTP/1.1\r\nHost: docker\r\n" + auth + extra + b"\r\n"


class ForwardingTests(SynchronousTestCase):
    def test_authorisedRequestForwardedUntouched(self) -> None:
        h = GateHarness()
        request = get(extra=b"X-Registry-Auth: e30=\r\nX-Odd:  spaced \r\n")
        h.send(request)
        self.assertEqual(len(h.connects), 1)
        self.assertEqual(
            h.client.producerState, "producing", "no pause while nothing follows"
        )
        docker = h.acceptDocker()
        self.assertEqual(docker.value(), request)
        self.assertEqual(h.client.producerState, "producing")
        h.docker.dataReceived(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}")
        self.assertEqual(
            h.client.value(), b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}"
        )

    def test_pipelinedRequestsOneConnection(self) -> None:
        h = GateHarness()
        body = b'{"Image":"x"}'
        second = (
            b"POST /v1.41/containers/create HTTP/1.1\r\n"
            + AUTH
            + b"Content-Length: %d\r\n\r\n" % len(body)
            + body
        )
        stream = get(b"/_ping") + second + get(b"/version")
        h.send(stream[:10])
        h.send(stream[10:])
        docker = h.acceptDocker()
        self.assertEqual(docker.value(), stream)
        self.assertEqual(len(h.connects), 0, "one dockerd connection")

    def test_chunkedBodyThenNextRequestGated(self) -> None:
        h = GateHarness()
        upload = (
            b"POST /build HTTP/1.1\r\n" + AUTH + b"Transfer-Encoding: chunked\r\n\r\n"
            b"4\r\nGET \r\n0\r\n\r\n"
        )
        h.send(upload)
        docker = h.acceptDocker()
        h.send(get(auth=BAD_AUTH))
        self.assertEqual(docker.value(), upload, "the unauthorised request is held")
        self.assertTrue(h.dockerTransport.writeClosed)
        self.assertEqual(h.client.value(), b"", "no answer before dockerd is done")
        h.docker.dataReceived(b"HTTP/1.1 200 OK\r\n\r\nbuilt")
        h.dockerCloses()
        answer = h.client.value()
        self.assertTrue(answer.startswith(b"HTTP/1.1 200 OK\r\n\r\nbuilt"))
        self.assertIn(b"HTTP/1.1 401 Unauthorized\r\n", answer)
        self.assertTrue(h.client.writeClosed)

    def test_contentLengthBodyMayLookLikeARequest(self) -> None:
        h = GateHarness()
        body = get(b"/smuggled", auth=b"")
        request = (
            b"PUT /archive HTTP/1.1\r\n"
            + AUTH
            + b"Content-Length: %d\r\n\r\n" % len(body)
        )
        h.send(request + body + get(b"/after"))
        docker = h.acceptDocker()
        self.assertEqual(docker.value(), request + body + get(b"/after"))

    def test_largeBodyStreamsThrough(self) -> None:
        h = GateHarness()
        size = 20 * 1024 * 1024
        h.send(
            b"POST /images/load HTTP/1.1\r\n"
            + AUTH
            + b"Content-Length: %d\r\n\r\n" % size
        )
        docker = h.acceptDocker()
        docker.clear()
        piece = b"\1" * 65536
        for _ in range(size // len(piece)):
            h.send(piece)
            self.assertEqual(len(docker.value()), len(piece))
            docker.clear()
        h.send(get(b"/x", auth=b""))
        self.assertEqual(docker.value(), b"", "the next head is gated again")


class HijackTests(SynchronousTestCase):
    def test_attachBecomesRawPipeOnceDockerHijacks(self) -> None:
        h = GateHarness()
        head = (
            b"POST /v1.41/containers/c/attach?stdin=1&stream=1 HTTP/1.1\r\n"
            + AUTH
            + b"Connection: Upgrade\r\nUpgrade: tcp\r\n\r\n"
        )
        h.send(head + b"raw stdin\r\n\r\n")
        docker = h.acceptDocker()
        self.assertEqual(docker.value(), head, "stdin waits for dockerd's answer")
        self.assertEqual(h.client.producerState, "producing")
        h.send(b"GET / HTTP/1.1\r\n\r\n")
        self.assertEqual(h.client.producerState, "paused", "more input waits too")
        self.assertEqual(docker.value(), head)
        h.docker.dataReceived(UPGRADED[:20])
        self.assertEqual(docker.value(), head)
        h.docker.dataReceived(UPGRADED[20:] + b"out")
        self.assertEqual(h.client.value(), UPGRADED + b"out")
        self.assertEqual(
            docker.value(), head + b"raw stdin\r\n\r\nGET / HTTP/1.1\r\n\r\n"
        )
        self.assertEqual(h.client.producerState, "producing")
        self.assertEqual(h.client.producerState, "producing")
        h.send(b"\x00\x01 not http")
        self.assertTrue(docker.value().endswith(b"\x00\x01 not http"))

    def test_legacyRawStream(self) -> None:
        h = GateHarness()
        head = b"POST /containers/c/attach?stdin=1 HTTP/1.1\r\n" + AUTH + b"\r\n"
        h.send(head)
        docker = h.acceptDocker()
        h.docker.dataReceived(LEGACY_HIJACKED)
        h.send(b"GET nothing")
        self.assertEqual(docker.value(), head + b"GET nothing")

    def test_execStartBodyThenRawPipe(self) -> None:
        h = GateHarness()
        head = (
            b"POST /v1.41/exec/e/start HTTP/1.1\r\n"
            + AUTH
            + b"Connection: Upgrade\r\nUpgrade: tcp\r\nContent-Length: 2\r\n\r\n{}"
        )
        h.send(head + b"stdin")
        docker = h.acceptDocker()
        self.assertEqual(docker.value(), head, "the body goes, stdin waits")
        h.docker.dataReceived(UPGRADED)
        self.assertEqual(docker.value(), head + b"stdin")

    def test_interimAnswerSkipped(self) -> None:
        h = GateHarness()
        head = (
            b"POST /exec/e/start HTTP/1.1\r\n"
            + AUTH
            + b"Expect: 100-continue\r\nUpgrade: tcp\r\nContent-Length: 2\r\n\r\n"
        )
        h.send(head)
        docker = h.acceptDocker()
        h.docker.dataReceived(b"HTTP/1.1 100 Continue\r\n\r\n")
        h.send(b"{}stdin")
        self.assertEqual(docker.value(), head + b"{}", "still waiting for the answer")
        h.docker.dataReceived(UPGRADED)
        self.assertEqual(docker.value(), head + b"{}stdin")

    def test_ordinaryAnswerKeepsGating(self) -> None:
        """
        A detached exec start, or a 404 for a missing container, leaves the
        connection in HTTP: the next request passes the gate again.
        """
        for answer in [
            b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n",
            b"HTTP/1.1 404 Not Found\r\nContent-Type: application/json\r\n"
            b'Content-Length: 27\r\n\r\n{"message":"No such exec"}\n',
        ]:
            h = GateHarness()
            head = (
                b"POST /v1.41/exec/e/start HTTP/1.1\r\n"
                + AUTH
                + b'Content-Length: 15\r\n\r\n{"Detach":true}'
            )
            h.send(head + get(b"/containers/json", auth=BAD_AUTH))
            docker = h.acceptDocker()
            self.assertEqual(docker.value(), head, "held until the answer's head")
            h.docker.dataReceived(answer)
            self.assertEqual(docker.value(), head, "the unauthorised request is held")
            # dockerd owes no more answers: the refusal comes at once.
            self.assertTrue(h.dockerTransport.disconnecting)
            self.assertIn(b"HTTP/1.1 401 Unauthorized", h.client.value())

    def test_pipelinedHijackWaitsForItsOwnAnswer(self) -> None:
        """
        Behind a request whose answer has not begun, the next answer head is
        not the attach's own: what follows the attach waits until the
        earlier answer has ended and the attach's own has said "hijacked".
        """
        h = GateHarness()
        attach = (
            b"POST /containers/c/attach HTTP/1.1\r\n" + AUTH + b"Upgrade: tcp\r\n\r\n"
        )
        h.send(get(b"/_ping") + attach + b"early")
        docker = h.acceptDocker()
        self.assertEqual(docker.value(), get(b"/_ping") + attach)
        h.docker.dataReceived(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nOK")
        self.assertEqual(docker.value(), get(b"/_ping") + attach, "still held")
        h.docker.dataReceived(UPGRADED)
        self.assertEqual(docker.value(), get(b"/_ping") + attach + b"early")

    def test_pipelinedUpgradeAnsweredPlainlyKeepsGating(self) -> None:
        """
        The three requests of one write: a ping, a ping asking for an
        upgrade, a request without credentials. dockerd answers both pings
        200: nothing was hijacked, so the third passes the gate, and is
        refused without reaching dockerd.
        """
        h = GateHarness()
        upgrade = get(b"/_ping", extra=b"Connection: Upgrade\r\nUpgrade: tcp\r\n")
        create = (
            b"POST /volumes/create HTTP/1.1\r\nHost: docker\r\n"
            b"Content-Length: 2\r\n\r\n{}"
        )
        h.send(get(b"/_ping") + upgrade + create)
        docker = h.acceptDocker()
        pong = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nOK"
        h.docker.dataReceived(pong + pong)
        self.assertEqual(docker.value(), get(b"/_ping") + upgrade)
        self.assertEqual(h.client.value()[: 2 * len(pong)], pong + pong)
        self.assertIn(b"HTTP/1.1 401 Unauthorized", h.client.value())

    def test_hijackAfterAnsweredRequestIsWatched(self) -> None:
        h = GateHarness()
        h.send(get(b"/_ping"))
        docker = h.acceptDocker()
        h.docker.dataReceived(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nOK")
        attach = (
            b"POST /containers/c/attach HTTP/1.1\r\n" + AUTH + b"Upgrade: tcp\r\n\r\n"
        )
        h.send(attach + b"early")
        self.assertEqual(docker.value(), get(b"/_ping") + attach)
        h.docker.dataReceived(UPGRADED)
        self.assertEqual(docker.value(), get(b"/_ping") + attach + b"early")

    def test_clientHalfCloseWhileAwaitingAnswer(self) -> None:
        h = GateHarness()
        h.send(
            b"POST /exec/e/start HTTP/1.1\r\n" + AUTH + b"Upgrade: tcp\r\n\r\ndata\n"
        )
        h.acceptDocker()
        h.protocol.readConnectionLost()
        self.assertFalse(h.dockerTransport.writeClosed, "held until the answer")
        h.docker.dataReceived(UPGRADED)
        self.assertTrue(h.dockerTransport.value().endswith(b"data\n"))
        self.assertTrue(h.dockerTransport.writeClosed)

    def test_clientHalfCloseReachesDocker(self) -> None:
        h = GateHarness()
        h.send(b"POST /exec/e/start HTTP/1.1\r\n" + AUTH + b"Upgrade: tcp\r\n\r\n")
        h.acceptDocker()
        h.docker.dataReceived(UPGRADED)
        h.send(b"data\n")
        h.protocol.readConnectionLost()
        self.assertTrue(h.dockerTransport.writeClosed)
        self.assertIsNone(h.dockerTransport.producer, "no producer left to stall it")
        h.docker.dataReceived(b"data\ndone\n")
        self.assertTrue(h.client.value().endswith(b"data\ndone\n"))
        self.assertFalse(h.client.disconnecting)
        h.dockerCloses()
        self.assertTrue(h.client.disconnecting)

    def test_dockerHalfCloseReachesClient(self) -> None:
        h = GateHarness()
        h.send(
            b"POST /containers/c/attach HTTP/1.1\r\n" + AUTH + b"Upgrade: tcp\r\n\r\n"
        )
        h.acceptDocker()
        h.docker.dataReceived(UPGRADED)
        h.docker.readConnectionLost()
        self.assertTrue(h.client.writeClosed)
        self.assertFalse(h.client.disconnecting)
        h.send(b"more stdin")
        self.assertTrue(h.dockerTransport.value().endswith(b"more stdin"))
        h.protocol.readConnectionLost()
        self.assertTrue(h.dockerTransport.disconnecting)

    def test_dockerEndOutsideStreamClosesBoth(self) -> None:
        h = GateHarness()
        h.send(get(b"/close-after-response"))
        h.acceptDocker()
        h.docker.dataReceived(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n")
        h.docker.readConnectionLost()
        self.assertTrue(h.dockerTransport.disconnecting)
        h.dockerCloses()
        self.assertTrue(h.client.disconnecting)


class RefusalTests(SynchronousTestCase):
    def assertRefused(self, h: GateHarness, status: bytes) -> bytes:
        answer = h.client.value()
        self.assertTrue(answer.startswith(b"HTTP/1.1 " + status), answer)
        self.assertIn(b"Content-Type: application/json\r\n", answer)
        self.assertIn(b"Connection: close\r\n", answer)
        self.assertTrue(answer.endswith(b"}\n"))
        self.assertTrue(h.client.writeClosed)
        self.assertEqual(h.connects, [], "nothing reached dockerd")
        return answer

    def test_missingCredentials(self) -> None:
        h = GateHarness()
        h.send(get(auth=b""))
        answer = self.assertRefused(h, b"401 ")
        self.assertIn(b'WWW-Authenticate: Basic realm="haven-agent"\r\n', answer)
        self.assertIn(b'{"message": "authentication required', answer)

    def test_wrongCredentials(self) -> None:
        h = GateHarness()
        h.send(get(auth=BAD_AUTH))
        answer = self.assertRefused(h, b"401 ")
        self.assertIn(b"wrong user name or password", answer)

    def test_lingeringCloseDrainsThenCloses(self) -> None:
        h = GateHarness()
        h.send(b"POST /images/load HTTP/1.1\r\nContent-Length: 99999\r\n\r\n")
        self.assertRefused(h, b"401 ")
        self.assertFalse(h.client.disconnecting)
        h.send(b"x" * 5000)
        self.assertFalse(h.client.disconnecting)
        h.clock.advance(h.factory.lingerTimeout)
        self.assertTrue(h.client.disconnecting)

    def test_clientCloseEndsLinger(self) -> None:
        h = GateHarness()
        h.send(get(auth=b""))
        h.protocol.readConnectionLost()
        self.assertTrue(h.client.disconnecting)

    def test_headTooLarge(self) -> None:
        h = GateHarness()
        h.send(b"GET / HTTP/1.1\r\n" + AUTH + b"X: " + b"a" * 70000)
        self.assertRefused(h, b"431 ")

    def test_malformed(self) -> None:
        h = GateHarness()
        h.send(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\r\n\r\n")
        self.assertRefused(h, b"400 ")

    def test_http2Preface(self) -> None:
        h = GateHarness()
        h.send(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
        self.assertRefused(h, b"400 ")

    def test_badFramingBeforeAuth(self) -> None:
        h = GateHarness()
        h.send(
            b"POST / HTTP/1.1\r\n"
            + AUTH
            + b"Content-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n"
        )
        self.assertRefused(h, b"400 ")

    def test_dockerUnreachable(self) -> None:
        h = GateHarness(connect="refuse")
        with capturedLogs() as events:
            h.send(get())
        answer = h.client.value()
        self.assertTrue(answer.startswith(b"HTTP/1.1 502 Bad Gateway\r\n"))
        self.assertIn(b"unix:/run/docker.sock", answer)
        self.assertIn(b"Connection refused", answer)
        self.assertTrue(h.client.writeClosed)
        self.assertTrue(
            any("unix:/run/docker.sock" in formatEvent(e) for e in events), events
        )

    def test_malformedChunkLeftToDocker(self) -> None:
        h = GateHarness()
        head = (
            b"POST /build HTTP/1.1\r\n" + AUTH + b"Transfer-Encoding: chunked\r\n\r\n"
        )
        h.send(head)
        docker = h.acceptDocker()
        h.send(b"zz\r\nGET /smuggled HTTP/1.1\r\n\r\n")
        self.assertEqual(docker.value(), head + b"zz\r\n")
        self.assertTrue(h.dockerTransport.writeClosed)
        h.send(b"more")
        self.assertEqual(docker.value(), head + b"zz\r\n")
        h.docker.dataReceived(b"HTTP/1.1 400 Bad Request\r\n\r\n")
        h.dockerCloses()
        self.assertEqual(h.client.value(), b"HTTP/1.1 400 Bad Request\r\n\r\n")
        self.assertTrue(h.client.disconnecting)


class TimeTests(SynchronousTestCase):
    def test_silentConnectionClosed(self) -> None:
        h = GateHarness()
        h.clock.advance(29)
        self.assertFalse(h.client.disconnecting)
        h.clock.advance(1)
        self.assertTrue(h.client.disconnecting)
        self.assertEqual(h.client.value(), b"")

    def test_slowHeadGets408(self) -> None:
        h = GateHarness()
        h.send(b"GET / HTTP/1.1\r\n")
        h.clock.advance(30)
        self.assertTrue(h.client.value().startswith(b"HTTP/1.1 408 "))

    def test_streamsNeverTimeOut(self) -> None:
        h = GateHarness()
        h.send(get(b"/events"))
        h.acceptDocker()
        h.clock.advance(30)
        h.clock.advance(7 * 24 * 3600)
        self.assertFalse(h.client.disconnecting)
        self.assertEqual(h.clock.getDelayedCalls(), [])

    def test_laterHeadBoundedOnceStarted(self) -> None:
        h = GateHarness()
        h.send(get(b"/_ping"))
        h.acceptDocker()
        h.clock.advance(3600)
        h.send(b"GET /in")
        h.clock.advance(30)
        self.assertTrue(h.dockerTransport.writeClosed, "refusal waits for dockerd")
        h.dockerCloses()
        self.assertTrue(h.client.value().startswith(b"HTTP/1.1 408 "))


class FlowControlTests(SynchronousTestCase):
    def test_producersRegisteredBothWays(self) -> None:
        h = GateHarness()
        h.send(get(b"/events"))
        h.acceptDocker()
        self.assertTrue(h.client.streaming)
        self.assertTrue(h.dockerTransport.streaming)
        # The client cannot keep up: dockerd reads stop.
        h.client.producer.pauseProducing()
        self.assertEqual(h.dockerTransport.producerState, "paused")
        h.client.producer.resumeProducing()
        self.assertEqual(h.dockerTransport.producerState, "producing")
        # dockerd cannot keep up: client reads stop.
        h.dockerTransport.producer.pauseProducing()
        self.assertEqual(h.client.producerState, "paused")
        h.dockerTransport.producer.resumeProducing()
        self.assertEqual(h.client.producerState, "producing")

    def test_pauseReasonsCombine(self) -> None:
        h = GateHarness()
        h.send(get())
        h.acceptDocker()
        h.dockerTransport.producer.pauseProducing()
        h.send(get(b"/b"))
        # A decision finishing must not resume a client that dockerd paused.
        self.assertEqual(h.client.producerState, "paused")
        h.dockerTransport.producer.resumeProducing()
        self.assertEqual(h.client.producerState, "producing")

    def test_stopProducingDoesNotCloseTheOtherSide(self) -> None:
        h = GateHarness()
        h.send(get())
        h.acceptDocker()
        h.dockerTransport.producer.stopProducing()
        h.client.producer.stopProducing()
        self.assertFalse(h.client.disconnecting)
        self.assertFalse(h.dockerTransport.disconnecting)


class SlowCheckTests(SynchronousTestCase):
    def test_dataDuringDecisionIsKept(self) -> None:
        pending = []

        def later(f, *args):
            d = Deferred()
            pending.append((d, f, args))
            return d

        h = GateHarness(checker=hashedChecker(later))
        h.send(get(b"/a"))
        self.assertEqual(h.client.producerState, "producing")
        h.send(get(b"/b"))
        self.assertEqual(h.client.producerState, "paused", "no more until decided")
        d, f, args = pending.pop()
        d.callback(f(*args))
        docker = h.acceptDocker()
        self.assertEqual(docker.value(), get(b"/a") + get(b"/b"))
        self.assertEqual(h.client.producerState, "producing")


class LogTests(SynchronousTestCase):
    def test_oneEventPerRequestWithoutSecrets(self) -> None:
        h = GateHarness()
        with capturedLogs() as events:
            h.send(get(b"/_ping"))
            h.acceptDocker()
            h.clock.advance(2)
            h.docker.dataReceived(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n")
            h.clock.advance(1)
            h.docker.dataReceived(b"\r\nOK")
            h.send(get(b"/version"))
            h.docker.dataReceived(
                b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n"
            )
            h.send(get(b"/nope", auth=BAD_AUTH))
        requests = [e for e in events if "method" in e]
        self.assertEqual(
            [(e["method"], e["path"], e["outcome"][:10]) for e in requests],
            [
                ("GET", "/_ping", "done"),
                ("GET", "/version", "done"),
                ("GET", "/nope", "refused 40"),
            ],
        )
        first = requests[0]
        self.assertEqual(first["user"], "admin")
        self.assertEqual(first["bytesIn"], len(get(b"/_ping")))
        self.assertEqual(
            first["bytesOut"], len(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nOK")
        )
        self.assertEqual(first["status"], 200)
        self.assertEqual(first["firstByte"], 2)
        self.assertEqual(first["duration"], 3)
        self.assertIn(": 200 done; ", formatEvent(first))
        self.assertIn(" 2.000 s to first byte, 3.000 s", formatEvent(first))
        self.assertEqual(requests[1]["status"], 404)
        self.assertEqual(requests[2]["status"], 401)
        self.assertIsNone(requests[2]["firstByte"])
        self.assertEqual(requests[2]["user"], "-")
        for event in events:
            for value in event.values():
                self.assertNotIn("pw", str(value).replace("pwd", ""))

    def test_requestDataCannotStartALine(self) -> None:
        """
        A target with a byte 0x85 (NEXT LINE once decoded as Latin-1) or
        U+2028's UTF-8 is logged escaped, in every field and the text.
        """
        h = GateHarness()
        target = b"/x\x85forged\xe2\x80\xa8y"
        with capturedLogs() as events:
            h.send(get(target))
            h.acceptDocker()
            h.dockerCloses()
        requests = [e for e in events if "method" in e]
        self.assertEqual(requests[0]["path"], "/x\\x85forged\\xe2\\x80\\xa8y")
        for event in requests:
            for value in [*event.values(), formatEvent(event)]:
                text = str(value)
                self.assertTrue(text.isascii() and text.isprintable(), repr(text))


class ReadOnlyTests(SynchronousTestCase):
    def test_getForwarded(self) -> None:
        h = GateHarness()
        h.send(get(b"/containers/json", auth=VIEWER))
        docker = h.acceptDocker()
        self.assertEqual(docker.value(), get(b"/containers/json", auth=VIEWER))

    def test_writesAndHijacksRefused(self) -> None:
        for request in [
            b"POST /containers/create HTTP/1.1\r\n"
            + VIEWER
            + b"Content-Length: 2\r\n\r\n{}",
            b"DELETE /containers/x HTTP/1.1\r\n" + VIEWER + b"\r\n",
            b"GET /containers/x/attach/ws HTTP/1.1\r\n"
            + VIEWER
            + b"Connection: Upgrade\r\nUpgrade: websocket\r\n\r\n",
            b"POST /v1.41/containers/x/../../exec/y/start HTTP/1.1\r\n"
            + VIEWER
            + b"\r\n",
        ]:
            h = GateHarness()
            h.send(request)
            answer = h.client.value()
            self.assertTrue(answer.startswith(b"HTTP/1.1 403 Forbidden\r\n"), request)
            self.assertIn(b"read-only", answer)
            self.assertEqual(h.connects, [], "nothing reached dockerd")

    def test_laterWriteOnSameConnectionRefused(self) -> None:
        h = GateHarness()
        h.send(get(b"/info", auth=VIEWER))
        docker = h.acceptDocker()
        h.docker.dataReceived(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}")
        h.send(b"POST /containers/x/kill HTTP/1.1\r\n" + VIEWER + b"\r\n")
        self.assertEqual(docker.value(), get(b"/info", auth=VIEWER))
        h.dockerCloses()
        self.assertIn(b"HTTP/1.1 403 Forbidden", h.client.value())


class HealthTests(SynchronousTestCase):
    def test_noCredentialsNoDockerData(self) -> None:
        h = GateHarness()
        h.send(get(b"/_agent/health", auth=b""))
        self.assertEqual(len(h.connects), 1, "a knock on dockerd's socket")
        h.acceptDocker()
        answer = h.client.value()
        self.assertTrue(answer.startswith(b"HTTP/1.1 200 OK\r\n"))
        self.assertTrue(answer.endswith(b'{"status": "ok", "docker": "up"}\n'))
        self.assertTrue(h.client.writeClosed)

    def test_dockerDown(self) -> None:
        h = GateHarness(connect="refuse")
        h.send(get(b"/v1.41/../_agent/health", auth=b""))
        self.assertTrue(
            h.client.value().endswith(b'{"status": "degraded", "docker": "down"}\n')
        )

    def test_probeRemembered(self) -> None:
        h = GateHarness(connect="refuse")
        h.send(get(b"/_agent/health", auth=b""))
        other = h.another()
        other.send(get(b"/_agent/health", auth=b""))
        self.assertIn(b'"docker": "down"', other.client.value())

    def test_otherAgentPathsNeedCredentials(self) -> None:
        h = GateHarness()
        h.send(get(b"/_agent/healthz", auth=b""))
        self.assertTrue(h.client.value().startswith(b"HTTP/1.1 401 "))


class ThrottleTests(SynchronousTestCase):
    def setUp(self) -> None:
        from haven_agent.proxy.throttle import FailureThrottle

        clock = Clock()
        self.h = GateHarness(clock=clock, throttle=FailureThrottle(clock))

    def test_repeatedFailuresDelayed(self) -> None:
        self.h.send(get(auth=BAD_AUTH))
        self.assertIn(b"401", self.h.client.value(), "first failure answered at once")
        second = self.h.another()
        second.send(get(auth=BAD_AUTH))
        self.assertEqual(second.client.value(), b"", "the second waits")
        self.h.clock.advance(0.25)
        self.assertTrue(second.client.value().startswith(b"HTTP/1.1 401 "))

    def test_rightCredentialNeverDelayed(self) -> None:
        for _ in range(5):
            self.h.another().send(get(auth=BAD_AUTH))
        right = self.h.another()
        right.send(get())
        self.assertEqual(len(self.h.connects), 1, "forwarded at once")

    def test_clientGoneBeforeDelayedAnswer(self) -> None:
        self.h.send(get(auth=BAD_AUTH))
        second = self.h.another()
        second.send(get(auth=BAD_AUTH))
        second.protocol.connectionLost(None)
        self.h.clock.advance(10)
        self.assertEqual(second.client.value(), b"")


class LimitTests(SynchronousTestCase):
    def test_totalConnections(self) -> None:
        h = GateHarness(limits=ConnectionLimits(maxConnections=2))
        h.another()
        third = h.another()
        self.assertTrue(third.client.value().startswith(b"HTTP/1.1 503 "))
        self.assertIn(b"too many connections", third.client.value())
        self.assertFalse(h.client.disconnecting, "existing ones unaffected")

    def test_unauthenticatedConnections(self) -> None:
        h = GateHarness(limits=ConnectionLimits(maxUnauthenticated=1))
        h.send(get())
        h.acceptDocker()
        second = h.another()
        self.assertEqual(second.client.value(), b"", "the first one authenticated")
        third = h.another()
        self.assertTrue(third.client.value().startswith(b"HTTP/1.1 503 "))
        third.protocol.connectionLost(None)
        second.protocol.connectionLost(None)
        self.assertEqual(h.factory.limits.unauthenticated, 0)
        self.assertEqual(len(h.factory.connections), 1)


class PerUserLimitTests(SynchronousTestCase):
    def test_viewerCapLeavesRoomForAdmin(self) -> None:
        h = GateHarness(limits=ConnectionLimits(maxPerUser=1))
        h.send(get(b"/_ping", auth=VIEWER))
        h.acceptDocker()
        second = h.another()
        second.send(get(b"/_ping", auth=VIEWER))
        self.assertTrue(second.client.value().startswith(b"HTTP/1.1 503 "))
        self.assertIn(b"too many connections of user viewer", second.client.value())
        self.assertEqual(len(h.connects), 0, "the refused one reached no dockerd")
        admin = h.another()
        admin.send(get(b"/_ping"))
        self.assertEqual(len(h.connects), 1, "the admin gets in")
        second.protocol.connectionLost(None)
        self.assertEqual(h.factory.limits.held("viewer"), 1)


ANSWER = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nOK"


class IdleTests(SynchronousTestCase):
    """The read-only user's idle keep-alive connections are closed."""

    def viewer(self, path: bytes = b"/_ping") -> GateHarness:
        h = GateHarness(idleTimeout=60)
        h.send(get(path, auth=VIEWER))
        h.acceptDocker()
        return h

    def test_idleAfterAnswerClosed(self) -> None:
        h = self.viewer()
        h.docker.dataReceived(ANSWER)
        h.clock.advance(59)
        self.assertFalse(h.client.disconnecting)
        h.clock.advance(1)
        self.assertTrue(h.client.disconnecting)
        self.assertTrue(h.dockerTransport.disconnecting)

    def test_activityPostponesIt(self) -> None:
        h = self.viewer()
        h.docker.dataReceived(ANSWER)
        h.clock.advance(50)
        h.send(get(b"/version", auth=VIEWER))
        h.clock.advance(50)
        h.docker.dataReceived(ANSWER)
        h.clock.advance(59)
        self.assertFalse(h.client.disconnecting)
        h.clock.advance(1)
        self.assertTrue(h.client.disconnecting)

    def test_answerInFlightNotIdle(self) -> None:
        h = self.viewer(b"/system/df")
        h.clock.advance(600)
        self.assertFalse(h.client.disconnecting, "dockerd has not answered yet")

    def test_streamsNeverIdle(self) -> None:
        for path in (b"/events", b"/v1.41/containers/x/logs?follow=1"):
            h = self.viewer(path)
            h.docker.dataReceived(b"HTTP/1.1 200 OK\r\n\r\n")
            h.clock.advance(3600)
            self.assertFalse(h.client.disconnecting, path)

    def test_adminNeverIdleClosed(self) -> None:
        h = GateHarness(idleTimeout=60)
        h.send(get(b"/_ping"))
        h.acceptDocker()
        h.docker.dataReceived(ANSWER)
        h.clock.advance(3600)
        self.assertFalse(h.client.disconnecting)


def clientCertificate(commonName: str):
    import datetime

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, commonName)])
    now = datetime.datetime.now(datetime.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(now)
        .not_valid_after(now + datetime.timedelta(days=1))
        .sign(key, hashes.SHA256())
    )
    return certificate


class CertificateAuthTests(SynchronousTestCase):
    def harness(self, mode: str, certificate) -> GateHarness:
        return GateHarness(authMode=mode, certificate=certificate)

    def test_certAlone(self) -> None:
        h = self.harness("cert", clientCertificate("ops-laptop"))
        with capturedLogs() as events:
            h.send(get(auth=b""))
            h.acceptDocker()
            h.dockerCloses()
        requests = [e for e in events if "method" in e]
        self.assertEqual(requests[0]["user"], "ops-laptop")
        self.assertEqual(requests[0]["auth"], "cert")

    def test_certModeWithoutCertificate(self) -> None:
        h = self.harness("cert", None)
        h.send(get())
        self.assertTrue(h.client.value().startswith(b"HTTP/1.1 401 "))
        self.assertIn(b"client certificate", h.client.value())

    def test_bothNeedsBoth(self) -> None:
        h = self.harness("both", clientCertificate("ops"))
        h.send(get(auth=BAD_AUTH))
        self.assertTrue(h.client.value().startswith(b"HTTP/1.1 401 "))
        h = self.harness("both", None)
        h.send(get())
        self.assertTrue(h.client.value().startswith(b"HTTP/1.1 401 "))
        h = self.harness("both", clientCertificate("ops"))
        h.send(get())
        self.assertEqual(len(h.connects), 1)


class AuditTests(SynchronousTestCase):
    def test_streamOpenAndCloseLogged(self) -> None:
        h = GateHarness()
        with capturedLogs() as events:
            h.send(b"POST /exec/e/start HTTP/1.1\r\n" + AUTH + b"Upgrade: tcp\r\n\r\n")
            h.acceptDocker()
            h.docker.dataReceived(UPGRADED)
            h.protocol.readConnectionLost()
            h.dockerCloses()
        texts = [formatEvent(e) for e in events]
        self.assertTrue(any("stream opened (password)" in t for t in texts), texts)
        closed = [e for e in events if e.get("outcome", "").startswith("stream")]
        self.assertEqual(closed[0]["outcome"], "stream closed, first by client")
        self.assertEqual(closed[0]["auth"], "password")
        self.assertEqual(closed[0]["user"], "admin")


class ShutdownTests(SynchronousTestCase):
    def test_graceThenClose(self) -> None:
        h = GateHarness()
        h.send(get(b"/events"))
        h.acceptDocker()
        idle = h.another()
        done = h.factory.closeAll(grace=5)
        self.assertNoResult(done)
        idle.protocol.connectionLost(None)
        h.clock.advance(5)
        self.assertTrue(h.client.disconnecting, "the stream is closed after grace")
        self.assertTrue(h.dockerTransport.disconnecting)
        h.protocol.connectionLost(None)
        h.clock.advance(1)
        self.successResultOf(done)

    def test_closedStreamLoggedAsSuch(self) -> None:
        h = GateHarness()
        h.send(get(b"/events"))
        h.acceptDocker()
        with capturedLogs() as events:
            h.protocol.shutDown()
        outcomes = [e["outcome"] for e in events if "outcome" in e]
        self.assertEqual(outcomes, ["closed by the agent, stopping"])

    def test_nothingOpen(self) -> None:
        h = GateHarness()
        h.protocol.connectionLost(None)
        self.successResultOf(h.factory.closeAll(grace=5))
