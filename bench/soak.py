#!/usr/bin/env python3
"""Soak test: hold thousands of concurrent connections against the agent.

Starts the fake dockerd (tests/fake_dockerd.py) in its own process on a short
UNIX socket, and the agent as a real `twistd haven-agent` process in front of
it (tests/e2e_agent.py, TLS with a throwaway test CA, password auth).  Then an
asyncio client opens, on 127.0.0.1 only:

  - N/2 authenticated `GET /events` streams (Authorization header, 200 head
    read), which the agent proxies to the fake and keeps open;
  - N/2 unauthenticated stalls: most complete the TLS handshake and send a
    partial request head without credentials that is never finished, the rest
    (a quarter) are plain TCP connections that never start a handshake.

It samples the agent's RSS (psutil) before, after opening everything and every
5 s while holding, then makes the fake emit one event and checks that every
stream receives it, checks that the agent closed every stall by its head
timeout (408 or a plain close), closes everything and samples RSS again.

Exit status 1 when memory per connection exceeds --max-kib-per-connection,
a connection could not be opened, an event was lost, or a stall was not
closed.  Every wait is bounded; nothing listens beyond 127.0.0.1 and the
private sockets.  See bench/README.md.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import resource
import secrets
import shutil
import ssl
import subprocess
import sys
import time

BENCH_DIR = os.path.dirname(os.path.abspath(__file__))
CHECKOUT_ROOT = os.path.dirname(BENCH_DIR)
if CHECKOUT_ROOT not in sys.path:
    sys.path.insert(0, CHECKOUT_ROOT)

import psutil  # noqa: E402

from tests.e2e_agent import AgentProcess, agent_env  # noqa: E402
from tests.fake_dockerd import short_socket_path  # noqa: E402

#: Runs in the fake dockerd's own process: serves FakeDockerdFactory on argv[1]
#: and a control socket on argv[2] with one-line commands:
#: "emit DATA" -> emit_event(DATA + "\n"), answers "emitted LISTENERS";
#: "stats" -> "listeners L open O".
FAKE_DOCKERD_SCRIPT = r"""
import sys
from twisted.internet import reactor
from twisted.internet.protocol import Factory
from twisted.protocols.basic import LineOnlyReceiver
from tests.fake_dockerd import FakeDockerdFactory

sock, ctl = sys.argv[1], sys.argv[2]
fake = FakeDockerdFactory()
fake.clock  # bind the reactor

class Control(LineOnlyReceiver):
    delimiter = b"\n"
    def lineReceived(self, line):
        cmd, _, arg = line.partition(b" ")
        if cmd == b"emit" and arg:
            n = fake.event_listeners
            fake.emit_event(arg + b"\n")
            self.sendLine(b"emitted %d" % n)
        elif cmd == b"stats":
            self.sendLine(b"listeners %d open %d"
                          % (fake.event_listeners, fake.open_connections))
        else:
            self.sendLine(b"error")

