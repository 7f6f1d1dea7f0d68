"""
End-to-end tests of the agent's Prometheus metrics: a real agent process
(tests/e2e_agent.py) in front of the per-run private dockerd
(tests/realdockerd.py), driven by the real docker CLI and scraped by real
clients.

- The counters move with real traffic, by exactly what the agent's access
  log says it served: `docker ps`, `docker run` and `docker logs` through the
  agent, then `GET /_agent/metrics` over TLS as the admin, parsed with
  prometheus_client's own parser. Streams (attach, logs) are counted when
  they close, and none is left open.
- Refused requests are counted by reason (a wrong password, none at all),
  and the refused `POST /volumes/create` did nothing on dockerd's own
  socket; the read-only account may not scrape.
- `--metrics-listen unix:PATH` serves the same page in plain HTTP at
  `/metrics`, with the node_* families unless `--no-node-metrics`.
- While `docker events` streams through the agent, the gauges show the
  stream and the connections by state (stream, idle keep-alive, one that
  never sent a request); once the client is gone the stream is counted
  closed and none is open.
- A real Prometheus server (Debian's `prometheus` package) scrapes the
  agent over HTTPS with Basic auth and the agent's CA, with the scrape
  configuration docs/metrics.md gives, and can query the agent's series.

Only the machine's lack of dockerd (and not even that when
HAVEN_AGENT_REQUIRE_DOCKERD is set) or of /usr/bin/prometheus is a skip.
Blocking clients run in threads; every one has a timeout.
"""

from __future__ import annotations

import http.client
import json
import os
import re
import secrets
import shutil
import ssl
import subprocess
import time
import unittest
from collections import Counter
from urllib.parse import quote, urlsplit

from prometheus_client.parser import text_string_to_metric_families
from twisted.internet.defer import inlineCallbacks
from twisted.internet.threads import deferToThread
from twisted.trial.unittest import TestCase

from haven_agent import __version__
from tests.e2e.test_real_dockerd import AGENT_LOG_PROBLEMS
from tests.e2e_agent import (
    AgentProcess,
    AgentStartError,
    basic_auth,
    free_port,
    popen_until_cleanup,
    stop_process,
)
from tests.fake_dockerd import short_socket_path
from tests.realdockerd import (
    IMAGE,
    UnixHTTPConnection,
    clean_docker_env,
    output_tail,
    require,
    shared_dockerd,
)

TIMEOUT = 60.0
#: How long a stream's close may take to reach the access log after its
#: client exited.
SETTLE_TIMEOUT = 15.0
PROMETHEUS = "/usr/bin/prometheus"
VIEWER, VIEWER_PASSWORD = "viewer", "look"
NODE_FAMILIES = (
    "node_cpu_seconds_total",
    "node_load1",
    "node_memory_MemTotal_bytes",
    "node_boot_time_seconds",
    "node_network_receive_bytes_total",
    "node_filesystem_size_bytes",
)

#: A request target's API version prefix, and an id or name in a
#: container's path (everything but the container routes' fixed words).
_VERSION = re.compile(r"^/v[0-9.]+(?=/)")
_CONTAINER = re.compile(r"^/containers/(?!json$|create$|prune$)[^/]+")


# -- the page -----------------------------------------------------------------


def parse_page(text: str) -> dict[tuple[str, frozenset], float]:
    """Every sample of a metrics page: (name, labels) -> value."""
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def sample(page, name: str, **labels: str) -> float:
    """One sample's value; 0 when the page does not have it."""
    return page.get((name, frozenset(labels.items())), 0.0)


def total(page, name: str, **labels: str) -> float:
    """The sum of C{name}'s samples that carry C{labels} (and maybe more)."""
    wanted = set(labels.items())
    return sum(v for (n, ls), v in page.items() if n == name and wanted <= ls)


def requests(page) -> dict[tuple[str, str, str, str], float]:
    """haven_agent_http_requests_total by (method, route, code, user)."""
    counts = {}
    for (name, labels), value in page.items():
        if name == "haven_agent_http_requests_total":
            ls = dict(labels)
            counts[ls["method"], ls["route"], ls["code"], ls["user"]] = value
    return counts


def growth(before: dict, after: dict) -> dict:
    """What grew from C{before} to C{after}, by key."""
    grown = {}
    for key, value in after.items():
        delta = value - before.get(key, 0.0)
        if delta:
            grown[key] = delta
    return grown


