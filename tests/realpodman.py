"""A private, real podman service (its Docker-compatible API) for end-to-end tests.

`shared_podman()` starts one `podman system service --time=0` per test run
(lazily, on first use) on a short socket path under its own temporary
directory in /tmp, with everything podman keeps there too: storage
(`--root`, `--runroot`), its temporary and lock files, the event log and the
network configuration, set by a private containers.conf, storage.conf and
registries.conf (`CONTAINERS_CONF`, `CONTAINERS_STORAGE_CONF`,
`CONTAINERS_REGISTRIES_CONF`).  The containers.conf picks runc and default
ulimits of 1024 open files and processes: on these machines crun (podman's
first choice) fails to set `RLIMIT_NOFILE`, and cgroups are in hybrid mode.
The test image (`hvtest/busybox:1`, which podman lists as
`localhost/hvtest/busybox:1`) is made from busybox-static and loaded with
`podman import`: no registry is reachable, nothing is pulled.

`RealPodman` is a `tests.realdockerd.RealDockerd` with another daemon: the
direct clients (`docker()`, `api_request()`, `cli_args()`) are inherited and
talk to podman's socket.

What podman makes outside its directory is undone by `stop()` when this run
made it: a `cni-podman0` bridge, `CNI-*` iptables chains (`CNI-FORWARD`,
`CNI-ADMIN`) and the rules jumping to them, `/var/lib/cni`, `/run/netns`,
`/run/runc`.  With `--network none` containers (all the tests use) none of
them should appear.  Leftover podman processes (the conmon of each exec
session lingers for minutes) are found by their command line or root
naming the private directory and killed by pid.

If the machine cannot run podman, `PodmanUnavailable` (a
`DockerdUnavailable`) is raised with a message naming what is missing;
tests turn it into a skip, or a failure when HAVEN_AGENT_REQUIRE_DOCKERD is
set.
"""

from __future__ import annotations

import atexit
import io
import json
import os
import shlex
import shutil
import signal
import subprocess
import tarfile
import tempfile
import threading
import time

from tests.realdockerd import (
    BUSYBOX_APPLETS,
    BUSYBOX_PATH,
    IMAGE,
    DockerdUnavailable,
    RealDockerd,
    UnixHTTPConnection,
    _is_static_elf,
    clean_docker_env,
)

__all__ = [
    "IMAGE",
    "PODMAN_IMAGE",
    "PodmanUnavailable",
    "RealPodman",
    "shared_podman",
    "stop_shared_podman",
]

#: How podman names the imported test image in its lists.
PODMAN_IMAGE = "localhost/" + IMAGE

START_TIMEOUT = 60.0
COMMAND_TIMEOUT = 120.0

#: The ulimits the private containers.conf gives every container.
ULIMIT = 1024

#: Environment variables that would point podman at other configuration or
#: make it a remote client of another service.
_PODMAN_ENV_VARS = (
    "CONTAINER_HOST",
    "CONTAINER_CONNECTION",
    "CONTAINER_SSHKEY",
    "CONTAINERS_CONF",
    "CONTAINERS_CONF_OVERRIDE",
    "CONTAINERS_STORAGE_CONF",
    "CONTAINERS_REGISTRIES_CONF",
    "REGISTRIES_CONFIG_PATH",
)

#: The bridge podman's default CNI network uses.
CNI_BRIDGE = "cni-podman0"

#: Host directories podman or runc create on first use.
_HOST_DIRECTORIES = ("/var/lib/cni", "/run/netns", "/run/runc")

_IPTABLES_TABLES = ("filter", "nat")


class PodmanUnavailable(DockerdUnavailable):
    """This machine cannot run the private podman service; the message says why."""


def _containers_conf(tmpdir: str) -> str:
    limits = ", ".join(f'"{name}={ULIMIT}:{ULIMIT}"' for name in ("nofile", "nproc"))
    return f"""\
# The private podman service of haven-agent's end-to-end tests.
[containers]
default_ulimits = [{limits}]

[network]
network_backend = "cni"
network_config_dir = "{tmpdir}/networks"

[engine]
runtime = "runc"
cgroup_manager = "cgroupfs"
events_logger = "file"
events_logfile_path = "{tmpdir}/tmp/events.log"
tmp_dir = "{tmpdir}/tmp"
image_copy_tmp_dir = "{tmpdir}/tmp"
lock_type = "file"
"""


def _storage_conf(tmpdir: str) -> str:
    return f"""\
[storage]
driver = "overlay"
graphroot = "{tmpdir}/root"
runroot = "{tmpdir}/runroot"
"""


