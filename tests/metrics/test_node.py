"""
Tests for L{haven_agent.metrics.node}: the parsers on sample text, the
families rendered and parsed back as Prometheus text from a fake host root,
stuck and failing mounts through a L{MountProber} on a L{Clock}, unreadable
files, and this machine's own C{/proc}.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any, cast

from prometheus_client import CollectorRegistry
from prometheus_client.core import Metric
from prometheus_client.exposition import generate_latest
from prometheus_client.parser import text_string_to_metric_families
from twisted.internet.defer import Deferred, maybeDeferred, succeed
from twisted.internet.task import Clock
from twisted.logger import ILogObserver, LogEvent, Logger, LogLevel, formatEvent
from twisted.trial.unittest import SynchronousTestCase

from haven_agent.metrics import node
from haven_agent.metrics.node import (
    CPU_MODES,
    NodeMetrics,
    filesystem_stats,
    parse_boot_time,
    parse_cpu_seconds,
    parse_loadavg,
    parse_net_dev_counters,
    readonly_mountpoints,
)
from haven_agent.reporting.host_metrics import HostRoot, Mount, MountProber
from tests.reporting.test_host_metrics import write_tree

USER_HZ = os.sysconf("SC_CLK_TCK")

STAT = """\
cpu  3000 20 1000 90000 500 0 70 5 0 0
cpu0 1000 10 400 45000 200 0 30 2 7 1
cpu1 2000 10 600 45000 300 0 40 3 0 0
intr 123456 0 0
ctxt 987654
btime 1700000000
processes 4242
procs_running 2
procs_blocked 0
"""

LOADAVG = "0.85 0.49 0.20 2/217 27212\n"

MEMINFO = """\
MemTotal:       16000000 kB
MemFree:         4000000 kB
MemAvailable:    9000000 kB
Buffers:          500000 kB
SwapTotal:       2000000 kB
SwapFree:        1500000 kB
HugePages_Total:       0
"""

NET_DEV_HEAD = """\
Inter-|   Receive                                                |  Transmit
 face |bytes    packets errs drop fifo frame compressed multicast|bytes    packets errs drop fifo colls carrier compressed
"""  # noqa: E501

# The host's namespace, as process 1 sees it.
NET_DEV_HOST = NET_DEV_HEAD + """\
    lo: 99999999   44403    0    0    0     0          0         0 99999999   44403    0    0    0     0       0          0
  ens3: 124623420   2690    3    0    0     0          0         0   165775    1865    4    0    0     0       0          0
docker0:5000       50    0    0    0     0          0         0     6000      60    0    0    0     0       0          0
  bad0: garbage
"""  # noqa: E501

# The agent's own (container) namespace, which must not be read.
NET_DEV_OWN = NET_DEV_HEAD + """\
  eth0:    1000       10    0    0    0     0          0         0     2000      20    0    0    0     0       0          0
