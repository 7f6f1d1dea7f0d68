"""
Where one agent process spends its CPU, by layer, under `pingload`.

    python3 bench/layer_profile.py                 # 8 keep-alive connections
    python3 bench/layer_profile.py --new-conns 4   # a new TLS connection per request

Starts a private dockerd and the agent of this checkout (as bench/ab.py
does), puts load on it with `pingload`, and samples the agent with py-spy
in native mode (`--native`, idle samples left out) while it runs. Each
sample is given to the layer of the innermost frame that belongs to one,
from the leaf outwards, so that C code called by a layer counts for it
(bcrypt for auth, OpenSSL for TLS) unless it is a layer of its own:

- system calls: the libc wrappers (send, recv, write, epoll_wait...), i.e.
  the kernel's share as seen from the process; other libc frames (malloc,
  memcpy) count for their caller;
- OpenSSL: the system's libssl and libcrypto, and the standard library's
  _ssl module that calls them (pyOpenSSL/cffi too, for the reporter's
  client, whose statically linked OpenSSL py-spy sees no frames inside);
- the TLS wrapper: haven_agent.tls.transport (twisted.protocols.tls too);
- transports: twisted.internet tcp, unix, abstract, and the eager write;
- the reactor: the epoll loop, the per-event log context (callWithLogger,
  callWithContext), Deferreds, delayed calls;
- the access log: haven_agent.proxy.access_log, twisted.logger, haven_agent.logs;
- the gate: the rest of haven_agent.proxy;
- the interpreter: samples no layer claims (garbage collection, start-up).

The process's own user and system CPU over the run (from /proc) are printed
too: py-spy cannot see inside the kernel, so "system calls" is where the
kernel time shows. Needs root (dockerd, ptrace), gcc and libssl-dev
(pingload), and py-spy (`pip install py-spy`).
"""

from __future__ import annotations

import argparse
import collections
import os
import shutil
import subprocess
import sys
import tempfile
import threading

BENCH_DIR = os.path.dirname(os.path.abspath(__file__))
CHECKOUT_ROOT = os.path.dirname(BENCH_DIR)
sys.path.insert(0, CHECKOUT_ROOT)

import tests.e2e_agent as e2e_agent  # noqa: E402
from bench import build_pingload  # noqa: E402  (bench/bench.py)
from tests.realdockerd import RealDockerd  # noqa: E402

#: (layer, substrings of a frame that place it there), tried in this order
#: for each frame from the leaf outwards.
LAYERS: list[tuple[str, tuple[str, ...]]] = [
    ("system calls: send", ("send (libc", "sendmsg (libc")),
    ("system calls: recv", ("recv (libc", "recvmsg (libc")),
    ("system calls: write (the log file)", ("write (libc",)),
    ("system calls: epoll", ("epoll_wait (libc", "epoll_ctl (libc")),
    (
        "system calls: connections",
        ("accept4 (libc", "accept (libc", "connect (libc", "close (libc"),
    ),
    # The server's TLS is the system OpenSSL through the standard library's
    # _ssl. cryptography, for the reporter's pyOpenSSL client, links OpenSSL
    # statically; py-spy shows no frames inside it, so that work is counted
    # with the pyOpenSSL call above it.
    (
        "OpenSSL",
        (
            "libssl",
            "libcrypto",
            "_ssl.cpython",
            "/ssl.py:",
            "OpenSSL/SSL.py",
            "OpenSSL/_util.py",
            "_cffi",
        ),
    ),
    ("TLS wrapper", ("twisted/protocols/tls.py", "tls/transport.py")),
    (
        "transports",
        (
            "twisted/internet/tcp.py",
            "twisted/internet/unix.py",
            "twisted/internet/abstract.py",
            "_twisted/eager_write.py",
            "_twisted/docker_socket.py",
            "proxy/splice.py",
        ),
    ),
    ("access log", ("proxy/access_log.py", "twisted/logger/", "haven_agent/logs/")),
    ("gate", ("haven_agent/proxy/",)),
    (
        "reactor (poll loop, per-event log context, Deferreds, timers)",
        (
            "twisted/internet/epollreactor.py",
            "twisted/internet/posixbase.py",
            "twisted/internet/base.py",
            "twisted/internet/defer.py",
            "twisted/python/log.py",
            "twisted/python/context.py",
            "twisted/internet/task.py",
        ),
    ),
]


