"""End-to-end tests: real clients -> real agent process -> real dockerd.

The agent runs as `twistd -n haven-agent` (see tests/e2e_agent.py) in front of
a private dockerd started once per test run (tests/realdockerd.py).  The
clients are the real docker CLI, docker-py and curl.  Where it matters, the
same command also runs directly against dockerd's socket and the outputs are
compared.

The only skip: the machine cannot run dockerd (DockerdUnavailable).  All
subprocesses have timeouts, so a hanging agent fails a test instead of
hanging the run.
"""

from __future__ import annotations

import hashlib
import json
import os
import queue
import re
import secrets
import subprocess
import threading
import time
import unittest

from twisted.trial.unittest import SynchronousTestCase

from tests.e2e_agent import (
    AgentProcess,
    AgentStartError,
    agent_env,
    popen_until_cleanup,
    read_until_closed,
    twistd_argv,
)
from tests.realdockerd import IMAGE, DockerdUnavailable, output_tail, shared_dockerd

TIMEOUT = 120.0

#: What an agent must never log while serving these tests.
AGENT_LOG_PROBLEMS = re.compile(
    r"Unhandled Error|Unhandled error in Deferred|Traceback \(most recent call last\)"
)

#: Shared agents by their extra arguments, and why one could not start.
_agents: dict[tuple[str, ...], AgentProcess] = {}
_agent_errors: dict[tuple[str, ...], str] = {}
_agent_lock = threading.Lock()


def _stop_agents() -> None:
    while _agents:
        _, agent = _agents.popitem()
        agent.cleanup()


def shared_agent(dockerd, extra_args: tuple[str, ...] = ()) -> AgentProcess:
    """One agent process per set of extra arguments, started on first use."""
    with _agent_lock:
        if extra_args in _agents:
            return _agents[extra_args]
        if extra_args in _agent_errors:
            raise AgentStartError(_agent_errors[extra_args])
        if not _agents:
            import atexit

            # Registered after shared_dockerd()'s hook: atexit runs it first.
            atexit.register(_stop_agents)
        agent = AgentProcess(dockerd.socket_path, extra_args=extra_args)
        try:
            agent.start()
        except AgentStartError as e:
            _agent_errors[extra_args] = str(e)
            agent.cleanup()
            raise
        _agents[extra_args] = agent
        return agent


class _LineReader:
    """Collect (monotonic time, line) from a pipe on a thread."""

    def __init__(self, pipe) -> None:
        self.lines: queue.Queue = queue.Queue()
        self.seen: list[tuple[float, str]] = []
        self._thread = threading.Thread(
            target=self._read_lines, args=(pipe,), daemon=True
        )
        self._thread.start()

    def _read_lines(self, pipe) -> None:
        try:
            for raw in iter(pipe.readline, b""):
                line = raw.decode(errors="replace").rstrip("\n")
                self.lines.put((time.monotonic(), line))
        except (OSError, ValueError):  # pipe closed by the test's cleanup
            pass
        self.lines.put(None)

    def wait_for(self, predicate, timeout: float) -> bool:
        """Read until predicate(line) is true; False on timeout or EOF."""
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            try:
                item = self.lines.get(timeout=remaining)
            except queue.Empty:
                return False
            if item is None:
                self.lines.put(None)
                return False
            self.seen.append(item)
            if predicate(item[1]):
                return True

    def drain(self, timeout: float) -> None:
        """Read until EOF (or timeout)."""
        self.wait_for(lambda line: False, timeout)


