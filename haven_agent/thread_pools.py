# -*- test-case-name: tests.test_thread_pools -*-
"""
The agent's thread pools: one seam owns every thread that blocking work
runs in, by kind, so one kind cannot starve another.

- `cpu`: bcrypt checks. Short and CPU bound; a few threads are enough, and
  a burst of new credentials must not hold up anything else.
- `host`: the reporter's psutil reads and the statvfs of each mount. A
  mount whose server is gone (NFS, CIFS) can hold its thread in the kernel
  for ever, so these are daemon threads and the pool is never joined: a
  stuck probe must not keep the agent from exiting.
- DNS lookups stay on the reactor's own pool, which nothing else uses now.

Modelled on tahoe-lafs's `cputhreadpool`: pools made up front, work queued
until the service starts them, and `defer_to_*` returning Deferreds. The
services that use the pools are its children, so the pools stop after them:
a proxy that lets its connections finish for a grace period on stop still
checks a new password in that time.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from threading import Thread
from typing import Any, TypeVar

from twisted.application.service import MultiService
from twisted.internet.defer import Deferred
from twisted.internet.threads import deferToThreadPool
from twisted.python.threadpool import ThreadPool

T = TypeVar("T")


def _daemon_thread(*args: Any, **kwargs: Any) -> Thread:
    return Thread(*args, daemon=True, **kwargs)


class DaemonThreadPool(ThreadPool):
    """
    A pool whose threads do not keep the process alive.
    """

    threadFactory = staticmethod(_daemon_thread)  # type: ignore[assignment]


class ThreadPools(MultiService):
    """
    The pools, and as children the services that use them.

    @param reactor: where the Deferreds fire.
    """

    def __init__(
        self,
        reactor: Any,
        cpuThreads: int | None = None,
        hostThreads: int = 4,
    ) -> None:
        super().__init__()
        self._reactor = reactor
        self.cpu = ThreadPool(
            0, cpuThreads or min(4, os.cpu_count() or 1), "haven-agent-cpu"
        )
        self.host = DaemonThreadPool(0, hostThreads, "haven-agent-host")

    def startService(self) -> None:
        self.cpu.start()
        self.host.start()
        super().startService()

    def stopService(self) -> Deferred[None]:
        stopping = super().stopService()
        stopping.addBoth(self._stopPools)
        return stopping

    def _stopPools(self, result: Any) -> Any:
        # A bcrypt check ends within a second: wait for it. The host pool
        # is left to die with the process (see the module docstring).
        self.cpu.stop()
        return result

    def defer_to_cpu(self, f: Callable[..., T], *args: Any) -> Deferred[T]:
        """
        Run C{f(*args)} in the CPU pool; fire with its result.
        """
        return deferToThreadPool(self._reactor, self.cpu, f, *args)

    def defer_to_host(self, f: Callable[..., T], *args: Any) -> Deferred[T]:
        """
        Run the blocking host probe C{f(*args)} in the host pool.
        """
        return deferToThreadPool(self._reactor, self.host, f, *args)
