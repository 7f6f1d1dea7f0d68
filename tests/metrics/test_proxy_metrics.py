"""
Tests for the proxy's metrics: L{haven_agent.metrics.proxy_metrics} on its
own, and the whole proxy (as `build_proxy_service` assembles it) in front of
the fake dockerd, scraped over TLS at C{GET /_agent/metrics} and read back
with prometheus_client's own parser.
"""

from __future__ import annotations

import base64
import os
import signal

from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families
from twisted.internet import reactor
from twisted.internet.defer import inlineCallbacks
from twisted.trial.unittest import SynchronousTestCase

from haven_agent.metrics.exposition import render
from haven_agent.metrics.proxy_metrics import (
    HIJACK_ROUTES,
    MAX_CACHED_ROUTES,
    STREAM_ROUTES,
    ProxyMetrics,
    RouteCache,
    route_label,
    stream_kind,
)
from haven_agent.proxy.access_log import RequestRecord
from haven_agent.proxy.engine_routes import is_known_template
from haven_agent.proxy.http_head import parse_head
from tests.fake_dockerd import UPGRADED
from tests.proxy.test_proxy_fake_dockerd import (
    AUTH,
    BAD_AUTH,
    ProxyTestCase,
    exchange,
    read_to_close,
    request,
    waitFor,
)

VIEWER_AUTH = b"Basic " + base64.b64encode(b"viewer:look")


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """
    Every sample of an exposition, by (name, sorted labels).
    """
    found = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found[sample.name, tuple(sorted(sample.labels.items()))] = sample.value
    return found


def value(found, name: str, **labels: str) -> float:
    return found.get((name, tuple(sorted(labels.items()))), 0.0)


def total(found, name: str, **labels: str) -> float:
    """
    The sum of C{name}'s samples whose labels include C{labels}.
    """
    return sum(
        v
        for (n, have), v in found.items()
        if n == name and set(labels.items()) <= set(have)
    )


def done(metrics, method, route, code, user, bytesIn, bytesOut, firstByte) -> None:
    """
    Count one request as the gate does, from its access log record.
    """
    record = RequestRecord(method, "/target", user, 100.0)
    record.route = route
    record.status = code
    record.bytesIn = bytesIn
    record.bytesOut = bytesOut
    record.firstByte = None if firstByte is None else 100.0 + firstByte
    metrics.requestDone(record)


class ProxyMetricsTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.registry = CollectorRegistry()
        self.metrics = ProxyMetrics(self.registry, ["admin", "viewer"])

    def scrape(self):
        self.successResultOf(self.metrics.refresh())
        return samples(render(list(self.registry.collect())).decode())

    def test_notBeforeRefresh(self) -> None:
        """
        The per-request figures are those of the last refresh: a scrape
        copies them on the reactor thread, the rendering thread reads the
        copy.
        """
        done(self.metrics, "GET", "/_ping", 200, "admin", 0, 0, None)
        text = render(list(self.registry.collect())).decode()
        self.assertNotIn('route="/_ping"', text)
        self.assertEqual(
            value(
                self.scrape(),
                "haven_agent_http_requests_total",
                method="GET",
                route="/_ping",
                code="200",
                user="admin",
            ),
            1,
        )

    def test_requestDone(self) -> None:
        """
        A request counts once by its labels, its bytes by route, and its
        time to first byte in the histogram.
        """
        for _ in range(2):
            done(
                self.metrics,
                "GET",
                "/containers/{id}/json",
                200,
                "admin",
                120,
                900,
                0.002,
            )
        found = self.scrape()
        labels = dict(method="GET", route="/containers/{id}/json", code="200")
        self.assertEqual(
            value(found, "haven_agent_http_requests_total", user="admin", **labels), 2
        )
        self.assertEqual(
            value(
                found,
                "haven_agent_http_request_bytes_total",
                route="/containers/{id}/json",
            ),
            240,
        )
        self.assertEqual(
            value(
                found,
                "haven_agent_http_response_bytes_total",
                route="/containers/{id}/json",
            ),
            1800,
        )
        self.assertEqual(
            value(
                found,
                "haven_agent_http_request_first_byte_seconds_bucket",
                route="/containers/{id}/json",
                le="0.0025",
            ),
            2,
        )
        self.assertEqual(
            value(
                found,
                "haven_agent_http_request_first_byte_seconds_bucket",
                route="/containers/{id}/json",
                le="0.001",
            ),
            0,
        )

    def test_boundedLabels(self) -> None:
        """
        Users nobody configured, methods HTTP does not define and requests
        that never authenticated do not make label values of their own.
        """
        done(self.metrics, "GET", "/_ping", 200, "ci-runner-17", 0, 0, None)
        done(self.metrics, "GET", "/_ping", 200, "ci-runner-18", 0, 0, None)
        done(self.metrics, "BREW", "other", 400, None, 0, 0, None)
        found = self.scrape()
        self.assertEqual(
            value(
                found,
                "haven_agent_http_requests_total",
                method="GET",
                route="/_ping",
                code="200",
                user="other",
            ),
            2,
        )
        self.assertEqual(
            value(
                found,
                "haven_agent_http_requests_total",
                method="other",
                route="other",
                code="400",
                user="",
            ),
            1,
        )

    def test_seriesExistFromTheStart(self) -> None:
        """
        Failures that have not happened yet read 0, not "no data".
        """
        found = self.scrape()
        for name, label, values in [
            ("haven_agent_auth_failures_total", "reason", ["wrong_credentials"]),
            ("haven_agent_connections_refused_total", "reason", ["max_connections"]),
            ("haven_agent_tls_handshakes_total", "outcome", ["ok", "timeout"]),
        ]:
            for v in values:
                self.assertIn((name, ((label, v),)), found)

    def test_streams(self) -> None:
        self.metrics.streamOpened("events")
        self.metrics.streamOpened("attach")
        self.metrics.streamClosed("attach", "client")
        found = self.scrape()
        self.assertEqual(value(found, "haven_agent_open_streams", kind="events"), 1)
        self.assertEqual(value(found, "haven_agent_open_streams", kind="attach"), 0)
        self.assertEqual(
            value(
                found,
                "haven_agent_streams_closed_total",
                kind="attach",
                closed_by="client",
            ),
            1,
        )

    def test_routeLabel(self) -> None:
        self.assertEqual(route_label(b"GET", b"/_agent/metrics"), "/_agent/metrics")
        self.assertEqual(
            route_label(b"GET", b"/containers/abc/json"), "/containers/{id}/json"
        )
        self.assertEqual(route_label(b"GET", b"/no/such/route"), "other")

    def test_routeCache(self) -> None:
        """
        A remembered route is the route: per (method, target), whatever
        came first; a full cache starts over rather than growing.
        """
        cache = RouteCache()
        for line, route in [
            (b"GET /v1.41/containers/abc/json HTTP/1.1", "/containers/{id}/json"),
            (b"DELETE /v1.41/containers/abc/json HTTP/1.1", "other"),
            (b"GET /containers/abc/json?size=1 HTTP/1.1", "/containers/{id}/json"),
            (b"GET /v1.41/containers/abc/json HTTP/1.1", "/containers/{id}/json"),
            (b"GET /_agent/health HTTP/1.1", "/_agent/health"),
        ]:
            self.assertEqual(cache.of(parse_head(line + b"\r\n\r\n")), route)
        for n in range(MAX_CACHED_ROUTES + 10):
            cache.of(parse_head(b"GET /containers/%d/json HTTP/1.1\r\n\r\n" % n))
        self.assertLessEqual(len(cache._routes), MAX_CACHED_ROUTES)

    def test_templatesKnown(self) -> None:
        """
        The stream routes name templates of the engine's route table, so
        a change in the table cannot leave them matching nothing.
        """
        for template in [*STREAM_ROUTES, *HIJACK_ROUTES]:
            self.assertTrue(is_known_template(template), template)

    def test_streamKind(self) -> None:
        self.assertEqual(stream_kind("/containers/{id}/attach", True), "attach")
        self.assertEqual(stream_kind("/exec/{id}/start", True), "exec")
        self.assertEqual(
            stream_kind("/containers/{id}/attach/ws", True, websocket=True),
            "websocket",
        )
        self.assertEqual(stream_kind("/session", True), "upgrade")
        self.assertEqual(stream_kind("/events", False), "events")
        self.assertIsNone(stream_kind("/containers/json", False))


