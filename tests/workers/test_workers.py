"""
Tests for `--workers N`: L{haven_agent.proxy.reuse_port}, L{haven_agent.workers.pool}
and L{haven_agent.workers.worker}.

The process tests run the agent as a real `twistd haven-agent` in front of
the fake dockerd served by this test's reactor, which tells the processes
apart by the peer credentials (SO_PEERCRED) of the connections it accepts.
Clients run in threads so the reactor keeps serving the fake meanwhile.
"""

from __future__ import annotations

import io
import os
import shutil
import signal
import socket
import struct
import time

import psutil
from prometheus_client.parser import text_string_to_metric_families
from twisted.internet import reactor
from twisted.internet.defer import inlineCallbacks
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import deferLater
from twisted.internet.threads import deferToThread
from twisted.logger import LogLevel
from twisted.python import usage
from twisted.trial.unittest import TestCase

from haven_agent.config import ProxyConfig
from haven_agent.proxy.reuse_port import (
    ListenAddress,
    ReusePortListener,
    listen_addresses,
)
from haven_agent.tap import Options
from haven_agent.workers.pool import LineRelay, read_worker_spec, worker_spec
from tests.e2e_agent import AgentProcess, read_until_closed
from tests.fake_dockerd import FakeDockerdFactory, short_socket_path


class ListenAddressTests(TestCase):
    def test_tcp(self):
        self.assertEqual(
            listen_addresses(("tcp:8771", "tcp:port=1:interface=127.0.0.1:backlog=5")),
            [
                ListenAddress(socket.AF_INET, "", 8771, 50),
                ListenAddress(socket.AF_INET, "127.0.0.1", 1, 5),
            ],
        )

    def test_tcp6(self):
        self.assertEqual(
            listen_addresses((r"tcp6:8771:interface=\:\:1",)),
            [ListenAddress(socket.AF_INET6, "::1", 8771, 50)],
        )

    def test_notTCP(self):
        for description in ("unix:/tmp/x.sock", "nonsense:1", "tcp:x"):
            self.assertRaises(ValueError, listen_addresses, (description,))


class OptionsTests(TestCase):
    def parse(self, *args, environ=None):
        options = Options(environ=environ or {})
        options.parseOptions(list(args))
        return options.config

    def test_default(self):
        self.assertEqual(self.parse().workers, 1)

    def test_fromEnvironment(self):
        self.assertEqual(self.parse(environ={"HAVEN_AGENT_WORKERS": "3"}).workers, 3)

    def test_bad(self):
        for value in ("0", "-1", "two", "65"):
            self.assertRaises(usage.UsageError, self.parse, "--workers", value)

    def test_onlyTCP(self):
        error = self.assertRaises(
            usage.UsageError,
            self.parse,
            "--workers",
            "2",
            "--listen",
            "unix:/tmp/agent.sock",
        )
        self.assertIn("only share TCP listeners", str(error))


class SpecTests(TestCase):
    def test_roundTrip(self):
        config = ProxyConfig(
            listen=("tcp:0",),
            docker="unix:/var/run/docker.sock",
            user="admin",
            password="s3cret",
            passwordIsDefault=False,
            tlsCert=None,
            tlsKey=None,
            stateDir="/var/lib/haven-agent",
            serverNames=("a", "b"),
            readOnlyPassword="ro",
            workers=4,
        )
        addresses = [ListenAddress(socket.AF_INET, "127.0.0.1", 4321, 7)]
        line = worker_spec(config, addresses, "json", 2)
        self.assertTrue(line.endswith(b"\n"))
        self.assertEqual(line.count(b"\n"), 1)
        self.assertEqual(
            read_worker_spec(line), (config, addresses, "json", 2, LogLevel.info)
        )


class LineRelayTests(TestCase):
    def test_wholeLines(self):
        out = io.StringIO()
        relay = LineRelay("worker 1", out)
        relay.feed(b"one\ntw")
        self.assertEqual(out.getvalue(), "one\n")
        relay.feed(b"o\nthree")
        self.assertEqual(out.getvalue(), "one\ntwo\n")
        relay.flush()
        self.assertEqual(out.getvalue(), "one\ntwo\nthree\n")

    def test_overlongLine(self):
        out = io.StringIO()
        relay = LineRelay("worker 1", out)
        relay.feed(b"x" * 70000)
        self.assertEqual(len(out.getvalue()), 70000)

    def test_noFileLogsEvents(self):
        from twisted.logger import globalLogPublisher

        events = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)
        LineRelay("worker 2", None).feed(b"hello\n")
        self.assertIn("hello", [e.get("line") for e in events])


class WorkerProcessOutputTests(TestCase):
    def test_stdoutAndStderrKeptApart(self):
        """
        A partial line on stdout is not completed by bytes from stderr.
        """
        from twisted.internet.task import Clock

        from haven_agent.workers.pool import WorkerProcess

        class Pool:
            logOutput = io.StringIO()
            clock = Clock()
            renderMetrics = None

        worker = WorkerProcess(Pool, 1)
        worker.outReceived(b"GET /_ping: do")
        worker.errReceived(b"Traceback (most recent call last):\n")
        worker.outReceived(b"ne\n")
        self.assertEqual(
            Pool.logOutput.getvalue(),
            "Traceback (most recent call last):\nGET /_ping: done\n",
        )


