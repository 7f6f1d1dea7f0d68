"""
Tests for L{haven_agent.metrics.exposition}: the sum over processes, the
snapshot that crosses the worker pipe, and the text prometheus_client's own
parser reads back.
"""

from __future__ import annotations

import json

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.parser import text_string_to_metric_families
from twisted.trial.unittest import SynchronousTestCase

from haven_agent.metrics.exposition import (
    encode_snapshot,
    families_from_json,
    merge,
    render,
)
from tests.metrics.test_proxy_metrics import samples, value


def process(requests: int, up: int, started: float, seconds: list[float]):
    """
    The families of one process with these figures.
    """
    registry = CollectorRegistry()
    Counter("haven_agent_http_requests", "r", ("code",), registry=registry).labels(
        "200"
    ).inc(requests)
    Gauge("haven_agent_docker_up", "u", registry=registry).set(up)
    Gauge("process_start_time_seconds", "s", registry=registry).set(started)
    Gauge("haven_agent_open_connections", "c", registry=registry).set(requests)
    histogram = Histogram(
        "haven_agent_http_request_first_byte_seconds",
        "f",
        buckets=(0.01, 1.0),
        registry=registry,
    )
    for s in seconds:
        histogram.observe(s)
    return list(registry.collect())


class MergeTests(SynchronousTestCase):
    def test_sum_max_min(self) -> None:
        """
        Counters, histograms and plain gauges add up; "is up" takes the
        largest, a start time the smallest.
        """
        merged = merge(
            [process(3, 0, 200.0, [0.001]), process(4, 1, 100.0, [0.5, 2.0])]
        )
        found = samples(render(merged).decode())
        self.assertEqual(value(found, "haven_agent_http_requests_total", code="200"), 7)
        self.assertEqual(value(found, "haven_agent_open_connections"), 7)
        self.assertEqual(value(found, "haven_agent_docker_up"), 1)
        self.assertEqual(value(found, "process_start_time_seconds"), 100)
        bucket = "haven_agent_http_request_first_byte_seconds_bucket"
        self.assertEqual(value(found, bucket, le="0.01"), 1)
        self.assertEqual(value(found, bucket, le="1.0"), 2)
        self.assertEqual(value(found, bucket, le="+Inf"), 3)
        self.assertEqual(
            value(found, "haven_agent_http_request_first_byte_seconds_sum"), 2.501
        )

    def test_one_process_as_it_is(self) -> None:
        families = process(1, 1, 1.0, [])
        self.assertEqual(merge([families]), families)

    def test_no_created_series(self) -> None:
        text = render(process(1, 1, 1.0, [0.1])).decode()
        self.assertNotIn("_created", text)
        self.assertIn("haven_agent_http_requests_total", text)

    def test_snapshot_round_trip(self) -> None:
        """
        A snapshot read back on the other side of the pipe renders as the
        families it was made from.
        """
        families = process(5, 1, 10.0, [0.2, 0.3])
        back = families_from_json(json.loads(encode_snapshot(families)))
        self.assertEqual(render(back), render(families))
        parsed = list(text_string_to_metric_families(render(back).decode()))
        self.assertEqual(
            [f.name for f in parsed],
            [
                "haven_agent_http_requests",
                "haven_agent_docker_up",
                "process_start_time_seconds",
                "haven_agent_open_connections",
                "haven_agent_http_request_first_byte_seconds",
            ],
        )
