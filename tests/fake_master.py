# -*- test-case-name: tests.reporting.test_reporter -*-
"""
A fake Haven master's C{POST /discovery/nodes/{name}}, for the reporter's tests.

The real master is a Java service we cannot run in unit tests, and what
matters is how it judges a report: this resource answers the way the
contract describes the master's C{DiscoveryNodeController}, and records
every request so tests can check the body, headers and query field by field.

In mode C{"ok"} (the default) it judges like the master:

  - 404 for any other path, 405 for any other method;
  - 400 when the name is outside C{[A-Za-z0-9-]+} or the body is not a JSON
    object;
  - 401 when a secret is configured and C{X-Auth-Node} differs;
  - 500 when C{time} is missing or has no offset, C{address} is missing or
    null, or any value inside C{system.net} is null (where the Java master
    throws);
  - else 200 with an empty body.

The other modes answer every request the same way: C{"401"}, C{"400"},
C{"500"} (with a short text body), or C{"hang"}, which never answers (the
request stays open; L{FakeMaster.hanging} holds it).

Use it in memory with C{treq.testing.StubTreq(FakeMaster())}, or on a real
socket with L{listen}.
"""

from __future__ import annotations

import hmac
import json
import re
from datetime import datetime
from typing import Any, cast
from urllib.parse import parse_qs

from attrs import Factory, define, field, frozen
from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IListeningPort, IReactorTCP
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request, Site

NODE_NAME = re.compile(r"[A-Za-z0-9-]+\Z")
PATH = re.compile(r"/discovery/nodes/(?P<name>[^/]*)\Z")
MODES = ("ok", "401", "400", "500", "hang")


@frozen
class ReceivedReport:
    """
    One request as the fake master received it.

    @ivar method: e.g. C{"POST"}.
    @ivar path: the path without the query, e.g. C{"/discovery/nodes/n1"}.
    @ivar query: the parsed query string, e.g. C{{"ttl": ["120"]}}.
    @ivar headers: lower-cased header name -> values.
    @ivar body: the raw request body.
    @ivar code: the status answered, or None while hanging.
    """

    method: str
    path: str
    query: dict[str, list[str]] = field(hash=False)
    headers: dict[str, list[str]] = field(hash=False)
    body: bytes
    code: int | None

    def header(self, name: str) -> str | None:
        """The first value of header C{name} (any case), or None."""
        values = self.headers.get(name.lower())
        return values[0] if values else None

    def json(self) -> Any:
        return json.loads(self.body)


def _time_has_offset(value: object) -> bool:
    if not isinstance(value, str):
        return False
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        return False
    return parsed.tzinfo is not None


def _net_has_null(system: Any) -> bool:
    net = system.get("net") if isinstance(system, dict) else None
    if not isinstance(net, dict):
        return False
    for counters in net.values():
        if counters is None:
            return True
        if isinstance(counters, dict) and None in counters.values():
            return True
    return False


@define(eq=False)
class FakeMaster(Resource):
    """
    The fake master's resource; see the module docstring.

    @ivar secret: the C{dm.agent.notifier.secret} it expects, or None to
        accept any (or no) C{X-Auth-Node}.
    @ivar mode: one of L{MODES}; may be changed between requests.
    @ivar received: every request, in order.
    @ivar hanging: requests left open in mode C{"hang"}.
    """

    secret: str | None = None
    mode: str = field(default="ok")
    received: list[ReceivedReport] = Factory(list)
    hanging: list[Request] = Factory(list)
    _waiting: list[Deferred[ReceivedReport]] = Factory(list)

    isLeaf = True

    def __attrs_post_init__(self) -> None:
        Resource.__init__(self)
        if self.mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, not {self.mode!r}")

    def next_report(self) -> Deferred[ReceivedReport]:
        """Fires with the next request received."""
        waiting: Deferred[ReceivedReport] = Deferred()
        self._waiting.append(waiting)
        return waiting

    def bodies(self) -> list[Any]:
        """The JSON bodies received, in order."""
        return [each.json() for each in self.received]

    def render(self, request: Request) -> bytes | int:
        path = request.path.decode("latin-1")
        uri = request.uri.decode("latin-1")
        query = parse_qs(uri.partition("?")[2], keep_blank_values=True)
        headers = {
            name.decode("latin-1").lower(): [v.decode("latin-1") for v in values]
            for name, values in request.requestHeaders.getAllRawHeaders()
        }
        body = request.content.read() if request.content is not None else b""

        if self.mode == "hang":
            code: int | None = None
            self.hanging.append(request)
            answer: tuple[int, bytes] | None = None
        else:
            answer = self._judge(request.method, path, headers, body)
            code = answer[0]
        report = ReceivedReport(
            method=request.method.decode("latin-1"),
            path=path,
            query=query,
            headers=headers,
            body=body,
            code=code,
        )
        self.received.append(report)
        waiting, self._waiting = self._waiting, []
        for each in waiting:
            each.callback(report)

        if answer is None:
            return NOT_DONE_YET
        request.setResponseCode(answer[0])
        if answer[1]:
            request.setHeader(b"Content-Type", b"text/plain; charset=utf-8")
        return answer[1]

    def _judge(
        self, method: bytes, path: str, headers: dict[str, list[str]], body: bytes
    ) -> tuple[int, bytes]:
        if self.mode == "401":
            return 401, b""
        if self.mode == "400":
            return 400, b"Bad Request: refused by the fake master"
        if self.mode == "500":
            return 500, b"Internal Server Error: the fake master choked"
        matched = PATH.match(path)
        if matched is None:
            return 404, b"Not Found"
        if method != b"POST":
            return 405, b"Method Not Allowed"
        if not NODE_NAME.match(matched.group("name")):
            return 400, b"Bad Request: invalid node name"
        if self.secret is not None:
            given = (headers.get("x-auth-node") or [""])[0]
            if not hmac.compare_digest(
                given.encode("latin-1"), self.secret.encode("utf-8")
            ):
                return 401, b""
        try:
            report = json.loads(body)
        except ValueError:
            return 400, b"Bad Request: body is not JSON"
        if not isinstance(report, dict):
            return 400, b"Bad Request: body is not a JSON object"
        if not _time_has_offset(report.get("time")):
            return 500, b"Internal Server Error: cannot parse time"
        if report.get("address") is None:
            return 500, b"Internal Server Error: address is null"
        if _net_has_null(report.get("system")):
            return 500, b"Internal Server Error: null in system.net"
        return 200, b""


def listen(
    reactor: IReactorTCP, master: FakeMaster | None = None
) -> tuple[IListeningPort, str]:
    """
    Serve C{master} (a new L{FakeMaster} if None) over HTTP on 127.0.0.1 at a
    free port; return the port (stop it when done; C{port.factory.resource} is
    the master) and the base URL, e.g. C{http://127.0.0.1:41234}.
    """
    site = Site(master if master is not None else FakeMaster())
    site.noisy = False
    port = reactor.listenTCP(0, site, interface="127.0.0.1")  # type: ignore[arg-type]
    address = cast(IPv4Address, port.getHost())
    return port, f"http://127.0.0.1:{address.port}"
