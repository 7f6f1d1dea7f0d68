"""
The set-up commands users are given, run as written with the distribution's
interpreter.

README's "Set up" one-liner and the venv + systemd path of
docs/getting-started.md are taken from those files (so these tests follow
them), run in a fresh copy of the checkout (the files C{git ls-files} lists,
so no C{.venv} or build leftovers come along) with C{python3} resolving to
C{/usr/bin/python3}, and the agent they start must answer
C{GET /_agent/health} over TLS (verified against the certificate it
generated) and pass an authenticated C{GET /_ping} through to a fake dockerd
(L{tests.fake_dockerd}) served by this test's reactor.

The agent is configured only through the environment variables it reads
(C{HAVEN_AGENT_LISTEN}, C{HAVEN_AGENT_DOCKER}, C{HAVEN_AGENT_STATE_DIR}), so
the commands stay verbatim.  The systemd path runs in a private mount
namespace with tmpfs on C{/opt/haven-agent} (remounted read-only before the
unit's C{ExecStart=}, as C{ProtectSystem=strict} would) and a temporary
directory bound on C{/var/lib/haven-agent}, so no real install or state is
touched.

Both tests need root (C{apt-get}) and network access to PyPI, and take about
a minute each.
"""

from __future__ import annotations

import fcntl
import http.client
import json
import os
import re
import shlex
import shutil
import signal
import ssl
import subprocess
import tempfile
import time

from twisted.internet import reactor
from twisted.internet.defer import inlineCallbacks
from twisted.internet.threads import deferToThread
from twisted.trial.unittest import SkipTest, TestCase

from tests.e2e_agent import CHECKOUT_ROOT, basic_auth, free_port
from tests.fake_dockerd import FakeDockerdFactory, short_socket_path

#: The distribution's interpreter, which the documented commands must work with.
SYSTEM_PYTHON = "/usr/bin/python3"
#: Debian's default PATH for root; directories holding another python3 are
#: dropped from it.
BASE_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
#: Where docs/getting-started.md and contrib/haven-agent.service put things.
OPT_DIR = "/opt/haven-agent"
VAR_DIR = "/var/lib/haven-agent"

#: apt-get update plus pip install from PyPI take a while.
START_TIMEOUT = 1200.0
STOP_TIMEOUT = 20.0
REQUEST_TIMEOUT = 10.0

#: Held while a test of this module runs, so that concurrent runs (say, two
#: whole-suite runs) do not fight over /opt/haven-agent or apt's locks.
LOCK_PATH = "/run/lock/haven-agent-setup-tests.lock"
#: The locks apt-get update and apt-get install take (without waiting).
APT_LOCKS = (
    "/var/lib/apt/lists/lock",
    "/var/lib/dpkg/lock-frontend",
    "/var/lib/dpkg/lock",
)

#: Printed by the systemd test's script right before it execs ExecStart.
EXEC_MARKER = "=== haven-agent test: ExecStart ==="


# -- reading the documents ------------------------------------------------


def _read(relative: str) -> str:
    with open(os.path.join(CHECKOUT_ROOT, relative), encoding="utf-8") as f:
        return f.read()


def _section(text: str, heading: str) -> str:
    """The lines after the Markdown heading C{heading}, up to the next one."""
    lines = text.splitlines()
    try:
        start = lines.index(heading)
    except ValueError:
        raise AssertionError(f"no heading {heading!r}") from None
    level = heading.split(" ", 1)[0]
    out = []
    for line in lines[start + 1 :]:
        if re.match(f"#{{1,{len(level)}}} ", line):
            break
        out.append(line)
    return "\n".join(out)


def _sh_blocks(text: str) -> list[str]:
    """The contents of the ```sh fenced code blocks in C{text}."""
    return re.findall(r"^```sh\n(.*?)^```$", text, re.M | re.S)


