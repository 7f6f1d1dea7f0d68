"""
Start-up failures of a real `twistd haven-agent` process: each is one line on
standard error naming the option or environment variable at fault, exit
status 1 and no traceback; a usage error is that line and one hint, not the
whole help. Also L{haven_agent.startup_errors.explain_startup_errors} on its
own, and the cases that must start: C{--version} and
C{HAVEN_AGENT_NETWORK_FILESYSTEMS=on}.

The helpers here (a fake dockerd in its own process, running twistd with a
clean environment) are shared with the other real-process tests.
"""

from __future__ import annotations

import io
import os
import platform
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

from twisted.trial.unittest import SynchronousTestCase

import twisted
from haven_agent import __version__
from haven_agent.startup_errors import StartupError, explain_startup_errors
from haven_agent.tap import ENVIRONMENT
from tests.e2e_agent import (
    CHECKOUT_ROOT,
    agent_env,
    make_ca,
    stop_process,
    twistd_argv,
)
from tests.fake_dockerd import short_socket_path

#: Seconds any one twistd run, or waiting for a line, may take at most.
PROCESS_TIMEOUT = 60.0

HINT = "see twistd haven-agent --help"
USAGE_PREFIX = "twistd haven-agent: "
STARTUP_PREFIX = "haven-agent: "

_FAKE_DOCKERD = (
    "import sys\n"
    "from twisted.internet import reactor\n"
    "from tests.fake_dockerd import FakeDockerdFactory\n"
    "reactor.listenUNIX(sys.argv[1], FakeDockerdFactory())\n"
    "reactor.run()\n"
)


def clean_agent_env(**overrides: str) -> dict[str, str]:
    """
    The environment of a twistd finding this checkout's dropin, without any
    setting of the agent the test runner's own environment might carry, plus
    C{overrides}.
    """
    env = agent_env()
    names = {name for names in ENVIRONMENT.values() for name in names}
    names |= {"server_port", "HAVEN_AGENT_NETWORK_FILESYSTEMS"}
    for name in names:
        env.pop(name, None)
    env.update(overrides)
    return env


def start_fake_dockerd(testcase: SynchronousTestCase) -> str:
    """
    Run a fake dockerd in a process of its own, stopped when C{testcase}
    ends; return the path of its socket once it accepts connections.
    """
    path = short_socket_path()
    testcase.addCleanup(shutil.rmtree, os.path.dirname(path), True)
    process = subprocess.Popen(
        [sys.executable, "-c", _FAKE_DOCKERD, path],
        cwd=CHECKOUT_ROOT,
        env=clean_agent_env(),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
    )
    testcase.addCleanup(stop_process, process, 10.0)
    deadline = time.monotonic() + PROCESS_TIMEOUT
    while time.monotonic() < deadline:
        if process.poll() is not None:
            testcase.fail(f"the fake dockerd exited with status {process.returncode}")
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
            try:
                probe.connect(path)
                return path
            except OSError:
                pass
        time.sleep(0.05)
    testcase.fail(f"the fake dockerd did not listen on {path}")


def wait_for_line(
    testcase: SynchronousTestCase,
    process: subprocess.Popen,
    path: str,
    wanted: str,
) -> str:
    """
    Wait until the file at C{path} (a log) has a line containing C{wanted};
    fail if C{process} exits first. Return the file's text.
    """
    deadline = time.monotonic() + PROCESS_TIMEOUT
    text = ""
    while time.monotonic() < deadline:
        try:
            with open(path, encoding="utf-8", errors="replace") as f:
                text = f.read()
        except OSError:
            text = ""
        if wanted in text:
            return text
        if process.poll() is not None:
            testcase.fail(
                f"the agent exited with status {process.returncode} before "
                f"logging {wanted!r}:\n{text}"
            )
        time.sleep(0.05)
    testcase.fail(f"the agent did not log {wanted!r}:\n{text}")


def stop_agent(testcase: SynchronousTestCase, process: subprocess.Popen) -> int:
    """
    SIGTERM the agent and return its exit status: twistd ends a run stopped
    by a signal with that signal again, so a clean stop is C{-SIGTERM}.
    """
    process.send_signal(signal.SIGTERM)
    try:
        return process.wait(PROCESS_TIMEOUT)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(10)
        testcase.fail("the agent did not exit on SIGTERM")


