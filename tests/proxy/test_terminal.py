"""
Tests for L{haven_agent.proxy.terminal}: the Haven web terminal's attach
without credentials from the master's network, the Origin allow-list on
every WebSocket upgrade, and attach tickets; in the access decision, and
through the whole proxy in front of the fake dockerd.
"""

from __future__ import annotations

import base64
import json
import os

from twisted.internet.defer import inlineCallbacks, succeed
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from haven_agent.proxy.access_log import RequestRecord
from haven_agent.proxy.auth import BasicAuthChecker
from haven_agent.proxy.decision import (
    AccessDecision,
    Allow,
    AnswerTicket,
    Identity,
    Refuse,
)
from haven_agent.proxy.http_head import parse_head
from haven_agent.proxy.terminal import (
    TICKET_SECONDS,
    AttachTickets,
    TerminalAccess,
    parse_networks,
    presented_ticket,
)
from tests.proxy.test_proxy_fake_dockerd import (
    AUTH,
    ProxyTestCase,
    exchange,
    request,
)

WS = b"Connection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\n"
ATTACH = b"GET /containers/web/attach/ws?stream=1&stdin=1&stdout=1 HTTP/1.1"


def head(line: bytes, *headers: bytes):
    return parse_head(line + b"\r\nHost: node\r\n" + b"".join(headers) + b"\r\n")


class TicketTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.tickets = AttachTickets(os.urandom(32))

    def test_once_for_one_container(self) -> None:
        ticket, expires = self.tickets.issue("admin", "web", 100.0)
        self.assertEqual(expires, 100.0 + TICKET_SECONDS)
        self.assertIsNone(self.tickets.accept(ticket, "db", 101.0))
        accepted = self.tickets.accept(ticket, "web", 101.0)
        self.assertEqual((accepted.user, accepted.container), ("admin", "web"))
        self.assertIsNone(self.tickets.accept(ticket, "web", 102.0))

    def test_expired_forged_foreign(self) -> None:
        ticket, _ = self.tickets.issue("admin", "web", 100.0)
        self.assertIsNone(
            self.tickets.accept(ticket, "web", 100.0 + TICKET_SECONDS + 1)
        )
        payload, _, signature = ticket.partition(".")
        forged = (
            base64.urlsafe_b64encode(
                json.dumps({"u": "admin", "c": "db", "e": 1e12, "n": "x"}).encode()
            )
            .decode()
            .rstrip("=")
        )
        self.assertIsNone(self.tickets.accept(f"{forged}.{signature}", "db", 101.0))
        other = AttachTickets(os.urandom(32))
        self.assertIsNone(other.accept(self.tickets.issue("a", "web", 0)[0], "web", 1))
        for junk in ("", ".", "abc", "a.b", "!!.!!"):
            self.assertIsNone(self.tickets.accept(junk, "web", 1.0))

    def test_container_names(self) -> None:
        for bad in ("", "a/b", "../x", "-x"):
            with self.assertRaises(ValueError):
                self.tickets.issue("admin", bad, 0.0)

    def test_presented(self) -> None:
        self.assertEqual(
            presented_ticket(head(ATTACH, WS, b"Sec-WebSocket-Protocol: ab.cd\r\n")),
            "ab.cd",
        )
        self.assertEqual(
            presented_ticket(
                head(b"GET /containers/web/attach/ws?ticket=ab.cd&x=1 HTTP/1.1")
            ),
            "ab.cd",
        )
        # Two offered subprotocols: dockerd answers 400; not a ticket here.
        self.assertIsNone(
            presented_ticket(head(ATTACH, b"Sec-WebSocket-Protocol: ab.cd, ef.gh\r\n"))
        )
        self.assertIsNone(presented_ticket(head(ATTACH, WS)))


def decision(terminal: TerminalAccess) -> AccessDecision:
    checker = BasicAuthChecker(
        "admin", "pw", lambda f, *a: succeed(f(*a)), readOnly=("viewer", "ro")
    )
    return AccessDecision(checker, terminal=terminal)


MASTER = Identity("10.0.0.1")
ELSEWHERE = Identity("192.0.2.7")
BASIC = b"Authorization: Basic " + base64.b64encode(b"admin:pw") + b"\r\n"


class DecisionTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.tickets = AttachTickets(os.urandom(32))
        self.judge = decision(
            TerminalAccess(
                parse_networks("10.0.0.1, fd00::/64"),
                frozenset({"https://haven.example:8761"}),
                self.tickets,
                clock=self.clock,
            )
        )

    def test_master_network(self) -> None:
        """
        From the master's address, the terminal's upgrade needs no
        credentials; nothing else does.
        """
        self.assertEqual(
            self.judge.verdictNow(head(ATTACH, WS), MASTER),
            Allow("haven-terminal", "source"),
        )
        self.assertEqual(
            self.judge.verdictNow(head(ATTACH, WS), Identity("::ffff:10.0.0.1")),
            Allow("haven-terminal", "source"),
        )
        for refused in [
            head(b"GET /containers/json HTTP/1.1"),
            head(ATTACH),
            head(b"POST /containers/web/attach?stream=1 HTTP/1.1", WS),
            head(b"GET /containers/web/attach/ws/../../../exec/x/json HTTP/1.1", WS),
        ]:
            self.assertEqual(self.judge.verdictNow(refused, MASTER).status, 401)
        self.assertEqual(self.judge.verdictNow(head(ATTACH, WS), ELSEWHERE).status, 401)

    def test_origin(self) -> None:
        good = b"Origin: https://haven.example:8761\r\n"
        bad = b"Origin: https://evil.example\r\n"
        self.assertIsInstance(
            self.judge.verdictNow(head(ATTACH, WS, good), MASTER), Allow
        )
        refused = self.judge.verdictNow(head(ATTACH, WS, bad), MASTER)
        self.assertEqual(refused.status, 403)
        self.assertIn("Origin https://evil.example is not allowed", refused.message)
        # Every upgrade, with credentials too.
        upgrade = head(b"POST /containers/web/attach?stream=1 HTTP/1.1", WS, bad, BASIC)
        self.assertEqual(self.judge.verdictNow(upgrade, ELSEWHERE).status, 403)

    def test_tickets(self) -> None:
        asked = self.judge.verdictNow(
            head(b"POST /_agent/attach-tickets?container=web HTTP/1.1", BASIC),
            ELSEWHERE,
        )
        self.assertEqual(asked, AnswerTicket(Allow("admin", "password")))
        ticket, _ = self.tickets.issue("admin", "web", self.clock.seconds())
        offered = b"Sec-WebSocket-Protocol: " + ticket.encode() + b"\r\n"
        self.assertEqual(
            self.judge.verdictNow(head(ATTACH, WS, offered), ELSEWHERE),
            Allow("admin", "ticket"),
        )
        again = self.judge.verdictNow(head(ATTACH, WS, offered), ELSEWHERE)
        self.assertEqual(again.status, 403)
        self.assertIn("used", again.message)
        viewer = b"Authorization: Basic " + base64.b64encode(b"viewer:ro") + b"\r\n"
        self.assertIsInstance(
            self.judge.verdictNow(
                head(b"POST /_agent/attach-tickets?container=web HTTP/1.1", viewer),
                ELSEWHERE,
            ),
            Refuse,
        )

    def test_off_by_default(self) -> None:
        judge = decision(TerminalAccess())
        self.assertEqual(judge.verdictNow(head(ATTACH, WS), MASTER).status, 401)
        refused = judge.verdictNow(
            head(b"POST /_agent/attach-tickets?container=web HTTP/1.1", BASIC), MASTER
        )
        self.assertEqual(refused.status, 404)

    def test_ticket_redacted_in_log(self) -> None:
        record = RequestRecord.of(
            head(b"GET /containers/web/attach/ws?stdin=1&ticket=ab.cd HTTP/1.1"),
            "admin",
            0.0,
        )
        self.assertEqual(
            record.path, "/containers/web/attach/ws?stdin=1&ticket=REDACTED"
        )


class TerminalProxyTests(ProxyTestCase):
    """
    The whole proxy with tickets on: a ticket asked for over TLS opens the
    terminal's upgrade to dockerd once, without credentials.
    """

    def setUp(self) -> None:
        super().setUp()
        self.fake, path = self.startFake()
        self.startService(
            path,
            attachTickets=True,
            ticketKey=os.urandom(32).hex(),
        )

    @inlineCallbacks
    def ask(self, data: bytes):
        client = yield self.connect(self.agentPort, caFile=self.caFile)
        (answer,) = yield self.inThread(exchange, client, data, 1)
        client.close()
        return answer

    @inlineCallbacks
    def test_ticket_once(self):
        issued = yield self.ask(
            request(b"POST", b"/_agent/attach-tickets?container=web", auth=AUTH)
        )
        self.assertEqual(issued.status, 200)
        ticket = issued.json()["ticket"].encode()
        self.assertEqual(self.fake.requests, [])
        headers = [
            (b"Connection", b"Upgrade"),
            (b"Upgrade", b"websocket"),
            (b"Sec-WebSocket-Protocol", ticket),
        ]
        first = yield self.ask(
            request(b"GET", b"/containers/web/attach/ws", headers, auth=None)
        )
        # The fake has no attach/ws: it answers 404, but the request got there.
        self.assertEqual(first.status, 404)
        self.assertEqual(len(self.fake.requests), 1)
        second = yield self.ask(
            request(b"GET", b"/containers/web/attach/ws", headers, auth=None)
        )
        self.assertEqual(second.status, 403)
        self.assertEqual(len(self.fake.requests), 1)


class OptionTests(SynchronousTestCase):
    def test_options(self) -> None:
        from twisted.python import usage

        from tests.test_tap import parse

        config = parse(
            [
                "--terminal-from",
                "10.0.0.1,10.1.0.0/16",
                "--terminal-origins",
                "https://haven.example:8761/",
                "--attach-tickets",
            ]
        ).config
        self.assertEqual(config.terminalFrom, ("10.0.0.1/32", "10.1.0.0/16"))
        self.assertEqual(config.terminalOrigins, ("https://haven.example:8761",))
        self.assertTrue(config.attachTickets)
        self.assertEqual(len(bytes.fromhex(config.ticketKey)), 32)
        self.assertNotIn(config.ticketKey, repr(config))
        defaults = parse().config
        self.assertEqual((defaults.terminalFrom, defaults.attachTickets), ((), False))
        for args in (
            ["--terminal-from", "master.example"],
            ["--terminal-origins", "haven.example"],
            ["--terminal-origins", "https://haven.example/path"],
        ):
            with self.assertRaises(usage.UsageError, msg=args):
                parse(args)
