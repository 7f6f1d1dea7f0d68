"""
Tests for haven_agent.proxy.answer_framing: dockerd's answers framed and
matched to their requests, whatever the framing and however the bytes are
cut.
"""

from __future__ import annotations

import itertools

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from haven_agent.proxy.answer_framing import AnswerFramer, Event
from haven_agent.proxy.http_head import head_end
from tests.fake_dockerd import LEGACY_HIJACKED, UPGRADED

PROPERTY = settings(
    max_examples=200,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)


def framed(framer: AnswerFramer, chunks: list[bytes]) -> list[tuple]:
    """
    The events of C{chunks} fed one by one, offsets of the whole stream.
    """
    found = []
    base = 0
    for chunk in chunks:
        for event in framer.eventsIn(chunk):
            assert 0 <= event.offset <= len(chunk), event
            found.append((event.kind, base + event.offset, event.status))
        base += len(chunk)
    return found


def expecting(*requests: tuple[bytes, bool]) -> AnswerFramer:
    framer = AnswerFramer()
    for method, mayHijack in requests:
        framer.expect(method, mayHijack)
    return framer


class FramingTests(SynchronousTestCase):
    """
    Each framing of RFC 9112 section 6.3, and dockerd's hijacks.
    """

    def test_contentLength(self) -> None:
        answer = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nOK"
        framer = expecting((b"GET", False))
        self.assertEqual(
            framed(framer, [answer]),
            [(Event.ANSWERED, len(answer) - 2, 200), (Event.ENDED, len(answer), 0)],
        )
        self.assertEqual(framer.outstanding, 0)

    def test_bulkBodyCostsNoEvents(self) -> None:
        """
        The reads of a long body return no events until the end.
        """
        framer = expecting((b"GET", False))
        framer.eventsIn(b"HTTP/1.1 200 OK\r\nContent-Length: 30000\r\n\r\n")
        for _ in range(2):
            self.assertEqual(framer.eventsIn(b"x" * 10000), ())
        self.assertEqual(
            [event.kind for event in framer.eventsIn(b"x" * 10000)], [Event.ENDED]
        )

    def test_chunked(self) -> None:
        answer = (
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
            b"5\r\nhello\r\n0\r\n\r\n"
        )
        framer = expecting((b"GET", False))
        self.assertEqual(framed(framer, [answer])[-1], (Event.ENDED, len(answer), 0))

    def test_noBodyForHeadRequest(self) -> None:
        """
        The answer to HEAD carries a Content-Length but no body (as
        dockerd's to C{HEAD /_ping}).
        """
        answer = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n"
        framer = expecting((b"HEAD", False), (b"GET", False))
        self.assertEqual(
            framed(framer, [answer + answer + b"OK"]),
            [
                (Event.ANSWERED, len(answer), 200),
                (Event.ENDED, len(answer), 0),
                (Event.ANSWERED, 2 * len(answer), 200),
                (Event.ENDED, 2 * len(answer) + 2, 0),
            ],
        )

    def test_noBodyFor204And304(self) -> None:
        for status in (b"204 No Content", b"304 Not Modified"):
            answer = b"HTTP/1.1 " + status + b"\r\nContent-Length: 9\r\n\r\n"
            framer = expecting((b"POST", False))
            self.assertEqual(
                framed(framer, [answer])[-1], (Event.ENDED, len(answer), 0)
            )

    def test_continueThenAnswer(self) -> None:
        """
        C{100 Continue} is interim: the status is the real answer's.
        """
        cont = b"HTTP/1.1 100 Continue\r\n\r\n"
        answer = b"HTTP/1.1 201 Created\r\nContent-Length: 0\r\n\r\n"
        framer = expecting((b"POST", False))
        self.assertEqual(
            framed(framer, [cont, answer]),
            [
                (Event.ANSWERED, len(cont) + len(answer), 201),
                (Event.ENDED, len(cont) + len(answer), 0),
            ],
        )

    def test_closeDelimited(self) -> None:
        """
        Without Content-Length or chunked, the body runs until dockerd
        closes, and no later answer can be told apart.
        """
        answer = b"HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\n\r\nand so on"
        framer = expecting((b"GET", False), (b"GET", False))
        self.assertEqual(
            [event[0] for event in framed(framer, [answer, answer])],
            [Event.ANSWERED, Event.UNTIL_CLOSE],
        )
        self.assertEqual(framer.eventsIn(b"HTTP/1.1 200 OK\r\n\r\n"), ())

    def test_unknownCodingIsCloseDelimited(self) -> None:
        answer = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n..."
        framer = expecting((b"GET", False))
        self.assertEqual(framed(framer, [answer])[-1][0], Event.UNTIL_CLOSE)

    def test_upgradeHijacks(self) -> None:
        for answer in (
            UPGRADED,
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\r\n",
        ):
            framer = expecting((b"POST", True))
            self.assertEqual(
                framed(framer, [answer + b"raw bytes"]),
                [(Event.HIJACKED, len(answer), 101)],
            )
            self.assertEqual(framer.eventsIn(b"HTTP/1.1 200 OK\r\n\r\n"), ())

    def test_legacyRawStreamHijacks(self) -> None:
        for kind in (b"raw-stream", b"multiplexed-stream"):
            answer = LEGACY_HIJACKED.replace(b"raw-stream", kind)
            framer = expecting((b"POST", True))
            self.assertEqual(
                framed(framer, [answer]), [(Event.HIJACKED, len(answer), 200)]
            )

    def test_rawStreamToOrdinaryRequestIsNoHijack(self) -> None:
        """
        Only a request that may hijack is hijacked: the same answer to any
        other request is an answer that runs until close.
        """
        framer = expecting((b"GET", False))
        self.assertEqual(
            [event[0] for event in framed(framer, [LEGACY_HIJACKED])],
            [Event.ANSWERED, Event.UNTIL_CLOSE],
        )

    def test_refusedAttachIsNoHijack(self) -> None:
        """
        An attach answered 404 (or a detached exec start answered 200 with a
        length) stays HTTP: the answer ends and the next one is framed.
        """
        missing = b"HTTP/1.1 404 Not Found\r\nContent-Length: 2\r\n\r\n{}"
        framer = expecting((b"POST", True), (b"GET", False))
        self.assertEqual(
            framed(framer, [missing + missing]),
            [
                (Event.ANSWERED, len(missing) - 2, 404),
                (Event.ENDED, len(missing), 0),
                (Event.ANSWERED, 2 * len(missing) - 2, 404),
                (Event.ENDED, 2 * len(missing), 0),
            ],
        )

    def test_upgradeNotAskedForIsUnframeable(self) -> None:
        framer = expecting((b"GET", False))
        self.assertEqual(framed(framer, [UPGRADED])[-1][0], Event.UNFRAMEABLE)
        self.assertEqual(framer.eventsIn(b"HTTP/1.1 200 OK\r\n\r\n"), ())

    def test_malformedAnswers(self) -> None:
        for answer in (
            b"garbage\r\n\r\n",
            b"HTTP/1.1 2000 OK\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nContent-Length: x\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
        ):
            framer = expecting((b"GET", False))
            events = framed(framer, [answer])
            self.assertEqual(events[-1][0], Event.UNFRAMEABLE, answer)

    def test_headBounded(self) -> None:
        """
        An answer head that never ends is given up after its bound, not
        kept.
        """
        framer = expecting((b"GET", False))
        framer.eventsIn(b"HTTP/1.1 200 OK\r\n")
        events = []
        for _ in range(20):
            events += framer.eventsIn(b"X-Long: " + b"a" * 8000 + b"\r\n")
        self.assertEqual([event.kind for event in events], [Event.UNFRAMEABLE])


