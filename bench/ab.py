"""
Compare the agent of two checkouts on keep-alive `GET /_ping`, interleaved.

    git worktree add /tmp/before <commit>
    python3 bench/ab.py /tmp/before     # against this checkout; 1 and 8 connections
    python3 bench/ab.py /tmp/before /tmp/after --reps 9 --conns 8
    python3 bench/ab.py /tmp/before --agent-arg=--workers=2
    python3 bench/ab.py /tmp/before --conns 1,8,new4  # new4: 4 clients, new connections
    python3 bench/ab.py /tmp/before --conns resume4   # the same, resuming TLS sessions
    python3 bench/ab.py /tmp/before --streams 2000     # idle /events streams instead

Starts a private dockerd (as bench/run does), one agent from each checkout on
it, and alternates short `pingload` runs between them (the order flips every
repetition), so that a machine whose speed drifts, as a shared VM's does,
slows both alike. For each side it prints the median and best requests/s and
the agent's CPU time per request (user + system of the agent process and its
workers, per request, warm-up included): CPU per request is the steadier
number. Needs root (dockerd), gcc and libssl-dev (pingload), like bench/run.

With --streams N it measures idle `/events` streams instead: each repetition
restarts both agents, warms each up with 64 streams, opens N on one of them
(RSS growth per stream) and creates --events volumes on dockerd's socket one
after the other, each event awaited on every stream (the agent's CPU per
stream and event, and the median time until the last stream had it), then the same
on the other agent.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import json
import os
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.parse

BENCH_DIR = os.path.dirname(os.path.abspath(__file__))
CHECKOUT_ROOT = os.path.dirname(BENCH_DIR)
sys.path.insert(0, CHECKOUT_ROOT)

import tests.e2e_agent as e2e_agent  # noqa: E402
from bench import (  # noqa: E402
    build_pingload,
    cpu_seconds,
    raise_fd_limit,
    rss_kib,
    tree_pids,
)
from tests.realdockerd import RealDockerd  # noqa: E402


def agent_cpu(agent) -> float:
    return sum(cpu_seconds(pid) for pid in tree_pids(agent.process.pid))


def start_agent(checkout: str, socket_path: str, args: tuple[str, ...]):
    return e2e_agent.AgentProcess(
        socket_path, extra_args=args, checkout=checkout
    ).start()


def agent_rss(agent) -> int:
    return sum(rss_kib(pid) for pid in tree_pids(agent.process.pid))


def pingload(binary: str, agent, conns: str, seconds: str) -> dict:
    """
    conns: a connection count, or "newN": N clients, a new connection per
    request, or "resumeN": the same, each resuming the last one's TLS session.
    """
    flags = {"new": ["-N"], "resume": ["-N", "-R"]}
    kind = conns.rstrip("0123456789")
    proc = subprocess.run(
        [
            binary,
            *flags.get(kind, []),
            "-c",
            conns.removeprefix(kind),
            "-d",
            seconds,
            "-w",
            "0.3",
            "-H",
            f"Authorization: {agent.authorization()}",
            "-C",
            agent.ca_path,
            f"tls:127.0.0.1:{agent.port}",
        ],
        capture_output=True,
        text=True,
        timeout=float(seconds) + 60,
        check=True,
    )
    return json.loads(proc.stdout)


async def stream_events(agent, dockerd, streams: int, events: int) -> dict:
    """Idle /events streams on one fresh agent: memory each, cost of each event."""
    filters = json.dumps({"type": ["volume"], "event": ["create"]})
    request = (
        f"GET /events?filters={urllib.parse.quote(filters)} HTTP/1.1\r\n"
        f"Host: docker\r\nAuthorization: {agent.authorization()}\r\n\r\n"
    ).encode()
    ctx = ssl.create_default_context(cafile=agent.ca_path)
    gate = asyncio.Semaphore(64)
    loop = asyncio.get_running_loop()

    async def open_one():
        async with gate:
            r, w = await asyncio.wait_for(
                asyncio.open_connection(
                    "127.0.0.1", agent.port, ssl=ctx, server_hostname="127.0.0.1"
                ),
                30,
            )
            w.write(request)
            head = await asyncio.wait_for(r.readuntil(b"\r\n\r\n"), 30)
            if not head.startswith(b"HTTP/1.1 200"):
                raise RuntimeError(f"/events answered {head[:80]!r}")
            return r, w

    async def event_reaches(reader, name: bytes, t0: float) -> float:
        seen = b""
        while name not in seen:
            chunk = await asyncio.wait_for(reader.read(65536), 30)
            if not chunk:
                raise RuntimeError("a stream ended")
            seen = seen[-len(name) :] + chunk
        return time.monotonic() - t0

    for _, w in await asyncio.gather(*(open_one() for _ in range(64))):
        w.transport.abort()
    await asyncio.sleep(1.0)
    rss_before = agent_rss(agent)
    opened = await asyncio.gather(*(open_one() for _ in range(streams)))
    await asyncio.sleep(1.5)
    kib = (agent_rss(agent) - rss_before) / streams
    fanout = []
    cpu = 0.0
    try:
        for i in range(events):
            name = f"hvab-{os.getpid()}-{i}-{time.monotonic_ns()}"
            body = json.dumps({"Name": name}).encode()
            cpu0, t0 = agent_cpu(agent), time.monotonic()
            waits = [
                asyncio.ensure_future(event_reaches(r, name.encode(), t0))
                for r, _ in opened
            ]
            await loop.run_in_executor(
                None,
                functools.partial(
                    dockerd.api_request,
                    "POST",
                    "/volumes/create",
                    body,
                    headers={"Content-Type": "application/json"},
                ),
            )
            delays = await asyncio.gather(*waits)
            # /proc counts CPU in ticks of 10 ms: summed over the events
            cpu += agent_cpu(agent) - cpu0
            fanout.append(max(delays) * 1000)
            await loop.run_in_executor(
                None, dockerd.api_request, "DELETE", f"/volumes/{name}"
            )
    finally:
        for _, w in opened:
            w.transport.abort()
    return {
        "kib": kib,
        "cpu_us": cpu * 1e6 / (streams * events),
        "fanout_ms": statistics.median(fanout),
    }


def compare_streams(o, checkouts, dockerd, args) -> None:
    results: dict[str, list[dict]] = {}
    labels = ("before", "after")
    names = [f"{label} ({c})" for label, c in zip(labels, checkouts, strict=True)]
    for rep in range(o.reps):
        order = list(zip(names, checkouts, strict=True))
        if rep % 2:
            order.reverse()
        for name, checkout in order:
            agent = start_agent(checkout, dockerd.socket_path, args)
            try:
                res = asyncio.run(stream_events(agent, dockerd, o.streams, o.events))
            finally:
                agent.stop()
                agent.cleanup()
            results.setdefault(name, []).append(res)
    for name in names:
        values = results[name]
        med = {k: statistics.median(v[k] for v in values) for k in values[0]}
        print(
            f"{o.streams} streams  {name}: memory per stream median "
            f"{med['kib']:.1f} KiB; per event: agent CPU per stream median "
            f"{med['cpu_us']:.0f} us, last stream after {med['fanout_ms']:.0f} ms"
        )


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("before", help="a checkout (a git worktree of another commit)")
    p.add_argument(
        "after", nargs="?", default=CHECKOUT_ROOT, help="default: this checkout"
    )
    p.add_argument("--reps", type=int, default=5)
    p.add_argument(
        "--conns",
        default="1,8",
        help="comma-separated connection counts; newN: N clients, a new "
        "connection per request; resumeN: the same, resuming TLS sessions",
    )
    p.add_argument(
        "--streams", type=int, default=0, help="idle /events streams instead"
    )
    p.add_argument("--events", type=int, default=20, help="events per --streams run")
    p.add_argument("--seconds", default="2", help="measured seconds per run")
    p.add_argument("--agent-arg", action="append", default=[], metavar="ARG")
    o = p.parse_args(argv)
    checkouts = [os.path.abspath(o.before), os.path.abspath(o.after)]
    for checkout in checkouts:
        if not os.path.isdir(os.path.join(checkout, "haven_agent")):
            p.error(f"{checkout} is not a haven-agent checkout")

    raise_fd_limit()  # 2,000 streams: two descriptors each in the agent
    work = tempfile.mkdtemp(prefix="hvab-", dir="/tmp")
    binary = os.path.join(work, "pingload")
    build_pingload(binary)
    args = tuple(o.agent_arg)
    dockerd = RealDockerd().start()
    agents = {}
    try:
        if o.streams:
            compare_streams(o, checkouts, dockerd, args)
            return 0
        for label, checkout in zip(("before", "after"), checkouts, strict=True):
            name = f"{label} ({checkout})"
            agents[name] = start_agent(checkout, dockerd.socket_path, args)
        for agent in agents.values():  # warm up
            pingload(binary, agent, "8", "2")
        results: dict[tuple[str, str], list[tuple[float, float]]] = {}
        for rep in range(o.reps):
            for conns in o.conns.split(","):
                order = list(agents.items())
                if rep % 2:
                    order.reverse()
                for name, agent in order:
                    before = agent_cpu(agent)
                    res = pingload(binary, agent, conns, o.seconds)
                    cpu = agent_cpu(agent) - before
                    resumed = res.get("resumed_handshakes", 0) / res["all_requests"]
                    results.setdefault((conns, name), []).append(
                        (res["rps"], cpu * 1e6 / res["all_requests"], resumed)
                    )
        for (conns, name), values in sorted(results.items()):
            rps = [v[0] for v in values]
            cpu = [v[1] for v in values]
            resumed = statistics.median(v[2] for v in values)
            print(
                f"{conns} conn(s)  {name}: req/s median {statistics.median(rps):.0f} "
                f"best {max(rps):.0f}; agent CPU per request median "
                f"{statistics.median(cpu):.0f} us, best {min(cpu):.0f} us"
                + (f"; {resumed:.0%} of handshakes resumed" if resumed else "")
            )
    finally:
        for agent in agents.values():
            agent.stop()
            agent.cleanup()
        dockerd.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
