"""
Property-based tests (hypothesis) of the request gate over random and
mutated requests: no crash, no hang, bounded memory, the right answer.

Inputs start from valid Docker API requests (GET /info, POST
/containers/create with a Content-Length body, chunked POST /build, attach
and exec start with Upgrade, ...) under various credentials, then get bytes
flipped, inserted, deleted, truncated, CR/LF removed, header lines
duplicated and huge values added, and are cut into random pieces.

The gate runs over in-memory transports and a C{Clock}, in front of a fake
dockerd that parses what it is sent, answers the way dockerd does, and
checks that every request reaching it was authorised (all in
L{tests.proxy.gate_harness}, which L{tests.proxy.test_gate} shares). The
expected answer to what the gate did not forward is worked out with the head
parser alone.
"""

from __future__ import annotations

import itertools
import json
import re
import tracemalloc

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from twisted.logger import capturedLogs
from twisted.trial.unittest import SynchronousTestCase

from haven_agent.proxy.body_framing import ChunkedBody, FramingError, LengthBody
from haven_agent.proxy.http_head import MAX_HEAD_BYTES, HeadError, HeadReader
from haven_agent.proxy.read_only import read_only_refusal
from tests.fake_dockerd import UPGRADED
from tests.proxy.gate_harness import (
    AUTH,
    BAD_AUTH,
    HEAD_TIMEOUT,
    HEALTH_PATH,
    IDLE_TIMEOUT,
    LINGER,
    READ_METHODS,
    VIEWER,
    GateHarness,
    user_of,
)