def families(page) -> set[str]:
    return {name for name, _ in page}


# -- clients ------------------------------------------------------------------


def _exchange(conn, method, target, headers, body):
    try:
        conn.request(method, target, body=body, headers=headers)
        response = conn.getresponse()
        return response.status, dict(response.getheaders()), response.read()
    finally:
        conn.close()


def https_request(
    agent: AgentProcess,
    method: str,
    target: str,
    authorization: str | None = None,
    body: bytes | None = None,
) -> tuple[int, dict[str, str], bytes]:
    """One request to the agent's TLS port, verifying its test CA."""
    context = ssl.create_default_context(cafile=agent.ca_path)
    conn = http.client.HTTPSConnection(
        "127.0.0.1", agent.port, timeout=TIMEOUT, context=context
    )
    headers = {"Content-Type": "application/json"} if body is not None else {}
    if authorization is not None:
        headers["Authorization"] = authorization
    return _exchange(conn, method, target, headers, body)


def _exchange_keep_alive(conn, target: str, authorization: str):
    """A GET on C{conn} that leaves it open, idle, for the next request."""
    conn.request("GET", target, headers={"Authorization": authorization})
    response = conn.getresponse()
    return response.status, dict(response.getheaders()), response.read()


def unix_get(path: str, target: str) -> tuple[int, dict[str, str], bytes]:
    """A plain HTTP GET over the UNIX socket at C{path}."""
    return _exchange(UnixHTTPConnection(path, TIMEOUT), "GET", target, {}, None)


def http_get_json(port: int, target: str):
    """A GET of Prometheus's HTTP API on 127.0.0.1 (no proxy from the
    environment can come between)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    status, _, body = _exchange(conn, "GET", target, {}, None)
    if status != 200:
        raise AssertionError(f"GET {target}: {status} {body[:300]!r}")
    return json.loads(body)


def run(argv, env, timeout: float = TIMEOUT) -> subprocess.CompletedProcess:
    return subprocess.run(
        argv,
        capture_output=True,
        env=env,
        stdin=subprocess.DEVNULL,
        timeout=timeout,
        check=False,
    )


# -- the access log -----------------------------------------------------------


def route_of_target(target: str) -> str:
    """The route label of a request target, for the few routes these tests
    use: no API version prefix, no query, a container's id or name as
    C{{id}}."""
    path = urlsplit(target).path
    path = _VERSION.sub("", path)
    return _CONTAINER.sub("/containers/{id}", path)


def access_events(agent: AgentProcess, offset: int, end: int) -> list[dict]:
    """
    The access-log events (`--log-format json`) the agent wrote to its
    stdout between byte C{offset} and byte C{end}.
    """
    text = agent.read_stdio(offset)[: end - offset]
    events = []
    for line in text.splitlines():
        try:
            event = json.loads(line)
        except ValueError:
            continue
        if event.get("namespace") == "haven_agent.requests" and "method" in event:
            events.append(event)
    return events


def answered(events: list[dict]) -> list[dict]:
    """The events that end a request (not "stream opened")."""
    return [e for e in events if e.get("event") != "stream opened"]


def closed_by(event: dict) -> str:
    """The C{closed_by} label of a "stream closed, first by ..." outcome."""
    side = event["outcome"].rpartition("first by ")[2]
    for label in ("client", "docker"):
        if side.startswith(label):
            return label
    return "agent"


class MetricsCase(TestCase):
    """The shared dockerd, agents started per test, and scrapes."""

    timeout = 300
    maxDiff = None

    @inlineCallbacks
    def setUp(self):
        self.dockerd = yield deferToThread(require, shared_dockerd)

    @inlineCallbacks
    def start_agent(self, *extra_args: str):
        """A new agent (text logs unless C{extra_args} say otherwise);
        stopped after the test, and its log must stay clean."""
        agent = AgentProcess(self.dockerd.socket_path, extra_args=extra_args)
        self.addCleanup(deferToThread, agent.cleanup)
        try:
            yield deferToThread(agent.start)
        except AgentStartError as e:
            self.fail(f"the agent did not start:\n{e}")
        self.addCleanup(self._check_agent, agent)
        return agent

    def _check_agent(self, agent: AgentProcess) -> None:
        output = agent.read_log() + agent.read_stdio()
        match = AGENT_LOG_PROBLEMS.search(output)
        if match:
            start = max(0, output.rfind("\n", 0, max(0, match.start() - 600)))
            self.fail(
                "the agent logged an unhandled error during this test:\n"
                + output_tail(output[start : start + 4000], 4000)
            )
        if not agent.is_running():
            self.fail(f"the agent process died during this test:\n{agent.logs()}")

    @inlineCallbacks
    def scrape(self, agent: AgentProcess):
        """The TLS port's metrics page, as the admin, parsed."""
        status, headers, body = yield deferToThread(
            https_request, agent, "GET", "/_agent/metrics", agent.authorization()
        )
        self.assertEqual(status, 200, body[:500])
        self.assertEqual(
            headers.get("Content-Type"), "text/plain; version=0.0.4; charset=utf-8"
        )
        return parse_page(body.decode())

    @inlineCallbacks
    def docker(self, agent: AgentProcess, *args: str):
        """The docker CLI through C{agent} as the admin; it must succeed."""
        env, cli = agent.docker_cli_env_and_args()
        proc = yield deferToThread(run, ["docker", *cli, *args], env)
        self.assertEqual(
            proc.returncode,
            0,
            f"docker {' '.join(args)} failed: {output_tail(proc.stderr)}\n"
            + output_tail(agent.logs(), 4000),
        )
        return proc

    def unique(self, what: str) -> str:
        return f"hve2e-{what}-{secrets.token_hex(4)}"


