"""
Per-request cost of the gate, in-process: no sockets, no TLS, no dockerd.

Drives one `GateProtocol` over `StringTransport`s and a `Clock` (as
`tests/proxy/gate_harness.py`'s `GateHarness` does) through N keep-alive
`GET /_ping` request/response cycles and prints the microseconds of CPU one
cycle costs: head reading and parsing, the Basic auth check, forwarding,
the response's way back and the access-log event. What the real bench
measures on top of this is the reactor, the sockets and TLS.

    python bench/profile_gate.py                 # best of 5 runs of 20,000
    python bench/profile_gate.py -n 50000 -r 3
    python bench/profile_gate.py --profile       # plus cProfile, top 20 by tottime
    python bench/profile_gate.py --log json      # the access log as JSON lines

The access log goes to an observer writing to /dev/null: in twistd's text
format with the agent's faster formatter (`--log text`, the default), as JSON
lines (`--log json`), or to no observer at all (`--log none`), so that the
cost of the one event per request is part of the figure as in production.

TLS is not included: pyOpenSSL's per-record cost is measured by the real
bench (`bench/run`), not here.
"""

from __future__ import annotations

import argparse
import cProfile
import os
import pstats
import sys
import time
from base64 import b64encode
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from prometheus_client import CollectorRegistry  # noqa: E402
from twisted.internet.address import IPv4Address  # noqa: E402
from twisted.internet.defer import Deferred, succeed  # noqa: E402
from twisted.internet.task import Clock  # noqa: E402
from twisted.internet.testing import StringTransport  # noqa: E402
from twisted.logger import (  # noqa: E402
    globalLogBeginner,
    textFileLogObserver,
)

from haven_agent.metrics.proxy_metrics import ProxyMetrics  # noqa: E402
from haven_agent.proxy.auth import BasicAuthChecker  # noqa: E402
from haven_agent.proxy.gate import GateFactory  # noqa: E402

AUTH = b"Authorization: Basic " + b64encode(b"admin:pw") + b"\r\n"
# What the docker CLI sends for `docker version`'s ping, near enough.
PING = (
    b"GET /_ping HTTP/1.1\r\nHost: docker\r\n"
    b"User-Agent: Docker-Client/26.1.5 (linux)\r\n" + AUTH + b"\r\n"
)
PONG = (
    b"HTTP/1.1 200 OK\r\nApi-Version: 1.45\r\nCache-Control: no-cache, no-store, "
    b"must-revalidate\r\nContent-Length: 2\r\nContent-Type: text/plain; "
    b"charset=utf-8\r\nDocker-Experimental: false\r\nOstype: linux\r\nPragma: "
    b"no-cache\r\nServer: Docker/26.1.5 (linux)\r\nDate: Wed, 25 Nov 2026 "
    b"23:40:00 GMT\r\n\r\nOK"
)


class HalfCloseTransport(StringTransport):
    def loseWriteConnection(self) -> None:
        pass


def start_logging(kind: str) -> None:
    observers = []
    out = open(os.devnull, "w")
    if kind == "text":
        observers.append(textFileLogObserver(out))
    elif kind == "json":
        from haven_agent.logs.json_lines import JSONLinesObserver

        observers.append(JSONLinesObserver(out))
    globalLogBeginner.beginLoggingTo(
        observers, discardBuffer=True, redirectStandardIO=False
    )
    if kind == "text":
        # As the agent does under twistd (haven_agent.logs.text).
        from haven_agent.logs.text import speed_up_text_logs

        speed_up_text_logs()


def make_factory(clock: Clock, connects: list) -> GateFactory:
    def connect(protocol):
        d: Deferred = Deferred()
        connects.append((protocol, d))
        return d

    checker = BasicAuthChecker("admin", "pw", lambda f, *a: succeed(f(*a)))
    return GateFactory(
        checker=checker,
        connectDocker=connect,
        dockerDescription="unix:/run/docker.sock",
        clock=clock,
        # Counted as the agent counts them (see docs/metrics.md).
        metrics=ProxyMetrics(CollectorRegistry(), ["admin"]),
    )


class PlainRig:
    """
    The gate alone: client bytes in, dockerd bytes back, over StringTransports.
    """

    def __init__(self) -> None:
        self.clock = Clock()
        connects: list = []
        factory = make_factory(self.clock, connects)
        self.client = HalfCloseTransport(
            peerAddress=IPv4Address("TCP", "10.0.0.9", 4321)
        )
        self.gate = factory.buildProtocol(self.client.getPeer())
        self.gate.makeConnection(self.client)
        # The first request opens the dockerd connection.
        self.gate.dataReceived(PING)
        docker, d = connects.pop()
        self.dockerTransport = HalfCloseTransport()
        docker.makeConnection(self.dockerTransport)
        d.callback(docker)
        self.docker = docker
        docker.dataReceived(PONG)
        self.check()

    def check(self) -> None:
        assert self.dockerTransport.value() == PING, self.dockerTransport.value()
        assert self.client.value() == PONG, self.client.value()
        self.dockerTransport.clear()
        self.client.clear()

    def cycle(self, n: int) -> None:
        gate, docker, clock = self.gate, self.docker, self.clock
        clientBuffer, dockerBuffer = self.client.io, self.dockerTransport.io
        for _ in range(n):
            gate.dataReceived(PING)
            docker.dataReceived(PONG)
            clock.advance(0.0001)
            # Keep the transports' buffers from growing (cheaper than clear()).
            clientBuffer.seek(0)
            clientBuffer.truncate()
            dockerBuffer.seek(0)
            dockerBuffer.truncate()
        gate.dataReceived(PING)
        docker.dataReceived(PONG)
        self.check()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-n", type=int, default=20_000, help="requests per run")
    parser.add_argument("-r", "--runs", type=int, default=5, help="runs; best counts")
    parser.add_argument("--log", choices=("text", "json", "none"), default="text")
    parser.add_argument("--profile", action="store_true", help="cProfile one run")
    args = parser.parse_args()
    start_logging(args.log)
    make = PlainRig

    results = []
    for _ in range(args.runs):
        rig = make()
        rig.cycle(200)  # warm up
        started = time.process_time()
        rig.cycle(args.n)
        results.append((time.process_time() - started) / args.n * 1e6)
    print(
        f"plain gate, log {args.log}: "
        f"best {min(results):.1f} us/request, runs "
        + " ".join(f"{r:.1f}" for r in results)
    )
    if args.profile:
        rig = make()
        rig.cycle(200)
        profiler = cProfile.Profile()
        profiler.enable()
        rig.cycle(args.n)
        profiler.disable()
        stats = pstats.Stats(profiler)
        stats.sort_stats("tottime").print_stats(20)


if __name__ == "__main__":
    main()
