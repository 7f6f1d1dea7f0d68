#!/usr/bin/env python3
"""Side-by-side benchmark: dockerd's socket, haproxy, stunnel4 and the agent.

One run starts a private dockerd (tests/realdockerd.py), the agent as a
`twistd haven-agent` process (tests/e2e_agent.py, TLS with a throwaway test
CA, password auth), haproxy (TLS + Basic auth, HTTP mode, one thread) and
stunnel4 (TLS only), all in front of the same UNIX socket and listening on
free ports of 127.0.0.1.  Then it runs each workload interleaved: for every
repetition each path runs once before the next repetition starts (the order
of the paths rotates between repetitions), and the table shows the medians.

See bench/README.md for what is measured and how to read the table.  All
traffic goes to 127.0.0.1 or the private UNIX socket; every loop and every
child process is bounded in time.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import json
import os
import platform
import resource
import shutil
import signal
import socket
import ssl
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
import traceback
import urllib.parse

BENCH_DIR = os.path.dirname(os.path.abspath(__file__))
CHECKOUT_ROOT = os.path.dirname(BENCH_DIR)
if CHECKOUT_ROOT not in sys.path:
    sys.path.insert(0, CHECKOUT_ROOT)

from tests.e2e_agent import (  # noqa: E402
    AgentProcess,
    AgentStartError,
    free_port,
    stop_process,
)
from tests.realdockerd import (  # noqa: E402
    DockerdUnavailable,
    RealDockerd,
    clean_docker_env,
)

PATHS = ("direct", "haproxy", "stunnel", "agent", "agent-mp")
#: The agent's paths: one process, and --workers (`--agent-workers`).
AGENTS = ("agent", "agent-mp")
PEERS = ("haproxy", "stunnel")
MB = 1_000_000

#: Sizes of a full run (the issue's) and of a --quick smoke run.
FULL = dict(
    reps=3,
    ping_seconds=5.0,
    ping_warmup=1.0,
    newconn_clients=4,
    image_mb=500,
    stream_mb=1000,
    streams=2000,
)
QUICK = dict(
    reps=1,
    ping_seconds=2.0,
    ping_warmup=0.5,
    newconn_clients=4,
    image_mb=50,
    stream_mb=100,
    streams=200,
)

WORKLOADS = (
    "ping1",
    "ping8",
    "pingnew",
    "pingresume",
    "download",
    "upload",
    "attach-out",
    "attach-in",
    "run",
    "events",
)
#: Not run unless asked for with --workloads: wrk on the TLS paths, to check
#: that bench/pingload.c is not the bottleneck of "ping8".
EXTRA_WORKLOADS = ("wrk8",)


def log(msg: str) -> None:
    stamp = time.strftime("%H:%M:%S")
    print(f"[{stamp}] {msg}", flush=True)


class BenchError(Exception):
    pass


def build_pingload(binary: str) -> None:
    """
    Compile bench/pingload.c to C{binary}: the load generator of this
    bench, bench/ab.py and bench/layer_profile.py.
    """
    src = os.path.join(BENCH_DIR, "pingload.c")
    proc = subprocess.run(
        ["gcc", "-O2", "-pthread", "-o", binary, src, "-lssl", "-lcrypto"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    if proc.returncode != 0:
        raise BenchError(
            "cannot build bench/pingload.c (needs gcc and libssl-dev):\n" + proc.stderr
        )


# -- process facts -----------------------------------------------------------


def rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise BenchError(f"no VmRSS for pid {pid}")


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process (all its threads), in seconds."""
    with open(f"/proc/{pid}/stat") as f:
        data = f.read()
    fields = data[data.rindex(")") + 2 :].split()
    ticks = os.sysconf("SC_CLK_TCK")
    return (int(fields[11]) + int(fields[12])) / ticks


def tree_pids(pid: int) -> list[int]:
    """A process and all its descendants (the agent's workers)."""
    pids, i = [pid], 0
    while i < len(pids):
        try:
            for task in os.listdir(f"/proc/{pids[i]}/task"):
                with open(f"/proc/{pids[i]}/task/{task}/children") as f:
                    pids.extend(int(x) for x in f.read().split())
        except OSError:
            pass
        i += 1
    return pids


def loadavg() -> str:
    try:
        with open("/proc/loadavg") as f:
            return " ".join(f.read().split()[:3])
    except OSError:
        return "?"


def first_line(argv: list[str]) -> str:
    try:
        proc = subprocess.run(
            argv, capture_output=True, timeout=20, check=False, text=True
        )
    except (OSError, subprocess.TimeoutExpired) as e:
        return f"unavailable ({e})"
    text = (proc.stdout or proc.stderr).strip().splitlines()
    return text[0] if text else "?"


def raise_fd_limit(want: int = 65536) -> int:
    """Raise the open-file limit (children inherit it); root may raise the hard one."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    for limits in ((want, max(hard, want)), (min(want, hard), hard)):
        if limits[0] <= soft:
            break
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, limits)
            break
        except (ValueError, OSError):
            continue
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def wait_tls(port: int, ca: str, proc: subprocess.Popen, what: str, logs: str) -> None:
    ctx = ssl.create_default_context(cafile=ca)
    deadline = time.monotonic() + 30
    last: Exception | None = None
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise BenchError(f"{what} exited with {proc.returncode}; see {logs}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=2) as s:
                with ctx.wrap_socket(s, server_hostname="127.0.0.1"):
                    return
        except (OSError, ssl.SSLError) as e:
            last = e
            time.sleep(0.1)
    raise BenchError(f"{what} did not accept TLS on port {port}: {last!r}; see {logs}")


# -- the peers ---------------------------------------------------------------


class Peer:
    """A peer proxy process: started in its directory, ready once TLS works."""

    name = ""
    dir: str
    port: int
    ca: str
    log: str
    process: subprocess.Popen | None = None

    def spawn(self, argv: list[str], output: str) -> None:
        with open(output, "wb") as out:
            self.process = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                cwd=self.dir,
            )
        wait_tls(self.port, self.ca, self.process, self.name, self.log)

    @property
    def pid(self) -> int:
        return self.process.pid

    def stop(self) -> None:
        stop_process(self.process, timeout=15)


class Haproxy(Peer):
    name = "haproxy"

    def __init__(self, workdir, socket_path, cert, key, ca, user, password, maxconn):
        self.dir = os.path.join(workdir, "haproxy")
        os.mkdir(self.dir)
        self.port = free_port()
        self.ca = ca
        self.pem = os.path.join(self.dir, "haproxy.pem")
        with open(self.pem, "w") as out:
            for path in (cert, key):
                with open(path) as f:
                    out.write(f.read().rstrip("\n") + "\n")
        os.chmod(self.pem, 0o600)
        self.cfg = os.path.join(self.dir, "haproxy.cfg")
        self.log = os.path.join(self.dir, "haproxy.log")
        with open(self.cfg, "w") as f:
            f.write(f"""\