def readme_setup_command() -> str:
    """README's one-line set-up command: the only ```sh block of "## Set up"
    before "Run every test"."""
    section = _section(_read("README.md"), "## Set up")
    before, found, _ = section.partition("Run every test")
    assert found, "README's Set up section no longer says 'Run every test'"
    blocks = _sh_blocks(before)
    assert len(blocks) == 1, f"expected one ```sh block, found {blocks!r}"
    lines = [line for line in blocks[0].splitlines() if line.strip()]
    assert len(lines) == 1, f"the set-up command is not one line: {lines!r}"
    return lines[0]


def getting_started_venv_lines() -> list[str]:
    """The lines of docs/getting-started.md's systemd path that install the
    venv: those naming /opt/haven-agent or python3-venv (not the ones that
    write /etc or call systemctl)."""
    section = _section(
        _read("docs/getting-started.md"), "## 2. Without Docker: a venv and systemd"
    )
    blocks = _sh_blocks(section)
    assert blocks, "no ```sh block in getting-started's systemd section"
    lines = [
        line
        for line in blocks[0].splitlines()
        if (OPT_DIR in line or "python3-venv" in line)
        and "/etc" not in line
        and "systemctl" not in line
    ]
    joined = "\n".join(lines)
    for needed in (f"python3 -m venv {OPT_DIR}", "pip install .", "--help"):
        assert needed in joined, f"no {needed!r} among {lines!r}"
    return lines


def unit_exec_start() -> list[str]:
    """The argv of contrib/haven-agent.service's ExecStart=."""
    unit = _read("contrib/haven-agent.service")
    assert re.search(
        r"^EnvironmentFile=", unit, re.M
    ), "the unit has no EnvironmentFile"
    commands = re.findall(r"^ExecStart=(.*)$", unit, re.M)
    assert len(commands) == 1, f"expected one ExecStart=, found {commands!r}"
    (command,) = commands
    # A plain absolute command line: no systemd prefixes (-, @, +, !, :) and
    # no $VARIABLE expansion, whose rules differ from the shell's.
    assert command.startswith("/") and "$" not in command, command
    return shlex.split(command)


# -- the environment --------------------------------------------------------


def system_python_path() -> str:
    """BASE_PATH without the directories whose python3 is not SYSTEM_PYTHON."""
    kept = []
    for directory in BASE_PATH.split(":"):
        candidate = os.path.join(directory, "python3")
        if os.path.exists(candidate) and not os.path.samefile(candidate, SYSTEM_PYTHON):
            continue
        kept.append(directory)
    return ":".join(kept)


def command_env() -> dict[str, str]:
    """This process's environment without anything Python- or agent-specific,
    with PATH finding the distribution's python3."""
    env = {
        name: value
        for name, value in os.environ.items()
        if not name.startswith(("PYTHON", "HAVEN_AGENT_", "dm_"))
        and name not in ("VIRTUAL_ENV", "server_port")
    }
    env["PATH"] = system_python_path()
    return env


def require_system() -> None:
    """Skip unless root, apt-get and the distribution's python3 are here."""
    if os.geteuid() != 0:
        raise SkipTest("needs root: the documented commands run apt-get install")
    if shutil.which("apt-get") is None:
        raise SkipTest("needs apt-get (Debian or Ubuntu)")
    if not os.path.exists(SYSTEM_PYTHON):
        raise SkipTest(f"needs the distribution's {SYSTEM_PYTHON}")
    if shutil.which("git") is None:
        raise SkipTest("needs git, to list the checkout's files")


# -- processes ----------------------------------------------------------------


def _tail(path: str, limit: int = 20000) -> str:
    try:
        with open(path, "rb") as f:
            text = f.read().decode("utf-8", "replace")
    except OSError as e:
        return f"(no output: {e})"
    return text if len(text) <= limit else "...\n" + text[-limit:]


def _group_members(pgid: int) -> list[int]:
    """Live (not zombie) processes of process group C{pgid}."""
    members = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        # pid (comm) state ppid pgrp ...; comm may contain spaces.
        fields = stat.rpartition(")")[2].split()
        if fields[0] != "Z" and int(fields[2]) == pgid:
            members.append(int(entry))
    return members


