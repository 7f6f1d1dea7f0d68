"""
Tests for haven_agent.thread_pools: the pools by kind, work queued until
they start, and a stuck host probe that does not hold the exit.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading

from twisted.application.service import Service
from twisted.internet import reactor
from twisted.internet.defer import inlineCallbacks
from twisted.trial.unittest import TestCase

from haven_agent.thread_pools import ThreadPools
from tests.e2e_agent import CHECKOUT_ROOT


def thread_name() -> str:
    return threading.current_thread().name


class ThreadPoolsTests(TestCase):
    def pools(self) -> ThreadPools:
        pools = ThreadPools(reactor, cpuThreads=1, hostThreads=1)
        self.addCleanup(lambda: pools.running and pools.stopService())
        return pools

    @inlineCallbacks
    def test_eachKindInItsPool(self):
        pools = self.pools()
        pools.startService()
        cpu = yield pools.defer_to_cpu(thread_name)
        host = yield pools.defer_to_host(thread_name)
        self.assertIn("haven-agent-cpu", cpu)
        self.assertIn("haven-agent-host", host)

    @inlineCallbacks
    def test_stuckHostProbeDoesNotBlockBcrypt(self):
        """
        A host probe that never returns holds its own pool only.
        """
        pools = self.pools()
        pools.startService()
        release = threading.Event()
        self.addCleanup(release.set)
        pools.defer_to_host(release.wait)
        result = yield pools.defer_to_cpu(lambda: 42)
        self.assertEqual(result, 42)

    @inlineCallbacks
    def test_workQueuedUntilStarted(self):
        pools = self.pools()
        queued = pools.defer_to_cpu(lambda: "done")
        self.assertNoResult(queued)
        pools.startService()
        self.assertEqual((yield queued), "done")

    def test_stuckProbeDoesNotHoldTheExit(self):
        """
        A process whose host pool has a thread stuck for ever still exits
        once its services stop.
        """
        program = (
            "import threading, time\n"
            "from twisted.internet import reactor\n"
            "from haven_agent.thread_pools import ThreadPools\n"
            "pools = ThreadPools(reactor)\n"
            "pools.startService()\n"
            "pools.defer_to_host(threading.Event().wait)\n"
            "pools.defer_to_cpu(time.sleep, 0.1)\n"
            "reactor.callLater(0.5, reactor.stop)\n"
            "reactor.addSystemEventTrigger('before', 'shutdown', pools.stopService)\n"
            "reactor.run()\n"
            "print('exited')\n"
        )
        done = subprocess.run(
            [sys.executable, "-c", program],
            capture_output=True,
            timeout=60,
            env={**os.environ, "PYTHONPATH": CHECKOUT_ROOT},
        )
        self.assertEqual(done.returncode, 0, done.stderr)
        self.assertEqual(done.stdout, b"exited\n")

    @inlineCallbacks
    def test_poolsOutliveTheirServices(self):
        """
        A service stopping (the proxy's grace period) can still check a
        password: the pools stop after their children.
        """
        pools = self.pools()
        checked = []

        class Stopping(Service):
            def stopService(self):
                super().stopService()
                checking = pools.defer_to_cpu(lambda: "checked")
                checking.addCallback(checked.append)
                return checking

        Stopping().setServiceParent(pools)
        pools.startService()
        yield pools.stopService()
        self.assertEqual(checked, ["checked"])
        self.assertFalse(pools.cpu.started)
