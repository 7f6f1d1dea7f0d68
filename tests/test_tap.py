"""
Tests for L{haven_agent.tap}: options from the command line and the
environment, Haven's setting names, and the service they build.
"""

import os

from twisted.application.internet import StreamServerEndpointService
from twisted.application.service import MultiService
from twisted.internet.defer import inlineCallbacks
from twisted.python import usage
from twisted.python.filepath import FilePath
from twisted.trial.unittest import SynchronousTestCase, TestCase

from haven_agent.proxy.service import Listening
from haven_agent.tap import Options, makeService
from haven_agent.thread_pools import ThreadPools


def parse(args=(), environ=None, ipv6=(False, False)) -> Options:
    """
    Options parsed from C{args} and C{environ}, on a host whose IPv6 is
    C{ipv6}: (has IPv6, IPv6 sockets are IPv6-only).
    """
    options = Options(environ=environ or {}, probeIPv6=lambda: ipv6)
    options.parseOptions(list(args))
    return options


class DefaultsTests(SynchronousTestCase):
    def test_defaults(self) -> None:
        config = parse().config
        self.assertEqual(config.listen, ("tcp:8771",))
        self.assertEqual(config.docker, "unix:/var/run/docker.sock")
        self.assertEqual(config.user, "admin")
        self.assertEqual(config.password, "password")
        self.assertTrue(config.passwordIsDefault)
        self.assertEqual(config.stateDir, "/var/lib/haven-agent")
        self.assertEqual((config.tlsCert, config.tlsKey), (None, None))
        self.assertEqual(config.firstHeadTimeout, 30.0)

    def test_passwordNotInRepr(self) -> None:
        self.assertNotIn("s3cret", repr(parse(["--password", "s3cret"]).config))


class HavenNamesTests(SynchronousTestCase):
    def test_havenStartStringSettings(self) -> None:
        config = parse(
            environ={
                "dm_auth_adminPassword": "$2a$12$" + "x" * 53,
                "server_port": "9771",
                "dm_agent_server_names": "node1.example.com, 10.0.0.5 extra",
            }
        ).config
        self.assertEqual(config.password, "$2a$12$" + "x" * 53)
        self.assertFalse(config.passwordIsDefault)
        self.assertEqual(config.listen, ("tcp:9771",))
        self.assertEqual(config.serverNames, ("node1.example.com", "10.0.0.5", "extra"))

    def test_badServerPort(self) -> None:
        with self.assertRaises(usage.UsageError) as caught:
            parse(environ={"server_port": "http"})
        self.assertIn("server_port", str(caught.exception))


class PrecedenceTests(SynchronousTestCase):
    def test_commandLineWins(self) -> None:
        config = parse(
            ["--password", "cli", "--docker", "/srv/d.sock", "--user", "ops"],
            environ={
                "HAVEN_AGENT_PASSWORD": "env",
                "dm_auth_adminPassword": "haven",
                "HAVEN_AGENT_DOCKER": "unix:/env.sock",
                "HAVEN_AGENT_USER": "envuser",
            },
        ).config
        self.assertEqual(config.password, "cli")
        self.assertEqual(config.docker, "unix:/srv/d.sock")
        self.assertEqual(config.user, "ops")

    def test_ownNameBeforeHavenName(self) -> None:
        config = parse(
            environ={"HAVEN_AGENT_PASSWORD": "own", "dm_auth_adminPassword": "haven"}
        ).config
        self.assertEqual(config.password, "own")

    def test_listenRepeatableAndWinsOverPort(self) -> None:
        config = parse(
            ["--listen", "tcp:1:interface=127.0.0.1", "--listen", "2"],
            environ={"server_port": "9", "HAVEN_AGENT_LISTEN": "tcp:3"},
        ).config
        self.assertEqual(config.listen, ("tcp:1:interface=127.0.0.1", "tcp:2"))

    def test_listenFromEnvironment(self) -> None:
        config = parse(environ={"HAVEN_AGENT_LISTEN": "tcp:3 tcp:4"}).config
        self.assertEqual(config.listen, ("tcp:3", "tcp:4"))

    def test_tlsIsAlwaysAdded(self) -> None:
        with self.assertRaises(usage.UsageError):
            parse(["--listen", "ssl:8771"])