def write_self_signed(directory: str, name: str) -> tuple[str, str]:
    """
    A fresh EC key pair and a self-signed certificate for it in
    C{directory}: (certificate path, key path).
    """
    return make_ca(directory, name)


class AgentProcessCase(SynchronousTestCase):
    """
    Runs C{twistd -n --pidfile= haven-agent --state-dir TMP --docker FAKE
    ...} in a temporary directory, against a fake dockerd.
    """

    def setUp(self) -> None:
        self.tmp = tempfile.mkdtemp(prefix="hvs-", dir="/tmp")
        self.addCleanup(shutil.rmtree, self.tmp, True)
        self.stateDir = os.path.join(self.tmp, "state")
        self.docker = start_fake_dockerd(self)

    def agentArgv(self, args: list[str], stateDir: bool = True) -> list[str]:
        state = ["--state-dir", self.stateDir] if stateDir else []
        return twistd_argv(
            "-n",
            "--pidfile=",
            "haven-agent",
            *state,
            "--docker",
            self.docker,
            *args,
        )

    def runAgent(
        self,
        args: list[str],
        env: dict[str, str] | None = None,
        stateDir: bool = True,
    ) -> subprocess.CompletedProcess:
        try:
            return subprocess.run(
                self.agentArgv(args, stateDir),
                env=clean_agent_env(**(env or {})),
                cwd=self.tmp,
                stdin=subprocess.DEVNULL,
                capture_output=True,
                text=True,
                timeout=PROCESS_TIMEOUT,
            )
        except subprocess.TimeoutExpired as e:
            self.fail(f"the agent did not exit: {e.stdout!r} {e.stderr!r}")

    def assertNoTraceback(self, result: subprocess.CompletedProcess) -> None:
        for name, text in (("stdout", result.stdout), ("stderr", result.stderr)):
            self.assertNotIn("Traceback", text, f"{name}:\n{text}")

    def assertStartupError(
        self,
        args: list[str],
        *fragments: str,
        env: dict[str, str] | None = None,
        stateDir: bool = True,
        exact: str | None = None,
    ) -> str:
        """
        The agent exits 1 with one line on stderr, naming every fragment.
        """
        result = self.runAgent(args, env, stateDir)
        self.assertEqual(result.returncode, 1, result.stderr)
        self.assertNoTraceback(result)
        lines = result.stderr.splitlines()
        self.assertEqual(len(lines), 1, result.stderr)
        (line,) = lines
        self.assertTrue(line.startswith(STARTUP_PREFIX), line)
        if exact is not None:
            self.assertEqual(line, exact)
        for fragment in fragments:
            self.assertIn(fragment, line)
        return line

    def assertUsageError(
        self,
        args: list[str],
        *fragments: str,
        env: dict[str, str] | None = None,
        absent: tuple[str, ...] = (),
    ) -> str:
        """
        The agent exits 1 with one line naming every fragment (and none of
        C{absent}) and the hint, nothing else.
        """
        result = self.runAgent(args, env)
        self.assertEqual(result.returncode, 1, result.stderr)
        self.assertNoTraceback(result)
        self.assertEqual(result.stdout, "")
        lines = result.stderr.splitlines()
        self.assertEqual(len(lines), 2, result.stderr)
        line, hint = lines
        self.assertEqual(hint, HINT)
        self.assertTrue(line.startswith(USAGE_PREFIX), line)
        for fragment in fragments:
            self.assertIn(fragment, line)
        for fragment in absent:
            self.assertNotIn(fragment, line)
        return line


LOOPBACK_ANY_PORT = ["--listen", "tcp:0:interface=127.0.0.1"]


