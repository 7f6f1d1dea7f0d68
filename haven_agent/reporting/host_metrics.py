# -*- test-case-name: tests.reporting.test_host_metrics -*-
"""
Memory, network and disk figures of the host, read from its C{/proc}.

The agent usually runs in a container. Haven's start string may mount the
host's C{/} read-only at, say, C{/host} (setting C{dm_agent_notifier_rootPath});
L{HostRoot} names that place. Several C{/proc} files are per namespace, so
with a host root the HOST's view is taken from process 1 of the host's
procfs: C{{proc}/net} is a link to C{{proc}/self/net}, i.e. the network
namespace of whoever reads it (the container's own veth), and
C{{proc}/self/mounts} is the container's mount table; C{{proc}/1/net/dev} and
C{{proc}/1/mounts} are those of the host's init. C{meminfo} is not namespaced.

The readers are plain blocking functions, written to run in the thread seam;
they read C{/proc} directly rather than through psutil so the root is a
parameter and the figures are exactly what the contract asks for (bytes, no
C{lo}, never a null counter).

Disk figures need C{statvfs}, and C{statvfs} on a dead network mount blocks
forever (pitfalls item 6). L{MountProber} runs one thread per mount with a
timeout on the reactor side and never starts a second thread on a mount whose
first one has not returned, so stuck probes cannot pile up threads.
"""

from __future__ import annotations

import os
import re
import stat as stat_module
from collections.abc import Callable, Iterable
from typing import Any

from attrs import define, field, frozen
from twisted.internet.defer import Deferred, maybeDeferred
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

log = Logger()

KIB = 1024


@frozen
class HostRoot:
    """
    Where the host's root file system is visible to the agent.

    @ivar path: C{"/"} when the agent sees the host directly (no container,
        or a container sharing the host's namespaces); C{"/host"} or similar
        when the host's C{/} is mounted read-only into the agent's container.
    """

    path: str = "/"

    @property
    def proc(self) -> str:
        return os.path.join(self.path, "proc")

    @property
    def is_own(self) -> bool:
        """
        Whether the root is the agent's own C{/}, so its own namespaces are
        the host's (no container, or one sharing them).
        """
        return os.path.normpath(self.path) == "/"

    def namespaced(self, *parts: str) -> str:
        """
        A per-namespace C{/proc} file as the host sees it: the agent's own
        (C{{proc}/self/...}) with its own root, the host init's
        (C{{proc}/1/...}) with a host root, where the agent's own would be
        its container's.
        """
        return os.path.join(self.proc, "self" if self.is_own else "1", *parts)

    def host_path(self, mountpoint: str) -> str:
        """
        The path, as the agent sees it, of the host's mount point C{mountpoint}.
        """
        if self.is_own:
            return mountpoint
        return os.path.normpath(os.path.join(self.path, mountpoint.lstrip("/")))


def read_text(path: str) -> str:
    # surrogateescape: mount points are bytes to the kernel, not always UTF-8.
    with open(path, encoding="utf-8", errors="surrogateescape") as f:
        return f.read()


def parse_meminfo(text: str) -> dict[str, int]:
    """
    The fields of C{/proc/meminfo}, in bytes (the file says kB and means KiB).
    """
    fields: dict[str, int] = {}
    for line in text.splitlines():
        name, colon, rest = line.partition(":")
        parts = rest.split()
        if not colon or not parts:
            continue
        try:
            value = int(parts[0])
        except ValueError:
            continue
        fields[name.strip()] = value * KIB if parts[1:] == ["kB"] else value
    return fields


def memory_from_meminfo(text: str) -> dict[str, int]:
    """
    C{{"total", "used", "available"}} in bytes from the text of C{meminfo}.

    used = MemTotal - MemAvailable, what free(1) (procps-ng 4) and psutil
    report, so the master shows the figure an operator sees on the host.
    available is MemAvailable; kernels before 3.14 lack it, and then it is
    estimated as MemFree + Buffers + Cached. Distorted figures (e.g. under
    LXC) are clamped so that 0 <= used <= total.

    @raise ValueError: when MemTotal or MemFree is missing.
    """
    fields = parse_meminfo(text)
    try:
        total = fields["MemTotal"]
        free = fields["MemFree"]
    except KeyError as missing:
        raise ValueError(f"meminfo lacks {missing.args[0]}") from None
    available = fields.get("MemAvailable")
    if available is None:
        available = free + fields.get("Buffers", 0) + fields.get("Cached", 0)
    available = max(0, min(total, available))
    used = total - available
    return {"total": total, "used": used, "available": available}