class TrafficTests(MetricsCase):
    """The counters of the TLS port's page against the traffic served."""

    @inlineCallbacks
    def settled(self, agent: AgentProcess, offset: int):
        """
        Wait until every stream opened since C{offset} has closed, as the
        access log says (a stream is counted when it closes, which may be
        after its client exited); return the log's end then.
        """
        deadline = time.monotonic() + SETTLE_TIMEOUT
        while True:
            end = agent.stdio_size()
            events = access_events(agent, offset, end)
            opened = sum(e.get("event") == "stream opened" for e in events)
            closed = sum(e.get("hijacked") is True for e in answered(events))
            if opened == closed:
                return end
            if time.monotonic() > deadline:
                self.fail(
                    f"{opened} streams opened, {closed} closed after "
                    f"{SETTLE_TIMEOUT:.0f} s:\n{output_tail(agent.logs(), 4000)}"
                )
            yield deferToThread(time.sleep, 0.1)

    @inlineCallbacks
    def test_cli_traffic_counted(self):
        """
        What the docker CLI did through the agent is counted by method,
        route, code and user, exactly as the access log lists it; the
        attach and logs streams are counted closed, none is left open, and
        dockerd is up.
        """
        agent = yield self.start_agent("--log-format", "json")
        offset = agent.stdio_size()
        before = yield self.scrape(agent)

        for _ in range(3):
            yield self.docker(agent, "ps")
        proc = yield self.docker(
            agent, "run", "--rm", "--network", "none", IMAGE, "echo", "hi"
        )
        self.assertEqual(proc.stdout, b"hi\n")
        name = self.unique("logs")
        self.addCleanup(deferToThread, self.dockerd.docker, "rm", "-f", name)
        yield self.docker(
            agent, "run", "--name", name, "--network", "none", IMAGE, "echo", "hi"
        )
        proc = yield self.docker(agent, "logs", name)
        self.assertEqual(proc.stdout, b"hi\n")

        end = yield self.settled(agent, offset)
        after = yield self.scrape(agent)
        events = answered(access_events(agent, offset, end))
        log = output_tail(agent.read_stdio(offset), 6000)

        # The access log's requests, by the labels the page counts them by.
        served = Counter(
            (e["method"], route_of_target(e["path"]), str(e["status"]), e["user"])
            for e in events
        )
        counted = growth(requests(before), requests(after))
        self.assertEqual(counted, dict(served), f"the access log:\n{log}")

        # What the CLI's calls are known to be, whatever the log says.
        self.assertEqual(counted[("GET", "/containers/json", "200", "admin")], 3)
        self.assertEqual(counted[("POST", "/containers/create", "201", "admin")], 2)
        self.assertEqual(
            counted[("POST", "/containers/{id}/attach", "101", "admin")], 2
        )
        self.assertEqual(counted[("GET", "/containers/{id}/logs", "200", "admin")], 1)
        self.assertGreaterEqual(counted[("HEAD", "/_ping", "200", "admin")], 5)
        # The first scrape is counted in the second.
        self.assertEqual(counted[("GET", "/_agent/metrics", "200", "admin")], 1)

        # Streams: both attaches and the logs answer, closed by the side
        # the access log names; nothing open once they have all ended.
        attaches = Counter(
            closed_by(e) for e in events if "/attach" in e["path"] and e["hijacked"]
        )
        self.assertEqual(sum(attaches.values()), 2, log)
        for side in ("client", "docker", "agent"):
            name_ = "haven_agent_streams_closed_total"
            self.assertEqual(
                sample(after, name_, kind="attach", closed_by=side)
                - sample(before, name_, kind="attach", closed_by=side),
                attaches[side],
                f"attach streams closed by {side}",
            )
        self.assertEqual(
            total(after, "haven_agent_streams_closed_total", kind="logs")
            - total(before, "haven_agent_streams_closed_total", kind="logs"),
            1,
        )
        self.assertEqual(total(after, "haven_agent_open_streams"), 0)

        # Each connection is counted and shook hands: those of the log's
        # requests but the first scrape's (in `before`), and the second
        # scrape's, which is not in the log yet.
        peers = {e["peer"] for e in events}
        connections = sample(after, "haven_agent_connections_total") - sample(
            before, "haven_agent_connections_total"
        )
        handshakes = sample(
            after, "haven_agent_tls_handshakes_total", outcome="ok"
        ) - sample(before, "haven_agent_tls_handshakes_total", outcome="ok")
        self.assertGreaterEqual(connections, len(peers))
        self.assertEqual(handshakes, connections)

        self.assertEqual(sample(after, "haven_agent_docker_up"), 1)
        self.assertEqual(
            [dict(ls) for n, ls in after if n == "haven_agent_build_info"][0][
                "version"
            ],
            __version__,
        )
        self.assertEqual(
            [v for (n, _), v in after.items() if n == "haven_agent_build_info"], [1]
        )

    @inlineCallbacks
    def test_refusals_counted(self):
        """
        A wrong password and no credentials are each counted once by
        reason, with the refused request under an empty user; the refused
        volume was never made on dockerd, while the admin's was. The
        read-only account is refused the page, and counted so.
        """
        agent = yield self.start_agent(
            "--readonly-user", VIEWER, "--readonly-password", VIEWER_PASSWORD
        )
        volume = self.unique("vol")
        self.addCleanup(
            deferToThread, self.dockerd.docker, "volume", "rm", "-f", volume
        )
        body = json.dumps({"Name": volume}).encode()
        failures = "haven_agent_auth_failures_total"

        before = yield self.scrape(agent)
        status, _, answer = yield deferToThread(
            https_request,
            agent,
            "POST",
            "/volumes/create",
            agent.authorization("not-the-password"),
            body,
        )
        self.assertEqual(status, 401, answer)
        after = yield self.scrape(agent)
        self.assertEqual(
            growth(before, after).get(
                (failures, frozenset({("reason", "wrong_credentials")}))
            ),
            1,
        )
        self.assertEqual(
            growth(requests(before), requests(after)),
            {
                ("POST", "/volumes/create", "401", ""): 1,
                ("GET", "/_agent/metrics", "200", "admin"): 1,
            },
        )
        status, answer = yield deferToThread(
            self.dockerd.api_request, "GET", f"/volumes/{quote(volume)}"
        )
        self.assertEqual(status, 404, f"dockerd made the refused volume: {answer!r}")

        # No credentials at all: another reason.
        status, _, answer = yield deferToThread(
            https_request, agent, "GET", "/_agent/metrics"
        )
        self.assertEqual(status, 401, answer)
        # The read-only account may not read the page.
        status, _, answer = yield deferToThread(
            https_request,
            agent,
            "GET",
            "/_agent/metrics",
            basic_auth(VIEWER, VIEWER_PASSWORD),
        )
        self.assertEqual(status, 403, answer)
        self.assertNotIn(b"haven_agent_", answer)
        last = yield self.scrape(agent)
        self.assertEqual(
            sample(last, failures, reason="no_credentials")
            - sample(after, failures, reason="no_credentials"),
            1,
        )
        self.assertEqual(
            sample(last, failures, reason="wrong_credentials"),
            sample(after, failures, reason="wrong_credentials"),
        )
        self.assertEqual(
            growth(requests(after), requests(last)),
            {
                ("GET", "/_agent/metrics", "401", ""): 1,
                ("GET", "/_agent/metrics", "403", VIEWER): 1,
                ("GET", "/_agent/metrics", "200", "admin"): 1,
            },
        )

        # The same request with the right password does make the volume:
        # the check above can see one.
        status, _, answer = yield deferToThread(
            https_request,
            agent,
            "POST",
            "/volumes/create",
            agent.authorization(),
            body,
        )
        self.assertEqual(status, 201, answer)
        status, answer = yield deferToThread(
            self.dockerd.api_request, "GET", f"/volumes/{quote(volume)}"
        )
        self.assertEqual(status, 200, answer)

    @inlineCallbacks
    def scrape_until(self, agent: AgentProcess, wanted, what: str):
        """Scrape until C{wanted(page)} holds; then that page."""
        deadline = time.monotonic() + SETTLE_TIMEOUT
        while True:
            page = yield self.scrape(agent)
            if wanted(page):
                return page
            if time.monotonic() > deadline:
                self.fail(
                    f"no scrape showed {what} within {SETTLE_TIMEOUT:.0f} s:\n"
                    + output_tail(agent.logs(), 4000)
                )
            yield deferToThread(time.sleep, 0.2)

    @inlineCallbacks
    def open_events_stream(self, agent: AgentProcess):
        """
        `docker events` through C{agent}, killed after the test; then the
        process and the first page that shows its stream open.
        """
        env, cli = agent.docker_cli_env_and_args()
        events = popen_until_cleanup(
            self, ["docker", *cli, "events", "--filter", "type=container"], env
        )

        def streaming(page):
            return sample(page, "haven_agent_open_streams", kind="events") == 1

        page = yield self.scrape_until(agent, streaming, "an open events stream")
        return events, page

    @inlineCallbacks
    def kill_events_stream(self, agent: AgentProcess, events: subprocess.Popen):
        """Kill the `docker events` client; then the first page that shows
        no stream open."""
        events.kill()
        yield deferToThread(events.wait, TIMEOUT)

        def ended(page):
            return total(page, "haven_agent_open_streams") == 0

        page = yield self.scrape_until(agent, ended, "no open stream")
        return page

    @inlineCallbacks
    def test_open_stream_and_connections(self):
        """
        While `docker events` streams through the agent, an events stream
        and a connection in the stream state are open, beside an idle
        keep-alive connection (http) and one that never sent a request
        (unauthenticated); once the client is gone the stream and its
        request are counted, and none is open.
        """
        agent = yield self.start_agent()
        before = yield self.scrape(agent)
        silent = yield deferToThread(agent.tls_socket)
        self.addCleanup(silent.close)
        context = ssl.create_default_context(cafile=agent.ca_path)
        idle = http.client.HTTPSConnection(
            "127.0.0.1", agent.port, timeout=TIMEOUT, context=context
        )
        self.addCleanup(idle.close)
        status, _, answer = yield deferToThread(
            _exchange_keep_alive, idle, "/_ping", agent.authorization()
        )
        self.assertEqual((status, answer), (200, b"OK"))

        events, during = yield self.open_events_stream(agent)
        connections = "haven_agent_open_connections"
        self.assertEqual(sample(during, connections, state="stream"), 1)
        self.assertGreaterEqual(sample(during, connections, state="http"), 1)
        self.assertGreaterEqual(sample(during, connections, state="unauthenticated"), 1)
        self.assertEqual(total(during, "haven_agent_open_streams"), 1)

        after = yield self.kill_events_stream(agent, events)
        closed = "haven_agent_streams_closed_total"
        self.assertEqual(
            total(after, closed, kind="events") - total(before, closed, kind="events"),
            1,
        )
        self.assertEqual(total(after, closed), total(before, closed) + 1)
        self.assertEqual(sample(after, connections, state="stream"), 0)
        self.assertEqual(
            requests(after).get(("GET", "/events", "200", "admin")), 1, agent.logs()
        )

    @inlineCallbacks
    def test_stream_ended_by_client_counted_so(self):
        """
        An events stream whose client is killed is counted closed by the
        client, though dockerd ends the answer once it sees its input end.
        """
        agent = yield self.start_agent()
        before = yield self.scrape(agent)
        events, _ = yield self.open_events_stream(agent)
        after = yield self.kill_events_stream(agent, events)
        closed = "haven_agent_streams_closed_total"
        self.assertEqual(
            {
                dict(labels)["closed_by"]: value
                for (name, labels), value in growth(before, after).items()
                if name == closed
            },
            {"client": 1},
            output_tail(agent.logs(), 4000),
        )

    @inlineCallbacks
    def test_scraping_connection_counted_authenticated(self):
        """
        The admin's scrape, with nothing else connected, sees its own
        connection as an authenticated (http) one, not unauthenticated.
        """
        agent = yield self.start_agent()
        # The start-up probe's connection has closed by the second scrape.
        yield self.scrape(agent)
        page = yield self.scrape(agent)
        connections = "haven_agent_open_connections"
        self.assertEqual(
            (
                sample(page, connections, state="unauthenticated"),
                sample(page, connections, state="http"),
            ),
            (0, 1),
        )


