"""
Tests for L{haven_agent.backoff}.
"""

from twisted.trial.unittest import SynchronousTestCase

from haven_agent.backoff import backoff_delay


class BackoffDelayTests(SynchronousTestCase):
    def test_doublesUpToCap(self) -> None:
        never = lambda: 0.0  # noqa: E731
        self.assertEqual(
            [backoff_delay(n, 60, never) for n in range(8)],
            [1, 2, 4, 8, 16, 32, 60, 60],
        )
        self.assertEqual(backoff_delay(10_000, 300, never), 300)

    def test_base(self) -> None:
        self.assertEqual(backoff_delay(3, 100, lambda: 0.0, base=2.0), 16.0)

    def test_jitterShortensByUpToHalf(self) -> None:
        self.assertEqual(backoff_delay(2, 60, lambda: 0.5), 3.0)
        self.assertAlmostEqual(backoff_delay(2, 60, lambda: 0.999999), 2.0, 4)