class RestartDelayTests(TestCase):
    def test_quickFailuresBackOff(self):
        """
        A worker that keeps failing at once waits 1, 2, 4, ... s, at most
        30 s; one that ran a while starts over at 1 s.
        """
        from twisted.internet.task import Clock
        from twisted.python.failure import Failure

        from haven_agent.workers.pool import WorkerPool, WorkerProcess

        clock = Clock()
        config = ProxyConfig(
            listen=("tcp:0",),
            docker="unix:/var/run/docker.sock",
            user="admin",
            password="pw",
            passwordIsDefault=False,
            tlsCert=None,
            tlsKey=None,
            stateDir="/tmp",
            serverNames=(),
        )
        pool = WorkerPool(config, [], "text", 1, clock)
        delays = []
        for ran in (0, 0, 0, 0, 0, 0, 0, 31, 0):
            worker = WorkerProcess(pool, 1)
            clock.advance(ran)
            pool.workerEnded(worker, Failure(RuntimeError("gone")))
            restart = pool._restarts.pop(1)
            delays.append(restart.getTime() - clock.seconds())
            restart.cancel()
        self.assertEqual(delays, [1, 2, 4, 8, 16, 30, 30, 1, 2])


class ReusePortListenerTests(TestCase):
    def test_twoListenersOnePort(self):
        """
        Two listeners bind the same port, the second on the first's real
        port; connections reach one of them.
        """
        accepted = []

        class Accept(Protocol):
            def connectionMade(self):
                accepted.append(self.factory)
                self.transport.loseConnection()

        factories = [Factory.forProtocol(Accept) for _ in range(2)]
        first = ReusePortListener(
            ListenAddress(socket.AF_INET, "127.0.0.1", 0, 50), factories[0], reactor
        )
        first.privilegedStartService()
        first.startService()
        self.addCleanup(first.stopService)
        second = ReusePortListener(
            first.address.bound(first.port), factories[1], reactor
        )
        second.privilegedStartService()
        second.startService()
        self.addCleanup(second.stopService)
        self.assertEqual(second.port, first.port)

        def connect():
            for _ in range(20):
                socket.create_connection(("127.0.0.1", first.port)).close()

        return deferToThread(connect).addCallback(
            lambda _: deferLater(reactor, 0.2, lambda: None)
        )

    def test_portInUse(self):
        """
        A port held by a socket without SO_REUSEPORT cannot be shared.
        """
        holder = socket.socket()
        self.addCleanup(holder.close)
        holder.bind(("127.0.0.1", 0))
        holder.listen(1)
        listener = ReusePortListener(
            ListenAddress(socket.AF_INET, "127.0.0.1", holder.getsockname()[1], 50),
            Factory.forProtocol(Protocol),
            reactor,
        )
        self.assertRaises(OSError, listener.privilegedStartService)


class PeerRecordingFake(FakeDockerdFactory):
    """
    The fake dockerd, noting the process id behind each connection.
    """

    def buildProtocol(self, addr):
        protocol = super().buildProtocol(addr)
        made = protocol.connectionMade

        def connectionMade():
            credentials = protocol.transport.socket.getsockopt(
                socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i")
            )
            self.peer_pids.append(struct.unpack("3i", credentials)[0])
            made()

        protocol.connectionMade = connectionMade
        return protocol


def ping(agent: AgentProcess) -> tuple[int, bytes]:
    """
    GET /_ping on a new TLS connection; the status and body.
    """
    with agent.tls_socket() as tls:
        tls.sendall(
            b"GET /_ping HTTP/1.1\r\nHost: docker\r\nConnection: close\r\n"
            b"Authorization: " + agent.authorization().encode() + b"\r\n\r\n"
        )
        answer = read_until_closed(tls)
    head, _, body = answer.partition(b"\r\n\r\n")
    return int(head.split(b" ", 2)[1]), body


def scrape(agent: AgentProcess) -> float:
    """
    GET /_agent/metrics on a new TLS connection: the /_ping requests
    answered 200, as the page says.
    """
    with agent.tls_socket() as tls:
        tls.sendall(
            b"GET /_agent/metrics HTTP/1.1\r\nHost: docker\r\n"
            b"Authorization: " + agent.authorization().encode() + b"\r\n\r\n"
        )
        answer = read_until_closed(tls)
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 "), head
    return sum(
        sample.value
        for family in text_string_to_metric_families(body.decode())
        for sample in family.samples
        if sample.name == "haven_agent_http_requests_total"
        and sample.labels["route"] == "/_ping"
        and sample.labels["code"] == "200"
    )


