"""
Tests for `--metrics-listen`: the options that allow it only on this host
(L{haven_agent.tap}), and the plain HTTP page
(L{haven_agent.metrics.local_listener}) on a real UNIX socket.
"""

from __future__ import annotations

import os
import shutil
import socket

from twisted.internet import reactor
from twisted.internet.defer import fail, inlineCallbacks, succeed
from twisted.internet.threads import deferToThread
from twisted.python import usage
from twisted.trial.unittest import SynchronousTestCase, TestCase

from haven_agent.metrics.local_listener import metrics_site
from tests.fake_dockerd import short_socket_path
from tests.test_tap import parse


def get(path: str, target: bytes) -> bytes:
    client = socket.socket(socket.AF_UNIX)
    client.settimeout(10)
    client.connect(path)
    client.sendall(
        b"GET " + target + b" HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    data = b""
    while chunk := client.recv(65536):
        data += chunk
    client.close()
    return data


class OptionTests(SynchronousTestCase):
    def test_local_endpoints(self) -> None:
        for endpoint in (
            "unix:/run/haven-agent/metrics.sock",
            "tcp:9771:interface=127.0.0.1",
            "tcp6:9771:interface=\\:\\:1",
        ):
            config = parse(["--metrics-listen", endpoint]).config
            self.assertEqual(config.metricsListen, endpoint)

    def test_network_refused_unless_asked(self) -> None:
        """
        An endpoint the network reaches is refused with the way out named;
        with --metrics-listen-anywhere (or its variable) it is taken.
        """
        for endpoint in ("tcp:9771", "tcp:9771:interface=0.0.0.0"):
            with self.assertRaises(usage.UsageError) as caught:
                parse(["--metrics-listen", endpoint])
            self.assertIn("--metrics-listen-anywhere", str(caught.exception))
        config = parse(["--metrics-listen", "tcp:9771", "--metrics-listen-anywhere"])
        self.assertEqual(config.config.metricsListen, "tcp:9771")
        config = parse(
            environ={
                "HAVEN_AGENT_METRICS_LISTEN": "tcp:9771",
                "HAVEN_AGENT_METRICS_LISTEN_ANYWHERE": "1",
            }
        )
        self.assertEqual(config.config.metricsListen, "tcp:9771")

    def test_not_an_endpoint(self) -> None:
        with self.assertRaises(usage.UsageError) as caught:
            parse(["--metrics-listen", "bogus:thing"])
        self.assertIn("not an endpoint description", str(caught.exception))

    def test_node_metrics_switch(self) -> None:
        self.assertTrue(parse().config.nodeMetrics)
        self.assertFalse(parse(["--no-node-metrics"]).config.nodeMetrics)
        self.assertFalse(
            parse(environ={"HAVEN_AGENT_NO_NODE_METRICS": "yes"}).config.nodeMetrics
        )


class SiteTests(TestCase):
    def listen(self, render) -> str:
        path = short_socket_path()
        self.addCleanup(shutil.rmtree, os.path.dirname(path), True)
        port = reactor.listenUNIX(path, metrics_site(render))
        self.addCleanup(port.stopListening)
        return path

    @inlineCallbacks
    def test_page(self):
        path = self.listen(lambda: succeed(b"haven_agent_docker_up 1.0\n"))
        for target in (b"/metrics", b"/_agent/metrics"):
            answer = yield deferToThread(get, path, target)
            self.assertTrue(answer.startswith(b"HTTP/1.1 200 OK\r\n"), answer)
            self.assertIn(b"text/plain; version=0.0.4", answer)
            self.assertTrue(answer.endswith(b"\r\n\r\nhaven_agent_docker_up 1.0\n"))
        answer = yield deferToThread(get, path, b"/other")
        self.assertTrue(answer.startswith(b"HTTP/1.1 404 "), answer)

    @inlineCallbacks
    def test_rendering_fails(self):
        """
        A page that cannot be rendered is a 500 and one logged failure, not
        a traceback to the client.
        """
        path = self.listen(lambda: fail(ValueError("broken collector")))
        answer = yield deferToThread(get, path, b"/metrics")
        self.assertTrue(answer.startswith(b"HTTP/1.1 500 "), answer)
        self.assertNotIn(b"Traceback", answer)
        self.assertNotIn(b"broken collector", answer)
        self.assertEqual(len(self.flushLoggedErrors(ValueError)), 1)
