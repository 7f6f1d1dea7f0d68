# -*- test-case-name: tests.workers.test_workers -*-
"""
One worker process of `--workers N`: `python -m haven_agent.workers.worker`.

Started by the agent (see `haven_agent.workers.pool`), never by hand: it reads
its settings as one JSON line on stdin, serves the proxy on the agent's
SO_REUSEPORT ports, logs to stdout in the agent's format, and stops
gracefully on SIGTERM, or when stdin reaches end-of-file because the agent
is gone. Its metrics go to the agent on request, and a scrape it receives
is answered with the page the agent composes (`metrics_pipe`).
"""

from __future__ import annotations

import os
import signal
import sys

from twisted.logger import FileLogObserver, Logger, globalLogBeginner

log = Logger()


def agent_gone(reactor) -> None:
    """
    The agent holds the other end of stdin: end-of-file means it is gone.
    """
    if reactor.running:
        log.info("the agent process is gone; stopping")
        reactor.stop()


def read_line(fd: int) -> bytes:
    """
    The first line of C{fd}, read a byte at a time: a buffered read could
    take the agent's next messages with it, and they belong to the channel
    that reads C{fd} afterwards.
    """
    line = bytearray()
    while not line.endswith(b"\n"):
        byte = os.read(fd, 1)
        if not byte:
            break
        line += byte
    return bytes(line)


def main() -> None:
    # Until the proxy installs its own handler, a SIGHUP (the agent passing
    # on a certificate reload) must not end the worker.
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    from haven_agent.workers.pool import read_worker_spec

    line = read_line(0)
    if not line:
        sys.exit("haven_agent.workers.worker: no settings on stdin (started by hand?)")
    config, addresses, logFormat, index, logLevel = read_worker_spec(line)

    if logFormat == "json":
        from haven_agent.logs.json_lines import json_lines_observer

        observer = json_lines_observer(sys.stdout, logLevel)
    else:
        from haven_agent.logs.level import at_level
        from haven_agent.logs.text import ClassicTextFormat

        observer = FileLogObserver(sys.stdout, at_level(ClassicTextFormat(), logLevel))
    globalLogBeginner.beginLoggingTo([observer], redirectStandardIO=False)

    from twisted.internet import reactor, stdio

    from haven_agent._twisted.plain_dispatch import PlainDispatch
    from haven_agent.logs.flush_soon import LogFlushing
    from haven_agent.proxy.service import build_proxy_service
    from haven_agent.thread_pools import ThreadPools
    from haven_agent.workers.metrics_pipe import WorkerEnd
    from haven_agent.workers.pool import METRICS_FD

    # The pools hold the proxy, so they stop after it.
    service = ThreadPools(reactor)
    PlainDispatch(reactor).setServiceParent(service)
    LogFlushing(reactor).setServiceParent(service)
    proxy = build_proxy_service(config, reactor, service, reusePort=addresses)
    proxy.announce = False
    proxy.setServiceParent(service)
    service.privilegedStartService()
    # stdin is the lifeline and brings the agent's metrics messages; the
    # answers go out on their own descriptor (the log has stdout).
    channel = WorkerEnd(proxy.metricsPage.own, reactor, lambda: agent_gone(reactor))
    proxy.useMetricsPage(channel.page)
    stdio.StandardIO(channel, stdin=0, stdout=METRICS_FD)  # type: ignore[call-arg]
    reactor.addSystemEventTrigger("before", "shutdown", service.stopService)

    def start() -> None:
        service.startService()
        log.info("worker {index} (pid {pid}) serving", index=index, pid=os.getpid())

    reactor.callWhenRunning(start)
    reactor.run()


if __name__ == "__main__":
    main()
