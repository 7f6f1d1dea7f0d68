# -*- test-case-name: tests.metrics.test_node -*-
"""
The node's figures for Prometheus, under node_exporter's names.

Operators already have dashboards and alerts written against node_exporter,
so the host's CPU, load, memory, file systems, network and boot time are
exported with its metric names, types, help texts and labels, and whoever
scrapes the agent needs no node_exporter beside it. Only the families listed
in L{NodeMetrics} are produced, each from the same source node_exporter
reads.

The figures come from the host's C{/proc} as L{HostRoot} finds it (with a
host root, per-namespace files are those of the host's process 1), read in
the host thread seam on every scrape. File systems are measured through a
L{MountProber}, like the reporter's disks: one thread per mount at most and a
timeout on the reactor side, so a dead network mount shows as
C{node_filesystem_device_error 1} instead of hanging the scrape or piling up
threads. Which mounts count is L{parse_mounts}'s choice, the one the reports
to the master make. Unlike the reports, C{lo} is included and bind mounts of
one file system are listed each under its own mount point, as node_exporter
does.

A file that cannot be read or parsed costs only the families made from it,
with one log line when the problem starts and one when it ends.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from attrs import Factory, define, field, frozen
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from twisted.internet.defer import Deferred, inlineCallbacks, maybeDeferred
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from haven_agent.reporting.host_metrics import (
    HostRoot,
    Mount,
    MountProber,
    parse_meminfo,
    parse_mounts,
    read_text,
    unescape_mount_field,
)
from haven_agent.reporting.recurring_problem import RecurringProblem

log = Logger()

#: Clock ticks per second of the counters in C{/proc/stat}.
USER_HZ = os.sysconf("SC_CLK_TCK")

#: The modes of C{node_cpu_seconds_total}, in C{/proc/stat}'s order. guest
#: and guest_nice follow them there; they are already counted in user and
#: nice, and node_exporter keeps them out of this metric.
CPU_MODES = ("user", "nice", "system", "idle", "iowait", "irq", "softirq", "steal")

#: The meminfo fields exported, each as C{node_memory_<field>_bytes}.
MEMORY_FIELDS = ("MemTotal", "MemAvailable", "SwapTotal", "SwapFree")

#: The net/dev counters exported, each as C{node_network_<name>_total}, with
#: their column in a net/dev line (after the interface name).
NETWORK_COUNTERS = (
    ("receive_bytes", 0),
    ("receive_errs", 2),
    ("transmit_bytes", 8),
    ("transmit_errs", 10),
)

FILESYSTEM_LABELS = ("device", "mountpoint", "fstype")

_CPU_LINE = re.compile(r"cpu(\d+)$")


def parse_cpu_seconds(text: str, user_hz: int = USER_HZ) -> dict[str, dict[str, float]]:
    """
    C{{cpu: {mode: seconds}}} from the per-CPU lines (C{cpu0}, C{cpu1}, ...)
    of C{/proc/stat}; the aggregate C{cpu} line is not one of them.

    Old kernels print fewer counters; the missing modes count 0, as in
    node_exporter. A line that does not parse is left out.

    @raise ValueError: when there is no per-CPU line at all.
    """
    cpus: dict[str, dict[str, float]] = {}
    for line in text.splitlines():
        fields = line.split()
        match = _CPU_LINE.match(fields[0]) if fields else None
        if match is None:
            continue
        try:
            ticks = [int(value) for value in fields[1 : 1 + len(CPU_MODES)]]
        except ValueError:
            continue
        ticks += [0] * (len(CPU_MODES) - len(ticks))
        cpus[str(int(match.group(1)))] = {
            mode: count / user_hz for mode, count in zip(CPU_MODES, ticks, strict=True)
        }
    if not cpus:
        raise ValueError("no per-CPU lines")
    return cpus


def parse_boot_time(text: str) -> int:
    """
    The boot time in seconds since the epoch: C{btime} of C{/proc/stat}.

    @raise ValueError: when there is no C{btime} line.
    """
    for line in text.splitlines():
        fields = line.split()
        if len(fields) == 2 and fields[0] == "btime":
            return int(fields[1])
    raise ValueError("no btime line")


def parse_loadavg(text: str) -> tuple[float, float, float]:
    """
    The 1, 5 and 15 minute load averages from C{/proc/loadavg}.

    @raise ValueError: when they are not its first three fields.
    """
    fields = text.split()
    if len(fields) < 3:
        raise ValueError("fewer than three load averages")
    return float(fields[0]), float(fields[1]), float(fields[2])


def parse_net_dev_counters(text: str) -> dict[str, dict[str, int]]:
    """
    C{{interface: {counter: value}}} of L{NETWORK_COUNTERS} from the text of
    C{net/dev}, C{lo} included. Lines that do not parse are left out.
    """
    interfaces: dict[str, dict[str, int]] = {}
    for line in text.splitlines():
        name, colon, rest = line.partition(":")
        name = name.strip()
        if not colon or not name or "|" in name:
            continue
        values = rest.split()
        try:
            interfaces[name] = {
                counter: int(values[column]) for counter, column in NETWORK_COUNTERS
            }
        except (IndexError, ValueError):
            continue
    return interfaces


def readonly_mountpoints(text: str) -> frozenset[str]:
    """
    The mount points mounted read-only (option C{ro}), from a mounts text.

    The kernel's C{ro} there means the mount or its whole file system is
    read-only, which is node_exporter's test. As in L{parse_mounts}, the last
    entry of a mount point wins.
    """
    readonly: set[str] = set()
    for line in text.splitlines():
        fields = line.split()
        if len(fields) < 4:
            continue
        mountpoint = unescape_mount_field(fields[1])
        if "ro" in fields[3].split(","):
            readonly.add(mountpoint)
        else:
            readonly.discard(mountpoint)
    return frozenset(readonly)


def filesystem_stats(root: HostRoot, mount: Mount) -> dict[str, int]:
    """
    The statvfs figures of one mount for its node_filesystem families:
    C{total}, C{used}, C{avail} (bytes) and C{files}, C{files_free} (inodes).

    BLOCKING, and forever on a dead network mount: run it through a
    L{MountProber}. Sizes are in fragments (f_frsize), as df counts them;
    avail leaves out the blocks reserved for root. Unlike the reporter's
    L{disk_usage<haven_agent.reporting.host_metrics.disk_usage>}, files bind
    mounted over files are measured too, and no device number is returned, so
    the prober does not fold bind mounts of one file system into one.

    @raise OSError: when statvfs fails.
    """
    usage = os.statvfs(root.host_path(mount.mountpoint))
    return {
        "total": usage.f_blocks * usage.f_frsize,
        "used": (usage.f_blocks - usage.f_bfree) * usage.f_frsize,
        "avail": usage.f_bavail * usage.f_frsize,
        "files": usage.f_files,
        "files_free": usage.f_ffree,
    }


def cpu_family(cpus: Mapping[str, Mapping[str, float]]) -> Metric:
    family = CounterMetricFamily(
        "node_cpu_seconds_total",
        "Seconds the CPUs spent in each mode.",
        labels=("cpu", "mode"),
    )
    for cpu, modes in cpus.items():
        for mode, seconds in modes.items():
            family.add_metric((cpu, mode), seconds)
    return family


def boot_time_family(boot_time: int) -> Metric:
    return GaugeMetricFamily(
        "node_boot_time_seconds", "Node boot time, in unixtime.", value=boot_time
    )


def load_families(load: Sequence[float]) -> list[Metric]:
    return [
        GaugeMetricFamily(f"node_load{minutes}", f"{minutes}m load average.", value=v)
        for minutes, v in zip((1, 5, 15), load, strict=True)
    ]


def memory_families(meminfo: Mapping[str, int]) -> list[Metric]:
    """
    The L{MEMORY_FIELDS} present in C{meminfo} (as L{parse_meminfo} gives it);
    old kernels have no MemAvailable.

    @raise ValueError: when none of them is there.
    """
    families: list[Metric] = [
        GaugeMetricFamily(
            f"node_memory_{name}_bytes",
            f"Memory information field {name}_bytes.",
            value=meminfo[name],
        )
        for name in MEMORY_FIELDS
        if name in meminfo
    ]
    if not families:
        raise ValueError("none of " + ", ".join(MEMORY_FIELDS))
    return families


def network_families(interfaces: Mapping[str, Mapping[str, int]]) -> list[Metric]:
    families: list[Metric] = []
    for counter, _column in NETWORK_COUNTERS:
        family = CounterMetricFamily(
            f"node_network_{counter}_total",
            f"Network device statistic {counter}.",
            labels=("device",),
        )
        for device, counters in interfaces.items():
            family.add_metric((device,), counters[counter])
        families.append(family)
    return families


def filesystem_families(
    mounts: Iterable[Mount],
    readonly: frozenset[str],
    measured: Mapping[str, Mapping[str, int]],
) -> list[Metric]:
    """
    The node_filesystem families of C{mounts}, from what the prober measured.

    A mount missing from C{measured} (stuck, or statvfs failed) has
    C{device_error 1} and no size series, like in node_exporter; its
    C{readonly} comes from the mount table all the same. Figures the
    measurement lacks are left out rather than guessed.
    """

    def gauge(name: str, documentation: str) -> GaugeMetricFamily:
        return GaugeMetricFamily(
            f"node_filesystem_{name}", documentation, labels=FILESYSTEM_LABELS
        )

    size = gauge("size_bytes", "Filesystem size in bytes.")
    free = gauge("free_bytes", "Filesystem free space in bytes.")
    avail = gauge(
        "avail_bytes", "Filesystem space available to non-root users in bytes."
    )
    files = gauge("files", "Filesystem total file nodes.")
    files_free = gauge("files_free", "Filesystem total free file nodes.")
    ro = gauge("readonly", "Filesystem read-only status.")
    device_error = gauge(
        "device_error",
        "Whether an error occurred while getting statistics for the given device.",
    )
    optional = (("avail", avail), ("files", files), ("files_free", files_free))
    for mount in mounts:
        labels = (mount.device, mount.mountpoint, mount.fstype)
        ro.add_metric(labels, 1 if mount.mountpoint in readonly else 0)
        usage = measured.get(mount.mountpoint)
        if usage is None:
            device_error.add_metric(labels, 1)
            continue
        device_error.add_metric(labels, 0)
        size.add_metric(labels, usage["total"])
        free.add_metric(labels, usage["total"] - usage["used"])
        for key, family in optional:
            if key in usage:
                family.add_metric(labels, usage[key])
    return [size, free, avail, files, files_free, ro, device_error]


@frozen
class _ProcReading:
    """
    What one pass over C{/proc} found.

    @ivar families: those made from C{/proc} alone.
    @ivar mounts: the mounts to measure; None when the table was unusable.
    @ivar outcomes: C{(source, problem or None)} for each file and parse.
    """

    families: list[Metric]
    mounts: list[Mount] | None
    readonly: frozenset[str]
    outcomes: list[tuple[str, str | None]]


@define(eq=False)
class NodeMetrics:
    """
    Gathers the node's families on demand (each scrape): C{node_cpu_seconds_total},
    C{node_load1}/C{5}/C{15}, C{node_memory_{MemTotal,MemAvailable,SwapTotal,
    SwapFree}_bytes}, the C{node_filesystem_*} gauges (size, free, avail,
    files, files_free, readonly, device_error), C{node_network_{receive,
    transmit}_{bytes,errs}_total} and C{node_boot_time_seconds}.

    @ivar _runInThread: C{f(*args) -> Deferred}, running the blocking C{/proc}
        reads off the reactor thread (the host thread seam).
    @ivar _prober: measures the file systems; by default one of its own that
        runs L{filesystem_stats} through C{_runInThread}. avail and the inode
        counts are exported when the prober hands on more figures than used
        and total.
    @ivar includeNetworkFilesystems: whether NFS, CIFS and the like are
        measured (the reporter's C{--network-filesystems}).
    """

    _root: HostRoot
    _runInThread: Callable[..., Deferred[Any]]
    _clock: IReactorTime
    _prober: MountProber = field(
        default=Factory(
            lambda self: MountProber(
                self._clock, self._runInThread, usage=filesystem_stats
            ),
            takes_self=True,
        )
    )
    includeNetworkFilesystems: bool = False
    _problems: dict[str, RecurringProblem] = field(factory=dict, init=False)
    # Scrapes waiting for the collection under way: they share it, so
    # scrapes arriving while the thread pool is busy queue no more work.
    _waiting: list[Deferred[list[Metric]]] = field(factory=list, init=False)

    def gather(self) -> Deferred[list[Metric]]:
        """
        Fire with the node's families, on the reactor thread. Never fails:
        what cannot be read is left out, with a log line.

        A call while a collection is under way shares that collection.
        Cancelling the result stops only this caller's wait.
        """
        waiter: Deferred[list[Metric]] = Deferred()
        self._waiting.append(waiter)
        if len(self._waiting) == 1:
            self._collect().addBoth(self._deliver)
        return waiter

    def _deliver(self, result: list[Metric] | Failure) -> None:
        if isinstance(result, Failure):
            log.failure("node metrics could not be gathered", result)
            result = []
        waiting, self._waiting = self._waiting, []
        for waiter in waiting:
            if not waiter.called:
                waiter.callback(list(result))

    @inlineCallbacks
    def _collect(self):
        reading = yield maybeDeferred(self._runInThread, self._readProc)
        self._note(reading.outcomes)
        families = list(reading.families)
        if reading.mounts is not None:
            measured, _stuck = yield self._prober.probe(self._root, reading.mounts)
            families += filesystem_families(reading.mounts, reading.readonly, measured)
        return [family for family in families if family.samples]

    def _note(self, outcomes: Iterable[tuple[str, str | None]]) -> None:
        for source, problem in outcomes:
            recurring = self._problems.get(source)
            if problem is not None:
                if recurring is None:
                    recurring = self._problems[source] = RecurringProblem(log)
                recurring.occurred(
                    problem,
                    "node metrics: cannot use {source} ({problem}); "
                    "its figures are left out",
                    source=source,
                )
            elif recurring is not None:
                recurring.cleared(
                    "node metrics: {source} usable again (after {occurrences} "
                    "scrapes)",
                    source=source,
                )

    def _readProc(self) -> _ProcReading:
        """
        The blocking part, in one thread hop: read and parse every file.
        """
        proc = self._root.proc
        outcomes: list[tuple[str, str | None]] = []

        def read(path: str) -> str | None:
            try:
                text = read_text(path)
            except OSError as e:
                outcomes.append((path, e.strerror or str(e)))
                return None
            outcomes.append((path, None))
            return text

        families: list[Metric] = []
        for path, parsers in (
            (
                os.path.join(proc, "stat"),
                (
                    ("cpu", lambda t: [cpu_family(parse_cpu_seconds(t))]),
                    ("btime", lambda t: [boot_time_family(parse_boot_time(t))]),
                ),
            ),
            (
                os.path.join(proc, "loadavg"),
                (("load", lambda t: load_families(parse_loadavg(t))),),
            ),
            (
                os.path.join(proc, "meminfo"),
                (("memory", lambda t: memory_families(parse_meminfo(t))),),
            ),
            (
                self._root.namespaced("net", "dev"),
                (("network", lambda t: network_families(parse_net_dev_counters(t))),),
            ),
        ):
            text = read(path)
            if text is None:
                continue
            for what, parser in parsers:
                source = f"{path} ({what})"
                try:
                    families += parser(text)
                except ValueError as e:
                    outcomes.append((source, str(e)))
                else:
                    outcomes.append((source, None))

        path = self._root.namespaced("mounts")
        table = read(path)
        mounts = None
        readonly: frozenset[str] = frozenset()
        if table is not None:
            mounts = parse_mounts(table, self.includeNetworkFilesystems)
            readonly = readonly_mountpoints(table)
        return _ProcReading(families, mounts, readonly, outcomes)
