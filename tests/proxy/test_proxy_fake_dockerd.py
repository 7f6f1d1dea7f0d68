"""
The whole proxy on real sockets, in front of the fake dockerd.

The agent (gate, splice and half-closeable TLS) runs in this process on the
real reactor, listening on 127.0.0.1; the fake dockerd (L{tests.fake_dockerd})
listens on a short UNIX socket path. Clients are blocking pyOpenSSL
connections run in threads, because what is checked is what a client sees on
the wire: exact bytes, the order of answers, close_notify and TCP EOF, and
what the kernel does when a peer stops reading. The fake shows exactly what
reached dockerd.
"""

from __future__ import annotations

import base64
import errno
import hashlib
import json
import os
import random
import shutil
import socket
import struct
import time
from collections.abc import Callable, Iterable
from typing import Any, cast

import bcrypt
import psutil
from attrs import define, field
from OpenSSL import SSL
from twisted.internet import reactor
from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.interfaces import IReactorTCP, IReactorUNIX
from twisted.internet.protocol import ServerFactory
from twisted.internet.task import Clock, deferLater
from twisted.internet.threads import deferToThread
from twisted.trial.unittest import TestCase

from haven_agent._twisted.docker_socket import docker_connector
from haven_agent.config import ProxyConfig
from haven_agent.proxy.auth import BasicAuthChecker
from haven_agent.proxy.gate import GateFactory
from haven_agent.proxy.service import build_proxy_service
from haven_agent.thread_pools import ThreadPools
from haven_agent.tls.certificates import load_or_create_self_signed, server_context
from haven_agent.tls.transport import serve_tls
from tests.fake_dockerd import (
    LEGACY_HIJACKED,
    UPGRADED,
    FakeDockerdFactory,
    FakeDockerdProtocol,
    pattern_bytes,
    short_socket_path,
)

USER = b"admin"
PASSWORD = b"s3cret"
AUTH = b"Basic " + base64.b64encode(USER + b":" + PASSWORD)
BAD_AUTH = b"Basic " + base64.b64encode(USER + b":wrong")

PING_OK = (
    b"HTTP/1.1 200 OK\r\n"
    b"Api-Version: 1.41\r\n"
    b"Content-Length: 2\r\n"
    b"Content-Type: text/plain; charset=utf-8\r\n"
    b"Docker-Experimental: false\r\n"
    b"Ostype: linux\r\n"
    b"Server: Docker/fake (linux)\r\n"
    b"\r\n"
    b"OK"
)

MiB = 1024 * 1024
#: How long a client waits for the next byte before the test fails.
CLIENT_TIMEOUT = 10


def request(
    method: bytes,
    target: bytes,
    headers: Iterable[tuple[bytes, bytes]] = (),
    body: bytes = b"",
    auth: bytes | None = AUTH,
) -> bytes:
    """
    The bytes of one HTTP/1.1 request as the docker CLI would write it.
    """
    lines = [method + b" " + target + b" HTTP/1.1", b"Host: docker"]
    if auth is not None:
        lines.append(b"Authorization: " + auth)
    lines.extend(name + b": " + value for name, value in headers)
    return b"\r\n".join(lines) + b"\r\n\r\n" + body


def sleep(seconds: float) -> Deferred[None]:
    return deferLater(reactor, seconds, lambda: None)


def rss() -> int:
    return psutil.Process().memory_info().rss


@inlineCallbacks
def waitFor(condition: Callable[[], bool], timeout: float = 5.0):
    """
    Poll C{condition} on the reactor until it holds; False after C{timeout}.
    """
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        yield sleep(0.01)
    return True


# Blocking clients, used from threads


@define
class Response:
    """
    One HTTP response as read off the wire; C{raw} is every byte of it.
    """

    raw: bytes
    status: int
    headers: list[tuple[bytes, bytes]]
    body: bytes

    def header(self, name: bytes) -> bytes | None:
        for key, value in self.headers:
            if key.lower() == name.lower():
                return value
        return None

    def json(self) -> Any:
        return json.loads(self.body)


class Stream:
    """
    Buffered blocking reads over some connection's C{recv_some}.
    """

    def __init__(self) -> None:
        self.buffer = b""

    def recv_some(self) -> bytes:
        raise NotImplementedError

    def _more(self) -> None:
        data = self.recv_some()
        if not data:
            raise EOFError(f"connection ended; unread: {self.buffer[-200:]!r}")
        self.buffer += data

    def read_until(self, marker: bytes) -> bytes:
        while (end := self.buffer.find(marker)) < 0:
            self._more()
        end += len(marker)
        data, self.buffer = self.buffer[:end], self.buffer[end:]
        return data

    def read_exactly(self, size: int) -> bytes:
        pieces = [self.buffer]
        have = len(self.buffer)
        while have < size:
            data = self.recv_some()
            if not data:
                raise EOFError(f"connection ended after {have} of {size} bytes")
            pieces.append(data)
            have += len(data)
        data = b"".join(pieces)
        self.buffer = data[size:]
        return data[:size]

    def read_to_end(self) -> bytes:
        pieces = [self.buffer]
        self.buffer = b""
        while data := self.recv_some():
            pieces.append(data)
        return b"".join(pieces)

    def read_response(self) -> Response:
        head = self.read_until(b"\r\n\r\n")
        response = parse_response_head(head)
        status = response.status
        if status < 200 or status in (204, 304):
            return response
        encoding = response.header(b"transfer-encoding")
        length = response.header(b"content-length")
        raw, body = [head], []
        if encoding is not None and encoding.lower() == b"chunked":
            while True:
                line = self.read_until(b"\r\n")
                raw.append(line)
                size = int(line.split(b";")[0], 16)
                if not size:
                    while (trailer := self.read_until(b"\r\n")) != b"\r\n":
                        raw.append(trailer)
                    raw.append(trailer)
                    break
                data = self.read_exactly(size + 2)
                raw.append(data)
                body.append(data[:-2])
        elif length is not None:
            data = self.read_exactly(int(length))
            raw.append(data)
            body.append(data)
        else:
            data = self.read_to_end()
            raw.append(data)
            body.append(data)
        response.raw = b"".join(raw)
        response.body = b"".join(body)
        return response


def parse_response_head(head: bytes) -> Response:
    """
    A response with only its head read; C{raw} is the head.
    """
    lines = head[:-4].split(b"\r\n")
    status = int(lines[0].split(b" ")[1])
    headers = []
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        headers.append((name, value.strip()))
    return Response(head, status, headers, b"")


