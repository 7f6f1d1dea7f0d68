"""
Tests for L{haven_agent.proxy.body_framing}: finding where bodies end, byte by
byte and in bulk, without holding body bytes.
"""

from twisted.trial.unittest import SynchronousTestCase

from haven_agent.proxy.body_framing import (
    MAX_CHUNK_LINE,
    ChunkedBody,
    FramingError,
    LengthBody,
)

CHUNKED = b"5\r\nhello\r\n1a;ext=1\r\n" + b"x" * 26 + b"\r\n0\r\nTrailer: t\r\n\r\n"


class LengthBodyTests(SynchronousTestCase):
    def test_splitAcrossFeeds(self) -> None:
        body = LengthBody(10)
        self.assertEqual(body.endIn(b"abcd"), 4)
        self.assertFalse(body.done)
        self.assertEqual(body.endIn(b"efghijNEXT"), 6)
        self.assertTrue(body.done)

    def test_start(self) -> None:
        body = LengthBody(2)
        self.assertEqual(body.endIn(b"XXab", 2), 4)
        self.assertTrue(body.done)

    def test_empty(self) -> None:
        self.assertTrue(LengthBody(0).done)


class ChunkedBodyTests(SynchronousTestCase):
    def test_wholeBody(self) -> None:
        body = ChunkedBody()
        self.assertEqual(body.endIn(CHUNKED + b"GET /"), len(CHUNKED))
        self.assertTrue(body.done)

    def test_byteByByte(self) -> None:
        body = ChunkedBody()
        for i, byte in enumerate(CHUNKED):
            self.assertFalse(body.done, i)
            self.assertEqual(body.endIn(bytes([byte])), 1)
        self.assertTrue(body.done)
        self.assertEqual(body.endIn(b"next"), 0)

    def test_everySplit(self) -> None:
        stream = CHUNKED + b"NEXT"
        for split in range(len(CHUNKED) + 1):
            body = ChunkedBody()
            first = body.endIn(stream[:split])
            self.assertEqual(first, split)
            end = body.endIn(stream, split)
            self.assertEqual(end, len(CHUNKED), split)
            self.assertTrue(body.done)

    def test_bareLineFeedsAndUpperHex(self) -> None:
        raw = b"A\n0123456789\n0\n\n"
        body = ChunkedBody()
        self.assertEqual(body.endIn(raw + b"Z"), len(raw))
        self.assertTrue(body.done)

    def test_largeChunkCounted(self) -> None:
        body = ChunkedBody()
        size = 50 * 1024 * 1024
        body.endIn(b"%x\r\n" % size)
        piece = b"\0" * (1 << 20)
        for _ in range(50):
            self.assertEqual(body.endIn(piece), len(piece))
        self.assertFalse(body.done)
        self.assertEqual(body.endIn(b"\r\n0\r\n\r\n"), 7)
        self.assertTrue(body.done)

    def test_malformed(self) -> None:
        for raw in [
            b"zz\r\n",
            b"\r\n",
            b"-1\r\n",
            b"5 5\r\n",
            b"0x5\r\n",
            b"5\r\nhelloXX\r\n",
            b"1234567890abcdef0\r\n",
        ]:
            with self.assertRaises(FramingError, msg=raw):
                ChunkedBody().endIn(raw)

    def test_errorPosition(self) -> None:
        with self.assertRaises(FramingError) as caught:
            ChunkedBody().endIn(b"5\r\nhelloXX\r\nrest")
        self.assertEqual(caught.exception.end, len(b"5\r\nhelloXX\r\n"))

    def test_sizeLineBounded(self) -> None:
        body = ChunkedBody()
        body.endIn(b"5;" + b"e" * (MAX_CHUNK_LINE - 2))
        with self.assertRaises(FramingError):
            body.endIn(b"e" * 10)

    def test_trailersBounded(self) -> None:
        body = ChunkedBody()
        body.endIn(b"0\r\n")
        with self.assertRaises(FramingError):
            for _ in range(100):
                body.endIn(b"X-T: " + b"t" * 1000 + b"\r\n")

    def test_overlongLineRefusedAtTheSameOffsetHoweverCut(self) -> None:
        """
        The bytes forwarded before a refusal do not depend on how the
        stream was cut into reads.
        """
        stream = b"X-Huge: " + b"a" * (2 * MAX_CHUNK_LINE) + b"\r\n"
        offsets = set()
        for cut in [1, 100, MAX_CHUNK_LINE - 3, MAX_CHUNK_LINE + 7, len(stream)]:
            body, pieceStart = ChunkedBody(), 0
            with self.assertRaises(FramingError) as caught:
                for piece in (stream[:cut], stream[cut:]):
                    body.endIn(piece)
                    pieceStart += len(piece)
            offsets.add(pieceStart + caught.exception.end)
        self.assertEqual(offsets, {MAX_CHUNK_LINE + 1})