class E2ETestCase(SynchronousTestCase):
    """Base: a shared dockerd, a shared agent, and command helpers."""

    #: Extra arguments of the agent these tests run against.
    agentArgs: tuple[str, ...] = ()

    def setUp(self) -> None:
        try:
            self.dockerd = shared_dockerd()
        except DockerdUnavailable as e:
            if os.environ.get("HAVEN_AGENT_REQUIRE_DOCKERD"):
                # CI installs dockerd: there, not starting it is a failure.
                self.fail(f"a real dockerd is required here: {e}")
            raise unittest.SkipTest(str(e)) from None
        try:
            self.agent = shared_agent(self.dockerd, self.agentArgs)
        except AgentStartError as e:
            self.fail(f"the agent did not start:\n{e}")
        if not self.agent.is_running():
            self.fail(f"the agent process is gone:\n{self.agent.logs()}")
        # Runs last (cleanups are LIFO): the agent must not have logged an
        # unhandled error while serving this test, even if the clients saw
        # the right bytes.
        self.addCleanup(self._check_agent_log, self.agent.log_size())

    def _check_agent_log(self, offset: int) -> None:
        time.sleep(0.3)  # let connection-closing log lines arrive
        new = self.agent.read_log(offset)
        match = AGENT_LOG_PROBLEMS.search(new)
        if match:
            start = max(0, new.rfind("\n", 0, max(0, match.start() - 600)))
            self.fail(
                "the client-side checks passed, but the agent logged an unhandled "
                f"error during this test ({self.agent.log_path}):\n"
                f"{output_tail(new[start:start + 4000], 4000)}"
            )
        if not self.agent.is_running():
            self.fail(f"the agent process died during this test:\n{self.agent.logs()}")

    # -- helpers ------------------------------------------------------------

    def unique(self, what: str) -> str:
        return f"hve2e-{what}-{secrets.token_hex(4)}"

    def agent_log_tail(self) -> str:
        return output_tail(self.agent.logs(), 4000)

    def _run_cmd(self, argv, env, input, timeout, what) -> subprocess.CompletedProcess:
        kwargs = (
            {"input": input} if input is not None else {"stdin": subprocess.DEVNULL}
        )
        try:
            return subprocess.run(
                argv,
                capture_output=True,
                env=env,
                timeout=timeout,
                check=False,
                **kwargs,
            )
        except subprocess.TimeoutExpired as e:
            self.fail(
                f"{what} {' '.join(argv)} did not finish within {timeout:.0f} s\n"
                f"stdout so far: {output_tail(e.stdout or b'')!r}\n"
                f"stderr so far: {output_tail(e.stderr or b'')!r}\n"
                f"{self.agent_log_tail()}"
            )

    def via_agent(
        self,
        *args: str,
        input: bytes | None = None,
        timeout: float = TIMEOUT,
        password: str | None = None,
        extra_env: dict[str, str] | None = None,
        check: bool = True,
    ) -> subprocess.CompletedProcess:
        """Run the docker CLI through the agent."""
        env, cli = self.agent.docker_cli_env_and_args(password)
        if extra_env:
            env.update(extra_env)
        argv = ["docker", *cli, *args]
        proc = self._run_cmd(argv, env, input, timeout, "through the agent:")
        if check and proc.returncode != 0:
            self.fail(
                f"through the agent: docker {' '.join(args)} failed with status "
                f"{proc.returncode}\nstdout: {output_tail(proc.stdout)!r}\n"
                f"stderr: {output_tail(proc.stderr)!r}\n{self.agent_log_tail()}"
            )
        return proc

    def agent_popen(self, *args: str) -> subprocess.Popen:
        env, cli = self.agent.docker_cli_env_and_args()
        return popen_until_cleanup(self, ["docker", *cli, *args], env)

    def direct_popen(self, *args: str) -> subprocess.Popen:
        return popen_until_cleanup(
            self, ["docker", *self.dockerd.cli_args(), *args], self.dockerd.cli_env()
        )

    def direct(self, *args: str, **kwargs) -> subprocess.CompletedProcess:
        """Run the docker CLI directly against dockerd's socket."""
        return self.dockerd.docker(*args, **kwargs)

    def remove_container_later(self, name: str) -> None:
        self.addCleanup(self.direct, "rm", "-f", name, check=False)

    def remove_image_later(self, ref: str) -> None:
        self.addCleanup(self.direct, "rmi", "-f", ref, check=False)

    def start_sleeper(self) -> str:
        """A running container (started directly), removed after the test."""
        name = self.unique("sleeper")
        self.remove_container_later(name)
        self.direct(
            "run", "-d", "--name", name, "--network", "none", IMAGE, "sleep", "600"
        )
        return name


