"""End-to-end hardening tests: attacks and faults against a real agent process
in front of a real, private dockerd.

- mutual TLS with the real docker CLI (`--tls-client-ca`, `--auth cert|both`)
  and what the access log says about who did it;
- the read-only account;
- `/_agent/health` without credentials, with dockerd up and down;
- password guessing (throttle, warning, the right password never delayed);
- faults: dockerd restarted under open streams, dockerd's socket missing or
  stale, SIGTERM with an open stream, garbage / plain HTTP / HTTP/2 on the TLS
  port, silent connections, the cap on unauthenticated connections.

The agents are separate `twistd -n haven-agent` processes (tests/e2e_agent.py),
one per configuration.  Most tests use the per-run shared dockerd
(tests/realdockerd.py); the tests that stop and start dockerd use a second
private dockerd of their own, so the shared one is never disturbed.

The only skip: the machine cannot run dockerd (DockerdUnavailable), and not
even that when HAVEN_AGENT_REQUIRE_DOCKERD is set.  Every subprocess and every
socket has a timeout, so a hanging agent fails a test instead of hanging the
run.
"""

from __future__ import annotations

import atexit
import json
import os
import re
import secrets
import signal
import socket
import ssl
import subprocess
import threading
import time

from twisted.trial.unittest import SynchronousTestCase

from tests.e2e_agent import (
    AgentProcess,
    AgentStartError,
    make_ca,
    make_client_certificate,
    popen_until_cleanup,
    read_until_closed,
)
from tests.realdockerd import (
    IMAGE,
    STOP_TIMEOUT,
    DockerdUnavailable,
    RealDockerd,
    clean_docker_env,
    output_tail,
    require,
    shared_dockerd,
)

TIMEOUT = 60.0

#: What an agent must never log.
AGENT_LOG_PROBLEMS = re.compile(
    r"Unhandled Error|Unhandled error in Deferred|Traceback \(most recent call last\)"
)

#: An access-log line of the text log (twistd's format).
_TEXT_REQUEST = re.compile(
    r"^\S+ \[haven_agent\.requests#\w+\] (?P<peer>\S+) (?P<user>\S+) "
    r"(?P<method>\S+) (?P<path>\S+): (?P<outcome>[^;\n]*)"
)


# -- a second private dockerd that may be stopped and started again -----------


