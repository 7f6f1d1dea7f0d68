# -*- test-case-name: tests.reporting.test_docker_api -*-
"""
A fake Docker Engine API on a UNIX socket, for the reporter's Docker client.

L{tests.fake_dockerd} is byte-exact and hand-rolled because the proxy's tests
are about the wire; the reporter's client only needs dockerd's answers and
failure modes (an error status, garbage, silence, an event stream that stays
open and later ends), so this fake is plain C{twisted.web} and its knobs are
attributes a test sets.

Start it with::

    running = serve_fake_docker_api(reactor)
    self.addCleanup(running.stop)
    api = DockerAPI(reactor, running.description)
    self.addCleanup(api.close)

Endpoints (an optional C{/vX.Y} prefix is ignored):

  - C{GET /info}: L{FakeDockerAPI.info} as JSON; or, by
    L{FakeDockerAPI.info_mode}, a 500 with dockerd's error body
    (C{"error"}), a body that is not JSON (C{"bad-json"}), or no answer at
    all (C{"hang"}).
  - C{GET /containers/json}: L{FakeDockerAPI.containers} (shaped like
    dockerd's list), answered only with C{all=1} as the reporter needs
    stopped containers too; without it, only the running ones.
  - C{GET /events}: headers at once (as dockerd flushes them), then one line
    per L{FakeDockerAPI.emit}, open until L{FakeDockerAPI.drop_streams};
    C{events_status} other than 200 answers that status instead.
  - anything else: 404 C{{"message": "page not found"}}.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from typing import Any

from attrs import Factory, define, field
from twisted.internet.defer import Deferred, maybeDeferred, succeed
from twisted.internet.interfaces import IListeningPort
from twisted.protocols.policies import WrappingFactory
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request, Site

from tests.fake_dockerd import short_socket_path

__all__ = [
    "SAMPLE_CONTAINERS",
    "SAMPLE_INFO",
    "FakeDockerAPI",
    "RunningFakeDockerAPI",
    "serve_fake_docker_api",
]

SAMPLE_INFO: dict[str, Any] = {
    "ID": "7TRN:IPZB:QYBB:VPBQ:UWYJ:KHUQ:SJZS:CTWQ:YJUK:4OXX:3SJP:ZIUI",
    "Name": "node-1",
    "Labels": ["a=b=c", "zone=eu"],
    "ServerVersion": "27.3.1",
    "Containers": 2,
    "ContainersRunning": 1,
    "OperatingSystem": "Debian GNU/Linux 12 (bookworm)",
}

SAMPLE_CONTAINERS: list[dict[str, Any]] = [
    {
        "Id": "8dfafdbc3a40" + "0" * 52,
        "Names": ["/web"],
        "Image": "nginx:1.27",
        "ImageID": "sha256:" + "a" * 64,
        "Command": "nginx -g 'daemon off;'",
        "Created": 1732446000,
        "Ports": [{"PrivatePort": 80, "Type": "tcp"}],
        "Labels": {"com.example.role": "frontend"},
        "State": "running",
        "Status": "Up 2 hours",
    },
    {
        "Id": "9cd87474be90" + "1" * 52,
        "Names": ["/batch"],
        "Image": "busybox:latest",
        "ImageID": "sha256:" + "b" * 64,
        "Command": "sh -c 'exit 3'",
        "Created": 1732440000,
        "Ports": [],
        "Labels": {},
        "State": "exited",
        "Status": "Exited (3) 5 minutes ago",
    },
]

_VERSION_PREFIX = re.compile(rb"^/v[0-9]+\.[0-9]+(?=/)")


@define(eq=False)
class FakeDockerAPI(Resource):
    """
    The fake daemon's state and knobs; also its (only) resource.

    @ivar requests: C{(method, uri)} of every request, in order.
    @ivar event_filters: the decoded C{filters} query of each C{/events}
        request (None when absent).
    """

    info: dict[str, Any] = Factory(lambda: dict(SAMPLE_INFO))
    containers: list[dict[str, Any]] = Factory(lambda: list(SAMPLE_CONTAINERS))
    info_mode: str = "ok"
    events_status: int = 200
    requests: list[tuple[bytes, bytes]] = Factory(list)
    event_filters: list[Any] = Factory(list)
    _streams: list[Request] = Factory(list)
    _hanging: list[Request] = Factory(list)
    _waiting: list[tuple[int, Deferred[None]]] = Factory(list)

    isLeaf = True

    def __attrs_post_init__(self) -> None:
        Resource.__init__(self)

    @property
    def open_streams(self) -> int:
        return len(self._streams)

    def when_subscribed(self, count: int) -> Deferred[None]:
        """
        Fires once C{count} C{/events} requests have arrived in total.
        """
        if len(self.event_filters) >= count:
            return succeed(None)
        d: Deferred[None] = Deferred()
        self._waiting.append((count, d))
        return d

    def emit(self, event: dict[str, Any]) -> None:
        """
        Send one event (a line of JSON) on every open C{/events} stream.
        """
        self.emit_raw(json.dumps(event).encode("utf-8") + b"\n")

    def emit_raw(self, data: bytes) -> None:
        """
        Write bytes as they are on every open stream (one chunk each), to
        split an event across chunks or send garbage.
        """
        for request in list(self._streams):
            request.write(data)

    def drop_streams(self) -> None:
        """
        End every open C{/events} response properly (the last chunk).
        """
        streams, self._streams = self._streams, []
        for request in streams:
            request.finish()

    def render(self, request: Request) -> bytes | int:
        assert request.method is not None and request.uri is not None
        self.requests.append((request.method, request.uri))
        path = _VERSION_PREFIX.sub(b"", request.path or b"")
        request.setHeader(b"Content-Type", b"application/json")
        request.setHeader(b"Api-Version", b"1.47")
        if request.method == b"GET" and path == b"/info":
            return self._info(request)
        if request.method == b"GET" and path == b"/containers/json":
            everything = _args(request).get(b"all", [b"0"])[0] in (b"1", b"true")
            listed = [
                c for c in self.containers if everything or c["State"] == "running"
            ]
            return json.dumps(listed).encode("utf-8")
        if request.method == b"GET" and path == b"/events":
            return self._events(request)
        request.setResponseCode(404)
        return b'{"message":"page not found"}\n'

    def _info(self, request: Request) -> bytes | int:
        if self.info_mode == "error":
            request.setResponseCode(500)
            return b'{"message":"fake: the daemon is unwell"}\n'
        if self.info_mode == "bad-json":
            request.setHeader(b"Content-Type", b"text/plain")
            return b"not json at all"
        if self.info_mode == "hang":
            self._hanging.append(request)
            request.notifyFinish().addBoth(lambda _: self._hanging.remove(request))
            return NOT_DONE_YET
        return json.dumps(self.info).encode("utf-8")

    def _events(self, request: Request) -> bytes | int:
        raw = _args(request).get(b"filters", [b"null"])[0]
        self.event_filters.append(json.loads(raw))
        if self.events_status != 200:
            request.setResponseCode(self.events_status)
            self._notify_subscribed()
            return b'{"message":"fake: events refused"}\n'
        self._streams.append(request)

        def gone(_: object) -> None:
            if request in self._streams:
                self._streams.remove(request)

        request.notifyFinish().addBoth(gone)
        request.write(b"")  # the head now, as dockerd flushes it
        self._notify_subscribed()
        return NOT_DONE_YET

    def _notify_subscribed(self) -> None:
        # Last: a waiting test resumes right here and may emit at once.
        waiting, self._waiting = self._waiting, []
        for count, d in waiting:
            if len(self.event_filters) >= count:
                d.callback(None)
            else:
                self._waiting.append((count, d))


def _args(request: Request) -> dict[bytes, list[bytes]]:
    return request.args or {}


class _TrackingFactory(WrappingFactory):
    """
    Knows the server's open connections, to close them all at the end of a
    test (trial fails a test that leaves sockets open).
    """

    noisy = False

    def __init__(self, wrapped: Site) -> None:
        super().__init__(wrapped)
        self._all_gone: list[Deferred[None]] = []

    def unregisterProtocol(self, p) -> None:
        super().unregisterProtocol(p)
        if not self.protocols:
            waiting, self._all_gone = self._all_gone, []
            for d in waiting:
                d.callback(None)

    def close_all(self) -> Deferred[None]:
        if not self.protocols:
            return succeed(None)
        d: Deferred[None] = Deferred()
        self._all_gone.append(d)
        for p in list(self.protocols):
            p.transport.abortConnection()
        return d


@define(eq=False)
class RunningFakeDockerAPI:
    fake: FakeDockerAPI
    path: str
    _port: IListeningPort
    _factory: _TrackingFactory
    _stopped: bool = field(default=False)

    @property
    def description(self) -> str:
        """
        The endpoint description to give the client.
        """
        return "unix:" + self.path

    @property
    def open_connections(self) -> int:
        return len(self._factory.protocols)

    async def _stop(self) -> None:
        self.fake.drop_streams()
        await maybeDeferred(self._port.stopListening)
        await self._factory.close_all()
        shutil.rmtree(os.path.dirname(self.path), ignore_errors=True)

    def stop(self) -> Deferred[None]:
        """
        Stop listening, close every connection, remove the socket directory.
        """
        if self._stopped:
            return succeed(None)
        self._stopped = True
        return Deferred.fromCoroutine(self._stop())


def serve_fake_docker_api(
    reactor, fake: FakeDockerAPI | None = None, path: str | None = None
) -> RunningFakeDockerAPI:
    """
    Listen on a short UNIX socket path with C{fake} (a new one by default).
    """
    fake = fake if fake is not None else FakeDockerAPI()
    path = path if path is not None else short_socket_path()
    site = Site(fake, timeout=None)
    site.noisy = False
    factory = _TrackingFactory(site)
    port = reactor.listenUNIX(path, factory)
    return RunningFakeDockerAPI(fake, path, port, factory)