def layer_of(stack: list[str]) -> str:
    for frame in reversed(stack):
        for layer, marks in LAYERS:
            if any(mark in frame for mark in marks):
                return layer
    return "interpreter"


def samples_by_layer(raw: str) -> collections.Counter[str]:
    """
    py-spy's raw output (one "frame;frame;... count" line per stack),
    counted by layer; only the reactor thread's stacks (the ones through
    the reactor's run loop) are kept.
    """
    counts: collections.Counter[str] = collections.Counter()
    for line in raw.splitlines():
        stack_text, _, count = line.rpartition(" ")
        if not count.isdigit() or "mainLoop" not in stack_text:
            continue
        counts[layer_of(stack_text.split(";"))] += int(count)
    return counts


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--conns", type=int, default=8, help="keep-alive connections")
    p.add_argument(
        "--new-conns",
        type=int,
        default=0,
        metavar="N",
        help="instead: N clients, a new TLS connection per request",
    )
    p.add_argument("--seconds", type=float, default=10.0)
    p.add_argument("--rate", type=int, default=250, help="py-spy samples per second")
    o = p.parse_args()
    if shutil.which("py-spy") is None:
        p.error("py-spy is not installed (pip install py-spy)")
    work = tempfile.mkdtemp(prefix="hvlp-", dir="/tmp")
    binary = os.path.join(work, "pingload")
    build_pingload(binary)
    dockerd = RealDockerd().start()
    agent = e2e_agent.AgentProcess(dockerd.socket_path).start()
    try:
        conns = o.new_conns or o.conns
        load = [binary, "-c", str(conns), "-d", str(o.seconds + 4), "-w", "1"]
        if o.new_conns:
            load.append("-N")
        load += [
            "-H",
            f"Authorization: {agent.authorization()}",
            "-C",
            agent.ca_path,
            f"tls:127.0.0.1:{agent.port}",
        ]
        pid = agent.process.pid
        loading = subprocess.Popen(load, stdout=subprocess.PIPE, text=True)
        threading.Event().wait(2)  # past the warm-up
        user, system = _cpu(pid)
        recorded = os.path.join(work, "raw.txt")
        subprocess.run(
            ["py-spy", "record", "--native", "-p", str(pid), "-r", str(o.rate)]
            + ["-d", str(int(o.seconds)), "-f", "raw", "-o", recorded],
            check=True,
            capture_output=True,
        )
        user2, system2 = _cpu(pid)
        result = loading.communicate(timeout=60)[0]
        with open(recorded) as f:
            counts = samples_by_layer(f.read())
    finally:
        agent.stop()
        agent.cleanup()
        dockerd.stop()
    total = sum(counts.values()) or 1
    kind = (
        f"{o.new_conns} clients, new connection per request"
        if o.new_conns
        else (f"{o.conns} keep-alive connections")
    )
    print(f"GET /_ping, {kind}; pingload: {result.strip()[:200]}")
    cpu = (user2 - user) + (system2 - system)
    print(
        f"agent CPU while sampled: user {user2 - user:.2f} s, system "
        f"{system2 - system:.2f} s ({(system2 - system) / cpu:.0%} in the kernel)"
    )
    print("| layer | share of the reactor thread's samples |")
    print("|---|---|")
    for layer, count in counts.most_common():
        print(f"| {layer} | {count / total:.0%} |")
    return 0


def _cpu(pid: int) -> tuple[float, float]:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    return int(fields[11]) / ticks, int(fields[12]) / ticks


if __name__ == "__main__":
    sys.exit(main())