def read_memory(root: HostRoot) -> dict[str, int]:
    """
    The host's memory in bytes, from C{{proc}/meminfo} (blocking).
    """
    return memory_from_meminfo(read_text(os.path.join(root.proc, "meminfo")))


def parse_net_dev(text: str) -> dict[str, dict[str, int]]:
    """
    C{{interface: {"bytesIn", "bytesOut"}}} from the text of C{net/dev},
    without C{lo}.

    Lines that do not parse are dropped rather than reported with a null:
    the master answers 500 to a null counter.
    """
    interfaces: dict[str, dict[str, int]] = {}
    for line in text.splitlines():
        name, colon, counters = line.partition(":")
        name = name.strip()
        if not colon or not name or name == "lo" or "|" in name:
            continue
        values = counters.split()
        try:
            received, sent = int(values[0]), int(values[8])
        except (IndexError, ValueError):
            continue
        interfaces[name] = {"bytesIn": received, "bytesOut": sent}
    return interfaces


def read_network(root: HostRoot) -> dict[str, dict[str, int]]:
    """
    Cumulative byte counters per host interface, C{lo} excluded (blocking).

    With a host root this is C{{proc}/1/net/dev}: C{{proc}/net} would be
    the network namespace of the reading process, i.e. the container's, not
    the host's (L{HostRoot.namespaced}).
    """
    return parse_net_dev(read_text(root.namespaced("net", "dev")))


@frozen
class Mount:
    """
    One line of a mount table: the host's mount point, not the agent's path.
    """

    device: str
    mountpoint: str
    fstype: str


# Kernel and container file systems: no disk behind them worth reporting.
PSEUDO_FILESYSTEMS = frozenset(
    {
        "proc",
        "sysfs",
        "cgroup",
        "cgroup2",
        "tmpfs",
        "devtmpfs",
        "devpts",
        "mqueue",
        "overlay",
        "squashfs",
        "nsfs",
        "autofs",
        "binfmt_misc",
        "securityfs",
        "debugfs",
        "tracefs",
        "pstore",
        "bpf",
        "configfs",
        "fusectl",
        "hugetlbfs",
        "rpc_pipefs",
        "efivarfs",
        "ramfs",
        "selinuxfs",
        "fuse.lxcfs",
        "shm",
        "aufs",
    }
)

# Remote file systems: the ones whose statvfs may hang; off unless asked for.
NETWORK_FILESYSTEMS = frozenset(
    {
        "nfs",
        "nfs4",
        "cifs",
        "smb3",
        "smbfs",
        "sshfs",
        "fuse.sshfs",
        "9p",
        "ceph",
        "glusterfs",
        "fuse.glusterfs",
        "lustre",
        "afs",
    }
)

# Container engines' private mounts (image layers, per-container shm and
# secrets): many, short-lived, and already counted in their backing disk.
CONTAINER_RUNTIME_DIRECTORIES = (
    "/var/lib/docker",
    "/run/docker",
    "/var/lib/containerd",
)

_OCTAL_ESCAPE = re.compile(r"\\([0-7]{3})")


def unescape_mount_field(field_text: str) -> str:
    """
    Decode the kernel's octal escapes (C{\\040} space, C{\\011} tab,
    C{\\012} newline, C{\\134} backslash) in a mount table field.
    """
    return _OCTAL_ESCAPE.sub(lambda match: chr(int(match.group(1), 8)), field_text)


def _under(path: str, directories: Iterable[str]) -> bool:
    return any(path == d or path.startswith(d + "/") for d in directories)