def _set_timeouts(sock: socket.socket) -> None:
    # pyOpenSSL needs a blocking socket; these keep a broken proxy from
    # hanging the test run.
    timeout = struct.pack("ll", CLIENT_TIMEOUT, 0)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, timeout)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, timeout)


class TLSClient(Stream):
    """
    A blocking TLS client of the agent, like the docker CLI.

    @ivar closeNotify: the agent ended its direction with a close_notify.
    @ivar eofError: how the connection ended otherwise (reset, bare EOF).
    """

    def __init__(
        self, port: int, caFile: str, tls12: bool = False, rcvbuf: int = 0
    ) -> None:
        super().__init__()
        context = SSL.Context(SSL.TLS_CLIENT_METHOD)
        context.set_alpn_protos([b"http/1.1"])
        context.set_verify(SSL.VERIFY_PEER)
        context.load_verify_locations(caFile)
        if tls12:
            context.set_max_proto_version(SSL.TLS1_2_VERSION)
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        if rcvbuf:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        _set_timeouts(sock)
        sock.connect(("127.0.0.1", port))
        self.sock = sock
        self.tls = SSL.Connection(context, sock)
        self.tls.set_connect_state()
        self.tls.do_handshake()
        self.version = self.tls.get_protocol_version_name()
        self.closeNotify = False
        self.tcpEOF = False
        self.eofError: Exception | None = None
        self.ended = False

    def send(self, data: bytes) -> None:
        self.tls.sendall(data)

    def recv_some(self) -> bytes:
        if self.ended:
            return b""
        try:
            data = self.tls.recv(65536)
        except SSL.ZeroReturnError:
            self.closeNotify = True
            self.ended = True
            # After close_notify, the TCP stream must end too.
            try:
                self.tcpEOF = self.sock.recv(1) == b""
            except OSError:
                self.tcpEOF = False
            return b""
        except SSL.WantReadError:
            raise TimeoutError("no data from the agent") from None
        except SSL.SysCallError as e:
            if e.args[0] in (errno.EAGAIN, errno.EWOULDBLOCK):
                raise TimeoutError("no data from the agent") from None
            self.ended, self.eofError = True, e
            return b""
        except SSL.Error as e:
            self.ended, self.eofError = True, e
            return b""
        if not data:
            self.ended = True
        return data

    @property
    def cleanlyClosed(self) -> bool:
        """
        The agent said close_notify and then closed TCP: nothing was lost.
        """
        return self.closeNotify and self.tcpEOF

    def close_notify(self) -> None:
        """Half-close like Go's C{CloseWrite} over TLS."""
        self.tls.shutdown()

    def fin(self) -> None:
        """Half-close with a bare TCP FIN, as older clients do."""
        self.sock.shutdown(socket.SHUT_WR)

    def close(self) -> None:
        # Never blocks: no close_notify here (tests send it when they mean it).
        self.sock.close()


class UnixClient(Stream):
    """A plain blocking client straight to a fake dockerd."""

    def __init__(self, path: str) -> None:
        super().__init__()
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        _set_timeouts(self.sock)
        self.sock.connect(path)

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def recv_some(self) -> bytes:
        return self.sock.recv(65536)

    def close(self) -> None:
        self.sock.close()


def closed_without_data(sock: socket.socket) -> bool:
    """
    Does a plain socket end (EOF or reset) without receiving anything?
    """
    try:
        return sock.recv(65536) == b""
    except ConnectionResetError:
        return True


def direct_answers(path: str, data: bytes, count: int) -> list[Response]:
    """
    The fake's own answers to C{data}, asked over its UNIX socket.
    """
    client = UnixClient(path)
    try:
        client.send(data)
        return [client.read_response() for _ in range(count)]
    finally:
        client.close()


# The harness


@define(eq=False)
class RecordingFake(FakeDockerdFactory):
    """
    The fake dockerd, remembering its protocols so a test can stop it reading.
    """

    built: list[FakeDockerdProtocol] = field(factory=list)

    def buildProtocol(self, addr):
        protocol = super().buildProtocol(addr)
        self.built.append(protocol)
        return protocol


class ProxyTestCase(TestCase):
    """
    Starts fakes and agents and makes sure every socket is gone afterwards.
    """

    timeout = 60

    def setUp(self) -> None:
        self._clients: list[TLSClient] = []
        self._gates: list[GateFactory] = []
        self._fakes: list[FakeDockerdFactory] = []
        self._ports: list[Any] = []
        self._directories: list[str] = []
        self.certificate = load_or_create_self_signed(
            self.mktemp(), host_names=["localhost"], ip_addresses=["127.0.0.1"]
        )
        self.addCleanup(self._closeEverything)

    def socketPath(self) -> str:
        path = short_socket_path()
        self._directories.append(os.path.dirname(path))
        return path

    def startFake(
        self, path: str | None = None, **options: Any
    ) -> tuple[RecordingFake, str]:
        if path is None:
            path = self.socketPath()
        fake = RecordingFake(**options)
        self._ports.append(cast(IReactorUNIX, reactor).listenUNIX(path, fake))
        self._fakes.append(fake)
        return fake, path

    def startAgent(self, dockerPath: str, **gateOptions: Any) -> int:
        """
        The agent in front of C{dockerPath}, assembled as proxy_service does;
        returns its TCP port.
        """
        description = "unix:" + dockerPath
        checker = BasicAuthChecker(
            USER.decode(), PASSWORD.decode(), lambda f, *a: deferToThread(f, *a)
        )
        gate = GateFactory(
            checker=checker,
            connectDocker=docker_connector(reactor, description),
            dockerDescription=description,
            clock=reactor,
            **gateOptions,
        )
        tls = serve_tls(server_context(self.certificate), gate)
        port = cast(IReactorTCP, reactor).listenTCP(
            0, cast(ServerFactory, tls), interface="127.0.0.1"
        )
        self._ports.append(port)
        self._gates.append(gate)
        self.gate = gate
        return cast(IPv4Address, port.getHost()).port

    def startService(self, dockerPath: str, **settings: Any):
        """
        The proxy as twistd builds it (`build_proxy_service`, its own
        self-signed certificate, the thread pools) in front of
        C{dockerPath}, with C{settings} over the defaults; sets
        C{agentPort} and C{caFile} and returns the service.
        """
        probe = socket.socket()
        probe.bind(("127.0.0.1", 0))
        self.agentPort = probe.getsockname()[1]
        probe.close()
        stateDir = os.path.abspath(self.mktemp())
        values: dict[str, Any] = dict(
            listen=(f"tcp:{self.agentPort}:interface=127.0.0.1",),
            docker="unix:" + dockerPath,
            user=USER.decode(),
            password=PASSWORD.decode(),
            passwordIsDefault=False,
            tlsCert=None,
            tlsKey=None,
            stateDir=stateDir,
            serverNames=(),
        )
        values.update(settings)
        threads = ThreadPools(reactor)
        service = build_proxy_service(ProxyConfig(**values), reactor, threads)
        service.setServiceParent(threads)
        threads.startService()
        self.addCleanup(threads.stopService)
        self.caFile = os.path.join(stateDir, "tls", "agent-cert.pem")
        return service

    def setUpProxy(self, **gateOptions: Any) -> None:
        self.fake, self.path = self.startFake()
        self.reference, self.referencePath = self.startFake()
        self.port = self.startAgent(self.path, **gateOptions)

    def connect(self, port: int | None = None, **options: Any) -> Deferred[TLSClient]:
        """
        A TLS client connected (handshake done) to the agent.
        """
        caFile = options.pop("caFile", self.certificate.cert_path)
        d = deferToThread(TLSClient, port or self.port, caFile, **options)
        d.addCallback(self._remember)
        return d

    def _remember(self, client: TLSClient) -> TLSClient:
        self._clients.append(client)
        return client

    def inThread(self, f: Callable[..., Any], *args: Any) -> Deferred[Any]:
        return deferToThread(f, *args)

    @property
    def openAgentConnections(self) -> int:
        return len(self.gate.connections)

    @inlineCallbacks
    def _closeEverything(self):
        problems = []
        for client in self._clients:
            client.close()
        for gate in self._gates:
            closed = yield waitFor(lambda gate=gate: not gate.connections)
            if not closed:
                problems.append(
                    f"{len(gate.connections)} agent connection(s) left open"
                )
                for protocol in list(gate.connections):
                    protocol.transport.abortConnection()
                yield waitFor(lambda gate=gate: not gate.connections)
        for fake in self._fakes:
            closed = yield waitFor(lambda fake=fake: fake.open_connections == 0)
            if not closed:
                problems.append(
                    f"{fake.open_connections} dockerd connection(s) left open"
                )
                fake.abort_all()
                yield waitFor(lambda fake=fake: fake.open_connections == 0)
        for port in self._ports:
            yield port.stopListening()
        for directory in self._directories:
            shutil.rmtree(directory, True)
        if problems:
            self.fail("; ".join(problems))


