# -*- test-case-name: tests.reporting.test_docker_api -*-
"""
What the reporter needs from dockerd: node info, the container list, and a
nudge when containers change.

Reads go over dockerd's own socket (an endpoint description such as
C{unix:/var/run/docker.sock}) with treq over an endpoint-based Agent, so the
same client works for a UNIX socket or a TCP address and never depends on
DNS. Every read has one deadline that covers connecting, the response head
and the body, because a wedged dockerd (it happens: a stuck storage driver
blocks /containers/json) must cost one missing report section, never a
reporter that waits forever. Whatever goes wrong comes out as one exception,
L{DockerUnavailable}, whose text says what went wrong and where, since the
caller only logs it and reports without Docker state.

The event watcher keeps C{GET /events} open for hours so a container change
reaches the master within seconds instead of at the next interval. That
stream has no deadline (silence is normal); it is re-subscribed with capped
exponential backoff and jitter when it ends or dockerd is down, so a dockerd
restart on many nodes does not turn into synchronised reconnect storms, and
the outage is logged once rather than per retry.
"""

from __future__ import annotations

import json
import random as _random
from collections.abc import Callable
from typing import Any, cast
from urllib.parse import quote

from attrs import define, field
from treq.client import HTTPClient
from twisted.application.service import Service
from twisted.internet.defer import CancelledError, Deferred, TimeoutError, fail, succeed
from twisted.internet.endpoints import clientFromString
from twisted.internet.error import ConnectError
from twisted.internet.interfaces import (
    IDelayedCall,
    IPushProducer,
    IStreamClientEndpoint,
)
from twisted.internet.protocol import Protocol, connectionDone
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.client import (
    Agent,
    HTTPConnectionPool,
    ResponseDone,
    ResponseFailed,
)
from twisted.web.http import PotentialDataLoss
from twisted.web.iweb import IAgentEndpointFactory, IResponse
from zope.interface import implementer

from haven_agent._twisted.http_pool import quiet_pool
from haven_agent.backoff import backoff_delay
from haven_agent.config import docker_endpoint

__all__ = [
    "CONTAINER_ACTIONS",
    "DockerAPI",
    "DockerEventWatcher",
    "DockerUnavailable",
    "EVENT_FILTERS",
]

log = Logger()

#: The container events that change what the report says about a node:
#: the container list (create; destroy, which podman calls remove), names
#: (rename) and running state (start, die). Others (exec, attach, health,
#: top...) would only cause pointless early reports.
CONTAINER_ACTIONS = frozenset(
    {"create", "start", "die", "died", "destroy", "remove", "rename"}
)

#: The C{filters} query of the C{/events} subscription (dockerd's JSON
#: form). Actions are picked here, not by the engine: podman matches an
#: C{event} filter against its own names, so C{die} and C{destroy} would
#: never arrive from it.
EVENT_FILTERS = {"type": ["container"]}

_HOST = b"http://docker"


class DockerUnavailable(Exception):
    """
    dockerd could not be asked, or did not answer usefully; the text says why.
    """


@implementer(IAgentEndpointFactory)
@define(eq=False)
class _FixedEndpointFactory:
    """
    Every URI goes to dockerd's socket; the URL's host is only decoration.
    """

    _endpoint: IStreamClientEndpoint

    def endpointForURI(self, uri) -> IStreamClientEndpoint:
        return self._endpoint


def _describe(reason: Failure | BaseException) -> str:
    """
    A short text for why a request failed, looking through the Agent's
    wrappers (which carry the real reasons in a list).
    """
    error = reason.value if isinstance(reason, Failure) else reason
    if isinstance(error, ResponseFailed) and error.reasons:
        return "; ".join(_describe(r) for r in error.reasons)
    return str(error) or type(error).__name__


def _reraise_cancel(error: ResponseFailed) -> None:
    """
    The Agent reports a cancelled request as a failed one; let it stay a
    cancel, so the deadline (or the caller) sees its own doing.
    """
    if any(r.check(CancelledError) for r in error.reasons):
        raise CancelledError()


def _stop_producing(body: Protocol) -> None:
    """
    Stop a response body; the Agent drops its connection.
    """
    if body.transport is not None:
        cast(IPushProducer, body.transport).stopProducing()


class _BodyTooLarge(Exception):
    pass