def stop_group(process: subprocess.Popen) -> None:
    """SIGTERM the process group led by C{process}, SIGKILL what remains."""
    pgid = process.pid
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(pgid, sig)
        except ProcessLookupError:
            pass
        deadline = time.monotonic() + STOP_TIMEOUT
        while time.monotonic() < deadline:
            process.poll()
            if process.returncode is not None and not _group_members(pgid):
                return
            time.sleep(0.1)
    process.wait(STOP_TIMEOUT)


def _context(cert_path: str) -> ssl.SSLContext:
    """Trust exactly the agent's self-signed certificate."""
    return ssl.create_default_context(cafile=cert_path)


def _get(
    port: int, cert_path: str, path: str, headers: dict[str, str] | None = None
) -> tuple[int, dict[str, str], bytes]:
    connection = http.client.HTTPSConnection(
        "127.0.0.1", port, timeout=REQUEST_TIMEOUT, context=_context(cert_path)
    )
    try:
        connection.request("GET", path, headers=headers or {})
        response = connection.getresponse()
        return response.status, dict(response.getheaders()), response.read()
    finally:
        connection.close()


def wait_healthy(
    process: subprocess.Popen, port: int, cert_path: str, log_path: str
) -> dict[str, str]:
    """Poll C{GET /_agent/health} until it answers 200 with status ok."""
    deadline = time.monotonic() + START_TIMEOUT
    last: object = "no certificate yet"
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(
                f"exited with status {process.returncode} before the agent was "
                f"healthy (last: {last!r}); output:\n{_tail(log_path)}"
            )
        if os.path.exists(cert_path):
            try:
                status, _, body = _get(port, cert_path, "/_agent/health")
            except (OSError, ssl.SSLError, http.client.HTTPException) as e:
                last = e
            else:
                last = (status, body)
                if status == 200:
                    health = json.loads(body)
                    if health.get("status") == "ok":
                        return health
        time.sleep(0.5)
    raise AssertionError(
        f"no healthy agent on 127.0.0.1:{port} within {START_TIMEOUT:.0f} s "
        f"(last: {last!r}); output:\n{_tail(log_path)}"
    )


def _copy_checkout(destination: str) -> None:
    """Copy the files C{git ls-files} lists (as they are on disk)."""
    listed = subprocess.run(
        ["git", "-C", CHECKOUT_ROOT, "ls-files", "-z"],
        capture_output=True,
        check=True,
        timeout=60,
    ).stdout.decode()
    for relative in filter(None, listed.split("\0")):
        source = os.path.join(CHECKOUT_ROOT, relative)
        if not os.path.lexists(source):
            continue  # deleted in the work tree
        target = os.path.join(destination, relative)
        os.makedirs(os.path.dirname(target), exist_ok=True)
        shutil.copy2(source, target, follow_symlinks=False)


def _locked_inodes() -> set[tuple[int, int, int]]:
    """(major, minor, inode) of every file someone holds a lock on."""
    locked = set()
    with open("/proc/locks") as f:
        for line in f:
            for field in line.split():
                parts = field.split(":")
                if len(parts) == 3 and all(parts):
                    try:
                        major, minor = int(parts[0], 16), int(parts[1], 16)
                        locked.add((major, minor, int(parts[2])))
                    except ValueError:
                        pass
    return locked


def wait_for_apt(timeout: float = START_TIMEOUT) -> None:
    """Wait until no other process holds apt's locks: apt-get update fails
    at once rather than wait for them.  Only looks (in /proc/locks), so it
    never disturbs another apt run itself."""
    deadline = time.monotonic() + timeout
    while True:
        held = []
        locked = _locked_inodes()
        for path in APT_LOCKS:
            try:
                st = os.stat(path)
            except OSError:
                continue
            if (os.major(st.st_dev), os.minor(st.st_dev), st.st_ino) in locked:
                held.append(path)
        if not held:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"apt is still busy after {timeout:.0f} s: {held}")
        time.sleep(1)