def parse_mounts(text: str, include_network: bool = False) -> list[Mount]:
    """
    The mounts worth a disk figure, from a C{/proc/<pid>/mounts} text.

    Skips pseudo and container file systems, network file systems unless
    C{include_network}, and mount points under the container runtimes'
    directories. When a mount point appears twice the LAST entry wins: a later
    mount on the same point hides the earlier one, and C{statvfs} sees the one
    on top. Deduplication happens before filtering, so a real disk hidden
    under a tmpfs is not reported with the tmpfs's figures. The order is that
    of each mount point's first appearance.
    """
    by_mountpoint: dict[str, Mount] = {}
    for line in text.splitlines():
        parts = line.split()
        if len(parts) < 3:
            continue
        mount = Mount(
            device=unescape_mount_field(parts[0]),
            mountpoint=unescape_mount_field(parts[1]),
            fstype=unescape_mount_field(parts[2]),
        )
        by_mountpoint[mount.mountpoint] = mount
    return [
        mount
        for mount in by_mountpoint.values()
        if mount.fstype not in PSEUDO_FILESYSTEMS
        and (include_network or mount.fstype not in NETWORK_FILESYSTEMS)
        and not _under(mount.mountpoint, CONTAINER_RUNTIME_DIRECTORIES)
    ]


def read_mounts(root: HostRoot, include_network: bool = False) -> list[Mount]:
    """
    The host's mounts worth a disk figure (blocking).

    With a host root the table is C{{proc}/1/mounts}, the host init's;
    C{{proc}/self/mounts} would be the container's own table.
    """
    return parse_mounts(read_text(root.namespaced("mounts")), include_network)


def disk_usage(root: HostRoot, mount: Mount) -> dict[str, int] | None:
    """
    C{{"total", "used", "device"}} of one mount (BLOCKING, may hang forever
    on a dead network mount: run it through L{MountProber}); None when the
    mount point is not a directory.

    used counts blocks reserved for root as free space (f_bfree, not
    f_bavail), like df's used column. device (st_dev) tells bind mounts of
    the same file system apart from file systems of their own. Files bind
    mounted over files (a container's /etc/hosts, /run/docker.sock) are no
    disks.
    """
    path = root.host_path(mount.mountpoint)
    status = os.stat(path)
    if not stat_module.S_ISDIR(status.st_mode):
        return None
    usage = os.statvfs(path)
    return {
        "total": usage.f_blocks * usage.f_frsize,
        "used": (usage.f_blocks - usage.f_bfree) * usage.f_frsize,
        "device": status.st_dev,
    }


@define(eq=False)
class _ProbeRound:
    """
    One call of L{MountProber.probe}: which mounts it still waits for.
    """

    order: list[str]
    result: Deferred[tuple[dict[str, dict[str, int]], list[str]]] = field(init=False)
    disks: dict[str, dict[str, int]] = field(factory=dict)
    devices: dict[str, int] = field(factory=dict)
    stuck: set[str] = field(factory=set)
    waiting: dict[str, IDelayedCall] = field(factory=dict)
    started: bool = False
    done: bool = False

    def __attrs_post_init__(self) -> None:
        self.result = Deferred(self.cancel)

    def finish_if_complete(self) -> None:
        # Not before every probe is started: one that answers at once must
        # not end the round without the others.
        if self.started and not self.waiting and not self.done:
            self.done = True
            stuck = [
                mountpoint for mountpoint in self.order if mountpoint in self.stuck
            ]
            self.result.callback((self._distinct(), stuck))

    def _distinct(self) -> dict[str, dict[str, int]]:
        """
        The disks, each file system once: a bind mount of one already listed
        (dockerd's own --data-root, say) is the first mount again.
        """
        seen: set[int] = set()
        disks = {}
        for mountpoint in self.order:
            if mountpoint not in self.disks:
                continue
            device = self.devices.get(mountpoint)
            if device is not None:
                if device in seen:
                    continue
                seen.add(device)
            disks[mountpoint] = self.disks[mountpoint]
        return disks

    def cancel(self, result: Deferred[Any]) -> None:
        # The threads cannot be stopped; their busy marks clear when they
        # return. Only this round's timers go.
        self.done = True
        for timer in self.waiting.values():
            timer.cancel()
        self.waiting.clear()