class _BodyReader(Protocol):
    """
    Collects a response body up to a limit; cancelling it drops the
    connection (treq's collector cannot be cancelled, which would leave a
    timed-out read holding its socket).
    """

    def __init__(self, limit: int) -> None:
        self.done: Deferred[bytes] = Deferred(self._cancel)
        self._parts: list[bytes] = []
        self._size = 0
        self._limit = limit

    def _cancel(self, _: Deferred[bytes]) -> None:
        _stop_producing(self)

    def dataReceived(self, data: bytes) -> None:
        if self.done.called:
            return
        self._size += len(data)
        if self._size > self._limit:
            _stop_producing(self)
            self.done.errback(_BodyTooLarge())
            return
        self._parts.append(data)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        if self.done.called:
            return
        if reason.check(ResponseDone, PotentialDataLoss):
            self.done.callback(b"".join(self._parts))
        else:
            self.done.errback(reason)


def _read_body(response: IResponse, limit: int) -> Deferred[bytes]:
    reader = _BodyReader(limit)
    response.deliverBody(reader)
    return reader.done


@define(eq=False)
class DockerAPI:
    """
    Docker Engine API reads over dockerd's socket, with treq over an
    endpoint-based Agent.

    @ivar _endpoint_description: where dockerd listens: an endpoint
        description (C{unix:/var/run/docker.sock}, C{tcp:127.0.0.1:2375}) or a
        bare socket path. A malformed description raises at construction.
    @ivar _timeout: seconds for each read, from connecting to the last byte
        of the body; also for the head of the C{/events} response.
    @ivar _max_body: bytes a JSON answer may have before it is refused.
    """

    _reactor: Any
    _endpoint_description: str = "unix:/var/run/docker.sock"
    _timeout: float = 10.0
    _max_body: int = 64 * 1024 * 1024
    _pool: HTTPConnectionPool = field(init=False)
    _http: HTTPClient = field(init=False)

    def __attrs_post_init__(self) -> None:
        description = docker_endpoint(self._endpoint_description)
        endpoint = clientFromString(self._reactor, description)
        # Persistent: one report a minute reuses one connection. The pool
        # retries a GET once on a connection dockerd closed while idle.
        self._pool = quiet_pool(self._reactor, maxPerHost=2)
        agent = Agent.usingEndpointFactory(
            self._reactor, _FixedEndpointFactory(endpoint), pool=self._pool
        )
        self._http = HTTPClient(agent)

    @property
    def address(self) -> str:
        """
        Where dockerd is expected, as configured (for messages).
        """
        return self._endpoint_description

    def info(self) -> Deferred[dict[str, Any]]:
        """
        C{GET /info}: the daemon's C{Name}, C{Labels} and the rest.
        """
        return self._get_json(b"/info", dict)

    def inspect(self, path: bytes) -> Deferred[dict[str, Any]]:
        """
        C{GET path} for one object's JSON (C{/containers/ID/json}); fails
        with L{DockerUnavailable} for any answer but 200.
        """
        return self._get_json(path, dict)

    def containers(self) -> Deferred[list[dict[str, Any]]]:
        """
        C{GET /containers/json?all=1}: every container, running or not.
        """
        return self._get_json(b"/containers/json?all=1", list)

    def events(self) -> Deferred[IResponse]:
        """
        Subscribe to container events (L{EVENT_FILTERS}).

        Fires with the response once dockerd has answered 200, within the
        timeout; its body is the open-ended event stream, which the caller
        reads (and stops with C{stopProducing} on its transport).
        """
        filters = quote(json.dumps(EVENT_FILTERS, separators=(",", ":")), safe="")
        path = b"/events?filters=" + filters.encode("ascii")

        async def subscribe() -> IResponse:
            response = await self._request(path)
            if response.code != 200:
                await self._refuse(path, response)
            return response

        return self._deadline(path, Deferred.fromCoroutine(subscribe()))

    def close(self) -> Deferred[None]:
        """
        Close idle connections (on shutdown, and at the end of tests).
        """
        return self._pool.closeCachedConnections()

    def _get_json(self, path: bytes, kind: type) -> Deferred[Any]:
        async def get() -> Any:
            response = await self._request(path)
            if response.code != 200:
                await self._refuse(path, response)
            try:
                body = await _read_body(response, self._max_body)
            except _BodyTooLarge:
                raise DockerUnavailable(
                    f"dockerd at {self.address} answered {_text(path)} with more "
                    f"than {self._max_body} bytes"
                ) from None
            except ResponseFailed as e:
                _reraise_cancel(e)
                raise DockerUnavailable(
                    f"dockerd at {self.address} broke off the answer to "
                    f"{_text(path)}: {_describe(e)}"
                ) from None
            try:
                value = json.loads(body)
            except ValueError as e:
                raise DockerUnavailable(
                    f"dockerd at {self.address} answered {_text(path)} with "
                    f"invalid JSON ({e}): {_excerpt(body)}"
                ) from None
            if not isinstance(value, kind):
                raise DockerUnavailable(
                    f"dockerd at {self.address} answered {_text(path)} with a JSON "
                    f"{type(value).__name__}, expected a {kind.__name__}"
                )
            return value

        return self._deadline(path, Deferred.fromCoroutine(get()))

    async def _request(self, path: bytes) -> IResponse:
        try:
            return await self._http.get(
                _HOST + path, unbuffered=True, reactor=self._reactor
            )
        except ConnectError as e:
            raise DockerUnavailable(
                f"cannot connect to dockerd at {self.address}: {_describe(e)}"
            ) from None
        except ResponseFailed as e:
            # Includes ResponseNeverReceived and RequestTransmissionFailed.
            _reraise_cancel(e)
            raise DockerUnavailable(
                f"dockerd at {self.address} did not answer {_text(path)}: "
                f"{_describe(e)}"
            ) from None

    async def _refuse(self, path: bytes, response: IResponse) -> None:
        try:
            body = await _read_body(response, 4096)
        except CancelledError:
            raise
        except Exception:
            body = b""
        raise DockerUnavailable(
            f"dockerd at {self.address} answered {_text(path)} with HTTP "
            f"{response.code}: {_excerpt(body)}"
        )

    def _deadline(self, path: bytes, d: Deferred[Any]) -> Deferred[Any]:
        """
        One deadline for the whole exchange (cancelling drops the connection),
        and every failure but the caller's own cancel as L{DockerUnavailable}.
        """

        def translate(reason: Failure) -> Failure:
            if reason.check(DockerUnavailable, CancelledError):
                return reason
            if reason.check(TimeoutError):
                problem = f"did not answer {_text(path)} within {self._timeout:g} s"
            else:
                problem = f"failed on {_text(path)}: {_describe(reason)}"
            return Failure(DockerUnavailable(f"dockerd at {self.address} {problem}"))

        d.addTimeout(self._timeout, self._reactor)
        return d.addErrback(translate)


