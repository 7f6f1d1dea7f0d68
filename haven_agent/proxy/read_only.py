# -*- test-case-name: tests.proxy.test_read_only -*-
"""
What the read-only account may ask: an explicit list of read routes.

"GET and HEAD only" was the wrong rule: some GETs change or hold dockerd's
state. `GET /containers/{id}/attach/ws` without an Upgrade header registers
output pipes on the container before the WebSocket handshake fails, and the
container then blocks writing; an unread `GET /containers/{id}/archive`
holds the container's lock, so stop, kill, rm, exec and inspect hang (and
it reads any file of any container); `/debug/` exposes dockerd's internals
and command line; `/distribution/{name}/json` makes dockerd connect to a
registry the caller picks. So the read-only account gets the routes below
and nothing else: a route that is not on the list is refused, whatever it
is, so a route a newer engine adds is refused until it is listed.

Routes are matched on the request's normalised path (percent-decoded, dot
and empty segments removed, as dockerd's router sees it), without the API
version prefix (`/v1.41`, `/v1.41.`, `/v1.41.0`: dockerd takes
`/v[0-9.]+`). `{id}` is one path segment; `{image}` is one or more, since
image names such as `registry.example/team/app` hold slashes.
"""

from __future__ import annotations

import re

from attrs import frozen

from haven_agent.proxy.http_head import RequestHead

#: (methods, template) of every request the read-only account may make.
READ_ONLY_ROUTES: tuple[tuple[str, str], ...] = (
    ("GET,HEAD", "/_ping"),
    ("GET", "/version"),
    ("GET", "/info"),
    ("GET", "/system/df"),
    ("GET", "/events"),
    ("GET", "/containers/json"),
    ("GET", "/containers/{id}/json"),
    ("GET", "/containers/{id}/logs"),
    ("GET", "/containers/{id}/stats"),
    ("GET", "/containers/{id}/top"),
    ("GET", "/containers/{id}/changes"),
    ("GET", "/images/json"),
    ("GET", "/images/{image}/json"),
    ("GET", "/networks"),
    ("GET", "/networks/{id}"),
    ("GET", "/volumes"),
    ("GET", "/volumes/{id}"),
    ("GET", "/services"),
    ("GET", "/services/{id}"),
    ("GET", "/tasks"),
    ("GET", "/tasks/{id}"),
    ("GET", "/nodes"),
    ("GET", "/nodes/{id}"),
)

#: Read routes whose answer may go on for ever: their connection is never
#: idle (see `--idle-timeout`).
READ_ONLY_STREAMS: tuple[str, ...] = (
    "/events",
    "/containers/{id}/logs",
    "/containers/{id}/stats",
)

_PLACEHOLDERS = {"{id}": rb"[^/]+", "{image}": rb".+"}


def _pattern(template: str) -> re.Pattern[bytes]:
    pattern = re.escape(template.encode("ascii"))
    for placeholder, part in _PLACEHOLDERS.items():
        pattern = pattern.replace(re.escape(placeholder.encode("ascii")), part)
    return re.compile(rb"\A" + pattern + rb"/?\Z", re.S)


@frozen
class Route:
    """
    Requests of one of C{methods} whose path matches C{template}.
    """

    methods: frozenset[bytes]
    template: str
    pattern: re.Pattern[bytes]

    @classmethod
    def of(cls, methods: str, template: str) -> Route:
        return cls(
            frozenset(m.encode("ascii") for m in methods.split(",")),
            template,
            _pattern(template),
        )

    def matches(self, method: bytes, path: bytes) -> bool:
        return method in self.methods and self.pattern.match(path) is not None


ROUTES = tuple(Route.of(methods, template) for methods, template in READ_ONLY_ROUTES)
STREAMS = tuple(Route.of("GET", template) for template in READ_ONLY_STREAMS)


def is_stream(head: RequestHead) -> bool:
    """
    May the answer to C{head} be a stream (events, logs, stats), or is it a
    hijack? Then its connection is busy however quiet it is.
    """
    if head.hijacks:
        return True
    path = head.apiPath
    return any(route.matches(head.method, path) for route in STREAMS)


def read_only_refusal(head: RequestHead) -> str | None:
    """
    Why the read-only account may not make the request C{head}, or None
    when it may.
    """
    if head.first(b"upgrade") is not None:
        return "no upgraded (hijacked) connections"
    path = head.apiPath
    if any(route.matches(head.method, path) for route in ROUTES):
        return None
    return "this route is not on its list of read routes"
