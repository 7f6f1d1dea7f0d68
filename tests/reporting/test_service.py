"""
Tests for L{haven_agent.reporting.collector} and
L{haven_agent.reporting.service}: one report
gathered from a host tree and a Docker API, and the whole reporting half
running against a fake dockerd API and a fake Haven master on real sockets.
"""

import os
import re
import socket

from twisted.internet import reactor
from twisted.internet.defer import fail, inlineCallbacks, succeed
from twisted.internet.task import Clock, deferLater
from twisted.logger import capturedLogs, formatEvent
from twisted.trial.unittest import SynchronousTestCase, TestCase

from haven_agent.config import ReporterConfig
from haven_agent.reporting.collector import NodeCollector
from haven_agent.reporting.docker_api import DockerUnavailable
from haven_agent.reporting.host_metrics import HostRoot, MountProber
from haven_agent.reporting.service import NodeReporting
from haven_agent.thread_pools import ThreadPools
from tests.fake_docker_api import FakeDockerAPI, serve_fake_docker_api
from tests.fake_master import FakeMaster, listen

STAT_BEFORE = "cpu  100 0 100 800 0 0 0 0 0 0\n"
MEMINFO = (
    "MemTotal:       1000000 kB\nMemFree:         200000 kB\n"
    "MemAvailable:    600000 kB\nBuffers:          10000 kB\nCached:  100000 kB\n"
)
NET_DEV = (
    "Inter-|   Receive                                                |  Transmit\n"
    " face |bytes    packets errs drop fifo frame compressed multicast|bytes\n"
    "    lo: 500 5 0 0 0 0 0 0 500 5 0 0 0 0 0 0\n"
    "  eth0: 1000 10 0 0 0 0 0 0 2000 20 0 0 0 0 0 0\n"
)
MOUNTS = (
    "/dev/vda / ext4 rw 0 0\n"
    "proc /proc proc rw 0 0\n"
    "/dev/vdb /var/lib/docker ext4 rw 0 0\n"
    "/dev/vdc /data xfs rw 0 0\n"
)


def hostTree(base: str) -> HostRoot:
    """
    A host's / as seen from a container: the host's own files are under
    proc/1 (its PID 1), the container's under proc/self and proc/net.
    """
    files = {
        "proc/stat": STAT_BEFORE,
        "proc/meminfo": MEMINFO,
        "proc/1/net/dev": NET_DEV,
        "proc/net/dev": NET_DEV.replace("eth0", "veth9"),
        "proc/1/mounts": MOUNTS,
        "proc/self/mounts": "overlay / overlay rw 0 0\n",
    }
    for name, text in files.items():
        path = os.path.join(base, name)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "w") as f:
            f.write(text)
    return HostRoot(base)


class FakeDocker:
    def __init__(self, up=True):
        self.up = up

    def info(self):
        if not self.up:
            return fail(DockerUnavailable("cannot connect to unix:/run/docker.sock"))
        return succeed({"Name": "dockerhost", "Labels": ["zone=eu", "k=v=w"]})

    def containers(self):
        return succeed(
            [{"Id": "abc", "Names": ["/web"], "Image": "nginx", "Labels": None}]
        )


class CollectorTests(SynchronousTestCase):
    def collector(self, docker=None, address="https://10.0.0.5:8771", master=None):
        clock = Clock()
        clock.advance(1795000000.5)

        def runInThread(f, *args):
            return succeed(f(*args))

        usage = {"/": {"used": 40, "total": 100}, "/data": {"used": 1, "total": 9}}
        prober = MountProber(
            clock, runInThread, usage=lambda root, mount: usage[mount.mountpoint]
        )
        return NodeCollector(
            clock=clock,
            runInThread=runInThread,
            docker=docker or FakeDocker(),
            prober=prober,
            root=hostTree(self.mktemp()),
            master=master,
            listenPort=8771,
            nodeName="node-1",
            address=address,
        )

    def test_bodyFollowsTheContract(self) -> None:
        body = self.successResultOf(self.collector().collect())
        self.assertEqual(body["time"], "2026-11-18T11:06:40.500Z")
        self.assertEqual(body["name"], "node-1")
        self.assertEqual(body["address"], "https://10.0.0.5:8771")
        system = body["system"]
        self.assertEqual(system["cpuLoad"], 0.0)
        self.assertEqual(
            system["memory"],
            {"total": 1024000000, "used": 409600000, "available": 614400000},
        )
        self.assertEqual(
            system["disks"],
            {"/": {"used": 40, "total": 100}, "/data": {"used": 1, "total": 9}},
        )
        self.assertEqual(system["net"], {"eth0": {"bytesIn": 1000, "bytesOut": 2000}})
        self.assertEqual(system["labels"], {"zone": "eu", "k": "v=w"})
        self.assertEqual(
            system["containers"],
            [{"id": "abc", "name": "web", "image": "nginx", "labels": {}}],
        )

    def test_dockerDownStillReports(self) -> None:
        collector = self.collector(docker=FakeDocker(up=False))
        with capturedLogs() as events:
            first = self.successResultOf(collector.collect())
            self.successResultOf(collector.collect())
        self.assertEqual(first["system"]["labels"], {})
        self.assertEqual(first["system"]["containers"], [])
        self.assertIn("eth0", first["system"]["net"])
        warnings = [e for e in events if "Docker is unavailable" in formatEvent(e)]
        self.assertEqual(len(warnings), 1, "warned once per outage")

    def test_addressTowardsTheMaster(self) -> None:
        collector = self.collector(address=None, master="http://127.0.0.1:8761/")
        body = self.successResultOf(collector.collect())
        self.assertEqual(body["address"], "https://127.0.0.1:8771")