def _text(path: bytes) -> str:
    return "GET " + path.decode("ascii").split("?filters=")[0]


def _excerpt(body: bytes, limit: int = 200) -> str:
    text = body[:limit].decode("utf-8", "replace").strip()
    return repr(text + ("..." if len(body) > limit else ""))


class _EventStream(Protocol):
    """
    Splits dockerd's event stream (one JSON object per line, in chunks that
    need not end at a line) into events.
    """

    def __init__(
        self,
        on_event: Callable[[dict[str, Any]], None],
        on_end: Callable[[_EventStream, Failure], None],
        max_line: int,
    ) -> None:
        self._on_event = on_event
        self._on_end = on_end
        self._max_line = max_line
        self._buffer = b""
        self._stopped = False
        self._waiters: list[Deferred[None]] = []
        self._lost = False

    def dataReceived(self, data: bytes) -> None:
        if self._stopped:
            return
        *lines, self._buffer = (self._buffer + data).split(b"\n")
        for line in lines:
            if self._stopped:
                return
            self._line(line)
        if len(self._buffer) > self._max_line:
            log.warn(
                "Docker event longer than {limit} bytes; dropping the event stream",
                limit=self._max_line,
            )
            self.stop()

    def _line(self, line: bytes) -> None:
        if not line.strip():
            return
        try:
            event = json.loads(line)
        except ValueError:
            log.warn(
                "ignored a Docker event that is not JSON: {line!r}", line=line[:200]
            )
            return
        if isinstance(event, dict):
            self._on_event(event)

    def stop(self) -> None:
        """
        Drop the stream (and its connection).
        """
        self._stopped = True
        self._buffer = b""
        if not self._lost:
            _stop_producing(self)

    def when_lost(self) -> Deferred[None]:
        if self._lost:
            return succeed(None)
        d: Deferred[None] = Deferred()
        self._waiters.append(d)
        return d

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self._lost = True
        self._on_end(self, reason)
        waiters, self._waiters = self._waiters, []
        for d in waiters:
            d.callback(None)


