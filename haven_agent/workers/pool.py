# -*- test-case-name: tests.workers.test_workers -*-
"""
Serving the proxy from several processes: `--workers N`.

One Python process does one thing at a time, so its per-request work (TLS
records, the request head, the access log) caps the requests per second of
the whole agent at what one core can do. With `--workers N` the agent
process starts N-1 worker processes serving the same port(s): every process,
the agent included, binds its own SO_REUSEPORT socket (`reuse_port`) and the
kernel spreads new connections across them. A connection stays with the
process that accepted it, so nothing about the proxy's behaviour changes
except that connection limits, the brute-force throttle and the health
probe are per process. The reporter runs in the agent process only.

Workers run `python -m haven_agent.workers.worker`. They get their settings as one
JSON line on stdin, which then stays open as a lifeline: a worker stops on
its own once it reads end-of-file there, so workers never outlive the agent,
even one killed with SIGKILL. They write their log lines to stdout (and
anything unexpected to stderr); the agent copies whole lines of both into
its own log as they are, so there is still one log, in one format.

The agent sends SIGTERM to its workers when it stops (each then has the
same shutdown grace as the agent), SIGKILL if one is still there after the
grace and a margin, forwards SIGHUP (certificate reload) to them, and
restarts a worker that exits on its own, waiting longer after each quick
failure so that a worker that cannot start does not spin.

The metrics page is the sum over all processes: the agent asks each worker
for a snapshot over its stdin and descriptor 3 (`metrics_pipe`).
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable
from typing import IO, Any

from attrs import asdict
from twisted.application.service import Service
from twisted.internet.defer import Deferred, DeferredList, succeed
from twisted.internet.error import ProcessDone, ProcessExitedAlready
from twisted.internet.protocol import ProcessProtocol
from twisted.logger import Logger, LogLevel, globalLogPublisher

from haven_agent._twisted.log_observers import observers_of, output_of
from haven_agent.backoff import backoff_delay
from haven_agent.config import ProxyConfig, Sources
from haven_agent.logs.json_lines import JSONLinesObserver
from haven_agent.proxy.reuse_port import ListenAddress
from haven_agent.workers.metrics_pipe import AgentEnd, WorkerSnapshots

log = Logger()

#: The directory haven_agent is imported from.
PACKAGE_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

#: Most bytes of a worker's output held while waiting for a line's end.
MAX_PARTIAL_LINE = 64 * 1024
#: Restart delays after a worker exits on its own: first, cap, and how long
#: a worker must have run for its next failure to start over at the first.
RESTART_DELAY = 1.0
RESTART_DELAY_MAX = 30.0
STABLE_AFTER = 30.0
#: How much longer than the shutdown grace a worker gets before SIGKILL.
KILL_MARGIN = 5.0
#: The worker's descriptor its metrics messages come from.
METRICS_FD = 3


def worker_spec(
    config: ProxyConfig,
    addresses: list[ListenAddress],
    logFormat: str,
    index: int,
    logLevel: LogLevel = LogLevel.info,
) -> bytes:
    """
    The JSON line a worker reads on stdin.
    """
    return (
        json.dumps(
            {
                "config": asdict(config),
                "listen": [address.as_json() for address in addresses],
                "logFormat": logFormat,
                "logLevel": logLevel.name,
                "index": index,
            }
        ).encode("utf-8")
        + b"\n"
    )


def read_worker_spec(
    line: bytes,
) -> tuple[ProxyConfig, list[ListenAddress], str, int, LogLevel]:
    spec = json.loads(line)
    # JSON has lists where the frozen settings keep tuples.
    values = {
        key: tuple(value) if isinstance(value, list) else value
        for key, value in spec["config"].items()
    }
    values["sources"] = Sources(values["sources"]["names"])
    return (
        ProxyConfig(**values),
        [ListenAddress.from_json(item) for item in spec["listen"]],
        spec["logFormat"],
        int(spec["index"]),
        LogLevel.levelWithName(spec["logLevel"]),
    )


def log_output_file() -> IO[str] | None:
    """
    The file the agent's own log lines go to, when it is a plain file
    observer (twistd's --logfile, standard output, or the JSON log), so
    that the workers' lines can be added to it as they are.
    """
    for observer in observers_of(globalLogPublisher):
        out = output_of(observer)
        if out is not None:
            return out
        if isinstance(observer, JSONLinesObserver):
            return observer.out
    return None


class LineRelay:
    """
    Copies a worker's output into the agent's log, whole lines at a time, so
    that lines of different processes never interleave mid-line.
    """

    def __init__(self, name: str, output: IO[str] | None) -> None:
        self._name = name
        self._output = output
        self._partial = b""

    def feed(self, data: bytes) -> None:
        data = self._partial + data
        end = data.rfind(b"\n") + 1
        self._partial = data[end:]
        if len(self._partial) > MAX_PARTIAL_LINE:
            # A line this long is not a log line: pass it on in pieces.
            end, self._partial = len(data), b""
        if end:
            self._write(data[:end])

    def flush(self) -> None:
        if self._partial:
            partial, self._partial = self._partial, b""
            self._write(partial + b"\n")

    def _write(self, data: bytes) -> None:
        text = data.decode("utf-8", "replace")
        if self._output is None:
            for line in text.splitlines():
                log.info("{worker}: {line}", worker=self._name, line=line)
            return
        try:
            self._output.write(text)
            self._output.flush()
        except Exception:
            # Logging must not take the agent down.
            pass


class WorkerProcess(ProcessProtocol):
    """
    The agent's end of one worker: its lifeline, its output, its exit.
    """

    def __init__(self, pool: WorkerPool, index: int) -> None:
        self._pool = pool
        self.index = index
        self.name = f"worker {index}"
        # One relay per pipe: a partial line on one must not be completed
        # by the other's bytes.
        self._out = LineRelay(self.name, pool.logOutput)
        self._err = LineRelay(self.name, pool.logOutput)
        self.ended: Deferred[None] = Deferred()
        self.started = pool.clock.seconds()
        self.metrics = AgentEnd(self.name, self._write, pool.renderMetrics, pool.clock)

    def _write(self, data: bytes) -> None:
        if self.transport is not None:
            self.transport.write(data)

    def connectionMade(self) -> None:
        # The settings; stdin then stays open as the lifeline, and carries
        # the metrics messages.
        self.transport.write(self._pool.spec(self.index))
        self._pool.snapshots.ends[self.index] = self.metrics

    def childDataReceived(self, childFD: int, data: bytes) -> None:
        if childFD == METRICS_FD:
            self.metrics.dataReceived(data)
        else:
            super().childDataReceived(childFD, data)

    def outReceived(self, data: bytes) -> None:
        self._out.feed(data)

    def errReceived(self, data: bytes) -> None:
        self._err.feed(data)

    def signal(self, name: str) -> None:
        try:
            self.transport.signalProcess(name)
        except (ProcessExitedAlready, OSError):
            pass

    def processEnded(self, reason) -> None:
        self._out.flush()
        self._err.flush()
        if self._pool.snapshots.ends.get(self.index) is self.metrics:
            del self._pool.snapshots.ends[self.index]
        self._pool.snapshots.retire(self.metrics)
        self._pool.workerEnded(self, reason)
        self.ended.callback(None)


class WorkerPool(Service):
    """
    Keeps C{count} worker processes running while the service runs.

    @ivar logOutput: where workers' log lines go (None: as log events).
    """

    def __init__(
        self,
        config: ProxyConfig,
        listeners: list[Any],
        logFormat: str,
        count: int,
        reactor: Any,
        executable: str = sys.executable,
        logLevel: LogLevel = LogLevel.info,
        renderMetrics: Callable[[], Deferred[bytes]] | None = None,
    ) -> None:
        self._config = config
        #: Composes the whole metrics page (the agent's `MetricsPage`).
        self.renderMetrics = renderMetrics or (lambda: succeed(b""))
        #: The workers' metrics, for the agent's page.
        self.snapshots = WorkerSnapshots()
        self._logLevel = logLevel
        self._listeners = listeners
        self._logFormat = logFormat
        self._count = count
        self._reactor = reactor
        self.clock = reactor
        self._executable = executable
        self.workers: dict[int, WorkerProcess] = {}
        #: Quick failures in a row, per worker index.
        self._failures: dict[int, int] = {}
        self._restarts: dict[int, Any] = {}
        self._stopping = False
        self.logOutput: IO[str] | None = None

    def spec(self, index: int) -> bytes:
        # The listeners are bound by now: workers bind the same real ports,
        # also when the configuration asked for port 0.
        addresses = [
            listener.address.bound(listener.port) for listener in self._listeners
        ]
        return worker_spec(
            self._config, addresses, self._logFormat, index, self._logLevel
        )

    def startService(self) -> None:
        super().startService()
        self._stopping = False
        self.logOutput = log_output_file()
        log.info(
            "starting {count} worker processes besides this one (pid {pid})",
            count=self._count,
            pid=os.getpid(),
        )
        for index in range(1, self._count + 1):
            self._spawn(index)

    def _spawn(self, index: int) -> None:
        self._restarts.pop(index, None)
        if self._stopping:
            return
        worker = WorkerProcess(self, index)
        env = dict(os.environ)
        # The worker imports the same haven_agent as this process.
        env["PYTHONPATH"] = os.pathsep.join(
            p for p in (PACKAGE_ROOT, env.get("PYTHONPATH")) if p
        )
        self._reactor.spawnProcess(
            worker,
            self._executable,
            [self._executable, "-m", "haven_agent.workers.worker"],
            env=env,
            childFDs={0: "w", 1: "r", 2: "r", METRICS_FD: "r"},
        )
        self.workers[index] = worker

    def workerEnded(self, worker: WorkerProcess, reason) -> None:
        if self.workers.get(worker.index) is worker:
            del self.workers[worker.index]
        if self._stopping:
            return
        ran = self.clock.seconds() - worker.started
        failures = 0 if ran >= STABLE_AFTER else self._failures.get(worker.index, 0)
        # The project's backoff policy without its jitter: one host's
        # workers do not need spreading out.
        delay = backoff_delay(
            failures, RESTART_DELAY_MAX, random=lambda: 0.0, base=RESTART_DELAY
        )
        status = (
            "exited"
            if reason.check(ProcessDone)
            else f"ended ({reason.getErrorMessage()})"
        )
        log.warn(
            "{name} {status} after {ran:.1f} s; starting it again in {delay:.0f} s",
            name=worker.name,
            status=status,
            ran=ran,
            delay=delay,
        )
        self._failures[worker.index] = failures + 1
        self._restarts[worker.index] = self.clock.callLater(
            delay, self._spawn, worker.index
        )

    def signalAll(self, name: str) -> None:
        for worker in list(self.workers.values()):
            worker.signal(name)

    def stopService(self) -> Deferred[Any]:
        super().stopService()
        self._stopping = True
        for restart in self._restarts.values():
            if restart.active():
                restart.cancel()
        self._restarts.clear()
        workers = list(self.workers.values())
        if not workers:
            return succeed(None)
        for worker in workers:
            worker.signal("TERM")
        kill = self.clock.callLater(
            self._config.shutdownGrace + KILL_MARGIN, self.signalAll, "KILL"
        )
        ended = DeferredList([worker.ended for worker in workers])

        def done(result):
            if kill.active():
                kill.cancel()
            return result

        return ended.addBoth(done)