# Scripts the client threads run


def exchange(client: TLSClient, data: bytes, count: int) -> list[Response]:
    client.send(data)
    return [client.read_response() for _ in range(count)]


def read_to_close(client: Stream) -> bytes:
    return client.read_to_end()


def half_close_and_read(client: TLSClient, finOnly: bool) -> bytes:
    if finOnly:
        client.fin()
    else:
        client.close_notify()
    return client.read_to_end()


def hijack_session(client: TLSClient, head: bytes, expected: bytes, finOnly: bool):
    """
    Like C{echo data | docker run -i IMAGE sh -c 'cat; echo done'}: read the
    hijack answer, talk both ways, half-close and read what follows.
    """
    client.send(head)
    answer = client.read_exactly(len(expected))
    exchanged = []
    for message in (b"hello\n", bytes(range(256)) * 512, b"world\n"):
        client.send(message)
        exchanged.append(client.read_exactly(len(message)) == message)
    client.send(b"last words")
    rest = half_close_and_read(client, finOnly)
    return answer, exchanged, rest


CHUNK_SIZES = (65536, 1, 4093, 131072, 7, MiB)


def chunked_upload(client: TLSClient, total: int, source: bytes) -> tuple[str, Any]:
    """
    POST C{total} bytes to /upload in chunks of varying sizes, generated on
    the fly from C{source}; returns our sha256 and the fake's JSON answer.
    """
    digest = hashlib.sha256()
    client.send(
        request(
            b"POST",
            b"/v1.41/upload",
            [
                (b"Content-Type", b"application/x-tar"),
                (b"Transfer-Encoding", b"chunked"),
            ],
        )
    )
    window = source * 2
    sent, index = 0, 0
    while sent < total:
        size = min(CHUNK_SIZES[index % len(CHUNK_SIZES)], total - sent)
        start = sent % len(source)
        piece = window[start : start + size]
        digest.update(piece)
        extension = b";ext=x" if index % 3 == 0 else b""
        client.send(b"%x%s\r\n%s\r\n" % (size, extension, piece))
        sent += size
        index += 1
    client.send(b"0\r\nX-Trailer: yes\r\n\r\n")
    response = client.read_response()
    return digest.hexdigest(), response


def length_upload(
    client: TLSClient, total: int, source: bytes, progress: list[int] | None = None
) -> tuple[str, Response]:
    """
    POST C{total} bytes with a Content-Length, counting what was sent.
    """
    digest = hashlib.sha256()
    client.send(request(b"POST", b"/upload", [(b"Content-Length", b"%d" % total)]))
    window = source * 2
    sent = 0
    while sent < total:
        size = min(256 * 1024, total - sent)
        start = sent % len(source)
        piece = window[start : start + size]
        digest.update(piece)
        client.send(piece)
        sent += size
        if progress is not None:
            progress[0] = sent
    return digest.hexdigest(), client.read_response()


def read_big(client: TLSClient, size: int) -> tuple[Response, int, int | None]:
    """
    Read a /big answer without keeping it: its head, how many body bytes came
    and the offset of the first byte that broke the pattern, if any.
    """
    head = client.read_until(b"\r\n\r\n")
    response = parse_response_head(head)
    received, firstBad = 0, None
    data, client.buffer = client.buffer, b""
    while True:
        if data:
            take = data[: size - received]
            if firstBad is None and take != pattern_bytes(received, len(take)):
                firstBad = received
            received += len(take)
            client.buffer = data[len(take) :]
        if received >= size:
            break
        data = client.recv_some()
        if not data:
            break
    return response, received, firstBad


# The tests