def workers_of(agent: AgentProcess) -> list[psutil.Process]:
    return [
        child
        for child in psutil.Process(agent.process.pid).children()
        if "haven_agent.workers.worker" in " ".join(child.cmdline())
    ]


class WorkerProcessTests(TestCase):
    """
    A real agent with three processes in front of the fake dockerd.
    """

    timeout = 120

    def setUp(self):
        path = short_socket_path()
        self.addCleanup(shutil.rmtree, os.path.dirname(path), True)
        self.fake = PeerRecordingFake()
        self.fake.peer_pids = []
        port = reactor.listenUNIX(path, self.fake)
        self.addCleanup(port.stopListening)
        self.agent = AgentProcess(
            path, extra_args=("--workers", "3", "--shutdown-grace", "1")
        )
        self.addCleanup(self.agent.cleanup)
        self.addCleanup(self.agent.stop)
        self.agent.start()
        return self.waitFor(lambda: len(self.logLines("serving")) == 3)

    @inlineCallbacks
    def waitFor(self, condition, seconds=30.0):
        deadline = time.monotonic() + seconds
        while not condition():
            if time.monotonic() > deadline:
                self.fail(f"not true within {seconds} s: {condition}")
            yield deferLater(reactor, 0.1, lambda: None)

    def logLines(self, text):
        return [line for line in self.agent.logs().splitlines() if text in line]

    @inlineCallbacks
    def test_connectionsSpreadOverProcesses(self):
        """
        Every request is answered; the connections to dockerd come from more
        than one process, all of them the agent's; every process's access
        log lines are in the agent's one log, whole.
        """
        pids = {self.agent.process.pid} | {w.pid for w in workers_of(self.agent)}
        answers = []
        for _ in range(40):
            answers.append((yield deferToThread(ping, self.agent)))
        self.assertEqual(answers, [(200, b"OK")] * 40)
        self.assertLessEqual(set(self.fake.peer_pids), pids)
        self.assertGreater(len(set(self.fake.peer_pids)), 1)
        yield self.waitFor(lambda: len(self.logLines("GET /_ping:")) == 40)
        for line in self.logLines("GET /_ping"):
            self.assertRegex(line, r"^\S+ \[haven_agent\.requests#info\] 127\.0\.0\.1")

    @inlineCallbacks
    def test_metricsSumOverProcesses(self):
        """
        Whichever process a scrape reaches, it answers the sum over all
        three: every request counted once.
        """
        for _ in range(30):
            yield deferToThread(ping, self.agent)
        yield self.waitFor(lambda: len(self.logLines("GET /_ping:")) == 30)
        counts = []
        for _ in range(8):
            counts.append((yield deferToThread(scrape, self.agent)))
        self.assertEqual(counts, [30] * 8)

    @inlineCallbacks
    def test_workerRestarted(self):
        """
        A worker that dies is started again, and the agent keeps answering;
        the requests it counted stay in the sum.
        """
        for _ in range(20):
            yield deferToThread(ping, self.agent)
        yield self.waitFor(lambda: len(self.logLines("GET /_ping:")) == 20)
        before = yield deferToThread(scrape, self.agent)
        self.assertEqual(before, 20)
        victim = workers_of(self.agent)[0]
        victim.kill()
        yield self.waitFor(lambda: self.logLines("starting it again"))
        yield self.waitFor(
            lambda: (
                len(workers_of(self.agent)) == 2
                and victim.pid not in {w.pid for w in workers_of(self.agent)}
            )
        )
        status, _ = yield deferToThread(ping, self.agent)
        self.assertEqual(status, 200)
        yield self.waitFor(lambda: len(self.logLines("GET /_ping:")) == 21)
        after = yield deferToThread(scrape, self.agent)
        self.assertEqual(after, 21)

    @inlineCallbacks
    def test_sighupReachesWorkers(self):
        """
        SIGHUP reloads the certificate in every process.
        """
        self.agent.process.send_signal(signal.SIGHUP)
        yield self.waitFor(lambda: len(self.logLines("SIGHUP: reloading")) == 3)

    @inlineCallbacks
    def test_sigtermStopsWorkers(self):
        workers = workers_of(self.agent)
        self.agent.process.send_signal(signal.SIGTERM)
        yield self.waitFor(lambda: self.agent.process.poll() is not None)
        # twistd stops cleanly, then ends by the signal it stopped on, so
        # the exit status says why.
        self.assertEqual(self.agent.process.returncode, -signal.SIGTERM)
        yield self.waitFor(lambda: not any(w.is_running() for w in workers))

    @inlineCallbacks
    def test_workersEndWithTheAgent(self):
        """
        Workers do not outlive an agent killed without a chance to stop them.
        """
        workers = workers_of(self.agent)
        self.agent.process.kill()
        yield self.waitFor(lambda: self.agent.process.poll() is not None)
        yield self.waitFor(
            lambda: (
                not any(
                    w.is_running() and w.status() != psutil.STATUS_ZOMBIE
                    for w in workers
                )
            )
        )
