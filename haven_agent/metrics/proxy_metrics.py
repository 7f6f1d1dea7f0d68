# -*- test-case-name: tests.metrics.test_proxy_metrics -*-
"""
The proxy's metrics: what the gate, the TLS wrapper and the limits count.

Names follow the peers an operator already graphs (haproxy's, Traefik's and
Envoy's; docs/metrics.md maps each one) under the `haven_agent_` prefix.
Every label is bounded, so a client cannot grow the agent's memory or a
Prometheus server's series by inventing paths or user names:

- `route` is a template of the engine's route table (`engine_routes`), one
  of the agent's own paths, or `other`;
- `user` is a configured identity, `other` (a certificate name nobody
  configured), or empty when the request never authenticated;
- `method` is one of HTTP's methods or `other`; `code` is a status code.

The per-request figures are plain Python numbers, not prometheus_client
metric objects: `requestDone` is one dictionary lookup of the list kept for
(method, route, code, user) and a few additions (about 0.4 us), where the
four locked updates of labelled children cost 1.4 us on every request.
`refresh` copies them on the reactor thread before each scrape, and
`RequestFamilies` turns the copy into families in the rendering thread. The
route of a request target is remembered (`RouteCache`), so a client that
repeats its requests does not have its path normalised and matched each
time. Gauges that describe the present (connections by state, certificate
expiry, throttled sources, dockerd up) are set by `refresh` too, and cost
nothing per request.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Callable, Iterable
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge
from prometheus_client.core import (
    CounterMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.utils import floatToGoString
from twisted.internet.defer import Deferred, gatherResults, maybeDeferred

from haven_agent.proxy.decision import METRICS_PATH
from haven_agent.proxy.engine_routes import route_of
from haven_agent.proxy.health import HEALTH_PATH

METRICS_ROUTE = METRICS_PATH.decode()
HEALTH_ROUTE = HEALTH_PATH.decode()
#: The agent's own answers, labelled by their path.
AGENT_ROUTES = {HEALTH_PATH: HEALTH_PATH.decode(), METRICS_PATH: METRICS_PATH.decode()}
OTHER = "other"
METHODS = frozenset(("GET", "HEAD", "POST", "PUT", "DELETE", "OPTIONS", "PATCH"))

#: Time to the first byte of dockerd's answer, in seconds: from a cached
#: `/_ping` (well under a millisecond) to a slow `build` or `pull`.
FIRST_BYTE_BUCKETS = (
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    60.0,
)

#: The kind of stream each streaming route's answer is.
STREAM_ROUTES = {
    "/events": "events",
    "/containers/{id}/logs": "logs",
    "/services/{id}/logs": "logs",
    "/tasks/{id}/logs": "logs",
    "/containers/{id}/stats": "stats",
}
#: The kind of raw stream a hijacking route opens (any other: "upgrade").
HIJACK_ROUTES = {
    "/containers/{id}/attach": "attach",
    "/containers/{id}/attach/ws": "websocket",
    "/exec/{id}/start": "exec",
}
STREAM_KINDS = ("attach", "exec", "upgrade", "websocket", "events", "logs", "stats")
CONNECTION_STATES = ("unauthenticated", "http", "stream")
#: Why a connection was refused before any request, by its limit's option.
REFUSAL_REASONS = (
    "max_connections",
    "max_unauthenticated",
    "max_unauthenticated_per_source",
    "max_connections_per_user",
)
AUTH_FAILURES = ("no_credentials", "wrong_credentials", "no_client_certificate")
HANDSHAKE_OUTCOMES = (
    "ok",
    "failed",
    "no_client_certificate",
    "bad_client_certificate",
    "timeout",
)
CLOSED_BY = ("client", "docker", "agent")

#: Distinct (method, route, code, user) keys remembered; past this, a new
#: key's labels are made again on each of its requests (they are bounded,
#: so their figures are not).
MAX_KEYS = 4096
#: Request targets whose route is remembered, and the longest remembered.
MAX_CACHED_ROUTES = 4096
MAX_CACHED_TARGET = 256


def route_label(method: bytes, apiPath: bytes) -> str:
    """
    The bounded C{route} label of a request.
    """
    agent = AGENT_ROUTES.get(apiPath)
    if agent is not None:
        return agent
    return route_of(method, apiPath) or OTHER


class RouteCache:
    """
    The route label of each (method, request target) seen lately: the
    route depends on nothing else, and most clients repeat their requests
    (the Haven master's polls, health checks, benchmarks). Forgotten all at
    once when full.
    """

    def __init__(self) -> None:
        self._routes: dict[tuple[bytes, bytes], str] = {}

    def of(self, head: Any) -> str:
        key = (head.method, head.target)
        route = self._routes.get(key)
        if route is None:
            route = route_label(head.method, head.apiPath)
            if len(head.target) <= MAX_CACHED_TARGET:
                if len(self._routes) >= MAX_CACHED_ROUTES:
                    self._routes.clear()
                self._routes[key] = route
        return route


class RequestFamilies:
    """
    The families of the per-request figures, from their last copy (see
    L{ProxyMetrics.refresh}); a prometheus_client collector.
    """

    def __init__(self, metrics: ProxyMetrics) -> None:
        self._metrics = metrics

    def collect(self) -> Iterable[Metric]:
        copy = self._metrics.copied
        requests = CounterMetricFamily(
            "haven_agent_http_requests",
            "Requests answered, by method, route template, status code and user.",
            labels=("method", "route", "code", "user"),
        )
        byRoute: dict[str, list[Any]] = {}
        for (method, route, code, user), (
            count,
            sent,
            received,
            seconds,
            buckets,
        ) in copy.items():
            requests.add_metric((method, route, code, user), count)
            totals = byRoute.get(route)
            if totals is None:
                totals = byRoute[route] = [0, 0, 0.0, [0] * len(buckets)]
            totals[0] += sent
            totals[1] += received
            totals[2] += seconds
            totals[3] = [a + b for a, b in zip(totals[3], buckets, strict=True)]
        sent = CounterMetricFamily(
            "haven_agent_http_request_bytes",
            "Request bytes (head and body, or a stream's input) sent to dockerd.",
            labels=("route",),
        )
        received = CounterMetricFamily(
            "haven_agent_http_response_bytes",
            "Answer bytes (dockerd's or the agent's own) sent to clients.",
            labels=("route",),
        )
        firstByte = HistogramMetricFamily(
            "haven_agent_http_request_first_byte_seconds",
            "Seconds from a request's head to the first byte of dockerd's answer.",
            labels=("route",),
        )
        bounds = [floatToGoString(b) for b in FIRST_BYTE_BUCKETS] + ["+Inf"]
        for route, (inBytes, outBytes, seconds, buckets) in byRoute.items():
            sent.add_metric((route,), inBytes)
            received.add_metric((route,), outBytes)
            cumulative, running = [], 0
            for bound, count in zip(bounds, buckets, strict=True):
                running += count
                cumulative.append((bound, running))
            firstByte.add_metric((route,), cumulative, seconds)
        return [requests, firstByte, sent, received]


def stream_kind(route: str, hijacked: bool, websocket: bool = False) -> str | None:
    """
    What kind of stream the answer to a request on C{route} is, or None.
    """
    if hijacked:
        if websocket:
            return "websocket"
        return HIJACK_ROUTES.get(route, "upgrade")
    return STREAM_ROUTES.get(route)


class ProxyMetrics:
    """
    The proxy's metric objects in C{registry}, and the calls that move them.

    @param users: the configured identities, the only user names that
        become label values.
    """

    def __init__(self, registry: CollectorRegistry, users: Iterable[str]) -> None:
        self._users = frozenset(users)
        #: (method, route, status or None, user or None) -> [requests,
        #: bytes in, bytes out, seconds to first byte, [count per bucket]].
        self._requests: dict[tuple[Any, ...], list[Any]] = {}
        #: The same figures by their (bounded) labels.
        self._byLabels: dict[tuple[str, ...], list[Any]] = {}
        #: The copy the last refresh made, by labels.
        self.copied: dict[tuple[str, ...], tuple[Any, ...]] = {}
        self.routes = RouteCache()
        registry.register(RequestFamilies(self))
        self.connections = Counter(
            "haven_agent_connections",
            "Client connections accepted.",
            registry=registry,
        )
        self.openConnections = Gauge(
            "haven_agent_open_connections",
            "Client connections open now, by state.",
            ("state",),
            registry=registry,
        )
        self.openStreams = Gauge(
            "haven_agent_open_streams",
            "Streams open now (hijacked, upgraded, or streamed answers), by kind.",
            ("kind",),
            registry=registry,
        )
        self.streamsClosed = Counter(
            "haven_agent_streams_closed",
            "Streams ended, by kind and by the side that closed first.",
            ("kind", "closed_by"),
            registry=registry,
        )
        self.refused = Counter(
            "haven_agent_connections_refused",
            "Connections refused before any request, by the limit they hit.",
            ("reason",),
            registry=registry,
        )
        self.authFailures = Counter(
            "haven_agent_auth_failures",
            "Requests refused 401, by reason.",
            ("reason",),
            registry=registry,
        )
        self.throttledAnswers = Counter(
            "haven_agent_throttled_answers",
            "Refusals held back by the failed-authentication throttle.",
            registry=registry,
        )
        self.throttledSources = Gauge(
            "haven_agent_throttled_sources",
            "Client sources whose next refusal is delayed now.",
            registry=registry,
        )
        self.handshakes = Counter(
            "haven_agent_tls_handshakes",
            "TLS handshakes, by outcome.",
            ("outcome",),
            registry=registry,
        )
        self.certificateExpiry = Gauge(
            "haven_agent_tls_certificate_not_after_timestamp_seconds",
            "When the served certificate (role=server) and the earliest client "
            "CA certificate (role=client_ca) expire, as a Unix time.",
            ("role",),
            registry=registry,
        )
        self.reloads = Counter(
            "haven_agent_config_reloads",
            "SIGHUP reloads (the TLS certificate, key and client CA), by outcome.",
            ("outcome",),
            registry=registry,
        )
        self.lastReload = Gauge(
            "haven_agent_config_last_reload_success_timestamp_seconds",
            "When the TLS material was last loaded successfully, as a Unix time.",
            registry=registry,
        )
        self.dockerUp = Gauge(
            "haven_agent_docker_up",
            "1 when dockerd's socket accepts a connection, else 0.",
            registry=registry,
        )
        self.dialErrors = Counter(
            "haven_agent_docker_dial_errors",
            "Connections to dockerd that could not be opened.",
            registry=registry,
        )
        self._streams = {kind: self.openStreams.labels(kind) for kind in STREAM_KINDS}
        self._closed = {
            (kind, side): self.streamsClosed.labels(kind, side)
            for kind in STREAM_KINDS
            for side in CLOSED_BY
        }
        # Every series that can exist from the start, so that a rate over
        # a failure that has not happened yet reads 0, not "no data".
        for state in CONNECTION_STATES:
            self.openConnections.labels(state)
        for reason in REFUSAL_REASONS:
            self.refused.labels(reason)
        for reason in AUTH_FAILURES:
            self.authFailures.labels(reason)
        for outcome in HANDSHAKE_OUTCOMES:
            self.handshakes.labels(outcome)
        for outcome in ("ok", "failed"):
            self.reloads.labels(outcome)
        #: Called by L{refresh}: each sets gauges of the present, and may
        #: return a Deferred.
        self.refreshers: list[Callable[[ProxyMetrics], Any]] = []

    def user_label(self, user: str | None) -> str:
        if user is None:
            return ""
        return user if user in self._users else OTHER

    def requestDone(self, record: Any) -> None:
        """
        One request's answer is complete (or the connection ended first):
        C{record} is its access log record (`access_log.RequestRecord`).
        """
        key = (record.method, record.route, record.status, record.user)
        figures = self._requests.get(key)
        if figures is None:
            figures = self._newKey(key)
        figures[0] += 1
        figures[1] += record.bytesIn
        figures[2] += record.bytesOut
        first = record.firstByte
        if first is not None:
            first -= record.started
            figures[3] += first
            figures[4][bisect_left(FIRST_BYTE_BUCKETS, first)] += 1

    def _newKey(self, key: tuple[Any, ...]) -> list[Any]:
        """
        The figures of a (method, route, code, user) not seen before: its
        labels are bounded, so a key whose labels are already known under
        another key (an unknown method or user) shares that one's figures.
        """
        method, route, code, user = key
        labels = (
            method if method in METHODS else OTHER,
            route,
            str(code) if code else "",
            self.user_label(user or None),
        )
        figures = self._byLabels.get(labels)
        if figures is None:
            figures = [0, 0, 0, 0.0, [0] * (len(FIRST_BYTE_BUCKETS) + 1)]
            self._byLabels[labels] = figures
        if len(self._requests) < MAX_KEYS:
            self._requests[key] = figures
        return figures

    def connectionAccepted(self) -> None:
        self.connections.inc()

    def streamOpened(self, kind: str) -> None:
        self._streams[kind].inc()

    def streamClosed(self, kind: str, closedBy: str) -> None:
        self._streams[kind].dec()
        self._closed[kind, closedBy].inc()

    def refresh(self) -> Deferred[Any]:
        """
        Copy the per-request figures and set the gauges of the present,
        before a scrape, on the reactor thread; fires when all are set.
        """
        self.copied = {
            labels: (count, sent, received, seconds, tuple(buckets))
            for labels, (count, sent, received, seconds, buckets) in (
                self._byLabels.items()
            )
        }
        return gatherResults(
            [maybeDeferred(refresher, self) for refresher in self.refreshers]
        )