# Nothing can be pulled here: no search registries, so a missing image fails
# at once instead of trying docker.io.
_REGISTRIES_CONF = 'unqualified-search-registries = []\nshort-name-mode = "disabled"\n'


def busybox_tar() -> bytes:
    """A root file system of static busybox and its applets, as a tar."""
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w") as tar:
        for name, mode in (("bin", 0o755), ("tmp", 0o1777)):
            entry = tarfile.TarInfo(name)
            entry.type, entry.mode, entry.mtime = tarfile.DIRTYPE, mode, time.time()
            tar.addfile(entry)
        tar.add(BUSYBOX_PATH, arcname="bin/busybox")
        for applet in BUSYBOX_APPLETS:
            link = tarfile.TarInfo(f"bin/{applet}")
            link.type, link.linkname, link.mode = tarfile.SYMTYPE, "busybox", 0o777
            tar.addfile(link)
    return out.getvalue()


def _run_quietly(argv: list[str]) -> subprocess.CompletedProcess | None:
    """Run a host tool (iptables, ip, umount); None if it cannot run."""
    try:
        return subprocess.run(
            argv, capture_output=True, text=True, timeout=30, check=False
        )
    except (OSError, subprocess.TimeoutExpired):
        return None


def _is_mount_point(path: str) -> bool:
    try:
        with open("/proc/self/mountinfo") as f:
            return any(line.split()[4] == path for line in f)
    except OSError:
        return False


class HostChanges:
    """What podman's networking may add to the host, noted before it starts.

    `undo()` removes what exists then but did not before: the bridge, new
    `CNI-*` iptables chains (after deleting the rules that jump to them) and
    the host directories podman or runc create.
    """

    def __init__(self) -> None:
        self.bridge = os.path.exists(f"/sys/class/net/{CNI_BRIDGE}")
        self.directories = {p for p in _HOST_DIRECTORIES if os.path.lexists(p)}
        self.chains = {
            (tool, table): self._chains(tool, table)
            for tool in ("iptables", "ip6tables")
            if shutil.which(tool)
            for table in _IPTABLES_TABLES
        }

    @staticmethod
    def _rules(tool: str, table: str) -> list[str]:
        proc = _run_quietly([tool, "-w", "-t", table, "-S"])
        if proc is None or proc.returncode != 0:
            return []
        return proc.stdout.splitlines()

    def _chains(self, tool: str, table: str) -> set[str]:
        return {
            line.split()[1]
            for line in self._rules(tool, table)
            if line.startswith("-N ")
        }

    def undo(self) -> list[str]:
        """Remove what podman added; returns what was removed, for logs."""
        removed = []
        for (tool, table), before in self.chains.items():
            new = {
                c for c in self._chains(tool, table) - before if c.startswith("CNI-")
            }
            if not new:
                continue
            for line in self._rules(tool, table):
                words = shlex.split(line)
                if words[:1] == ["-A"] and "-j" in words:
                    if words[words.index("-j") + 1] in new:
                        _run_quietly([tool, "-w", "-t", table, "-D", *words[1:]])
            for verb in ("-F", "-X"):
                for chain in sorted(new):
                    _run_quietly([tool, "-w", "-t", table, verb, chain])
            removed += [f"{tool} -t {table} chain {chain}" for chain in sorted(new)]
        if not self.bridge and os.path.exists(f"/sys/class/net/{CNI_BRIDGE}"):
            _run_quietly(["ip", "link", "delete", CNI_BRIDGE])
            removed.append(f"bridge {CNI_BRIDGE}")
        for path in _HOST_DIRECTORIES:
            if path in self.directories or not os.path.lexists(path):
                continue
            if _is_mount_point(path):  # /run/netns is bound onto itself
                _run_quietly(["umount", "-l", path])
            if path == "/var/lib/cni":
                # IPAM leases and cached results of this run's containers.
                shutil.rmtree(path, ignore_errors=True)
            else:
                # State of containers still running elsewhere stays.
                try:
                    os.rmdir(path)
                except OSError:
                    continue
            removed.append(path)
        return removed


