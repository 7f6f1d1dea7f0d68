# -*- test-case-name: tests.metrics.test_scrape -*-
"""
Answering one scrape: gather on the reactor thread, render in a thread.

What describes the present (connections by state, dockerd up, certificate
expiry) is read on the reactor thread, where it changes; the node's
figures come from their own non-blocking collection; the registry is then
collected and the text rendered in a thread, since rendering a thousand
lines takes tens of milliseconds that no connection should wait for. With
worker processes, their snapshots are merged in before rendering (see
`worker_metrics`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from attrs import define
from prometheus_client import CollectorRegistry
from prometheus_client.core import Metric
from twisted.internet.defer import Deferred, inlineCallbacks, maybeDeferred

from haven_agent.metrics.exposition import merge, render

#: Another source of families: the node's, or other processes' snapshots.
Families = Callable[[], Deferred[list[Metric]]]


@define(eq=False)
class MetricsPage:
    """
    The metrics of this process, and the page a scrape is answered with.

    @ivar _inThread: runs a blocking callable in a thread, returning a
        Deferred (the agent's worker pool).
    @ivar _before: sets the gauges of the present, on the reactor thread;
        may return a Deferred.
    @ivar node: the node's figures, when the node metrics are on.
    @ivar others: the other processes' families, with `--workers`.
    """

    _registry: CollectorRegistry
    _inThread: Callable[..., Deferred[Any]]
    _before: Callable[[], Any] = lambda: None
    node: Families | None = None
    others: Callable[[], Deferred[list[list[Metric]]]] | None = None

    def own(self) -> Deferred[list[Metric]]:
        """
        This process's registry, collected (the node's figures aside).
        """
        refreshing = maybeDeferred(self._before)
        refreshing.addCallback(
            lambda _: self._inThread(lambda: list(self._registry.collect()))
        )
        return refreshing

    @inlineCallbacks
    def render(self):
        """
        The whole page: this process, the others, the node; as bytes.
        """
        processes = [(yield self.own())]
        if self.others is not None:
            processes.extend((yield self.others()))
        node = [] if self.node is None else (yield self.node())
        return (yield self._inThread(lambda: render(merge(processes) + node)))