class RestartableDockerd(RealDockerd):
    """
    A private dockerd (same command line as RealDockerd) that can be stopped
    and started again with the same socket path, data root and exec root.
    """

    def _argv(self) -> list[str]:
        return self.dockerd_argv(self.check_capabilities())

    def is_up(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def stop_daemon(self) -> None:
        """SIGTERM dockerd and wait for it; everything on disk stays."""
        proc = self.process
        if proc is None:
            return
        pid = self._daemon_pid() or proc.pid
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        try:
            proc.wait(STOP_TIMEOUT + 30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)
            raise AssertionError(
                f"dockerd did not stop within {STOP_TIMEOUT + 30:.0f} s of SIGTERM; "
                f"log:\n{self._log_tail()}"
            ) from None
        self.process = None

    def start_daemon(self) -> None:
        """Start dockerd again on the same socket and roots; wait for /_ping."""
        if self.is_up():
            return
        if self._log_file is None or self._log_file.closed:
            self._log_file = open(self.log_path, "ab")
        started = time.monotonic()
        self.process = subprocess.Popen(
            self._argv(),
            stdin=subprocess.DEVNULL,
            stdout=self._log_file,
            stderr=subprocess.STDOUT,
            env=clean_docker_env(),
            start_new_session=True,
        )
        deadline = started + 60
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                break
            if os.path.exists(self.socket_path):
                try:
                    status, body = self.api_request("GET", "/_ping", timeout=2.0)
                    if status == 200 and body == b"OK":
                        return
                except OSError:
                    pass
            time.sleep(0.1)
        raise AssertionError(
            f"dockerd did not come back on {self.socket_path}; log:\n"
            f"{self._log_tail()}"
        )


_faults_dockerd: RestartableDockerd | None = None
_faults_error: DockerdUnavailable | None = None
_faults_lock = threading.Lock()


def _stop_faults_dockerd() -> None:
    global _faults_dockerd
    with _faults_lock:
        daemon, _faults_dockerd = _faults_dockerd, None
    if daemon is not None:
        daemon.stop()


def faults_dockerd() -> RestartableDockerd:
    """The module's restartable dockerd, started on first use."""
    global _faults_dockerd, _faults_error
    with _faults_lock:
        if _faults_dockerd is not None:
            return _faults_dockerd
        if _faults_error is not None:
            raise DockerdUnavailable(str(_faults_error))
        daemon = RestartableDockerd()
        try:
            daemon.start()
        except DockerdUnavailable as e:
            _faults_error = e
            raise
        atexit.register(_stop_faults_dockerd)
        _faults_dockerd = daemon
        return daemon


# -- helpers ------------------------------------------------------------------


class _Lines:
    """Collect the lines of a pipe on a thread."""

    def __init__(self, pipe) -> None:
        self.lines: list[str] = []
        self._cond = threading.Condition()
        self.eof = False
        threading.Thread(target=self._read, args=(pipe,), daemon=True).start()

    def _read(self, pipe) -> None:
        try:
            for raw in iter(pipe.readline, b""):
                with self._cond:
                    self.lines.append(raw.decode(errors="replace").rstrip("\n"))
                    self._cond.notify_all()
        except (OSError, ValueError):
            pass
        with self._cond:
            self.eof = True
            self._cond.notify_all()

    def wait_for(self, predicate, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                if any(predicate(line) for line in self.lines):
                    return True
                remaining = deadline - time.monotonic()
                if remaining <= 0 or self.eof:
                    return False
                self._cond.wait(remaining)


def _http_body(response: bytes) -> bytes:
    return response.partition(b"\r\n\r\n")[2]


class HardeningCase(SynchronousTestCase):
    """Agents started per test, command helpers, and log checks."""

    def setUp(self) -> None:
        self.dockerd = require(shared_dockerd)

    # -- agents ---------------------------------------------------------------

    def start_agent(
        self,
        *extra_args: str,
        docker_socket: str | None = None,
        expect_running: bool = True,
    ) -> AgentProcess:
        """A new agent; stopped after the test, whose log must stay clean."""
        agent = AgentProcess(
            docker_socket or self.dockerd.socket_path, extra_args=extra_args
        )
        self.addCleanup(agent.cleanup)
        try:
            agent.start()
        except AgentStartError as e:
            self.fail(f"the agent did not start:\n{e}")
        self.addCleanup(self._check_agent, agent, expect_running)
        return agent

    def agent_output(self, agent: AgentProcess) -> str:
        """Everything the agent logged: the twistd log and stdout (JSON)."""
        return agent.read_log() + agent.read_stdio()

    def _check_agent(self, agent: AgentProcess, expect_running: bool) -> None:
        time.sleep(0.3)  # let connection-closing lines arrive
        output = self.agent_output(agent)
        match = AGENT_LOG_PROBLEMS.search(output)
        if match:
            start = max(0, output.rfind("\n", 0, max(0, match.start() - 600)))
            self.fail(
                "the agent logged an unhandled error during this test:\n"
                f"{output_tail(output[start:start + 4000], 4000)}"
            )
        if expect_running and not agent.is_running():
            self.fail(f"the agent process died during this test:\n{agent.logs()}")

    def request_events(self, agent: AgentProcess) -> list[dict]:
        """
        The agent's access-log events (namespace haven_agent.requests):
        parsed JSON lines with --log-format json, else parsed text lines
        (where `auth` is only known from "stream opened (AUTH)" lines).
        """
        events = []
        for line in agent.read_stdio().splitlines():
            if not line.startswith("{"):
                continue
            try:
                event = json.loads(line)
            except ValueError:
                continue
            if event.get("namespace") == "haven_agent.requests" and "method" in event:
                # "stream opened" events carry `event` instead of `outcome`.
                event.setdefault("outcome", event.get("event", ""))
                events.append(event)
        if events:
            return events
        for line in agent.read_log().splitlines():
            m = _TEXT_REQUEST.match(line)
            if m is None:
                continue
            event = m.groupdict()
            opened = re.fullmatch(r"stream opened \((\S+)\)", event["outcome"])
            event["auth"] = opened.group(1) if opened else None
            event["text"] = line
            events.append(event)
        return events

    def wait_for_output(self, agent: AgentProcess, pattern: str, timeout: float):
        """Wait until the agent's log matches `pattern`; the match or None."""
        deadline = time.monotonic() + timeout
        while True:
            m = re.search(pattern, self.agent_output(agent))
            if m or time.monotonic() >= deadline:
                return m
            time.sleep(0.1)

    def container_events(self, agent: AgentProcess) -> tuple[subprocess.Popen, _Lines]:
        """
        `docker events` through `agent`, one line per container event in the
        form `stream_live` looks for, and the lines it has printed.
        """
        events = self.docker_popen(
            agent,
            "events",
            "--filter",
            "type=container",
            "--format",
            "{{.Action}} {{.Actor.Attributes.name}}",
        )
        return events, _Lines(events.stdout)

    def stream_live(self, lines: _Lines, dockerd=None) -> bool:
        """
        Does a `docker events --filter type=container --format '{{.Action}}
        {{.Actor.Attributes.name}}'` stream (`container_events`) report a
        probe container created now (retrying for up to 30 s)?
        """
        dockerd = dockerd or self.dockerd
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            probe = self.unique("probe")
            dockerd.docker(
                "create", "--name", probe, "--network", "none", IMAGE, "true"
            )
            dockerd.docker("rm", "-f", probe)
            if lines.wait_for(lambda line, p=probe: line == f"create {p}", 2):
                return True
        return False

    # -- clients ------------------------------------------------------------

    def run_cmd(self, argv, env=None, timeout: float = TIMEOUT, input=None):
        kwargs = (
            {"input": input} if input is not None else {"stdin": subprocess.DEVNULL}
        )
        try:
            return subprocess.run(
                argv,
                capture_output=True,
                env=env if env is not None else clean_docker_env(),
                timeout=timeout,
                check=False,
                **kwargs,
            )
        except subprocess.TimeoutExpired as e:
            self.fail(
                f"{' '.join(argv)} did not finish within {timeout:.0f} s\n"
                f"stdout: {output_tail(e.stdout or b'')!r}\n"
                f"stderr: {output_tail(e.stderr or b'')!r}"
            )

    def docker(
        self,
        agent: AgentProcess,
        *args: str,
        user: str | None = None,
        password: str | None = None,
        cert: tuple[str, str] | None = None,
        timeout: float = TIMEOUT,
    ) -> subprocess.CompletedProcess:
        """The docker CLI through `agent` (no credentials unless `password`)."""
        env, cli = agent.cli_env_and_args_as(
            user, password, *(cert if cert is not None else (None, None))
        )
        return self.run_cmd(["docker", *cli, *args], env=env, timeout=timeout)

    def docker_popen(self, agent: AgentProcess, *args: str) -> subprocess.Popen:
        env, cli = agent.cli_env_and_args_as(password=agent.password)
        return popen_until_cleanup(self, ["docker", *cli, *args], env)

    def curl(
        self,
        agent: AgentProcess,
        path: str,
        *extra: str,
        user: str | None = None,
        password: str | None = None,
    ) -> tuple[int, bytes, subprocess.CompletedProcess]:
        """(status, body, process) of one curl request; no credentials
        unless `password`."""
        return self._curl_result(
            self.run_cmd(
                self.curl_argv(agent, path, *extra, user=user, password=password)
            )
        )

    def curl_argv(self, agent, path, *extra, user=None, password=None) -> list[str]:
        argv = [
            "curl",
            "-sS",
            "--max-time",
            "60",
            "--cacert",
            agent.ca_path,
            "-w",
            "\n%{http_code}",
        ]
        if password is not None:
            argv += ["-u", f"{user or agent.user}:{password}"]
        return [*argv, *extra, agent.https_url + path]

    def _curl_result(self, proc):
        self.assertEqual(proc.returncode, 0, f"curl failed: {proc.stderr!r}")
        body, _, code = proc.stdout.rpartition(b"\n")
        return int(code), body, proc

    def assertJSONMessage(self, body: bytes, *needles: str) -> str:
        try:
            message = json.loads(body)["message"]
        except (ValueError, KeyError, TypeError):
            self.fail(f"not a JSON body with a message: {body!r}")
        self.assertIsInstance(message, str)
        for needle in needles:
            self.assertIn(needle, message)
        return message

    def assertDockerFailed(self, proc, *patterns: str) -> str:
        output = (proc.stdout + proc.stderr).decode(errors="replace")
        self.assertNotEqual(proc.returncode, 0, f"the command worked:\n{output}")
        for pattern in patterns:
            self.assertRegex(output, pattern)
        return output

    def assertDockerWorked(self, proc) -> str:
        output = (proc.stdout + proc.stderr).decode(errors="replace")
        self.assertEqual(proc.returncode, 0, f"the command failed:\n{output}")
        return proc.stdout.decode(errors="replace")

    def unique(self, what: str) -> str:
        return f"hvhard-{what}-{secrets.token_hex(4)}"


# -- 1. mutual TLS with the real docker CLI ------------------------------------


class MutualTLSTests(HardeningCase):
    """`--tls-client-ca` with `--auth cert` and `--auth both`."""

    def setUp(self) -> None:
        super().setUp()
        pki = os.path.abspath(self.mktemp())
        os.makedirs(pki)
        self.client_ca, client_ca_key = make_ca(pki, "client CA")
        other_ca, other_ca_key = make_ca(pki, "unrelated CA")
        self.ops = make_client_certificate(pki, self.client_ca, client_ca_key, "ops")
        self.stranger = make_client_certificate(pki, other_ca, other_ca_key, "ops")

    def start_mtls_agent(self, mode: str) -> AgentProcess:
        return self.start_agent(
            "--tls-client-ca", self.client_ca, "--auth", mode, "--log-format", "json"
        )

    def assertTLSRefused(self, proc) -> None:
        output = self.assertDockerFailed(proc, r"(?i)\btls: |certificate|handshake")
        self.assertNotIn("Server:", proc.stdout.decode(errors="replace"), output)

    def test_cert_mode(self) -> None:
        """
        --auth cert: a certificate of the client CA alone lets the docker CLI
        in (config without credentials); no certificate, or one of another
        CA, fails at TLS; the log names "ops" and the method "cert".
        """
        agent = self.start_mtls_agent("cert")
        out = self.assertDockerWorked(self.docker(agent, "version", cert=self.ops))
        server = out.split("Server:", 1)[-1]
        self.assertIn(self.dockerd.server_version, server, out)
        out = self.assertDockerWorked(self.docker(agent, "ps", cert=self.ops))
        self.assertIn("CONTAINER ID", out)
        run = self.docker(
            agent,
            "run",
            "--rm",
            "--network",
            "none",
            IMAGE,
            "echo",
            "hi",
            cert=self.ops,
        )
        self.assertEqual(self.assertDockerWorked(run), "hi\n")

        # No client certificate (the admin password does not help).
        self.assertTLSRefused(self.docker(agent, "version", password=agent.password))
        self.assertTLSRefused(self.docker(agent, "ps"))
        # A certificate for "ops" from another CA.
        self.assertTLSRefused(self.docker(agent, "version", cert=self.stranger))
        # curl too, with the right password and no certificate.
        curl = self.run_cmd(
            [
                "curl",
                "-sS",
                "--max-time",
                "30",
                "--cacert",
                agent.ca_path,
                "-u",
                f"admin:{agent.password}",
                agent.https_url + "/version",
            ]
        )
        self.assertNotEqual(curl.returncode, 0, curl.stdout)
        self.assertNotIn(b"ApiVersion", curl.stdout)

        # Every request the agent saw came with the "ops" certificate: those
        # without one (or with a stranger's) never got past TLS.
        time.sleep(0.3)
        events = self.request_events(agent)
        self.assertTrue(events, "no request in the log")
        for event in events:
            self.assertEqual(event["user"], "ops", event)
            self.assertFalse(event["outcome"].startswith("refused"), event)
            self.assertIn(event["auth"], ("cert", None), event)
        forwarded = events
        self.assertIn("cert", [e["auth"] for e in events], events)
        # The request line itself: PEER USER METHOD PATH: OUTCOME; ...
        self.assertTrue(
            any(
                re.search(
                    r"(^|\] )127\.0\.0\.1:\d+ ops GET /v[\d.]+/version: ", e["text"]
                )
                for e in forwarded
            ),
            [e["text"] for e in forwarded],
        )
        paths = [e["path"] for e in forwarded]
        self.assertTrue(any(p.endswith("/version") for p in paths), paths)
        self.assertTrue(any("/containers/json" in p for p in paths), paths)
        self.assertTrue(any("/attach?" in p for p in paths), paths)

    def test_both_mode(self) -> None:
        """
        --auth both: certificate + password works; the certificate without
        a password gets the agent's 401; the password without a certificate
        fails at TLS; the log says "cert+password".
        """
        agent = self.start_mtls_agent("both")
        out = self.assertDockerWorked(
            self.docker(agent, "version", cert=self.ops, password=agent.password)
        )
        self.assertIn(self.dockerd.server_version, out.split("Server:", 1)[-1])
        out = self.assertDockerWorked(
            self.docker(agent, "ps", cert=self.ops, password=agent.password)
        )
        self.assertIn("CONTAINER ID", out)

        self.assertDockerFailed(
            self.docker(agent, "ps", cert=self.ops),
            r"authentication required|401|[Uu]nauthori[sz]ed",
        )
        self.assertTLSRefused(self.docker(agent, "ps", password=agent.password))
        self.assertTLSRefused(
            self.docker(agent, "ps", cert=self.stranger, password=agent.password)
        )

        events = self.request_events(agent)
        forwarded = [e for e in events if not e["outcome"].startswith("refused")]
        refused = [e for e in events if e["outcome"].startswith("refused 401")]
        self.assertTrue(forwarded, events)
        self.assertTrue(refused, events)
        for event in forwarded:
            self.assertEqual(event["user"], agent.user, event)
            self.assertIn(event["auth"], ("cert+password", None), event)
        if any(e["auth"] is not None for e in forwarded):
            self.assertIn("cert+password", [e["auth"] for e in forwarded])

    def test_both_mode_log_names_certificate_holder(self) -> None:
        """
        --auth both: the access log names the certificate's holder ("ops")
        as well as the password user, so the audit trail says who it was.
        """
        agent = self.start_mtls_agent("both")
        self.assertDockerWorked(
            self.docker(agent, "version", cert=self.ops, password=agent.password)
        )
        events = [
            e
            for e in self.request_events(agent)
            if not e["outcome"].startswith("refused")
        ]
        self.assertTrue(events)
        for event in events:
            fields = {
                k: v for k, v in event.items() if k not in ("path", "time", "text")
            }
            self.assertRegex(
                json.dumps(fields),
                r"\bops\b",
                "the request event does not name the client certificate's holder",
            )


# -- 2. the read-only account -------------------------------------------------


class ReadOnlyTests(HardeningCase):
    """`--readonly-user viewer --readonly-password look`."""

    def setUp(self) -> None:
        super().setUp()
        self.agent = self.start_agent(
            "--readonly-user", "viewer", "--readonly-password", "look"
        )
        self.sleeper = self.unique("sleeper")
        self.addCleanup(self.dockerd.docker, "rm", "-f", self.sleeper, check=False)
        self.dockerd.docker(
            "run",
            "-d",
            "--name",
            self.sleeper,
            "--network",
            "none",
            IMAGE,
            "sleep",
            "600",
        )

    def viewer(self, *args: str, timeout: float = TIMEOUT):
        return self.docker(
            self.agent, *args, user="viewer", password="look", timeout=timeout
        )

    def assertNoContainer(self, name: str) -> None:
        gone = self.dockerd.docker("inspect", name, check=False)
        self.assertNotEqual(gone.returncode, 0, f"container {name} was created")

    def test_curl(self) -> None:
        """GET works for the viewer; POST, and a GET with Upgrade, get 403."""
        status, body, _ = self.curl(
            self.agent, "/containers/json", user="viewer", password="look"
        )
        self.assertEqual(status, 200, body)
        names = [n for c in json.loads(body) for n in c["Names"]]
        self.assertIn("/" + self.sleeper, names)

        name = self.unique("ro")
        for path in (
            f"/containers/create?name={name}",
            f"/v{self.dockerd.api_version}/containers/create?name={name}",
        ):
            status, body, _ = self.curl(
                self.agent,
                path,
                "-X",
                "POST",
                "-H",
                "Content-Type: application/json",
                "-d",
                json.dumps({"Image": IMAGE, "Cmd": ["true"]}),
                user="viewer",
                password="look",
            )
            self.assertEqual(status, 403, body)
            self.assertJSONMessage(body, "read-only")
            self.assertNoContainer(name)

        # A GET that asks for a raw stream is not a read.
        status, body, _ = self.curl(
            self.agent,
            f"/containers/{self.sleeper}/attach/ws?stream=1&stdin=1",
            "-H",
            "Upgrade: websocket",
            "-H",
            "Connection: Upgrade",
            "-H",
            "Sec-WebSocket-Version: 13",
            "-H",
            "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==",
            user="viewer",
            password="look",
        )
        self.assertEqual(status, 403, body)
        self.assertJSONMessage(body, "read-only")
        # The viewer's password does not work for the admin user name.
        status, body, _ = self.curl(
            self.agent, "/containers/json", user="admin", password="look"
        )
        self.assertEqual(status, 401, body)

    def test_docker_cli(self) -> None:
        """ps works for the viewer; run, exec and attach are refused."""
        fmt = "{{.ID}} {{.Names}}"
        via = self.assertDockerWorked(self.viewer("ps", "--no-trunc", "--format", fmt))
        direct = self.dockerd.docker("ps", "--no-trunc", "--format", fmt).stdout
        self.assertEqual(via, direct.decode())
        self.assertIn(self.sleeper, via)

        name = self.unique("ro-run")
        self.addCleanup(self.dockerd.docker, "rm", "-f", name, check=False)
        self.assertDockerFailed(
            self.viewer(
                "run", "--rm", "--name", name, "--network", "none", IMAGE, "true"
            ),
            r"read-only|403|[Ff]orbidden",
        )
        self.assertNoContainer(name)
        self.assertDockerFailed(
            self.viewer("exec", self.sleeper, "echo", "hi"), r"read-only|403"
        )
        self.assertDockerFailed(
            self.viewer("attach", "--no-stdin", self.sleeper, timeout=30),
            r"read-only|403",
        )
        self.assertDockerFailed(self.viewer("rm", "-f", self.sleeper), r"read-only")
        running = self.dockerd.docker(
            "inspect", "-f", "{{.State.Running}}", self.sleeper
        ).stdout.strip()
        self.assertEqual(running, b"true")

        # The admin still can.
        run = self.docker(
            self.agent,
            "exec",
            self.sleeper,
            "echo",
            "hi",
            password=self.agent.password,
        )
        self.assertEqual(self.assertDockerWorked(run), "hi\n")
        run = self.docker(
            self.agent,
            "run",
            "--rm",
            "--network",
            "none",
            IMAGE,
            "echo",
            "admin",
            password=self.agent.password,
        )
        self.assertEqual(self.assertDockerWorked(run), "admin\n")

        events = self.request_events(self.agent)
        refused = [e for e in events if e["outcome"].startswith("refused 403")]
        self.assertTrue(refused, events)
        for event in refused:
            self.assertEqual(event["user"], "viewer", event)


# -- 3. health ------------------------------------------------------------------


class HealthTests(HardeningCase):
    def test_health_without_credentials(self) -> None:
        """
        /_agent/health answers without credentials and says only ok/up;
        everything else, path tricks included, stays behind the gate.
        """
        agent = self.start_agent()
        status, body, _ = self.curl(agent, "/_agent/health")
        self.assertEqual(status, 200, body)
        self.assertEqual(json.loads(body), {"status": "ok", "docker": "up"})
        for path in (
            "/version",
            "/_agent/health/../../version",
            "/_agent/health/%2e%2e/%2e%2e/version",
            "/_agent/healthz",
        ):
            status, body, _ = self.curl(agent, path, "--path-as-is")
            self.assertEqual(status, 401, (path, body))
            self.assertNotIn(b"ApiVersion", body, path)
            self.assertJSONMessage(body)
        status, body, _ = self.curl(agent, "/_agent/health", "-X", "POST")
        self.assertEqual(status, 401, body)

    def test_health_with_docker_down(self) -> None:
        """
        Pointed at a socket that does not exist, the agent says
        degraded/down, and requests get a 502 naming the socket.
        """
        # Short: AF_UNIX paths are limited to 107 bytes (see the next test).
        missing = f"/tmp/hvhard-{secrets.token_hex(4)}/no-such.sock"
        agent = self.start_agent(docker_socket=missing)
        status, body, _ = self.curl(agent, "/_agent/health")
        self.assertEqual(status, 200, body)
        self.assertEqual(json.loads(body), {"status": "degraded", "docker": "down"})
        status, body, _ = self.curl(agent, "/version", password=agent.password)
        self.assertEqual(status, 502, body)
        self.assertJSONMessage(body, missing)
        self.assertDockerFailed(
            self.docker(agent, "version", password=agent.password), re.escape(missing)
        )

    def test_socket_path_too_long(self) -> None:
        """
        A --docker socket path longer than AF_UNIX allows (107 bytes) is
        refused at start-up, or answered with 502 at once; never a hang.
        """
        long_path = "/tmp/" + "x" * 120 + ".sock"
        agent = AgentProcess(long_path, extra_args=("--shutdown-grace", "0"))
        self.addCleanup(agent.cleanup)
        try:
            agent.start()
        except AgentStartError as e:
            # Refused at start-up: fine, if it says why.
            self.assertRegex(str(e), r"(?i)too long|10[78]")
            return
        proc = self.run_cmd(
            [
                *self.curl_argv(agent, "/version", password=agent.password)[:-1],
                "--max-time",
                "8",
                agent.https_url + "/version",
            ]
        )
        body, _, code = proc.stdout.rpartition(b"\n")
        self.assertEqual(code, b"502", f"curl: {proc.stderr!r}")
        self.assertJSONMessage(body, long_path)
        self.assertNotRegex(self.agent_output(agent), AGENT_LOG_PROBLEMS)


# -- 4. password guessing ----------------------------------------------------


class BruteForceTests(HardeningCase):
    def test_throttle(self) -> None:
        """
        Wrong passwords all get 401 (throttled, counted, warned about at the
        tenth); the right one right after gets 200 while refusals to the
        same address are still being delayed.
        """
        agent = self.start_agent()
        wrong = "guess-" + secrets.token_hex(4)
        for _ in range(6):
            status, body, _ = self.curl(agent, "/version", password=wrong)
            self.assertEqual(status, 401, body)
            self.assertJSONMessage(body, "wrong user name or password")
        # Four more at once: their delays run concurrently (the throttle
        # delays with timers, not by blocking).
        pending = [
            popen_until_cleanup(
                self,
                self.curl_argv(agent, "/version", password=wrong),
                clean_docker_env(),
            )
            for _ in range(4)
        ]
        warning = self.wait_for_output(
            agent, r"10 failed authentications from 127\.0\.0\.1\b[^\n]*", 30
        )
        self.assertIsNotNone(
            warning,
            f"no warning after 10 failures:\n{output_tail(self.agent_output(agent))}",
        )
        # Now the right password: answered, while the last refusals still wait.
        status, body, _ = self.curl(agent, "/version", password=agent.password)
        self.assertEqual(status, 200, body)
        self.assertEqual(json.loads(body)["ApiVersion"], self.dockerd.api_version)
        self.assertTrue(
            any(proc.poll() is None for proc in pending),
            "every delayed refusal was answered before the right password was: "
            "the right password waited behind them",
        )
        for proc in pending:
            try:
                out, err = proc.communicate(timeout=60)
            except subprocess.TimeoutExpired:
                self.fail("a delayed 401 did not come within 60 s")
            body, _, code = out.rpartition(b"\n")
            self.assertEqual(code, b"401", (out, err))
            self.assertJSONMessage(body, "wrong user name or password")
        refusals = [
            e
            for e in self.request_events(agent)
            if e["outcome"].startswith("refused 401")
        ]
        self.assertEqual(len(refusals), 10, refusals)


# -- 5. faults -----------------------------------------------------------------


class DockerdFaultTests(HardeningCase):
    """dockerd stopped and started under the agent (a private dockerd)."""

    def setUp(self) -> None:
        self.daemon = require(faults_dockerd)
        self.dockerd = self.daemon
        # Whatever happens, leave dockerd running for the next test.
        self.addCleanup(self.daemon.start_daemon)
        self.daemon.start_daemon()

    def remove_container(self, name: str) -> None:
        self.daemon.start_daemon()
        self.daemon.docker("rm", "-f", name, check=False)

    def version_works(self, agent: AgentProcess) -> None:
        out = self.assertDockerWorked(
            self.docker(agent, "version", password=agent.password)
        )
        self.assertIn(self.daemon.server_version, out.split("Server:", 1)[-1])

    def test_restart_with_open_streams(self) -> None:
        """
        `docker events` and `docker logs -f` through the agent end when
        dockerd restarts; the agent survives; requests work once it is back.
        """
        agent = self.start_agent(docker_socket=self.daemon.socket_path)
        name = self.unique("ticker")
        self.addCleanup(self.remove_container, name)
        self.daemon.docker(
            "run",
            "-d",
            "--name",
            name,
            "--network",
            "none",
            "--stop-timeout",
            "2",
            IMAGE,
            "sh",
            "-c",
            "trap 'exit 0' TERM; i=0; while true; do echo tick$i; i=$((i+1)); "
            "sleep 0.2; done",
        )
        logs = self.docker_popen(agent, "logs", "-f", name)
        events, event_lines = self.container_events(agent)
        log_lines = _Lines(logs.stdout)
        self.assertTrue(
            log_lines.wait_for(lambda line: line.startswith("tick"), 30),
            f"`docker logs -f` through the agent showed nothing (exit status "
            f"{logs.poll()})\n{output_tail(self.agent_output(agent))}",
        )
        self.assertTrue(
            self.stream_live(event_lines),
            f"`docker events` never went live: {event_lines.lines}",
        )

        self.daemon.stop_daemon()
        for what, proc in (("logs -f", logs), ("events", events)):
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                self.fail(
                    f"`docker {what}` through the agent still runs 30 s after "
                    f"dockerd stopped\n{output_tail(self.agent_output(agent))}"
                )
        self.assertTrue(agent.is_running(), agent.logs())
        self.daemon.start_daemon()
        self.version_works(agent)

        ended = {
            e["path"].split("?")[0].rsplit("/", 1)[-1]: e["outcome"]
            for e in self.request_events(agent)
            if e["method"] == "GET"
        }
        self.assertIn("events", ended, ended)
        self.assertIn("logs", ended, ended)

    def test_socket_missing_then_stale_then_back(self) -> None:
        """
        dockerd gone and its socket missing: 502 naming the socket and
        health degraded; a stale socket file in its place: the same; dockerd
        back: requests and health work again.
        """
        agent = self.start_agent(docker_socket=self.daemon.socket_path)
        self.version_works(agent)
        path = self.daemon.socket_path

        self.daemon.stop_daemon()
        if os.path.lexists(path):
            os.unlink(path)
        proc = self.docker(agent, "version", password=agent.password)
        self.assertDockerFailed(proc, re.escape(path))
        status, body, _ = self.curl(agent, "/version", password=agent.password)
        self.assertEqual(status, 502, body)
        self.assertJSONMessage(body, path)
        self.assertHealth(agent, "degraded", "down")

        # A socket file nobody listens on (as a crashed dockerd leaves it).
        stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        stale.bind(path)
        stale.close()
        try:
            status, body, _ = self.curl(agent, "/version", password=agent.password)
            self.assertEqual(status, 502, body)
            self.assertJSONMessage(body, path)
            self.assertDockerFailed(
                self.docker(agent, "ps", password=agent.password), re.escape(path)
            )
        finally:
            os.unlink(path)

        self.daemon.start_daemon()
        self.version_works(agent)
        self.assertHealth(agent, "ok", "up")
        self.assertTrue(agent.is_running())

    def assertHealth(self, agent: AgentProcess, status: str, docker: str) -> None:
        """The health answer becomes {status, docker} within a few seconds
        (it is cached for one)."""
        want = {"status": status, "docker": docker}
        deadline = time.monotonic() + 10
        while True:
            code, body, _ = self.curl(agent, "/_agent/health")
            self.assertEqual(code, 200, body)
            if json.loads(body) == want or time.monotonic() > deadline:
                break
            time.sleep(0.3)
        self.assertEqual(json.loads(body), want)


class ShutdownTests(HardeningCase):
    def test_sigterm_with_open_stream(self) -> None:
        """
        SIGTERM: the port closes at once, the open `docker events` gets the
        grace period, then it is closed and the agent exits.
        """
        agent = self.start_agent("--shutdown-grace", "2", expect_running=False)
        events, lines = self.container_events(agent)
        self.assertTrue(
            self.stream_live(lines), f"`docker events` never went live: {lines.lines}"
        )

        process = agent.process
        process.send_signal(signal.SIGTERM)
        # New connections are refused while the open stream still has its grace.
        refused = False
        stop_trying = time.monotonic() + 1.5
        while time.monotonic() < stop_trying and process.poll() is None:
            try:
                socket.create_connection(("127.0.0.1", agent.port), timeout=1).close()
            except ConnectionRefusedError:
                refused = process.poll() is None
                break
            except OSError:
                pass
            time.sleep(0.05)
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            self.fail(f"the agent still runs 10 s after SIGTERM:\n{agent.logs()}")
        try:
            events.wait(10)
        except subprocess.TimeoutExpired:
            self.fail("`docker events` still runs after the agent exited")
        self.assertTrue(refused, "a new connection was accepted after SIGTERM")

        output = self.agent_output(agent)
        closed = re.search(rf"Port {agent.port} Closed", output)
        closing = re.search(
            r"closing 1 connections? still open after 2(\.0)? s", output
        )
        self.assertIsNotNone(closed, output_tail(output))
        self.assertIsNotNone(closing, output_tail(output))
        self.assertLess(closed.start(), closing.start())
        closed_streams = [
            e for e in self.request_events(agent) if "/events" in e["path"]
        ]
        self.assertTrue(closed_streams, "the closed /events request was not logged")
        # ... as closed by the agent, not by dockerd or the client.
        self.assertRegex(closed_streams[-1]["outcome"], r"agent|stopping")


class HostileInputTests(HardeningCase):
    """What arrives on the TLS port that is not a client's request."""

    def setUp(self) -> None:
        super().setUp()
        self.agent = self.start_agent("--head-timeout", "2")

    def tcp(self) -> socket.socket:
        sock = self.agent.tcp_socket()
        self.addCleanup(sock.close)
        return sock

    def tls(self, alpn: list[str] | None = None) -> ssl.SSLSocket:
        sock = self.agent.tls_socket(alpn)
        self.addCleanup(sock.close)
        return sock

    def assertStillServes(self) -> None:
        self.assertTrue(self.agent.is_running(), self.agent.logs())
        status, body, _ = self.curl(
            self.agent, "/version", password=self.agent.password
        )
        self.assertEqual(status, 200, body)

    def closes(self, sock: socket.socket) -> bytes:
        try:
            return read_until_closed(sock)
        except TimeoutError:
            self.fail("the agent neither answered nor closed within 10 s")

    def test_garbage_before_tls(self) -> None:
        """Random bytes instead of a ClientHello: closed; still serving."""
        sock = self.tcp()
        sock.sendall(os.urandom(512))
        self.assertFalse(self.closes(sock).startswith(b"HTTP/"))
        self.assertStillServes()

    def test_plain_http_on_tls_port(self) -> None:
        """A plain-HTTP request on the TLS port: closed, no answer; still serving."""
        sock = self.tcp()
        sock.sendall(
            b"GET /version HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            + f"Authorization: {self.agent.authorization()}\r\n\r\n".encode()
        )
        data = self.closes(sock)
        self.assertNotIn(b"ApiVersion", data)
        self.assertFalse(data.startswith(b"HTTP/"), data)
        self.assertStillServes()

    def test_garbage_over_tls(self) -> None:
        """Garbage after a good handshake: 400 JSON and close."""
        sock = self.tls()
        sock.sendall(b"\x00\x01\x02\xffgarbage\r\n\r\n")
        data = self.closes(sock)
        self.assertTrue(data.startswith(b"HTTP/1.1 400 "), data)
        self.assertJSONMessage(_http_body(data))
        self.assertStillServes()

    def test_http2_preface_over_tls(self) -> None:
        """
        The HTTP/2 preface (ALPN offering h2 and http/1.1: the agent picks
        http/1.1): 400 JSON and close.  Offering only h2: the handshake
        fails, or the preface gets the same 400.
        """
        preface = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + bytes.fromhex(
            "000000040000000000"
        )
        sock = self.tls(["h2", "http/1.1"])
        self.assertEqual(sock.selected_alpn_protocol(), "http/1.1")
        sock.sendall(preface)
        data = self.closes(sock)
        self.assertTrue(data.startswith(b"HTTP/1.1 400 "), data)
        self.assertJSONMessage(_http_body(data), "HTTP/1.")
        try:
            sock = self.tls(["h2"])
        except (ssl.SSLError, ConnectionResetError):
            pass  # refused in the handshake: nothing to agree on
        else:
            sock.sendall(preface)
            data = self.closes(sock)
            self.assertTrue(data.startswith(b"HTTP/1.1 400 "), data)
        self.assertStillServes()

    def test_silent_and_slow_clients(self) -> None:
        """
        --head-timeout 2: a TCP connection without a handshake, a TLS
        connection without a request, and a half-sent head are all ended
        (the last with 408) within the bound; still serving.
        """
        silent_tcp = self.tcp()
        silent_tls = self.tls()
        slow = self.tls()
        slow.sendall(b"GET /version HTTP/1.1\r\nHost: x\r\n")
        self.assertEqual(self.closes(silent_tcp), b"")
        self.assertEqual(self.closes(silent_tls), b"")
        data = self.closes(slow)
        self.assertTrue(data.startswith(b"HTTP/1.1 408 "), data)
        self.assertStillServes()

    def test_tls_failures_logged(self) -> None:
        """Garbage and plain HTTP on the TLS port each leave a log line
        naming the peer."""
        ports = []
        for payload in (os.urandom(512), b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"):
            sock = self.tcp()
            ports.append(sock.getsockname()[1])
            sock.sendall(payload)
            self.closes(sock)
        for port in ports:
            self.assertIsNotNone(
                self.wait_for_output(self.agent, rf"127\.0\.0\.1:{port}\b", 3),
                f"nothing logged about the connection from port {port}:\n"
                f"{output_tail(self.agent_output(self.agent))}",
            )


class ConnectionLimitTests(HardeningCase):
    def test_unauthenticated_cap(self) -> None:
        """
        --max-unauthenticated 3: with three silent connections open, a
        fourth gets 503 JSON; an authenticated stream opened before is
        unaffected, and once the silent ones are gone requests work again.
        """
        agent = self.start_agent("--max-unauthenticated", "3")
        _, lines = self.container_events(agent)
        self.assertTrue(self.stream_live(lines), f"no events: {lines.lines}")
        silent = []
        for _ in range(3):
            sock = agent.tls_socket()
            self.addCleanup(sock.close)
            silent.append(sock)
        status, body, _ = self.curl(agent, "/version", password=agent.password)
        self.assertEqual(status, 503, body)
        self.assertJSONMessage(body)
        # The stream opened before still works.
        self.assertTrue(self.stream_live(lines), f"the stream stopped: {lines.lines}")
        for sock in silent:
            sock.close()
        deadline = time.monotonic() + 10
        while True:
            status, body, _ = self.curl(agent, "/version", password=agent.password)
            if status == 200 or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        self.assertEqual(status, 200, body)