class RealPodman(RealDockerd):
    """One private `podman system service`; see the module docstring."""

    def __init__(self) -> None:
        super().__init__()
        self.podman_path: str | None = None
        #: `Libpod-Api-Version` of `GET /_ping`, which proves it is podman.
        self.libpod_version: str | None = None
        #: What `stop()` removed from the host besides its own directory.
        self.host_cleanup: list[str] = []
        self._host_changes: HostChanges | None = None

    # -- start / stop -----------------------------------------------------

    @staticmethod
    def check_capabilities() -> str:
        """Return the podman path or raise PodmanUnavailable."""
        if os.name != "posix" or not hasattr(os, "geteuid"):
            raise PodmanUnavailable("a real podman needs Linux (this is not POSIX)")
        if os.geteuid() != 0:
            raise PodmanUnavailable(
                f"the podman service must run as root (running as uid {os.geteuid()})"
            )
        needed = {  # program: Debian package
            "podman": "podman",
            "runc": "runc",
            "conmon": "conmon",
            "docker": "docker.io",
        }
        found = {}
        for program, package in needed.items():
            found[program] = shutil.which(program) or shutil.which(
                program, path="/usr/sbin:/usr/bin:/sbin:/bin:/usr/libexec/podman"
            )
            if found[program] is None:
                raise PodmanUnavailable(
                    f"{program} not found; apt-get install {package}"
                )
        if not os.path.isfile(BUSYBOX_PATH) or not _is_static_elf(BUSYBOX_PATH):
            raise PodmanUnavailable(
                f"{BUSYBOX_PATH} missing or not a static executable (needed for the "
                "test image); apt-get install busybox-static"
            )
        return found["podman"]

    def podman_env(self) -> dict[str, str]:
        """The environment of every podman process: this service's files only."""
        env = clean_docker_env()
        for name in _PODMAN_ENV_VARS:
            env.pop(name, None)
        env["CONTAINERS_CONF"] = os.path.join(self.tmpdir, "containers.conf")
        env["CONTAINERS_STORAGE_CONF"] = os.path.join(self.tmpdir, "storage.conf")
        env["CONTAINERS_REGISTRIES_CONF"] = os.path.join(self.tmpdir, "registries.conf")
        return env

    def podman_argv(self, *args: str) -> list[str]:
        """A podman command line on this service's storage."""
        return [
            self.podman_path,
            "--root",
            os.path.join(self.tmpdir, "root"),
            "--runroot",
            os.path.join(self.tmpdir, "runroot"),
            *args,
        ]

    def podman(
        self, *args: str, input: bytes = b"", timeout: float = COMMAND_TIMEOUT
    ) -> subprocess.CompletedProcess:
        """Run the podman CLI itself (not the API) on this service's storage."""
        return subprocess.run(
            self.podman_argv(*args),
            input=input,
            capture_output=True,
            env=self.podman_env(),
            timeout=timeout,
            check=False,
        )

    def start(self) -> RealPodman:
        self.podman_path = self.check_capabilities()
        self.tmpdir = tempfile.mkdtemp(prefix="hvp-", dir="/tmp")
        self.socket_path = os.path.join(self.tmpdir, "p.sock")
        self.log_path = os.path.join(self.tmpdir, "podman.log")
        self.config_dir = os.path.join(self.tmpdir, "cli")
        for name in ("cli", "tmp", "networks"):
            os.mkdir(os.path.join(self.tmpdir, name))
        files = {
            "cli/config.json": "{}\n",
            "containers.conf": _containers_conf(self.tmpdir),
            "storage.conf": _storage_conf(self.tmpdir),
            "registries.conf": _REGISTRIES_CONF,
        }
        for name, text in files.items():
            with open(os.path.join(self.tmpdir, name), "w") as f:
                f.write(text)
        self._host_changes = HostChanges()
        try:
            self._import_image()
            self._serve()
            self._smoke_test()
        except PodmanUnavailable:
            raise
        except Exception as e:  # pragma: no cover - unexpected harness failure
            self._fail_start(f"the podman harness failed: {e!r}")
        return self

    def _serve(self) -> None:
        """Start `podman system service` and wait until it answers."""
        started = time.monotonic()
        self._log_file = open(self.log_path, "ab")
        self.process = subprocess.Popen(
            self.podman_argv("system", "service", "--time=0", self.host),
            env=self.podman_env(),
            stdin=subprocess.DEVNULL,
            stdout=self._log_file,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self._wait_ready(started)
        self.start_seconds = time.monotonic() - started
        version = json.loads(self.api_request("GET", "/version")[1])
        self.api_version, self.server_version = (
            version.get("ApiVersion"),
            version.get("Version"),
        )

    def _import_image(self) -> None:
        started = time.monotonic()
        proc = self.podman(
            "import",
            "--quiet",
            "--change",
            'CMD ["sh"]',
            "-",
            IMAGE,
            input=busybox_tar(),
        )
        self.import_seconds = time.monotonic() - started
        if proc.returncode:
            self._fail_start(
                f"podman import of {IMAGE} failed (status {proc.returncode}): "
                f"{proc.stderr.decode(errors='replace').strip()}"
            )

    def _ping(self) -> tuple[int, bytes, str | None]:
        conn = UnixHTTPConnection(self.socket_path, timeout=2.0)
        try:
            conn.request("GET", "/_ping")
            resp = conn.getresponse()
            return resp.status, resp.read(), resp.getheader("Libpod-Api-Version")
        finally:
            conn.close()

    daemon_name = "podman system service"

    def _serving(self) -> str | None:
        """None once podman answers `GET /_ping` OK with its
        Libpod-Api-Version header."""
        answer = self._ping()
        if answer[:2] == (200, b"OK") and answer[2]:
            self.libpod_version = answer[2]
            return None
        return f"GET /_ping answered {answer!r}"

    def _smoke_test(self) -> None:
        """One container, through the API, with the configured ulimits."""
        command = ["sh", "-c", "ulimit -n"]
        proc = self.docker(
            "run", "--rm", "--network=none", IMAGE, *command, check=False
        )
        if proc.returncode != 0 or proc.stdout != f"{ULIMIT}\n".encode():
            self._fail_start(
                "podman serves its API but cannot run a container with runc and "
                f"nofile={ULIMIT} (status {proc.returncode}, stdout {proc.stdout!r}): "
                f"{proc.stderr.decode(errors='replace').strip()}"
            )

    def _fail_start(self, reason: str):
        tail = self._log_tail()
        self.stop(keep_log=True)
        raise PodmanUnavailable(
            f"{reason}; podman log kept at {self.log_path}; last lines:\n{tail}"
        )

    def own_processes(self, directory: str | None = None) -> list[int]:
        """Pids of the processes this service left or runs besides itself:
        conmon (an exec session's lingers for minutes), container processes,
        `podman container cleanup`; found by a command line or root naming
        `directory` (default: the service's own)."""
        mine = (directory or self.tmpdir).rstrip("/") + "/"
        spared = {os.getpid()}
        if self.process is not None:
            spared.add(self.process.pid)
        pids = []
        for entry in os.listdir("/proc"):
            if not entry.isdigit() or int(entry) in spared:
                continue
            try:
                with open(f"/proc/{entry}/cmdline", "rb") as f:
                    cmdline = f.read().decode(errors="replace")
                root = os.readlink(f"/proc/{entry}/root")
            except OSError:
                continue
            if mine in cmdline or root.startswith(mine):
                pids.append(int(entry))
        return pids

    def _kill_own_processes(self, directory: str) -> None:
        """SIGKILL them until none is left (or 10 s): a conmon asked to stop
        would first run its exit command, a podman recreating the storage
        being removed."""
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            pids = self.own_processes(directory)
            if not pids:
                return
            for pid in pids:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            time.sleep(0.05)

    def stop(self, keep_log: bool = False) -> None:
        """Remove all containers, stop the service and what it left running,
        remove its directory and undo its changes to the host's network.

        Best effort; safe to call more than once.
        """
        tmpdir = self.tmpdir
        if tmpdir is None:
            return
        try:
            self.podman("rm", "--all", "--force", "--time", "0", timeout=60)
        except (OSError, subprocess.TimeoutExpired):
            pass
        self._kill_own_processes(tmpdir)
        # Stops the service, unmounts what is left under tmpdir, removes it.
        super().stop(keep_log=keep_log)
        self._kill_own_processes(tmpdir)
        if not keep_log:
            shutil.rmtree(tmpdir, ignore_errors=True)
        if self._host_changes is not None:
            self.host_cleanup = self._host_changes.undo()
            self._host_changes = None


_lock = threading.Lock()
_shared: dict[str, RealPodman | PodmanUnavailable] = {}


def shared_podman() -> RealPodman:
    """The per-test-run podman service, started on first call.

    Raises PodmanUnavailable (again on every call) if it cannot start.
    """
    with _lock:
        if not _shared:
            atexit.register(stop_shared_podman)
            try:
                _shared["podman"] = RealPodman().start()
            except PodmanUnavailable as e:
                _shared["podman"] = e
        found = _shared["podman"]
    if isinstance(found, PodmanUnavailable):
        raise PodmanUnavailable(str(found))
    return found


def stop_shared_podman() -> None:
    """Stop the shared service if it runs (also run at exit)."""
    with _lock:
        found = _shared.get("podman")
        if isinstance(found, RealPodman):
            _shared["podman"] = PodmanUnavailable("the shared podman was stopped")
    if isinstance(found, RealPodman):
        found.stop()
