# -*- test-case-name: tests.reporting.test_service -*-
"""
Gathering one node report: host metrics and Docker state, off the reactor.

Everything that can block (reading /proc, psutil, statvfs, resolving the
master's name) goes through the one thread seam this collector is given, and
disk probes go through a `MountProber`, which bounds each mount with a timeout
and never starts a second probe on a mount that still hangs. Docker state
comes over dockerd's socket; when dockerd is down the report still goes out
with the host's metrics, no labels and no containers, and a warning is logged
once per outage.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit

from attrs import define, field
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.logger import Logger

from haven_agent.reporting.cpu import CpuLoadMeter, read_cpu_times
from haven_agent.reporting.docker_api import DockerAPI, DockerUnavailable
from haven_agent.reporting.host_metrics import (
    HostRoot,
    MountProber,
    read_memory,
    read_mounts,
    read_network,
)
from haven_agent.reporting.node_identity import (
    advertised_address,
    local_address_towards,
)
from haven_agent.reporting.recurring_problem import RecurringProblem
from haven_agent.reporting.report import (
    HostSnapshot,
    build_report,
    parse_labels,
    summarize_containers,
)

log = Logger()


@define(eq=False)
class NodeCollector:
    """
    Produces report bodies for the reporter.

    @ivar _nodeName: the node's name, settled at start-up.
    @ivar _address: the configured address, or None to work out once the IP
        that routes to the master.
    """

    _clock: Any
    _runInThread: Callable[..., Deferred[Any]]
    _docker: DockerAPI
    _prober: MountProber
    _root: HostRoot
    _master: str | None
    _listenPort: int
    _nodeName: str
    _address: str | None = None
    _networkFilesystems: bool = False
    _cpu: CpuLoadMeter = field(init=False)
    _dockerDown: RecurringProblem = field(init=False)
    _addressUnknown: RecurringProblem = field(init=False)
    lastDuration: float | None = field(init=False, default=None)

    def __attrs_post_init__(self) -> None:
        root = self._root
        self._cpu = CpuLoadMeter(lambda: read_cpu_times(root.proc))
        self._dockerDown = RecurringProblem(log)
        self._addressUnknown = RecurringProblem(log)

    @inlineCallbacks
    def collect(self):
        started = time.monotonic()
        cpuLoad, memory, net, mounts = yield self._runInThread(self._readHost)
        disks, _stuck = yield self._prober.probe(self._root, mounts)
        info, containers = yield self._dockerState()
        address = yield self._advertisedAddress()
        body = build_report(
            moment=datetime.fromtimestamp(self._clock.seconds(), UTC),
            name=self._nodeName,
            address=address,
            host=HostSnapshot(cpu_load=cpuLoad, memory=memory, disks=disks, net=net),
            labels=parse_labels(info.get("Labels")),
            containers=summarize_containers(containers),
        )
        self.lastDuration = time.monotonic() - started
        log.debug("collected a report in {duration:.3f} s", duration=self.lastDuration)
        return body

    def _readHost(self):
        """
        The blocking part, in one thread hop: CPU, memory, network, mounts.
        """
        root = self._root
        return (
            self._cpu.sample(),
            read_memory(root),
            read_network(root),
            read_mounts(root, self._networkFilesystems),
        )

    @inlineCallbacks
    def _dockerState(self):
        try:
            info = yield self._docker.info()
            containers = yield self._docker.containers()
        except DockerUnavailable as e:
            self._dockerDown.occurred(
                str(e),
                "Docker is unavailable ({problem}); reporting host metrics "
                "without labels and containers",
            )
            return {}, []
        self._dockerDown.cleared(
            "Docker is available again (unavailable for {occurrences} reports)"
        )
        return info, containers

    @inlineCallbacks
    def _advertisedAddress(self):
        if self._address is None:
            host, port = _master_host_port(self._master)
            try:
                ip = yield self._runInThread(local_address_towards, host, port)
            except OSError as e:
                self._addressUnknown.occurred(
                    str(e),
                    "cannot tell which local address reaches {host}: {problem}; "
                    "set --address",
                    host=host,
                )
                return advertised_address("127.0.0.1", self._listenPort)
            self._addressUnknown.cleared(
                "found the local address that reaches {host} (after {occurrences} "
                "failed attempts)",
                host=host,
            )
            self._address = advertised_address(ip, self._listenPort)
            log.info("advertising {address} to the master", address=self._address)
            if "[" in self._address:
                log.warn(
                    "{address} is an IPv6 address, which the stock Haven master "
                    "cannot connect to; give this host an IPv4 address or set "
                    "--address",
                    address=self._address,
                )
        return self._address


def _master_host_port(master: str | None) -> tuple[str, int]:
    """
    Where the master is, to find the local IP that routes there; without a
    master, the IP of the default route (towards a documentation address,
    to which nothing is sent).
    """
    if master is None:
        return "192.0.2.1", 9
    parts = urlsplit(master)
    return parts.hostname or "", parts.port or (443 if parts.scheme == "https" else 80)
