"""
Tests for L{haven_agent.healthcheck}, against the real proxy on a real port.
"""

import os

from twisted.internet import reactor
from twisted.internet.defer import inlineCallbacks
from twisted.internet.threads import deferToThread
from twisted.trial.unittest import SynchronousTestCase, TestCase

from haven_agent.healthcheck import ask, target
from haven_agent.proxy.service import Listening, build_proxy_service
from haven_agent.tap import Options
from haven_agent.thread_pools import ThreadPools
from tests.fake_dockerd import FakeDockerdFactory, short_socket_path


class TargetTests(SynchronousTestCase):
    def test_targets(self) -> None:
        self.assertEqual(target("tcp:8771"), ("127.0.0.1", 8771))
        self.assertEqual(target("tcp:9000:interface=10.0.0.5"), ("10.0.0.5", 9000))
        self.assertEqual(target("tcp:port=9001:interface=0.0.0.0"), ("127.0.0.1", 9001))
        self.assertEqual(target(r"tcp6:8771:interface=\:\:"), ("::1", 8771))
        self.assertEqual(target(r"tcp6:port=9:interface=fd00\:\:5"), ("fd00::5", 9))


class AskTests(TestCase):
    def agent(self, dockerPath) -> int:
        options = Options(environ={})
        options.parseOptions(
            [
                "--listen",
                "tcp:0:interface=127.0.0.1",
                "--docker",
                dockerPath,
                "--state-dir",
                self.mktemp(),
                "--password",
                "pw",
            ]
        )
        threads = ThreadPools(reactor)
        service = build_proxy_service(options.config, reactor, threads)
        service.setServiceParent(threads)
        threads.startService()
        self.addCleanup(threads.stopService)
        listener = [s for w in service if isinstance(w, Listening) for s in w][0]
        # Listening on TCP is synchronous; read the port without taking the
        # result away from stopService, which needs it.
        return listener._waitingForPort.result.getHost().port

    @inlineCallbacks
    def test_healthyWithDockerd(self):
        path = short_socket_path()
        self.addCleanup(os.rmdir, os.path.dirname(path))
        listening = reactor.listenUNIX(path, FakeDockerdFactory())
        self.addCleanup(listening.stopListening)
        port = self.agent(path)
        healthy, said = yield deferToThread(ask, "127.0.0.1", port)
        self.assertTrue(healthy, said)
        self.assertEqual(said, '{"status": "ok", "docker": "up"}')

    @inlineCallbacks
    def test_unhealthyWithoutDockerd(self):
        port = self.agent("/nonexistent/docker.sock")
        healthy, said = yield deferToThread(ask, "127.0.0.1", port)
        self.assertFalse(healthy)
        self.assertIn('"docker": "down"', said)