@define(eq=False)
class DockerEventWatcher(Service):
    """
    Calls C{on_change()} whenever a container is created, started, dies, is
    destroyed or renamed, as told by dockerd's C{GET /events} stream.

    The stream is re-subscribed when it ends or cannot be opened, after
    L{backoff_delay} (C{base_delay} doubling up to C{max_delay}, with
    jitter); the backoff starts over once a stream has proved itself (an
    event arrived, or it stayed open C{stable_after} seconds). Events missed
    while unsubscribed are unknown, so every re-subscription also calls
    C{on_change()} once. An outage is logged once when it starts and once
    when events flow again.

    @ivar _clock: schedules retries (the reactor, or a L{Clock} in tests).
    @ivar _connect_events: opens the stream, like L{DockerAPI.events}: a
        Deferred firing with a 200 response whose body is the stream, or
        failing (it is cancelled when the service stops).
    @ivar _on_change: called for each matching event; must not block.
    @ivar _random: a float in [0, 1), for the jitter.
    """

    _clock: Any
    _connect_events: Callable[[], Deferred[IResponse]]
    _on_change: Callable[[], None]
    _random: Callable[[], float] = _random.random
    base_delay: float = 1.0
    max_delay: float = 60.0
    stable_after: float = 30.0
    max_line: int = 1024 * 1024
    _attempt: int = field(init=False, default=0)
    _outage: bool = field(init=False, default=False)
    _stable: bool = field(init=False, default=False)
    _subscribed_before: bool = field(init=False, default=False)
    _connecting: Deferred[IResponse] | None = field(init=False, default=None)
    _stream: _EventStream | None = field(init=False, default=None)
    _retry: IDelayedCall | None = field(init=False, default=None)
    _stable_timer: IDelayedCall | None = field(init=False, default=None)

    def startService(self) -> None:
        super().startService()
        self._subscribe()

    def stopService(self) -> Deferred[None] | None:
        """
        Cancel a pending retry or subscription and drop the stream; the
        Deferred (if any) fires once the stream's connection is gone.
        """
        super().stopService()
        self._cancel_timers()
        if self._retry is not None:
            self._retry.cancel()
            self._retry = None
        connecting, self._connecting = self._connecting, None
        if connecting is not None:
            connecting.cancel()
        stream, self._stream = self._stream, None
        if stream is not None:
            lost = stream.when_lost()
            stream.stop()
            return lost
        return None

    def _subscribe(self) -> None:
        self._retry = None
        try:
            d = self._connect_events()
        except Exception:
            d = fail()
        self._connecting = d
        d.addCallbacks(self._subscribed, self._subscribe_failed)
        d.addErrback(
            lambda f: log.failure("unexpected error in the Docker event watcher", f)
        )

    def _subscribed(self, response: IResponse) -> None:
        self._connecting = None
        stream = _EventStream(self._event, self._stream_ended, self.max_line)
        if not self.running:
            response.deliverBody(stream)
            stream.stop()
            return
        self._stream = stream
        self._stable = False
        self._stable_timer = self._clock.callLater(self.stable_after, self._proven)
        if self._subscribed_before:
            log.debug("re-subscribed to Docker container events")
            self._changed()
        else:
            log.info("watching Docker container events")
        self._subscribed_before = True
        response.deliverBody(stream)

    def _subscribe_failed(self, reason: Failure) -> None:
        self._connecting = None
        if not self.running:
            return
        self._retry_later(_describe(reason))

    def _event(self, event: dict[str, Any]) -> None:
        if event.get("Type") != "container":
            return
        if event.get("Action") not in CONTAINER_ACTIONS:
            return
        self._proven()
        self._changed()

    def _changed(self) -> None:
        try:
            self._on_change()
        except Exception:
            log.failure("on_change failed for a Docker container event")

    def _proven(self) -> None:
        """
        This stream works: start the backoff over and end any outage.
        """
        if self._stable_timer is not None and self._stable_timer.active():
            self._stable_timer.cancel()
        self._stable_timer = None
        if self._stable:
            return
        self._stable = True
        self._attempt = 0
        if self._outage:
            log.info("Docker container events are flowing again")
            self._outage = False

    def _stream_ended(self, stream: _EventStream, reason: Failure) -> None:
        if self._stream is not stream:
            return
        self._stream = None
        self._cancel_timers()
        if not self.running:
            return
        if reason.check(ResponseDone, PotentialDataLoss):
            problem = "dockerd ended the event stream"
        else:
            problem = f"the event stream broke off: {_describe(reason)}"
        if self._stable:
            delay = self._schedule()
            log.info(
                "{problem}; re-subscribing to Docker events in {delay:.1f} s",
                problem=problem,
                delay=delay,
            )
        else:
            self._retry_later(problem)

    def _retry_later(self, problem: str) -> None:
        delay = self._schedule()
        if not self._outage:
            self._outage = True
            log.warn(
                "cannot watch Docker container events ({problem}); retrying with "
                "backoff, next in {delay:.1f} s",
                problem=problem,
                delay=delay,
            )
        else:
            log.debug(
                "Docker events still unavailable ({problem}); next try in "
                "{delay:.1f} s",
                problem=problem,
                delay=delay,
            )

    def _schedule(self) -> float:
        delay = backoff_delay(
            self._attempt, self.max_delay, self._random, self.base_delay
        )
        self._attempt += 1
        self._stable = False
        self._retry = self._clock.callLater(delay, self._subscribe)
        return delay

    def _cancel_timers(self) -> None:
        if self._stable_timer is not None and self._stable_timer.active():
            self._stable_timer.cancel()
        self._stable_timer = None