class PlainAnswerTests(ProxyTestCase):
    def setUp(self) -> None:
        super().setUp()
        self.setUpProxy()

    @inlineCallbacks
    def test_pingAndVersion(self):
        """
        GET /_ping and /version come back exactly as dockerd wrote them.
        """
        data = request(b"GET", b"/_ping") + request(b"GET", b"/v1.41/version")
        expected = yield self.inThread(direct_answers, self.referencePath, data, 2)
        client = yield self.connect()
        answers = yield self.inThread(exchange, client, data, 2)
        self.assertEqual([a.raw for a in answers], [e.raw for e in expected])
        self.assertEqual(answers[0].raw, PING_OK)
        self.assertEqual(answers[1].json(), {"ApiVersion": "1.41", "Version": "fake"})
        self.assertEqual(self.fake.connections_made, 1)
        self.assertEqual([r.path for r in self.fake.requests], ["/_ping", "/version"])

    @inlineCallbacks
    def test_socketOptions(self):
        """
        The accepted TCP connection has Nagle off (no 40 ms stalls) and TCP
        keep-alive on (streams never time out; vanished peers are found).
        """
        client = yield self.connect()
        (ping,) = yield self.inThread(exchange, client, request(b"GET", b"/_ping"), 1)
        self.assertEqual(ping.raw, PING_OK)
        (accepted,) = self.gate.connections
        sock = accepted.transport.transport.getHandle()
        self.assertTrue(sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))
        self.assertTrue(sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE))

    @inlineCallbacks
    def test_oddHeadersUntouched(self):
        """
        Header names in any case, repeated headers, odd spacing and a
        registry credential arrive at dockerd byte for byte.
        """
        head = (
            b"POST /v1.41/echo-head?fromImage=a%20b&tag=x HTTP/1.1\r\n"
            b"hOsT: docker\r\n"
            b"authorization: " + AUTH + b"\r\n"
            b"X-Registry-Auth: eyJ1c2VybmFtZSI6ImEiLCJwYXNzd29yZCI6ImIifQ==\r\n"
            b"x-dup: one\r\n"
            b"X-DUP: two\r\n"
            b"X-Spaces:    lots   of   space   \r\n"
            b"Accept:\t*/*\t\r\n"
            b"X-Empty:\r\n"
            b"User-Agent: Docker-Client/24.0.7 (linux)\r\n"
            b"content-LENGTH: 7\r\n"
            b"\r\n"
        )
        client = yield self.connect()
        (answer,) = yield self.inThread(exchange, client, head + b'{"a":1}', 1)
        self.assertEqual(self.fake.requests[-1].raw_head, head)
        self.assertEqual(answer.status, 200)
        self.assertEqual(answer.body, head + b'{"a":1}')


class PipeliningTests(ProxyTestCase):
    def setUp(self) -> None:
        super().setUp()
        self.setUpProxy()
        self.requests = [
            request(b"GET", b"/_ping"),
            request(
                b"POST",
                b"/echo-head",
                [(b"Content-Length", b"11"), (b"Content-Type", b"text/plain")],
                b"hello world",
            ),
            request(
                b"POST",
                b"/upload",
                [(b"Transfer-Encoding", b"chunked")],
                b"5\r\nhello\r\n6;x=y\r\n world\r\n0\r\n\r\n",
            ),
            request(b"GET", b"/stream?count=3&interval=0.05"),
            request(b"GET", b"/v1.41/version"),
        ]
        self.pipelined = b"".join(self.requests)

    def assertReachedFakeInOrder(self):
        self.assertEqual(self.fake.connections_made, 1)
        self.assertEqual(
            [r.raw_head for r in self.fake.requests],
            [r[: r.index(b"\r\n\r\n") + 4] for r in self.requests],
        )
        self.assertEqual({r.connection for r in self.fake.requests}, {1})

    def assertRefusedWrongPassword(self, refusal: Response):
        self.assertEqual(refusal.status, 401)
        self.assertEqual(refusal.header(b"Content-Type"), b"application/json")
        self.assertEqual(
            refusal.header(b"WWW-Authenticate"), b'Basic realm="haven-agent"'
        )
        self.assertIn("wrong", refusal.json()["message"])

    @inlineCallbacks
    def test_pipelinedThenWrongPassword(self):
        """
        Five requests in one TLS write (one with a Content-Length body, one
        chunked) reach dockerd on one connection and are answered in order;
        a later request with a wrong password gets a 401, then the
        connection ends, and dockerd never sees it.
        """
        count = len(self.requests)
        expected = yield self.inThread(
            direct_answers, self.referencePath, self.pipelined, count
        )
        client = yield self.connect()
        answers = yield self.inThread(exchange, client, self.pipelined, count)
        self.assertEqual([a.raw for a in answers], [e.raw for e in expected])
        self.assertReachedFakeInOrder()

        wrong = request(b"GET", b"/_ping", auth=BAD_AUTH)
        (refusal,) = yield self.inThread(exchange, client, wrong, 1)
        self.assertRefusedWrongPassword(refusal)
        rest = yield self.inThread(read_to_close, client)
        self.assertEqual(rest, b"")
        self.assertTrue(client.cleanlyClosed)
        self.assertEqual(len(self.fake.requests), count)

    @inlineCallbacks
    def test_wrongPasswordPipelinedBehindStream(self):
        """
        The same requests and the wrong one in a single write: the 401 waits
        until dockerd has finished every earlier answer, including a stream
        still running, and is never spliced into it.
        """
        count = len(self.requests)
        expected = yield self.inThread(
            direct_answers, self.referencePath, self.pipelined, count
        )
        client = yield self.connect()
        wrong = request(b"GET", b"/_ping", auth=BAD_AUTH)
        answers = yield self.inThread(exchange, client, self.pipelined + wrong, count)
        self.assertEqual([a.raw for a in answers], [e.raw for e in expected])
        refusal = yield self.inThread(Stream.read_response, client)
        self.assertRefusedWrongPassword(refusal)
        rest = yield self.inThread(read_to_close, client)
        self.assertEqual(rest, b"")
        self.assertTrue(client.cleanlyClosed)
        self.assertReachedFakeInOrder()

    @inlineCallbacks
    def test_unhonouredUpgradeKeepsGating(self):
        """
        A request that may hijack but that dockerd answers as a plain HTTP
        response leaves a keep-alive HTTP connection, so the next request
        must still be gated: wrong credentials get a 401 and never reach
        dockerd.

        The fake only hijacks attach and exec start, so a /_ping with an
        Upgrade header stands in here for what real dockerd does with
        C{POST /exec/ID/start} and C{{"Detach": true}} (sent without Upgrade
        by C{docker exec -d} and docker-py's C{exec_start(detach=True)}):
        C{200 OK}, C{Content-Length: 0}, connection kept alive.
        """
        upgrade = request(
            b"GET", b"/_ping", [(b"Connection", b"Upgrade"), (b"Upgrade", b"tcp")]
        )
        client = yield self.connect()
        (ping,) = yield self.inThread(exchange, client, upgrade, 1)
        self.assertEqual(ping.raw, PING_OK)
        wrong = request(b"GET", b"/_ping", auth=BAD_AUTH)
        (answer,) = yield self.inThread(exchange, client, wrong, 1)
        self.assertEqual(answer.status, 401)
        self.assertEqual(len(self.fake.requests), 1)

    @inlineCallbacks
    def test_byteByByte(self):
        """
        The same requests sent one byte per TLS record arrive intact and
        are answered exactly as before.
        """
        count = len(self.requests)
        expected = yield self.inThread(
            direct_answers, self.referencePath, self.pipelined, count
        )
        client = yield self.connect()

        def dribble() -> list[Response]:
            for i in range(len(self.pipelined)):
                client.send(self.pipelined[i : i + 1])
            return [client.read_response() for _ in range(count)]

        answers = yield self.inThread(dribble)
        self.assertEqual([a.raw for a in answers], [e.raw for e in expected])
        self.assertReachedFakeInOrder()

    @inlineCallbacks
    def test_manySmallRequests(self):
        """
        300 pings in one write: 300 answers, in order, over one connection.
        """
        data = b"".join(
            request(b"GET", b"/_ping?n=%d" % i, [(b"X-N", b"%d" % i)])
            for i in range(300)
        )
        client = yield self.connect()
        answers = yield self.inThread(exchange, client, data, 300)
        self.assertEqual({a.raw for a in answers}, {PING_OK})
        self.assertEqual(
            [r.header(b"x-n") for r in self.fake.requests],
            [b"%d" % i for i in range(300)],
        )
        self.assertEqual(self.fake.connections_made, 1)

    @inlineCallbacks
    def test_pipelinedHijack(self):
        """
        A ping, an attach and the first stream bytes in one write: the ping
        is answered, then the stream works and half-closes cleanly.
        """
        attach = HijackTests.attach
        client = yield self.connect()

        def session():
            client.send(request(b"GET", b"/_ping") + attach + b"early\n")
            ping = client.read_response()
            upgraded = client.read_exactly(len(UPGRADED) + len(b"early\n"))
            client.send(b"late\n")
            echoed = client.read_exactly(len(b"late\n"))
            return ping, upgraded, echoed, half_close_and_read(client, False)

        ping, upgraded, echoed, rest = yield self.inThread(session)
        self.assertEqual(ping.raw, PING_OK)
        self.assertEqual(upgraded, UPGRADED + b"early\n")
        self.assertEqual(echoed, b"late\n")
        self.assertEqual(rest, b"\ndone\n")
        self.assertTrue(client.cleanlyClosed)
        self.assertEqual(self.fake.connections_made, 1)

    @inlineCallbacks
    def assertAnsweredDespiteHalfClose(self, finOnly: bool):
        data = request(b"GET", b"/_ping") + request(b"GET", b"/version")
        expected = yield self.inThread(direct_answers, self.referencePath, data, 2)
        client = yield self.connect()

        def sendAndHalfClose() -> bytes:
            client.send(data)
            return half_close_and_read(client, finOnly)

        received = yield self.inThread(sendAndHalfClose)
        self.assertEqual(received, b"".join(e.raw for e in expected))
        self.assertTrue(client.cleanlyClosed)

    def test_requestsThenCloseNotify(self):
        """
        Requests immediately followed by the client's close_notify (as
        C{printf ... | openssl s_client} does) are still all answered.
        """
        return self.assertAnsweredDespiteHalfClose(False)

    def test_requestsThenFIN(self):
        return self.assertAnsweredDespiteHalfClose(True)