class StartupFailureTests(AgentProcessCase):
    """
    Failures found while the service is built or started.
    """

    def busyPort(self) -> int:
        taken = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.addCleanup(taken.close)
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        return taken.getsockname()[1]

    def test_portInUse(self) -> None:
        port = self.busyPort()
        self.assertStartupError(
            ["--listen", f"tcp:{port}:interface=127.0.0.1"],
            exact=(
                f"haven-agent: --listen: cannot listen on "
                f"tcp:{port}:interface=127.0.0.1: Address already in use"
            ),
        )

    def test_portInUseFromEnvironment(self) -> None:
        port = self.busyPort()
        self.assertStartupError(
            [],
            env={"HAVEN_AGENT_LISTEN": f"tcp:{port}:interface=127.0.0.1"},
            exact=(
                f"haven-agent: HAVEN_AGENT_LISTEN: cannot listen on "
                f"tcp:{port}:interface=127.0.0.1: Address already in use"
            ),
        )

    def test_certificateMissing(self) -> None:
        self.assertStartupError(
            [
                "--tls-cert",
                "/nonexistent.pem",
                "--tls-key",
                "/nonexistent.pem",
                *LOOPBACK_ANY_PORT,
            ],
            "--tls-cert",
            "--tls-key",
            "/nonexistent.pem",
            "No such file or directory",
        )

    def test_certificateMissingFromEnvironment(self) -> None:
        self.assertStartupError(
            LOOPBACK_ANY_PORT,
            "HAVEN_AGENT_TLS_CERT",
            "HAVEN_AGENT_TLS_KEY",
            "/nonexistent.pem",
            env={
                "HAVEN_AGENT_TLS_CERT": "/nonexistent.pem",
                "HAVEN_AGENT_TLS_KEY": "/nonexistent.pem",
            },
        )

    def test_keyOfAnotherCertificate(self) -> None:
        certA, _ = write_self_signed(self.tmp, "a")
        _, keyB = write_self_signed(self.tmp, "b")
        line = self.assertStartupError(
            ["--tls-cert", certA, "--tls-key", keyB, *LOOPBACK_ANY_PORT],
            "--tls-cert",
            "--tls-key",
            certA,
            keyB,
        )
        self.assertIn("does not match", line)

    def test_certificateAsKey(self) -> None:
        cert, _ = write_self_signed(self.tmp, "a")
        line = self.assertStartupError(
            ["--tls-cert", cert, "--tls-key", cert, *LOOPBACK_ANY_PORT],
            "--tls-key",
            cert,
        )
        self.assertIn("private key", line)

    def test_stateDirectoryUnderAFile(self) -> None:
        regular = os.path.join(self.tmp, "file")
        with open(regular, "w") as f:
            f.write("not a directory\n")
        stateDir = os.path.join(regular, "sub")
        self.assertStartupError(
            ["--state-dir", stateDir, *LOOPBACK_ANY_PORT],
            "--state-dir",
            stateDir,
            stateDir=False,
        )

    def test_stateDirectoryIsAFile(self) -> None:
        regular = os.path.join(self.tmp, "file")
        with open(regular, "w") as f:
            f.write("not a directory\n")
        self.assertStartupError(
            ["--state-dir", regular, *LOOPBACK_ANY_PORT],
            "--state-dir",
            regular,
            stateDir=False,
        )

    def test_stateDirectoryFromEnvironment(self) -> None:
        regular = os.path.join(self.tmp, "file")
        with open(regular, "w") as f:
            f.write("not a directory\n")
        stateDir = os.path.join(regular, "sub")
        line = self.assertStartupError(
            LOOPBACK_ANY_PORT,
            "HAVEN_AGENT_STATE_DIR",
            stateDir,
            env={"HAVEN_AGENT_STATE_DIR": stateDir},
            stateDir=False,
        )
        self.assertNotIn("--state-dir", line)


class UsageErrorTests(AgentProcessCase):
    """
    Bad options and environment variables, found while parsing.
    """

    def test_listenEnvironment(self) -> None:
        line = self.assertUsageError(
            [], "HAVEN_AGENT_LISTEN", "bad:xyz", env={"HAVEN_AGENT_LISTEN": "bad:xyz"}
        )
        self.assertNotIn("--listen", line)

    def test_listenPortTooLarge(self) -> None:
        self.assertUsageError(["--listen", "99999"], "--listen", "99999")

    def test_masterWithoutHost(self) -> None:
        self.assertUsageError(["--master", "http://"], "--master", "'http://'")

    def test_masterPortNotANumber(self) -> None:
        self.assertUsageError(
            ["--master", "http://127.0.0.1:notaport"],
            "--master",
            "http://127.0.0.1:notaport",
            "port",
        )

    def test_masterFromHavenVariable(self) -> None:
        self.assertUsageError(
            [],
            "dm_agent_notifier_server",
            "notaurl",
            env={"dm_agent_notifier_server": "notaurl"},
            absent=("--master",),
        )

    def test_misspeltOption(self) -> None:
        self.assertUsageError(["--pasword", "x"], "--pasword")

    def test_certificateWithoutKey(self) -> None:
        self.assertUsageError(["--tls-cert", "X"], "--tls-cert", "--tls-key")

    def test_passwordFileMissing(self) -> None:
        self.assertUsageError(
            ["--password-file", "/nonexistent"],
            "--password-file",
            "/nonexistent",
            "No such file or directory",
        )

    def test_logLevelUnknown(self) -> None:
        self.assertUsageError(["--log-level", "loud"], "--log-level", "loud")

    def test_networkFilesystemsUnknown(self) -> None:
        self.assertUsageError(
            [],
            "HAVEN_AGENT_NETWORK_FILESYSTEMS",
            "maybe",
            env={"HAVEN_AGENT_NETWORK_FILESYSTEMS": "maybe"},
        )


