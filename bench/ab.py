"""
Compare the agent of two checkouts on keep-alive `GET /_ping`, interleaved.

    git worktree add /tmp/before <commit>
    python3 bench/ab.py /tmp/before     # against this checkout; 1 and 8 connections
    python3 bench/ab.py /tmp/before /tmp/after --reps 9 --conns 8
    python3 bench/ab.py /tmp/before --agent-arg=--workers=2

Starts a private dockerd (as bench/run does), one agent from each checkout on
it, and alternates short `pingload` runs between them (the order flips every
repetition), so that a machine whose speed drifts, as a shared VM's does,
slows both alike. For each side it prints the median and best requests/s and
the agent's CPU time per request (user + system of the agent process and its
workers, per request, warm-up included): CPU per request is the steadier
number. Needs root (dockerd), gcc and libssl-dev (pingload), like bench/run.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile

BENCH_DIR = os.path.dirname(os.path.abspath(__file__))
CHECKOUT_ROOT = os.path.dirname(BENCH_DIR)
sys.path.insert(0, CHECKOUT_ROOT)

import tests.e2e_agent as e2e_agent  # noqa: E402
from bench import build_pingload, cpu_seconds, tree_pids  # noqa: E402
from tests.realdockerd import RealDockerd  # noqa: E402


def agent_cpu(agent) -> float:
    return sum(cpu_seconds(pid) for pid in tree_pids(agent.process.pid))


def start_agent(checkout: str, socket_path: str, args: tuple[str, ...]):
    return e2e_agent.AgentProcess(
        socket_path, extra_args=args, checkout=checkout
    ).start()


def pingload(binary: str, agent, conns: str, seconds: str) -> dict:
    proc = subprocess.run(
        [
            binary,
            "-c",
            conns,
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


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("before", help="a checkout (a git worktree of another commit)")
    p.add_argument(
        "after", nargs="?", default=CHECKOUT_ROOT, help="default: this checkout"
    )
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--conns", default="1,8", help="comma-separated connection counts")
    p.add_argument("--seconds", default="2", help="measured seconds per run")
    p.add_argument("--agent-arg", action="append", default=[], metavar="ARG")
    o = p.parse_args(argv)
    checkouts = [os.path.abspath(o.before), os.path.abspath(o.after)]
    for checkout in checkouts:
        if not os.path.isdir(os.path.join(checkout, "haven_agent")):
            p.error(f"{checkout} is not a haven-agent checkout")

    work = tempfile.mkdtemp(prefix="hvab-", dir="/tmp")
    binary = os.path.join(work, "pingload")
    build_pingload(binary)
    args = tuple(o.agent_arg)
    dockerd = RealDockerd().start()
    agents = {}
    try:
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
                    results.setdefault((conns, name), []).append(
                        (res["rps"], cpu * 1e6 / res["all_requests"])
                    )
        for (conns, name), values in sorted(results.items()):
            rps = [v[0] for v in values]
            cpu = [v[1] for v in values]
            print(
                f"{conns} conn(s)  {name}: req/s median {statistics.median(rps):.0f} "
                f"best {max(rps):.0f}; agent CPU per request median "
                f"{statistics.median(cpu):.0f} us, best {min(cpu):.0f} us"
            )
    finally:
        for agent in agents.values():
            agent.stop()
            agent.cleanup()
        dockerd.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