# Properties: sequences of answers of every framing, cut anywhere.

BODIES = st.binary(max_size=40)


@st.composite
def answers(draw) -> tuple[bytes, bytes, bool, int, str]:
    """
    One answer: (method, bytes, may hijack, status, how it ends).
    """
    kind = draw(
        st.sampled_from(
            ["length", "chunked", "head", "204", "continue", "refused-attach"]
        )
    )
    body = draw(BODIES)
    if kind == "length":
        return (
            b"GET",
            b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(body) + body,
            False,
            200,
            "ended",
        )
    if kind == "chunked":
        pieces = draw(st.lists(st.binary(min_size=1, max_size=20), max_size=4))
        chunks = b"".join(b"%x;x=1\r\n%s\r\n" % (len(p), p) for p in pieces)
        return (
            b"POST",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
            + chunks
            + b"0\r\nTrailer: t\r\n\r\n",
            False,
            200,
            "ended",
        )
    if kind == "head":
        return (
            b"HEAD",
            b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % (len(body) + 1),
            False,
            200,
            "ended",
        )
    if kind == "204":
        return (b"DELETE", b"HTTP/1.1 204 No Content\r\n\r\n", False, 204, "ended")
    if kind == "continue":
        return (
            b"POST",
            b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 201 Created\r\n"
            b"Content-Length: %d\r\n\r\n" % len(body) + body,
            False,
            201,
            "ended",
        )
    return (
        b"POST",
        b"HTTP/1.1 409 Conflict\r\nContent-Length: %d\r\n\r\n" % len(body) + body,
        True,
        409,
        "ended",
    )


@st.composite
def conversations(draw) -> tuple[list, bytes]:
    """
    Answers in a row, the last possibly one that hijacks or runs until close.
    """
    items = draw(st.lists(answers(), max_size=6))
    last = draw(st.sampled_from(["none", "hijack", "legacy", "close"]))
    if last == "hijack":
        items.append((b"POST", UPGRADED + b"\x01\x00\x00\x00", True, 101, "hijacked"))
    elif last == "legacy":
        items.append((b"POST", LEGACY_HIJACKED + b"HTTP/1.1", True, 200, "hijacked"))
    elif last == "close":
        items.append(
            (b"GET", b"HTTP/1.1 200 OK\r\n\r\nHTTP/1.1 200", False, 200, "until close")
        )
    return items, b"".join(item[1] for item in items)