class LocalListenerTests(MetricsCase):
    """`--metrics-listen` on a UNIX socket."""

    def socket_path(self) -> str:
        path = short_socket_path()
        self.addCleanup(shutil.rmtree, os.path.dirname(path), True)
        return path

    @inlineCallbacks
    def local_page(self, path: str, target: str = "/metrics"):
        status, headers, body = yield deferToThread(unix_get, path, target)
        self.assertEqual(status, 200, body[:500])
        self.assertEqual(
            headers.get("Content-Type"), "text/plain; version=0.0.4; charset=utf-8"
        )
        return parse_page(body.decode())

    @inlineCallbacks
    def test_unix_socket_serves_the_page(self):
        """
        Plain `GET /metrics` over the socket answers the TLS port's series,
        node_* included, with the same request counts (the TLS scrape just
        before it counted); `/_agent/metrics` there is the same page, and
        other paths are 404.
        """
        path = self.socket_path()
        agent = yield self.start_agent("--metrics-listen", f"unix:{path}")
        yield self.docker(agent, "ps")
        # The first scrape makes the series of the page's own route.
        yield self.scrape(agent)
        tls = yield self.scrape(agent)
        local = yield self.local_page(path)

        for name in NODE_FAMILIES:
            self.assertIn(name, families(local))
        self.assertEqual(families(local), families(tls))
        own = {key for key in tls if key[0].startswith("haven_agent_")}
        self.assertEqual({k for k in local if k[0].startswith("haven_agent_")}, own)
        counts = requests(tls)
        scrape = ("GET", "/_agent/metrics", "200", "admin")
        counts[scrape] = counts.get(scrape, 0) + 1
        self.assertEqual(requests(local), counts)
        self.assertEqual(
            requests(local)[("GET", "/containers/json", "200", "admin")], 1
        )
        self.assertEqual(sample(local, "haven_agent_docker_up"), 1)

        again = yield self.local_page(path, "/_agent/metrics")
        self.assertEqual(families(again), families(local))
        self.assertEqual(requests(again), requests(local))
        status, _, _ = yield deferToThread(unix_get, path, "/other")
        self.assertEqual(status, 404)

    @inlineCallbacks
    def test_no_node_metrics(self):
        """With `--no-node-metrics` neither page has a node_* series, and the
        agent's own are all there."""
        path = self.socket_path()
        agent = yield self.start_agent(
            "--metrics-listen", f"unix:{path}", "--no-node-metrics"
        )
        local = yield self.local_page(path)
        tls = yield self.scrape(agent)
        for page in (local, tls):
            self.assertEqual(
                sorted(n for n in families(page) if n.startswith("node_")), []
            )
            self.assertIn("haven_agent_docker_up", families(page))
            self.assertIn("haven_agent_build_info", families(page))
            self.assertIn("process_start_time_seconds", families(page))


