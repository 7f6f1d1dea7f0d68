# -*- test-case-name: tests.metrics.test_reporter_metrics -*-
"""
The reporter's metrics: did the master accept this node's reports?

A master that refuses the node secret, answers 500 or cannot be reached
was known only from the agent's log; these say it to Prometheus: attempts
by outcome, when the master last accepted one (alert on its age), and how
long an attempt takes.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

#: How an attempt to report can end.
OUTCOMES = (
    "accepted",
    "refused_secret",
    "http_error",
    "unreachable",
    "timeout",
    "collect_failed",
)

DURATION_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


class ReporterMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.reports = Counter(
            "haven_agent_reports",
            "Attempts to report this node to the Haven master, by outcome.",
            ("outcome",),
            registry=registry,
        )
        self.lastSuccess = Gauge(
            "haven_agent_last_report_success_timestamp_seconds",
            "When the master last accepted a report, as a Unix time.",
            registry=registry,
        )
        self.duration = Histogram(
            "haven_agent_report_duration_seconds",
            "Seconds from collecting a report to the master's answer.",
            buckets=DURATION_BUCKETS,
            registry=registry,
        )
        self._outcomes = {outcome: self.reports.labels(outcome) for outcome in OUTCOMES}

    def reported(self, outcome: str, seconds: float | None, now: float) -> None:
        """
        An attempt ended with C{outcome} after C{seconds} (None when it
        never reached the master).
        """
        self._outcomes[outcome].inc()
        if seconds is not None:
            self.duration.observe(seconds)
        if outcome == "accepted":
            self.lastSuccess.set(now)
