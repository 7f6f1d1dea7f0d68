"""
Tests for L{haven_agent.reporting.reporter}: the reporter against a fake Haven master
(L{tests.fake_master}) through C{treq.testing.StubTreq}, driven by a C{Clock};
and one report over real sockets with a real treq client.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any, cast

from treq.client import HTTPClient
from treq.testing import StubTreq
from twisted.internet import reactor
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.error import ConnectionRefusedError
from twisted.internet.task import Clock, deferLater
from twisted.logger import LogLevel, capturedLogs, formatEvent
from twisted.trial.unittest import SynchronousTestCase, TestCase
from twisted.web.client import Agent, HTTPConnectionPool
from twisted.web.resource import Resource

from haven_agent.reporting.report import (
    HostSnapshot,
    build_report,
    parse_labels,
    summarize_containers,
)
from haven_agent.reporting.reporter import (
    REFUSED_SECRET,
    LogReporter,
    ReporterService,
)
from tests.fake_master import FakeMaster, listen

RFC3339_UTC_MILLIS = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z\Z")
SECRET = "s3cret-never-logged"


def sample_body(now: float) -> dict[str, Any]:
    """A report body as the collector would build it at C{now}."""
    return build_report(
        moment=datetime.fromtimestamp(now, UTC),
        name="node-1",
        address="https://10.0.0.5:8771",
        host=HostSnapshot(
            cpu_load=12.5,
            memory={"total": 8373055488, "used": 3341000704, "available": 2780352512},
            disks={"/": {"used": 42035744768, "total": 105089261568}},
            net=cast(
                dict[str, dict[str, int]],
                {
                    "lo": {"bytesIn": 7, "bytesOut": 7},
                    "eth0": {"bytesIn": 123456789, "bytesOut": 98765432},
                    # what a half-read counter could look like: never sent
                    "eth1": {"bytesIn": None, "bytesOut": 1},
                },
            ),
        ),
        labels=parse_labels(["zone=eu=1", "ssd"]),
        containers=summarize_containers(
            [{"Id": "abc", "Names": ["/web"], "Image": "nginx", "Labels": None}]
        ),
    )


class Harness:
    """
    A L{ReporterService} wired to a L{FakeMaster} through C{StubTreq} and a
    C{Clock}; C{collect} counts its calls and notes their times.
    """

    def __init__(
        self,
        test: SynchronousTestCase,
        fake: FakeMaster | None = None,
        random_value: float = 0.0,
        http: Any = None,
        collect: Callable[[], Deferred[dict[str, Any]]] | None = None,
        **settings: Any,
    ) -> None:
        self.clock = Clock()
        self.master = fake if fake is not None else FakeMaster()
        self.stub = StubTreq(self.master)
        self.collect_times: list[float] = []
        settings.setdefault("master", "http://master:8761")
        settings.setdefault("node_name", "node-1")
        self.service = ReporterService(
            clock=self.clock,
            http=http if http is not None else self.stub,
            collect=collect if collect is not None else self.collect,
            random=lambda: random_value,
            **settings,
        )
        test.addCleanup(self.cleanup, test)

    def cleanup(self, test: SynchronousTestCase) -> None:
        # Also cancels a request in flight, and with it treq's own timer on
        # the global reactor, which would otherwise outlive the test.
        self.stop()
        test.assertEqual(self.clock.getDelayedCalls(), [])

    def collect(self) -> Deferred[dict[str, Any]]:
        self.collect_times.append(self.clock.seconds())
        return succeed(sample_body(self.clock.seconds()))

    def advance(self, seconds: float) -> None:
        self.clock.advance(seconds)
        self.stub.flush()

    def start(self) -> None:
        self.service.startService()
        self.stub.flush()

    def stop(self) -> None:
        self.service.stopService()
        self.stub.flush()

    @property
    def received(self) -> int:
        return len(self.master.received)


def texts(events: Sequence[dict[str, Any]]) -> list[str]:
    return [formatEvent(event) for event in events]


class SchedulingTests(SynchronousTestCase):
    def test_first_report_right_after_start(self) -> None:
        harness = Harness(self, random_value=0.0)
        harness.start()
        harness.advance(0)
        self.assertEqual(harness.received, 1)
        self.assertEqual(harness.master.received[0].code, 200)
        self.assertEqual(harness.service.accepted_reports, 1)

    def test_first_report_random_delay_bounded_by_five_seconds(self) -> None:
        harness = Harness(self, random_value=1.0, interval=60.0)
        harness.start()
        harness.advance(4.9)
        self.assertEqual(harness.received, 0)
        harness.advance(0.1)
        self.assertEqual(harness.received, 1)

    def test_first_report_random_delay_bounded_by_tenth_of_interval(self) -> None:
        harness = Harness(self, random_value=1.0, interval=20.0)
        harness.start()
        harness.advance(1.9)
        self.assertEqual(harness.received, 0)
        harness.advance(0.1)
        self.assertEqual(harness.received, 1)

    def test_first_report_random_delay_scaled(self) -> None:
        harness = Harness(self, random_value=0.5, interval=60.0)
        harness.start()
        harness.advance(2.4)
        self.assertEqual(harness.received, 0)
        harness.advance(0.1)
        self.assertEqual(harness.received, 1)

    def test_interval_cadence(self) -> None:
        harness = Harness(self, interval=60.0)
        harness.start()
        harness.advance(0)
        harness.advance(59.9)
        self.assertEqual(harness.received, 1)
        harness.advance(0.1)
        self.assertEqual(harness.received, 2)
        for _ in range(3):
            harness.advance(60)
        self.assertEqual(harness.received, 5)
        self.assertEqual(harness.collect_times, [0, 60, 120, 180, 240])

    def test_stop_leaves_nothing_scheduled(self) -> None:
        harness = Harness(self, random_value=1.0)
        harness.start()
        self.assertEqual(len(harness.clock.getDelayedCalls()), 1)  # first report
        harness.stop()
        self.assertEqual(harness.clock.getDelayedCalls(), [])

        harness.start()
        harness.advance(5)
        harness.service.report_soon()
        self.assertEqual(len(harness.clock.getDelayedCalls()), 2)  # loop, soon
        harness.stop()
        self.assertEqual(harness.clock.getDelayedCalls(), [])

        harness.start()
        harness.advance(5)
        harness.master.mode = "500"
        harness.advance(60)
        self.assertEqual(len(harness.clock.getDelayedCalls()), 2)  # loop, retry
        harness.stop()
        self.assertEqual(harness.clock.getDelayedCalls(), [])
        received = harness.received
        harness.advance(1000)
        self.assertEqual(harness.received, received)

    def test_stop_cancels_the_post_in_flight(self) -> None:
        harness = Harness(self, fake=FakeMaster(mode="hang"), request_timeout=30.0)
        harness.start()
        with capturedLogs() as events:
            harness.advance(0)
            self.assertEqual(harness.received, 1)
            harness.stop()
            self.assertEqual(harness.clock.getDelayedCalls(), [])
            # treq's own timer (on the global reactor) went with the request
            self.assertEqual(reactor.getDelayedCalls(), [])
            harness.advance(1000)
        self.assertEqual(harness.received, 1)
        self.assertEqual(events, [])

    def test_stop_cancels_the_collect_in_flight(self) -> None:
        cancelled: list[Deferred[dict[str, Any]]] = []

        def collect() -> Deferred[dict[str, Any]]:
            return Deferred(cancelled.append)

        harness = Harness(self, collect=collect)
        harness.start()
        harness.advance(0)
        self.assertEqual(cancelled, [])
        with capturedLogs() as events:
            harness.stop()
        self.assertEqual(len(cancelled), 1)
        self.assertEqual(events, [])
        self.assertEqual(harness.clock.getDelayedCalls(), [])

    def test_restart(self) -> None:
        harness = Harness(self)
        harness.start()
        harness.advance(0)
        harness.stop()
        harness.start()
        harness.advance(0)
        self.assertEqual(harness.received, 2)
        harness.advance(60)
        self.assertEqual(harness.received, 3)


class OverlapTests(SynchronousTestCase):
    def test_slow_collect_no_concurrent_report_one_follow_up(self) -> None:
        pending: list[Deferred[dict[str, Any]]] = []

        def collect() -> Deferred[dict[str, Any]]:
            pending.append(Deferred())
            return pending[-1]

        harness = Harness(self, collect=collect, interval=60.0)
        harness.start()
        harness.advance(0)
        self.assertEqual(len(pending), 1)
        for _ in range(4):
            harness.advance(60)
        harness.service.report_soon()
        harness.advance(5)
        # four ticks and an early report came and went: no second collect
        self.assertEqual(len(pending), 1)
        self.assertEqual(harness.received, 0)

        pending[0].callback(sample_body(harness.clock.seconds()))
        harness.stub.flush()
        self.assertEqual(harness.received, 1)
        # exactly one follow-up, with a fresh body, not a backlog of five
        self.assertEqual(len(pending), 2)
        pending[1].callback(sample_body(harness.clock.seconds()))
        harness.stub.flush()
        self.assertEqual(harness.received, 2)
        self.assertEqual(len(pending), 2)
        harness.advance(55)  # the next tick, at 300
        self.assertEqual(len(pending), 3)

    def test_hanging_master_no_concurrent_post(self) -> None:
        harness = Harness(
            self, fake=FakeMaster(mode="hang"), interval=60.0, request_timeout=150.0
        )
        harness.start()
        harness.advance(0)
        harness.advance(60)
        harness.advance(60)
        self.assertEqual(harness.received, 1)
        self.assertEqual(harness.collect_times, [0])
        harness.master.mode = "ok"
        harness.advance(30)  # the POST times out at 150; retry at 151
        self.assertEqual(harness.received, 1)
        harness.advance(1)
        self.assertEqual(harness.received, 2)
        self.assertEqual(harness.collect_times, [0, 151])
        self.assertEqual(harness.master.received[-1].code, 200)


class BackoffTests(SynchronousTestCase):
    def test_growth_capped_then_reset_by_success(self) -> None:
        harness = Harness(self, fake=FakeMaster(mode="500"), interval=60.0)
        harness.start()
        harness.advance(0)
        for _ in range(130):
            harness.advance(1)
        # retries 1, 2, 4, 8, 16 s apart; then the regular ticks serve as
        # retries (the cap is the interval): never more than one per interval
        self.assertEqual(harness.collect_times, [0, 1, 3, 7, 15, 31, 60, 120])
        self.assertEqual(harness.service.consecutive_failures, 8)

        harness.master.mode = "ok"
        harness.advance(50)  # 180
        self.assertEqual(harness.master.received[-1].code, 200)
        self.assertEqual(harness.service.consecutive_failures, 0)

        harness.master.mode = "500"
        harness.advance(60)  # 240: fails; the backoff starts again at 1 s
        harness.advance(1)
        self.assertEqual(harness.collect_times[-3:], [180, 240, 241])
        self.assertEqual(harness.clock.getDelayedCalls()[0].getTime(), 243)

    def test_backoff_capped_by_max_backoff(self) -> None:
        harness = Harness(
            self, fake=FakeMaster(mode="500"), interval=3600.0, max_backoff=10.0
        )
        harness.start()
        harness.advance(0)
        for _ in range(60):
            harness.advance(1)
        self.assertEqual(harness.collect_times, [0, 1, 3, 7, 15, 25, 35, 45, 55])

    def test_jitter(self) -> None:
        harness = Harness(self, fake=FakeMaster(mode="500"), random_value=0.5)
        harness.start()
        harness.advance(2.5)  # first report: 0.5 * 5 s
        self.assertEqual(harness.collect_times, [2.5])
        retry = [call.getTime() for call in harness.clock.getDelayedCalls()]
        self.assertIn(2.5 + 0.75, retry)

    def test_fresh_body_on_each_retry(self) -> None:
        harness = Harness(self, fake=FakeMaster(mode="500"))
        harness.start()
        harness.advance(0)
        harness.advance(1)
        harness.advance(2)
        times = [report.json()["time"] for report in harness.master.received]
        self.assertEqual(
            times,
            [
                "1970-01-01T00:00:00.000Z",
                "1970-01-01T00:00:01.000Z",
                "1970-01-01T00:00:03.000Z",
            ],
        )

    def test_report_soon_ignored_while_failing(self) -> None:
        harness = Harness(self, fake=FakeMaster(mode="500"))
        harness.start()
        harness.advance(0)
        harness.service.report_soon()
        harness.advance(0.5)
        self.assertEqual(len(harness.clock.getDelayedCalls()), 2)  # loop + retry
        harness.advance(0.5)
        self.assertEqual(harness.collect_times, [0, 1])


class LoggingTests(SynchronousTestCase):
    def test_refused_secret_logged_once_until_outcome_changes(self) -> None:
        master = FakeMaster(secret="the-masters-secret")
        harness = Harness(self, fake=master, secret=SECRET)
        harness.start()
        with capturedLogs() as events:
            harness.advance(0)
            for _ in range(200):
                harness.advance(1)
            self.assertGreater(harness.received, 5)
            self.assertEqual({r.code for r in master.received}, {401})
            refused = [t for t in texts(events) if REFUSED_SECRET in t]
            self.assertEqual(len(refused), 1)
            self.assertIn("wrong or missing secret", refused[0])
            self.assertIn("a secret is configured", refused[0])

            master.secret = SECRET
            harness.advance(60)
            self.assertEqual(master.received[-1].code, 200)
            accepted = [t for t in texts(events) if "accepted" in t]
            self.assertEqual(len(accepted), 1)
            self.assertIn("again", accepted[0])

            master.secret = "rotated"
            harness.advance(60)
            harness.advance(60)
        refused = [t for t in texts(events) if REFUSED_SECRET in t]
        self.assertEqual(len(refused), 2)
        for text in texts(events):
            self.assertNotIn(SECRET, text)
        self.assertNotIn(SECRET, repr(harness.service))

    def test_missing_secret_said_so(self) -> None:
        harness = Harness(self, fake=FakeMaster(secret="needed"))
        harness.start()
        with capturedLogs() as events:
            harness.advance(0)
        [text] = texts(events)
        self.assertIn(REFUSED_SECRET, text)
        self.assertIn("no secret is configured", text)
        self.assertEqual(events[0]["log_level"], LogLevel.error)

    def test_error_status_and_body_excerpt(self) -> None:
        harness = Harness(self, fake=FakeMaster(mode="500"))
        harness.start()
        with capturedLogs() as events:
            harness.advance(0)
            harness.advance(1)
        [text] = texts(events)
        self.assertIn("answered 500", text)
        self.assertIn("the fake master choked", text)
        self.assertEqual(events[0]["code"], 500)

    def test_long_error_body_cut_at_200_characters(self) -> None:
        class Verbose(Resource):
            isLeaf = True

            def render_POST(self, request: Any) -> bytes:
                request.setResponseCode(503)
                return b"x" * 1000

        harness = Harness(self, http=StubTreq(Verbose()))
        harness.start()
        with capturedLogs() as events:
            harness.advance(0)
        [event] = events
        self.assertEqual(event["excerpt"], "x" * 200)
        self.assertIn("answered 503", formatEvent(event))

    def test_first_success_logged_once(self) -> None:
        harness = Harness(self)
        harness.start()
        with capturedLogs() as events:
            harness.advance(0)
            harness.advance(60)
            harness.advance(60)
        [text] = texts(events)
        self.assertEqual(
            text,
            "the master at http://master:8761/discovery/nodes/node-1?ttl=120 "
            "accepted the report of node node-1",
        )

    def test_timeout(self) -> None:
        harness = Harness(self, fake=FakeMaster(mode="hang"), request_timeout=30.0)
        harness.start()
        with capturedLogs() as events:
            harness.advance(0)
            harness.advance(29.9)
            self.assertEqual(events, [])
            harness.advance(0.1)
            [text] = texts(events)
            self.assertEqual(events[0]["log_level"], LogLevel.warn)
        self.assertIn("no answer within 30 s", text)
        self.assertEqual(harness.service.consecutive_failures, 1)
        pending = sorted(call.getTime() for call in harness.clock.getDelayedCalls())
        self.assertEqual(pending, [31.0, 60.0])  # backoff retry, next tick
        harness.advance(1)
        self.assertEqual(harness.collect_times, [0, 31])

    def test_unreachable_logged_once_per_outage(self) -> None:
        calls: list[tuple[str, dict[str, Any]]] = []
        reachable = [False]
        real: Any = StubTreq(FakeMaster())

        class Flaky:
            def post(self, url: str, **kwargs: Any) -> Deferred[Any]:
                calls.append((url, kwargs))
                if reachable[0]:
                    return real.post(url, **kwargs)
                return fail(ConnectionRefusedError("nobody home"))

        harness = Harness(self, http=Flaky(), request_timeout=12.5)
        harness.start()
        with capturedLogs() as events:
            harness.advance(0)
            for _ in range(130):
                harness.advance(1)
            reachable[0] = True
            harness.advance(60)
            real.flush()
            reachable[0] = False
            harness.advance(60)
        warned = [t for t in texts(events) if "cannot report" in t]
        self.assertEqual(len(warned), 2)
        self.assertIn("nobody home", warned[0])
        self.assertEqual(len(calls), 10)
        self.assertEqual({kw["timeout"] for _, kw in calls}, {12.5})

    def test_collect_failure_logged_once_and_loop_survives(self) -> None:
        failing = [True]
        harness = Harness(self)

        def collect() -> Deferred[dict[str, Any]]:
            if failing[0]:
                raise RuntimeError("collector bug")
            return harness.collect()

        harness.service = ReporterService(
            clock=harness.clock,
            http=harness.stub,
            collect=collect,
            master="http://master:8761",
            node_name="node-1",
            random=lambda: 0.0,
        )
        harness.start()
        with capturedLogs() as events:
            harness.advance(0)
            harness.advance(30)
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)
        self.assertEqual(len(events), 1)
        self.assertIn("collecting the report of node node-1 failed", texts(events)[0])
        self.assertEqual(harness.received, 0)
        failing[0] = False
        harness.advance(30)
        self.assertEqual(harness.received, 1)

    def test_collect_failed_deferred(self) -> None:
        harness = Harness(self, collect=lambda: fail(ValueError("no docker")))
        harness.start()
        harness.advance(0)
        harness.advance(60)
        self.assertEqual(len(self.flushLoggedErrors(ValueError)), 2)
        self.assertEqual(harness.received, 0)
        self.assertEqual(harness.service.consecutive_failures, 0)

    def test_unencodable_body(self) -> None:
        harness = Harness(self, collect=lambda: succeed({"x": object()}))
        harness.start()
        harness.advance(0)
        self.assertEqual(len(self.flushLoggedErrors(TypeError)), 1)
        self.assertEqual(harness.received, 0)
        harness.advance(60)
        self.assertEqual(len(self.flushLoggedErrors(TypeError)), 1)


class RequestTests(SynchronousTestCase):
    def first_request(self, **settings: Any) -> Any:
        harness = Harness(self, **settings)
        harness.start()
        harness.advance(0)
        self.assertEqual(harness.received, 1)
        return harness.master.received[0]

    def test_body_matches_the_contract(self) -> None:
        request = self.first_request()
        self.assertEqual(request.code, 200)
        body = request.json()
        self.assertEqual(
            set(body), {"time", "name", "address", "system"}, "top-level fields"
        )
        self.assertTrue(RFC3339_UTC_MILLIS.match(body["time"]), body["time"])
        self.assertEqual(body["name"], "node-1")
        self.assertEqual(body["address"], "https://10.0.0.5:8771")
        system = body["system"]
        self.assertEqual(
            set(system),
            {"cpuLoad", "memory", "disks", "net", "labels", "containers"},
        )
        self.assertIsInstance(system["cpuLoad"], float)
        self.assertTrue(0.0 <= system["cpuLoad"] <= 100.0)
        self.assertEqual(set(system["memory"]), {"total", "used", "available"})
        for value in system["memory"].values():
            self.assertIsInstance(value, int)
        self.assertEqual(
            system["disks"], {"/": {"used": 42035744768, "total": 105089261568}}
        )
        self.assertEqual(
            system["net"], {"eth0": {"bytesIn": 123456789, "bytesOut": 98765432}}
        )
        self.assertNotIn("lo", system["net"])
        for counters in system["net"].values():
            self.assertNotIn(None, counters.values())
        self.assertEqual(system["labels"], {"zone": "eu=1", "ssd": ""})
        self.assertEqual(
            system["containers"],
            [{"id": "abc", "name": "web", "image": "nginx", "labels": {}}],
        )

    def test_compact_json(self) -> None:
        request = self.first_request()
        self.assertNotIn(b", ", request.body)
        self.assertEqual(
            request.body, json.dumps(request.json(), separators=(",", ":")).encode()
        )

    def test_headers_without_secret(self) -> None:
        request = self.first_request()
        self.assertEqual(request.method, "POST")
        self.assertEqual(request.header("Content-Type"), "application/json")
        self.assertIsNone(request.header("X-Auth-Node"))

    def test_headers_with_secret(self) -> None:
        request = self.first_request(fake=FakeMaster(secret=SECRET), secret=SECRET)
        self.assertEqual(request.header("X-Auth-Node"), SECRET)
        self.assertEqual(request.code, 200)

    def test_empty_secret_not_sent(self) -> None:
        request = self.first_request(secret="")
        self.assertIsNone(request.header("X-Auth-Node"))

    def test_ttl(self) -> None:
        for interval, ttl in [(60.0, "120"), (10.0, "60"), (45.7, "91"), (29, "60")]:
            request = self.first_request(interval=interval)
            self.assertEqual(request.query, {"ttl": [ttl]}, interval)

    def test_url_joined_without_double_slash(self) -> None:
        for master, path in [
            ("http://master:8761", "/discovery/nodes/node-1"),
            ("http://master:8761/", "/discovery/nodes/node-1"),
            ("http://master:8761/haven/", "/haven/discovery/nodes/node-1"),
        ]:
            request = self.first_request(master=master)
            self.assertEqual(request.path, path, master)
        harness = Harness(self, master="https://m/")
        self.assertEqual(
            harness.service.url, "https://m/discovery/nodes/node-1?ttl=120"
        )

    def test_fake_master_refuses_what_the_real_one_does(self) -> None:
        # The checks the reporter's tests rely on must themselves be able to fail.
        stub: Any = StubTreq(FakeMaster())

        def post(body: Any, name: str = "node-1") -> int:
            answer = stub.post(
                f"http://m/discovery/nodes/{name}",
                data=json.dumps(body).encode(),
                headers={"Content-Type": "application/json"},
            )
            stub.flush()
            return int(self.successResultOf(answer).code)

        good = sample_body(0)
        self.assertEqual(post(good), 200)
        self.assertEqual(post(good, "node1.example.com"), 400)
        self.assertEqual(post(dict(good, time="2026-11-24T11:19:52.123")), 500)
        self.assertEqual(post(dict(good, address=None)), 500)
        net = {"eth0": {"bytesIn": None, "bytesOut": 1}}
        self.assertEqual(post(dict(good, system=dict(good["system"], net=net))), 500)


class SoonTests(SynchronousTestCase):
    def test_debounced(self) -> None:
        harness = Harness(self, debounce=2.0)
        harness.start()
        harness.advance(0)
        harness.advance(10)
        for _ in range(3):
            harness.service.report_soon()
            harness.advance(0.5)
        self.assertEqual(harness.received, 1)
        harness.advance(0.5)  # 12: the debounce window after the first call
        self.assertEqual(harness.received, 2)
        harness.advance(8)
        self.assertEqual(harness.received, 2)

        harness.service.report_soon()  # 20
        harness.advance(2)
        self.assertEqual(harness.received, 3)
        self.assertEqual(harness.collect_times, [0, 12, 22])
        harness.advance(38)
        self.assertEqual(harness.collect_times, [0, 12, 22, 60])

    def test_before_start_ignored(self) -> None:
        harness = Harness(self)
        harness.service.report_soon()
        self.assertEqual(harness.clock.getDelayedCalls(), [])


class ValidationTests(SynchronousTestCase):
    def test_node_name(self) -> None:
        error = self.assertRaises(
            ValueError, Harness, self, node_name="node1.example.com"
        )
        self.assertIn("'.'", str(error))

    def test_master_url(self) -> None:
        for master in ["master:8761", "ftp://m", "http://", "", "http://m/?a=1"]:
            self.assertRaises(ValueError, Harness, self, master=master)
        error = self.assertRaises(ValueError, Harness, self, master="ftp://user:pw@m")
        self.assertNotIn("pw", str(error))

    def test_secret_with_line_break_not_echoed(self) -> None:
        error = self.assertRaises(ValueError, Harness, self, secret="abc\r\nX-Evil: 1")
        self.assertNotIn("abc", str(error))

    def test_intervals(self) -> None:
        for settings in [
            {"interval": 0},
            {"interval": -1},
            {"request_timeout": 0},
            {"debounce": -1},
        ]:
            self.assertRaises(ValueError, Harness, self, **settings)


class LogReporterTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.reporter = LogReporter(
            clock=self.clock,
            collect=lambda: succeed(sample_body(self.clock.seconds())),
            node_name="node-1",
            interval=60.0,
            random=lambda: 0.0,
        )

    def test_logs_the_body_every_interval(self) -> None:
        with capturedLogs() as events:
            self.reporter.startService()
            self.clock.advance(0)
            self.clock.advance(60)
        self.reporter.stopService()
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.assertIn("no master configured", formatEvent(events[0]))
        reports = [e for e in events if "body" in e]
        self.assertEqual(len(reports), 2)
        for event, now in zip(reports, [0, 60], strict=True):
            self.assertEqual(event["log_level"], LogLevel.info)
            self.assertEqual(json.loads(event["body"]), sample_body(now))
            self.assertTrue(
                formatEvent(event).startswith('report for node node-1: {"time":')
            )

    def test_report_soon(self) -> None:
        with capturedLogs() as events:
            self.reporter.startService()
            self.clock.advance(0)
            self.reporter.report_soon()
            self.clock.advance(2)
        self.reporter.stopService()
        self.assertEqual(len([e for e in events if "body" in e]), 2)


class RealSocketTests(TestCase):
    """
    One report over a real TCP connection with a real treq client and the
    reactor: what StubTreq cannot show (real HTTP framing, connection pool).
    """

    timeout = 20

    async def test_one_report_delivered(self) -> None:
        master = FakeMaster(secret=SECRET)
        port, url = listen(reactor, master)
        self.addCleanup(port.stopListening)
        self.assertIs(cast(Any, port).factory.resource, master)
        pool = HTTPConnectionPool(reactor)
        self.addCleanup(pool.closeCachedConnections)
        service = ReporterService(
            clock=reactor,
            http=HTTPClient(Agent(reactor, pool=pool)),
            collect=lambda: succeed(sample_body(0)),
            master=url + "/",
            node_name="node-1",
            secret=SECRET,
            random=lambda: 0.0,
            request_timeout=10.0,
        )
        received = master.next_report()
        service.startService()
        self.addCleanup(service.stopService)
        report = await received
        while service.accepted_reports < 1:
            await deferLater(reactor, 0.01, lambda: None)
        self.assertEqual(report.code, 200)
        self.assertEqual(report.path, "/discovery/nodes/node-1")
        self.assertEqual(report.query, {"ttl": ["120"]})
        self.assertEqual(report.header("X-Auth-Node"), SECRET)
        self.assertEqual(report.json(), sample_body(0))
        self.assertEqual(len(master.received), 1)