class StreamTests(ProxyTestCase):
    def setUp(self) -> None:
        super().setUp()
        self.setUpProxy()

    @inlineCallbacks
    def test_chunkedStream(self):
        """
        A chunked stream arrives complete and byte-identical.
        """
        data = request(b"GET", b"/stream?count=5&interval=0.05")
        expected = yield self.inThread(direct_answers, self.referencePath, data, 1)
        client = yield self.connect()
        (answer,) = yield self.inThread(exchange, client, data, 1)
        self.assertEqual(answer.raw, expected[0].raw)
        self.assertEqual(answer.body, b"line0\nline1\nline2\nline3\nline4\n")
        self.assertEqual(answer.header(b"Transfer-Encoding"), b"chunked")

    @inlineCallbacks
    def test_slowOutputRelayedAsItComes(self):
        """
        Each chunk of a slow answer reaches the client before dockerd writes
        the next one (dockerd's clock is driven by the test), and the
        connection then serves the next request.
        """
        clock = Clock()
        self.fake, path = self.startFake(clock=clock)
        self.port = self.startAgent(path)
        client = yield self.connect()
        yield self.inThread(client.send, request(b"GET", b"/slow?chunks=4&interval=5"))
        head = yield self.inThread(client.read_until, b"\r\n\r\n")
        self.assertTrue(head.startswith(b"HTTP/1.1 200 OK\r\n"), head)
        for i in range(4):
            chunk = yield self.inThread(client.read_until, b"\n\r\n")
            self.assertEqual(chunk, b"6\r\nline%d\n\r\n" % i)
            clock.advance(5)
        last = yield self.inThread(client.read_exactly, 5)
        self.assertEqual(last, b"0\r\n\r\n")
        (ping,) = yield self.inThread(exchange, client, request(b"GET", b"/_ping"), 1)
        self.assertEqual(ping.raw, PING_OK)
        self.assertEqual(self.fake.connections_made, 1)
        self.assertEqual([r.path for r in self.fake.requests], ["/slow", "/_ping"])

    @inlineCallbacks
    def test_closeAfterResponse(self):
        """
        When dockerd closes after its answer, the client gets the whole
        answer, then close_notify and EOF.
        """
        data = request(b"GET", b"/close-after-response")
        expected = yield self.inThread(direct_answers, self.referencePath, data, 1)
        client = yield self.connect()
        (answer,) = yield self.inThread(exchange, client, data, 1)
        self.assertEqual(answer.raw, expected[0].raw)
        self.assertEqual(answer.body, b"bye\n")
        rest = yield self.inThread(read_to_close, client)
        self.assertEqual(rest, b"")
        self.assertTrue(client.cleanlyClosed)
        client.close()
        closed = yield waitFor(lambda: self.openAgentConnections == 0)
        self.assertTrue(closed)
        self.assertEqual(self.fake.open_connections, 0)

    @inlineCallbacks
    def test_expectContinue(self):
        """
        C{Expect: 100-continue}, as curl sends for uploads: dockerd's 100
        comes through before the body is sent, then the final answer.
        """
        body = b"x" * 100000
        head = request(
            b"POST",
            b"/upload",
            [(b"Content-Length", b"%d" % len(body)), (b"Expect", b"100-continue")],
        )
        client = yield self.connect()

        def upload():
            client.send(head)
            interim = client.read_response()
            client.send(body)
            return interim, client.read_response()

        interim, answer = yield self.inThread(upload)
        self.assertEqual(interim.raw, b"HTTP/1.1 100 Continue\r\n\r\n")
        self.assertEqual(
            answer.json(),
            {"bytes": len(body), "sha256": hashlib.sha256(body).hexdigest()},
        )

    @inlineCallbacks
    def test_requestPipelinedBehindCloseAfterResponse(self):
        """
        dockerd closing after an answer while a further request was already
        sent: the client gets the complete answer, then a clean close.
        """
        first = request(b"GET", b"/close-after-response")
        expected = yield self.inThread(direct_answers, self.referencePath, first, 1)
        client = yield self.connect()
        data = first + request(b"GET", b"/_ping")
        (answer,) = yield self.inThread(exchange, client, data, 1)
        self.assertEqual(answer.raw, expected[0].raw)
        rest = yield self.inThread(read_to_close, client)
        self.assertEqual(rest, b"")
        self.assertTrue(client.cleanlyClosed)

    @inlineCallbacks
    def test_malformedChunkedBodyAnsweredByDockerd(self):
        """
        A chunked body with a broken chunk-size line is dockerd's to judge:
        its own 400 comes back unchanged, then the connection ends.
        """
        data = request(
            b"POST",
            b"/upload",
            [(b"Transfer-Encoding", b"chunked")],
            b"5\r\nhello\r\nzz\r\nmore\r\n0\r\n\r\n",
        )
        expected = yield self.inThread(direct_answers, self.referencePath, data, 1)
        self.assertEqual(expected[0].status, 400)
        client = yield self.connect()
        (answer,) = yield self.inThread(exchange, client, data, 1)
        self.assertEqual(answer.raw, expected[0].raw)
        rest = yield self.inThread(read_to_close, client)
        self.assertEqual(rest, b"")
        self.assertTrue(client.cleanlyClosed)


