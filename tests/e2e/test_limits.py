"""
Connection limits that one client cannot exhaust for all, against the real
dockerd: while idle TCP connections from one source, or the read-only
user's keep-alive connections, hold their share, the admin still gets 200
from dockerd.

The agent listens on 127.0.0.1; the crowding connections come from another
loopback source address (127.0.0.2), so that they are one source and the
admin another.
"""

from __future__ import annotations

import base64
import json
import socket
import ssl
import time

from tests.e2e.test_hardening import HardeningCase
from tests.e2e_agent import read_until_closed

VIEWER, VIEWER_PASSWORD = "viewer", "look"
CROWD_SOURCE = "127.0.0.2"


class LimitsCase(HardeningCase):
    def tcp(self, source: str = CROWD_SOURCE) -> socket.socket:
        sock = self.agent.tcp_socket(source)
        self.addCleanup(sock.close)
        return sock

    def tls(self, source: str = CROWD_SOURCE) -> ssl.SSLSocket:
        sock = self.agent.tls_socket(["http/1.1"], source)
        self.addCleanup(sock.close)
        return sock

    def ask(self, sock: ssl.SSLSocket, path: str, user: str, password: str) -> bytes:
        """One keep-alive request; its whole (Content-Length) answer."""
        credentials = base64.b64encode(f"{user}:{password}".encode()).decode()
        sock.sendall(
            f"GET {path} HTTP/1.1\r\nHost: docker\r\n"
            f"Authorization: Basic {credentials}\r\n\r\n".encode()
        )
        answer = b""
        while b"\r\n\r\n" not in answer:
            chunk = sock.recv(65536)
            if not chunk:
                return answer
            answer += chunk
        head, _, body = answer.partition(b"\r\n\r\n")
        length = 0
        for line in head.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value)
        while len(body) < length:
            chunk = sock.recv(65536)
            if not chunk:
                break
            body += chunk
        return head + b"\r\n\r\n" + body

    def assertAdminServed(self) -> None:
        """The admin's docker CLI gets dockerd's own answer."""
        run = self.docker(
            self.agent,
            "version",
            "--format",
            "{{.Server.APIVersion}}",
            password=self.agent.password,
            timeout=30,
        )
        self.assertEqual(self.assertDockerWorked(run).strip(), self.dockerd.api_version)


class UnauthenticatedLimitTests(LimitsCase):
    def setUp(self) -> None:
        super().setUp()
        self.agent = self.start_agent(
            "--max-unauthenticated",
            "20",
            "--max-unauthenticated-per-source",
            "4",
            "--hello-timeout",
            "2",
        )

    def test_one_source_cannot_fill_the_unauthenticated_places(self) -> None:
        crowd = [self.tls() for _ in range(4)]
        extra = self.tls()
        extra.sendall(b"GET /_ping HTTP/1.1\r\nHost: docker\r\n\r\n")
        refused = read_until_closed(extra)
        self.assertTrue(refused.startswith(b"HTTP/1.1 503 "), refused)
        self.assertIn(b"from 127.0.0.2", refused)
        self.assertAdminServed()
        self.assertEqual(len(crowd), 4)

    def test_silent_connections_dropped_after_hello_timeout(self) -> None:
        """Idle TCP connections that never begin TLS do not keep their
        places: gone after --hello-timeout, and the source may connect again."""
        silent = [self.tcp() for _ in range(4)]
        for sock in silent:
            sock.settimeout(15)
            try:
                self.assertEqual(sock.recv(1), b"")
            except ConnectionResetError:
                pass
        status, body, _ = self.curl(self.agent, "/_ping", password=self.agent.password)
        self.assertEqual(status, 200, body)
        again = self.tls()
        self.assertEqual(
            self.ask(again, "/_ping", self.agent.user, self.agent.password)[:15],
            b"HTTP/1.1 200 OK",
        )
        self.assertIn(
            "no TLS handshake begun within 2 s", self.agent_output(self.agent)
        )


class PerUserLimitTests(LimitsCase):
    def setUp(self) -> None:
        super().setUp()
        self.agent = self.start_agent(
            "--readonly-user",
            VIEWER,
            "--readonly-password",
            VIEWER_PASSWORD,
            "--max-connections",
            "8",
            "--max-connections-per-user",
            "3",
        )

    def test_read_only_user_cannot_fill_max_connections(self) -> None:
        held = [self.tls() for _ in range(3)]
        for sock in held:
            answer = self.ask(sock, "/_ping", VIEWER, VIEWER_PASSWORD)
            self.assertTrue(answer.startswith(b"HTTP/1.1 200 "), answer)
        fourth = self.tls()
        answer = self.ask(fourth, "/_ping", VIEWER, VIEWER_PASSWORD)
        self.assertTrue(answer.startswith(b"HTTP/1.1 503 "), answer)
        self.assertIn(b"too many connections of user viewer", answer)
        # The viewer's three are still open, and the admin gets in.
        for sock in held:
            answer = self.ask(sock, "/version", VIEWER, VIEWER_PASSWORD)
            self.assertEqual(
                json.loads(answer.partition(b"\r\n\r\n")[2])["ApiVersion"],
                self.dockerd.api_version,
            )
        self.assertAdminServed()


class IdleTimeoutTests(LimitsCase):
    def setUp(self) -> None:
        super().setUp()
        self.agent = self.start_agent(
            "--readonly-user",
            VIEWER,
            "--readonly-password",
            VIEWER_PASSWORD,
            "--idle-timeout",
            "1",
        )

    def test_idle_read_only_keep_alive_closed_stream_kept(self) -> None:
        idle = self.tls("127.0.0.1")
        answer = self.ask(idle, "/_ping", VIEWER, VIEWER_PASSWORD)
        self.assertTrue(answer.startswith(b"HTTP/1.1 200 "), answer)
        events = self.tls("127.0.0.1")
        credentials = base64.b64encode(f"{VIEWER}:{VIEWER_PASSWORD}".encode()).decode()
        events.sendall(
            b"GET /events?filters=%7B%22type%22%3A%5B%22volume%22%5D%7D HTTP/1.1\r\n"
            b"Host: docker\r\n" + f"Authorization: Basic {credentials}\r\n\r\n".encode()
        )
        head = events.recv(65536)
        self.assertTrue(head.startswith(b"HTTP/1.1 200 "), head)

        idle.settimeout(15)
        started = time.monotonic()
        self.assertEqual(read_until_closed(idle), b"", "closed without a word")
        self.assertLess(time.monotonic() - started, 15)

        # Well past the idle timeout the quiet event stream is still open:
        # a volume created now arrives on it.
        time.sleep(2.5)
        name = self.unique("idle-vol")
        self.addCleanup(self.dockerd.docker, "volume", "rm", "-f", name, check=False)
        self.dockerd.docker("volume", "create", name)
        events.settimeout(15)
        seen = b""
        while name.encode() not in seen:
            chunk = events.recv(65536)
            self.assertTrue(chunk, "the event stream was closed")
            seen += chunk
        self.assertAdminServed()
