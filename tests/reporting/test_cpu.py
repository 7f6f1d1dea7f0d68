"""
Tests for L{haven_agent.reporting.cpu}: parsing C{/proc/stat}, the load between two
samples and the meter that keeps the previous sample.
"""

from __future__ import annotations

import os

from twisted.trial.unittest import SynchronousTestCase

from haven_agent.reporting.cpu import (
    CpuLoadMeter,
    CpuTimes,
    cpu_load,
    parse_proc_stat,
    read_cpu_times,
)

# user nice system idle iowait irq softirq steal guest guest_nice
# total = 100+20+50+800+30+5+5+10 = 1020, busy = 1020-800-30 = 190
STAT_BEFORE = """\
cpu  100 20 50 800 30 5 5 10 7 3
cpu0 60 10 25 400 15 3 3 5 4 2
cpu1 40 10 25 400 15 2 2 5 3 1
intr 123456 0 0
ctxt 987654
btime 1700000000
"""

# total = 200+20+100+1110+50+10+10+20 = 1520, busy = 1520-1110-50 = 360;
# guest grew by 33, which must not count: it is already inside user.
STAT_AFTER = """\
cpu  200 20 100 1110 50 10 10 20 40 3
cpu0 120 10 50 555 25 5 5 10 20 2
cpu1 80 10 50 555 25 5 5 10 20 1
intr 123999 0 0
ctxt 999999
"""


class ParseProcStatTests(SynchronousTestCase):
    def test_aggregate_line(self) -> None:
        self.assertEqual(parse_proc_stat(STAT_BEFORE), CpuTimes(busy=190, total=1020))
        self.assertEqual(parse_proc_stat(STAT_AFTER), CpuTimes(busy=360, total=1520))

    def test_per_cpu_line_first_is_ignored(self) -> None:
        """
        Only the C{cpu } line counts, not C{cpu0}, wherever it is.
        """
        text = "cpu0 1 1 1 1 1 1 1 1 0 0\ncpu  4 0 2 10 4 0 0 0 0 0\n"
        self.assertEqual(parse_proc_stat(text), CpuTimes(busy=6, total=20))

    def test_short_line(self) -> None:
        """
        Old kernels print fewer counters; the missing ones are 0.
        """
        self.assertEqual(parse_proc_stat("cpu  1 2 3 4\n"), CpuTimes(busy=6, total=10))

    def test_no_cpu_line(self) -> None:
        self.assertRaises(ValueError, parse_proc_stat, "intr 1 2 3\nctxt 4\n")

    def test_read_cpu_times(self) -> None:
        proc = self.mktemp()
        os.makedirs(proc)
        with open(os.path.join(proc, "stat"), "w") as f:
            f.write(STAT_AFTER)
        self.assertEqual(read_cpu_times(proc), CpuTimes(busy=360, total=1520))


class CpuLoadTests(SynchronousTestCase):
    def test_known_samples(self) -> None:
        """
        170 busy jiffies out of 500 is 34 percent.
        """
        before = parse_proc_stat(STAT_BEFORE)
        after = parse_proc_stat(STAT_AFTER)
        self.assertEqual(cpu_load(before, after), 34.0)

    def test_all_busy_and_all_idle(self) -> None:
        start = CpuTimes(busy=100, total=1000)
        self.assertEqual(cpu_load(start, CpuTimes(busy=300, total=1200)), 100.0)
        self.assertEqual(cpu_load(start, CpuTimes(busy=100, total=1200)), 0.0)

    def test_clamped(self) -> None:
        """
        A backwards iowait counter can push the raw ratio out of range.
        """
        start = CpuTimes(busy=100, total=1000)
        self.assertEqual(cpu_load(start, CpuTimes(busy=400, total=1100)), 100.0)
        self.assertEqual(cpu_load(start, CpuTimes(busy=50, total=1100)), 0.0)

    def test_no_time_passed(self) -> None:
        start = CpuTimes(busy=100, total=1000)
        self.assertEqual(cpu_load(start, start), 0.0)
        self.assertEqual(cpu_load(start, CpuTimes(busy=200, total=1000)), 0.0)
        self.assertEqual(cpu_load(start, CpuTimes(busy=10, total=500)), 0.0)


class CpuLoadMeterTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.events: list[object] = []
        self.samples = iter(
            [
                CpuTimes(busy=0, total=0),
                CpuTimes(busy=50, total=100),  # first call: 50 %
                CpuTimes(busy=60, total=200),  # second call: 10 %
                CpuTimes(busy=140, total=300),  # third call: 80 %
            ]
        )

    def read(self) -> CpuTimes:
        times = next(self.samples)
        self.events.append(("read", times))
        return times

    def sleep(self, seconds: float) -> None:
        self.events.append(("sleep", seconds))

    def test_first_call_reads_sleeps_reads(self) -> None:
        """
        The first sample is taken over a short sleep, never a meaningless 0.
        """
        meter = CpuLoadMeter(self.read, self.sleep)
        self.assertEqual(meter.sample(), 50.0)
        self.assertEqual(
            self.events,
            [
                ("read", CpuTimes(busy=0, total=0)),
                ("sleep", 0.25),
                ("read", CpuTimes(busy=50, total=100)),
            ],
        )

    def test_later_calls_use_previous_sample(self) -> None:
        meter = CpuLoadMeter(self.read, self.sleep, initial_sample=0.5)
        meter.sample()
        del self.events[:]
        self.assertEqual(meter.sample(), 10.0)
        self.assertEqual(meter.sample(), 80.0)
        self.assertEqual(
            self.events,
            [
                ("read", CpuTimes(busy=60, total=200)),
                ("read", CpuTimes(busy=140, total=300)),
            ],
        )

    def test_initial_sample_duration(self) -> None:
        meter = CpuLoadMeter(self.read, self.sleep, initial_sample=0.5)
        meter.sample()
        self.assertIn(("sleep", 0.5), self.events)


class RealMachineTests(SynchronousTestCase):
    """
    This machine's C{/proc/stat}, which every Linux (and container) has.
    """

    def test_read(self) -> None:
        times = read_cpu_times()
        self.assertGreater(times.total, 0)
        self.assertTrue(0 <= times.busy <= times.total, times)

    def test_meter(self) -> None:
        load = CpuLoadMeter(read_cpu_times, initial_sample=0.05).sample()
        self.assertIsInstance(load, float)
        self.assertTrue(0.0 <= load <= 100.0, load)