@define(eq=False)
class MountProber:
    """
    Runs disk_usage per mount in threads with a timeout; a probe still
    running is never started again.

    A mount whose thread has not returned is "busy". Later rounds skip a busy
    mount at once and list it as stuck, without a thread; when its thread
    finally returns, its result is dropped and the mark cleared, so the next
    round probes it again. At most one thread per mount exists at any time.

    @param clock: schedules the per-mount timeouts.
    @param runInThread: C{f(*args) -> Deferred}, running C{f} off the reactor
        thread (the service's thread seam).
    @param timeout: seconds a mount may take before it counts as stuck.
    @param usage: the blocking measurement, L{disk_usage} by default.
    """

    _clock: IReactorTime
    _runInThread: Callable[..., Deferred[dict[str, int]]]
    _timeout: float = 5.0
    _usage: Callable[[HostRoot, Mount], dict[str, int]] = disk_usage
    _busy: set[str] = field(factory=set, init=False)
    # mount point -> text of its last error, so a mount that keeps failing
    # the same way is logged once, not every interval.
    _failing: dict[str, str] = field(factory=dict, init=False)

    def probe(
        self, root: HostRoot, mounts: list[Mount]
    ) -> Deferred[tuple[dict[str, dict[str, int]], list[str]]]:
        """
        Measure C{mounts}; fire with C{({mountpoint: figures}, [mount points
        skipped because stuck])}, the figures being what the measurement
        returned but C{device} (L{disk_usage}: C{{"used", "total"}}). Never
        fails: a mount whose measurement fails is left out with a log line.

        Cancelling the result stops waiting (the threads run on, and still
        keep their mounts busy until they return).
        """
        order = list(dict.fromkeys(mount.mountpoint for mount in mounts))
        round_ = _ProbeRound(order=order)
        started: set[str] = set()
        for mount in mounts:
            mountpoint = mount.mountpoint
            if mountpoint in started:
                continue
            started.add(mountpoint)
            if mountpoint in self._busy:
                round_.stuck.add(mountpoint)
                continue
            self._start(round_, root, mount)
        round_.started = True
        round_.finish_if_complete()
        return round_.result

    def _start(self, round_: _ProbeRound, root: HostRoot, mount: Mount) -> None:
        mountpoint = mount.mountpoint
        self._busy.add(mountpoint)
        round_.waiting[mountpoint] = self._clock.callLater(
            self._timeout, self._timedOut, round_, mountpoint
        )
        measured = maybeDeferred(self._runInThread, self._usage, root, mount)
        measured.addCallbacks(
            self._answered,
            self._failed,
            callbackArgs=(round_, mountpoint),
            errbackArgs=(round_, mountpoint),
        )

    def _returned(self, round_: _ProbeRound, mountpoint: str) -> bool:
        """
        Bookkeeping common to every thread return; whether the round still
        wanted the answer.
        """
        self._busy.discard(mountpoint)
        timer = round_.waiting.pop(mountpoint, None)
        if timer is not None:
            timer.cancel()
            return True
        if mountpoint in round_.stuck:
            log.info(
                "mount {mountpoint} answered again; it will be probed again",
                mountpoint=mountpoint,
            )
        return False

    def _answered(
        self, usage: dict[str, int] | None, round_: _ProbeRound, mountpoint: str
    ) -> None:
        if not self._returned(round_, mountpoint):
            return
        if self._failing.pop(mountpoint, None) is not None:
            log.info("mount {mountpoint} can be measured again", mountpoint=mountpoint)
        if usage is not None:
            round_.disks[mountpoint] = {
                key: value for key, value in usage.items() if key != "device"
            }
            if usage.get("device") is not None:
                round_.devices[mountpoint] = usage["device"]
        round_.finish_if_complete()

    def _failed(self, failure: Failure, round_: _ProbeRound, mountpoint: str) -> None:
        if not self._returned(round_, mountpoint):
            return
        problem = failure.getErrorMessage()
        if self._failing.get(mountpoint) != problem:
            self._failing[mountpoint] = problem
            log.warn(
                "mount {mountpoint} could not be measured ({problem}); skipped",
                mountpoint=mountpoint,
                problem=problem,
            )
        round_.finish_if_complete()

    def _timedOut(self, round_: _ProbeRound, mountpoint: str) -> None:
        del round_.waiting[mountpoint]
        round_.stuck.add(mountpoint)
        log.warn(
            "mount {mountpoint} did not answer within {timeout} s; skipped",
            mountpoint=mountpoint,
            timeout=self._timeout,
        )
        round_.finish_if_complete()