class ValueTests(SynchronousTestCase):
    def test_bareDockerPathEscaped(self) -> None:
        self.assertEqual(
            parse(["--docker", "/run/a:b.sock"]).config.docker, "unix:/run/a\\:b.sock"
        )

    def test_dockerSocketPathTooLong(self) -> None:
        longPath = "/tmp/" + "x" * 120 + ".sock"
        for value in [longPath, "unix:" + longPath, "unix:path=" + longPath]:
            with self.assertRaises(usage.UsageError) as caught:
                parse(["--docker", value])
            self.assertIn("at most 107", str(caught.exception))
        self.assertEqual(
            parse(["--docker", "unix:/run/docker.sock:timeout=5"]).config.docker,
            "unix:/run/docker.sock:timeout=5",
        )

    def test_passwordFile(self) -> None:
        path = FilePath(self.mktemp())
        path.setContent(b"from-file\n")
        config = parse(["--password-file", path.path]).config
        self.assertEqual(config.password, "from-file")
        self.assertFalse(config.passwordIsDefault)

    def test_passwordFileProblems(self) -> None:
        with self.assertRaises(usage.UsageError) as caught:
            parse(["--password-file", "/nonexistent/pw"])
        self.assertIn("/nonexistent/pw", str(caught.exception))
        empty = FilePath(self.mktemp())
        empty.setContent(b"\n")
        with self.assertRaises(usage.UsageError):
            parse(["--password-file", empty.path])
        with self.assertRaises(usage.UsageError):
            parse(["--password-file", empty.path, "--password", "x"])

    def test_certAndKeyTogether(self) -> None:
        with self.assertRaises(usage.UsageError):
            parse(["--tls-cert", "/c.pem"])
        with self.assertRaises(usage.UsageError):
            parse(environ={"HAVEN_AGENT_TLS_KEY": "/k.pem"})

    def test_headTimeout(self) -> None:
        self.assertEqual(parse(["--head-timeout", "2.5"]).config.firstHeadTimeout, 2.5)
        for bad in ["0", "-1", "soon"]:
            with self.assertRaises(usage.UsageError):
                parse(["--head-timeout", bad])

    def test_helpNamesEveryOption(self) -> None:
        help = str(Options(environ={}))
        for option in [
            "--listen",
            "--docker",
            "--user",
            "--password",
            "--password-file",
            "--tls-cert",
            "--tls-key",
            "--state-dir",
            "--server-names",
            "--head-timeout",
        ]:
            self.assertIn(option + "=", help)
        for variable in [
            "dm_auth_adminPassword",
            "server_port",
            "dm_agent_server_names",
        ]:
            self.assertIn(variable, help)


class MakeServiceTests(SynchronousTestCase):
    def test_multiServiceWithOneListenerEach(self) -> None:
        state = self.mktemp()
        options = parse(
            [
                "--state-dir",
                state,
                "--listen",
                "tcp:0:interface=127.0.0.1",
                "--listen",
                "tcp:0:interface=127.0.0.1",
            ]
        )
        service = makeService(options)
        self.assertIsInstance(service, MultiService)
        (threads,) = [s for s in service if isinstance(s, ThreadPools)]
        listeners = [
            s
            for proxy in threads
            if isinstance(proxy, MultiService)
            for wrapper in proxy
            if isinstance(wrapper, Listening)
            for s in wrapper
            if isinstance(s, StreamServerEndpointService)
        ]
        self.assertEqual(len(listeners), 2)
        self.assertTrue(os.path.exists(os.path.join(state, "tls", "agent-cert.pem")))
        self.assertEqual(os.stat(state).st_mode & 0o777, 0o700)