def _final_head_end(answer: bytes) -> int:
    end = answer.index(b"\r\n\r\n") + 4
    if answer.startswith(b"HTTP/1.1 100 "):
        end = answer.index(b"\r\n\r\n", end) + 4
    return end


def cut(draw, data: bytes) -> list[bytes]:
    if not data:
        return []
    points = sorted(set(draw(st.lists(st.integers(1, len(data)), max_size=10))))
    if draw(st.integers(0, 5)) == 0:
        points = list(range(1, len(data)))
    edges = [0] + points + [len(data)]
    return [data[a:b] for a, b in itertools.pairwise(edges) if b > a]


class FramingPropertyTests(SynchronousTestCase):
    @PROPERTY
    @given(st.data(), conversations())
    def test_eachAnswerMatchedToItsRequest(self, data, conversation) -> None:
        """
        Each request's answer is found where it ends, with its status, in
        order, however the bytes are cut; after a hijack or an answer that
        runs until close nothing more is framed.
        """
        items, stream = conversation
        framer = AnswerFramer()
        for method, _, mayHijack, _, _ in items:
            framer.expect(method, mayHijack)
        events = framed(framer, cut(data.draw, stream))
        expected = []
        offset = 0
        for _, answer, _, status, end in items:
            start, offset = offset, offset + len(answer)
            # Where the final head ends (after any interim 100 Continue).
            head = start + _final_head_end(answer)
            if end == "hijacked":
                expected.append((Event.HIJACKED, head, status))
                continue
            expected.append((Event.ANSWERED, head, status))
            if end == "ended":
                expected.append((Event.ENDED, offset, 0))
            else:
                expected.append((Event.UNTIL_CLOSE, head, status))
        self.assertEqual(events, expected)
        self.assertEqual(framer.outstanding, sum(1 for i in items if i[4] != "ended"))


def framed_whole_first(framer: AnswerFramer, chunks: list[bytes]) -> list[tuple]:
    """
    As L{framed}, but each chunk offered to C{statusOfWhole} first, as the
    gate does: a whole answer it recognises stands for the events it saves.
    """
    found = []
    base = 0
    for chunk in chunks:
        status = framer.statusOfWhole(chunk)
        if status:
            head = base + head_end(chunk)
            found += [
                (Event.ANSWERED, head, status),
                (Event.ENDED, base + len(chunk), 0),
            ]
        else:
            for event in framer.eventsIn(chunk):
                found.append((event.kind, base + event.offset, event.status))
        base += len(chunk)
    return found


class WholeAnswerTests(SynchronousTestCase):
    """
    C{statusOfWhole}, the shortcut for the usual keep-alive answer, says
    what L{AnswerFramer.eventsIn} would, or nothing.
    """

    def test_oneWholeAnswer(self) -> None:
        framer = expecting((b"GET", False))
        answer = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nOK"
        self.assertEqual(framer.statusOfWhole(answer), 200)
        self.assertEqual(framer.outstanding, 0)

    def test_declinesAndChangesNothing(self) -> None:
        whole = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nOK"
        for requests, data in [
            ([(b"GET", False)], whole[:-1]),
            ([(b"GET", False)], whole + b"H"),
            ([(b"GET", False), (b"GET", False)], whole),
            ([(b"HEAD", False)], whole),
            ([(b"POST", True)], whole),
            ([(b"GET", False)], b"HTTP/1.1 204 No Content\r\n\r\n"),
            ([(b"GET", False)], b"HTTP/1.1 100 Continue\r\n\r\n" + whole),
            (
                [(b"GET", False)],
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n",
            ),
            ([(b"GET", False)], b"HTTP/1.1 200 OK\r\n\r\n"),
            ([(b"GET", False)], b"garbage\r\n\r\n"),
        ]:
            framer = expecting(*requests)
            self.assertEqual(framer.statusOfWhole(data), 0, data)
            self.assertEqual(framer.outstanding, len(requests))
            self.assertEqual(
                framed(framer, [data]), framed(expecting(*requests), [data]), data
            )

    @PROPERTY
    @given(st.data(), conversations())
    def test_sameAsEventsIn(self, data, conversation) -> None:
        items, stream = conversation
        if data.draw(st.booleans()):
            # One answer a read: the case the shortcut is for.
            chunks = [item[1] for item in items if item[1]]
        else:
            chunks = cut(data.draw, stream)
        plain, shortcut = AnswerFramer(), AnswerFramer()
        for method, _, mayHijack, _, _ in items:
            plain.expect(method, mayHijack)
            shortcut.expect(method, mayHijack)
        self.assertEqual(framed_whole_first(shortcut, chunks), framed(plain, chunks))
        self.assertEqual(shortcut.outstanding, plain.outstanding)
