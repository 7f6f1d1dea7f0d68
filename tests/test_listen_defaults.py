"""
Where the agent listens without C{--listen}: both address families when the
host has IPv6 (one dual-stack socket, or one per family where IPv6 sockets
are IPv6-only), IPv4 alone otherwise; the escaped descriptions that takes;
and IPv4 clients of a dual-stack socket logged as IPv4. One test runs a real
agent with the default listener and reaches it with curl over C{::1} and
C{127.0.0.1}.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import tempfile

from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.endpoints import serverFromString
from twisted.python import usage
from twisted.trial.unittest import SkipTest, SynchronousTestCase

from haven_agent.config import (
    DEFAULT_PORT,
    default_listen,
    endpoint_parts,
    endpoint_port,
    listen_port,
    probe_ipv6,
)
from haven_agent.proxy.gate import peer_label
from haven_agent.tap import Options
from tests.e2e_agent import stop_process, twistd_argv
from tests.realdockerd import clean_docker_env
from tests.test_startup_errors import (
    PROCESS_TIMEOUT,
    clean_agent_env,
    start_fake_dockerd,
    stop_agent,
    wait_for_line,
)

DUAL_STACK = "tcp6:{port}:interface=\\:\\:"


class DefaultListenTests(SynchronousTestCase):
    def test_noIPv6(self) -> None:
        self.assertEqual(default_listen(8771, False, False), ("tcp:8771",))
        # Without IPv6, whether it would be IPv6-only does not matter.
        self.assertEqual(default_listen(8771, False, True), ("tcp:8771",))

    def test_dualStack(self) -> None:
        self.assertEqual(
            default_listen(8771, True, False), (DUAL_STACK.format(port=8771),)
        )

    def test_ipv6Only(self) -> None:
        self.assertEqual(
            default_listen(9000, True, True),
            ("tcp:9000", DUAL_STACK.format(port=9000)),
        )

    def test_descriptionsParse(self) -> None:
        for ipv6, ipv6Only in ((False, False), (True, False), (True, True)):
            for description in default_listen(8771, ipv6, ipv6Only):
                serverFromString(None, description)


class OptionsDefaultListenTests(SynchronousTestCase):
    def parse(self, host: tuple[bool, bool], environ=None, args=()) -> Options:
        options = Options(environ=environ or {}, probeIPv6=lambda: host)
        options.parseOptions(
            ["--docker", "/tmp/d.sock", "--state-dir", "/tmp/state", *args]
        )
        return options

    def test_noIPv6(self) -> None:
        options = self.parse((False, False))
        self.assertEqual(options.config.listen, (f"tcp:{DEFAULT_PORT}",))
        self.assertEqual(options.config.sources.of("listen"), "the default --listen")
        self.assertEqual(options.reporterConfig.listenPort, DEFAULT_PORT)

    def test_dualStack(self) -> None:
        options = self.parse((True, False))
        self.assertEqual(options.config.listen, (DUAL_STACK.format(port=DEFAULT_PORT),))
        self.assertEqual(options.reporterConfig.listenPort, DEFAULT_PORT)

    def test_ipv6Only(self) -> None:
        options = self.parse((True, True))
        self.assertEqual(
            options.config.listen,
            (f"tcp:{DEFAULT_PORT}", DUAL_STACK.format(port=DEFAULT_PORT)),
        )

    def test_serverPort(self) -> None:
        options = self.parse((True, False), {"server_port": "9100"})
        self.assertEqual(options.config.listen, (DUAL_STACK.format(port=9100),))
        self.assertEqual(options.config.sources.of("listen"), "server_port")
        self.assertEqual(options.reporterConfig.listenPort, 9100)

    def test_badServerPort(self) -> None:
        error = self.assertRaises(
            usage.UsageError, self.parse, (True, False), {"server_port": "70000"}
        )
        self.assertIn("server_port", str(error))
        self.assertIn("70000", str(error))

    def test_givenListenDoesNotProbe(self) -> None:
        def probe():
            raise AssertionError("probed although --listen was given")

        for environ, args in (
            ({}, ["--listen", "tcp:9200"]),
            ({"HAVEN_AGENT_LISTEN": "tcp:9200"}, []),
        ):
            options = Options(environ=environ, probeIPv6=probe)
            options.parseOptions(["--docker", "/tmp/d.sock", *args])
            self.assertEqual(options.config.listen, ("tcp:9200",))


class EndpointPartsTests(SynchronousTestCase):
    def test_escapedColons(self) -> None:
        self.assertEqual(
            endpoint_parts("tcp6:8771:interface=\\:\\:"),
            ("tcp6", ["8771"], {"interface": "::"}),
        )
        self.assertEqual(
            endpoint_parts("tcp6:port=9000:interface=fe80\\:\\:1"),
            ("tcp6", [], {"port": "9000", "interface": "fe80::1"}),
        )

    def test_escapedBackslash(self) -> None:
        self.assertEqual(
            endpoint_parts("unix:/tmp/a\\\\b\\:c.sock:mode=600"),
            ("unix", ["/tmp/a\\b:c.sock"], {"mode": "600"}),
        )

    def test_plain(self) -> None:
        self.assertEqual(
            endpoint_parts("tcp:8771:interface=10.0.0.5"),
            ("tcp", ["8771"], {"interface": "10.0.0.5"}),
        )

    def test_port(self) -> None:
        self.assertEqual(endpoint_port("tcp6:8771:interface=\\:\\:"), "8771")
        self.assertEqual(endpoint_port("tcp6:port=9000:interface=\\:\\:1"), "9000")
        self.assertEqual(endpoint_port("tcp:interface=10.0.0.5:port=9001"), "9001")
        self.assertIsNone(endpoint_port("unix:/tmp/a\\:b.sock"))

    def test_listenPort(self) -> None:
        self.assertEqual(listen_port("tcp6:9000:interface=\\:\\:"), 9000)
        self.assertEqual(listen_port("unix:/tmp/a.sock"), DEFAULT_PORT)


class PeerLabelTests(SynchronousTestCase):
    def test_ipv4(self) -> None:
        self.assertEqual(
            peer_label(IPv4Address("TCP", "10.0.0.5", 4000)), "10.0.0.5:4000"
        )

    def test_ipv4Mapped(self) -> None:
        self.assertEqual(
            peer_label(IPv6Address("TCP", "::ffff:127.0.0.1", 4001)), "127.0.0.1:4001"
        )

    def test_ipv6(self) -> None:
        self.assertEqual(peer_label(IPv6Address("TCP", "::1", 4002)), "[::1]:4002")
        self.assertEqual(
            peer_label(IPv6Address("TCP", "2001:db8::5", 4003)), "[2001:db8::5]:4003"
        )


def free_dual_stack_port() -> int:
    """A port free on both C{::} and C{0.0.0.0} when this asked."""
    with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        s.bind(("::", 0))
        return s.getsockname()[1]


class DefaultListenerProcessTests(SynchronousTestCase):
    """
    A real agent started without --listen and with C{server_port}.
    """

    def setUp(self) -> None:
        if not probe_ipv6()[0]:
            raise SkipTest("this host has no IPv6 loopback (cannot bind ::1)")
        self.curl = shutil.which("curl")
        if self.curl is None:
            raise SkipTest("curl is not installed")

    def curlGet(self, url: str, *args: str) -> str:
        env = clean_docker_env()
        for name in ("CURL_CA_BUNDLE", "SSL_CERT_FILE"):
            env.pop(name, None)
        result = subprocess.run(
            [self.curl, "-sS", "-g", "--max-time", "30", *args, url],
            env=env,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=PROCESS_TIMEOUT,
        )
        self.assertEqual(result.returncode, 0, f"curl {url}: {result.stderr}")
        return result.stdout

    def test_bothFamilies(self) -> None:
        tmp = tempfile.mkdtemp(prefix="hvl-", dir="/tmp")
        self.addCleanup(shutil.rmtree, tmp, True)
        state = os.path.join(tmp, "state")
        log = os.path.join(tmp, "agent.log")
        docker = start_fake_dockerd(self)
        port = free_dual_stack_port()
        process = subprocess.Popen(
            twistd_argv(
                "-n",
                "--pidfile=",
                "--logfile",
                log,
                "haven-agent",
                "--state-dir",
                state,
                "--docker",
                docker,
                "--password",
                "pw",
            ),
            env=clean_agent_env(server_port=str(port)),
            cwd=tmp,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        self.addCleanup(stop_process, process, 10.0)
        started = wait_for_line(self, process, log, "serving Docker API")
        self.assertIn(f"on {DUAL_STACK.format(port=port)} (TLS", started)

        cert = os.path.join(state, "tls", "agent-cert.pem")
        for host in ("[::1]", "127.0.0.1"):
            base = f"https://{host}:{port}"
            health = json.loads(self.curlGet(base + "/_agent/health", "--cacert", cert))
            self.assertEqual(health, {"status": "ok", "docker": "up"}, host)
            ping = self.curlGet(base + "/_ping", "--cacert", cert, "-u", "admin:pw")
            self.assertEqual(ping, "OK", host)

        stop_agent(self, process)
        with open(log, encoding="utf-8", errors="replace") as f:
            text = f.read()
        self.assertRegex(text, r"\] 127\.0\.0\.1:\d+ admin GET /_ping: ")
        self.assertRegex(text, r"\] \[::1\]:\d+ admin GET /_ping: ")
        self.assertNotIn("::ffff:", text)
        self.assertIsNone(re.search(r"Traceback", text), text)