reactor.listenUNIX(sock, fake, backlog=4096)
reactor.listenUNIX(ctl, Factory.forProtocol(Control))
reactor.callWhenRunning(lambda: (sys.stdout.write("ready\n"), sys.stdout.flush()))
reactor.run()
"""

SAMPLE_EVERY = 5.0
CONNECT_TIMEOUT = 30.0
OPEN_CONCURRENCY = 64


def log(msg: str) -> None:
    print(f"[soak {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def raise_nofile() -> int:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


class FakeDockerd:
    """The fake dockerd in a separate Python process."""

    def __init__(self) -> None:
        self.socket_path = short_socket_path()
        self.dir = os.path.dirname(self.socket_path)
        self.control_path = os.path.join(self.dir, "c.sock")
        self.log_path = os.path.join(self.dir, "fake.log")
        self.process: subprocess.Popen | None = None

    def start(self) -> FakeDockerd:
        with open(self.log_path, "wb") as out:
            self.process = subprocess.Popen(
                [
                    sys.executable,
                    "-c",
                    FAKE_DOCKERD_SCRIPT,
                    self.socket_path,
                    self.control_path,
                ],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                env=agent_env(),
                cwd=self.dir,
            )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"fake dockerd exited:\n{self.read_log()}")
            with open(self.log_path, "rb") as f:
                if b"ready" in f.read():
                    return self
            time.sleep(0.05)
        raise RuntimeError(f"fake dockerd did not start:\n{self.read_log()}")

    def read_log(self) -> str:
        try:
            with open(self.log_path, "rb") as f:
                return f.read()[-5000:].decode(errors="replace")
        except OSError:
            return "(no log)"

    async def command(self, line: str) -> str:
        r, w = await asyncio.wait_for(
            asyncio.open_unix_connection(self.control_path), 10
        )
        try:
            w.write(line.encode() + b"\n")
            await w.drain()
            return (await asyncio.wait_for(r.readline(), 10)).decode().strip()
        finally:
            w.close()

    def stop(self) -> None:
        proc, self.process = self.process, None
        if proc is not None and proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)
        shutil.rmtree(self.dir, ignore_errors=True)


class Stall:
    """One unauthenticated connection; `watch` reads until the agent closes."""

    def __init__(self, reader, writer, tls: bool) -> None:
        self.reader = reader
        self.writer = writer
        self.tls = tls
        self.opened = time.monotonic()
        self.closed_after: float | None = None
        self.answer = b""
        self.task: asyncio.Task | None = None

    async def watch(self) -> None:
        try:
            while len(self.answer) < 4096:
                chunk = await self.reader.read(4096)
                if not chunk:
                    break
                self.answer += chunk
        except (OSError, ssl.SSLError, asyncio.IncompleteReadError):
            pass
        self.closed_after = time.monotonic() - self.opened

    @property
    def status(self) -> str:
        if self.closed_after is None:
            return "open"
        if self.answer.startswith(b"HTTP/1.1 "):
            return self.answer[9:12].decode(errors="replace")
        return "close" if not self.answer else "other"


class Soak:
    def __init__(self, opts) -> None:
        self.o = opts
        self.fake: FakeDockerd | None = None
        self.agent: AgentProcess | None = None
        self.samples: list[tuple[str, float, int, int]] = []
        self.failures: list[str] = []

    # -- processes -----------------------------------------------------------

    def start(self) -> None:
        self.fake = FakeDockerd().start()
        log(f"fake dockerd pid {self.fake.process.pid} on {self.fake.socket_path}")
        self.agent = AgentProcess(
            self.fake.socket_path,
            password=secrets.token_urlsafe(18),
            extra_args=(
                "--max-unauthenticated",
                str(max(2000, self.o.connections)),
                "--max-connections",
                str(max(5000, 2 * self.o.connections)),
                "--head-timeout",
                str(self.o.head_timeout),
            ),
        )
        self.agent.start()
        self.proc = psutil.Process(self.agent.process.pid)
        log(
            f"agent pid {self.proc.pid} on 127.0.0.1:{self.agent.port} "
            f"(head timeout {self.o.head_timeout} s)"
        )

    def stop(self) -> None:
        if self.agent is not None:
            if self.o.keep:
                self.agent.stop()
                log(f"agent files kept in {self.agent.tmpdir}")
            else:
                self.agent.cleanup()
        if self.fake is not None:
            self.fake.stop()

    def sample(self, label: str) -> int:
        rss = self.proc.memory_info().rss // 1024
        fds = self.proc.num_fds()
        self.samples.append((label, time.monotonic(), rss, fds))
        log(f"{label}: agent RSS {rss} KiB, {fds} fds")
        return rss

    # -- client ----------------------------------------------------------------

    async def run(self) -> int:
        o = self.o
        n_streams = o.connections // 2
        n_stalls = o.connections - n_streams
        n_plain = n_stalls // 4
        n_tls_stalls = n_stalls - n_plain
        port = self.agent.port
        ctx = ssl.create_default_context(cafile=self.agent.ca_path)
        ctx.set_alpn_protocols(["http/1.1"])
        request = (
            "GET /events HTTP/1.1\r\nHost: docker\r\n"
            f"Authorization: {self.agent.authorization()}\r\n\r\n"
        ).encode()
        partial = b"GET /events HTTP/1.1\r\nHost: docker\r\nUser-Agent: soak"
        sem = asyncio.Semaphore(OPEN_CONCURRENCY)

        async def open_stream():
            async with sem:
                r, w = await asyncio.wait_for(
                    asyncio.open_connection(
                        "127.0.0.1", port, ssl=ctx, server_hostname="127.0.0.1"
                    ),
                    CONNECT_TIMEOUT,
                )
                try:
                    w.write(request)
                    await w.drain()
                    head = await asyncio.wait_for(
                        r.readuntil(b"\r\n\r\n"), CONNECT_TIMEOUT
                    )
                except BaseException:
                    w.transport.abort()
                    raise
                if not head.startswith(b"HTTP/1.1 200"):
                    w.transport.abort()
                    raise RuntimeError(f"/events answered {head[:80]!r}")
                return r, w

        async def open_stall(tls: bool) -> Stall:
            async with sem:
                if tls:
                    r, w = await asyncio.wait_for(
                        asyncio.open_connection(
                            "127.0.0.1", port, ssl=ctx, server_hostname="127.0.0.1"
                        ),
                        CONNECT_TIMEOUT,
                    )
                    w.write(partial)
                    await w.drain()
                else:
                    r, w = await asyncio.wait_for(
                        asyncio.open_connection("127.0.0.1", port), CONNECT_TIMEOUT
                    )
                stall = Stall(r, w, tls)
                stall.task = asyncio.ensure_future(stall.watch())
                return stall

        # Warm-up: what the first connections allocate once is not per connection.
        warm = await asyncio.gather(
            *(open_stream() for _ in range(min(64, n_streams))),
            return_exceptions=True,
        )
        for x in warm:
            if not isinstance(x, BaseException):
                x[1].transport.abort()
        await asyncio.sleep(2.0)
        rss_before = self.sample("before (warmed up)")

        t0 = time.monotonic()
        outcomes = await asyncio.gather(
            *(open_stream() for _ in range(n_streams)), return_exceptions=True
        )
        streams = [x for x in outcomes if not isinstance(x, BaseException)]
        errors = [x for x in outcomes if isinstance(x, BaseException)]
        t_streams = time.monotonic() - t0
        log(
            f"{len(streams)}/{n_streams} authenticated /events streams open "
            f"in {t_streams:.1f} s"
        )
        t1 = time.monotonic()
        outcomes = await asyncio.gather(
            *(open_stall(True) for _ in range(n_tls_stalls)),
            *(open_stall(False) for _ in range(n_plain)),
            return_exceptions=True,
        )
        stalls = [x for x in outcomes if not isinstance(x, BaseException)]
        errors += [x for x in outcomes if isinstance(x, BaseException)]
        t_stalls = time.monotonic() - t1
        log(
            f"{len(stalls)}/{n_stalls} stalls open in {t_stalls:.1f} s "
            f"({n_tls_stalls} TLS with a partial head, {n_plain} plain TCP)"
        )
        if errors:
            kinds = sorted({repr(e)[:100] for e in errors})
            self.failures.append(
                f"{len(errors)} connections failed to open: {'; '.join(kinds[:5])}"
            )
        await asyncio.sleep(1.0)
        held = len(streams) + sum(1 for s in stalls if s.closed_after is None)
        stats = await self.fake.command("stats")
        log(f"{held} connections held; fake dockerd: {stats}")
        rss_open = self.sample("all open")
        peak = rss_open
        peak_held = held

        # Hold, sampling every 5 s.
        hold_end = time.monotonic() + o.seconds
        while True:
            left = hold_end - time.monotonic()
            if left <= 0:
                break
            await asyncio.sleep(min(SAMPLE_EVERY, left))
            open_stalls = sum(1 for s in stalls if s.closed_after is None)
            rss = self.sample(
                f"held {o.seconds - max(0, hold_end - time.monotonic()):.0f} s "
                f"({open_stalls} stalls still open)"
            )
            peak = max(peak, rss)
        if self.agent.process.poll() is not None:
            self.failures.append("the agent exited during the hold")

        # One event to every stream.
        marker = f"soak-event-{secrets.token_hex(8)}".encode()
        answer = await self.fake.command("emit " + marker.decode())
        t_emit = time.monotonic()
        log(f"fake dockerd: {answer}")

        async def wait_event(reader) -> float | None:
            tail = b""
            deadline = t_emit + 30
            while True:
                left = deadline - time.monotonic()
                if left <= 0:
                    return None
                try:
                    chunk = await asyncio.wait_for(reader.read(65536), left)
                except (TimeoutError, OSError, ssl.SSLError):
                    return None
                if not chunk:
                    return None
                data = tail + chunk
                if marker in data:
                    return time.monotonic() - t_emit
                tail = data[-len(marker) :]

        delays = await asyncio.gather(*(wait_event(r) for r, _ in streams))
        got = [d for d in delays if d is not None]
        fanout_ms = max(got) * 1000 if got else None
        if len(got) != n_streams:
            self.failures.append(f"events delivered {len(got)}/{n_streams}")
        peak = max(peak, self.sample("after the event"))

        # Every stall must have been closed by the head timeout.
        pending = [s.task for s in stalls if s.closed_after is None]
        if pending:
            await asyncio.wait(pending, timeout=o.head_timeout + 15)
        closed = [s for s in stalls if s.closed_after is not None]
        statuses: dict[str, int] = {}
        for s in stalls:
            key = f"{'tls' if s.tls else 'tcp'}:{s.status}"
            statuses[key] = statuses.get(key, 0) + 1
        if len(closed) != n_stalls:
            self.failures.append(f"stalls closed {len(closed)}/{n_stalls}")
        early = [s for s in closed if s.closed_after < o.head_timeout - 1]
        if early:
            self.failures.append(
                f"{len(early)} stalls closed before the head timeout "
                f"(earliest after {min(s.closed_after for s in early):.1f} s)"
            )

        # Close everything.
        for _, w in streams:
            w.transport.abort()
        for s in stalls:
            s.writer.transport.abort()
            if s.task is not None and not s.task.done():
                s.task.cancel()
        await asyncio.sleep(3.0)
        stats_after = await self.fake.command("stats")
        rss_after = self.sample("after closing everything")
        fds = [x[3] for x in self.samples]

        growth = peak - rss_before
        kib_per_conn = growth / max(1, peak_held)
        if kib_per_conn > o.max_kib_per_connection:
            self.failures.append(
                f"{kib_per_conn:.1f} KiB per connection > "
                f"{o.max_kib_per_connection} KiB"
            )

        print()
        print("soak report")
        print(
            f"  connections held      {peak_held} at once "
            f"({len(streams)} authenticated /events streams, "
            f"{len(stalls)} stalls: {n_tls_stalls} TLS partial head, "
            f"{n_plain} plain TCP); opened in {t_streams + t_stalls:.1f} s"
        )
        print(
            f"  held for              {o.seconds} s (head timeout {o.head_timeout} s)"
        )
        print(f"  agent RSS before      {rss_before} KiB (after a 64-stream warm-up)")
        print(f"  agent RSS all open    {rss_open} KiB")
        print(f"  agent RSS peak        {peak} KiB")
        print(f"  agent RSS after       {rss_after} KiB (all closed)")
        print(
            f"  KiB per connection    {kib_per_conn:.1f} "
            f"(peak - before) / held; limit {o.max_kib_per_connection}"
        )
        print(
            f"  agent fds             before {fds[0]}, peak {max(fds)}, after {fds[-1]}"
        )
        print(
            f"  events delivered      {len(got)}/{n_streams}"
            + (f" (last after {fanout_ms:.0f} ms)" if fanout_ms is not None else "")
        )
        if closed:
            ages = [s.closed_after for s in closed]
            print(
                f"  stalls closed         {len(closed)}/{n_stalls} "
                f"after {min(ages):.1f}-{max(ages):.1f} s; "
                + ", ".join(f"{k} {v}" for k, v in sorted(statuses.items()))
            )
        else:
            print(f"  stalls closed         0/{n_stalls}")
        print(f"  fake dockerd after    {stats_after}")
        print("  RSS samples (KiB)     " + ", ".join(f"{x[2]}" for x in self.samples))
        if self.failures:
            print("FAIL: " + "; ".join(self.failures))
            return 1
        print("OK")
        return 0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--connections",
        type=int,
        default=2000,
        help="concurrent connections, half streams, half stalls (default 2000)",
    )
    p.add_argument(
        "--seconds",
        type=int,
        default=60,
        help="how long to hold them (default 60; must exceed --head-timeout)",
    )
    p.add_argument(
        "--head-timeout",
        type=int,
        default=30,
        help="the agent's --head-timeout (default 30)",
    )
    p.add_argument("--max-kib-per-connection", type=float, default=200.0)
    p.add_argument(
        "--keep",
        action="store_true",
        help="keep the agent's log directory (/tmp/hva-*)",
    )
    o = p.parse_args(argv)
    if o.connections < 2 or o.seconds <= o.head_timeout:
        p.error("need --connections >= 2 and --seconds > --head-timeout")
    limit = raise_nofile()
    need = 2 * o.connections + 200
    if limit < need:
        p.error(f"open-file limit {limit} < {need}; raise the hard limit")
    log(f"open-file limit {limit}")
    soak = Soak(o)
    try:
        soak.start()
        return asyncio.run(soak.run())
    finally:
        soak.stop()


if __name__ == "__main__":
    sys.exit(main())
