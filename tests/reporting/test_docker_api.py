"""
Tests for L{haven_agent.reporting.docker_api}.

The client's promises are about sockets (a missing socket, a daemon that
answers garbage or never answers, a stream that stays open) so those are
checked against L{tests.fake_docker_api} on a real UNIX socket. The event
watcher's retry policy is about time, so it is driven with a L{Clock} and a
fake subscription whose outcome each test decides.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import tempfile
from collections.abc import Callable
from typing import Any, cast

from attrs import Factory, define, field
from twisted.internet import reactor
from twisted.internet.defer import CancelledError, Deferred, succeed
from twisted.internet.error import ConnectError, ConnectionLost
from twisted.internet.interfaces import IPushProducer
from twisted.internet.protocol import Protocol
from twisted.internet.task import Clock, deferLater
from twisted.logger import LogLevel, capturedLogs
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase, TestCase
from twisted.web.client import ResponseDone, ResponseFailed
from zope.interface import implementer

from haven_agent.config import docker_endpoint
from haven_agent.reporting.docker_api import (
    EVENT_FILTERS,
    DockerAPI,
    DockerEventWatcher,
    DockerUnavailable,
)
from tests.fake_docker_api import (
    SAMPLE_INFO,
    RunningFakeDockerAPI,
    serve_fake_docker_api,
)
from tests.fake_dockerd import short_socket_path


async def wait_until(
    condition: Callable[[], bool], timeout: float = 5.0, step: float = 0.01
) -> None:
    """
    Poll the real reactor until C{condition()} holds; fail after C{timeout}.
    """
    waited = 0.0
    while not condition():
        if waited >= timeout:
            raise AssertionError(f"condition not met within {timeout} s")
        await deferLater(reactor, step, lambda: None)
        waited += step


class EndpointDescriptionTests(SynchronousTestCase):
    """
    L{docker_endpoint}, which the client uses, accepts descriptions and bare
    socket paths.
    """

    def test_description_unchanged(self) -> None:
        for given in ("unix:/var/run/docker.sock", "tcp:127.0.0.1:2375"):
            self.assertEqual(docker_endpoint(given), given)

    def test_bare_path(self) -> None:
        self.assertEqual(
            docker_endpoint("/var/run/docker.sock"), "unix:/var/run/docker.sock"
        )

    def test_bare_path_escaped(self) -> None:
        self.assertEqual(
            docker_endpoint("/run/a:b=c\\d.sock"),
            "unix:/run/a\\:b\\=c\\\\d.sock",
        )

    def test_bad_description_fails_at_construction(self) -> None:
        self.assertRaises(ValueError, DockerAPI, Clock(), "nonsense-scheme:x")


class DockerAPITests(TestCase):
    """
    L{DockerAPI} over a real UNIX socket to the fake daemon.
    """

    def serve(self, path: str | None = None) -> RunningFakeDockerAPI:
        running = serve_fake_docker_api(reactor, path=path)
        self.addCleanup(running.stop)
        return running

    def client(self, description: str, timeout: float = 5.0) -> DockerAPI:
        api = DockerAPI(reactor, description, timeout=timeout)
        self.addCleanup(api.close)
        return api

    async def failure_text(self, d: Deferred[Any]) -> str:
        try:
            await d
        except DockerUnavailable as e:
            return str(e)
        raise AssertionError("expected DockerUnavailable")

    async def test_info(self) -> None:
        running = self.serve()
        info = await self.client(running.description).info()
        self.assertEqual(info, SAMPLE_INFO)
        self.assertEqual(info["Labels"], ["a=b=c", "zone=eu"])
        self.assertEqual(running.fake.requests, [(b"GET", b"/info")])

    async def test_containers_all(self) -> None:
        running = self.serve()
        containers = await self.client(running.description).containers()
        self.assertEqual([c["Names"] for c in containers], [["/web"], ["/batch"]])
        self.assertEqual(running.fake.requests, [(b"GET", b"/containers/json?all=1")])

    async def test_connection_reused(self) -> None:
        running = self.serve()
        api = self.client(running.description)
        await api.info()
        await api.containers()
        await api.info()
        self.assertEqual(running.open_connections, 1)

    async def test_bare_path_with_special_characters(self) -> None:
        directory = tempfile.mkdtemp(prefix="hf:a=", dir="/tmp")
        self.addCleanup(shutil.rmtree, directory, True)
        running = self.serve(os.path.join(directory, "d.sock"))
        info = await self.client(running.path).info()
        self.assertEqual(info["Name"], "node-1")

    async def test_missing_socket(self) -> None:
        path = short_socket_path()
        self.addCleanup(shutil.rmtree, os.path.dirname(path))
        text = await self.failure_text(self.client("unix:" + path).info())
        self.assertIn(path, text)
        self.assertIn("cannot connect", text)

    async def test_server_error(self) -> None:
        running = self.serve()
        running.fake.info_mode = "error"
        text = await self.failure_text(self.client(running.description).info())
        self.assertIn("HTTP 500", text)
        self.assertIn("the daemon is unwell", text)
        self.assertIn("GET /info", text)

    async def test_bad_json(self) -> None:
        running = self.serve()
        running.fake.info_mode = "bad-json"
        text = await self.failure_text(self.client(running.description).info())
        self.assertIn("invalid JSON", text)
        self.assertIn("not json at all", text)

    async def test_wrong_json_shape(self) -> None:
        running = self.serve()
        running.fake.info = ["not", "a", "dict"]  # type: ignore[assignment]
        text = await self.failure_text(self.client(running.description).info())
        self.assertIn("JSON list, expected a dict", text)

    async def test_hanging_request_times_out(self) -> None:
        running = self.serve()
        running.fake.info_mode = "hang"
        api = self.client(running.description, timeout=0.5)
        text = await self.failure_text(api.info())
        self.assertIn("did not answer GET /info within 0.5 s", text)
        # The timed-out request's connection is dropped, not left waiting.
        await wait_until(lambda: running.open_connections == 0)

    async def test_caller_cancel_stays_a_cancel(self) -> None:
        running = self.serve()
        running.fake.info_mode = "hang"
        api = self.client(running.description)
        d = api.info()
        await wait_until(lambda: len(running.fake.requests) == 1)
        d.cancel()
        self.failureResultOf(d, CancelledError)
        await wait_until(lambda: running.open_connections == 0)

    async def test_events_subscription(self) -> None:
        running = self.serve()
        response = await self.client(running.description).events()
        self.assertEqual(response.code, 200)
        self.assertEqual(running.fake.event_filters, [EVENT_FILTERS])
        self.assertEqual(EVENT_FILTERS, {"type": ["container"]})
        reader = Protocol()
        response.deliverBody(reader)
        cast(IPushProducer, reader.transport).stopProducing()
        await wait_until(lambda: running.fake.open_streams == 0)

    async def test_events_refused(self) -> None:
        running = self.serve()
        running.fake.events_status = 500
        text = await self.failure_text(self.client(running.description).events())
        self.assertIn("HTTP 500", text)
        self.assertIn("GET /events", text)


@implementer(IPushProducer)
@define(eq=False)
class FakeBodyTransport:
    """
    What a response body's protocol sees as its transport; stopping it ends
    the body at once, as the Agent does (a little later) with a real one.
    """

    protocol: Protocol
    stopped: bool = False

    def stopProducing(self) -> None:
        if not self.stopped:
            self.stopped = True
            self.protocol.connectionLost(
                Failure(ResponseFailed([Failure(ConnectionLost())]))
            )

    def pauseProducing(self) -> None:
        pass

    def resumeProducing(self) -> None:
        pass


@define(eq=False)
class FakeResponse:
    """
    A 200 response whose body (the event stream) the test writes.
    """

    code: int = 200
    protocol: Protocol | None = None
    transport: FakeBodyTransport | None = None

    @property
    def stopped(self) -> bool:
        return self.transport is not None and self.transport.stopped

    def deliverBody(self, protocol: Protocol) -> None:
        self.protocol = protocol
        self.transport = FakeBodyTransport(protocol)
        protocol.makeConnection(self.transport)

    def send(self, data: bytes) -> None:
        assert self.protocol is not None
        self.protocol.dataReceived(data)

    def event(self, type_: str, action: str) -> None:
        self.send(json.dumps({"Type": type_, "Action": action}).encode() + b"\n")

    def end(self) -> None:
        assert self.protocol is not None
        self.protocol.connectionLost(Failure(ResponseDone()))


@define(eq=False)
class Subscriptions:
    """
    Stands for L{DockerAPI.events}: each call is a pending Deferred the test
    fires or fails.
    """

    attempts: list[Deferred[Any]] = Factory(list)
    cancelled: list[Deferred[Any]] = Factory(list)

    def __call__(self) -> Deferred[Any]:
        d: Deferred[Any] = Deferred(self.cancelled.append)
        self.attempts.append(d)
        return d

    def refuse(self) -> None:
        self.attempts[-1].errback(ConnectError(string="refused"))

    def accept(self) -> FakeResponse:
        response = FakeResponse()
        self.attempts[-1].callback(response)
        return response


@define(eq=False)
class Watching:
    clock: Clock
    subscriptions: Subscriptions
    watcher: DockerEventWatcher
    changes: list[int] = field(factory=list)

    def retry_delay(self) -> float:
        """
        The delay of the one pending retry.
        """
        calls = self.clock.getDelayedCalls()
        assert len(calls) == 1, calls
        return calls[0].getTime() - self.clock.seconds()

    def fail_next(self) -> float:
        """
        Let the pending retry run, refuse it, return the next delay.
        """
        self.clock.advance(self.retry_delay())
        self.subscriptions.refuse()
        return self.retry_delay()


class DockerEventWatcherTests(SynchronousTestCase):
    """
    L{DockerEventWatcher} with a L{Clock} and fake subscriptions.
    """

    def watch(self, random: Callable[[], float] = lambda: 0.0, **kw: Any) -> Watching:
        clock = Clock()
        subscriptions = Subscriptions()
        changes: list[int] = []
        watcher = DockerEventWatcher(
            clock, subscriptions, lambda: changes.append(1), random=random, **kw
        )
        watcher.startService()
        self.addCleanup(watcher.stopService)
        return Watching(clock, subscriptions, watcher, changes)

    def test_container_events_call_on_change(self) -> None:
        w = self.watch()
        response = w.subscriptions.accept()
        self.assertEqual(w.changes, [])
        for action in ("create", "start", "die", "destroy", "rename"):
            response.event("container", action)
        self.assertEqual(len(w.changes), 5)

    def test_podman_names_call_on_change(self) -> None:
        """
        podman's names for a removed and a dead container count too.
        """
        w = self.watch()
        response = w.subscriptions.accept()
        for action in ("remove", "died"):
            response.event("container", action)
        self.assertEqual(len(w.changes), 2)

    def test_podman_extra_events_ignored(self) -> None:
        w = self.watch()
        response = w.subscriptions.accept()
        for action in ("init", "cleanup", "attach", "exec_create", "resize"):
            response.event("container", action)
        self.assertEqual(w.changes, [])

    def test_other_events_ignored(self) -> None:
        w = self.watch()
        response = w.subscriptions.accept()
        response.event("image", "create")
        response.event("image", "pull")
        response.event("network", "connect")
        response.event("container", "exec_start: sh -c true")
        response.event("container", "health_status: healthy")
        response.send(b'{"status": "start", "id": "abc"}\n')
        response.send(b"[1, 2]\n")
        self.assertEqual(w.changes, [])
        response.event("container", "start")
        self.assertEqual(len(w.changes), 1)

    def test_partial_lines(self) -> None:
        w = self.watch()
        response = w.subscriptions.accept()
        line = json.dumps({"Type": "container", "Action": "die"}).encode() + b"\n"
        response.send(line[:7])
        response.send(line[7:20])
        self.assertEqual(w.changes, [])
        response.send(line[20:] + b"\n" + line + line[:3])
        self.assertEqual(len(w.changes), 2)
        response.send(line[3:])
        self.assertEqual(len(w.changes), 3)

    def test_bad_line_skipped(self) -> None:
        w = self.watch()
        response = w.subscriptions.accept()
        with capturedLogs() as events:
            response.send(b"{not json\n")
        self.assertEqual(
            [e["log_level"] for e in events if "line" in e], [LogLevel.warn]
        )
        response.event("container", "start")
        self.assertEqual(len(w.changes), 1)
        self.assertFalse(response.stopped)

    def test_overlong_line_drops_stream(self) -> None:
        w = self.watch(max_line=100)
        response = w.subscriptions.accept()
        response.send(b"{" + b" " * 150)
        self.assertTrue(response.stopped)
        w.clock.advance(w.retry_delay())
        self.assertEqual(len(w.subscriptions.attempts), 2)

    def test_on_change_error_keeps_watching(self) -> None:
        clock, subscriptions = Clock(), Subscriptions()
        calls: list[int] = []

        def on_change() -> None:
            calls.append(1)
            raise RuntimeError("reporter bug")

        watcher = DockerEventWatcher(clock, subscriptions, on_change)
        watcher.startService()
        self.addCleanup(watcher.stopService)
        response = subscriptions.accept()
        response.event("container", "start")
        response.event("container", "die")
        self.assertEqual(len(calls), 2)
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 2)
        self.assertFalse(response.stopped)

    def test_stream_end_resubscribes(self) -> None:
        w = self.watch()
        w.subscriptions.accept().end()
        self.assertEqual(len(w.subscriptions.attempts), 1)
        w.clock.advance(w.retry_delay())
        self.assertEqual(len(w.subscriptions.attempts), 2)
        self.assertEqual(w.changes, [])
        w.subscriptions.accept()
        # Events during the gap are unknown: one change for the catch-up.
        self.assertEqual(len(w.changes), 1)

    def test_connect_raising_is_a_failure(self) -> None:
        clock, calls = Clock(), []

        def connect() -> Deferred[Any]:
            calls.append(1)
            raise ConnectError(string="synchronous")

        watcher = DockerEventWatcher(clock, connect, lambda: None)
        watcher.startService()
        self.addCleanup(watcher.stopService)
        self.assertEqual(len(clock.getDelayedCalls()), 1)
        clock.advance(60)
        self.assertEqual(len(calls), 2)

    def test_backoff_grows_and_caps(self) -> None:
        w = self.watch(random=lambda: 0.0, base_delay=1.0, max_delay=60.0)
        w.subscriptions.refuse()
        delays = [w.retry_delay()] + [w.fail_next() for _ in range(8)]
        # random() == 0: the whole ceiling, which doubles up to the cap of 60.
        self.assertEqual(delays, [1, 2, 4, 8, 16, 32, 60, 60, 60])

    def test_backoff_jitter_within_bounds(self) -> None:
        w = self.watch(random=random.Random(7).random, base_delay=1.0, max_delay=60.0)
        w.subscriptions.refuse()
        delays = [w.retry_delay()] + [w.fail_next() for _ in range(20)]
        for attempt, delay in enumerate(delays):
            ceiling = min(60.0, 2.0**attempt)
            self.assertTrue(ceiling / 2 < delay <= ceiling, (attempt, delay))
        self.assertGreater(len(set(delays[6:])), 1, "no jitter at the cap")

    def test_backoff_resets_after_event(self) -> None:
        w = self.watch(random=lambda: 0.0)
        w.subscriptions.refuse()
        for _ in range(4):
            w.fail_next()
        self.assertEqual(w.retry_delay(), 16)
        w.clock.advance(w.retry_delay())
        response = w.subscriptions.accept()
        response.event("container", "start")
        response.end()
        self.assertEqual(w.retry_delay(), 1)

    def test_backoff_resets_after_stable_stream(self) -> None:
        w = self.watch(random=lambda: 0.0, stable_after=30.0)
        w.subscriptions.refuse()
        for _ in range(4):
            w.fail_next()
        w.clock.advance(w.retry_delay())
        response = w.subscriptions.accept()
        w.clock.advance(30)
        response.end()
        self.assertEqual(w.retry_delay(), 1)

    def test_backoff_continues_when_stream_drops_at_once(self) -> None:
        w = self.watch(random=lambda: 0.0, stable_after=30.0)
        w.subscriptions.refuse()
        w.fail_next()
        self.assertEqual(w.retry_delay(), 2)
        w.clock.advance(w.retry_delay())
        response = w.subscriptions.accept()
        w.clock.advance(29)
        response.end()
        self.assertEqual(w.retry_delay(), 4)

    def test_warns_once_per_outage(self) -> None:
        with capturedLogs() as events:
            w = self.watch()
            w.subscriptions.refuse()
            for _ in range(5):
                w.fail_next()
            w.clock.advance(w.retry_delay())
            response = w.subscriptions.accept()
            response.event("container", "start")
            response.end()
            w.clock.advance(w.retry_delay())
            w.subscriptions.refuse()
            w.fail_next()
        warnings = [e for e in events if e["log_level"] == LogLevel.warn]
        self.assertEqual(len(warnings), 2, warnings)
        self.assertIn("refused", warnings[0]["problem"])
        recovered = [e for e in events if "flowing again" in e["log_format"]]
        self.assertEqual(len(recovered), 1)
        for event in events:
            # Twisted's legacy log bridge overwrites a field named "message".
            self.assertNotIn("{message", event["log_format"])

    def test_stop_cancels_retry(self) -> None:
        w = self.watch()
        w.subscriptions.refuse()
        self.assertEqual(len(w.clock.getDelayedCalls()), 1)
        self.assertIsNone(w.watcher.stopService())
        self.assertEqual(w.clock.getDelayedCalls(), [])
        w.clock.advance(120)
        self.assertEqual(len(w.subscriptions.attempts), 1)

    def test_stop_cancels_subscription(self) -> None:
        w = self.watch()
        w.watcher.stopService()
        self.assertEqual(w.subscriptions.cancelled, w.subscriptions.attempts)
        self.assertEqual(w.clock.getDelayedCalls(), [])

    def test_stop_drops_stream(self) -> None:
        w = self.watch()
        response = w.subscriptions.accept()
        self.assertEqual(len(w.clock.getDelayedCalls()), 1)  # the stability timer
        stopped = w.watcher.stopService()
        assert stopped is not None
        self.successResultOf(stopped)
        self.assertTrue(response.stopped)
        self.assertEqual(w.clock.getDelayedCalls(), [])
        w.clock.advance(120)
        self.assertEqual(len(w.subscriptions.attempts), 1)

    def test_late_subscription_after_stop_dropped(self) -> None:
        """
        A subscription that succeeds although it was cancelled (a connect
        function that ignores cancellation) is dropped at once.
        """
        clock, responses = Clock(), []

        def connect() -> Deferred[Any]:
            response = FakeResponse()
            responses.append(response)
            watcher.stopService()
            return succeed(response)

        watcher = DockerEventWatcher(clock, connect, lambda: None)
        watcher.startService()
        self.assertTrue(responses[0].stopped)
        self.assertEqual(clock.getDelayedCalls(), [])


class DockerEventWatcherSocketTests(TestCase):
    """
    L{DockerEventWatcher} with L{DockerAPI.events} over a real socket.
    """

    def watch(
        self, description: str, changes: list[int], **kw: Any
    ) -> DockerEventWatcher:
        api = DockerAPI(reactor, description, timeout=5.0)
        self.addCleanup(api.close)
        watcher = DockerEventWatcher(
            reactor, api.events, lambda: changes.append(1), **kw
        )
        watcher.startService()
        self.addCleanup(watcher.stopService)
        return watcher

    def serve(self, path: str | None = None) -> RunningFakeDockerAPI:
        running = serve_fake_docker_api(reactor, path=path)
        self.addCleanup(running.stop)
        return running

    async def test_container_events_only(self) -> None:
        running, changes = self.serve(), cast(list[int], [])
        self.watch(running.description, changes)
        await running.fake.when_subscribed(1)
        running.fake.emit({"Type": "image", "Action": "pull", "id": "busybox"})
        running.fake.emit({"Type": "image", "Action": "create", "id": "x"})
        running.fake.emit({"Type": "container", "Action": "start", "id": "abc"})
        await wait_until(lambda: len(changes) >= 1)
        await deferLater(reactor, 0.05, lambda: None)
        self.assertEqual(changes, [1])

    async def test_event_split_across_chunks(self) -> None:
        running, changes = self.serve(), cast(list[int], [])
        self.watch(running.description, changes)
        await running.fake.when_subscribed(1)
        line = json.dumps({"Type": "container", "Action": "die"}).encode() + b"\n"
        running.fake.emit_raw(line[:10])
        await deferLater(reactor, 0.05, lambda: None)
        self.assertEqual(changes, [])
        running.fake.emit_raw(line[10:])
        await wait_until(lambda: len(changes) == 1)

    async def test_dropped_stream_resubscribes(self) -> None:
        running, changes = self.serve(), cast(list[int], [])
        self.watch(running.description, changes, base_delay=0.01)
        await running.fake.when_subscribed(1)
        running.fake.drop_streams()
        await running.fake.when_subscribed(2)
        await wait_until(lambda: len(changes) == 1)  # the catch-up
        running.fake.emit({"Type": "container", "Action": "create"})
        await wait_until(lambda: len(changes) == 2)
        self.assertEqual(len(running.fake.event_filters), 2)

    async def test_dockerd_comes_up_later(self) -> None:
        path = short_socket_path()
        self.addCleanup(shutil.rmtree, os.path.dirname(path), True)
        changes: list[int] = []
        watcher = self.watch("unix:" + path, changes, base_delay=0.02, max_delay=0.1)
        await deferLater(reactor, 0.2, lambda: None)
        self.assertGreater(watcher._attempt, 1)
        running = self.serve(path)
        await running.fake.when_subscribed(1)
        running.fake.emit({"Type": "container", "Action": "start"})
        await wait_until(lambda: len(changes) == 1)

    async def test_stop_closes_stream(self) -> None:
        running, changes = self.serve(), cast(list[int], [])
        watcher = self.watch(running.description, changes)
        await running.fake.when_subscribed(1)
        self.assertEqual(running.fake.open_streams, 1)
        running.fake.emit({"Type": "container", "Action": "start"})
        await wait_until(lambda: len(changes) == 1)  # the stream is up
        stopped = watcher.stopService()
        assert stopped is not None
        await stopped
        await wait_until(lambda: running.fake.open_streams == 0)
        await wait_until(lambda: running.open_connections == 0)
        # A retry left scheduled would fail the test: trial's janitor checks
        # for pending calls and open sockets after every test.