class StartupLogTests(TestCase):
    @inlineCallbacks
    def startLogs(self, args):
        from twisted.internet import reactor
        from twisted.logger import capturedLogs, formatEvent

        from haven_agent.proxy.service import build_proxy_service

        config = parse(
            [
                "--state-dir",
                self.mktemp(),
                "--listen",
                "tcp:0:interface=127.0.0.1",
                *args,
            ]
        ).config
        threads = ThreadPools(reactor)
        service = build_proxy_service(config, reactor, threads)
        service.setServiceParent(threads)
        with capturedLogs() as events:
            threads.startService()
        yield threads.stopService()
        text = "\n".join(formatEvent(event) for event in events)
        fingerprint = service._tls.current_certificate.fingerprint
        self.assertIn(fingerprint, text)
        self.assertIn("SHA-256", text)
        return text

    @inlineCallbacks
    def test_defaultPasswordWarned(self):
        text = yield self.startLogs([])
        self.assertIn("No password configured", text)

    @inlineCallbacks
    def test_noWarningWithPassword(self):
        text = yield self.startLogs(["--password", "hunter2"])
        self.assertNotIn("No password configured", text)
        self.assertNotIn("hunter2", text)


class ReporterOptionsTests(SynchronousTestCase):
    def test_defaults(self) -> None:
        config = parse().reporterConfig
        self.assertIsNone(config.master)
        self.assertIsNone(config.secret)
        self.assertEqual(config.interval, 60.0)
        self.assertIsNone(config.nodeName)
        self.assertIsNone(config.address)
        self.assertEqual(config.hostRoot, "/")
        self.assertFalse(config.networkFilesystems)
        self.assertEqual(config.listenPort, 8771)
        self.assertEqual(config.docker, "unix:/var/run/docker.sock")

    def test_havenStartStringSettings(self) -> None:
        config = parse(
            environ={
                "dm_agent_notifier_server": "http://10.0.0.1:8761",
                "dm_agent_notifier_secret": "s3",
                "dm_agent_notifier_address": "https://10.0.0.5:8771",
                "dm_agent_notifier_rootPath": "/host",
                "server_port": "9771",
            }
        ).reporterConfig
        self.assertEqual(config.master, "http://10.0.0.1:8761")
        self.assertEqual(config.secret, "s3")
        self.assertEqual(config.address, "https://10.0.0.5:8771")
        self.assertEqual(config.hostRoot, "/host")
        self.assertEqual(config.listenPort, 9771)
        self.assertNotIn("s3", repr(config))

    def test_commandLine(self) -> None:
        config = parse(
            [
                "--master",
                "https://m:8761",
                "--interval",
                "15",
                "--node-name",
                "edge-1",
                "--listen",
                "tcp:port=9000",
                "--network-filesystems",
            ],
            environ={"dm_agent_notifier_server": "http://other"},
        ).reporterConfig
        self.assertEqual(config.master, "https://m:8761")
        self.assertEqual(config.interval, 15.0)
        self.assertEqual(config.nodeName, "edge-1")
        self.assertEqual(config.listenPort, 9000)
        self.assertTrue(config.networkFilesystems)

    def test_networkFilesystemsFromEnvironment(self) -> None:
        config = parse(environ={"HAVEN_AGENT_NETWORK_FILESYSTEMS": "1"}).reporterConfig
        self.assertTrue(config.networkFilesystems)

    def test_badNodeNameNamesTheCharacters(self) -> None:
        with self.assertRaises(usage.UsageError) as caught:
            parse(["--node-name", "node1.example_com"])
        message = str(caught.exception)
        self.assertIn("'.'", message)
        self.assertIn("'_'", message)

    def test_badValues(self) -> None:
        for args in [
            ["--master", "10.0.0.1:8761"],
            ["--interval", "0"],
            ["--address", "10.0.0.5"],
            ["--host-root", "host"],
            ["--master-ca", "/nonexistent/ca.pem"],
        ]:
            with self.assertRaises(usage.UsageError, msg=args):
                parse(args)

    def test_masterCANotACertificate(self) -> None:
        path = FilePath(self.mktemp())
        path.setContent(b"not a certificate")
        with self.assertRaises(usage.UsageError) as caught:
            parse(["--master-ca", path.path])
        self.assertIn(path.path, str(caught.exception))

    def test_makeServiceIncludesReporting(self) -> None:
        from haven_agent.reporting.service import NodeReporting

        options = parse(["--state-dir", self.mktemp()])
        service = makeService(options)
        self.assertEqual(
            [type(s).__name__ for s in service],
            ["PlainDispatch", "LogFlushing", "TextLogSettings", "ThreadPools"],
        )
        threads = list(service)[3]
        self.assertEqual(
            [type(s).__name__ for s in threads], ["ProxyService", "NodeReporting"]
        )
        self.assertIsInstance(list(threads)[1], NodeReporting)

    def test_makeServiceWithWorkers(self) -> None:
        from haven_agent.proxy.reuse_port import ReusePortListener

        options = parse(
            [
                "--state-dir",
                self.mktemp(),
                "--workers",
                "3",
                "--listen",
                "tcp:0:interface=127.0.0.1",
            ]
        )
        service = makeService(options)
        threads = list(service)[3]
        self.assertEqual(
            [type(s).__name__ for s in threads],
            ["ProxyService", "WorkerPool", "NodeReporting"],
        )
        proxy = list(threads)[0]
        self.assertEqual(
            [
                type(s)
                for wrapper in proxy
                if isinstance(wrapper, Listening)
                for s in wrapper
                if isinstance(s, ReusePortListener)
            ],
            [ReusePortListener],
        )