class ScrapeTests(ProxyTestCase):
    """
    The proxy as twistd builds it, scraped over its own TLS port.
    """

    def setUp(self) -> None:
        super().setUp()
        self.fake, path = self.startFake()
        self.service = self.startService(
            path,
            readOnlyUser="viewer",
            readOnlyPassword="look",
        )

    @inlineCallbacks
    def scrape(self, auth: bytes = AUTH):
        client = yield self.connect(self.agentPort, caFile=self.caFile)
        (answer,) = yield self.inThread(
            exchange, client, request(b"GET", b"/_agent/metrics", auth=auth), 1
        )
        rest = yield self.inThread(read_to_close, client)
        self.assertEqual(rest, b"")
        return answer

    @inlineCallbacks
    def test_scrapeCountsRequests(self):
        """
        Requests and their answers move the counters; the page parses with
        prometheus_client's own parser and says what the agent is.
        """
        client = yield self.connect(self.agentPort, caFile=self.caFile)
        data = request(b"GET", b"/v1.41/_ping") * 3 + request(b"GET", b"/nope")
        answers = yield self.inThread(exchange, client, data, 4)
        self.assertEqual([a.status for a in answers], [200, 200, 200, 404])
        client.close()

        answer = yield self.scrape()
        self.assertEqual(answer.status, 200)
        self.assertEqual(
            answer.header(b"content-type"), b"text/plain; version=0.0.4; charset=utf-8"
        )
        found = samples(answer.body.decode())
        ping = dict(method="GET", route="/_ping", user="admin")
        self.assertEqual(
            value(found, "haven_agent_http_requests_total", code="200", **ping), 3
        )
        self.assertEqual(
            value(
                found,
                "haven_agent_http_requests_total",
                method="GET",
                route="other",
                code="404",
                user="admin",
            ),
            1,
        )
        self.assertEqual(
            value(
                found,
                "haven_agent_http_request_first_byte_seconds_count",
                route="/_ping",
            ),
            3,
        )
        self.assertGreater(
            value(found, "haven_agent_http_response_bytes_total", route="/_ping"), 0
        )
        self.assertEqual(value(found, "haven_agent_docker_up"), 1)
        self.assertGreaterEqual(
            value(found, "haven_agent_tls_handshakes_total", outcome="ok"), 2
        )
        self.assertEqual(value(found, "haven_agent_connections_total"), 2)
        self.assertGreater(
            value(
                found,
                "haven_agent_tls_certificate_not_after_timestamp_seconds",
                role="server",
            ),
            reactor.seconds(),
        )
        self.assertEqual(total(found, "haven_agent_build_info"), 1)
        self.assertGreater(total(found, "process_resident_memory_bytes"), 0)

    @inlineCallbacks
    def test_reloadCounted(self):
        """
        A SIGHUP reload counts by outcome and sets the last success.
        """
        os.kill(os.getpid(), signal.SIGHUP)
        yield waitFor(
            lambda: any(
                sample.labels.get("outcome") == "ok" and sample.value == 1
                for family in self.service.metrics.reloads.collect()
                for sample in family.samples
            )
        )
        found = samples((yield self.scrape()).body.decode())
        self.assertEqual(
            value(found, "haven_agent_config_reloads_total", outcome="ok"), 1
        )
        self.assertEqual(
            value(found, "haven_agent_config_reloads_total", outcome="failed"), 0
        )
        self.assertGreater(
            value(found, "haven_agent_config_last_reload_success_timestamp_seconds"),
            0,
        )

    @inlineCallbacks
    def test_failuresCounted(self):
        """
        A wrong password and a missing one count as authentication
        failures by reason; the read-only account may not scrape.
        """
        for auth in (BAD_AUTH, None):
            client = yield self.connect(self.agentPort, caFile=self.caFile)
            (answer,) = yield self.inThread(
                exchange, client, request(b"GET", b"/info", auth=auth), 1
            )
            self.assertEqual(answer.status, 401)
        viewer = yield self.scrape(VIEWER_AUTH)
        self.assertEqual(viewer.status, 403)
        self.assertNotIn(b"haven_agent_", viewer.body)

        found = samples((yield self.scrape()).body.decode())
        for reason in ("wrong_credentials", "no_credentials"):
            self.assertEqual(
                value(found, "haven_agent_auth_failures_total", reason=reason), 1
            )
        self.assertEqual(value(found, "haven_agent_throttled_sources"), 1)
        self.assertEqual(
            value(
                found,
                "haven_agent_http_requests_total",
                method="GET",
                route="/info",
                code="401",
                user="",
            ),
            2,
        )

    @inlineCallbacks
    def test_streamsAndConnections(self):
        """
        An open event stream and an attach count as open streams and
        connections in the stream state, and as closed streams by the
        side that closed them once they end.
        """
        events = yield self.connect(self.agentPort, caFile=self.caFile)
        yield self.inThread(events.send, request(b"GET", b"/events"))
        yield self.inThread(events.read_until, b"\r\n\r\n")
        attach = yield self.connect(self.agentPort, caFile=self.caFile)
        head = request(
            b"POST",
            b"/containers/c1/attach?stream=1",
            headers=[(b"Connection", b"Upgrade"), (b"Upgrade", b"tcp")],
        )
        yield self.inThread(attach.send, head)
        self.assertEqual(
            (yield self.inThread(attach.read_exactly, len(UPGRADED))), UPGRADED
        )

        found = samples((yield self.scrape()).body.decode())
        self.assertEqual(value(found, "haven_agent_open_streams", kind="events"), 1)
        self.assertEqual(value(found, "haven_agent_open_streams", kind="attach"), 1)
        self.assertEqual(
            value(found, "haven_agent_open_connections", state="stream"), 2
        )

        attach.close()
        self.fake.end_events()
        yield self.inThread(events.read_until, b"0\r\n\r\n")
        events.close()
        yield waitFor(lambda: self.fake.open_connections == 0)
        yield waitFor(lambda: len(self.service._gate.connections) == 0)
        found = samples((yield self.scrape()).body.decode())
        self.assertEqual(value(found, "haven_agent_open_streams", kind="events"), 0)
        self.assertEqual(value(found, "haven_agent_open_streams", kind="attach"), 0)
        self.assertEqual(
            value(
                found,
                "haven_agent_streams_closed_total",
                kind="events",
                closed_by="docker",
            ),
            1,
        )
        self.assertEqual(
            value(
                found,
                "haven_agent_streams_closed_total",
                kind="attach",
                closed_by="client",
            ),
            1,
        )
