"""
Tests for L{haven_agent.proxy.http_head}: bounded head reading, strict parsing,
body framing and which requests may hijack.
"""

from twisted.trial.unittest import SynchronousTestCase

from haven_agent.proxy.http_head import (
    MAX_HEAD_BYTES,
    Framing,
    HeadError,
    HeadReader,
    parse_head,
)


def head(text: bytes) -> bytes:
    return text.replace(b"\n", b"\r\n")


class HeadReaderTests(SynchronousTestCase):
    def test_completeHeadAndRest(self) -> None:
        raw = head(b"GET /info HTTP/1.1\nHost: docker\n\n")
        parsed, rest = HeadReader().headAndRest(raw + b"BODY")
        self.assertEqual(parsed.raw, raw)
        self.assertEqual(rest, b"BODY")
        self.assertEqual((parsed.method, parsed.target), (b"GET", b"/info"))

    def test_byteByByte(self) -> None:
        raw = head(b"POST /v1.41/containers/create HTTP/1.1\nContent-Length: 2\n\n")
        reader = HeadReader()
        for i in range(len(raw) - 1):
            parsed, rest = reader.headAndRest(raw[i : i + 1])
            self.assertIsNone(parsed)
            self.assertTrue(reader.started)
        parsed, rest = reader.headAndRest(raw[-1:] + b"{}")
        self.assertEqual(parsed.raw, raw)
        self.assertEqual(rest, b"{}")
        self.assertFalse(reader.started)

    def test_bareLineFeeds(self) -> None:
        parsed, rest = HeadReader().headAndRest(b"GET / HTTP/1.0\nA: b\n\nX")
        self.assertEqual(parsed.headers, ((b"a", b"b"),))
        self.assertEqual(rest, b"X")

    def test_leadingEmptyLinesDropped(self) -> None:
        parsed, _ = HeadReader().headAndRest(b"\r\n\r\nGET / HTTP/1.1\r\n\r\n")
        self.assertEqual(parsed.raw, b"GET / HTTP/1.1\r\n\r\n")

    def test_tooLarge(self) -> None:
        reader = HeadReader()
        reader.headAndRest(b"GET / HTTP/1.1\r\n")
        with self.assertRaises(HeadError) as caught:
            reader.headAndRest(b"X-Big: " + b"a" * MAX_HEAD_BYTES)
        self.assertEqual(caught.exception.status, 431)

    def test_completeButTooLarge(self) -> None:
        raw = b"GET / HTTP/1.1\r\nX: " + b"a" * MAX_HEAD_BYTES + b"\r\n\r\n"
        with self.assertRaises(HeadError) as caught:
            HeadReader().headAndRest(raw)
        self.assertEqual(caught.exception.status, 431)

    def test_exactlyAtLimit(self) -> None:
        prefix = b"GET / HTTP/1.1\r\nX: "
        raw = prefix + b"a" * (MAX_HEAD_BYTES - len(prefix) - 4) + b"\r\n\r\n"
        self.assertEqual(len(raw), MAX_HEAD_BYTES)
        parsed, _ = HeadReader().headAndRest(raw)
        self.assertEqual(parsed.raw, raw)


class ParseTests(SynchronousTestCase):
    def assertStatus(self, raw: bytes, status: int = 400) -> None:
        with self.assertRaises(HeadError) as caught:
            parse_head(raw)
        self.assertEqual(caught.exception.status, status)

    def test_malformed(self) -> None:
        for raw in [
            b"GET /\r\n\r\n",
            b"GET  / HTTP/1.1\r\n\r\n",
            b"G(T / HTTP/1.1\r\n\r\n",
            b"GET / HTTP/2.0\r\n\r\n",
            b"PRI * HTTP/2.0\r\n\r\n",
            b"GET / FOO/1.1\r\n\r\n",
            b"GET noslash HTTP/1.1\r\n\r\n",
            b"GET / HTTP/1.1\r\nNoColon\r\n\r\n",
            b"GET / HTTP/1.1\r\nBad Name: x\r\n\r\n",
            b"GET / HTTP/1.1\r\nName : x\r\n\r\n",
            b"GET / HTTP/1.1\r\n folded\r\n\r\n",
            b"GET / HTTP/1.1\r\nA: b\x00c\r\n\r\n",
            b"GET / HTTP/1.1\r\nA: b\rc\r\n\r\n",
            b"\x16\x03\x01 / HTTP/1.1\r\n\r\n",
        ]:
            self.assertStatus(raw)

    def test_headersKeptInOrder(self) -> None:
        parsed = parse_head(b"GET / HTTP/1.1\r\nX-A: 1\r\nx-a:  2 \r\nB:\r\n\r\n")
        self.assertEqual(parsed.values(b"x-a"), [b"1", b"2"])
        self.assertEqual(parsed.first(b"b"), b"")
        self.assertIsNone(parsed.first(b"c"))

    def test_path(self) -> None:
        self.assertEqual(parse_head(b"GET /a%2Fb?x=1 HTTP/1.1\r\n\r\n").path, b"/a/b")
        for target, path in [
            (b"/v1.41/containers/x/../../_agent/./health", b"/v1.41/_agent/health"),
            (b"/%2e%2e/%2E%2E/info", b"/info"),
            (b"//containers//json/", b"/containers/json"),
            (b"/a/b/..", b"/a"),
        ]:
            head = parse_head(b"GET " + target + b" HTTP/1.1\r\n\r\n")
            self.assertEqual(head.path, path, target)
        self.assertEqual(
            parse_head(b"GET /v1.41/info HTTP/1.1\r\n\r\n").apiPath, b"/info"
        )
        self.assertEqual(
            parse_head(b"GET http://docker/v1.41/info?x HTTP/1.1\r\n\r\n").path,
            b"/v1.41/info",
        )