def take_lock(path: str = LOCK_PATH, timeout: float = 2 * START_TIMEOUT) -> int:
    """An exclusive flock on C{path}; closing the descriptor releases it."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    deadline = time.monotonic() + timeout
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return fd
        except BlockingIOError:
            if time.monotonic() > deadline:
                os.close(fd)
                raise AssertionError(
                    f"another run kept {path} locked for {timeout:.0f} s"
                ) from None
            time.sleep(1)


class _SetUpCommandTest(TestCase):
    """Shared set-up: a fake dockerd, a fresh checkout, a state directory."""

    timeout = START_TIMEOUT + 300

    @inlineCallbacks
    def setUp(self):
        require_system()
        lock = yield deferToThread(take_lock)
        self.addCleanup(os.close, lock)
        path = command_env()["PATH"]
        self.assertEqual(shutil.which("python3", path=path), SYSTEM_PYTHON)
        self.env = command_env()
        resolved = subprocess.run(
            ["sh", "-c", "command -v python3"],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=30,
        )
        self.assertEqual(resolved.stdout.strip(), SYSTEM_PYTHON, resolved)

        self.tmp = tempfile.mkdtemp(prefix="hva-setup-", dir="/tmp")
        self.addCleanup(shutil.rmtree, self.tmp, True)
        self.checkout = os.path.join(self.tmp, "haven-agent")
        _copy_checkout(self.checkout)
        self.state_dir = os.path.join(self.tmp, "state")
        os.mkdir(self.state_dir, 0o700)
        self.cert_path = os.path.join(self.state_dir, "tls", "agent-cert.pem")
        self.log_path = os.path.join(self.tmp, "output.log")

        socket_path = short_socket_path()
        self.addCleanup(shutil.rmtree, os.path.dirname(socket_path), True)
        self.fake = FakeDockerdFactory()
        port = reactor.listenUNIX(socket_path, self.fake)
        self.addCleanup(port.stopListening)
        self.port = free_port()
        self.agent_env = {
            "HAVEN_AGENT_LISTEN": f"tcp:{self.port}:interface=127.0.0.1",
            "HAVEN_AGENT_STATE_DIR": self.state_dir,
            "HAVEN_AGENT_DOCKER": f"unix:{socket_path}",
        }
        # apt-get install waits for dpkg's lock when told so (not so apt-get
        # update, hence wait_for_apt); the command itself stays verbatim.
        apt_config = os.path.join(self.tmp, "apt.conf")
        with open(apt_config, "w") as f:
            f.write('DPkg::Lock::Timeout "600";\n')
        self.env["APT_CONFIG"] = apt_config
        yield deferToThread(wait_for_apt)

    def spawn(self, argv: list[str], env: dict[str, str]) -> subprocess.Popen:
        """Start C{argv} in its own process group, output to the log."""
        with open(self.log_path, "ab") as log:
            process = subprocess.Popen(
                argv,
                cwd=self.checkout,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.addCleanup(stop_group, process)
        return process

    def output(self) -> str:
        return _tail(self.log_path, limit=10**9)

    @inlineCallbacks
    def assertServes(self, process: subprocess.Popen):
        """The agent is healthy and relays an authenticated /_ping to the
        fake dockerd (this reactor serves it, so block in threads only)."""
        health = yield deferToThread(
            wait_healthy, process, self.port, self.cert_path, self.log_path
        )
        self.assertEqual(health, {"status": "ok", "docker": "up"})
        target = "/_ping?setup-test=1"
        status, headers, body = yield deferToThread(
            _get,
            self.port,
            self.cert_path,
            target,
            {"Authorization": basic_auth("admin", "password")},
        )
        message = f"{status} {headers} {body!r}\n{_tail(self.log_path)}"
        self.assertEqual((status, body), (200, b"OK"), message)
        self.assertEqual(headers.get("Server"), "Docker/fake (linux)", message)
        self.assertIn(target.encode(), [r.target for r in self.fake.requests])


class ReadmeSetUpTests(_SetUpCommandTest):
    @inlineCallbacks
    def test_oneLiner(self):
        """
        README's set-up command, verbatim through C{sh -c} in a fresh copy of
        the checkout, installs the agent into C{.venv} from the
        distribution's python3 and runs it.
        """
        command = readme_setup_command()
        process = self.spawn(["sh", "-c", command], {**self.env, **self.agent_env})
        yield self.assertServes(process)
        with open(os.path.join(self.checkout, ".venv", "pyvenv.cfg")) as f:
            config = f.read()
        self.assertIn(f"home = {os.path.dirname(SYSTEM_PYTHON)}\n", config)
        self.assertIn("haven-agent serving Docker API", self.output())


def _mount_namespace_problem(probe_dir: str) -> str | None:
    """Why a private mount namespace with a tmpfs cannot be had, or None."""
    if shutil.which("unshare") is None:
        return "unshare (util-linux) is not installed"
    script = 'mount -t tmpfs tmpfs "$1" && mount -o remount,ro "$1"'
    try:
        probe = subprocess.run(
            ["unshare", "-m", "--propagation", "private", "sh", "-c", script]
            + ["probe", probe_dir],
            capture_output=True,
            text=True,
            timeout=30,
        )
    except (OSError, subprocess.TimeoutExpired) as e:
        return str(e)
    if probe.returncode:
        return f"status {probe.returncode}: {probe.stderr.strip()}"
    return None


def _make_mount_point(test: TestCase, path: str) -> None:
    """Create the empty directory C{path} unless it exists; remove it at the
    end only if created here (only ever with rmdir: it is a mount point that
    stays empty on the host)."""
    if os.path.lexists(path):
        return
    os.mkdir(path, 0o755)
    test.addCleanup(os.rmdir, path)


class SystemdPathTests(_SetUpCommandTest):
    @inlineCallbacks
    def test_venvAndUnit(self):
        """
        getting-started's venv lines install into C{/opt/haven-agent} and
        build the plugin cache, so the unit's C{ExecStart=} starts the agent
        from a read-only C{/opt/haven-agent} without a cache write failing.
        """
        problem = _mount_namespace_problem(self.tmp)
        if problem is not None:
            raise SkipTest(
                f"needs a private mount namespace (unshare -m) with tmpfs "
                f"mounts: {problem}"
            )
        venv_lines = getting_started_venv_lines()
        exec_start = unit_exec_start()
        self.assertEqual(exec_start[0], f"{OPT_DIR}/bin/twistd")
        self.assertIn(VAR_DIR, exec_start)
        _make_mount_point(self, OPT_DIR)
        _make_mount_point(self, VAR_DIR)
        host_view = {path: sorted(os.listdir(path)) for path in (OPT_DIR, VAR_DIR)}

        # systemd gives the service a clean environment plus the
        # EnvironmentFile, for which the test's settings stand in.
        service_env = [f"PATH={self.env['PATH']}"] + [
            f"{name}={value}" for name, value in self.agent_env.items()
        ]
        q = shlex.quote
        script = "\n".join(
            [
                "set -ex",
                f"mount -t tmpfs -o mode=0755 tmpfs {q(OPT_DIR)}",
                f"mount --bind {q(self.state_dir)} {q(VAR_DIR)}",
                *venv_lines,
                f"mount -o remount,ro {q(OPT_DIR)}",
                f"if touch {q(OPT_DIR)}/.rw-probe; then exit 97; fi",
                "cd /",
                f"echo {q(EXEC_MARKER)}",
                shlex.join(["exec", "env", "-i", *service_env, *exec_start]),
            ]
        )
        process = self.spawn(
            ["unshare", "-m", "--propagation", "private", "sh", "-c", script],
            self.env,
        )
        yield self.assertServes(process)

        output = self.output()
        before, marker, agent_log = output.partition(EXEC_MARKER + "\n")
        self.assertTrue(marker, output)
        self.assertIn("Read-only file system", before, "the venv was not read-only")
        self.assertNotIn("Unable to write to plugin cache", agent_log, output)
        self.assertIn("haven-agent serving Docker API", agent_log, output)
        # The namespace's mounts never reached the host.
        self.assertEqual(
            {path: sorted(os.listdir(path)) for path in host_view}, host_view
        )