class DockerCLITests(E2ETestCase):
    """The real docker CLI through the agent."""

    def test_version(self) -> None:
        """`docker version` shows the server, API 1.41 negotiated."""
        proc = self.via_agent("version")
        out = proc.stdout.decode()
        self.assertIn("Server:", out)
        server_part = out.split("Server:", 1)[1]
        self.assertRegex(
            server_part, rf"API version:\s+{re.escape(self.dockerd.api_version)}\b"
        )
        self.assertIn(self.dockerd.server_version, server_part)
        fmt = "{{.Client.APIVersion}} {{json .Server}}"
        via = self.via_agent("version", "--format", fmt).stdout.decode()
        direct = self.direct("version", "--format", fmt).stdout.decode()
        via_api, via_server = via.split(" ", 1)
        direct_api, direct_server = direct.split(" ", 1)
        self.assertEqual(via_api, self.dockerd.api_version)
        self.assertEqual(via_api, direct_api)
        self.assertEqual(json.loads(via_server), json.loads(direct_server))

    def test_info(self) -> None:
        """`docker info` shows the same daemon as the socket does."""
        out = self.via_agent("info").stdout.decode()
        self.assertIn("Server:", out)
        self.assertIn(f"Server Version: {self.dockerd.server_version}", out)
        fmt = "{{.ID}} {{.Name}} {{.ServerVersion}} {{.DockerRootDir}}"
        self.assertEqual(
            self.via_agent("info", "--format", fmt).stdout,
            self.direct("info", "--format", fmt).stdout,
        )

    def test_ps_all(self) -> None:
        """`docker ps -a` lists the same containers as on the socket."""
        name = self.unique("ps")
        self.remove_container_later(name)
        self.direct("create", "--name", name, "--network", "none", IMAGE, "true")
        fmt = "{{.ID}} {{.Names}} {{.Image}} {{.Command}}"
        via = self.via_agent("ps", "-a", "--no-trunc", "--format", fmt).stdout
        direct = self.direct("ps", "-a", "--no-trunc", "--format", fmt).stdout
        self.assertIn(name, via.decode())
        self.assertEqual(via, direct)
        self.assertIn(b"CONTAINER ID", self.via_agent("ps", "-a").stdout)

    def test_run_stdin_half_close(self) -> None:
        """`echo data | docker run -i ... sh -c 'cat; echo done'` prints both.

        The CLI half-closes (TLS close_notify) after stdin ends; the agent
        must pass that on as a write shutdown and keep relaying the output.
        """
        cmd = ["--network", "none", IMAGE, "sh", "-c", "cat; echo done"]
        name = self.unique("halfclose")
        self.remove_container_later(name)
        self.remove_container_later(name + "-d")
        direct = self.direct(
            "run",
            "-i",
            "--rm",
            "--name",
            name + "-d",
            *cmd,
            input=b"data\n",
            timeout=60,
        )
        self.assertEqual(direct.stdout, b"data\ndone\n")
        proc = self.via_agent(
            "run",
            "-i",
            "--rm",
            "--name",
            name,
            *cmd,
            input=b"data\n",
            timeout=60,
            check=False,
        )
        self.assertEqual(
            (proc.returncode, proc.stdout),
            (0, b"data\ndone\n"),
            f"stderr: {output_tail(proc.stderr)!r}",
        )

    def test_exec_without_stdin(self) -> None:
        """`docker exec C echo hi` prints hi; exit codes come through."""
        name = self.start_sleeper()
        proc = self.via_agent("exec", name, "echo", "hi", timeout=60)
        self.assertEqual(proc.stdout, b"hi\n")
        failing = self.via_agent(
            "exec",
            name,
            "sh",
            "-c",
            "echo out; echo err >&2; exit 3",
            timeout=60,
            check=False,
        )
        direct = self.direct(
            "exec",
            name,
            "sh",
            "-c",
            "echo out; echo err >&2; exit 3",
            timeout=60,
            check=False,
        )
        self.assertEqual(
            (failing.returncode, failing.stdout, failing.stderr),
            (direct.returncode, direct.stdout, direct.stderr),
        )
        self.assertEqual(failing.returncode, 3)

    def test_exec_with_stdin(self) -> None:
        """`echo abc | docker exec -i C cat` prints abc."""
        name = self.start_sleeper()
        proc = self.via_agent(
            "exec", "-i", name, "cat", input=b"abc\n", timeout=60, check=False
        )
        self.assertEqual(
            (proc.returncode, proc.stdout),
            (0, b"abc\n"),
            f"stderr: {output_tail(proc.stderr)!r}",
        )

    def test_logs_follow(self) -> None:
        """`docker logs -f` streams lines as they come and ends with the container."""
        name = self.unique("logs")
        self.remove_container_later(name)
        script = "for i in $(seq 1 10); do echo line$i; sleep 0.2; done"
        self.direct(
            "run", "-d", "--name", name, "--network", "none", IMAGE, "sh", "-c", script
        )
        running = self.direct(
            "inspect", "-f", "{{.State.Running}}", name
        ).stdout.strip()
        self.assertEqual(running, b"true", "the container ended before `logs -f` began")
        started = time.monotonic()
        proc = self.agent_popen("logs", "-f", name)
        reader = _LineReader(proc.stdout)
        reader.drain(timeout=60)
        try:
            rc = proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.fail(
                "`docker logs -f` did not end within 60 s of starting (the container "
                f"runs ~2 s); lines so far: {[line for _, line in reader.seen]}\n"
                f"{self.agent_log_tail()}"
            )
        stderr = proc.stderr.read()
        lines = [line for _, line in reader.seen]
        self.assertEqual(
            lines, [f"line{i}" for i in range(1, 11)], f"stderr: {stderr!r}"
        )
        self.assertEqual(rc, 0, f"stderr: {stderr!r}")
        # It ended because the container exited, not before.
        self.assertEqual(
            self.direct("inspect", "-f", "{{.State.Running}}", name).stdout.strip(),
            b"false",
        )
        # Streamed, not delivered in one piece at the end.
        first, last = reader.seen[0][0], reader.seen[-1][0]
        self.assertGreater(
            last - first,
            0.8,
            f"all lines arrived within {last - first:.2f} s "
            f"({last - started:.2f} s after start): not streamed",
        )
        self.assertEqual(
            self.via_agent("logs", name).stdout, self.direct("logs", name).stdout
        )

    def test_events_stream(self) -> None:
        """`docker events` streams container events as they happen."""
        fmt = "{{.Action}} {{.Actor.Attributes.name}}"
        via = self.agent_popen("events", "--filter", "type=container", "--format", fmt)
        direct = self.direct_popen(
            "events", "--filter", "type=container", "--format", fmt
        )
        via_lines, direct_lines = _LineReader(via.stdout), _LineReader(direct.stdout)

        # Wait until both streams are live: create probe containers until both
        # report one (events before the request was served are not replayed).
        probe_seen = {"via": False, "direct": False}
        deadline = time.monotonic() + 30
        while not all(probe_seen.values()) and time.monotonic() < deadline:
            probe = self.unique("probe")
            self.direct("create", "--name", probe, "--network", "none", IMAGE, "true")
            self.direct("rm", "-f", probe)
            for key, reader in (("via", via_lines), ("direct", direct_lines)):
                if not probe_seen[key]:
                    probe_seen[key] = reader.wait_for(
                        lambda line: line.startswith("create hve2e-probe-"), timeout=1.0
                    )
        self.assertTrue(
            probe_seen["direct"], "the direct `docker events` never reported a probe"
        )
        self.assertTrue(
            probe_seen["via"],
            f"`docker events` through the agent reported nothing in 30 s; got "
            f"{[line for _, line in via_lines.seen]},\n"
            f"{self.agent_log_tail()}",
        )

        name = self.unique("events")
        self.remove_container_later(name)
        self.direct("create", "--name", name, "--network", "none", IMAGE, "sleep", "60")
        self.direct("start", name)
        self.direct("rm", "-f", name)
        done = f"destroy {name}"
        got_via = via_lines.wait_for(lambda line: line == done, timeout=30)
        got_direct = direct_lines.wait_for(lambda line: line == done, timeout=30)
        actions_via = [
            line.split()[0] for _, line in via_lines.seen if line.endswith(" " + name)
        ]
        actions_direct = [
            line.split()[0]
            for _, line in direct_lines.seen
            if line.endswith(" " + name)
        ]
        self.assertTrue(got_direct, f"direct events: {actions_direct}")
        self.assertTrue(got_via, f"events through the agent for {name}: {actions_via}")
        self.assertEqual(actions_via, actions_direct)
        for action in ("create", "start", "die", "destroy"):
            self.assertIn(action, actions_via)
        self.assertLess(actions_via.index("create"), actions_via.index("start"))
        self.assertLess(actions_via.index("start"), actions_via.index("destroy"))
        self.assertIsNone(via.poll(), "`docker events` through the agent ended early")

    def test_cp_both_ways(self) -> None:
        """`docker cp` of a random 3 MiB file in and out keeps every byte."""
        name = self.start_sleeper()
        data = os.urandom(3 * 1024 * 1024)
        digest = hashlib.sha256(data).hexdigest()
        work = os.path.abspath(self.mktemp())
        os.makedirs(work)
        src = os.path.join(work, "in.bin")
        with open(src, "wb") as f:
            f.write(data)
        self.via_agent("cp", src, f"{name}:/in.bin")
        inside_via = self.via_agent("exec", name, "sha256sum", "/in.bin").stdout
        inside_direct = self.direct("exec", name, "sha256sum", "/in.bin").stdout
        self.assertEqual(inside_via, inside_direct)
        self.assertEqual(inside_via.split()[0].decode(), digest)
        out_via = os.path.join(work, "out-via.bin")
        out_direct = os.path.join(work, "out-direct.bin")
        self.via_agent("cp", f"{name}:/in.bin", out_via)
        self.direct("cp", f"{name}:/in.bin", out_direct)
        for path in (out_via, out_direct):
            with open(path, "rb") as f:
                self.assertEqual(hashlib.sha256(f.read()).hexdigest(), digest, path)

    def test_build_legacy(self) -> None:
        """A legacy-builder `docker build` works and the image runs."""
        token = secrets.token_hex(8)
        tag = f"hvtest/e2e-build-{token}:1"
        self.remove_image_later(tag)
        ctx = os.path.abspath(self.mktemp())
        os.makedirs(ctx)
        with open(os.path.join(ctx, "file"), "w") as f:
            f.write(f"content-{token}\n")
        with open(os.path.join(ctx, "Dockerfile"), "w") as f:
            f.write(f"FROM {IMAGE}\nCOPY file /file\nRUN cat /file\n")
        proc = self.via_agent(
            "build", "-t", tag, ctx, extra_env={"DOCKER_BUILDKIT": "0"}
        )
        out = proc.stdout.decode()
        self.assertIn(f"content-{token}", out)
        self.assertIn(f"Successfully tagged {tag}", out)
        self.direct("image", "inspect", tag)
        run = self.via_agent(
            "run", "--rm", "--network", "none", tag, "cat", "/file", timeout=60
        )
        self.assertEqual(run.stdout, f"content-{token}\n".encode())

    def test_save_and_load(self) -> None:
        """`docker save` is byte-identical; `docker load` restores an image."""
        via = self.via_agent("save", IMAGE).stdout
        direct = self.direct("save", IMAGE).stdout
        self.assertGreater(len(direct), 1024 * 1024)
        self.assertEqual(
            (len(via), hashlib.sha256(via).hexdigest()),
            (len(direct), hashlib.sha256(direct).hexdigest()),
        )

        tag = f"hvtest/e2e-load-{secrets.token_hex(4)}:1"
        self.remove_image_later(tag)
        self.direct("tag", IMAGE, tag)
        image_id = self.direct("image", "inspect", "-f", "{{.Id}}", tag).stdout.strip()
        saved = self.via_agent("save", tag).stdout
        self.via_agent("rmi", tag)
        gone = self.direct("image", "inspect", tag, check=False)
        self.assertNotEqual(gone.returncode, 0, "the tag survived `docker rmi`")
        loaded = self.via_agent("load", input=saved)
        self.assertIn(f"Loaded image: {tag}", loaded.stdout.decode())
        self.assertEqual(
            self.direct("image", "inspect", "-f", "{{.Id}}", tag).stdout.strip(),
            image_id,
        )

    def test_wrong_password_fails(self) -> None:
        """The CLI with a wrong password fails and says why."""
        wrong = "wrong-" + self.agent.password
        proc = self.via_agent("ps", password=wrong, check=False, timeout=60)
        output = (proc.stdout + proc.stderr).decode(errors="replace")
        self.assertNotEqual(proc.returncode, 0, output)
        self.assertNotIn("CONTAINER ID", output)
        # The agent's own 401 message, as curl sees it.
        curl = self._run_cmd(
            [*self.agent.curl_args(password=wrong), self.agent.https_url + "/_ping"],
            self.agent.curl_env(),
            None,
            60,
            "curl",
        )
        try:
            message = json.loads(curl.stdout)["message"]
        except (ValueError, KeyError, TypeError):
            message = None
        if not (
            re.search(r"(?i)\b401\b|unauthori[sz]ed", output)
            or (message and message in output)
        ):
            self.fail(
                f"the CLI output mentions neither 401/unauthorized nor the "
                f"agent's message {message!r}: {output!r}"
            )