class TimeoutTests(ProxyTestCase):
    def setUp(self) -> None:
        super().setUp()
        self.setUpProxy(firstHeadTimeout=0.5, nextHeadTimeout=0.5)

    @inlineCallbacks
    def test_idleEventsStreamSurvivesHeadTimeout(self):
        """
        An established /events stream outlives the head timeout by far and
        still delivers the next event; a client that sends nothing at all,
        and one that never even starts TLS, are closed after the timeout.
        """
        events = yield self.connect()
        yield self.inThread(events.send, request(b"GET", b"/events"))
        head = yield self.inThread(events.read_until, b"\r\n\r\n")
        self.assertIn(b"Transfer-Encoding: chunked\r\n", head)
        silent = yield self.connect()
        raw = socket.create_connection(("127.0.0.1", self.port))
        self.addCleanup(raw.close)
        _set_timeouts(raw)
        opened = yield waitFor(lambda: self.openAgentConnections == 3)
        self.assertTrue(opened)

        yield sleep(1.5)
        self.assertEqual(self.openAgentConnections, 1)
        self.assertEqual(self.fake.event_listeners, 1)
        self.fake.emit_event(b'{"status":"start","id":"abc"}\n')
        event = yield self.inThread(events.read_until, b"}\n\r\n")
        self.assertEqual(event, b'1e\r\n{"status":"start","id":"abc"}\n\r\n')

        nothing = yield self.inThread(read_to_close, silent)
        self.assertEqual(nothing, b"")
        self.assertTrue(silent.cleanlyClosed)
        # Twisted's TLS resets a connection closed before its handshake.
        ended = yield self.inThread(closed_without_data, raw)
        self.assertTrue(ended)

        rest = yield self.inThread(half_close_and_read, events, False)
        self.assertEqual(rest, b"0\r\n\r\n")
        self.assertTrue(events.cleanlyClosed)
        self.assertEqual(self.fake.connections_made, 1)

    @inlineCallbacks
    def test_partialHeadTimesOut(self):
        """
        A head that stops arriving halfway gets a 408 and a close; dockerd
        never hears of it.
        """
        client = yield self.connect()
        yield self.inThread(client.send, b"GET /_ping HTTP/1.1\r\nHost: doc")
        answer = yield self.inThread(Stream.read_response, client)
        self.assertEqual(answer.status, 408)
        self.assertEqual(answer.header(b"Content-Type"), b"application/json")
        rest = yield self.inThread(read_to_close, client)
        self.assertEqual(rest, b"")
        self.assertTrue(client.cleanlyClosed)
        self.assertEqual(self.fake.connections_made, 0)

    @inlineCallbacks
    def test_slowSecondHeadTimesOut(self):
        """
        After a first request, a next head that starts but never ends gets
        a 408 too, after the first answer.
        """
        client = yield self.connect()
        (ping,) = yield self.inThread(exchange, client, request(b"GET", b"/_ping"), 1)
        self.assertEqual(ping.raw, PING_OK)
        yield self.inThread(client.send, b"GET /_ping HTTP/1.1\r\n")
        answer = yield self.inThread(Stream.read_response, client)
        self.assertEqual(answer.status, 408)
        rest = yield self.inThread(read_to_close, client)
        self.assertEqual(rest, b"")
        self.assertTrue(client.cleanlyClosed)
        self.assertEqual(len(self.fake.requests), 1)