class HardeningOptionsTests(SynchronousTestCase):
    def caFile(self) -> str:
        from haven_agent.tls.certificates import load_or_create_self_signed

        certificate = load_or_create_self_signed(
            self.mktemp(), host_names=["ca"], ip_addresses=[]
        )
        return certificate.cert_path

    def test_defaults(self) -> None:
        config = parse().config
        self.assertEqual(config.authMode, "password")
        self.assertIsNone(config.tlsClientCA)
        self.assertIsNone(config.readOnlyPassword)
        self.assertEqual(config.maxConnections, 10_000)
        self.assertEqual(config.maxUnauthenticated, 512)
        self.assertEqual(config.shutdownGrace, 5.0)

    def test_clientCAMeansBothByDefault(self) -> None:
        ca = self.caFile()
        self.assertEqual(parse(["--tls-client-ca", ca]).config.authMode, "both")
        config = parse(["--tls-client-ca", ca, "--auth", "cert"]).config
        self.assertEqual((config.authMode, config.tlsClientCA), ("cert", ca))

    def test_certNeedsCA(self) -> None:
        for mode in ["cert", "both"]:
            with self.assertRaises(usage.UsageError):
                parse(["--auth", mode])
        with self.assertRaises(usage.UsageError):
            parse(["--auth", "token"])

    def test_badClientCA(self) -> None:
        path = FilePath(self.mktemp())
        path.setContent(b"nothing")
        with self.assertRaises(usage.UsageError) as caught:
            parse(["--tls-client-ca", path.path])
        self.assertIn(path.path, str(caught.exception))

    def test_readOnlyAccount(self) -> None:
        config = parse(
            environ={
                "HAVEN_AGENT_READONLY_USER": "viewer",
                "HAVEN_AGENT_READONLY_PASSWORD": "look",
            }
        ).config
        self.assertEqual(
            (config.readOnlyUser, config.readOnlyPassword), ("viewer", "look")
        )
        self.assertNotIn("look", repr(config))
        with self.assertRaises(usage.UsageError):
            parse(["--readonly-user", "admin", "--readonly-password", "x"])

    def test_limitsAndGrace(self) -> None:
        config = parse(
            [
                "--max-connections",
                "100",
                "--max-unauthenticated",
                "10",
                "--shutdown-grace",
                "0",
            ]
        ).config
        self.assertEqual(
            (config.maxConnections, config.maxUnauthenticated, config.shutdownGrace),
            (100, 10, 0.0),
        )
        for args in [
            ["--max-connections", "0"],
            ["--max-unauthenticated", "x"],
            ["--shutdown-grace", "-1"],
            ["--log-format", "xml"],
        ]:
            with self.assertRaises(usage.UsageError, msg=args):
                parse(args)

    def test_logFormat(self) -> None:
        self.assertEqual(parse().logFormat, "text")
        self.assertEqual(
            parse(environ={"HAVEN_AGENT_LOG_FORMAT": "json"}).logFormat, "json"
        )
