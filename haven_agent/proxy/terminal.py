# -*- test-case-name: tests.proxy.test_terminal -*-
"""
The Haven web terminal: `wss://NODE:8771/containers/{id}/attach/ws`.

The stock Haven master opens it WITHOUT credentials (its browser terminal
has none to send), so on a proxy that asks for them the terminal cannot
work. Three controls, all off until configured:

- `--terminal-from NETWORKS`: that one route, as a WebSocket upgrade, is
  let through without credentials from these source networks (the
  master's address). Anything else from them still authenticates.
- `--terminal-origins ORIGINS`: every WebSocket upgrade, credentials or
  not, must carry one of these `Origin`s when it carries one at all, so
  that a page on another site cannot drive a logged-in browser's socket.
- Attach tickets, for browsers and scripts that can authenticate once: an
  authenticated `POST /_agent/attach-tickets?container=ID` answers a ticket,
  HMAC-signed, for that one container, valid for at most 60 s and one use.
  It is presented as the only WebSocket subprotocol
  (`Sec-WebSocket-Protocol`: dockerd echoes a single offered subprotocol,
  and answers 400 to two) or as the query parameter `ticket`, which the
  access log redacts.

A ticket is checked in the process that receives the upgrade: with
`--workers N` the key is shared, and "one use" holds per process.
docs/security.md says what each control trades.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import ipaddress
import json
import os
import re
from collections import OrderedDict
from collections.abc import Sequence
from urllib.parse import unquote_to_bytes

from attrs import define, field, frozen
from twisted.internet.interfaces import IReactorTime

from haven_agent.proxy.engine_routes import route_of
from haven_agent.proxy.http_head import RequestHead

ATTACH_WS = "/containers/{id}/attach/ws"
#: Who the access log says a terminal let in by its source address is.
TERMINAL_USER = "haven-terminal"
TICKETS_PATH = b"/_agent/attach-tickets"
#: A ticket's lifetime: long enough to open the socket it was asked for.
TICKET_SECONDS = 60.0
_TICKET_PARAMETER = re.compile(rb"(?:^|&)ticket=([^&]*)")
_CONTAINER = re.compile(r"\A[A-Za-z0-9][A-Za-z0-9_.-]{0,254}\Z")


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def container_of(head: RequestHead) -> str | None:
    """
    The container of an attach/ws request, as its path names it.
    """
    parts = head.apiPath.split(b"/")
    if len(parts) == 5:
        return parts[2].decode("utf-8", "replace")
    return None


def is_websocket_upgrade(head: RequestHead) -> bool:
    upgrade = head.first(b"upgrade")
    return upgrade is not None and upgrade.lower() == b"websocket"


def is_terminal(head: RequestHead) -> bool:
    """
    Is C{head} the web terminal's request: a WebSocket upgrade of
    C{GET /containers/{id}/attach/ws}?
    """
    return (
        head.method == b"GET"
        and is_websocket_upgrade(head)
        and route_of(head.method, head.apiPath) == ATTACH_WS
    )


def presented_ticket(head: RequestHead) -> str | None:
    """
    The ticket C{head} presents: its only WebSocket subprotocol, or its
    C{ticket} query parameter.
    """
    protocols = head.values(b"sec-websocket-protocol")
    offered = [p.strip() for value in protocols for p in value.split(b",")]
    if len(offered) == 1 and offered[0].count(b".") == 1:
        return offered[0].decode("ascii", "replace")
    _, question, query = head.target.partition(b"?")
    if question:
        found = _TICKET_PARAMETER.search(query)
        if found is not None:
            return unquote_to_bytes(found.group(1)).decode("ascii", "replace")
    return None


@frozen
class Ticket:
    user: str
    container: str
    expires: float
    nonce: str


@define(eq=False)
class AttachTickets:
    """
    Issues and checks attach tickets, signed with C{key} (shared by the
    agent's processes), each accepted once.
    """

    key: bytes = field(repr=False)
    _used: OrderedDict[str, float] = field(init=False, factory=OrderedDict)

    def issue(self, user: str, container: str, now: float) -> tuple[str, float]:
        """
        A ticket for C{user} to attach to C{container}, and when it expires.

        @raise ValueError: C{container} is not a container's name or ID.
        """
        if not _CONTAINER.match(container):
            raise ValueError(f"{container!r} is not a container name or ID")
        expires = now + TICKET_SECONDS
        claims = json.dumps(
            {"u": user, "c": container, "e": expires, "n": _b64(os.urandom(12))},
            separators=(",", ":"),
        ).encode("utf-8")
        payload = _b64(claims)
        return f"{payload}.{self._sign(payload)}", expires

    def accept(self, text: str, container: str | None, now: float) -> Ticket | None:
        """
        The ticket C{text} when it is genuine, unexpired, unused and for
        C{container}; it is used up by this call. None otherwise.
        """
        payload, dot, signature = text.partition(".")
        if not dot or not hmac.compare_digest(signature, self._sign(payload)):
            return None
        try:
            claims = json.loads(_unb64(payload))
            ticket = Ticket(
                str(claims["u"]), str(claims["c"]), float(claims["e"]), str(claims["n"])
            )
        except (ValueError, KeyError, TypeError):
            return None
        if ticket.expires < now or ticket.container != container:
            return None
        self._forget(now)
        if ticket.nonce in self._used:
            return None
        self._used[ticket.nonce] = ticket.expires
        return ticket

    def _forget(self, now: float) -> None:
        while self._used:
            nonce, expires = next(iter(self._used.items()))
            if expires >= now:
                break
            del self._used[nonce]

    def _sign(self, payload: str) -> str:
        digest = hmac.new(self.key, payload.encode("ascii"), hashlib.sha256).digest()
        return _b64(digest)


def parse_networks(
    text: str,
) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
    """
    Comma- or space-separated addresses or networks (C{10.0.0.5},
    C{10.0.0.0/24}, C{fd00::/64}).

    @raise ValueError: one is neither.
    """
    return tuple(
        ipaddress.ip_network(item, strict=False)
        for item in text.replace(",", " ").split()
    )


@frozen
class TerminalAccess:
    """
    The terminal's controls: the source networks exempt from credentials
    for the terminal's route, the allowed Origins, and the tickets.
    """

    networks: Sequence[ipaddress.IPv4Network | ipaddress.IPv6Network] = ()
    origins: frozenset[str] = frozenset()
    tickets: AttachTickets | None = None
    clock: IReactorTime | None = None

    @property
    def active(self) -> bool:
        return bool(self.networks or self.origins or self.tickets)

    def verdict(self, head: RequestHead, host: str) -> tuple[str, str] | str | None:
        """
        For a WebSocket upgrade: (user, how) when the terminal's controls
        let it in without credentials, the refusal's reason when they
        refuse it, None when it authenticates as any request does.
        """
        refused = self.originRefused(head)
        if refused is not None:
            return refused
        if not is_terminal(head):
            return None
        text = presented_ticket(head) if self.tickets is not None else None
        if text is not None:
            now = self.clock.seconds() if self.clock is not None else 0.0
            ticket = self.tickets.accept(text, container_of(head), now)
            if ticket is None:
                return (
                    "the attach ticket is not valid for this container, has "
                    "expired or was used"
                )
            return ticket.user, "ticket"
        if self.networks and self.fromExempt(host):
            return TERMINAL_USER, "source"
        return None

    def fromExempt(self, host: str) -> bool:
        try:
            address = ipaddress.ip_address(host.strip("[]").split("%", 1)[0])
        except ValueError:
            return False
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped:
            address = address.ipv4_mapped
        return any(address in network for network in self.networks)

    def originRefused(self, head: RequestHead) -> str | None:
        """
        Why C{head}, a WebSocket upgrade, is refused for its Origin, or None.
        """
        if not self.origins:
            return None
        origin = head.first(b"origin")
        if origin is None:
            return None
        text = origin.decode("ascii", "replace").rstrip("/")
        if text in self.origins:
            return None
        return f"WebSocket Origin {text} is not allowed"