class HijackTests(ProxyTestCase):
    def setUp(self) -> None:
        super().setUp()
        self.setUpProxy()

    attach = request(
        b"POST",
        b"/v1.41/containers/abc/attach?stdin=1&stdout=1&stderr=1&stream=1",
        [
            (b"Content-Type", b"text/plain"),
            (b"Connection", b"Upgrade"),
            (b"Upgrade", b"tcp"),
        ],
    )
    legacyAttach = request(
        b"POST",
        b"/containers/abc/attach?stdin=1&stdout=1&stream=1",
        [(b"Content-Type", b"text/plain")],
    )

    @inlineCallbacks
    def assertHijackSurvivesHalfClose(
        self,
        head: bytes,
        expected: bytes,
        finOnly: bool = False,
        tls12: bool = False,
        body: bytes = b"",
    ):
        client = yield self.connect(tls12=tls12)
        self.assertEqual(client.version, "TLSv1.2" if tls12 else "TLSv1.3")
        answer, exchanged, rest = yield self.inThread(
            hijack_session, client, head + body, expected, finOnly
        )
        self.assertEqual(answer, expected)
        self.assertEqual(exchanged, [True, True, True])
        self.assertEqual(rest, b"last words\ndone\n")
        self.assertTrue(client.cleanlyClosed)
        self.assertEqual(self.fake.requests[-1].raw_head, head)

    def test_upgradeCloseNotify(self):
        return self.assertHijackSurvivesHalfClose(self.attach, UPGRADED)

    def test_upgradeFIN(self):
        return self.assertHijackSurvivesHalfClose(self.attach, UPGRADED, finOnly=True)

    def test_upgradeCloseNotifyTLS12(self):
        return self.assertHijackSurvivesHalfClose(self.attach, UPGRADED, tls12=True)

    def test_upgradeFINTLS12(self):
        return self.assertHijackSurvivesHalfClose(
            self.attach, UPGRADED, finOnly=True, tls12=True
        )

    def test_legacyCloseNotify(self):
        return self.assertHijackSurvivesHalfClose(self.legacyAttach, LEGACY_HIJACKED)

    def test_legacyFIN(self):
        return self.assertHijackSurvivesHalfClose(
            self.legacyAttach, LEGACY_HIJACKED, finOnly=True
        )

    def test_execStartWithBody(self):
        """
        POST /exec/x/start carries a JSON body before the stream: dockerd
        reads the body, and every stream byte after it gets through both
        ways.
        """
        body = b'{"Detach":false,"Tty":false}'
        head = request(
            b"POST",
            b"/v1.41/exec/e1/start",
            [
                (b"Content-Type", b"application/json"),
                (b"Content-Length", b"%d" % len(body)),
                (b"Connection", b"Upgrade"),
                (b"Upgrade", b"tcp"),
            ],
        )
        return self.assertHijackSurvivesHalfClose(head, UPGRADED, body=body)

    @inlineCallbacks
    def test_bulkInputThenHalfClose(self):
        """
        Everything the client wrote before its close_notify reaches dockerd
        before dockerd learns of the end of input.
        """
        bulk = random.Random(1).randbytes(512 * 1024)
        client = yield self.connect()

        def session():
            client.send(self.attach)
            head = client.read_exactly(len(UPGRADED))
            client.send(bulk)
            return head, half_close_and_read(client, False)

        head, rest = yield self.inThread(session)
        self.assertEqual(head, UPGRADED)
        self.assertEqual(len(rest), len(bulk) + len(b"\ndone\n"))
        self.assertTrue(rest == bulk + b"\ndone\n", "echo differs")
        self.assertTrue(client.cleanlyClosed)

    @inlineCallbacks
    def test_hijackAfterKeepAliveRequest(self):
        """
        A ping, then an attach on the same connection, as docker-py does.
        """
        client = yield self.connect()
        (ping,) = yield self.inThread(exchange, client, request(b"GET", b"/_ping"), 1)
        self.assertEqual(ping.raw, PING_OK)
        answer, exchanged, rest = yield self.inThread(
            hijack_session, client, self.attach, UPGRADED, False
        )
        self.assertEqual((answer, exchanged), (UPGRADED, [True, True, True]))
        self.assertEqual(rest, b"last words\ndone\n")
        self.assertEqual(self.fake.connections_made, 1)


class UploadAndBackPressureTests(ProxyTestCase):
    def setUp(self) -> None:
        super().setUp()
        self.setUpProxy()
        self.source = random.Random(4711).randbytes(MiB)

    @inlineCallbacks
    def test_chunkedUpload64MiB(self):
        """
        64 MiB in chunks of assorted sizes, with chunk extensions and a
        trailer, reach dockerd intact.
        """
        client = yield self.connect()
        total = 64 * MiB
        digest, answer = yield self.inThread(chunked_upload, client, total, self.source)
        self.assertEqual(answer.status, 200)
        self.assertEqual(answer.json(), {"bytes": total, "sha256": digest})
        (ping,) = yield self.inThread(exchange, client, request(b"GET", b"/_ping"), 1)
        self.assertEqual(ping.raw, PING_OK)

    @inlineCallbacks
    def test_contentLengthUpload(self):
        client = yield self.connect()
        total = 16 * MiB + 3
        digest, answer = yield self.inThread(length_upload, client, total, self.source)
        self.assertEqual(answer.json(), {"bytes": total, "sha256": digest})

    @inlineCallbacks
    def test_downloadBackPressure(self):
        """
        A client that stops reading a 256 MiB answer holds dockerd back: the
        agent buffers a bounded amount; reading on gets every byte in order.
        """
        size = 256 * MiB
        client = yield self.connect(rcvbuf=64 * 1024)
        before = rss()
        yield self.inThread(client.send, request(b"GET", b"/big?bytes=%d" % size))
        started = yield waitFor(lambda: self.fake.big_bytes_written > 0)
        self.assertTrue(started)
        yield sleep(1.5)
        written = self.fake.big_bytes_written
        grown = rss() - before
        self.assertLess(written, 32 * MiB)
        self.assertLess(grown, 64 * MiB)

        response, received, firstBad = yield self.inThread(read_big, client, size)
        self.assertEqual(response.status, 200)
        self.assertEqual(response.header(b"Content-Length"), b"%d" % size)
        self.assertEqual((received, firstBad), (size, None))
        self.assertEqual(self.fake.big_bytes_written, size)
        (ping,) = yield self.inThread(exchange, client, request(b"GET", b"/_ping"), 1)
        self.assertEqual(ping.raw, PING_OK)

    @inlineCallbacks
    def test_clientResetMidDownload(self):
        """
        A client that vanishes (TCP reset) in the middle of a large answer
        leaves nothing behind: dockerd's connection is closed too.
        """
        client = yield self.connect(rcvbuf=64 * 1024)
        yield self.inThread(client.send, request(b"GET", b"/big?bytes=%d" % (64 * MiB)))
        started = yield self.inThread(client.read_exactly, 100000)
        self.assertTrue(started.startswith(b"HTTP/1.1 200 OK\r\n"))
        client.sock.setsockopt(
            socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0)
        )
        client.close()
        gone = yield waitFor(
            lambda: self.openAgentConnections == 0 and self.fake.open_connections == 0
        )
        self.assertTrue(gone)
        self.assertLess(self.fake.big_bytes_written, 32 * MiB)

    @inlineCallbacks
    def test_uploadBackPressure(self):
        """
        When dockerd stops reading an upload, the agent stops reading the
        client: the client's writes block instead of the agent buffering;
        once dockerd reads again everything arrives.
        """
        total = 96 * MiB
        client = yield self.connect()
        (ping,) = yield self.inThread(exchange, client, request(b"GET", b"/_ping"), 1)
        self.assertEqual(ping.raw, PING_OK)
        (upstream,) = self.fake.built
        upstream.transport.pauseProducing()
        before = rss()
        progress = [0]
        uploading = self.inThread(length_upload, client, total, self.source, progress)
        yield sleep(1.5)
        sent = progress[0]
        grown = rss() - before
        upstream.transport.resumeProducing()
        digest, answer = yield uploading
        self.assertLess(sent, 32 * MiB)
        self.assertLess(grown, 64 * MiB)
        self.assertEqual(answer.json(), {"bytes": total, "sha256": digest})


