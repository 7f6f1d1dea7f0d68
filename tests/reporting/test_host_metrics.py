"""
Tests for L{haven_agent.reporting.host_metrics}: the C{/proc} readers against fake
proc trees and this machine, C{statvfs}, and L{MountProber} on a L{Clock}.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Callable
from typing import Any, cast

import psutil
from twisted.internet.defer import CancelledError, Deferred, maybeDeferred
from twisted.internet.task import Clock
from twisted.logger import ILogObserver, LogEvent, Logger, formatEvent
from twisted.trial.unittest import SynchronousTestCase

from haven_agent.reporting import host_metrics
from haven_agent.reporting.host_metrics import (
    NETWORK_FILESYSTEMS,
    PSEUDO_FILESYSTEMS,
    HostRoot,
    Mount,
    MountProber,
    disk_usage,
    memory_from_meminfo,
    parse_mounts,
    read_memory,
    read_mounts,
    read_network,
)

MiB = 1024 * 1024

MEMINFO = """\
MemTotal:       16000000 kB
MemFree:         4000000 kB
MemAvailable:    9000000 kB
Buffers:          500000 kB
Cached:          3000000 kB
SwapCached:            0 kB
Active:          6000000 kB
SReclaimable:     400000 kB
SUnreclaim:       100000 kB
HugePages_Total:       0
Hugepagesize:       2048 kB
"""

# The agent's own (container) namespace.
NET_DEV_OWN = """\
Inter-|   Receive                                                |  Transmit
 face |bytes    packets errs drop fifo frame compressed multicast|bytes    packets errs drop fifo colls carrier compressed
    lo:  690676      443    0    0    0     0          0         0   690676     443    0    0    0     0       0          0
  eth0:    1000       10    0    0    0     0          0         0     2000      20    0    0    0     0       0          0
"""  # noqa: E501

# The host's namespace, as process 1 sees it.
NET_DEV_HOST = """\
Inter-|   Receive                                                |  Transmit
 face |bytes    packets errs drop fifo frame compressed multicast|bytes    packets errs drop fifo colls carrier compressed
    lo: 99999999   44403    0    0    0     0          0         0 99999999   44403    0    0    0     0       0          0
  ens3: 124623420   2690    0    0    0     0          0         0   165775    1865    0    0    0     0       0          0
docker0: 5000       50    0    0    0     0          0         0     6000      60    0    0    0     0       0          0
  bad0: garbage
