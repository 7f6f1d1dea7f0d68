"""
Tests for L{haven_agent.metrics.reporter_metrics}: the reporter's attempts
counted by outcome as they happen, against the fake master through
C{StubTreq} and a C{Clock}.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry
from twisted.internet.defer import fail
from twisted.trial.unittest import SynchronousTestCase

from haven_agent.metrics.exposition import render
from haven_agent.metrics.reporter_metrics import ReporterMetrics
from tests.fake_master import FakeMaster
from tests.metrics.test_proxy_metrics import samples, value
from tests.reporting.test_reporter import SECRET, Harness


class ReporterMetricsTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.registry = CollectorRegistry()
        self.metrics = ReporterMetrics(self.registry)

    def scrape(self):
        return samples(render(list(self.registry.collect())).decode())

    def outcome(self, found, outcome: str) -> float:
        return value(found, "haven_agent_reports_total", outcome=outcome)

    def test_accepted_then_refused(self) -> None:
        """
        Accepted reports set the last success; a refused secret and a
        master's 500 count as their own outcomes and leave it alone.
        """
        master = FakeMaster()
        harness = Harness(self, fake=master, secret=SECRET, metrics=self.metrics)
        harness.start()
        harness.advance(10)
        accepted = harness.clock.seconds()
        found = self.scrape()
        self.assertEqual(self.outcome(found, "accepted"), 1)
        self.assertEqual(
            value(found, "haven_agent_last_report_success_timestamp_seconds"),
            accepted,
        )
        self.assertEqual(value(found, "haven_agent_report_duration_seconds_count"), 1)

        master.secret = "rotated"
        harness.advance(60)
        master.secret = None
        master.mode = "500"
        harness.advance(60)
        found = self.scrape()
        self.assertEqual(self.outcome(found, "accepted"), 1)
        self.assertGreaterEqual(self.outcome(found, "refused_secret"), 1)
        self.assertGreaterEqual(self.outcome(found, "http_error"), 1)
        self.assertEqual(
            value(found, "haven_agent_last_report_success_timestamp_seconds"),
            accepted,
        )

    def test_timeout_and_collect_failure(self) -> None:
        harness = Harness(
            self,
            fake=FakeMaster(mode="hang"),
            interval=60.0,
            request_timeout=5.0,
            metrics=self.metrics,
        )
        harness.start()
        harness.advance(0)
        harness.advance(5)
        self.assertEqual(self.outcome(self.scrape(), "timeout"), 1)

        broken = Harness(
            self,
            collect=lambda: fail(ValueError("no /proc")),
            metrics=self.metrics,
        )
        broken.start()
        broken.advance(0)
        self.flushLoggedErrors(ValueError)
        found = self.scrape()
        self.assertEqual(self.outcome(found, "collect_failed"), 1)
        self.assertEqual(self.outcome(found, "unreachable"), 0)
