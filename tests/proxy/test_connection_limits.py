"""
Tests for L{haven_agent.proxy.connection_limits}: per-source and per-user counts
besides the totals, so that one party cannot take every place.
"""

from twisted.trial.unittest import SynchronousTestCase

from haven_agent.proxy.connection_limits import ConnectionLimits, source_of


class SourceTests(SynchronousTestCase):
    def test_ipv4(self) -> None:
        self.assertEqual(source_of("10.0.0.5"), "10.0.0.5")

    def test_ipv4_mapped(self) -> None:
        self.assertEqual(source_of("::ffff:10.0.0.5"), "10.0.0.5")

    def test_ipv6_grouped_by_64(self) -> None:
        self.assertEqual(source_of("2001:db8:1:2:aaaa::1"), "2001:db8:1:2::/64")
        self.assertEqual(source_of("[2001:db8:1:2:bbbb::9]"), "2001:db8:1:2::/64")
        self.assertNotEqual(source_of("2001:db8:1:3::1"), source_of("2001:db8:1:2::1"))

    def test_not_an_address(self) -> None:
        self.assertEqual(source_of("somewhere"), "somewhere")


class LimitTests(SynchronousTestCase):
    def test_per_source_leaves_room_for_others(self) -> None:
        limits = ConnectionLimits(maxUnauthenticated=10, maxUnauthenticatedPerSource=2)
        self.assertIsNone(limits.arrived("10.0.0.5"))
        self.assertIsNone(limits.arrived("10.0.0.5"))
        problem = limits.arrived("10.0.0.5")
        self.assertEqual(
            problem,
            (
                "max_unauthenticated_per_source",
                "too many connections from 10.0.0.5 waiting to authenticate",
                2,
            ),
        )
        self.assertIsNone(limits.arrived("10.0.0.6"))
        limits.left("10.0.0.5", None)
        self.assertEqual(limits.waiting("10.0.0.5"), 2)

    def test_authenticating_frees_the_source(self) -> None:
        limits = ConnectionLimits(maxUnauthenticatedPerSource=1)
        self.assertIsNone(limits.arrived("10.0.0.5"))
        self.assertIsNone(limits.authenticated("10.0.0.5", "admin"))
        self.assertIsNone(limits.arrived("10.0.0.5"))
        self.assertEqual((limits.unauthenticated, limits.held("admin")), (1, 1))

    def test_per_user(self) -> None:
        limits = ConnectionLimits(maxPerUser=2)
        for _ in range(3):
            limits.arrived("10.0.0.5")
        self.assertIsNone(limits.authenticated("10.0.0.5", "viewer"))
        self.assertIsNone(limits.authenticated("10.0.0.5", "viewer"))
        self.assertEqual(
            limits.authenticated("10.0.0.5", "viewer"),
            ("max_connections_per_user", "too many connections of user viewer", 2),
        )
        self.assertIsNone(limits.arrived("10.0.0.7"))
        self.assertIsNone(limits.authenticated("10.0.0.7", "admin"))
        limits.left("10.0.0.5", "viewer")
        self.assertEqual(limits.held("viewer"), 2)

    def test_totals(self) -> None:
        limits = ConnectionLimits(maxConnections=2, maxUnauthenticated=5)
        limits.arrived("a")
        limits.arrived("b")
        self.assertEqual(
            limits.arrived("c"), ("max_connections", "too many connections", 2)
        )
        for source in ("a", "b", "c"):
            limits.left(source, None)
        self.assertEqual((limits.connections, limits.unauthenticated), (0, 0))
        self.assertEqual(limits.waiting("a"), 0)