#: The scrape configuration of docs/metrics.md, scraping every second.
SCRAPE_CONFIG = """\
global:
  scrape_interval: 1s
  scrape_timeout: 1s
scrape_configs:
  - job_name: haven-agent
    scheme: https
    metrics_path: /_agent/metrics
    basic_auth:
      username: {user}
      password_file: {password_file}
    tls_config:
      ca_file: {ca_file}
    static_configs:
      - targets: ["127.0.0.1:{port}"]
"""


class PrometheusTests(MetricsCase):
    """A real Prometheus server scraping the agent's TLS port."""

    @inlineCallbacks
    def setUp(self):
        if not os.access(PROMETHEUS, os.X_OK):
            raise unittest.SkipTest(
                f"{PROMETHEUS} not found: Debian's prometheus package is not "
                "installed (apt-get install prometheus)"
            )
        yield super().setUp()

    def start_prometheus(self, agent: AgentProcess) -> tuple[int, str]:
        """Prometheus scraping C{agent}, stopped after the test; returns its
        port and the path of its log."""
        directory = os.path.abspath(self.mktemp())
        os.makedirs(directory)
        password_file = os.path.join(directory, "password")
        fd = os.open(password_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(agent.password + "\n")
        config = os.path.join(directory, "prometheus.yml")
        with open(config, "w") as f:
            f.write(
                SCRAPE_CONFIG.format(
                    user=agent.user,
                    password_file=json.dumps(password_file),
                    ca_file=json.dumps(agent.ca_path),
                    port=agent.port,
                )
            )
        port = free_port()
        log_path = os.path.join(directory, "prometheus.log")
        with open(log_path, "wb") as log:
            process = subprocess.Popen(
                [
                    PROMETHEUS,
                    f"--config.file={config}",
                    f"--storage.tsdb.path={os.path.join(directory, 'data')}",
                    f"--web.listen-address=127.0.0.1:{port}",
                ],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=clean_docker_env(),
                cwd=directory,
            )
        self.addCleanup(deferToThread, stop_process, process, 15)
        self.prometheus = process
        return port, log_path

    def prometheus_log(self, log_path: str) -> str:
        with open(log_path, "rb") as f:
            return output_tail(f.read(), 4000)

    def wait_up(self, port: int, log_path: str) -> dict:
        """
        Poll Prometheus until its one target is up; then the target. Fails
        with the target's lastError if it never is.
        """
        deadline = time.monotonic() + TIMEOUT
        target, problem = None, "no answer yet"
        while time.monotonic() < deadline and self.prometheus.poll() is None:
            try:
                active = http_get_json(port, "/api/v1/targets")["data"]["activeTargets"]
            except (OSError, ValueError, KeyError, AssertionError) as e:
                problem = repr(e)
            else:
                target = active[0] if len(active) == 1 else None
                if target is not None and target["health"] == "up":
                    return target
                problem = f"active targets {active!r}"
            time.sleep(0.5)
        last = (target or {}).get("lastError")
        raise self.failureException(
            f"Prometheus's target was not up within {TIMEOUT:.0f} s (Prometheus "
            f"exit status {self.prometheus.poll()}); the target's lastError: "
            f"{last!r}; last seen: {problem}\nPrometheus log:\n"
            + self.prometheus_log(log_path)
        )

    def wait_query(self, port: int, log_path: str, query: str, wanted) -> list:
        """
        Poll Prometheus's instant C{query} until C{wanted(result)} holds;
        then the result.
        """
        deadline = time.monotonic() + TIMEOUT
        result = None
        while time.monotonic() < deadline and self.prometheus.poll() is None:
            try:
                answer = http_get_json(port, "/api/v1/query?query=" + quote(query))
                result = answer["data"]["result"]
            except (OSError, ValueError, KeyError, AssertionError) as e:
                result = repr(e)
            else:
                if wanted(result):
                    return result
            time.sleep(0.5)
        raise self.failureException(
            f"Prometheus's {query} did not answer as wanted within "
            f"{TIMEOUT:.0f} s; last answer: {result!r}\nPrometheus log:\n"
            + self.prometheus_log(log_path)
        )

    @inlineCallbacks
    def test_prometheus_scrapes_agent(self):
        """
        Prometheus scrapes the agent over HTTPS with Basic auth and the
        agent's CA: the target is up, the build info and dockerd's state
        can be queried, and the agent counts Prometheus's scrapes as the
        admin's.
        """
        agent = yield self.start_agent()
        port, log_path = self.start_prometheus(agent)
        target = yield deferToThread(self.wait_up, port, log_path)
        self.assertEqual(target["scrapeUrl"], f"{agent.https_url}/_agent/metrics")
        self.assertEqual(target["labels"]["job"], "haven-agent")

        def one(value):
            return lambda result: [r["value"][1] for r in result] == [value]

        info = yield deferToThread(
            self.wait_query, port, log_path, "haven_agent_build_info", one("1")
        )
        self.assertEqual(info[0]["metric"]["version"], __version__)
        yield deferToThread(
            self.wait_query, port, log_path, "haven_agent_docker_up", one("1")
        )
        # Two of its scrapes counted, the later one seen by a third.
        yield deferToThread(
            self.wait_query,
            port,
            log_path,
            'haven_agent_http_requests_total{route="/_agent/metrics",code="200",'
            'user="admin"} >= 2',
            lambda result: len(result) == 1,
        )
