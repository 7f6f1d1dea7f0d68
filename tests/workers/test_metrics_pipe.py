"""
Tests for L{haven_agent.workers.metrics_pipe}: both ends of a worker's
metrics pipe over in-memory transports and a C{Clock}, and what the agent's
page makes of workers that answer, do not answer, or ended.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge
from twisted.internet.defer import succeed
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.trial.unittest import SynchronousTestCase

from haven_agent.metrics.exposition import merge, render
from haven_agent.workers.metrics_pipe import (
    SNAPSHOT_TIMEOUT,
    AgentEnd,
    WorkerEnd,
    WorkerSnapshots,
)
from tests.metrics.test_proxy_metrics import samples, value


def families(requests: int, open_connections: int):
    registry = CollectorRegistry()
    Counter("haven_agent_connections", "c", registry=registry).inc(requests)
    Gauge("haven_agent_open_connections", "o", registry=registry).set(open_connections)
    return list(registry.collect())


class Pair:
    """
    A worker's end and the agent's end, wired through two transports that
    a test delivers by hand.
    """

    def __init__(self, clock: Clock, own) -> None:
        self.toWorker = StringTransport()
        self.toAgent = StringTransport()
        self.worker = WorkerEnd(own, clock, lambda: None)
        self.worker.makeConnection(self.toAgent)
        self.agent = AgentEnd("worker 1", self.toWorker.write, self.page, clock)
        self.pages = 0

    def page(self):
        self.pages += 1
        return succeed(b"the page\n")

    def deliver(self) -> None:
        for source, sink in (
            (self.toWorker, self.worker.dataReceived),
            (self.toAgent, self.agent.dataReceived),
        ):
            data = source.value()
            source.clear()
            if data:
                sink(data)


class PipeTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()

    def test_snapshot(self) -> None:
        pair = Pair(self.clock, lambda: succeed(families(3, 2)))
        asked = pair.agent.snapshot()
        pair.deliver()
        got = self.successResultOf(asked)
        self.assertEqual(render(got), render(families(3, 2)))
        self.assertEqual(pair.agent.last, got)

    def test_page_for_a_scraped_worker(self) -> None:
        pair = Pair(self.clock, lambda: succeed([]))
        page = pair.worker.page()
        pair.deliver()
        pair.deliver()
        self.assertEqual(self.successResultOf(page), b"the page\n")
        self.assertEqual(pair.pages, 1)

    def test_garbage_ignored(self) -> None:
        """
        Lines that are not JSON messages are dropped with a log line, and
        the next message is still read.
        """
        pair = Pair(self.clock, lambda: succeed(families(1, 1)))
        pair.agent.dataReceived(b"not json\n[1, 2]\n")
        asked = pair.agent.snapshot()
        pair.deliver()
        self.successResultOf(asked)


class SnapshotsTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.snapshots = WorkerSnapshots()

    def add(self, index: int, own) -> Pair:
        pair = Pair(self.clock, own)
        self.snapshots.ends[index] = pair.agent
        return pair

    def test_silent_worker_left_out(self) -> None:
        """
        A worker that does not answer in time is left out of the page,
        which the others still make.
        """
        talking = self.add(1, lambda: succeed(families(5, 1)))
        self.add(2, lambda: succeed(families(7, 1)))
        gathering = self.snapshots.gather()
        talking.deliver()
        self.assertNoResult(gathering)
        self.clock.advance(SNAPSHOT_TIMEOUT)
        got = self.successResultOf(gathering)
        found = samples(render(merge(got)).decode())
        self.assertEqual(value(found, "haven_agent_connections_total"), 5)

    def test_ended_workers_counters_stay(self) -> None:
        """
        The counters of a worker that ended stay as last seen; its gauges
        go with it.
        """
        pair = self.add(1, lambda: succeed(families(4, 3)))
        gathering = self.snapshots.gather()
        pair.deliver()
        self.successResultOf(gathering)
        del self.snapshots.ends[1]
        self.snapshots.retire(pair.agent)
        restarted = self.add(1, lambda: succeed(families(1, 1)))
        gathering = self.snapshots.gather()
        restarted.deliver()
        found = samples(render(merge(self.successResultOf(gathering))).decode())
        self.assertEqual(value(found, "haven_agent_connections_total"), 5)
        self.assertEqual(value(found, "haven_agent_open_connections"), 1)