PROPERTY = settings(
    max_examples=150,
    deadline=None,
    database=None,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

CREDENTIALS = {
    "admin": AUTH,
    "viewer": VIEWER,
    "wrong": BAD_AUTH,
    "none": b"",
    "garbled": b"Authorization: Basic %%%\r\n",
    "bearer": b"Authorization: Bearer abc\r\n",
}


# Requests, and ways to break them


def request(auth: bytes, kind: str) -> bytes:
    host = b"Host: docker\r\nUser-Agent: Docker-Client/24.0.7 (linux)\r\n"
    if kind == "info":
        return b"GET /v1.43/info HTTP/1.1\r\n" + host + auth + b"\r\n"
    if kind == "ping":
        return b"HEAD /_ping HTTP/1.1\r\n" + host + auth + b"\r\n"
    if kind == "list":
        return b"GET /containers/json?all=1 HTTP/1.1\r\n" + host + auth + b"\r\n"
    if kind == "create":
        body = b'{"Image":"alpine","Cmd":["sh"]}'
        return (
            b"POST /v1.43/containers/create?name=x HTTP/1.1\r\n"
            + host
            + auth
            + b"Content-Type: application/json\r\n"
            + b"Content-Length: %d\r\n\r\n" % len(body)
            + body
        )
    if kind == "build":
        return (
            b"POST /v1.43/build?t=x HTTP/1.1\r\n"
            + host
            + auth
            + b"Content-Type: application/x-tar\r\nTransfer-Encoding: chunked\r\n\r\n"
            + b"5\r\nhello\r\na;ext=1\r\n0123456789\r\n0\r\nX-Trailer: t\r\n\r\n"
        )
    if kind == "attach":
        return (
            b"POST /v1.43/containers/c1/attach?stream=1&stdin=1&stdout=1 HTTP/1.1\r\n"
            + host
            + auth
            + b"Connection: Upgrade\r\nUpgrade: tcp\r\n\r\n"
            + b"ls -l\n"
        )
    if kind == "exec":
        body = b'{"Detach":false,"Tty":true}'
        return (
            b"POST /exec/e1/start HTTP/1.1\r\n"
            + host
            + auth
            + b"Connection: Upgrade\r\nUpgrade: tcp\r\n"
            + b"Content-Length: %d\r\n\r\n" % len(body)
            + body
        )
    if kind == "health":
        return b"GET /_agent/health HTTP/1.1\r\n" + host + auth + b"\r\n"
    raise ValueError(kind)


KINDS = ["info", "ping", "list", "create", "build", "attach", "exec", "health"]

requests = st.builds(
    request,
    st.sampled_from(
        [CREDENTIALS["admin"]] * 12 + [CREDENTIALS[name] for name in CREDENTIALS]
    ),
    st.sampled_from(KINDS),
)

INSERTS = [
    b"\r\n",
    b"\r\n\r\n",
    b"\n",
    b"\r",
    b" ",
    b":",
    b"\x00",
    b"0\r\n\r\n",
    b"Transfer-Encoding: chunked\r\n",
    b"Content-Length: 5\r\n",
    b"Content-Length: 99999999\r\n",
    b"Upgrade: tcp\r\n",
    CREDENTIALS["admin"],
    CREDENTIALS["viewer"],
    b"GET / HTTP/1.1\r\n\r\n",
    b"HTTP/1.1 101 UPGRADED\r\n\r\n",
]


@st.composite
def mutation(draw, data: bytearray) -> None:
    """
    Break C{data} in place in one of several ways.
    """
    size = len(data)
    where = draw(st.integers(0, max(size, 0)))
    how = draw(
        st.sampled_from(
            ["flip", "insert", "token", "delete", "truncate", "crlf", "dup", "huge"]
        )
    )
    if how == "flip" and size:
        data[min(where, size - 1)] ^= 1 << draw(st.integers(0, 7))
    elif how == "insert":
        data[where:where] = draw(st.binary(min_size=1, max_size=8))
    elif how == "token":
        data[where:where] = draw(st.sampled_from(INSERTS))
    elif how == "delete":
        del data[where : where + draw(st.integers(1, 16))]
    elif how == "truncate":
        del data[where:]
    elif how == "crlf":
        positions = [i for i, byte in enumerate(data) if byte in b"\r\n"]
        if positions:
            del data[draw(st.sampled_from(positions))]
    elif how == "dup":
        lines = bytes(data).split(b"\r\n")
        if len(lines) > 2:
            line = draw(st.integers(1, len(lines) - 2))
            lines.insert(line, lines[line])
            data[:] = b"\r\n".join(lines)
    elif how == "huge":
        value = b"a" * draw(st.sampled_from([300, 5000, MAX_HEAD_BYTES + 10]))
        data[where:where] = draw(
            st.sampled_from([b"X-Huge: " + value + b"\r\n", value, b"%x\r\n" % 10**9])
        )
    return None


@st.composite
def streams(draw) -> bytes:
    """
    A few requests in a row, then a few mutations; or plain random bytes.
    """
    if draw(st.integers(0, 9)) == 0:
        return draw(st.binary(max_size=300))
    # Some clients end a request with an extra CRLF (RFC 9112 section 2.2).
    ends = st.sampled_from([b"", b"", b"", b"\r\n", b"\n"])
    data = bytearray(
        b"".join(draw(st.lists(st.tuples(requests, ends).map(b"".join), max_size=4)))
    )
    for _ in range(draw(st.sampled_from([0, 0, 1, 1, 1, 2, 3, 4]))):
        draw(mutation(data))
    return bytes(data)


@st.composite
def chunkings(draw, data: bytes) -> list[bytes]:
    """
    C{data} cut at random points (possibly into single bytes).
    """
    if not data:
        return []
    if draw(st.integers(0, 7)) == 0:
        return [data[i : i + 1] for i in range(min(len(data), 2000))] + (
            [data[2000:]] if len(data) > 2000 else []
        )
    cuts = sorted(set(draw(st.lists(st.integers(1, len(data)), max_size=12))))
    edges = [0] + cuts + [len(data)]
    return [data[a:b] for a, b in itertools.pairwise(edges) if b > a]


# The parsers on their own


def split_stream(chunks: list[bytes], limit: int = MAX_HEAD_BYTES) -> list[tuple]:
    """
    Feed C{chunks} through head reader, framing and body trackers, one
    request after another, as the gate does; say what was found where.

    Offsets are of the whole stream. Where a 431 is noticed depends on how
    the bytes arrive, so that offset is left out.
    """
    found: list[tuple] = []
    reader = HeadReader(limit)
    body = None
    offset = 0
    sinceHead = b""
    for chunk in chunks:
        data = chunk
        base = offset
        offset += len(chunk)
        while data:
            if body is not None:
                try:
                    end = body.endIn(data)
                except FramingError as error:
                    found.append(("bad body", error.message, base + error.end))
                    return found
                assert 0 <= end <= len(data)
                if body.done:
                    found.append(("body end", base + end))
                    body = None
                base += end
                data = data[end:]
                continue
            before = reader.started
            try:
                head, rest = reader.headAndRest(data)
            except HeadError as error:
                assert error.status in (400, 431), error.status
                found.append(("bad head", error.status, error.message))
                return found
            sinceHead = (sinceHead if before else b"") + data
            if head is not None:
                assert head.raw + rest == sinceHead.lstrip(b"\r\n")
            if head is None:
                assert rest == b""
                assert reader.started == bool(sinceHead.lstrip(b"\r\n"))
                held = len(sinceHead.lstrip(b"\r\n"))
                assert held <= limit, f"head reader holds {held} bytes"
                break
            assert len(head.raw) <= limit
            consumed = len(data) - len(rest)
            found.append(("head", head.raw, base + consumed))
            found.append(("judged", head.path, head.hijacks, head.first(b"host")))
            try:
                framing = head.framing
            except HeadError as error:
                assert error.status in (400, 501), error.status
                found.append(("bad framing", error.status, error.message))
                return found
            found.append(("framing", framing.chunked, framing.length))
            if framing.chunked:
                body = ChunkedBody()
            elif framing.length:
                body = LengthBody(framing.length)
            else:
                found.append(("body end", base + consumed))
            base += consumed
            data = rest
    return found


class ParserPropertyTests(SynchronousTestCase):
    @PROPERTY
    @given(st.data(), streams(), st.sampled_from([64, 300, MAX_HEAD_BYTES]))
    def test_onlyHeadAndFramingErrorsBoundedBuffer(self, data, stream, limit) -> None:
        """
        Whatever arrives, the parsers raise only L{HeadError} (400, 431, 501)
        or L{FramingError}, and the head reader never holds more than its
        limit between feeds.
        """
        split_stream(data.draw(chunkings(stream)), limit)

    @PROPERTY
    @given(st.data(), streams(), st.sampled_from([64, 300, MAX_HEAD_BYTES]))
    def test_chunkingDoesNotMatter(self, data, stream, limit) -> None:
        """
        The same bytes cut differently give the same heads, framing and body
        ends as the bytes in one piece.
        """
        chunks = data.draw(chunkings(stream))
        self.assertEqual(split_stream(chunks, limit), split_stream([stream], limit))

    def test_chunkLineBounded(self) -> None:
        """
        A chunk-size line that never ends is refused after its bound, not
        kept.
        """
        body = ChunkedBody()
        fed = 0
        with self.assertRaises(FramingError):
            for _ in range(256):
                body.endIn(b"f" * 4096)
                fed += 4096
        self.assertLessEqual(fed, 2 * 4096)


# The gate in front of a fake dockerd


def new_world(connect: str = "answer", **options) -> GateHarness:
    """
    The gate in front of an answering dockerd (see L{GateHarness}), with
    closes reported on the next turn of the clock, as the reactor would.
    """
    return GateHarness(connect, closeLater=True, **options)


RESPONSE = re.compile(
    rb"HTTP/1\.1 (\d{3}) [^\r\n]+\r\n((?:[^\r\n]+\r\n)*)\r\n(.*)\Z", re.DOTALL
)


def parse_answer(answer: bytes) -> tuple[int, dict]:
    """
    The status and JSON body of one complete response from the agent
    itself; fail unless it is exactly one well-formed response.
    """
    match = RESPONSE.match(answer)
    assert match is not None, f"not one HTTP response: {answer[:200]!r}"
    status = int(match.group(1))
    headers = {}
    for line in match.group(2).split(b"\r\n")[:-1]:
        name, _, value = line.partition(b": ")
        headers[name.lower()] = value
    body = match.group(3)
    assert headers[b"content-type"] == b"application/json", headers
    assert headers[b"content-length"] == b"%d" % len(body), (headers, body)
    assert headers[b"connection"] == b"close", headers
    document = json.loads(body)
    assert isinstance(document, dict), document
    return status, document


def walk(sent: bytes, forwarded: bytes, heads: list[int]) -> int:
    """
    Check that the bytes forwarded are the bytes sent, less only the empty
    lines the gate drops before a head; return how much of C{sent} they
    account for.
    """
    position = 0
    edges = heads + [len(forwarded)]
    if heads:
        assert heads[0] == 0, "forwarding starts with a head"
    for start, end in itertools.pairwise(edges):
        while position < len(sent) and sent[position] in b"\r\n":
            position += 1
        piece = forwarded[start:end]
        assert sent[position : position + len(piece)] == piece, (
            f"forwarded bytes at {start} are not what was sent at {position}: "
            f"{piece[:80]!r} != {sent[position:position + 80]!r}"
        )
        position += len(piece)
    return position


def judge(world: GateHarness, rest: bytes) -> tuple[str, int | None]:
    """
    What the gate should do about the bytes it did not forward: refuse them
    with a status, answer a health check, wait for more, or forward them.
    """
    reader = HeadReader()
    try:
        head, _ = reader.headAndRest(rest)
    except HeadError as error:
        return "refuse", error.status
    if head is None:
        return ("started" if reader.started else "idle"), None
    try:
        _ = head.framing
    except HeadError as error:
        return "refuse", error.status
    if head.method in READ_METHODS and head.path == HEALTH_PATH:
        return "health", 200
    user = user_of(world.checker, head)
    if user is None:
        return "refuse", 401
    if world.checker.isReadOnly(user) and (
        head.method not in READ_METHODS
        or head.hijacks
        # Its list of read routes is tested on its own (test_read_only);
        # here it only says which of the generated paths it leaves out.
        or read_only_refusal(head) is not None
    ):
        return "refuse", 403
    return "forward", None


def run_gate(
    chunks: list[bytes],
    hijacks: list[bool],
    eof: bool,
    pumpEach: bool = True,
    slow: bool = False,
    dockerdDies: int = -1,
    heedPauses: bool = False,
) -> GateHarness:
    """
    Send C{chunks}, letting dockerd and the clock catch up after each one
    (C{pumpEach}) or only at the end; stop sending while the gate has paused
    the client (C{heedPauses}) as a real transport would.
    """
    world = new_world(hijacks=hijacks, slow=slow, dockerdDies=dockerdDies)
    for chunk in chunks:
        if heedPauses and world.client.producerState == "paused":
            world.pump()
            if world.client.producerState == "paused":
                break
        if not world.send(chunk):
            break
        if pumpEach:
            world.pump()
    world.pump()
    if eof and not (heedPauses and world.client.producerState == "paused"):
        world.endInput()
        world.pump()
    return world


class GatePropertyTests(SynchronousTestCase):
    def check(self, world: GateHarness, events: list) -> None:
        """
        The gate's state after its input is one of: forwarding complete,
        authorised requests; one answer of its own, then closing; or
        waiting, with a deadline when a head has begun.
        """
        self.assertEqual(world.problems, [])
        failures = [e for e in events if e.get("log_failure") is not None]
        self.assertEqual(failures, [], "unexpected errors were logged")
        self.assertFalse(world.client.aborted)
        dockerd = world.dockerd
        client = world.client
        forwarded = world.forwarded
        if not forwarded:
            self.assertTrue(
                all(not d.transport.value() for d in world.dockerds),
                "nothing reached dockerd",
            )
        consumed = walk(world.sent, forwarded, dockerd.heads if dockerd else [])
        rest = world.sent[consumed:]
        output = client.value()
        self.assertTrue(
            output.startswith(world.dockerSent), "dockerd's answers come first"
        )
        answer = output[len(world.dockerSent) :]
        mode = dockerd.mode if dockerd else "http"
        if world.died:
            # Whatever the gate was doing ends with the connection, after
            # what dockerd sent and at most one answer of its own.
            if answer:
                parse_answer(answer)
                self.assertTrue(client.writeClosed)
                world.advance(LINGER)
            self.assertTrue(client.lost, "dockerd gone, connection closed")
            return
        verdict, status = judge(world, rest)

        if answer:
            got, document = parse_answer(answer)
            self.assertTrue(client.writeClosed or client.disconnecting)
            self.assertEqual(mode, "http", "no answer of the agent's own in a stream")
            self.assertIsNone(dockerd.body if dockerd else None)
            if got == 200:
                self.assertEqual(verdict, "health")
                self.assertEqual(set(document), {"status", "docker"})
            else:
                self.assertIsInstance(document.get("message"), str)
                self.assertEqual((verdict, status), ("refuse", got), rest[:200])
            return
        if mode == "broken":
            self.assertTrue(client.disconnecting, "dockerd refused the body and left")
            return
        if mode == "raw" or (dockerd is not None and dockerd.body is not None):
            self.assertEqual(rest, b"", "a stream or a body passes on as it comes")
            if world.eof:
                self.assertTrue(client.lost, "the end of input ends the stream")
                return
            before = world.outcome()
            world.advance(HEAD_TIMEOUT * 100)
            self.assertEqual(world.outcome(), before, "streams never time out")
            return
        self.assertIn(verdict, ("idle", "started"), rest[:200])
        if world.eof:
            self.assertTrue(client.lost, "closed once the client has finished")
            return
        self.assertFalse(client.disconnecting)
        if verdict == "started":
            self.assertTrue(world.clock.getDelayedCalls(), "a head has a deadline")
            world.advance(HEAD_TIMEOUT)
            got, document = parse_answer(client.value()[len(world.dockerSent) :])
            self.assertEqual(got, 408)
            world.advance(LINGER)
            self.assertTrue(client.lost)
        elif dockerd is None:
            world.advance(HEAD_TIMEOUT)
            self.assertTrue(client.lost, "a silent connection is closed")
            self.assertEqual(client.value(), b"", "without an answer")
        elif self.readOnlyConnection(world):
            # The read-only account's idle keep-alives are closed.
            world.advance(IDLE_TIMEOUT + 1)
            self.assertTrue(client.disconnecting, "idle read-only keep-alive closed")
        else:
            before = world.outcome()
            world.advance(HEAD_TIMEOUT * 100)
            # Empty lines after the last request included: they start no head.
            self.assertEqual(world.outcome(), before, "idle keep-alive stays open")

    @staticmethod
    def readOnlyConnection(world: GateHarness) -> bool:
        """
        Did the connection's first forwarded request come from the
        read-only account?
        """
        dockerd = world.dockerd
        if dockerd is None or not dockerd.heads:
            return False
        head, _ = HeadReader().headAndRest(world.forwarded[dockerd.heads[0] :])
        return head is not None and user_of(world.checker, head) == "viewer"

    @PROPERTY
    @given(
        st.data(),
        streams(),
        st.lists(st.booleans(), max_size=4),
        st.booleans(),
        st.booleans(),
        st.booleans(),
        st.booleans(),
    )
    def test_mutatedRequests(
        self, data, stream, hijacks, eof, pumpEach, slow, heedPauses
    ) -> None:
        """
        Any bytes, cut anywhere, against a dockerd that answers as it goes
        or only once everything has arrived, with quick or slow password
        checks and connections to dockerd.
        """
        chunks = data.draw(chunkings(stream))
        with capturedLogs() as events:
            world = run_gate(
                chunks, hijacks, eof, pumpEach, slow, heedPauses=heedPauses
            )
            self.check(world, events)
            world.endInput()
            world.pump()
            world.client.loseConnection()
            world.advance(LINGER)
        self.assertEqual([e for e in events if e.get("log_failure")], [])
        self.assertEqual(world.problems, [])

    @PROPERTY
    @given(
        st.data(),
        streams(),
        st.lists(st.booleans(), max_size=4),
        st.booleans(),
        st.integers(0, 3),
    )
    def test_dockerdGoesAway(self, data, stream, hijacks, eof, dies) -> None:
        """
        dockerd closing its end after some answers (a restart) ends the
        client connection cleanly, whatever the gate was doing.
        """
        chunks = data.draw(chunkings(stream))
        with capturedLogs() as events:
            world = run_gate(chunks, hijacks, eof, dockerdDies=dies)
            self.check(world, events)
            world.advance(HEAD_TIMEOUT + LINGER)
        self.assertEqual([e for e in events if e.get("log_failure")], [])
        self.assertEqual(world.problems, [])

    @PROPERTY
    @given(st.data(), streams(), st.booleans())
    def test_dockerdUnreachable(self, data, stream, eof) -> None:
        """
        Without dockerd, the first request the gate would forward gets a
        502 instead; whatever it would refuse still gets its own answer.
        """
        world = new_world("refuse")
        with capturedLogs() as events:
            for chunk in data.draw(chunkings(stream)):
                world.send(chunk)
            if eof:
                world.endInput()
            world.advance(HEAD_TIMEOUT)
        self.assertEqual([e for e in events if e.get("log_failure")], [])
        self.assertEqual(world.problems, [])
        verdict, status = judge(world, world.sent)
        answer = world.client.value()
        if verdict == "idle" or (verdict == "started" and eof):
            self.assertEqual(answer, b"")
        else:
            expected = {"forward": 502, "started": 408}.get(verdict, status)
            got, document = parse_answer(answer)
            self.assertEqual(got, expected)
            if verdict == "health":
                self.assertEqual(document, {"status": "degraded", "docker": "down"})
        world.advance(LINGER)
        self.assertTrue(world.client.lost)

    @PROPERTY
    @given(st.data(), streams(), st.lists(st.booleans(), max_size=4), st.booleans())
    def test_chunkingDoesNotMatter(self, data, stream, hijacks, eof) -> None:
        """
        However the bytes are cut, the gate forwards and answers the same.
        """
        chunks = data.draw(chunkings(stream))
        whole = run_gate([stream] if stream else [], hijacks, eof, pumpEach=False)
        cut = run_gate(chunks, hijacks, eof, pumpEach=False)
        self.assertEqual(cut.outcome(), whole.outcome())
        self.assertEqual(cut.problems + whole.problems, [])

    @PROPERTY
    @given(st.data(), st.sampled_from(KINDS), st.sampled_from(["wrong", "none"]))
    def test_unauthorisedFirstRequestReachesNothing(self, data, kind, auth) -> None:
        stream = request(CREDENTIALS[auth], kind) + request(CREDENTIALS["admin"], kind)
        world = run_gate(data.draw(chunkings(stream)), [], data.draw(st.booleans()))
        if kind == "health":
            status, _ = parse_answer(world.client.value())
            self.assertEqual(status, 200)
        else:
            status, document = parse_answer(world.client.value())
            self.assertEqual(status, 401)
            self.assertIn("message", document)
        self.assertEqual(world.forwarded, b"")
        self.assertEqual(
            [d for d in world.dockerds if d.transport.value()], [], "nothing forwarded"
        )


class MemoryTests(SynchronousTestCase):
    def feedUntilAnswered(self, world: GateHarness, garbage: bytes, piece: int) -> int:
        fed = 0
        while fed < len(garbage) and not world.client.value()[len(world.dockerSent) :]:
            # Straight to the protocol: GateHarness.send keeps a copy.
            world.protocol.dataReceived(garbage[fed : fed + piece])
            world.pump()
            fed += piece
        return fed

    def test_garbageWithoutEndGets431(self) -> None:
        """
        A megabyte without an empty line is refused once the head outgrows
        64 KiB, and the gate never holds much more than that.
        """
        noise = bytes(range(256)).replace(b"\n", b"x") * 4096
        for prefix in [b"", b"GET /info HTTP/1.1\r\n" + CREDENTIALS["admin"]]:
            for piece in [1000, 4096, 65536]:
                garbage = prefix + noise
                world = new_world()
                tracemalloc.start()
                try:
                    baseline = tracemalloc.get_traced_memory()[0]
                    fed = self.feedUntilAnswered(world, garbage, piece)
                    peak = tracemalloc.get_traced_memory()[1] - baseline
                finally:
                    tracemalloc.stop()
                status, _ = parse_answer(world.client.value())
                self.assertEqual(status, 431)
                self.assertLessEqual(fed, MAX_HEAD_BYTES + piece)
                self.assertLess(peak, 3 * MAX_HEAD_BYTES + 2 * piece)
                world.protocol.dataReceived(garbage[fed:])
                self.assertEqual(world.forwarded, b"")

    def test_laterHeadBoundedToo(self) -> None:
        """
        After an authorised request, an endless next head is refused the
        same way, once dockerd has finished answering.
        """
        world = new_world()
        world.send(request(CREDENTIALS["admin"], "info"))
        world.pump()
        garbage = b"GET /info HTTP/1.1\r\nX: " + b"y" * (1 << 20)
        fed = self.feedUntilAnswered(world, garbage, 8192)
        self.assertLessEqual(fed, MAX_HEAD_BYTES + 8192)
        answer = world.client.value()[len(world.dockerSent) :]
        self.assertEqual(parse_answer(answer)[0], 431)
        self.assertEqual(world.forwarded, request(CREDENTIALS["admin"], "info"))


class RegressionTests(SynchronousTestCase):
    """
    What the properties found, kept as plain examples.
    """

    def test_emptyLineAfterRequestIsNotAHead(self) -> None:
        """
        An empty line after a request (which RFC 9112 section 2.2 lets
        clients send, and the head reader skips) is not the start of the
        next head: it must not put the connection on the head deadline, or
        a stream answering the request (C{/events}, C{logs -f}, a build's
        output) is cut after 30 seconds.
        """
        world = new_world()
        world.send(request(CREDENTIALS["admin"], "info") + b"\r\n")
        dockerd = world.dockerd
        # dockerd streams its answer (not pumped: the fake would complete it).
        dockerd.protocol.dataReceived(
            b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n"
        )
        world.clock.advance(HEAD_TIMEOUT)
        dockerd.protocol.dataReceived(b'13\r\n{"status":"start"}\n\r\n')
        self.assertFalse(world.client.disconnecting, "the stream was cut")
        self.assertFalse(dockerd.transport.disconnecting)

    def test_hijackAnswerNotAnEarlierRequests(self) -> None:
        """
        An attach sent while an earlier request's answer has not begun is
        pipelined even if dockerd answered a yet earlier request since that
        one was forwarded; otherwise that earlier answer is taken for the
        attach's, the hijack is missed, and stdin is held as a request head
        (then refused with a 408 into the raw stream).
        """
        admin = CREDENTIALS["admin"]
        world = new_world()
        ping = b"GET /_ping HTTP/1.1\r\n" + admin + b"\r\n"
        wait = (
            b"POST /containers/c/wait HTTP/1.1\r\n"
            + admin
            + b"Content-Length: 4\r\n\r\n"
        )
        attach = (
            b"POST /containers/c/attach?stdin=1&stream=1 HTTP/1.1\r\n"
            + admin
            + b"Connection: Upgrade\r\nUpgrade: tcp\r\n\r\n"
        )
        world.send(ping + wait + b"{}")
        dockerd = world.dockerd
        # dockerd answers the ping while the wait's body is still coming.
        dockerd.protocol.dataReceived(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nOK")
        world.send(b"{}" + attach + b"echo hi\n")
        # Then it answers the wait, and hijacks the attach.
        dockerd.protocol.dataReceived(
            b'HTTP/1.1 200 OK\r\nContent-Length: 16\r\n\r\n{"StatusCode":0}'
        )
        dockerd.protocol.dataReceived(UPGRADED)
        self.assertEqual(
            dockerd.transport.value(), ping + wait + b"{}{}" + attach + b"echo hi\n"
        )