# Generated by bench/bench.py: TLS + Basic auth in front of dockerd's socket.
global
    nbthread 1
    maxconn {maxconn}
    ssl-default-bind-options ssl-min-ver TLSv1.2

defaults
    mode http
    maxconn {maxconn}
    timeout connect 10s
    timeout http-request 30s
    timeout client 1h
    timeout server 1h
    timeout tunnel 1h

userlist dockerusers
    user {user} insecure-password {password}

frontend docker_tls
    bind 127.0.0.1:{self.port} ssl crt {self.pem} alpn http/1.1
    http-request auth realm docker unless {{ http_auth(dockerusers) }}
    default_backend dockerd

backend dockerd
    server dockerd unix@{socket_path}
""")

    def start(self) -> None:
        check = subprocess.run(
            ["haproxy", "-c", "-f", self.cfg],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
        if check.returncode != 0:
            raise BenchError(f"haproxy -c failed:\n{check.stdout}{check.stderr}")
        self.spawn(["haproxy", "-db", "-f", self.cfg], self.log)


class Stunnel(Peer):
    name = "stunnel"

    def __init__(self, workdir, socket_path, cert, key, ca):
        self.dir = os.path.join(workdir, "stunnel")
        os.mkdir(self.dir)
        self.port = free_port()
        self.ca = ca
        self.cfg = os.path.join(self.dir, "stunnel.conf")
        self.log = os.path.join(self.dir, "stunnel.log")
        with open(self.cfg, "w") as f:
            f.write(f"""\
; Generated by bench/bench.py: plain TLS in front of dockerd's socket.
foreground = yes
pid =
output = {self.log}
debug = 3
socket = l:TCP_NODELAY=1

