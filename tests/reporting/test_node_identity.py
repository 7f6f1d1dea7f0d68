"""
Tests for L{haven_agent.reporting.node_identity}: node names the Haven master accepts,
the default name, and the address advertised to the master.
"""

import socket

from twisted.trial.unittest import SynchronousTestCase

from haven_agent.reporting.node_identity import (
    NODE_NAME,
    advertised_address,
    default_node_name,
    local_address_towards,
    validate_node_name,
)


class ValidateNodeNameTests(SynchronousTestCase):
    def test_valid(self) -> None:
        for name in ["node-1", "N", "0", "abc-DEF-123", "-"]:
            self.assertEqual(validate_node_name(name), name)
            self.assertTrue(NODE_NAME.match(name))

    def test_fully_qualified(self) -> None:
        error = self.assertRaises(ValueError, validate_node_name, "node1.example.com")
        self.assertEqual(
            str(error),
            "node name 'node1.example.com' has characters the Haven master "
            "refuses: '.'; allowed: A-Z a-z 0-9 -",
        )

    def test_each_bad_character_named_once_in_order(self) -> None:
        error = self.assertRaises(ValueError, validate_node_name, "a_b c.d_e")
        self.assertIn("refuses: '_', ' ', '.';", str(error))

    def test_non_ascii(self) -> None:
        error = self.assertRaises(ValueError, validate_node_name, "nöde")
        self.assertIn("'ö'", str(error))

    def test_trailing_newline(self) -> None:
        # A bare "$" would accept "node\n"; the master would not.
        error = self.assertRaises(ValueError, validate_node_name, "node\n")
        self.assertIn("'\\n'", str(error))

    def test_empty(self) -> None:
        error = self.assertRaises(ValueError, validate_node_name, "")
        self.assertIn("empty", str(error))


class DefaultNodeNameTests(SynchronousTestCase):
    def test_docker_name_first(self) -> None:
        self.assertEqual(default_node_name("docker-host", "other"), "docker-host")

    def test_docker_name_short_form(self) -> None:
        self.assertEqual(default_node_name("node1.example.com", "other"), "node1")

    def test_host_name_when_docker_has_none(self) -> None:
        self.assertEqual(default_node_name(None, "web-3.dc.example.org"), "web-3")
        self.assertEqual(default_node_name("", "web-3"), "web-3")

    def test_invalid_default_refused(self) -> None:
        error = self.assertRaises(ValueError, default_node_name, None, "my_host.lan")
        self.assertIn("'my_host'", str(error))
        self.assertIn("'_'", str(error))

    def test_nothing_at_all(self) -> None:
        self.assertRaises(ValueError, default_node_name, None, "")


class LocalAddressTests(SynchronousTestCase):
    def test_loopback(self) -> None:
        self.assertEqual(local_address_towards("127.0.0.1", 1), "127.0.0.1")

    def test_ipv4_preferred_when_both_resolve(self) -> None:
        """
        A master name with IPv4 and IPv6 addresses is reached from the
        IPv4 one, whatever order the resolver gives.
        """
        if not socket.has_ipv6:
            raise self.skipTest("this Python has no IPv6 support")
        self.patch(
            socket,
            "getaddrinfo",
            lambda *a, **k: [
                (socket.AF_INET6, socket.SOCK_DGRAM, 17, "", ("::1", 1, 0, 0)),
                (socket.AF_INET, socket.SOCK_DGRAM, 17, "", ("127.0.0.1", 1)),
            ],
        )
        self.assertEqual(local_address_towards("both.example", 1), "127.0.0.1")

    def test_ipv6_master_gets_an_ipv4_address(self) -> None:
        """
        Towards an IPv6-only master, the IPv4 default route's address is
        advertised: the stock master cannot use an IPv6 one.
        """
        try:
            with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as probe:
                probe.connect(("::1", 1))
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
                probe.connect(("192.0.2.1", 9))
                ipv4 = probe.getsockname()[0]
        except OSError as error:
            raise self.skipTest(
                f"this host lacks IPv6 loopback or an IPv4 default route: {error}"
            ) from None
        self.assertEqual(local_address_towards("::1", 1), ipv4)

    def test_unresolvable(self) -> None:
        self.assertRaises(OSError, local_address_towards, "no-such-host.invalid", 1)


class AdvertisedAddressTests(SynchronousTestCase):
    def test_ipv4(self) -> None:
        self.assertEqual(advertised_address("10.0.0.5", 8771), "https://10.0.0.5:8771")

    def test_ipv6_bracketed(self) -> None:
        self.assertEqual(advertised_address("fd00::5", 8771), "https://[fd00::5]:8771")
        self.assertEqual(
            advertised_address("[fd00:0::5]", 8771), "https://[fd00::5]:8771"
        )

    def test_ipv6_scope_dropped(self) -> None:
        self.assertEqual(
            advertised_address("fe80::1%eth0", 8771), "https://[fe80::1]:8771"
        )

    def test_host_name_passed_through(self) -> None:
        self.assertEqual(
            advertised_address("node1.example.com", 8771),
            "https://node1.example.com:8771",
        )

    def test_refused(self) -> None:
        for host, port in [("10.0.0.5", 0), ("10.0.0.5", 65536), ("", 8771)]:
            self.assertRaises(ValueError, advertised_address, host, port)
        for host in ["a b", "x/y", "user@host", "-bad"]:
            self.assertRaises(ValueError, advertised_address, host, 8771)
