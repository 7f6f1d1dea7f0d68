# -*- test-case-name: tests.reporting.test_cpu -*-
"""
CPU load of the host, in percent, averaged since the previous report.

The master wants C{system.cpuLoad} as the share of CPU time spent busy since
the last report. C{psutil.cpu_percent()} looks like the answer but keeps its
previous sample per calling thread: the agent samples from a thread pool, so
consecutive calls land in different threads and measure unrelated intervals
(pitfalls item 6). So the agent reads the C{cpu} line of C{/proc/stat} itself
and keeps the previous sample in a L{CpuLoadMeter} it owns.

The very first sample has no predecessor; instead of reporting a meaningless
0 (what Haven's Java agent did), the meter takes two readings a fraction of a
second apart.

Everything here that reads a file blocks and belongs in the thread seam.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable

from attrs import define, field, frozen

# user nice system idle iowait irq softirq steal; guest and guest_nice come
# after these and are already counted inside user and nice.
_COUNTED_FIELDS = 8
_IDLE = 3
_IOWAIT = 4


@frozen
class CpuTimes:
    """
    Cumulative jiffies of all CPUs together, from the C{cpu} line.

    @ivar busy: time not spent idle or waiting for I/O.
    @ivar total: all accounted time (busy plus idle plus iowait).
    """

    busy: int
    total: int


def parse_proc_stat(text: str) -> CpuTimes:
    """
    The aggregate L{CpuTimes} from the text of C{/proc/stat}.

    Old kernels print fewer than eight counters on the C{cpu} line; missing
    ones count as 0. iowait counts as idle: the CPU was free to run something
    else.

    @raise ValueError: when there is no aggregate C{cpu} line.
    """
    for line in text.splitlines():
        if line.startswith("cpu "):
            values = [int(value) for value in line.split()[1 : 1 + _COUNTED_FIELDS]]
            values += [0] * (_COUNTED_FIELDS - len(values))
            total = sum(values)
            return CpuTimes(busy=total - values[_IDLE] - values[_IOWAIT], total=total)
    raise ValueError("no aggregate 'cpu' line in /proc/stat")


def read_cpu_times(proc: str = "/proc") -> CpuTimes:
    """
    Read C{{proc}/stat} (blocking).

    C{/proc/stat} is not namespaced, so inside a container it already
    describes the whole host; C{proc} is a parameter for the host-root layout
    and for tests.
    """
    with open(os.path.join(proc, "stat"), encoding="ascii") as stat:
        return parse_proc_stat(stat.read())


def cpu_load(before: CpuTimes, after: CpuTimes) -> float:
    """
    Percent of the time between two samples that the CPUs were busy.

    0.0 when no time passed (same sample, or a counter reset). Clamped to
    0.0-100.0 because the kernel's iowait counter is known to step backwards
    on tickless systems, which can push the raw ratio out of range.
    """
    elapsed = after.total - before.total
    if elapsed <= 0:
        return 0.0
    load = 100.0 * (after.busy - before.busy) / elapsed
    return min(100.0, max(0.0, load))


@define(eq=False)
class CpuLoadMeter:
    """
    The agent's own CPU load sampler: the load since its previous sample.

    @param read: returns the current L{CpuTimes} (L{read_cpu_times} in
        production, a fake in tests).
    @param sleep: waits between the two readings of the first sample.
    @param initial_sample: seconds between those two readings.
    """

    _read: Callable[[], CpuTimes]
    _sleep: Callable[[float], None] = time.sleep
    _initial_sample: float = 0.25
    _previous: CpuTimes | None = field(default=None, init=False)
    # The reporter never overlaps its ticks, but a thread pool would happily
    # run two samples at once if asked; the lock keeps the previous sample a
    # consistent chain anyway.
    _lock: threading.Lock = field(factory=threading.Lock, init=False, repr=False)

    def sample(self) -> float:
        """
        The load (percent) since the previous call; BLOCKING, run it in a thread.

        The first call reads, sleeps C{initial_sample} seconds and reads again,
        so even the first report carries a real value.
        """
        with self._lock:
            previous = self._previous
            if previous is None:
                previous = self._read()
                self._sleep(self._initial_sample)
            current = self._read()
            self._previous = current
            return cpu_load(previous, current)
