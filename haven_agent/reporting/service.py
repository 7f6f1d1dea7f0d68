# -*- test-case-name: tests.reporting.test_service -*-
"""
The reporting half of the agent: settle the node's name, then report.

The master files reports under the node's name, so it is settled once at
start-up and kept: `--node-name`, else Docker's `info.Name`, else the short
host name. A name the master would refuse stops reporting with a clear
error; the proxy goes on serving. Then the reporter (to the master, or to the
log when none is configured) runs beside a watcher of dockerd's events, which
asks for an early report when containers change.
"""

from __future__ import annotations

import socket
from typing import Any

import treq
from twisted.application.service import MultiService
from twisted.internet.defer import CancelledError, Deferred, succeed
from twisted.internet.ssl import Certificate
from twisted.logger import Logger
from twisted.web.client import Agent, BrowserLikePolicyForHTTPS

from haven_agent._twisted.http_pool import quiet_pool
from haven_agent.config import ReporterConfig
from haven_agent.metrics.reporter_metrics import ReporterMetrics
from haven_agent.reporting.collector import NodeCollector
from haven_agent.reporting.docker_api import (
    DockerAPI,
    DockerEventWatcher,
    DockerUnavailable,
)
from haven_agent.reporting.host_metrics import HostRoot, MountProber
from haven_agent.reporting.node_identity import default_node_name
from haven_agent.reporting.reporter import LogReporter, ReporterService
from haven_agent.thread_pools import ThreadPools

log = Logger()


class NodeReporting(MultiService):
    """
    Reports this node every interval, and early when containers change.

    The host is read (psutil, the statvfs of each mount) in C{threads}' host
    pool, where a probe stuck on a dead mount holds up nothing else.
    """

    def __init__(
        self,
        config: ReporterConfig,
        reactor: Any,
        threads: ThreadPools,
        metrics: ReporterMetrics | None = None,
    ) -> None:
        super().__init__()
        self._metrics = metrics
        self._config = config
        self._reactor = reactor
        self._threads = threads
        self._docker = DockerAPI(reactor, config.docker)
        self._settling: Deferred[Any] | None = None
        self.nodeName: str | None = None
        self.collector: NodeCollector | None = None

    def startService(self) -> None:
        super().startService()
        settling = self._settling = self._settleName()
        settling.addCallback(self._startReporting)
        settling.addErrback(self._failedToStart)

    def stopService(self) -> Deferred[Any]:
        if self._settling is not None:
            self._settling.cancel()
        stopped = super().stopService()
        stopped.addBoth(lambda _: self._docker.close())
        return stopped

    def _settleName(self) -> Deferred[str | None]:
        if self._config.nodeName is not None:
            return succeed(self._config.nodeName)
        asking = self._docker.info()
        asking.addCallback(lambda info: info.get("Name"))
        asking.addErrback(self._dockerNameUnknown)
        asking.addCallback(self._defaultName)
        return asking

    def _dockerNameUnknown(self, failure) -> None:
        failure.trap(DockerUnavailable)
        log.warn(
            "Docker's name is unknown ({problem}); naming the node after the host",
            problem=failure.getErrorMessage(),
        )
        return None

    def _failedToStart(self, failure) -> None:
        if not failure.check(CancelledError):
            log.failure("cannot start reporting", failure)

    def _defaultName(self, dockerName: str | None) -> str | None:
        try:
            return default_node_name(dockerName, socket.gethostname())
        except ValueError as e:
            log.error("not reporting: {problem}; set --node-name", problem=str(e))
            return None

    def _startReporting(self, name: str | None) -> None:
        self._settling = None
        if name is None:
            return
        config, reactor = self._config, self._reactor
        self.nodeName = name

        runInThread = self._threads.defer_to_host
        self.collector = NodeCollector(
            clock=reactor,
            runInThread=runInThread,
            docker=self._docker,
            prober=MountProber(reactor, runInThread),
            root=HostRoot(config.hostRoot),
            master=config.master,
            listenPort=config.listenPort,
            nodeName=name,
            address=config.address,
            networkFilesystems=config.networkFilesystems,
        )
        if config.master is None:
            reporter: Any = LogReporter(
                clock=reactor,
                collect=self.collector.collect,
                node_name=name,
                interval=config.interval,
            )
        else:
            reporter = ReporterService(
                clock=reactor,
                http=master_client(reactor, config.masterCA),
                collect=self.collector.collect,
                master=config.master,
                node_name=name,
                secret=config.secret,
                interval=config.interval,
                metrics=self._metrics,
            )
        reporter.setServiceParent(self)
        DockerEventWatcher(
            reactor, self._docker.events, reporter.report_soon
        ).setServiceParent(self)


def master_client(reactor: Any, caFile: str | None) -> treq.client.HTTPClient:
    """
    An HTTP client for the master; for an https:// master it trusts the
    system's roots, or only the CA in C{caFile} when given.
    """
    policy = BrowserLikePolicyForHTTPS()
    if caFile is not None:
        with open(caFile, "rb") as f:
            policy = BrowserLikePolicyForHTTPS(trustRoot=Certificate.loadPEM(f.read()))
    pool = quiet_pool(reactor, maxPerHost=1)
    return treq.client.HTTPClient(Agent(reactor, contextFactory=policy, pool=pool))