"""  # noqa: E501

MOUNTS_HOST = """\
/dev/sda1 / ext4 rw,relatime 0 0
proc /proc proc rw,nosuid 0 0
tmpfs /run tmpfs rw 0 0
/dev/sdb1 /data xfs ro,relatime 0 0
/dev/sdc1 /mnt/my\\040disk ext4 rw 0 0
/dev/sdd1 /gone ext4 rw 0 0
server:/export /mnt/nfs nfs4 rw 0 0
overlay /var/lib/docker/overlay2/abc/merged overlay rw 0 0
"""

MOUNTS_OWN = """\
overlay / overlay rw 0 0
"""

# Always there for a measured mount.
FILESYSTEM_FAMILIES = [
    "node_filesystem_size_bytes",
    "node_filesystem_free_bytes",
    "node_filesystem_readonly",
    "node_filesystem_device_error",
]
# There when the measurement carries them (see FilesystemFiguresTests).
FILESYSTEM_DETAIL_FAMILIES = [
    "node_filesystem_avail_bytes",
    "node_filesystem_files",
    "node_filesystem_files_free",
]


class _Families:
    def __init__(self, families: Sequence[Metric]) -> None:
        self._families = families

    def collect(self) -> Iterable[Metric]:
        return self._families


def scraped(families: list[Metric]) -> dict[str, Metric]:
    """
    C{families} rendered as Prometheus text and parsed back, by family name
    (counters lose their C{_total} there, their samples keep it).
    """
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Families(families))
    text = generate_latest(registry).decode("utf-8")
    return {family.name: family for family in text_string_to_metric_families(text)}


def values(family: Metric, *label_names: str) -> dict[tuple[str, ...], float]:
    return {
        tuple(sample.labels[name] for name in label_names): sample.value
        for sample in family.samples
    }


def synchronous(f: Callable[..., Any], *args: Any) -> Deferred[Any]:
    return maybeDeferred(f, *args)


class ParserTests(SynchronousTestCase):
    def test_cpu_seconds(self) -> None:
        """
        One entry per C{cpuN} line, the aggregate line left out, ticks divided
        by USER_HZ, guest and guest_nice not among the modes.
        """
        cpus = parse_cpu_seconds(STAT, 100)
        self.assertEqual(list(cpus), ["0", "1"])
        self.assertEqual(list(cpus["0"]), list(CPU_MODES))
        self.assertEqual(
            cpus["0"],
            {
                "user": 10.0,
                "nice": 0.1,
                "system": 4.0,
                "idle": 450.0,
                "iowait": 2.0,
                "irq": 0.0,
                "softirq": 0.3,
                "steal": 0.02,
            },
        )

    def test_cpu_seconds_user_hz(self) -> None:
        self.assertEqual(parse_cpu_seconds(STAT, 250)["1"]["user"], 8.0)

    def test_cpu_seconds_old_kernel(self) -> None:
        """
        Modes an old kernel does not print count 0.
        """
        cpus = parse_cpu_seconds("cpu  1 2 3 4\ncpu0 1 2 3 4\n", 100)
        self.assertEqual(cpus["0"]["idle"], 0.04)
        self.assertEqual(cpus["0"]["steal"], 0.0)

    def test_cpu_seconds_bad_line(self) -> None:
        cpus = parse_cpu_seconds("cpu0 1 x 3\ncpu1 1 2 3 4 5 6 7 8\n", 100)
        self.assertEqual(list(cpus), ["1"])

    def test_cpu_seconds_none(self) -> None:
        self.assertRaises(ValueError, parse_cpu_seconds, "cpu  1 2 3\nbtime 5\n")
        self.assertRaises(ValueError, parse_cpu_seconds, "")

    def test_boot_time(self) -> None:
        self.assertEqual(parse_boot_time(STAT), 1700000000)
        self.assertRaises(ValueError, parse_boot_time, "cpu  1 2 3\n")
        self.assertRaises(ValueError, parse_boot_time, "btime soon\n")

    def test_loadavg(self) -> None:
        self.assertEqual(parse_loadavg(LOADAVG), (0.85, 0.49, 0.20))
        self.assertRaises(ValueError, parse_loadavg, "0.1 0.2\n")
        self.assertRaises(ValueError, parse_loadavg, "a b c 1/2 3\n")

    def test_net_dev(self) -> None:
        """
        C{lo} is included; headers and lines that do not parse are not.
        """
        self.assertEqual(
            parse_net_dev_counters(NET_DEV_HOST),
            {
                "lo": {
                    "receive_bytes": 99999999,
                    "receive_errs": 0,
                    "transmit_bytes": 99999999,
                    "transmit_errs": 0,
                },
                "ens3": {
                    "receive_bytes": 124623420,
                    "receive_errs": 3,
                    "transmit_bytes": 165775,
                    "transmit_errs": 4,
                },
                "docker0": {
                    "receive_bytes": 5000,
                    "receive_errs": 0,
                    "transmit_bytes": 6000,
                    "transmit_errs": 0,
                },
            },
        )

    def test_readonly_mountpoints(self) -> None:
        """
        The C{ro} option, not a substring of another one; escapes decoded;
        the last entry of a mount point wins.
        """
        text = (
            "/dev/a /data xfs ro,relatime 0 0\n"
            "/dev/b /mnt/my\\040disk ext4 ro 0 0\n"
            "/dev/c /srv ext4 rw,errors=remount-ro 0 0\n"
            "/dev/d /over ext4 ro 0 0\n"
            "tmpfs /over tmpfs rw 0 0\n"
            "short line\n"
        )
        self.assertEqual(readonly_mountpoints(text), {"/data", "/mnt/my disk"})


class FilesystemStatsTests(SynchronousTestCase):
    def test_against_statvfs(self) -> None:
        """
        The figures of C{os.statvfs} on the mount point under the host root.
        The free counts move with other writers: compared with statvfs calls
        around ours.
        """
        base = os.path.abspath(self.mktemp())
        os.makedirs(os.path.join(base, "sub"))
        path = os.path.join(base, "sub")
        before = os.statvfs(path)
        ours = filesystem_stats(HostRoot(base), Mount("/dev/x", "/sub", "ext4"))
        after = os.statvfs(path)
        self.assertEqual(set(ours), {"total", "used", "avail", "files", "files_free"})
        self.assertEqual(ours["total"], before.f_blocks * before.f_frsize)
        self.assertEqual(ours["files"], before.f_files)
        self.assertGreater(ours["total"], 0)

        def between(value: int, first: int, second: int) -> None:
            self.assertTrue(min(first, second) <= value <= max(first, second))

        between(
            ours["avail"],
            before.f_bavail * before.f_frsize,
            after.f_bavail * after.f_frsize,
        )
        between(ours["files_free"], before.f_ffree, after.f_ffree)
        self.assertTrue(0 <= ours["used"] <= ours["total"])
        self.assertLessEqual(ours["avail"], ours["total"] - ours["used"])

    def test_file_measured(self) -> None:
        """
        A file bind mounted over a file is measured like node_exporter does.
        """
        base = os.path.abspath(self.mktemp())
        os.makedirs(os.path.join(base, "etc"))
        with open(os.path.join(base, "etc", "hosts"), "w") as f:
            f.write("127.0.0.1 localhost\n")
        stats = filesystem_stats(HostRoot(base), Mount("/dev/x", "/etc/hosts", "ext4"))
        self.assertGreater(stats["total"], 0)

    def test_missing(self) -> None:
        root = HostRoot(os.path.abspath(self.mktemp()))
        self.assertRaises(
            OSError, filesystem_stats, root, Mount("/dev/x", "/gone", "ext4")
        )


class FakeHostTests(SynchronousTestCase):
    """
    A fake host root laid out in a temporary directory, read synchronously,
    its mount points measured by the default prober on real directories.
    """

    def setUp(self) -> None:
        self.base = os.path.abspath(self.mktemp())
        write_tree(
            self.base,
            {
                "proc/stat": STAT,
                "proc/loadavg": LOADAVG,
                "proc/meminfo": MEMINFO,
                "proc/net/dev": NET_DEV_OWN,
                "proc/1/net/dev": NET_DEV_HOST,
                "proc/1/mounts": MOUNTS_HOST,
                "proc/self/mounts": MOUNTS_OWN,
            },
        )
        os.makedirs(os.path.join(self.base, "data"))
        os.makedirs(os.path.join(self.base, "mnt", "my disk"))
        self.events: list[LogEvent] = []
        self.patch(node, "log", Logger(observer=cast(ILogObserver, self.events.append)))
        self.clock = Clock()
        self.metrics = NodeMetrics(HostRoot(self.base), synchronous, self.clock)

    def scrape(self, metrics: NodeMetrics | None = None) -> dict[str, Metric]:
        return scraped(self.successResultOf((metrics or self.metrics).gather()))

    def test_cpu(self) -> None:
        family = self.scrape()["node_cpu_seconds"]
        self.assertEqual(family.type, "counter")
        self.assertEqual(family.documentation, "Seconds the CPUs spent in each mode.")
        self.assertEqual(
            {sample.name for sample in family.samples}, {"node_cpu_seconds_total"}
        )
        self.assertEqual(
            values(family, "cpu", "mode"),
            {
                (cpu, mode): ticks / USER_HZ
                for cpu, line in (("0", 1), ("1", 2))
                for mode, ticks in zip(
                    CPU_MODES,
                    map(int, STAT.splitlines()[line].split()[1:9]),
                    strict=True,
                )
            },
        )
        self.assertEqual(values(family, "cpu", "mode")[("0", "steal")], 2 / USER_HZ)

    def test_load(self) -> None:
        families = self.scrape()
        for name, value, documentation in (
            ("node_load1", 0.85, "1m load average."),
            ("node_load5", 0.49, "5m load average."),
            ("node_load15", 0.20, "15m load average."),
        ):
            self.assertEqual(families[name].type, "gauge")
            self.assertEqual(families[name].documentation, documentation)
            self.assertEqual(values(families[name]), {(): value})

    def test_memory(self) -> None:
        families = self.scrape()
        for field, kib in (
            ("MemTotal", 16000000),
            ("MemAvailable", 9000000),
            ("SwapTotal", 2000000),
            ("SwapFree", 1500000),
        ):
            family = families[f"node_memory_{field}_bytes"]
            self.assertEqual(family.type, "gauge")
            self.assertEqual(
                family.documentation, f"Memory information field {field}_bytes."
            )
            self.assertEqual(values(family), {(): kib * 1024})
        self.assertNotIn("node_memory_MemFree_bytes", families)

    def test_memory_old_kernel(self) -> None:
        """
        Without MemAvailable (kernels before 3.14) that one gauge is missing.
        """
        write_tree(
            self.base,
            {"proc/meminfo": MEMINFO.replace("MemAvailable:    9000000 kB\n", "")},
        )
        families = self.scrape()
        self.assertNotIn("node_memory_MemAvailable_bytes", families)
        self.assertIn("node_memory_MemTotal_bytes", families)

    def test_boot_time(self) -> None:
        family = self.scrape()["node_boot_time_seconds"]
        self.assertEqual(family.type, "gauge")
        self.assertEqual(family.documentation, "Node boot time, in unixtime.")
        self.assertEqual(values(family), {(): 1700000000})

    def test_network_is_the_hosts(self) -> None:
        """
        Counters per device from C{proc/1/net/dev}, C{lo} included; the
        agent's own namespace (C{proc/net/dev}) is not read.
        """
        families = self.scrape()
        for name, expected in (
            ("receive_bytes", {"lo": 99999999, "ens3": 124623420, "docker0": 5000}),
            ("transmit_bytes", {"lo": 99999999, "ens3": 165775, "docker0": 6000}),
            ("receive_errs", {"lo": 0, "ens3": 3, "docker0": 0}),
            ("transmit_errs", {"lo": 0, "ens3": 4, "docker0": 0}),
        ):
            family = families[f"node_network_{name}"]
            self.assertEqual(family.type, "counter")
            self.assertEqual(family.documentation, f"Network device statistic {name}.")
            self.assertEqual(
                {sample.name for sample in family.samples},
                {f"node_network_{name}_total"},
            )
            self.assertEqual(
                values(family, "device"),
                {(device,): value for device, value in expected.items()},
            )

    def test_own_namespace(self) -> None:
        """
        With the agent's own root, C{proc/self} is its namespace.
        """
        write_tree(
            self.base,
            {
                "proc/self/net/dev": NET_DEV_OWN,
                "proc/self/mounts": "/dev/x / ext4 rw 0 0",
            },
        )
        own = NodeMetrics(HostRoot(self.base), synchronous, self.clock)
        reading = own._readProc()
        paths = {source for source, _ in reading.outcomes}
        self.assertIn(os.path.join(self.base, "proc", "1", "net", "dev"), paths)
        self.patch(HostRoot, "is_own", property(lambda self: True))
        reading = own._readProc()
        paths = {source for source, _ in reading.outcomes}
        self.assertIn(os.path.join(self.base, "proc", "self", "net", "dev"), paths)
        self.assertIn(os.path.join(self.base, "proc", "self", "mounts"), paths)
        self.assertEqual(reading.mounts, [Mount("/dev/x", "/", "ext4")])

    def test_filesystems(self) -> None:
        """
        The host's mounts, filtered like the reports' (no pseudo, network or
        container runtime file systems), with node_exporter's labels; a mount
        point that cannot be measured has device_error 1 and no size series.
        """
        families = self.scrape()
        labels = ("device", "mountpoint", "fstype")
        measured = {
            ("/dev/sda1", "/", "ext4"): self.base,
            ("/dev/sdb1", "/data", "xfs"): os.path.join(self.base, "data"),
            ("/dev/sdc1", "/mnt/my disk", "ext4"): os.path.join(
                self.base, "mnt", "my disk"
            ),
        }
        broken = ("/dev/sdd1", "/gone", "ext4")
        for name in FILESYSTEM_FAMILIES + FILESYSTEM_DETAIL_FAMILIES:
            if name not in FILESYSTEM_DETAIL_FAMILIES:
                self.assertIn(name, families)
            elif name not in families:
                continue
            self.assertEqual(families[name].type, "gauge", name)
            for sample in families[name].samples:
                self.assertEqual(set(sample.labels), set(labels), name)
        self.assertEqual(
            values(families["node_filesystem_device_error"], *labels),
            {**{key: 0 for key in measured}, broken: 1},
        )
        self.assertEqual(
            values(families["node_filesystem_readonly"], *labels),
            {
                ("/dev/sda1", "/", "ext4"): 0,
                ("/dev/sdb1", "/data", "xfs"): 1,
                ("/dev/sdc1", "/mnt/my disk", "ext4"): 0,
                broken: 0,
            },
        )
        sizes = values(families["node_filesystem_size_bytes"], *labels)
        self.assertEqual(
            sizes,
            {
                key: os.statvfs(path).f_blocks * os.statvfs(path).f_frsize
                for key, path in measured.items()
            },
        )
        for key in measured:
            free = values(families["node_filesystem_free_bytes"], *labels)[key]
            self.assertTrue(0 <= free <= sizes[key], (key, free))
        self.assertEqual(
            families["node_filesystem_device_error"].documentation,
            "Whether an error occurred while getting statistics for the given device.",
        )
        self.assertEqual(
            families["node_filesystem_size_bytes"].documentation,
            "Filesystem size in bytes.",
        )

    def test_network_filesystems_opt_in(self) -> None:
        metrics = NodeMetrics(
            HostRoot(self.base),
            synchronous,
            self.clock,
            includeNetworkFilesystems=True,
        )
        errors = values(
            self.scrape(metrics)["node_filesystem_device_error"], "mountpoint"
        )
        self.assertIn(("/mnt/nfs",), errors)

    def test_nothing_logged(self) -> None:
        self.scrape()
        self.assertEqual([formatEvent(event) for event in self.events], [])

    def logged(self) -> list[tuple[LogLevel, str]]:
        return [(event["log_level"], formatEvent(event)) for event in self.events]

    def test_unreadable_file(self) -> None:
        """
        A file that cannot be read costs only its families, with one warning
        for as long as it lasts and one line when it is readable again.
        """
        os.remove(os.path.join(self.base, "proc", "loadavg"))
        families = self.scrape()
        for name in ("node_load1", "node_load5", "node_load15"):
            self.assertNotIn(name, families)
        for name in [
            "node_cpu_seconds",
            "node_memory_MemTotal_bytes",
            "node_boot_time_seconds",
            "node_network_receive_bytes",
            *FILESYSTEM_FAMILIES,
        ]:
            self.assertIn(name, families)
        self.scrape()
        self.assertEqual(len(self.logged()), 1)
        level, text = self.logged()[0]
        self.assertEqual(level, LogLevel.warn)
        self.assertIn(os.path.join(self.base, "proc", "loadavg"), text)
        self.assertIn("No such file or directory", text)

        write_tree(self.base, {"proc/loadavg": LOADAVG})
        self.assertIn("node_load1", self.scrape())
        self.assertEqual(len(self.logged()), 2)
        level, text = self.logged()[1]
        self.assertEqual(level, LogLevel.info)
        self.assertIn("usable again", text)

    def test_unparsable_part(self) -> None:
        """
        Garbage instead of the CPU lines costs the CPU family, not the boot
        time read from the same file.
        """
        write_tree(self.base, {"proc/stat": "cpu0 a b c\nbtime 1700000000\n"})
        families = self.scrape()
        self.assertNotIn("node_cpu_seconds", families)
        self.assertEqual(values(families["node_boot_time_seconds"]), {(): 1700000000})
        self.assertEqual(len(self.logged()), 1)
        self.assertIn("stat (cpu)", self.logged()[0][1])

    def test_unreadable_mount_table(self) -> None:
        os.remove(os.path.join(self.base, "proc", "1", "mounts"))
        families = self.scrape()
        for name in FILESYSTEM_FAMILIES + FILESYSTEM_DETAIL_FAMILIES:
            self.assertNotIn(name, families)
        self.assertIn("node_load1", families)
        self.assertIn("node_network_receive_bytes", families)

    def test_everything_unreadable(self) -> None:
        """
        An empty host root gives no families and no failure.
        """
        metrics = NodeMetrics(
            HostRoot(os.path.abspath(self.mktemp())), synchronous, self.clock
        )
        self.assertEqual(self.successResultOf(metrics.gather()), [])
        self.assertEqual(len(self.logged()), 5)

    def test_thread_seam_fails(self) -> None:
        """
        Even when the thread seam itself fails, gather fires, with nothing.
        """

        def broken(f: Callable[..., Any], *args: Any) -> Deferred[Any]:
            raise RuntimeError("thread pool gone")

        metrics = NodeMetrics(HostRoot(self.base), broken, self.clock)
        self.assertEqual(self.successResultOf(metrics.gather()), [])
        [event] = self.events
        self.assertEqual(event["log_level"], LogLevel.critical)
        self.assertTrue(event["log_failure"].check(RuntimeError))


class _HeldThreads:
    """
    A runInThread that runs /proc reads at once and holds the probes of the
    mount points in C{held}: their threads never return.
    """

    def __init__(self, held: Iterable[str] = ()) -> None:
        self.held = set(held)
        self.probes: list[str] = []
        self.proc = 0

    def __call__(self, f: Callable[..., Any], *args: Any) -> Deferred[Any]:
        if args and isinstance(args[-1], Mount):
            self.probes.append(args[-1].mountpoint)
            if args[-1].mountpoint in self.held:
                return Deferred()
        else:
            self.proc += 1
        return maybeDeferred(f, *args)


class StuckMountTests(SynchronousTestCase):
    """
    A mount whose statvfs never returns, through a real L{MountProber}.
    """

    def setUp(self) -> None:
        self.base = os.path.abspath(self.mktemp())
        write_tree(
            self.base,
            {
                "proc/stat": STAT,
                "proc/1/mounts": (
                    "/dev/sda1 / ext4 rw 0 0\n" "server:/export /mnt/nfs nfs4 ro 0 0\n"
                ),
            },
        )
        os.makedirs(os.path.join(self.base, "mnt", "nfs"))
        self.clock = Clock()
        self.threads = _HeldThreads(["/mnt/nfs"])
        self.metrics = NodeMetrics(
            HostRoot(self.base),
            self.threads,
            self.clock,
            MountProber(self.clock, self.threads, 5.0, filesystem_stats),
            includeNetworkFilesystems=True,
        )

    def test_stuck(self) -> None:
        """
        The scrape waits for the prober's timeout, then reports the stuck
        mount with device_error 1 and its readonly status, without sizes.
        """
        d = self.metrics.gather()
        self.assertNoResult(d)
        self.clock.advance(5)
        families = scraped(self.successResultOf(d))
        labels = ("mountpoint",)
        self.assertEqual(
            values(families["node_filesystem_device_error"], *labels),
            {("/",): 0, ("/mnt/nfs",): 1},
        )
        self.assertEqual(
            values(families["node_filesystem_readonly"], *labels),
            {("/",): 0, ("/mnt/nfs",): 1},
        )
        for name in ("size_bytes", "free_bytes"):
            self.assertEqual(
                list(values(families[f"node_filesystem_{name}"], *labels)), [("/",)]
            )
        self.assertIn("node_cpu_seconds", families)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_stuck_not_probed_again(self) -> None:
        """
        While its first probe has not returned, later scrapes answer at once
        and start no other thread on it.
        """
        d = self.metrics.gather()
        self.clock.advance(5)
        self.successResultOf(d)
        families = scraped(self.successResultOf(self.metrics.gather()))
        self.assertEqual(
            values(families["node_filesystem_device_error"], "mountpoint"),
            {("/",): 0, ("/mnt/nfs",): 1},
        )
        self.assertEqual(self.threads.probes, ["/", "/mnt/nfs", "/"])


class _FixedProber:
    """
    A prober answering at once with given figures.
    """

    def __init__(self, measured: dict[str, dict[str, int]]) -> None:
        self.measured = measured

    def probe(self, root: HostRoot, mounts: list[Mount]) -> Deferred[Any]:
        return succeed((self.measured, []))


class FilesystemFiguresTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.base = os.path.abspath(self.mktemp())
        write_tree(
            self.base,
            {"proc/1/mounts": "/dev/sda1 / ext4 rw 0 0\n/dev/sdb1 /data xfs ro 0 0\n"},
        )
        self.root = HostRoot(self.base)

    def test_all_figures(self) -> None:
        """
        size, free (reserved blocks included), avail, and the inode counts,
        from a measurement that has them all.
        """
        prober = _FixedProber(
            {
                "/": {
                    "total": 1000,
                    "used": 300,
                    "avail": 650,
                    "files": 64,
                    "files_free": 60,
                },
                "/data": {
                    "total": 2000,
                    "used": 0,
                    "avail": 2000,
                    "files": 10,
                    "files_free": 10,
                },
            }
        )
        metrics = NodeMetrics(self.root, synchronous, Clock(), cast(Any, prober))
        families = scraped(self.successResultOf(metrics.gather()))
        expected = {
            "size_bytes": (1000, 2000),
            "free_bytes": (700, 2000),
            "avail_bytes": (650, 2000),
            "files": (64, 10),
            "files_free": (60, 10),
            "readonly": (0, 1),
            "device_error": (0, 0),
        }
        for name, (root, data) in expected.items():
            self.assertEqual(
                values(families[f"node_filesystem_{name}"], "device", "mountpoint"),
                {("/dev/sda1", "/"): root, ("/dev/sdb1", "/data"): data},
                name,
            )

    def test_through_mount_prober(self) -> None:
        """
        The prober hands the inode counts and avail on to the families.
        """
        metrics = NodeMetrics(self.root, synchronous, Clock())
        families = scraped(self.successResultOf(metrics.gather()))
        for name in ("avail_bytes", "files", "files_free"):
            self.assertIn(f"node_filesystem_{name}", families)


class SharedCollectionTests(SynchronousTestCase):
    """
    Scrapes arriving while a collection is under way share it.
    """

    def setUp(self) -> None:
        self.calls: list[Deferred[Any]] = []
        self.base = os.path.abspath(self.mktemp())
        write_tree(self.base, {"proc/loadavg": LOADAVG})
        self.events: list[LogEvent] = []
        self.patch(node, "log", Logger(observer=cast(ILogObserver, self.events.append)))

        def held(f: Callable[..., Any], *args: Any) -> Deferred[Any]:
            d: Deferred[Any] = Deferred()
            d.addCallback(lambda _: f(*args))
            self.calls.append(d)
            return d

        self.metrics = NodeMetrics(HostRoot(self.base), held, Clock())

    def test_shared(self) -> None:
        first = self.metrics.gather()
        second = self.metrics.gather()
        self.assertEqual(len(self.calls), 1)
        self.calls[0].callback(None)
        self.assertEqual(
            [family.name for family in self.successResultOf(first)],
            ["node_load1", "node_load5", "node_load15"],
        )
        self.assertEqual(
            [family.name for family in self.successResultOf(second)],
            ["node_load1", "node_load5", "node_load15"],
        )
        self.metrics.gather()
        self.assertEqual(len(self.calls), 2)

    def test_cancel_one(self) -> None:
        """
        A scrape that gives up does not cancel the others' collection.
        """
        first = self.metrics.gather()
        second = self.metrics.gather()
        first.cancel()
        self.failureResultOf(first)
        self.calls[0].callback(None)
        self.assertEqual(len(self.successResultOf(second)), 3)


class RealMachineTests(SynchronousTestCase):
    """
    This machine's own C{/proc}; written to hold on a CI container too.
    """

    def setUp(self) -> None:
        metrics = NodeMetrics(HostRoot("/"), synchronous, Clock())
        self.families = scraped(self.successResultOf(metrics.gather()))

    def test_memory(self) -> None:
        total = values(self.families["node_memory_MemTotal_bytes"])[()]
        self.assertGreater(total, 0)
        available = values(self.families["node_memory_MemAvailable_bytes"])[()]
        self.assertTrue(0 <= available <= total)

    def test_cpu(self) -> None:
        """
        One series per CPU and mode; seconds that only grow from 0.
        """
        seconds = values(self.families["node_cpu_seconds"], "cpu", "mode")
        cpus = {cpu for cpu, _mode in seconds}
        self.assertEqual(len(cpus), os.cpu_count())
        self.assertEqual(len(seconds), len(cpus) * len(CPU_MODES))
        for value in seconds.values():
            self.assertGreaterEqual(value, 0)

    def test_load_and_boot_time(self) -> None:
        for name in ("node_load1", "node_load5", "node_load15"):
            self.assertGreaterEqual(values(self.families[name])[()], 0)
        boot = values(self.families["node_boot_time_seconds"])[()]
        self.assertTrue(0 < boot < time.time(), boot)

    def test_network(self) -> None:
        received = values(self.families["node_network_receive_bytes"], "device")
        self.assertIn(("lo",), received)
        for value in received.values():
            self.assertGreaterEqual(value, 0)

    def test_filesystems(self) -> None:
        """
        Every measured mount has a plausible size; the others report an error.
        """
        if "node_filesystem_device_error" not in self.families:
            self.skipTest("no mount worth measuring on this machine")
        labels = ("device", "mountpoint", "fstype")
        errors = values(self.families["node_filesystem_device_error"], *labels)
        sizes = values(self.families["node_filesystem_size_bytes"], *labels)
        free = values(self.families["node_filesystem_free_bytes"], *labels)
        for key, error in errors.items():
            self.assertIn(error, (0, 1))
            if error == 0:
                self.assertTrue(0 <= free[key] <= sizes[key], key)
            else:
                self.assertNotIn(key, sizes)