class StartsTests(AgentProcessCase):
    """
    What must not be refused.
    """

    def test_version(self) -> None:
        result = subprocess.run(
            twistd_argv("haven-agent", "--version"),
            env=clean_agent_env(),
            cwd=self.tmp,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=PROCESS_TIMEOUT,
        )
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertNoTraceback(result)
        self.assertEqual(result.stderr, "")
        pattern = (
            rf"haven-agent {re.escape(__version__)} \(Twisted "
            rf"{re.escape(twisted.__version__)}, Python "
            rf"{re.escape(platform.python_version())}, OpenSSL \S[^()]*\)"
        )
        self.assertRegex(result.stdout, rf"\A{pattern}\n\Z")

    def test_networkFilesystemsOn(self) -> None:
        log = os.path.join(self.tmp, "agent.log")
        argv = self.agentArgv(LOOPBACK_ANY_PORT)
        argv[argv.index("haven-agent") : argv.index("haven-agent")] = [
            "--logfile",
            log,
        ]
        with open(os.path.join(self.tmp, "stdio"), "w+") as stdio:
            process = subprocess.Popen(
                argv,
                env=clean_agent_env(HAVEN_AGENT_NETWORK_FILESYSTEMS="on"),
                cwd=self.tmp,
                stdin=subprocess.DEVNULL,
                stdout=stdio,
                stderr=subprocess.STDOUT,
            )
            self.addCleanup(stop_process, process, 10.0)
            wait_for_line(self, process, log, "serving Docker API")
            status = stop_agent(self, process)
            stdio.seek(0)
            output = stdio.read()
        with open(log, encoding="utf-8", errors="replace") as f:
            text = f.read()
        self.assertIn(status, (0, -signal.SIGTERM), output + text)
        self.assertEqual(output, "")
        self.assertNotIn("Traceback", text)


class ExplainStartupErrorsTests(SynchronousTestCase):
    """
    L{explain_startup_errors} as sys.excepthook.
    """

    def setUp(self) -> None:
        self.previousCalls: list[tuple] = []
        self.stderr = io.StringIO()
        # self.patch restores both when the test ends.
        self.patch(sys, "excepthook", lambda *a: self.previousCalls.append(a))
        self.patch(sys, "__stderr__", self.stderr)

    def raised(self, error: BaseException):
        try:
            raise error
        except BaseException as e:
            return type(e), e, e.__traceback__

    def test_startupErrorIsOneLine(self) -> None:
        explain_startup_errors()
        sys.excepthook(*self.raised(StartupError("--listen: cannot listen on x")))
        self.assertEqual(
            self.stderr.getvalue(), "haven-agent: --listen: cannot listen on x\n"
        )
        self.assertEqual(self.previousCalls, [])

    def test_otherErrorsGoToThePreviousHook(self) -> None:
        explain_startup_errors()
        raised = self.raised(ValueError("a bug"))
        sys.excepthook(*raised)
        self.assertEqual(self.stderr.getvalue(), "")
        self.assertEqual(self.previousCalls, [raised])

    def test_installedOnce(self) -> None:
        explain_startup_errors()
        hook = sys.excepthook
        explain_startup_errors()
        self.assertIs(sys.excepthook, hook)
        sys.excepthook(*self.raised(StartupError("once")))
        self.assertEqual(self.stderr.getvalue(), "haven-agent: once\n")

    def test_withoutOriginalStandardError(self) -> None:
        self.patch(sys, "__stderr__", None)
        self.patch(sys, "stderr", self.stderr)
        explain_startup_errors()
        sys.excepthook(*self.raised(StartupError("no __stderr__")))
        self.assertEqual(self.stderr.getvalue(), "haven-agent: no __stderr__\n")
