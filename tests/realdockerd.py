"""A private, real dockerd for end-to-end tests.

`shared_dockerd()` starts one dockerd per test run (lazily, on first use) with
its own socket, data root and exec root under a short temporary directory in
/tmp, and imports a tiny locally made busybox image (`hvtest/busybox:1`): no
registry is reachable on the test machines, so nothing is ever pulled.  The
daemon is stopped by an `atexit` hook (or explicitly with `stop()` /
`stop_shared_dockerd()`).

If the machine cannot run a daemon (not root, dockerd or the docker CLI or
busybox-static missing, the daemon does not come up or cannot run a
container) `DockerdUnavailable` is raised with a message naming the missing
capability; tests turn exactly that into `unittest.SkipTest`.

This module only uses the standard library and the docker CLI, and never
talks to the agent.
"""

from __future__ import annotations

import atexit
import http.client
import json
import os
import shutil
import signal
import socket
import struct
import subprocess
import tarfile
import tempfile
import threading
import time
import unittest
from collections.abc import Callable
from typing import TypeVar

__all__ = [
    "output_tail",
    "BUSYBOX_APPLETS",
    "IMAGE",
    "DockerdUnavailable",
    "RealDockerd",
    "clean_docker_env",
    "shared_dockerd",
    "stop_shared_dockerd",
]

#: The image every end-to-end test uses; made locally by `docker import`.
IMAGE = "hvtest/busybox:1"

#: Applets linked to /bin/busybox inside the image.
BUSYBOX_APPLETS = (
    "sh cat echo sleep head ls sha256sum wc tr true seq dd md5sum"
).split()

BUSYBOX_PATH = "/bin/busybox"
START_TIMEOUT = 60.0
STOP_TIMEOUT = 30.0
COMMAND_TIMEOUT = 120.0

#: Environment variables that would redirect or reconfigure a docker CLI or
#: a TLS client behind our back (pitfall 4: the CA bundle variables are set on
#: the test machines and beat an explicit CA in requests).
_DOCKER_ENV_VARS = (
    "DOCKER_HOST",
    "DOCKER_CONTEXT",
    "DOCKER_CONFIG",
    "DOCKER_TLS",
    "DOCKER_TLS_VERIFY",
    "DOCKER_CERT_PATH",
    "DOCKER_API_VERSION",
    "DOCKER_DEFAULT_PLATFORM",
)
_CA_ENV_VARS = ("REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE", "SSL_CERT_FILE")


T = TypeVar("T")


class DockerdUnavailable(Exception):
    """This machine cannot run the private dockerd; the message says why."""


def output_tail(text: bytes | str, n: int = 3000) -> str:
    """
    The last C{n} characters of a command's output, for a failure message
    that shows what went wrong without pages of build or daemon log.
    """
    if isinstance(text, bytes):
        text = text.decode(errors="replace")
    return text if len(text) <= n else "..." + text[-n:]


def clean_docker_env(base: dict[str, str] | None = None) -> dict[str, str]:
    """A copy of the environment without docker/CA-bundle overrides."""
    env = dict(os.environ if base is None else base)
    for name in _DOCKER_ENV_VARS + _CA_ENV_VARS:
        env.pop(name, None)
    return env


def _is_static_elf(path: str) -> bool:
    """True if `path` is an ELF executable without a PT_INTERP segment."""
    with open(path, "rb") as f:
        ident = f.read(16)
        if len(ident) < 16 or ident[:4] != b"\x7fELF":
            return False
        is64 = ident[4] == 2
        end = "<" if ident[5] == 1 else ">"
        if is64:
            f.seek(0x20)
            (phoff,) = struct.unpack(end + "Q", f.read(8))
            f.seek(0x36)
            phentsize, phnum = struct.unpack(end + "HH", f.read(4))
        else:
            f.seek(0x1C)
            (phoff,) = struct.unpack(end + "I", f.read(4))
            f.seek(0x2A)
            phentsize, phnum = struct.unpack(end + "HH", f.read(4))
        for i in range(phnum):
            f.seek(phoff + i * phentsize)
            (p_type,) = struct.unpack(end + "I", f.read(4))
            if p_type == 3:  # PT_INTERP: needs a dynamic loader
                return False
        return True


class UnixHTTPConnection(http.client.HTTPConnection):
    def __init__(self, path: str, timeout: float = 10.0):
        super().__init__("localhost", timeout=timeout)
        self._unix_path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        sock.connect(self._unix_path)
        self.sock = sock