class FramingTests(SynchronousTestCase):
    def framing(self, *headers: bytes, version: bytes = b"HTTP/1.1") -> Framing:
        raw = b"POST /x " + version + b"\r\n" + b"".join(h + b"\r\n" for h in headers)
        return parse_head(raw + b"\r\n").framing

    def assertRefused(self, *headers: bytes, status: int = 400, **kw) -> None:
        with self.assertRaises(HeadError) as caught:
            self.framing(*headers, **kw)
        self.assertEqual(caught.exception.status, status)

    def test_none(self) -> None:
        self.assertEqual(self.framing(), Framing(chunked=False, length=0))

    def test_contentLength(self) -> None:
        self.assertEqual(self.framing(b"Content-Length: 12"), Framing(length=12))
        self.assertEqual(
            self.framing(b"Content-Length: 5", b"content-length: 5"), Framing(length=5)
        )
        self.assertEqual(self.framing(b"Content-Length: 5, 5"), Framing(length=5))

    def test_badContentLength(self) -> None:
        self.assertRefused(b"Content-Length: -1")
        self.assertRefused(b"Content-Length: 1x")
        self.assertRefused(b"Content-Length: +5")
        self.assertRefused(b"Content-Length: 5", b"Content-Length: 6")
        self.assertRefused(b"Content-Length: 1234567890123456789012")

    def test_chunked(self) -> None:
        self.assertEqual(
            self.framing(b"Transfer-Encoding: Chunked"), Framing(chunked=True)
        )

    def test_smugglingShapesRefused(self) -> None:
        self.assertRefused(b"Transfer-Encoding: chunked", b"Content-Length: 3")
        self.assertRefused(b"Transfer-Encoding: chunked", version=b"HTTP/1.0")
        self.assertRefused(b"Transfer-Encoding: chunked, chunked", status=501)
        self.assertRefused(b"Transfer-Encoding: gzip, chunked", status=501)
        self.assertRefused(b"Transfer-Encoding: xchunked", status=501)


class HijackTests(SynchronousTestCase):
    def hijacks(self, line: bytes, *headers: bytes) -> bool:
        raw = line + b"\r\n" + b"".join(h + b"\r\n" for h in headers) + b"\r\n"
        return parse_head(raw).hijacks

    def test_attachAndExec(self) -> None:
        for target in [
            b"/containers/abc/attach?stream=1&stdin=1",
            b"/v1.41/containers/abc/attach",
            b"/v1.50/exec/0123abcd/start",
            b"/exec/x/start",
            b"/v1.41/containers/a%2Fb/attach",
            b"/v1.41/containers/x/../../exec/y/start",
            b"/%65xec/y/start",
        ]:
            self.assertTrue(self.hijacks(b"POST " + target + b" HTTP/1.1"), target)

    def test_upgradeAnywhere(self) -> None:
        self.assertTrue(
            self.hijacks(
                b"GET /containers/x/attach/ws HTTP/1.1",
                b"Connection: Upgrade",
                b"Upgrade: websocket",
            )
        )
        self.assertTrue(self.hijacks(b"POST /session HTTP/1.1", b"Upgrade: h2c"))

    def test_notHijacks(self) -> None:
        for line in [
            b"GET /containers/abc/attach HTTP/1.1",
            b"POST /containers/abc/attachx HTTP/1.1",
            b"POST /containers/abc/start HTTP/1.1",
            b"POST /exec/abc/resize HTTP/1.1",
            b"POST /v1.41/containers/create HTTP/1.1",
            b"POST /exec//start HTTP/1.1",
        ]:
            self.assertFalse(self.hijacks(line), line)