[docker]
accept = 127.0.0.1:{self.port}
connect = {socket_path}
cert = {cert}
key = {key}
sslVersionMin = TLSv1.2
""")

    def start(self) -> None:
        binary = shutil.which("stunnel4") or shutil.which("stunnel")
        if binary is None:
            raise BenchError("stunnel4 not found; apt-get install stunnel4")
        self.spawn([binary, self.cfg], os.path.join(self.dir, "stdio.log"))


# -- the paths ---------------------------------------------------------------


class Path:
    """How each client reaches dockerd over one path."""

    def __init__(self, name, bench, port=None, pid_fn=None, tree=False):
        self.name = name
        self.bench = bench
        self.port = port  # None: the UNIX socket itself
        self.pid_fn = pid_fn
        # Count the serving process's children too (the agent's workers).
        self.tree = tree

    def pids(self) -> list[int]:
        return tree_pids(self.pid) if self.tree else [self.pid]

    def cpu_seconds(self) -> float:
        return sum(cpu_seconds(pid) for pid in self.pids())

    def rss_kib(self) -> int:
        return sum(rss_kib(pid) for pid in self.pids())

    @property
    def tls(self) -> bool:
        return self.port is not None

    @property
    def pid(self) -> int:
        return self.pid_fn()

    def load_target(self) -> str:
        if self.tls:
            return f"tls:127.0.0.1:{self.port}"
        return f"unix:{self.bench.dockerd.socket_path}"

    def curl(self, api_path: str, *options: str, max_time: float = 600) -> list[str]:
        argv = [
            "curl",
            "-sS",
            "--http1.1",
            "--max-time",
            str(int(max_time)),
            "-H",
            f"Authorization: {self.bench.authorization}",
            *options,
        ]
        if self.tls:
            argv += [
                "--cacert",
                self.bench.ca,
                f"https://127.0.0.1:{self.port}{api_path}",
            ]
        else:
            argv += [
                "--unix-socket",
                self.bench.dockerd.socket_path,
                f"http://docker{api_path}",
            ]
        return argv

    def docker(self) -> tuple[dict[str, str], list[str]]:
        """(env, argv prefix) of the docker CLI for this path."""
        env = clean_docker_env()
        argv = ["docker", "--config", self.bench.cli_config]
        if self.tls:
            env["DOCKER_CERT_PATH"] = self.bench.cli_cert_dir
            argv += [
                "-H",
                f"tcp://127.0.0.1:{self.port}",
                "--tlsverify",
                "--tlscacert",
                os.path.join(self.bench.cli_cert_dir, "ca.pem"),
            ]
        else:
            argv += ["-H", f"unix://{self.bench.dockerd.socket_path}"]
        return env, argv


class _RandomFile:
    """A file-like object of `size` random bytes (for the big image)."""

    def __init__(self, size: int) -> None:
        self.left = size

    def read(self, n: int = -1) -> bytes:
        if n < 0 or n > self.left:
            n = self.left
        n = min(n, 1 << 20)
        self.left -= n
        return os.urandom(n)


# -- the bench ---------------------------------------------------------------


class Bench:
    def __init__(self, opts: argparse.Namespace) -> None:
        self.opts = opts
        self.workdir = tempfile.mkdtemp(prefix="hvb-", dir="/tmp")
        self.dockerd: RealDockerd | None = None
        self.agent: AgentProcess | None = None
        self.agent_mp: AgentProcess | None = None
        self.haproxy: Haproxy | None = None
        self.stunnel: Stunnel | None = None
        self.paths: dict[str, Path] = {}
        self.pingload = os.path.join(self.workdir, "pingload")
        self.raw: dict[str, dict[str, list[dict]]] = {}
        self.meta: dict = {}

    # -- setup ---------------------------------------------------------------

    def build_pingload(self) -> None:
        build_pingload(self.pingload)

    def setup(self) -> None:
        o = self.opts
        log(f"work directory {self.workdir}")
        self.build_pingload()
        log("starting a private dockerd")
        self.dockerd = RealDockerd().start()
        log(
            f"dockerd {self.dockerd.server_version} (API {self.dockerd.api_version}) "
            f"on {self.dockerd.socket_path}"
        )
        self.make_big_image(o.image_mb)

        log("starting the agent (twistd haven-agent)")
        self.agent = AgentProcess(
            self.dockerd.socket_path, extra_args=tuple(o.agent_arg or ())
        )
        self.agent.start()
        if o.agent_workers > 1 and "agent-mp" in o.paths:
            log(f"starting the agent with --workers {o.agent_workers}")
            self.agent_mp = AgentProcess(
                self.dockerd.socket_path,
                password=self.agent.password,
                extra_args=(
                    *(o.agent_arg or ()),
                    "--workers",
                    str(o.agent_workers),
                ),
            )
            # The certificate every path serves, which the clients trust.
            self.agent_mp.ca_path = self.agent.ca_path
            self.agent_mp.cert_path = self.agent.cert_path
            self.agent_mp.key_path = self.agent.key_path
            self.start_agent_mp()
        self.ca = self.agent.ca_path
        self.authorization = self.agent.authorization()
        self.cli_cert_dir = self.agent.cli_cert_dir
        self.cli_config = os.path.join(self.workdir, "cli")
        os.mkdir(self.cli_config)
        with open(os.path.join(self.cli_config, "config.json"), "w") as f:
            json.dump({"HttpHeaders": {"Authorization": self.authorization}}, f)

        log("starting haproxy and stunnel4")
        self.haproxy = Haproxy(
            self.workdir,
            self.dockerd.socket_path,
            self.agent.cert_path,
            self.agent.key_path,
            self.ca,
            self.agent.user,
            self.agent.password,
            # two descriptors per proxied connection, within our open-file limit
            min(20000, (resource.getrlimit(resource.RLIMIT_NOFILE)[0] - 200) // 2),
        )
        self.haproxy.start()
        self.stunnel = Stunnel(
            self.workdir,
            self.dockerd.socket_path,
            self.agent.cert_path,
            self.agent.key_path,
            self.ca,
        )
        self.stunnel.start()

        all_paths = {
            "direct": Path("direct", self, None, self.dockerd_pid),
            "haproxy": Path(
                "haproxy", self, self.haproxy.port, lambda: self.haproxy.pid
            ),
            "stunnel": Path(
                "stunnel", self, self.stunnel.port, lambda: self.stunnel.pid
            ),
            "agent": Path(
                "agent", self, self.agent.port, lambda: self.agent.process.pid
            ),
        }
        if self.agent_mp is not None:
            all_paths["agent-mp"] = Path(
                "agent-mp",
                self,
                self.agent_mp.port,
                lambda: self.agent_mp.process.pid,
                tree=True,
            )
        self.paths = {n: all_paths[n] for n in PATHS if n in o.paths}
        self.preflight()

    def start_agent_mp(self) -> None:
        """Start the --workers agent and wait until every worker serves."""
        self.agent_mp.start()
        workers = self.opts.agent_workers - 1
        deadline = time.monotonic() + 60
        while self.agent_mp.logs().count("serving") < workers + 1:
            if time.monotonic() > deadline:
                raise BenchError(
                    f"the agent's {workers} workers did not start:\n"
                    f"{self.agent_mp.logs()[-3000:]}"
                )
            time.sleep(0.1)

    def dockerd_pid(self) -> int:
        with open(self.dockerd.pidfile) as f:
            return int(f.read().strip())

    def make_big_image(self, mb: int) -> None:
        self.big_image = f"hvbench-big:{mb}mb"
        rootfs = os.path.join(self.workdir, "big-rootfs.tar")
        started = time.monotonic()
        log(f"building the bulk image {self.big_image} ({mb} MB of random data)")
        with tarfile.open(rootfs, "w") as tar:
            info = tarfile.TarInfo("big.bin")
            info.size = mb * MB
            info.mode = 0o644
            info.mtime = int(time.time())
            tar.addfile(info, _RandomFile(info.size))
        self.dockerd.docker("import", rootfs, self.big_image, timeout=900)
        os.unlink(rootfs)
        self.big_tar = os.path.join(self.workdir, "big-image.tar")
        proc = subprocess.run(
            self.direct_curl_argv(
                f"/images/{self.big_image}/get",
                "-o",
                self.big_tar,
                "-w",
                "%{http_code}",
            ),
            capture_output=True,
            text=True,
            timeout=900,
            env=clean_docker_env(),
            check=False,
        )
        if proc.returncode != 0 or proc.stdout.strip() != "200":
            raise BenchError(
                f"saving {self.big_image} failed: {proc.stdout} {proc.stderr}"
            )
        self.big_tar_size = os.path.getsize(self.big_tar)
        log(
            f"bulk image ready: saved tar {self.big_tar_size / MB:.1f} MB "
            f"in {time.monotonic() - started:.1f} s"
        )

    def direct_curl_argv(self, api_path: str, *options: str) -> list[str]:
        return [
            "curl",
            "-sS",
            "--max-time",
            "900",
            *options,
            "--unix-socket",
            self.dockerd.socket_path,
            f"http://docker{api_path}",
        ]

    def preflight(self) -> None:
        """Each path answers /_ping and the docker CLI works through it."""
        for path in self.paths.values():
            res = self.run_pingload(
                path, conns=1, seconds=0.3, warmup=0, max_per_conn=3
            )
            if res["requests"] < 1 or res["errors"] or res["non_200"]:
                raise BenchError(f"{path.name}: GET /_ping fails: {res}")
            env, argv = path.docker()
            proc = subprocess.run(
                argv + ["version", "--format", "{{.Server.Version}}"],
                env=env,
                capture_output=True,
                text=True,
                timeout=60,
                check=False,
            )
            if proc.returncode != 0:
                raise BenchError(
                    f"{path.name}: docker version fails: {proc.stdout} {proc.stderr}"
                )
            self.meta.setdefault("tls", {})[path.name] = {
                k: res.get(k) for k in ("tls_version", "tls_cipher", "alpn")
            }
            log(
                f"  {path.name:8s} ok: dockerd {proc.stdout.strip()}"
                + (
                    f", {res['tls_version']} {res['tls_cipher']} "
                    f"alpn={res['alpn'] or '-'}"
                    if path.tls
                    else ", UNIX socket"
                )
            )

    def teardown(self) -> None:
        for what, fn in (
            ("stunnel", lambda: self.stunnel and self.stunnel.stop()),
            ("haproxy", lambda: self.haproxy and self.haproxy.stop()),
            ("agent", lambda: self.agent and self.agent.stop()),
            ("agent-mp", lambda: self.agent_mp and self.agent_mp.stop()),
            ("dockerd", lambda: self.dockerd and self.dockerd.stop()),
        ):
            try:
                fn()
            except Exception as e:  # best effort
                log(f"stopping {what} failed: {e!r}")
        if self.opts.keep:
            log(f"kept {self.workdir} (logs, configs)")
        else:
            if self.agent is not None:
                self.agent.cleanup()
            if self.agent_mp is not None:
                self.agent_mp.cleanup()
            shutil.rmtree(self.workdir, ignore_errors=True)

    # -- workloads -------------------------------------------------------------

    def run_pingload(
        self,
        path: Path,
        conns: int,
        seconds: float,
        warmup: float,
        new_conn: bool = False,
        max_per_conn: int = 0,
        resume: bool = False,
    ) -> dict:
        argv = [
            self.pingload,
            "-c",
            str(conns),
            "-d",
            str(seconds),
            "-w",
            str(warmup),
            "-H",
            f"Authorization: {self.authorization}",
            "-C",
            self.ca,
        ]
        if new_conn:
            argv.append("-N")
        if resume:
            argv.append("-R")
        if max_per_conn:
            argv += ["-n", str(max_per_conn)]
        argv.append(path.load_target())
        proc = subprocess.run(
            argv,
            capture_output=True,
            text=True,
            timeout=seconds + warmup + 60,
            check=False,
        )
        if proc.returncode != 0:
            raise BenchError(f"pingload failed: {proc.stderr.strip()}")
        return json.loads(proc.stdout)

    def w_ping(
        self, path: Path, conns: int, new_conn: bool = False, resume: bool = False
    ) -> dict:
        o = self.opts
        res = self.run_pingload(
            path, conns, o.ping_seconds, o.ping_warmup, new_conn, resume=resume
        )
        if resume:
            res["resumed_share"] = res["resumed_handshakes"] / max(
                1, res["all_requests"]
            )
        res["ok"] = res["requests"] > 0 and not res["errors"] and not res["non_200"]
        if not res["ok"]:
            res["error"] = (
                f"{res['errors']} errors, {res['non_200']} non-200 answers "
                f"of {res['requests']}: {res['first_error']}"
            )
        return res

    def w_wrk(self, path: Path, conns: int) -> dict:
        """wrk -t2 -cN --latency against a TLS path (wrk has no UNIX sockets)."""
        if not path.tls:
            return {
                "ok": False,
                "skipped": True,
                "error": "wrk cannot use a UNIX socket",
            }
        o = self.opts
        secs = max(1, round(o.ping_seconds))
        proc = subprocess.run(
            [
                "wrk",
                "-t2",
                f"-c{conns}",
                f"-d{secs}s",
                "--latency",
                "-H",
                f"Authorization: {self.authorization}",
                f"https://127.0.0.1:{path.port}/_ping",
            ],
            capture_output=True,
            text=True,
            timeout=secs + 60,
            check=False,
        )
        res: dict = {"ok": proc.returncode == 0}
        units = {"us": 1e-3, "ms": 1.0, "s": 1e3}
        for line in proc.stdout.splitlines():
            parts = line.split()
            if line.startswith("Requests/sec:"):
                res["rps"] = float(parts[1])
            elif len(parts) == 2 and parts[0] in ("50%", "99%"):
                num = parts[1].rstrip("umsa")
                unit = parts[1][len(num) :]
                res["p50_ms" if parts[0] == "50%" else "p99_ms"] = float(
                    num
                ) * units.get(unit, 1)
            elif "Non-2xx" in line or "Socket errors" in line:
                res["ok"] = False
                res["error"] = line.strip()
        if "rps" not in res:
            res.update(ok=False, error=(proc.stderr or proc.stdout).strip()[-300:])
        return res

    def w_download(self, path: Path) -> dict:
        argv = path.curl(
            f"/images/{self.big_image}/get",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code} %{size_download} %{time_total}",
        )
        proc = subprocess.run(
            argv,
            capture_output=True,
            text=True,
            timeout=900,
            env=clean_docker_env(),
            check=False,
        )
        parts = proc.stdout.split()
        if proc.returncode != 0 or len(parts) != 3:
            return {
                "ok": False,
                "error": f"curl {proc.returncode}: {proc.stderr.strip()}",
            }
        code, size, secs = int(parts[0]), int(parts[1]), float(parts[2])
        res = {"bytes": size, "seconds": secs, "mbps": size / MB / secs, "ok": True}
        if code != 200 or size != self.big_tar_size:
            res.update(
                ok=False,
                error=f"HTTP {code}, {size} bytes (expected {self.big_tar_size})",
            )
        return res

    def w_upload(self, path: Path) -> dict:
        body = os.path.join(self.workdir, f"load-{path.name}.out")
        argv = path.curl(
            "/images/load?quiet=1",
            "-X",
            "POST",
            "-T",
            self.big_tar,
            "-H",
            "Content-Type: application/x-tar",
            "-H",
            "Expect:",
            "-o",
            body,
            "-w",
            "%{http_code} %{size_upload} %{time_total}",
        )
        proc = subprocess.run(
            argv,
            capture_output=True,
            text=True,
            timeout=900,
            env=clean_docker_env(),
            check=False,
        )
        parts = proc.stdout.split()
        try:
            with open(body, "rb") as f:
                answer = f.read(4000)
            os.unlink(body)
        except OSError:
            answer = b""
        if proc.returncode != 0 or len(parts) != 3:
            return {
                "ok": False,
                "error": f"curl {proc.returncode}: {proc.stderr.strip()}",
            }
        code, size, secs = int(parts[0]), int(parts[1]), float(parts[2])
        res = {"bytes": size, "seconds": secs, "mbps": size / MB / secs, "ok": True}
        if code != 200 or size != self.big_tar_size or b'"error' in answer:
            res.update(
                ok=False,
                error=f"HTTP {code}, {size} bytes sent: {answer[:300]!r}",
            )
        return res

    def w_attach_out(self, path: Path) -> dict:
        n = self.opts.stream_mb * MB
        env, argv = path.docker()
        argv += [
            "run",
            "--rm",
            "--network",
            "none",
            self.dockerd.image,
            "sh",
            "-c",
            f"head -c {n} /dev/zero",
        ]
        started = time.monotonic()
        docker = subprocess.Popen(
            argv,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        wc = subprocess.Popen(["wc", "-c"], stdin=docker.stdout, stdout=subprocess.PIPE)
        docker.stdout.close()
        try:
            out, _ = wc.communicate(timeout=self.stream_timeout())
            err = docker.stderr.read()
            rc = docker.wait(timeout=60)
        except subprocess.TimeoutExpired:
            docker.kill()
            wc.kill()
            docker.wait()
            wc.wait()
            return {"ok": False, "error": "timed out"}
        finally:
            docker.stderr.close()
        secs = time.monotonic() - started
        got = int(out.split()[0]) if out.split() else -1
        res = {"bytes": got, "seconds": secs, "mbps": got / MB / secs, "ok": True}
        if rc != 0 or got != n:
            res.update(ok=False, error=f"exit {rc}, {got} of {n} bytes: {err[-300:]!r}")
        return res

    def w_attach_in(self, path: Path) -> dict:
        n = self.opts.stream_mb * MB
        env, argv = path.docker()
        argv += [
            "run",
            "-i",
            "--rm",
            "--network",
            "none",
            self.dockerd.image,
            "sh",
            "-c",
            "wc -c",
        ]
        started = time.monotonic()
        head = subprocess.Popen(
            ["head", "-c", str(n), "/dev/zero"], stdout=subprocess.PIPE
        )
        docker = subprocess.Popen(
            argv,
            env=env,
            stdin=head.stdout,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        head.stdout.close()
        try:
            out, err = docker.communicate(timeout=self.stream_timeout())
            head.wait(timeout=60)
        except subprocess.TimeoutExpired:
            docker.kill()
            head.kill()
            docker.wait()
            head.wait()
            return {"ok": False, "error": "timed out"}
        secs = time.monotonic() - started
        got = int(out.split()[0]) if out.split() else -1
        res = {"bytes": n, "seconds": secs, "mbps": n / MB / secs, "ok": True}
        if docker.returncode != 0 or got != n:
            res.update(
                ok=False,
                error=f"exit {docker.returncode}, container counted {got} of {n} "
                f"bytes: {err[-300:]!r}",
            )
        return res

    def stream_timeout(self) -> float:
        # Generous: 2 MB/s would still finish.
        return 120 + self.opts.stream_mb / 2

    def w_run(self, path: Path) -> dict:
        env, argv = path.docker()
        argv += ["run", "--rm", "--network", "none", self.dockerd.image, "echo", "ok"]
        started = time.monotonic()
        proc = subprocess.run(
            argv, env=env, capture_output=True, timeout=120, check=False
        )
        secs = time.monotonic() - started
        res = {"seconds": secs, "ok": proc.returncode == 0 and proc.stdout == b"ok\n"}
        if not res["ok"]:
            res["error"] = (
                f"exit {proc.returncode}: {proc.stdout!r} {proc.stderr[-300:]!r}"
            )
        return res

    def w_events(self, path: Path) -> dict:
        return asyncio.run(self._events(path))

    async def _events(self, path: Path) -> dict:
        n = self.opts.streams
        filters = json.dumps({"type": ["container"], "event": ["create"]})
        request = (
            f"GET /events?filters={urllib.parse.quote(filters)} HTTP/1.1\r\n"
            f"Host: docker\r\nAuthorization: {self.authorization}\r\n\r\n"
        ).encode()
        ctx = None
        if path.tls:
            ctx = ssl.create_default_context(cafile=self.ca)
            ctx.set_alpn_protocols(["http/1.1"])
        sem = asyncio.Semaphore(64)
        loop = asyncio.get_running_loop()

        async def open_one():
            async with sem:
                if path.tls:
                    r, w = await asyncio.wait_for(
                        asyncio.open_connection(
                            "127.0.0.1", path.port, ssl=ctx, server_hostname="127.0.0.1"
                        ),
                        30,
                    )
                else:
                    r, w = await asyncio.wait_for(
                        asyncio.open_unix_connection(self.dockerd.socket_path), 30
                    )
                try:
                    w.write(request)
                    await w.drain()
                    head = await asyncio.wait_for(r.readuntil(b"\r\n\r\n"), 30)
                except BaseException:
                    w.close()
                    raise
                if not head.startswith(b"HTTP/1.1 200"):
                    w.close()
                    raise BenchError(f"/events answered {head[:80]!r}")
                return r, w

        # Warm the (freshly restarted) proxy up with a few streams, so that its
        # baseline includes what any first connection allocates once.
        warm = await asyncio.gather(
            *(open_one() for _ in range(min(64, n))), return_exceptions=True
        )
        for o in warm:
            if not isinstance(o, BaseException):
                o[1].transport.abort()
        await asyncio.sleep(1.0)
        rss_before = path.rss_kib()
        cpu_before = path.cpu_seconds()
        t0 = time.monotonic()
        outcomes = await asyncio.gather(
            *(open_one() for _ in range(n)), return_exceptions=True
        )
        open_seconds = time.monotonic() - t0
        streams = [o for o in outcomes if not isinstance(o, BaseException)]
        failures = [o for o in outcomes if isinstance(o, BaseException)]
        await asyncio.sleep(1.5)
        rss_after = path.rss_kib()
        res = {
            "streams": n,
            "opened": len(streams),
            "open_seconds": open_seconds,
            "rss_before_kib": rss_before,
            "rss_after_kib": rss_after,
            # direct: dockerd's own growth (Go's GC makes it noisy; not tabled)
            ("dockerd_kib_per_stream" if path.name == "direct" else "kib_per_stream"): (
                rss_after - rss_before
            )
            / max(1, len(streams)),
            "cpu_open_seconds": path.cpu_seconds() - cpu_before,
        }
        received = 0
        try:
            t_event_wall = time.time()
            proc = await loop.run_in_executor(
                None,
                lambda: self.dockerd.docker(
                    "create", "--network", "none", self.dockerd.image, "true"
                ),
            )
            cid = proc.stdout.strip()
            t_event = time.monotonic()

            def event_time_ns(cid: bytes) -> int | None:
                """The create event's timeNano, as dockerd's /events gives it."""
                since = int(t_event_wall) - 60
                status, body = self.dockerd.api_request(
                    "GET",
                    f"/events?since={since}&until={int(time.time()) + 1}&filters="
                    + urllib.parse.quote(filters),
                )
                for line in body.splitlines():
                    event = json.loads(line)
                    if event.get("id", "").encode() == cid:
                        return int(event["timeNano"])
                return None

            async def wait_event(reader) -> tuple[float, int] | None:
                """(seconds after the create returned, wall-clock ns) on arrival."""
                seen = b""
                deadline = t_event + 30
                while True:
                    left = deadline - time.monotonic()
                    if left <= 0:
                        return None
                    try:
                        chunk = await asyncio.wait_for(reader.read(65536), left)
                    except TimeoutError:
                        return None
                    if not chunk:
                        return None
                    seen += chunk
                    if cid in seen:
                        return time.monotonic() - t_event, time.time_ns()

            arrivals = await asyncio.gather(*(wait_event(r) for r, _ in streams))
            got = [a for a in arrivals if a is not None]
            received = len(got)
            # dockerd stamps every event with its wall-clock time (timeNano)
            # before it writes it to any subscriber; the CLI returns only
            # after that, when a fast path has already delivered much of it.
            emitted = event_time_ns(cid)
            if got and emitted is not None:
                res["fanout_ms"] = (max(a[1] for a in got) - emitted) / 1e6
            res["after_create_ms"] = max(a[0] for a in got) * 1000 if got else None
            await loop.run_in_executor(
                None, lambda: self.dockerd.docker("rm", "-f", cid.decode(), check=False)
            )
        finally:
            # Abort rather than close: no TLS close_notify exchange for 2,000
            # streams, just the sockets closed (the proxies see a reset).
            for _, w in streams:
                w.transport.abort()
        res["received"] = received
        res["delivered"] = f"{received}/{n}"
        res["ok"] = len(streams) == n and received == n and "fanout_ms" in res
        if not res["ok"]:
            first = repr(failures[0]) if failures else ""
            res["error"] = (
                f"{len(streams)} of {n} streams opened, {received} got the event "
                f"{first}"
            )
        await asyncio.sleep(1.0)  # let the proxy tear the streams down
        return res

    def run_workload(self, name: str, path: Path) -> dict:
        o = self.opts
        fn = {
            "ping1": lambda p: self.w_ping(p, 1),
            "ping8": lambda p: self.w_ping(p, 8),
            "pingnew": lambda p: self.w_ping(p, o.newconn_clients, new_conn=True),
            "pingresume": lambda p: self.w_ping(
                p, o.newconn_clients, new_conn=True, resume=True
            ),
            "download": self.w_download,
            "upload": self.w_upload,
            "attach-out": self.w_attach_out,
            "attach-in": self.w_attach_in,
            "run": self.w_run,
            "events": self.w_events,
            "wrk8": lambda p: self.w_wrk(p, 8),
        }[name]
        if name == "events" and path.name != "direct":
            # Memory per stream is measured from a fresh process: one that
            # served 2,000 streams before keeps (and reuses) that memory.
            self.restart(path.name)
        cpu0 = path.cpu_seconds()
        started = time.monotonic()
        try:
            res = fn(path)
        except Exception as e:
            res = {"ok": False, "error": f"{type(e).__name__}: {e}"}
            if o.verbose:
                traceback.print_exc()
        res["wall_seconds"] = time.monotonic() - started
        try:
            cpu = res["server_cpu_seconds"] = path.cpu_seconds() - cpu0
        except OSError:
            cpu = None
        # The serving process's CPU per unit of work: less sensitive to other
        # load on the machine than rates are.  (direct: dockerd's own.)
        if cpu is not None and res.get("ok"):
            if res.get("all_requests"):
                res["server_cpu_us_per_request"] = cpu * 1e6 / res["all_requests"]
            elif res.get("bytes"):
                res["server_cpu_s_per_gb"] = cpu / (res["bytes"] / 1e9)
        # Is the proxy still alive?
        for what, proc in (
            ("agent", self.agent.process),
            ("agent-mp", self.agent_mp.process if self.agent_mp else None),
            ("haproxy", self.haproxy.process),
            ("stunnel", self.stunnel.process),
        ):
            if proc is not None and proc.poll() is not None:
                raise BenchError(f"{what} died (exit {proc.returncode}) during {name}")
        return res

    def restart(self, name: str) -> None:
        if name == "agent":
            self.agent.stop()
            self.agent.start()  # a new free port
            self.paths["agent"].port = self.agent.port
        elif name == "agent-mp":
            self.agent_mp.stop()
            self.start_agent_mp()
            self.paths["agent-mp"].port = self.agent_mp.port
        elif name == "haproxy":
            self.haproxy.stop()
            self.haproxy.start()
        elif name == "stunnel":
            self.stunnel.stop()
            self.stunnel.start()

    def run(self) -> None:
        o = self.opts
        names = list(self.paths)
        for wl in o.workloads:
            self.raw[wl] = {p: [] for p in names}
            for rep in range(o.reps):
                order = names[rep % len(names) :] + names[: rep % len(names)]
                for pname in order:
                    res = self.run_workload(wl, self.paths[pname])
                    res["rep"] = rep
                    self.raw[wl][pname].append(res)
                    log(
                        f"{wl:10s} rep {rep + 1}/{o.reps} {pname:8s} {summary(wl, res)}"
                    )


# -- results -----------------------------------------------------------------

#: (workload, metric, label, unit, higher is better)
#: Metrics of the serving process: for "direct" that is dockerd itself.
SERVER_METRICS = {"server_cpu_us_per_request", "server_cpu_s_per_gb", "kib_per_stream"}
CPU_REQ = ("server_cpu_us_per_request", "  server CPU per request", "us", False)
CPU_GB = ("server_cpu_s_per_gb", "  server CPU per GB", "s", False)
ROWS = (
    ("ping1", "rps", "GET /_ping, 1 keep-alive conn", "req/s", True),
    ("ping1", "p50_ms", "  p50 latency", "ms", False),
    ("ping1", "p99_ms", "  p99 latency", "ms", False),
    ("ping1", *CPU_REQ),
    ("ping8", "rps", "GET /_ping, 8 keep-alive conns", "req/s", True),
    ("ping8", "p50_ms", "  p50 latency", "ms", False),
    ("ping8", "p99_ms", "  p99 latency", "ms", False),
    ("ping8", *CPU_REQ),
    ("pingnew", "rps", "GET /_ping, new TLS conn per request", "req/s", True),
    ("pingnew", "p50_ms", "  p50 latency", "ms", False),
    ("pingnew", "p99_ms", "  p99 latency", "ms", False),
    ("pingnew", *CPU_REQ),
    ("pingresume", "rps", "GET /_ping, new TLS conn, session resumed", "req/s", True),
    ("pingresume", *CPU_REQ),
    ("pingresume", "resumed_share", "  handshakes resumed", "share", None),
    ("download", "mbps", "bulk download GET /images/get", "MB/s", True),
    ("download", *CPU_GB),
    ("upload", "mbps", "bulk upload POST /images/load", "MB/s", True),
    ("upload", *CPU_GB),
    ("attach-out", "mbps", "attach stdout (docker run)", "MB/s", True),
    ("attach-out", *CPU_GB),
    ("attach-in", "mbps", "attach stdin (docker run -i)", "MB/s", True),
    ("attach-in", *CPU_GB),
    ("run", "seconds", "docker run --rm IMG echo ok", "s", False),
    ("wrk8", "rps", "wrk (cross-check), 8 keep-alive conns", "req/s", True),
    ("wrk8", "p50_ms", "  p50 latency", "ms", False),
    ("wrk8", "p99_ms", "  p99 latency", "ms", False),
    ("events", "kib_per_stream", "idle /events: memory per stream", "KiB", False),
    ("events", "fanout_ms", "  one event to every stream", "ms", False),
    ("events", "after_create_ms", "    after `docker create` returned", "ms", False),
    ("events", "delivered", "  streams that got the event", "", None),
)


def summary(wl: str, res: dict) -> str:
    if res.get("skipped"):
        return f"skipped: {res.get('error')}"
    if not res.get("ok"):
        return f"FAILED: {res.get('error')}"
    if wl.startswith("ping") or wl.startswith("wrk"):
        resumed = (
            f"  {res['resumed_share']:.0%} resumed" if "resumed_share" in res else ""
        )
        return (
            f"{res['rps']:9.0f} req/s  p50 {res['p50_ms']:.3f} ms  "
            f"p99 {res['p99_ms']:.3f} ms{resumed}"
        )
    if "mbps" in res:
        return (
            f"{res['mbps']:8.1f} MB/s ({res['bytes'] / MB:.0f} MB in "
            f"{res['seconds']:.2f} s)"
        )
    if wl == "events":
        return (
            f"{res['opened']} open in {res['open_seconds']:.1f} s, "
            f"RSS {res['rss_before_kib']} -> {res['rss_after_kib']} KiB "
            f"({res.get('kib_per_stream', res.get('dockerd_kib_per_stream')):.1f} "
            "KiB/stream), event to "
            f"{res['delivered']} in {res.get('fanout_ms') or 0:.0f} ms "
            f"({res.get('after_create_ms') or 0:.0f} ms after the create returned)"
        )
    return f"{res['seconds']:.2f} s"


def medians(raw: dict) -> dict:
    out: dict = {}
    for wl, per_path in raw.items():
        out[wl] = {}
        for pname, reps in per_path.items():
            good = [r for r in reps if r.get("ok")]
            m: dict = {"reps": len(reps), "ok_reps": len(good)}
            if reps and all(r.get("skipped") for r in reps):
                m["skipped"] = True
            keys = {
                k for r in good for k, v in r.items() if isinstance(v, (int, float))
            }
            keys.discard("rep")
            keys.discard("ok")
            for k in sorted(keys):
                vals = [r[k] for r in good if isinstance(r.get(k), (int, float))]
                if vals and not isinstance(vals[0], bool):
                    m[k] = statistics.median(vals)
            if wl == "events" and reps:
                # the worst repetition's count
                worst = min(
                    reps, key=lambda r: (r.get("received", -1), -r.get("streams", 0))
                )
                m["delivered"] = worst.get("delivered", "failed")
            out[wl][pname] = m
    return out


def fmt(v, unit: str) -> str:
    if v is None:
        return "-"
    if isinstance(v, str):
        return v
    if unit in ("req/s",):
        return f"{v:.0f}"
    if unit in ("ms",):
        return f"{v:.3f}" if v < 10 else f"{v:.1f}"
    if unit in ("MB/s", "KiB", "us"):
        return f"{v:.1f}"
    return f"{v:.2f}"


def table(med: dict, paths: list[str]) -> tuple[list[dict], str]:
    rows = []
    for wl, metric, label, unit, higher in ROWS:
        if wl not in med:
            continue
        vals = {p: med[wl].get(p, {}).get(metric) for p in paths}
        failed = {
            p
            for p in paths
            if med[wl].get(p, {}).get("ok_reps", 0) == 0
            and not med[wl].get(p, {}).get("skipped")
        }
        row = {"workload": wl, "metric": metric, "label": label, "unit": unit}
        row["values"] = vals
        row["higher_is_better"] = higher
        best_peer = None
        ratios: dict[str, float | None] = {}
        if higher is not None:
            peers = {p: vals[p] for p in PEERS if isinstance(vals.get(p), (int, float))}
            if peers:
                best_peer = (max if higher else min)(peers, key=peers.get)
        for agent in AGENTS:
            key = agent.replace("-", "_")
            ratios[f"{key}_over_best_peer"] = ratios[f"{key}_over_direct"] = None
            a = vals.get(agent)
            if higher is None or not isinstance(a, (int, float)):
                continue
            if best_peer and peers[best_peer]:
                ratios[f"{key}_over_best_peer"] = a / peers[best_peer]
            d = vals.get("direct")
            # For server metrics direct's value is dockerd's own process.
            if isinstance(d, (int, float)) and d and metric not in SERVER_METRICS:
                ratios[f"{key}_over_direct"] = a / d
        row.update(best_peer=best_peer, **ratios)
        row["failed"] = sorted(failed)
        rows.append(row)

    agents = [a for a in AGENTS if a in paths]
    head = ["workload", "unit"] + paths
    head += [f"{a}/best-peer" for a in agents] + [f"{a}/direct" for a in agents]
    lines = []
    for r in rows:
        cells = [
            r["label"],
            r["unit"]
            + (
                ""
                if r["higher_is_better"] is None
                else (" ^" if r["higher_is_better"] else " v")
            ),
        ]
        for p in paths:
            c = fmt(r["values"].get(p), r["unit"])
            if p == "direct" and r["metric"] in SERVER_METRICS and c != "-":
                c = f"[{c}]"
            if p in r["failed"]:
                c = "FAIL"
            cells.append(c)
        for a in agents:
            rb = r[a.replace("-", "_") + "_over_best_peer"]
            cells.append(f"{rb:.2f} ({r['best_peer']})" if rb is not None else "-")
        for a in agents:
            rd = r[a.replace("-", "_") + "_over_direct"]
            cells.append(f"{rd:.2f}" if rd is not None else "-")
        lines.append(cells)
    widths = [max(len(str(x)) for x in col) for col in zip(head, *lines, strict=True)]
    out = []
    fmt_row = lambda cells: "  ".join(  # noqa: E731
        (c.ljust(w) if i == 0 else c.rjust(w))
        for i, (c, w) in enumerate(zip(cells, widths, strict=True))
    )
    out.append(fmt_row(head))
    out.append("  ".join("-" * w for w in widths))
    out.extend(fmt_row(c) for c in lines)
    return rows, "\n".join(out)


def git_commit() -> str:
    try:
        rev = subprocess.run(
            ["git", "-C", CHECKOUT_ROOT, "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", CHECKOUT_ROOT, "status", "--porcelain", "--", "haven_agent"],
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        ).stdout.strip()
        return rev + (" (haven_agent/ modified)" if dirty else "")
    except (OSError, subprocess.TimeoutExpired):
        return "?"


def machine_meta() -> dict:
    model = "?"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    try:
        import ssl

        import twisted

        py_tls = f"Twisted {twisted.__version__}, Python ssl, {ssl.OPENSSL_VERSION}"
    except Exception as e:  # pragma: no cover
        py_tls = f"? ({e})"
    return {
        "host": platform.node(),
        "cpus": os.cpu_count(),
        "cpu_model": model,
        "kernel": platform.release(),
        "python": platform.python_version(),
        "agent_stack": py_tls,
        "haproxy": first_line(["haproxy", "-v"]),
        "stunnel": first_line([shutil.which("stunnel4") or "stunnel", "-version"]),
        "curl": first_line(["curl", "--version"]),
        "docker_cli": first_line(["docker", "--version"]),
        "system_openssl": first_line(["openssl", "version"]),
        "checkout": git_commit(),
    }


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="bench/run",
        description="Benchmark dockerd's socket, haproxy, stunnel4 and the agent "
        "side by side (see bench/README.md).",
    )
    p.add_argument(
        "--quick",
        action="store_true",
        help="small sizes, 1 repetition: a smoke run of a few minutes",
    )
    p.add_argument("--reps", type=int, help="repetitions per workload and path")
    p.add_argument("--ping-seconds", type=float, help="measured seconds per /_ping run")
    p.add_argument("--ping-warmup", type=float, help="uncounted seconds before that")
    p.add_argument(
        "--newconn-clients",
        type=int,
        help="concurrent clients in the new-connection-per-request test",
    )
    p.add_argument("--image-mb", type=int, help="size of the bulk image's random layer")
    p.add_argument("--stream-mb", type=int, help="bytes through attach, each direction")
    p.add_argument("--streams", type=int, help="concurrent idle /events streams")
    p.add_argument(
        "--paths",
        default=",".join(PATHS),
        help=f"comma-separated subset of {','.join(PATHS)}",
    )
    p.add_argument(
        "--workloads",
        default=",".join(WORKLOADS),
        help=f"comma-separated, in this order, from {','.join(WORKLOADS)} "
        f"(the default) and {','.join(EXTRA_WORKLOADS)}",
    )
    p.add_argument(
        "--agent-arg",
        action="append",
        metavar="ARG",
        help="extra argument for twistd haven-agent (repeatable)",
    )
    p.add_argument(
        "--agent-workers",
        type=int,
        default=2,
        metavar="N",
        help="--workers of the agent-mp path, the agent in N processes "
        "(default 2; 1 leaves the path out)",
    )
    p.add_argument(
        "--out", help="JSON results file (default /tmp/haven-agent-bench/...)"
    )
    p.add_argument("--keep", action="store_true", help="keep the work directory (logs)")
    p.add_argument("-v", "--verbose", action="store_true")
    o = p.parse_args(argv)
    base = QUICK if o.quick else FULL
    for k, v in base.items():
        if getattr(o, k) is None:
            setattr(o, k, v)
    o.paths = [x for x in o.paths.split(",") if x]
    o.workloads = [x for x in o.workloads.split(",") if x]
    for x in o.paths:
        if x not in PATHS:
            p.error(f"unknown path {x}")
    for x in o.workloads:
        if x not in WORKLOADS + EXTRA_WORKLOADS:
            p.error(f"unknown workload {x}")
    if not 1 <= o.agent_workers <= 64:
        p.error("--agent-workers must be 1..64")
    if o.agent_workers == 1 and "agent-mp" in o.paths:
        o.paths.remove("agent-mp")
    if o.reps < 1 or o.reps > 20:
        p.error("--reps must be 1..20")
    if not (1 <= o.streams <= 20000):
        p.error("--streams must be 1..20000")
    if not (0 < o.ping_seconds <= 600):
        p.error("--ping-seconds must be in (0, 600]")
    if not (1 <= o.image_mb <= 4000 and 1 <= o.stream_mb <= 10000):
        p.error("--image-mb must be 1..4000 and --stream-mb 1..10000")
    return o


def main(argv: list[str]) -> int:
    o = parse_args(argv)
    if os.geteuid() != 0:
        print("bench: run as root (it starts a private dockerd)", file=sys.stderr)
        return 2
    fd_limit = raise_fd_limit(max(65536, 4 * o.streams + 1024))
    if fd_limit < 2 * o.streams + 256:
        print(
            f"bench: open-file limit {fd_limit} is too low for {o.streams} streams",
            file=sys.stderr,
        )
        return 2

    def on_term(signum, frame):
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, on_term)
    out_path = o.out or os.path.join(
        "/tmp/haven-agent-bench",
        "bench-"
        + datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
        + ("-quick" if o.quick else "")
        + ".json",
    )
    started = time.monotonic()
    meta = machine_meta()
    meta["loadavg_start"] = loadavg()
    meta["started"] = datetime.datetime.now().isoformat(timespec="seconds")
    meta["command"] = "bash bench/run " + " ".join(argv)
    meta["fd_limit"] = fd_limit
    log(
        f"{meta['cpus']} CPUs ({meta['cpu_model']}), load {meta['loadavg_start']}, "
        f"checkout {meta['checkout']}"
    )
    bench = Bench(o)
    status = 0
    try:
        bench.setup()
        meta["dockerd"] = (
            f"{bench.dockerd.server_version} (API {bench.dockerd.api_version})"
        )
        bench.run()
    except KeyboardInterrupt as e:
        log(f"interrupted ({e}); stopping")
        status = 130
    except (BenchError, DockerdUnavailable, AgentStartError) as e:
        log(f"bench failed: {e}")
        if bench.agent is not None and not o.keep:
            print(bench.agent.logs()[-4000:], file=sys.stderr)
        status = 1
    finally:
        meta.update(bench.meta)
        bench.teardown()
    meta["loadavg_end"] = loadavg()
    meta["total_seconds"] = round(time.monotonic() - started, 1)
    if not bench.raw:
        return status or 1

    paths = list(bench.paths)
    med = medians(bench.raw)
    rows, text = table(med, paths)
    config = {
        k: getattr(o, k)
        for k in (
            "quick",
            "reps",
            "ping_seconds",
            "ping_warmup",
            "newconn_clients",
            "image_mb",
            "stream_mb",
            "streams",
            "paths",
            "workloads",
            "agent_arg",
        )
    }
    os.makedirs(os.path.dirname(os.path.abspath(out_path)), exist_ok=True)
    with open(out_path, "w") as f:
        json.dump(
            {
                "meta": meta,
                "config": config,
                "raw": bench.raw,
                "medians": med,
                "table": rows,
                "table_text": text,
            },
            f,
            indent=1,
        )
    print()
    print(
        f"Medians of {o.reps} interleaved repetition(s); ^ higher is better, v lower "
        "is better; ratios are agent/peer values;\n[...] in the direct column: "
        "dockerd's own CPU or memory (the proxies' rows count the proxy process only)."
    )
    print(text)
    failures = [
        (wl, p, r.get("rep"), r.get("error"))
        for wl, per in bench.raw.items()
        for p, reps in per.items()
        for r in reps
        if not r.get("ok") and not r.get("skipped")
    ]
    if failures:
        print("\nFailures:")
        for wl, p, rep, err in failures:
            print(f"  {wl} {p} rep {rep}: {err}")
        status = status or 1
    print(
        f"\nload average {meta['loadavg_start']} -> {meta['loadavg_end']}; "
        f"total {meta['total_seconds']:.0f} s"
    )
    print(f"results: {out_path}")
    return status


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
