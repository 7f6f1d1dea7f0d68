# -*- test-case-name: tests.proxy.test_gate -*-
"""
The agent's own health answer, for container health checks and monitors.

`GET /_agent/health` is the one request answered without credentials, so it
says nothing about Docker but whether the agent can reach it: whether a
connection to dockerd's socket opens. The result is kept for a moment so a
flood of health checks costs one connection attempt per second at most.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from attrs import define, field
from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IReactorTime
from twisted.internet.protocol import Protocol

HEALTH_PATH = b"/_agent/health"


class _Knock(Protocol):
    def connectionMade(self) -> None:
        self.transport.loseConnection()


@define(eq=False)
class DockerProbe:
    """
    Can dockerd's socket be connected to? Remembered for C{ttl} seconds.
    """

    _connect: Callable[[Protocol], Deferred[Any]]
    _clock: IReactorTime
    ttl: float = 1.0
    _known: tuple[float, bool] | None = field(init=False, default=None)
    _asking: list[Deferred[bool]] | None = field(init=False, default=None)

    def isUp(self) -> Deferred[bool]:
        now = self._clock.seconds()
        if self._known is not None and now - self._known[0] < self.ttl:
            return succeed(self._known[1])
        waiting: Deferred[bool] = Deferred()
        if self._asking is not None:
            self._asking.append(waiting)
            return waiting
        self._asking = [waiting]
        knocking = self._connect(_Knock())
        knocking.addCallbacks(lambda _: True, lambda _: False)
        knocking.addCallback(self._answer)
        return waiting

    def _answer(self, up: bool) -> None:
        self._known = (self._clock.seconds(), up)
        asking, self._asking = self._asking or [], None
        for waiting in asking:
            waiting.callback(up)


def health_response(dockerUp: bool) -> bytes:
    """
    The complete answer: 200 with C{{"status": ..., "docker": ...}}, and a
    close, since health checkers open a connection per check.
    """
    body = (
        json.dumps(
            {
                "status": "ok" if dockerUp else "degraded",
                "docker": "up" if dockerUp else "down",
            }
        ).encode("ascii")
        + b"\n"
    )
    return (
        b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
        b"Content-Length: %d\r\nConnection: close\r\n\r\n" % len(body)
    ) + body