class DockerPyTests(E2ETestCase):
    """docker-py through the agent."""

    def test_docker_py(self) -> None:
        client = self.agent.docker_client(self.dockerd.api_version)
        self.addCleanup(client.close)
        version = client.version()
        self.assertEqual(version["ApiVersion"], self.dockerd.api_version)
        self.assertEqual(version["Version"], self.dockerd.server_version)
        direct_info = json.loads(self.dockerd.api_request("GET", "/info")[1])
        self.assertEqual(client.info()["ID"], direct_info["ID"])

        name = self.unique("py")
        self.remove_container_later(name)
        self.direct("create", "--name", name, "--network", "none", IMAGE, "true")
        ids = {c.id for c in client.containers.list(all=True)}
        direct_ids = set(self.direct("ps", "-aq", "--no-trunc").stdout.decode().split())
        self.assertEqual(ids, direct_ids)
        self.assertIn(
            self.direct("inspect", "-f", "{{.Id}}", name).stdout.decode().strip(), ids
        )
        out = client.containers.run(IMAGE, "echo hi", remove=True, network_mode="none")
        self.assertEqual(out, b"hi\n")


class CurlTests(E2ETestCase):
    """curl through the agent, including authentication failures."""

    def curl(
        self, path: str, *extra: str, password: str | None = None, auth: bool = True
    ) -> subprocess.CompletedProcess:
        argv = [
            *self.agent.curl_args(password=password, auth=auth),
            *extra,
            self.agent.https_url + path,
        ]
        return self._run_cmd(argv, self.agent.curl_env(), None, 90, "curl")

    def assertJSONOK(self, proc: subprocess.CompletedProcess) -> dict:
        self.assertEqual(proc.returncode, 0, f"curl failed: {proc.stderr!r}")
        try:
            return json.loads(proc.stdout)
        except ValueError:
            self.fail(f"not JSON: {output_tail(proc.stdout)!r}")

    def test_version(self) -> None:
        data = self.assertJSONOK(self.curl("/version", "--fail"))
        status, direct = self.dockerd.api_request("GET", "/version")
        self.assertEqual(status, 200)
        self.assertEqual(data["ApiVersion"], self.dockerd.api_version)
        self.assertEqual(data, json.loads(direct))

    def test_versioned_info(self) -> None:
        path = f"/v{self.dockerd.api_version}/info"
        data = self.assertJSONOK(self.curl(path, "--fail"))
        direct = json.loads(self.dockerd.api_request("GET", path)[1])
        self.assertEqual(data["ID"], direct["ID"])
        self.assertEqual(data["ServerVersion"], self.dockerd.server_version)

    def _assert_unauthorized(self, **curl_kwargs) -> None:
        work = self.mktemp()
        os.makedirs(work)
        headers_path = os.path.join(work, "headers")
        body_path = os.path.join(work, "body")
        proc = self.curl(
            "/version",
            "-D",
            headers_path,
            "-o",
            body_path,
            "-w",
            "%{http_code}",
            **curl_kwargs,
        )
        self.assertEqual(proc.returncode, 0, f"curl failed: {proc.stderr!r}")
        self.assertEqual(proc.stdout, b"401")
        with open(headers_path, "rb") as f:
            headers = f.read().decode("latin-1")
        self.assertRegex(headers, r"^HTTP/1\.[01] 401")
        self.assertRegex(
            headers, r'(?im)^WWW-Authenticate:[ \t]*Basic realm="haven-agent"[ \t]*\r?$'
        )
        with open(body_path, "rb") as f:
            body = f.read()
        try:
            message = json.loads(body)["message"]
        except (ValueError, KeyError, TypeError):
            self.fail(f"401 body is not JSON with a message: {body!r}")
        self.assertIsInstance(message, str)
        self.assertTrue(message)
        self.assertNotIn(b"ApiVersion", body)

    def test_detached_exec_keeps_gating(self) -> None:
        """
        A detached exec start is answered without a hijack, so the next
        request on the same keep-alive connection must pass the gate again:
        with a wrong password it gets 401, not dockerd's answer.
        """
        name = self.start_sleeper()
        body = json.dumps({"Cmd": ["true"], "Detach": True}).encode()
        status, created = self.dockerd.api_request(
            "POST",
            f"/containers/{name}/exec",
            body=body,
            headers={"Content-Type": "application/json"},
        )
        self.assertEqual(status, 201, created)
        exec_id = json.loads(created)["Id"]
        wrong = [
            (
                arg
                if not arg.startswith(self.agent.user + ":")
                else f"{self.agent.user}:not-{self.agent.password}"
            )
            for arg in self.agent.curl_args()
        ]
        argv = [
            *self.agent.curl_args(),
            "-X",
            "POST",
            "-H",
            "Content-Type: application/json",
            "-d",
            '{"Detach": true}',
            "-o",
            "/dev/null",
            "-w",
            "%{http_code} %{num_connects}\n",
            self.agent.https_url + f"/exec/{exec_id}/start",
            "--next",
            *wrong[1:],
            "-o",
            "/dev/null",
            "-w",
            "%{http_code} %{num_connects}\n",
            self.agent.https_url + "/containers/json",
        ]
        proc = self._run_cmd(argv, self.agent.curl_env(), None, 90, "curl")
        self.assertEqual(proc.returncode, 0, proc.stderr)
        first, second = (
            proc.stdout.decode().split()[0::2],
            proc.stdout.decode().split()[1::2],
        )
        self.assertEqual(first, ["200", "401"], proc.stdout)
        self.assertEqual(second, ["1", "0"], "the second request reused the connection")

    def test_pipelined_upgrade_answered_plainly_keeps_gating(self) -> None:
        """
        In one TLS write: a ping with credentials, a ping asking for an
        upgrade (with credentials), then a volume create with none. dockerd
        answers both pings 200 (nothing is hijacked), so the create is gated
        and refused 401; dockerd's own socket shows no such volume.
        """
        volume = self.unique("volume")
        self.addCleanup(self.direct, "volume", "rm", "-f", volume, check=False)
        auth = self.agent.authorization().encode()
        ping = b"GET /_ping HTTP/1.1\r\nHost: docker\r\nAuthorization: " + auth
        body = json.dumps({"Name": volume}).encode()
        data = (
            ping
            + b"\r\n\r\n"
            + ping
            + b"\r\nConnection: Upgrade\r\nUpgrade: tcp\r\n\r\n"
            + b"POST /volumes/create HTTP/1.1\r\nHost: docker\r\n"
            + b"Content-Type: application/json\r\n"
            + b"Content-Length: %d\r\n\r\n" % len(body)
            + body
        )
        with self.agent.tls_socket(timeout=30) as sock:
            sock.sendall(data)
            answers = read_until_closed(sock)
        statuses = re.findall(rb"HTTP/1\.1 (\d{3}) ", answers)
        self.assertEqual(statuses, [b"200", b"200", b"401"], answers[-600:])
        status, listed = self.dockerd.api_request("GET", "/volumes")
        self.assertEqual(status, 200)
        names = [v["Name"] for v in json.loads(listed)["Volumes"] or []]
        self.assertNotIn(volume, names, "the create without credentials ran")

    def test_wrong_password(self) -> None:
        self._assert_unauthorized(password="not-" + self.agent.password)

    def test_no_credentials(self) -> None:
        self._assert_unauthorized(auth=False)


class DockerCLIWorkersTests(DockerCLITests):
    """
    The docker CLI's tests again, against an agent serving from three
    processes (--workers 3): the CLI's connections land on all of them.
    """

    agentArgs = ("--workers", "3")


class DockerPyWorkersTests(DockerPyTests):
    agentArgs = ("--workers", "3")


class DropinTests(SynchronousTestCase):
    """twistd finds the haven-agent plugin in this checkout."""

    def test_help(self) -> None:
        elsewhere = os.path.abspath(self.mktemp())
        os.makedirs(elsewhere)
        proc = subprocess.run(
            twistd_argv("haven-agent", "--help"),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=agent_env(),
            cwd=elsewhere,
            timeout=60,
            check=False,
        )
        out = proc.stdout.decode(errors="replace")
        self.assertEqual(proc.returncode, 0, out)
        self.assertIn("--listen", out)
        self.assertIn("--docker", out)