"""  # noqa: E501

MOUNTS_HOST = """\
/dev/sda1 / ext4 rw,relatime 0 0
proc /proc proc rw,nosuid 0 0
tmpfs /run tmpfs rw 0 0
tmpfs /srv tmpfs rw 0 0
overlay /var/lib/docker/overlay2/abc/merged overlay rw 0 0
/dev/sda1 /var/lib/docker ext4 rw 0 0
/dev/sdb1 /var/lib/docker-data ext4 rw 0 0
nsfs /run/docker/netns/1234 nsfs rw 0 0
/dev/sdg1 /var/lib/containerd/io.containerd.snapshotter ext4 rw 0 0
/dev/sdc1 /mnt/my\\040disk ext4 rw 0 0
/dev/sdd1 /mnt/back\\134slash\\011tab xfs rw 0 0
server:/export /mnt/nfs nfs4 rw 0 0
//srv/share /mnt/smb cifs rw 0 0
/dev/sde1 /data ext4 rw 0 0
tmpfs /data tmpfs rw 0 0
/dev/sdf1 /srv ext4 rw 0 0
lxcfs /proc/cpuinfo fuse.lxcfs rw 0 0
"""

LOCAL_MOUNTS = [
    Mount("/dev/sda1", "/", "ext4"),
    Mount("/dev/sdf1", "/srv", "ext4"),
    Mount("/dev/sdb1", "/var/lib/docker-data", "ext4"),
    Mount("/dev/sdc1", "/mnt/my disk", "ext4"),
    Mount("/dev/sdd1", "/mnt/back\\slash\ttab", "xfs"),
]

MOUNTS_CONTAINER = """\
overlay / overlay rw 0 0
proc /proc proc rw 0 0
/dev/sda1 /etc/hosts ext4 rw 0 0
"""


def write_tree(base: str, files: dict[str, str]) -> None:
    for relative, text in files.items():
        path = os.path.join(base, relative)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "w") as f:
            f.write(text)


class HostRootTests(SynchronousTestCase):
    def test_default(self) -> None:
        self.assertEqual(HostRoot().path, "/")
        self.assertEqual(HostRoot().proc, "/proc")

    def test_proc(self) -> None:
        self.assertEqual(HostRoot("/host").proc, "/host/proc")

    def test_host_path(self) -> None:
        self.assertEqual(HostRoot("/").host_path("/var/data"), "/var/data")
        self.assertEqual(HostRoot("/").host_path("/"), "/")
        self.assertEqual(HostRoot("/host").host_path("/"), "/host")
        self.assertEqual(HostRoot("/host").host_path("/var/data"), "/host/var/data")
        self.assertEqual(HostRoot("/host/").host_path("/srv/x"), "/host/srv/x")


class FakeProcTreeTests(SynchronousTestCase):
    """
    A fake host root in a temporary directory with different files for the
    agent's own namespace (C{proc/net}, C{proc/self}) and the host's
    (C{proc/1}).
    """

    def setUp(self) -> None:
        self.base = os.path.abspath(self.mktemp())
        write_tree(
            self.base,
            {
                "proc/meminfo": MEMINFO,
                "proc/net/dev": NET_DEV_OWN,
                "proc/1/net/dev": NET_DEV_HOST,
                "proc/1/mounts": MOUNTS_HOST,
                "proc/self/mounts": MOUNTS_CONTAINER,
            },
        )
        self.root = HostRoot(self.base)

    def test_memory(self) -> None:
        self.assertEqual(
            read_memory(self.root),
            {
                "total": 16000000 * 1024,
                "used": (16000000 - 9000000) * 1024,
                "available": 9000000 * 1024,
            },
        )

    def test_network_is_the_hosts(self) -> None:
        """
        With a host root, C{proc/1/net/dev} is read, not C{proc/net/dev};
        C{lo} and unparsable lines are left out.
        """
        self.assertEqual(
            read_network(self.root),
            {
                "ens3": {"bytesIn": 124623420, "bytesOut": 165775},
                "docker0": {"bytesIn": 5000, "bytesOut": 6000},
            },
        )

    def test_network_never_null(self) -> None:
        for counters in read_network(self.root).values():
            self.assertEqual(set(counters), {"bytesIn", "bytesOut"})
            for value in counters.values():
                self.assertIsInstance(value, int)

    def test_mounts_are_the_hosts(self) -> None:
        """
        With a host root, C{proc/1/mounts} is read, not C{proc/self/mounts}.
        """
        self.assertEqual(read_mounts(self.root), LOCAL_MOUNTS)

    def test_mounts_network_opt_in(self) -> None:
        mountpoints = [m.mountpoint for m in read_mounts(self.root, True)]
        self.assertIn("/mnt/nfs", mountpoints)
        self.assertIn("/mnt/smb", mountpoints)


class MemoryTests(SynchronousTestCase):
    def test_distorted_figures_clamped(self) -> None:
        """
        Distorted figures (more available than total, as LXC can show) do
        not make used negative.
        """
        text = "MemTotal: 1000 kB\nMemFree: 400 kB\nMemAvailable: 1200 kB\n"
        self.assertEqual(
            memory_from_meminfo(text),
            {"total": 1000 * 1024, "used": 0, "available": 1000 * 1024},
        )

    def test_no_memavailable(self) -> None:
        """
        Kernels before 3.14: available is estimated as free + buffers + cached.
        """
        text = "MemTotal: 1000 kB\nMemFree: 200 kB\nBuffers: 100 kB\nCached: 300 kB\n"
        self.assertEqual(memory_from_meminfo(text)["available"], 600 * 1024)

    def test_missing_total(self) -> None:
        self.assertRaises(ValueError, memory_from_meminfo, "MemFree: 200 kB\n")


class ParseMountsTests(SynchronousTestCase):
    def test_default(self) -> None:
        """
        Octal escapes decoded; pseudo, container, network and runtime mounts
        skipped; a mount point mounted twice is the later mount.
        """
        self.assertEqual(parse_mounts(MOUNTS_HOST), LOCAL_MOUNTS)

    def test_include_network(self) -> None:
        mounts = parse_mounts(MOUNTS_HOST, include_network=True)
        self.assertEqual(
            [m for m in mounts if m not in LOCAL_MOUNTS],
            [
                Mount("server:/export", "/mnt/nfs", "nfs4"),
                Mount("//srv/share", "/mnt/smb", "cifs"),
            ],
        )

    def test_every_pseudo_filesystem_skipped(self) -> None:
        for fstype in sorted(PSEUDO_FILESYSTEMS):
            text = f"dev /x {fstype} rw 0 0\n"
            self.assertEqual(parse_mounts(text, include_network=True), [], fstype)

    def test_every_network_filesystem(self) -> None:
        for fstype in sorted(NETWORK_FILESYSTEMS):
            text = f"srv:/e /x {fstype} rw 0 0\n"
            self.assertEqual(parse_mounts(text), [], fstype)
            self.assertEqual(
                parse_mounts(text, include_network=True),
                [Mount("srv:/e", "/x", fstype)],
            )

    def test_runtime_directories(self) -> None:
        text = "".join(
            f"/dev/sda1 {mountpoint} ext4 rw 0 0\n"
            for mountpoint in [
                "/var/lib/docker",
                "/var/lib/docker/volumes/v/_data",
                "/run/docker/netns/x",
                "/var/lib/containerd",
                "/var/lib/dockerish",
            ]
        )
        self.assertEqual(
            parse_mounts(text), [Mount("/dev/sda1", "/var/lib/dockerish", "ext4")]
        )

    def test_short_lines_ignored(self) -> None:
        self.assertEqual(
            parse_mounts("\nbroken\n/dev/sda1 / ext4 rw 0 0\n"),
            [Mount("/dev/sda1", "/", "ext4")],
        )


class DiskUsageTests(SynchronousTestCase):
    def test_against_statvfs(self) -> None:
        """
        The figures of C{os.statvfs} on the mount point under the host root.
        Another process may write to the same file system meanwhile, so the
        comparison is retried until two statvfs calls around ours agree.
        """
        base = os.path.abspath(self.mktemp())
        os.makedirs(os.path.join(base, "sub"))
        root, mount = HostRoot(base), Mount("/dev/x", "/sub", "ext4")

        def expected() -> dict[str, int]:
            stat = os.statvfs(os.path.join(base, "sub"))
            return {
                "total": stat.f_blocks * stat.f_frsize,
                "used": (stat.f_blocks - stat.f_bfree) * stat.f_frsize,
            }

        ours, before, after = stable_comparison(
            expected, lambda: disk_usage(root, mount)
        )
        self.assertEqual(ours["total"], before["total"])
        self.assertGreater(ours["total"], 0)
        self.assertTrue(0 <= ours["used"] <= ours["total"], ours)
        self.assertTrue(
            min(before["used"], after["used"])
            <= ours["used"]
            <= max(before["used"], after["used"]),
            (before, ours, after),
        )

    def test_missing(self) -> None:
        root = HostRoot(os.path.abspath(self.mktemp()))
        self.assertRaises(OSError, disk_usage, root, Mount("/dev/x", "/gone", "ext4"))


def stable_comparison(
    reference: Callable[[], Any], ours: Callable[[], Any], attempts: int = 20
) -> tuple[Any, Any, Any]:
    """
    C{(ours, reference before, reference after)}, retried until the reference
    did not change around our reading (or attempts run out).
    """
    for _ in range(attempts):
        before = reference()
        value = ours()
        after = reference()
        if before == after:
            break
    return value, before, after


class FakeThreads:
    """
    A runInThread whose Deferreds the test fires.
    """

    def __init__(self) -> None:
        self.calls: list[tuple[Callable[..., Any], tuple[Any, ...]]] = []
        self.pending: dict[str, list[Deferred[dict[str, int]]]] = {}

    def __call__(self, f: Callable[..., Any], *args: Any) -> Deferred[dict[str, int]]:
        self.calls.append((f, args))
        mount = args[1]
        d: Deferred[dict[str, int]] = Deferred()
        self.pending.setdefault(mount.mountpoint, []).append(d)
        return d

    def count(self, mountpoint: str) -> int:
        return len(self.pending.get(mountpoint, []))

    def answer(self, mountpoint: str, used: int = 1, total: int = 10) -> None:
        self.pending[mountpoint][-1].callback({"total": total, "used": used})

    def fail(self, mountpoint: str, error: Exception) -> None:
        self.pending[mountpoint][-1].errback(error)


MOUNTS = [
    Mount("/dev/sda1", "/", "ext4"),
    Mount("/dev/sdb1", "/data", "xfs"),
    Mount("srv:/e", "/mnt/nfs", "nfs4"),
]


def unusable(root: HostRoot, mount: Mount) -> dict[str, int]:
    raise AssertionError("the fake threads never run the measurement")


class MountProberTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.threads = FakeThreads()
        self.events: list[LogEvent] = []
        observer = cast(ILogObserver, self.events.append)
        self.patch(host_metrics, "log", Logger(observer=observer))
        self.root = HostRoot("/host")
        self.prober = MountProber(self.clock, self.threads, 5.0, unusable)

    def logged(self) -> list[str]:
        return [formatEvent(event) for event in self.events]

    def stuck_round(self) -> None:
        """
        A round in which /mnt/nfs never answers.
        """
        d = self.prober.probe(self.root, MOUNTS)
        self.threads.answer("/")
        self.threads.answer("/data")
        self.clock.advance(5)
        self.assertEqual(
            self.successResultOf(d),
            (
                {"/": {"used": 1, "total": 10}, "/data": {"used": 1, "total": 10}},
                ["/mnt/nfs"],
            ),
        )

    def test_all_answer(self) -> None:
        d = self.prober.probe(self.root, MOUNTS)
        self.assertEqual(
            self.threads.calls,
            [(unusable, (self.root, mount)) for mount in MOUNTS],
        )
        self.threads.answer("/", used=3, total=30)
        self.threads.answer("/data", used=4, total=40)
        self.assertNoResult(d)
        self.threads.answer("/mnt/nfs", used=5, total=50)
        self.assertEqual(
            self.successResultOf(d),
            (
                {
                    "/": {"used": 3, "total": 30},
                    "/data": {"used": 4, "total": 40},
                    "/mnt/nfs": {"used": 5, "total": 50},
                },
                [],
            ),
        )
        self.assertEqual(self.clock.getDelayedCalls(), [], "timeouts not cancelled")
        self.assertEqual(self.logged(), [])

    def test_no_mounts(self) -> None:
        self.assertEqual(
            self.successResultOf(self.prober.probe(self.root, [])), ({}, [])
        )

    def test_timeout(self) -> None:
        """
        A mount that does not answer within the timeout is listed as stuck
        and the others are reported; it is logged once.
        """
        d = self.prober.probe(self.root, MOUNTS)
        self.threads.answer("/")
        self.threads.answer("/data")
        self.clock.advance(4.9)
        self.assertNoResult(d)
        self.clock.advance(0.1)
        disks, stuck = self.successResultOf(d)
        self.assertEqual(set(disks), {"/", "/data"})
        self.assertEqual(stuck, ["/mnt/nfs"])
        self.assertEqual(
            self.logged(), ["mount /mnt/nfs did not answer within 5.0 s; skipped"]
        )
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_stuck_mount_not_probed_again(self) -> None:
        """
        While its thread hangs, a stuck mount gets no second thread and is
        listed as stuck at once, without another warning.
        """
        self.stuck_round()
        d = self.prober.probe(self.root, MOUNTS)
        self.assertEqual(self.threads.count("/mnt/nfs"), 1)
        self.assertEqual(self.threads.count("/"), 2)
        self.assertEqual(self.threads.count("/data"), 2)
        self.assertEqual(len(self.clock.getDelayedCalls()), 2)
        self.threads.answer("/")
        self.threads.answer("/data")
        self.assertEqual(self.successResultOf(d)[1], ["/mnt/nfs"])
        self.assertEqual(len(self.logged()), 1)

    def test_returned_stuck_mount_probed_again(self) -> None:
        """
        When the hung thread finally returns, its late result is dropped and
        the next round probes the mount again.
        """
        self.stuck_round()
        self.threads.answer("/mnt/nfs", used=7, total=70)
        d = self.prober.probe(self.root, MOUNTS)
        self.assertEqual(self.threads.count("/mnt/nfs"), 2)
        self.threads.answer("/")
        self.threads.answer("/data")
        self.threads.answer("/mnt/nfs", used=8, total=80)
        disks, stuck = self.successResultOf(d)
        self.assertEqual(disks["/mnt/nfs"], {"used": 8, "total": 80})
        self.assertEqual(stuck, [])
        self.assertIn(
            "mount /mnt/nfs answered again; it will be probed again", self.logged()
        )

    def test_stuck_mount_failing_late(self) -> None:
        """
        A hung thread that ends in an error also clears the stuck mark, and
        its error is not reported as the mount's.
        """
        self.stuck_round()
        self.threads.fail("/mnt/nfs", OSError(errno.ESTALE, "Stale file handle"))
        self.assertEqual(len(self.logged()), 2)
        self.prober.probe(self.root, MOUNTS)
        self.assertEqual(self.threads.count("/mnt/nfs"), 2)

    def test_stuck_again_is_a_new_episode(self) -> None:
        self.stuck_round()
        self.threads.answer("/mnt/nfs")
        self.stuck_round()
        warnings = [line for line in self.logged() if "did not answer" in line]
        self.assertEqual(len(warnings), 2)

    def test_error_skips_that_mount(self) -> None:
        """
        A failing statvfs leaves that mount out (not stuck), logged once per
        distinct error; the others are reported.
        """
        error = PermissionError(errno.EACCES, "Permission denied")
        for _ in range(2):
            d = self.prober.probe(self.root, MOUNTS)
            self.threads.answer("/")
            self.threads.fail("/data", error)
            self.threads.answer("/mnt/nfs")
            self.assertEqual(
                self.successResultOf(d),
                (
                    {
                        "/": {"used": 1, "total": 10},
                        "/mnt/nfs": {"used": 1, "total": 10},
                    },
                    [],
                ),
            )
        self.assertEqual(
            self.logged(),
            [
                "mount /data could not be measured "
                "([Errno 13] Permission denied); skipped"
            ],
        )
        self.assertEqual(self.clock.getDelayedCalls(), [])
        d = self.prober.probe(self.root, MOUNTS)
        for mountpoint in ["/", "/data", "/mnt/nfs"]:
            self.threads.answer(mountpoint)
        self.assertIn("/data", self.successResultOf(d)[0])
        self.assertEqual(self.logged()[-1], "mount /data can be measured again")

    def test_run_in_thread_raises(self) -> None:
        def broken(f: Callable[..., Any], *args: Any) -> Deferred[Any]:
            raise RuntimeError("thread pool stopped")

        prober = MountProber(self.clock, broken, 5.0, unusable)
        self.assertEqual(
            self.successResultOf(prober.probe(self.root, MOUNTS)), ({}, [])
        )
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.assertEqual(len(self.logged()), 3)

    def test_duplicate_mountpoint_probed_once(self) -> None:
        mounts = [MOUNTS[0], Mount("/dev/sda1", "/", "ext4")]
        d = self.prober.probe(self.root, mounts)
        self.assertEqual(self.threads.count("/"), 1)
        self.threads.answer("/")
        self.assertEqual(self.successResultOf(d), ({"/": {"used": 1, "total": 10}}, []))

    def test_cancel(self) -> None:
        """
        Cancelling a round drops its timers; the threads it started still
        keep their mounts busy until they return.
        """
        d = self.prober.probe(self.root, MOUNTS)
        d.cancel()
        self.failureResultOf(d, CancelledError)
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.threads.answer("/")
        second = self.prober.probe(self.root, MOUNTS)
        self.assertEqual(self.threads.count("/"), 2)
        self.assertEqual(self.threads.count("/data"), 1)
        self.threads.answer("/")
        self.clock.advance(5)
        self.assertEqual(self.successResultOf(second)[1], ["/data", "/mnt/nfs"])

    def test_real_disk_usage(self) -> None:
        """
        With the real L{disk_usage}: an existing directory is measured, a
        vanished mount point is skipped.
        """
        base = os.path.abspath(self.mktemp())
        os.makedirs(os.path.join(base, "here"))
        prober = MountProber(self.clock, maybeDeferred)
        mounts = [Mount("d", "/here", "ext4"), Mount("d", "/gone", "ext4")]
        disks, stuck = self.successResultOf(prober.probe(HostRoot(base), mounts))
        self.assertEqual(list(disks), ["/here"])
        self.assertGreater(disks["/here"]["total"], 0)
        self.assertEqual(stuck, [])
        self.assertEqual(len(self.logged()), 1)
        self.assertIn("/gone", self.logged()[0])


class RealMachineTests(SynchronousTestCase):
    """
    This machine's own C{/proc}; written to hold on a CI container too.
    """

    def test_memory(self) -> None:
        memory = read_memory(HostRoot("/"))
        self.assertEqual(set(memory), {"total", "used", "available"})
        self.assertGreater(memory["total"], 0)
        self.assertTrue(0 <= memory["used"] <= memory["total"], memory)
        self.assertTrue(0 <= memory["available"] <= memory["total"], memory)

    def test_memory_matches_psutil(self) -> None:
        """
        total and available are exactly psutil's (both read meminfo; retried
        until psutil's figure held still around our read), and so is used,
        which psutil also computes as total - available.
        """

        def reference() -> tuple[int, int]:
            figures = psutil.virtual_memory()
            return figures.total, figures.available

        ours, before, after = stable_comparison(
            reference, lambda: read_memory(HostRoot("/"))
        )
        self.assertEqual(ours["total"], before[0])
        self.assertEqual(ours["used"], ours["total"] - ours["available"])
        if before == after:
            self.assertEqual(ours["available"], before[1])
            figures = psutil.virtual_memory()
            if figures.available == before[1]:
                self.assertEqual(ours["used"], figures.used)
        else:
            self.assertTrue(
                min(before[1], after[1]) - 64 * MiB
                <= ours["available"]
                <= max(before[1], after[1]) + 64 * MiB
            )

    def test_network(self) -> None:
        network = read_network(HostRoot("/"))
        self.assertNotIn("lo", network)
        for name, counters in network.items():
            self.assertEqual(set(counters), {"bytesIn", "bytesOut"}, name)
            for value in counters.values():
                self.assertIsInstance(value, int)
                self.assertGreaterEqual(value, 0)

    def test_mounts(self) -> None:
        """
        C{/} is among the mounts, unless it is a container's overlay (or
        another pseudo file system), which is skipped on purpose.
        """
        mounts = read_mounts(HostRoot("/"))
        mountpoints = [mount.mountpoint for mount in mounts]
        self.assertEqual(len(mountpoints), len(set(mountpoints)))
        if "/" not in mountpoints:
            with open("/proc/self/mounts") as f:
                table = [line.split() for line in f]
            root_types = [fields[2] for fields in table if fields[1] == "/"]
            self.assertTrue(root_types, "no / in /proc/self/mounts")
            self.assertIn(root_types[-1], PSEUDO_FILESYSTEMS)
        for mount in mounts:
            self.assertNotIn(mount.fstype, PSEUDO_FILESYSTEMS)
            self.assertNotIn(mount.fstype, NETWORK_FILESYSTEMS)

    def test_root_disk_usage(self) -> None:
        usage = disk_usage(HostRoot("/"), Mount("rootfs", "/", "any"))
        self.assertGreater(usage["total"], 0)
        self.assertTrue(0 <= usage["used"] <= usage["total"], usage)


class DistinctDiskTests(SynchronousTestCase):
    """
    File bind mounts are no disks, bind mounts of a listed file system are
    not listed twice, and a probe answering at once does not end the round.
    """

    def probe(self, usages):
        from twisted.internet.defer import succeed
        from twisted.internet.task import Clock

        mounts = [Mount("/dev/x", mountpoint, "ext4") for mountpoint in usages]
        prober = MountProber(
            Clock(),
            lambda f, *a: succeed(f(*a)),
            usage=lambda root, mount: usages[mount.mountpoint],
        )
        return self.successResultOf(prober.probe(HostRoot("/"), mounts))

    def test_synchronousAnswersAllCounted(self) -> None:
        disks, stuck = self.probe(
            {"/": {"used": 1, "total": 2}, "/data": {"used": 3, "total": 4}}
        )
        self.assertEqual(list(disks), ["/", "/data"])
        self.assertEqual(stuck, [])

    def test_sameDeviceOnce(self) -> None:
        disks, _ = self.probe(
            {
                "/": {"used": 1, "total": 2, "device": 7},
                "/srv/docker-data": {"used": 1, "total": 2, "device": 7},
                "/data": {"used": 3, "total": 4, "device": 8},
            }
        )
        self.assertEqual(
            disks, {"/": {"used": 1, "total": 2}, "/data": {"used": 3, "total": 4}}
        )

    def test_filesAreNoDisks(self) -> None:
        base = self.mktemp()
        os.makedirs(os.path.join(base, "etc"))
        with open(os.path.join(base, "etc", "hosts"), "w") as f:
            f.write("127.0.0.1 localhost\n")
        root = HostRoot(base)
        self.assertIsNone(disk_usage(root, Mount("/dev/x", "/etc/hosts", "ext4")))
        directory = disk_usage(root, Mount("/dev/x", "/etc", "ext4"))
        self.assertEqual(directory["device"], os.stat(base).st_dev)
