"""
Tests for L{haven_agent.proxy.throttle}.
"""

from twisted.internet.task import Clock
from twisted.logger import capturedLogs, formatEvent
from twisted.trial.unittest import SynchronousTestCase

from haven_agent.proxy.throttle import FailureThrottle


class FailureThrottleTests(SynchronousTestCase):
    def test_growingCappedDelay(self) -> None:
        throttle = FailureThrottle(Clock())
        delays = [throttle.failed("10.0.0.9") for _ in range(8)]
        self.assertEqual(delays, [0.0, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0, 8.0])

    def test_perSource(self) -> None:
        throttle = FailureThrottle(Clock())
        for _ in range(5):
            throttle.failed("10.0.0.9")
        self.assertEqual(throttle.failed("10.0.0.10"), 0.0)
        self.assertEqual(throttle.failures("10.0.0.9"), 5)

    def test_forgottenWhenQuiet(self) -> None:
        clock = Clock()
        throttle = FailureThrottle(clock, forgetAfter=60)
        for _ in range(5):
            throttle.failed("a")
        clock.advance(61)
        self.assertEqual(throttle.failures("a"), 0)
        self.assertEqual(throttle.failed("a"), 0.0)

    def test_boundedTable(self) -> None:
        throttle = FailureThrottle(Clock(), maxSources=100)
        for i in range(1000):
            throttle.failed(f"10.0.{i // 256}.{i % 256}")
        self.assertEqual(len(throttle._failures), 100)
        self.assertEqual(throttle.failures("10.0.0.0"), 0, "oldest dropped first")

    def test_warnsEveryTenFailures(self) -> None:
        throttle = FailureThrottle(Clock())
        with capturedLogs() as events:
            for _ in range(25):
                throttle.failed("10.0.0.9")
        texts = [formatEvent(e) for e in events]
        self.assertEqual(len(texts), 2)
        self.assertIn("10 failed authentications from 10.0.0.9", texts[0])