class RealDockerd:
    """One private dockerd process; see the module docstring."""

    def __init__(self) -> None:
        self.tmpdir: str | None = None
        self.socket_path: str | None = None
        self.log_path: str | None = None
        self.pidfile: str | None = None
        self.config_dir: str | None = None
        self.process: subprocess.Popen | None = None
        self.api_version: str | None = None
        self.server_version: str | None = None
        #: Measured timings (seconds), for reports.
        self.start_seconds: float | None = None
        self.import_seconds: float | None = None
        self._log_file = None

    # -- properties -------------------------------------------------------

    @property
    def host(self) -> str:
        """The `-H` value for a docker CLI talking to this daemon directly."""
        return f"unix://{self.socket_path}"

    @property
    def image(self) -> str:
        return IMAGE

    # -- start / stop -----------------------------------------------------

    @staticmethod
    def check_capabilities() -> str:
        """Return the dockerd path or raise DockerdUnavailable."""
        if os.name != "posix" or not hasattr(os, "geteuid"):
            raise DockerdUnavailable("a real dockerd needs Linux (this is not POSIX)")
        dockerd = shutil.which("dockerd") or (
            "/usr/sbin/dockerd" if os.access("/usr/sbin/dockerd", os.X_OK) else None
        )
        if dockerd is None:
            raise DockerdUnavailable(
                "dockerd binary not found; apt-get install docker.io"
            )
        if os.geteuid() != 0:
            raise DockerdUnavailable(
                f"dockerd must run as root (running as uid {os.geteuid()})"
            )
        if shutil.which("docker") is None:
            raise DockerdUnavailable(
                "docker CLI not found on PATH; apt-get install docker.io"
            )
        if not os.path.isfile(BUSYBOX_PATH):
            raise DockerdUnavailable(
                f"{BUSYBOX_PATH} not found (needed for the test image); "
                "apt-get install busybox-static"
            )
        if not _is_static_elf(BUSYBOX_PATH):
            raise DockerdUnavailable(
                f"{BUSYBOX_PATH} is not a static executable (needed for the test "
                "image); apt-get install busybox-static"
            )
        return dockerd

    def dockerd_argv(self, dockerd: str) -> list[str]:
        """
        The private daemon's command line: its own socket, roots and pidfile,
        no iptables and no bridge, so nothing collides with another dockerd.
        """
        return [
            dockerd,
            "-H",
            self.host,
            "--data-root",
            os.path.join(self.tmpdir, "data"),
            "--exec-root",
            os.path.join(self.tmpdir, "exec"),
            "--pidfile",
            self.pidfile,
            "--iptables=false",
            "--bridge=none",
        ]

    def start(self) -> RealDockerd:
        dockerd = self.check_capabilities()
        self.tmpdir = tempfile.mkdtemp(prefix="hvd-", dir="/tmp")
        self.socket_path = os.path.join(self.tmpdir, "d.sock")
        self.log_path = os.path.join(self.tmpdir, "dockerd.log")
        self.pidfile = os.path.join(self.tmpdir, "d.pid")
        self.config_dir = os.path.join(self.tmpdir, "cli")
        os.mkdir(self.config_dir)
        with open(os.path.join(self.config_dir, "config.json"), "w") as f:
            f.write("{}\n")
        argv = self.dockerd_argv(dockerd)
        self._log_file = open(self.log_path, "ab")
        started = time.monotonic()
        try:
            self.process = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=self._log_file,
                stderr=subprocess.STDOUT,
                env=clean_docker_env(),
                start_new_session=True,
            )
        except OSError as e:
            self._fail_start(f"cannot execute {dockerd}: {e}")
        try:
            self._wait_ready(started)
            self.start_seconds = time.monotonic() - started
            info = json.loads(self.api_request("GET", "/version")[1])
            self.api_version = info.get("ApiVersion")
            self.server_version = info.get("Version")
            self._import_image()
            self._smoke_test()
        except DockerdUnavailable:
            raise
        except Exception as e:  # pragma: no cover - unexpected harness failure
            self._fail_start(f"dockerd harness error: {e!r}")
        return self

    #: What the start-up messages call the daemon.
    daemon_name = "dockerd"

    def _serving(self) -> str | None:
        """None once the daemon answers `GET /_ping` as it should, else
        what it did instead."""
        status, body = self.api_request("GET", "/_ping", timeout=2.0)
        if status == 200 and body == b"OK":
            return None
        return f"/_ping answered {status} {body[:100]!r}"

    def _wait_ready(self, started: float) -> None:
        deadline = started + START_TIMEOUT
        last_error = "no answer yet"
        while time.monotonic() < deadline:
            rc = self.process.poll()
            if rc is not None:
                self._fail_start(
                    f"{self.daemon_name} exited with status {rc} while starting"
                )
            if os.path.exists(self.socket_path):
                try:
                    problem = self._serving()
                except OSError as e:
                    problem = f"/_ping failed: {e}"
                if problem is None:
                    return
                last_error = problem
            time.sleep(0.1)
        self._fail_start(
            f"{self.daemon_name} did not answer GET /_ping within "
            f"{START_TIMEOUT:.0f} s ({last_error})"
        )

    def _import_image(self) -> None:
        root = os.path.join(self.tmpdir, "image-root")
        os.makedirs(os.path.join(root, "bin"))
        shutil.copy2(BUSYBOX_PATH, os.path.join(root, "bin", "busybox"))
        for applet in BUSYBOX_APPLETS:
            os.symlink("busybox", os.path.join(root, "bin", applet))
        os.makedirs(os.path.join(root, "tmp"))
        tar_path = os.path.join(self.tmpdir, "image.tar")
        with tarfile.open(tar_path, "w") as tar:
            tar.add(root, arcname=".")
        shutil.rmtree(root)
        started = time.monotonic()
        with open(tar_path, "rb") as f:
            proc = self.docker(
                "import", "--change", 'CMD ["sh"]', "-", IMAGE, stdin=f, check=False
            )
        self.import_seconds = time.monotonic() - started
        os.unlink(tar_path)
        if proc.returncode != 0:
            self._fail_start(
                f"docker import of {IMAGE} failed (status {proc.returncode}): "
                f"{proc.stderr.decode(errors='replace').strip()}"
            )

    def _smoke_test(self) -> None:
        proc = self.docker(
            "run", "--rm", "--network", "none", IMAGE, "echo", "ok", check=False
        )
        if proc.returncode != 0 or proc.stdout != b"ok\n":
            self._fail_start(
                "dockerd started but cannot run a container "
                f"(status {proc.returncode}, stdout {proc.stdout!r}): "
                f"{proc.stderr.decode(errors='replace').strip()}"
            )

    def _log_tail(self, lines: int = 30) -> str:
        try:
            with open(self.log_path, "rb") as f:
                data = f.read().decode(errors="replace").splitlines()
        except (OSError, TypeError):
            return "(no dockerd log)"
        return "\n".join(data[-lines:])

    def _fail_start(self, reason: str):
        tail = self._log_tail()
        self.stop(keep_log=True)
        raise DockerdUnavailable(
            f"{reason}; dockerd log kept at {self.log_path}; last lines:\n{tail}"
        )

    def _daemon_pid(self) -> int | None:
        try:
            with open(self.pidfile) as f:
                return int(f.read().strip())
        except (OSError, ValueError, TypeError):
            return None

    def stop(self, keep_log: bool = False) -> None:
        """Stop the daemon (SIGTERM by pidfile), then remove its directory.

        Best effort; safe to call more than once.  With `keep_log` the log
        file stays (for start failures) and everything else is removed.
        """
        if self.tmpdir is None:
            return
        proc = self.process
        if proc is not None and proc.poll() is None:
            # Containers still running would make dockerd wait up to 15 s
            # each on shutdown; remove them first (best effort).
            try:
                ids = self.docker("ps", "-aq", check=False, timeout=20).stdout.split()
                if ids:
                    self.docker(
                        "rm", "-f", *[i.decode() for i in ids], check=False, timeout=60
                    )
            except Exception:
                pass
        pid = self._daemon_pid()
        if pid is None and proc is not None:
            pid = proc.pid
        if pid is not None:
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        if proc is not None:
            try:
                proc.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                try:
                    os.killpg(proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                try:
                    proc.wait(10)
                except subprocess.TimeoutExpired:
                    pass
        elif pid is not None:
            deadline = time.monotonic() + STOP_TIMEOUT
            while time.monotonic() < deadline:
                try:
                    os.kill(pid, 0)
                except ProcessLookupError:
                    break
                time.sleep(0.1)
        self.process = None
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None
        self._unmount_leftovers()
        if keep_log:
            for name in os.listdir(self.tmpdir):
                path = os.path.join(self.tmpdir, name)
                if path == self.log_path:
                    continue
                if os.path.isdir(path) and not os.path.islink(path):
                    shutil.rmtree(path, ignore_errors=True)
                else:
                    try:
                        os.unlink(path)
                    except OSError:
                        pass
        else:
            shutil.rmtree(self.tmpdir, ignore_errors=True)
        self.tmpdir = None

    def _unmount_leftovers(self) -> None:
        prefix = self.tmpdir.rstrip("/") + "/"
        try:
            with open("/proc/self/mountinfo") as f:
                points = [line.split()[4] for line in f]
        except OSError:
            return
        points = [p.replace("\\040", " ") for p in points if p.startswith(prefix)]
        for point in sorted(points, key=len, reverse=True):
            subprocess.run(
                ["umount", "-l", point],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                check=False,
                timeout=30,
            )

    # -- talking to the daemon directly ----------------------------------

    def cli_args(self) -> list[str]:
        """Arguments (after `docker`) for the CLI to talk to the socket."""
        return ["--config", self.config_dir, "-H", self.host]

    def cli_env(self, **extra: str) -> dict[str, str]:
        env = clean_docker_env()
        env.update(extra)
        return env

    def docker(
        self,
        *args: str,
        input: bytes | None = None,
        stdin=None,
        check: bool = True,
        timeout: float = COMMAND_TIMEOUT,
        env: dict[str, str] | None = None,
    ) -> subprocess.CompletedProcess:
        """Run the docker CLI directly against this daemon's socket."""
        argv = ["docker", *self.cli_args(), *args]
        kwargs = {}
        if input is not None:
            kwargs["input"] = input
        else:
            kwargs["stdin"] = stdin if stdin is not None else subprocess.DEVNULL
        proc = subprocess.run(
            argv,
            capture_output=True,
            env=env if env is not None else self.cli_env(),
            timeout=timeout,
            check=False,
            **kwargs,
        )
        if check and proc.returncode != 0:
            raise AssertionError(
                f"direct {' '.join(argv)} failed with status {proc.returncode}:\n"
                f"stdout: {proc.stdout[-2000:]!r}\nstderr: {proc.stderr[-2000:]!r}"
            )
        return proc

    def api_request(
        self,
        method: str,
        path: str,
        body: bytes | None = None,
        timeout: float = 30.0,
        headers: dict[str, str] | None = None,
    ) -> tuple[int, bytes]:
        """One HTTP request over the UNIX socket; returns (status, body)."""
        conn = UnixHTTPConnection(self.socket_path, timeout=timeout)
        try:
            conn.request(method, path, body=body, headers=headers or {})
            resp = conn.getresponse()
            return resp.status, resp.read()
        finally:
            conn.close()


_shared: RealDockerd | None = None
_shared_error: DockerdUnavailable | None = None
_shared_lock = threading.Lock()
_atexit_registered = False


def require(start: Callable[[], T]) -> T:
    """
    C{start()}, whose L{DockerdUnavailable} is a skip naming what is
    missing, or a failure when HAVEN_AGENT_REQUIRE_DOCKERD says the machine
    must run dockerd (as in .ci/run).
    """
    try:
        return start()
    except DockerdUnavailable as e:
        if os.environ.get("HAVEN_AGENT_REQUIRE_DOCKERD"):
            raise AssertionError(f"a real dockerd is required here: {e}") from None
        raise unittest.SkipTest(str(e)) from None


def shared_dockerd() -> RealDockerd:
    """The per-test-run dockerd, started on first call.

    Raises DockerdUnavailable (again on every call) if it cannot start.
    """
    global _shared, _shared_error, _atexit_registered
    with _shared_lock:
        if _shared is not None:
            return _shared
        if _shared_error is not None:
            raise DockerdUnavailable(str(_shared_error))
        if not _atexit_registered:
            atexit.register(stop_shared_dockerd)
            _atexit_registered = True
        daemon = RealDockerd()
        try:
            daemon.start()
        except DockerdUnavailable as e:
            _shared_error = e
            raise
        _shared = daemon
        return daemon


def stop_shared_dockerd() -> None:
    """Stop the shared daemon if it was started (also run at exit)."""
    global _shared
    with _shared_lock:
        daemon, _shared = _shared, None
    if daemon is not None:
        daemon.stop()