class RefusalTests(ProxyTestCase):
    def setUp(self) -> None:
        super().setUp()
        self.setUpProxy()

    @inlineCallbacks
    def refused(self, data: bytes) -> Any:
        client = yield self.connect()
        (answer,) = yield self.inThread(exchange, client, data, 1)
        rest = yield self.inThread(read_to_close, client)
        self.assertEqual(rest, b"")
        self.assertTrue(client.cleanlyClosed)
        self.assertEqual(answer.header(b"Content-Type"), b"application/json")
        self.assertEqual(answer.header(b"Connection"), b"close")
        self.assertIsInstance(answer.json()["message"], str)
        return answer

    @inlineCallbacks
    def test_noCredentialsThenCloseNotify(self):
        """
        A refused request followed at once by close_notify still gets its
        401 before the close.
        """
        client = yield self.connect()

        def sendAndHalfClose() -> bytes:
            client.send(request(b"GET", b"/_ping", auth=None))
            return half_close_and_read(client, False)

        received = yield self.inThread(sendAndHalfClose)
        self.assertTrue(received.startswith(b"HTTP/1.1 401 Unauthorized\r\n"))
        self.assertTrue(client.cleanlyClosed)
        self.assertEqual(self.fake.connections_made, 0)

    @inlineCallbacks
    def test_oversizedHead(self):
        data = request(b"GET", b"/_ping", [(b"X-Big", b"a" * 70 * 1024)])
        answer = yield self.refused(data)
        self.assertEqual(answer.status, 431)
        self.assertEqual(self.fake.connections_made, 0)

    @inlineCallbacks
    def test_garbage(self):
        answer = yield self.refused(b"\x00\x01garbage here\r\n\r\n")
        self.assertEqual(answer.status, 400)
        self.assertEqual(self.fake.connections_made, 0)

    @inlineCallbacks
    def test_http2Preface(self):
        answer = yield self.refused(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
        self.assertEqual(answer.status, 400)
        self.assertEqual(self.fake.connections_made, 0)

    @inlineCallbacks
    def test_noCredentials(self):
        answer = yield self.refused(request(b"GET", b"/_ping", auth=None))
        self.assertEqual(answer.status, 401)
        self.assertEqual(
            answer.header(b"WWW-Authenticate"), b'Basic realm="haven-agent"'
        )
        self.assertEqual(self.fake.connections_made, 0)


class DockerdDownTests(ProxyTestCase):
    @inlineCallbacks
    def test_502ThenServesOnceDockerdIsBack(self):
        """
        With no dockerd at the socket path the client gets a 502 naming the
        socket; once dockerd listens there the next connection is served.
        """
        path = self.socketPath()
        self.port = self.startAgent(path)
        client = yield self.connect()
        (answer,) = yield self.inThread(exchange, client, request(b"GET", b"/_ping"), 1)
        self.assertEqual(answer.status, 502)
        self.assertEqual(answer.header(b"Content-Type"), b"application/json")
        self.assertIn(path, answer.json()["message"])
        rest = yield self.inThread(read_to_close, client)
        self.assertEqual(rest, b"")
        self.assertTrue(client.cleanlyClosed)

        fake, _ = self.startFake(path)
        again = yield self.connect()
        (ping,) = yield self.inThread(exchange, again, request(b"GET", b"/_ping"), 1)
        self.assertEqual(ping.raw, PING_OK)
        self.assertEqual(fake.connections_made, 1)

    @inlineCallbacks
    def test_502ThenCloseNotify(self):
        """
        A request followed at once by close_notify still gets the 502.
        """
        path = self.socketPath()
        self.port = self.startAgent(path)
        client = yield self.connect()

        def sendAndHalfClose() -> bytes:
            client.send(request(b"GET", b"/_ping"))
            return half_close_and_read(client, False)

        received = yield self.inThread(sendAndHalfClose)
        self.assertTrue(received.startswith(b"HTTP/1.1 502 Bad Gateway\r\n"))
        self.assertIn(path.encode(), received)
        self.assertTrue(client.cleanlyClosed)


class BuiltServiceTests(ProxyTestCase):
    @inlineCallbacks
    def test_buildProxyServiceWithBcryptPassword(self):
        """
        The service as twistd builds it, with a bcrypt password checked in a
        thread: right credentials pass (twice, the second from the cache),
        wrong ones get a 401.
        """
        fake, path = self.startFake()
        self.startService(
            path, password=bcrypt.hashpw(PASSWORD, bcrypt.gensalt(4)).decode()
        )
        port, caFile = self.agentPort, self.caFile
        client = yield self.connect(port, caFile=caFile)
        data = request(b"GET", b"/_ping") * 2 + request(
            b"GET", b"/_ping", auth=BAD_AUTH
        )
        answers = yield self.inThread(exchange, client, data, 3)
        self.assertEqual([a.raw for a in answers[:2]], [PING_OK, PING_OK])
        self.assertEqual(answers[2].status, 401)
        rest = yield self.inThread(read_to_close, client)
        self.assertEqual(rest, b"")
        self.assertTrue(client.cleanlyClosed)
        self.assertEqual(len(fake.requests), 2)

        # A fresh connection: a request, then one with a password not seen
        # before, and close_notify at once, while that password is still
        # being checked in a thread. Both are answered before the close.
        quick = yield self.connect(port, caFile=caFile)
        fresh = request(
            b"GET",
            b"/_ping",
            auth=b"Basic " + base64.b64encode(USER + b":" + PASSWORD + b" "),
        )

        def sendAndHalfClose() -> bytes:
            quick.send(request(b"GET", b"/_ping") + fresh)
            return half_close_and_read(quick, False)

        received = yield self.inThread(sendAndHalfClose)
        self.assertTrue(received.startswith(PING_OK), received)
        self.assertIn(b"HTTP/1.1 401 Unauthorized\r\n", received)
        self.assertTrue(quick.cleanlyClosed)
        self.assertEqual(len(fake.requests), 3)
        client.close()
        quick.close()
        idle = yield waitFor(lambda: fake.open_connections == 0)
        self.assertTrue(idle)