class ReportingTests(TestCase):
    """
    The reporting half as makeService builds it, on real sockets.
    """

    def setUp(self):
        self.docker = serve_fake_docker_api(reactor, FakeDockerAPI())
        self.addCleanup(self.docker.stop)

    def config(self, **overrides) -> ReporterConfig:
        values = dict(
            master=None,
            secret=None,
            interval=60.0,
            nodeName=None,
            address=None,
            hostRoot="/",
            masterCA=None,
            networkFilesystems=False,
            listenPort=8771,
            docker=self.docker.description,
        )
        values.update(overrides)
        return ReporterConfig(**values)

    def start(self, config) -> NodeReporting:
        threads = ThreadPools(reactor)
        service = NodeReporting(config, reactor, threads)
        service.setServiceParent(threads)
        threads.startService()
        self.addCleanup(threads.stopService)
        return service

    @inlineCallbacks
    def test_reportsToTheMaster(self):
        master = FakeMaster(secret="s3")
        port, url = listen(reactor, master)
        self.addCleanup(port.stopListening)
        self.start(self.config(master=url, secret="s3"))
        report = yield master.next_report()
        self.assertEqual(report.code, 200)
        self.assertEqual(report.path, "/discovery/nodes/node-1")
        self.assertEqual(report.query, {"ttl": ["120"]})
        self.assertEqual(report.header("X-Auth-Node"), "s3")
        body = report.json()
        self.assertEqual(body["name"], "node-1", "Docker's info.Name")
        self.assertEqual(body["address"], "https://127.0.0.1:8771")
        self.assertRegex(body["time"], r"\A\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z\Z")
        self.assertEqual(body["system"]["labels"], {"a": "b=c", "zone": "eu"})
        self.assertEqual(
            sorted(c["name"] for c in body["system"]["containers"]), ["batch", "web"]
        )
        self.assertGreater(body["system"]["memory"]["total"], 0)

    @inlineCallbacks
    def test_containerChangeReportsEarly(self):
        master = FakeMaster()
        port, url = listen(reactor, master)
        self.addCleanup(port.stopListening)
        self.start(self.config(master=url, interval=3600.0))
        yield master.next_report()
        yield self.docker.fake.when_subscribed(1)
        received = len(master.received)
        self.docker.fake.emit(
            {"Type": "container", "Action": "start", "Actor": {"ID": "x"}}
        )
        report = yield master.next_report()
        self.assertEqual(report.code, 200)
        self.assertGreater(len(master.received), received)

    @inlineCallbacks
    def test_configuredNameWins(self):
        with capturedLogs() as events:
            service = self.start(self.config(nodeName="edge-7", interval=3600.0))
        self.assertEqual(service.nodeName, "edge-7")
        body = yield service.collector.collect()
        self.assertEqual(body["name"], "edge-7")
        logged = "\n".join(formatEvent(e) for e in events)
        self.assertIn("the report of node edge-7 is logged every 3600 s", logged)

    @inlineCallbacks
    def test_dockerDownNamesAfterHost(self):
        yield self.docker.stop()
        service = self.start(self.config(interval=3600.0))
        yield deferLater(reactor, 0.3, lambda: None)
        short = socket.gethostname().split(".")[0]
        if re.fullmatch(r"[A-Za-z0-9-]+", short):
            self.assertEqual(service.nodeName, short)
        else:
            self.assertIsNone(service.nodeName)

    @inlineCallbacks
    def test_httpsMasterTrustedByCAFile(self):
        from twisted.internet.ssl import PrivateCertificate
        from twisted.web.server import Site

        from haven_agent.tls.certificates import load_or_create_self_signed

        certificate = load_or_create_self_signed(
            self.mktemp(), host_names=["localhost"], ip_addresses=["127.0.0.1"]
        )
        master = FakeMaster()
        site = Site(master)
        site.noisy = False
        port = reactor.listenSSL(
            0,
            site,
            PrivateCertificate.loadPEM(
                certificate.cert_pem + certificate.key_pem
            ).options(),
            interface="127.0.0.1",
        )
        self.addCleanup(port.stopListening)
        url = f"https://127.0.0.1:{port.getHost().port}"
        self.start(self.config(master=url, masterCA=certificate.cert_path))
        report = yield master.next_report()
        self.assertEqual(report.code, 200)
        self.assertEqual(report.json()["name"], "node-1")

    @inlineCallbacks
    def test_masterAnsweringGarbage(self):
        """
        A master that answers bytes that are not HTTP: the report counts as
        failed and is retried, with the failure logged, and nothing raises.
        """
        from twisted.internet.protocol import Factory, Protocol

        from haven_agent.reporting.reporter import ReporterService

        class Garbage(Protocol):
            def dataReceived(self, data):
                self.transport.write(b"\x00garbage, not HTTP\r\n\r\n")
                self.transport.loseConnection()

        port = reactor.listenTCP(0, Factory.forProtocol(Garbage), interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        url = f"http://127.0.0.1:{port.getHost().port}"
        with capturedLogs() as events:
            service = self.start(self.config(master=url))
            for _ in range(100):
                reporters = [s for s in service if isinstance(s, ReporterService)]
                if reporters and reporters[0].consecutive_failures:
                    break
                yield deferLater(reactor, 0.1, lambda: None)
        self.assertGreaterEqual(reporters[0].consecutive_failures, 1)
        self.assertEqual([e for e in events if e.get("log_failure")], [])
        self.assertTrue(
            any(url in formatEvent(e) for e in events),
            [formatEvent(e) for e in events],
        )
