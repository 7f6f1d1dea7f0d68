"""
The epoll reactor's dispatch without a logging context around every event.

Twisted's `EPollReactor.doPoll` calls each ready descriptor through
`twisted.python.log.callWithLogger`: it asks the transport for its
`logPrefix()`, copies the current log context into a new dictionary and
enters it, so that a legacy `log.msg` made while handling the event is
labelled with the connection. The agent's own log lines come from
`twisted.logger.Logger`, which never reads that context. Without it a
keep-alive request cost the agent 5-12% less CPU, and one event sent to
2,000 idle streams 6% less (docs/performance.md).

`PlainDispatch(reactor)`, a service, gives an epoll reactor a `doPoll` that
calls `_doReadOrWrite` directly. What callWithLogger did besides the context is
kept: `_doReadOrWrite` already logs what a transport's `doRead` or `doWrite`
raises and disconnects it, and an exception from the disconnection itself
(a protocol's `connectionLost`) is logged here, without ending the batch of
events. The one difference a reader of the log sees is that such a
traceback, and any legacy `log.msg` from Twisted's own code during an event,
is labelled `-` instead of with the connection's prefix. Other reactors
are left as they are, and stopping the service gives the reactor its own
dispatch back.
"""

from __future__ import annotations

import errno
import types

from twisted.application.service import Service
from twisted.internet.epollreactor import EPollReactor
from twisted.python import log


def _do_poll(self: EPollReactor, timeout: float | None) -> None:
    """EPollReactor.doPoll of Twisted 26.10, minus callWithLogger."""
    if timeout is None:
        timeout = -1
    try:
        events = self._poller.poll(timeout, len(self._selectables))
    except OSError as err:
        if err.errno == errno.EINTR:
            return
        raise
    selectables = self._selectables
    dispatch = self._doReadOrWrite
    for fd, event in events:
        selectable = selectables.get(fd)
        if selectable is None:
            continue
        try:
            dispatch(selectable, fd, event)
        except KeyboardInterrupt:
            raise
        except BaseException:
            log.err(None, "while handling an I/O event")


class PlainDispatch(Service):
    """While running, `reactor` dispatches I/O events without a log context."""

    name = "plain-dispatch"

    def __init__(self, reactor: object) -> None:
        self._reactor = reactor

    def startService(self) -> None:
        super().startService()
        if isinstance(self._reactor, EPollReactor):
            poll = types.MethodType(_do_poll, self._reactor)
            self._reactor.doPoll = poll  # type: ignore[method-assign]
            self._reactor.doIteration = poll  # type: ignore[method-assign]

    def stopService(self) -> None:
        super().stopService()
        for name in ("doPoll", "doIteration"):
            self._reactor.__dict__.pop(name, None)
