"""End-to-end tests: real clients -> real agent process -> real podman.

The agent runs as `twistd -n haven-agent` (tests/e2e_agent.py) in front of the
Docker-compatible API of a private `podman system service` started once per
test run (tests/realpodman.py).  The clients are the real docker CLI,
docker-py and curl; the helpers come from the dockerd suite
(tests/e2e/test_real_dockerd.py), whose `self.direct(...)` here runs the
docker CLI straight against podman's socket.  Claims about state (a
container made, removed, an image built) are checked there, not only through
the agent.  The reporter runs against the fake Haven master of
tests/fake_master.py.

What podman does differently from dockerd, as these tests see it:
`GET /_ping` carries `Libpod-Api-Version`; there is no `attach/ws` route (404,
passed through by the agent); the event of a removed container is `remove`
(dockerd: `destroy`) and `init` and `cleanup` events come too; imported
images are named `localhost/...`; `/info` answers a new `ID` on every call;
the name in `stats` lacks the leading `/`, so the docker CLI shows it with
its first character cut off.

The only skip: the machine cannot run podman (PodmanUnavailable), and not
even that when HAVEN_AGENT_REQUIRE_DOCKERD is set.  Containers run with
`--network none`.
"""

from __future__ import annotations

import atexit
import hashlib
import json
import os
import re
import secrets
import subprocess
import threading
import time
import unittest

from twisted.internet import defer, reactor
from twisted.internet.defer import inlineCallbacks
from twisted.trial.unittest import TestCase

from tests.e2e.test_real_dockerd import (
    AGENT_LOG_PROBLEMS,
    E2ETestCase,
    _LineReader,
)
from tests.e2e_agent import AgentProcess, AgentStartError
from tests.fake_master import FakeMaster, listen
from tests.realdockerd import output_tail
from tests.realpodman import IMAGE, PODMAN_IMAGE, PodmanUnavailable, shared_podman

#: `docker run` arguments before the command: the test image, no network
#: (podman's containers get none here).
NONET_IMAGE = ("--network", "none", IMAGE)

#: The headers of a WebSocket upgrade request.
WEBSOCKET_UPGRADE = (
    "Connection: Upgrade",
    "Upgrade: websocket",
    "Sec-WebSocket-Version: 13",
    "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==",
)

_agent_lock = threading.Lock()
#: The agent in front of the shared podman, or why it did not start.
_agent: list[AgentProcess | AgentStartError] = []


def _stop_agent() -> None:
    for agent in _agent:
        if isinstance(agent, AgentProcess):
            agent.cleanup()


def podman_or_skip(testcase):
    """The shared podman; a skip naming what is missing, or a failure in CI."""
    try:
        return shared_podman()
    except PodmanUnavailable as e:
        if os.environ.get("HAVEN_AGENT_REQUIRE_DOCKERD"):
            testcase.fail(f"a real podman is required here: {e}")
        raise unittest.SkipTest(str(e)) from None


def podman_agent(podman) -> AgentProcess:
    """One agent process in front of the shared podman, started on first use
    (and stopped at exit, before podman: atexit runs hooks last in, first out)."""
    with _agent_lock:
        if not _agent:
            atexit.register(_stop_agent)
            agent = AgentProcess(podman.socket_path)
            try:
                _agent.append(agent.start())
            except AgentStartError as e:
                agent.cleanup()
                _agent.append(e)
        found = _agent[0]
    if isinstance(found, AgentStartError):
        raise AgentStartError(str(found))
    if not found.is_running():
        raise AgentStartError(f"the agent process is gone:\n{found.logs()}")
    return found


class PodmanE2ETestCase(E2ETestCase):
    """The dockerd suite's helpers, with podman as the daemon."""

    def setUp(self) -> None:
        # The helpers inherited from the dockerd suite reach the daemon as
        # self.dockerd.
        self.dockerd = self.podman = podman_or_skip(self)
        try:
            self.agent = podman_agent(self.podman)
        except AgentStartError as e:
            self.fail(f"no agent in front of podman:\n{e}")
        # Last of the cleanups: nothing unhandled in the agent's log.
        self.addCleanup(self._check_agent_log, self.agent.log_size())

    def container_id(self, name: str) -> str:
        """The full id of container `name`, as podman's socket says."""
        status, body = self.podman.api_request("GET", f"/containers/{name}/json")
        self.assertEqual(status, 200, f"{name} is not on podman: {body!r}")
        return json.loads(body)["Id"]

    def assertNoContainer(self, name: str) -> None:
        status, body = self.podman.api_request("GET", f"/containers/{name}/json")
        self.assertEqual(status, 404, f"podman has a container {name}: {body[:300]!r}")

    def assertRan(self, proc, status: int, stdout: bytes) -> None:
        """`proc` exited with `status`, having printed `stdout`."""
        self.assertEqual(
            (proc.returncode, proc.stdout), (status, stdout), output_tail(proc.stderr)
        )

    def workdir(self, files: dict[str, str | bytes] | None = None) -> str:
        """A new directory holding `files` (name: content)."""
        path = os.path.abspath(self.mktemp())
        os.makedirs(path)
        for name, content in (files or {}).items():
            data = content.encode() if isinstance(content, str) else content
            with open(os.path.join(path, name), "wb") as f:
                f.write(data)
        return path

    def podman_ids(self) -> set[str]:
        return set(self.direct("ps", "-aq", "--no-trunc").stdout.decode().split())

    def curl(self, path: str, *extra: str, password: str | None = None):
        """curl through the agent (as admin, or with `password`)."""
        argv = [*self.agent.curl_args(password=password), *extra]
        argv.append(self.agent.https_url + path)
        return self._run_cmd(
            argv, env=self.agent.curl_env(), input=None, timeout=60, what="curl"
        )


class PodmanDockerCLITests(PodmanE2ETestCase):
    """The real docker CLI through the agent, in front of podman."""

    def test_version(self) -> None:
        """`docker version` shows podman, API 1.41; `_ping` says Libpod."""
        out = self.via_agent("version").stdout.decode()
        self.assertIn("Podman Engine", out.split("Server:", 1)[-1])
        fmt = "{{.Client.APIVersion}} {{json .Server}}"
        via = self.via_agent("version", "--format", fmt).stdout.decode().split(" ", 1)
        direct = self.direct("version", "--format", fmt).stdout.decode().split(" ", 1)
        self.assertEqual(via[0], self.podman.api_version)
        self.assertEqual(via[0], direct[0])
        self.assertEqual(json.loads(via[1]), json.loads(direct[1]))
        self.assertEqual(json.loads(via[1])["Version"], self.podman.server_version)
        headers = self.curl("/_ping", "-D", "-", "-o", os.devnull).stdout.decode()
        self.assertRegex(headers, r"^HTTP/1\.1 200")
        self.assertRegex(
            headers,
            rf"(?im)^Libpod-Api-Version:\s*{re.escape(self.podman.libpod_version)}\s*$",
        )

    def test_info(self) -> None:
        """`docker info` describes the private podman (its own storage root).

        Podman answers a new `ID` on every `/info`, so that is not compared.
        """
        out = self.via_agent("info").stdout.decode()
        self.assertIn(f"Server Version: {self.podman.server_version}", out)
        fmt = "{{.Name}} {{.ServerVersion}} {{.DockerRootDir}} {{.DefaultRuntime}}"
        via = self.via_agent("info", "--format", fmt).stdout
        self.assertEqual(via, self.direct("info", "--format", fmt).stdout)
        root = os.path.join(self.podman.tmpdir, "root")
        self.assertEqual(via.decode().split()[2:], [root, "runc"])

    def test_ps(self) -> None:
        """`docker ps -a` lists what podman's socket lists."""
        fmt = "{{.ID}} {{.Names}} {{.Image}} {{.Command}}"
        listing = ("ps", "--all", "--no-trunc", "--format", fmt)
        name = self.unique("ps")
        self.remove_container_later(name)
        self.direct("create", "--name", name, *NONET_IMAGE, "true")
        via = self.via_agent(*listing).stdout
        self.assertEqual(via, self.direct(*listing).stdout)
        self.assertIn(f"{self.container_id(name)} {name} {PODMAN_IMAGE} ", via.decode())
        self.assertIn(b"CONTAINER ID", self.via_agent("ps", "-a").stdout)

    def test_run_output(self) -> None:
        """`docker run` prints the output and passes the exit status on; with
        `--rm` podman then has no such container.

        On podman 4.3, `docker run --rm` exits 0 whatever the container's
        status, on podman's own socket too (its `wait?condition=removed`
        answers StatusCode 0): there the status is compared, not checked.
        """
        script = ["sh", "-c", "echo hello; echo oops >&2; exit 7"]
        name = self.unique("run")
        self.remove_container_later(name)
        proc = self.via_agent("run", "--name", name, *NONET_IMAGE, *script, check=False)
        self.assertRan(proc, 7, b"hello\n")
        self.assertEqual(proc.stderr, b"oops\n")
        state = self.direct("inspect", "-f", "{{.State.ExitCode}}", name).stdout
        self.assertEqual(state.strip(), b"7")

        removed = self.unique("run-rm")
        self.remove_container_later(removed)
        proc = self.via_agent("run", "--rm", "--name", removed, *NONET_IMAGE, *script)
        self.assertEqual((proc.stdout, proc.stderr), (b"hello\n", b"oops\n"))
        self.assertNoContainer(removed)
        direct = self.direct("run", "--rm", *NONET_IMAGE, *script, check=False)
        self.assertEqual(proc.returncode, direct.returncode)

    def test_run_stdin_half_close(self) -> None:
        """`echo data | docker run -i IMG sh -c 'cat; echo done'` prints both:
        stdin's end reaches podman as a write shutdown, its output still
        comes back."""
        name = self.unique("halfclose")
        self.remove_container_later(name)
        run = ["run", "-i", "--rm", "--name", name, *NONET_IMAGE]
        proc = self.via_agent(
            *run, "sh", "-c", "cat; echo done", input=b"data\n", check=False
        )
        self.assertRan(proc, 0, b"data\ndone\n")
        self.assertNoContainer(name)

    def test_exec_without_stdin(self) -> None:
        """`docker exec C ...`: output and exit status as on the socket."""
        name = self.start_sleeper()
        self.assertEqual(self.via_agent("exec", name, "echo", "hi").stdout, b"hi\n")
        script = ["sh", "-c", "echo out; echo err >&2; exit 3"]
        via = self.via_agent("exec", name, *script, check=False)
        direct = self.direct("exec", name, *script, check=False)
        self.assertEqual(
            (via.returncode, via.stdout, via.stderr), (3, b"out\n", b"err\n")
        )
        self.assertEqual(
            (via.returncode, via.stdout, via.stderr),
            (direct.returncode, direct.stdout, direct.stderr),
        )

    def test_exec_with_stdin(self) -> None:
        """`echo abc | docker exec -i C sh -c 'cat; exit 4'` prints abc, exits 4."""
        name = self.start_sleeper()
        proc = self.via_agent(
            "exec", "-i", name, "sh", "-c", "cat; exit 4", input=b"abc\n", check=False
        )
        self.assertRan(proc, 4, b"abc\n")

    def test_attach(self) -> None:
        """`docker attach` to a container waiting for input: it reads the
        line, answers, and its exit status comes back (and is podman's)."""
        name = self.unique("attach")
        self.remove_container_later(name)
        script = "read line; echo got $line; exit 5"
        self.direct("run", "-d", "-i", "--name", name, *NONET_IMAGE, "sh", "-c", script)
        proc = self.via_agent("attach", name, input=b"hello\n", check=False)
        self.assertRan(proc, 5, b"got hello\n")
        state = self.direct("inspect", "-f", "{{.State.ExitCode}}", name).stdout
        self.assertEqual(state.strip(), b"5")

    def test_logs_follow(self) -> None:
        """`docker logs -f` shows lines while the container runs and ends when
        it exits.

        The container prints two lines, then waits for a file that the test
        creates only once `logs -f` has shown both: so they were streamed,
        not sent at the end.
        """
        name = self.unique("logs")
        self.remove_container_later(name)
        script = (
            "echo before-1; echo before-2; "
            "while ! test -e /tmp/go; do sleep 0.1; done; echo after"
        )
        self.direct("run", "-d", "--name", name, *NONET_IMAGE, "sh", "-c", script)
        proc = self.agent_popen("logs", "-f", name)
        reader = _LineReader(proc.stdout)
        shown = reader.wait_for(lambda line: line == "before-2", timeout=60)
        self.assertTrue(
            shown,
            f"`docker logs -f` showed {[line for _, line in reader.seen]} of a "
            f"running container\n{self.agent_log_tail()}",
        )
        running = self.direct("inspect", "-f", "{{.State.Running}}", name).stdout
        self.assertEqual(running.strip(), b"true")
        self.assertIsNone(proc.poll(), "`docker logs -f` ended while it still runs")
        self.direct("exec", name, "sh", "-c", ": > /tmp/go")
        reader.drain(timeout=60)
        try:
            status = proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.fail(
                "`docker logs -f` did not end after the container did\n"
                + self.agent_log_tail()
            )
        self.assertEqual(
            [line for _, line in reader.seen], ["before-1", "before-2", "after"]
        )
        self.assertEqual(status, 0, output_tail(proc.stderr.read()))
        state = self.direct(
            "inspect", "-f", "{{.State.Running}} {{.State.ExitCode}}", name
        )
        self.assertEqual(state.stdout.split(), [b"false", b"0"])
        via, direct = self.via_agent("logs", name), self.direct("logs", name)
        self.assertEqual((via.stdout, via.stderr), (direct.stdout, direct.stderr))
        self.assertEqual(via.stdout, b"before-1\nbefore-2\nafter\n")

    def test_events_stream(self) -> None:
        """`docker events` streams a container's events as podman's socket does
        (podman says `remove` where dockerd says `destroy`)."""
        fmt = "{{.Action}} {{.Actor.Attributes.name}}"
        args = ("events", "--filter", "type=container", "--format", fmt)
        streams = {
            "through the agent": _LineReader(self.agent_popen(*args).stdout),
            "on podman's socket": _LineReader(self.direct_popen(*args).stdout),
        }
        # Events before a stream was served are not replayed: make probe
        # containers until both streams have shown one.
        live: set[str] = set()
        for _ in range(30):
            probe = self.unique("probe")
            self.direct("create", "--name", probe, *NONET_IMAGE, "true")
            self.direct("rm", probe)
            for where, reader in streams.items():
                if where not in live and reader.wait_for(
                    lambda line, p=probe: line == f"create {p}", timeout=1.0
                ):
                    live.add(where)
            if len(live) == len(streams):
                break
        self.assertEqual(live, set(streams), self.agent_log_tail())

        name = self.unique("events")
        self.remove_container_later(name)
        self.direct("run", "--name", name, *NONET_IMAGE, "true")
        self.direct("rm", name)
        actions = {}
        for where, reader in streams.items():
            removed = reader.wait_for(lambda line: line == f"remove {name}", 30)
            actions[where] = [
                line.split()[0] for _, line in reader.seen if line.endswith(" " + name)
            ]
            self.assertTrue(removed, f"events {where}: {actions[where]}")
        via = actions["through the agent"]
        self.assertEqual(via, actions["on podman's socket"])
        order = [via.index(action) for action in ("create", "start", "die", "remove")]
        self.assertEqual(order, sorted(order), via)

    def test_cp_both_ways(self) -> None:
        """`docker cp` in and out of a running container keeps every byte: a
        random 4 MiB file in, and out a file the container made from it."""
        data = os.urandom(4 << 20)
        work = self.workdir({"in.bin": data})
        name = self.start_sleeper()
        self.via_agent("cp", os.path.join(work, "in.bin"), f"{name}:/in.bin")
        held = self.direct("exec", name, "sha256sum", "/in.bin").stdout.split()[0]
        self.assertEqual(held.decode(), hashlib.sha256(data).hexdigest())
        self.direct("exec", name, "sh", "-c", "cat /in.bin /in.bin > /twice.bin")
        self.via_agent("cp", f"{name}:/twice.bin", work)
        with open(os.path.join(work, "twice.bin"), "rb") as f:
            copied = hashlib.sha256(f.read()).digest()
        self.assertEqual(copied, hashlib.sha256(data * 2).digest())

    def test_stats_no_stream(self) -> None:
        """`docker stats --no-stream` shows the container as on the socket.

        Podman's stats name lacks the leading `/`, so both CLIs show it with
        its first character cut off: compared, not checked.
        """
        name = self.start_sleeper()
        fmt = "{{.ID}} {{.PIDs}} {{.Name}}"
        via = self.via_agent("stats", "--no-stream", "--format", fmt, name)
        direct = self.direct("stats", "--no-stream", "--format", fmt, name)
        self.assertEqual(
            via.stdout.split()[:2], [self.container_id(name)[:12].encode(), b"1"]
        )
        self.assertEqual(via.stdout, direct.stdout)
        table = self.via_agent("stats", "--no-stream", name).stdout.decode()
        self.assertIn("MEM USAGE / LIMIT", table)

    def test_build_legacy(self) -> None:
        """A legacy-builder `docker build` FROM the local image; podman has the
        image (under docker.io/, as its Docker API names it) and it runs."""
        stamp = secrets.token_hex(8)
        tag = f"hvtest/e2e-podman-build-{stamp}:1"
        self.remove_image_later(tag)
        context = self.workdir(
            {
                "Dockerfile": f"FROM {IMAGE}\nCOPY stamp /stamp\nRUN cat /stamp\n",
                "stamp": f"built-{stamp}\n",
            }
        )
        build = ["build", "--network", "none", "-t", tag, context]
        out = self.via_agent(*build, extra_env={"DOCKER_BUILDKIT": "0"}).stdout.decode()
        self.assertIn(f"built-{stamp}", out, "the RUN step's output")
        self.assertIn(f"Successfully tagged {tag}", out)
        tags = self.direct("image", "inspect", "-f", "{{json .RepoTags}}", tag).stdout
        self.assertIn(f"docker.io/{tag}", json.loads(tags))
        run = self.via_agent("run", "--rm", "--network", "none", tag, "cat", "/stamp")
        self.assertEqual(run.stdout, f"built-{stamp}\n".encode())

    def test_wrong_password_creates_nothing(self) -> None:
        """With a wrong password `docker run` fails with the agent's 401, the
        raw create gets 401, and podman has made no container."""
        wrong = "wrong-" + self.agent.password
        name = self.unique("denied")
        self.remove_container_later(name)
        before = self.podman_ids()
        run = ["run", "-d", "--name", name, *NONET_IMAGE, "sleep", "60"]
        proc = self.via_agent(*run, password=wrong, check=False)
        output = (proc.stdout + proc.stderr).decode(errors="replace")
        self.assertNotEqual(proc.returncode, 0, output)
        create = json.dumps({"Image": IMAGE, "Cmd": ["true"]})
        post = ["-X", "POST", "-H", "Content-Type: application/json", "-d", create]
        path = f"/containers/create?name={name}"
        answer = self.curl(path, *post, "-w", "\n%{http_code}", password=wrong)
        body, _, code = answer.stdout.rpartition(b"\n")
        self.assertEqual(code, b"401", answer.stdout)
        message = json.loads(body)["message"]
        self.assertIn(message, output, "the CLI does not show the agent's 401")
        self.assertNoContainer(name)
        self.assertEqual(self.podman_ids(), before)

    def test_attach_ws_is_404(self) -> None:
        """Podman 4.3 has no `attach/ws` route: 404, passed through unchanged
        (for a container that exists)."""
        name = self.start_sleeper()
        path = f"/containers/{name}/attach/ws?stream=1&stdout=1"
        body_path = os.path.join(self.workdir(), "body")
        upgrade = [arg for header in WEBSOCKET_UPGRADE for arg in ("-H", header)]
        proc = self.curl(path, *upgrade, "-o", body_path, "-w", "%{http_code}")
        self.assertEqual(proc.stdout, b"404", proc.stderr)
        with open(body_path, "rb") as f:
            via_body = f.read()
        status, direct_body = self.podman.api_request("GET", path)
        self.assertEqual((status, via_body), (404, direct_body))
        self.assertNotIn(b"no such container", via_body)
        exists = self.curl(
            f"/containers/{name}/json", "-o", os.devnull, "-w", "%{http_code}"
        )
        self.assertEqual(exists.stdout, b"200")


class PodmanDockerPyTests(PodmanE2ETestCase):
    """docker-py through the agent, in front of podman."""

    def test_docker_py(self) -> None:
        client = self.agent.docker_client(self.podman.api_version)
        self.addCleanup(client.close)
        version = client.version()
        self.assertEqual(
            (version["ApiVersion"], version["Version"]),
            (self.podman.api_version, self.podman.server_version),
        )
        self.assertIn("Podman Engine", [c["Name"] for c in version["Components"]])

        name = self.unique("py")
        self.remove_container_later(name)
        labels = {"haven.test": "docker-py"}
        made = client.containers.run(
            IMAGE,
            "sleep 600",
            name=name,
            detach=True,
            network_mode="none",
            labels=labels,
        )
        self.assertEqual(made.id, self.container_id(name))
        listed = {c.id: c for c in client.containers.list(all=True)}
        self.assertEqual(set(listed), self.podman_ids())
        self.assertEqual(listed[made.id].labels, labels)
        self.assertEqual(listed[made.id].status, "running")
        made.remove(force=True)
        self.assertNoContainer(name)

        out = client.containers.run(IMAGE, "echo hi", remove=True, network_mode="none")
        self.assertEqual(out, b"hi\n")


class PodmanReporterTests(TestCase):
    """The reporter, with podman as the daemon, against the fake Haven master."""

    timeout = 180

    def setUp(self) -> None:
        self.podman = podman_or_skip(self)

    def run_container(self, what: str, *labels: str) -> tuple[str, str]:
        """A container started directly on podman, removed after the test;
        returns (name, id)."""
        name = f"hve2e-{what}-{secrets.token_hex(4)}"
        self.addCleanup(self.podman.docker, "rm", "-f", name, check=False)
        options = [arg for label in labels for arg in ("--label", label)]
        run = ["run", "-d", "--name", name, *options, *NONET_IMAGE, "sleep", "600"]
        proc = self.podman.docker(*run)
        return name, proc.stdout.decode().strip()

    def start_agent(self, master_url: str, node: str) -> AgentProcess:
        # An hour between reports: the ones in the test come from start-up
        # and container events.
        reporting = ("--master", master_url, "--interval", "3600")
        agent = AgentProcess(
            self.podman.socket_path, extra_args=(*reporting, "--node-name", node)
        )
        self.addCleanup(agent.cleanup)
        try:
            return agent.start()
        except AgentStartError as e:
            self.fail(f"the agent did not start in front of podman:\n{e}")

    @inlineCallbacks
    def report_listing(
        self,
        master: FakeMaster,
        container_id: str,
        timeout: float,
        listed: bool = True,
        after: int = 0,
    ):
        """The first report received (from the `after`-th on) that lists
        `container_id`, or, with `listed=False`, that does not."""
        deadline = time.monotonic() + timeout
        seen = after
        while True:
            for report in master.received[seen:]:
                ids = {c["id"] for c in report.json()["system"]["containers"]}
                if (container_id in ids) == listed:
                    return report
            seen = len(master.received)
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return None
            try:
                yield master.next_report().addTimeout(remaining, reactor)
            except defer.TimeoutError:
                pass

    @inlineCallbacks
    def test_report_lists_podman_containers(self) -> None:
        """The first report lists podman's containers (id, name, image,
        labels) as its socket does; creating one reports it early, from
        podman's event stream."""
        name, container_id = self.run_container("reported", "haven.role=web", "k=v=w")
        master = FakeMaster()
        port, url = listen(reactor, master)
        self.addCleanup(port.stopListening)
        node = f"hve2e-podman-{secrets.token_hex(4)}"
        agent = self.start_agent(url, node)
        log_offset = agent.log_size()

        report = yield self.report_listing(master, container_id, timeout=60)
        self.assertIsNotNone(
            report,
            f"no report listing {name} in 60 s:\n{output_tail(agent.logs(), 4000)}",
        )
        self.assertEqual(report.code, 200, "the fake master refused the report")
        self.assertEqual(
            (report.method, report.path, report.query),
            ("POST", f"/discovery/nodes/{node}", {"ttl": ["7200"]}),
        )
        body = report.json()
        self.assertEqual(body["name"], node)
        self.assertEqual(body["address"], f"https://127.0.0.1:{agent.port}")
        info = json.loads(self.podman.api_request("GET", "/info")[1])
        self.assertEqual(body["system"]["labels"], info["Labels"] or {})
        listing = json.loads(
            self.podman.api_request("GET", "/containers/json?all=1")[1]
        )
        podman_view = {
            c["Id"]: {
                "id": c["Id"],
                "name": c["Names"][0].lstrip("/"),
                "image": c["Image"],
                "labels": c["Labels"] or {},
            }
            for c in listing
        }
        reported = {c["id"]: c for c in body["system"]["containers"]}
        self.assertEqual(reported, podman_view)
        self.assertEqual(
            reported[container_id],
            {
                "id": container_id,
                "name": name,
                "image": PODMAN_IMAGE,
                "labels": {"haven.role": "web", "k": "v=w"},
            },
        )

        # With an hour's interval only podman's events (`create`, `start`)
        # can bring a report listing a new container.  The event watcher may
        # subscribe after the first report: try a few containers.
        early = None
        for _ in range(3):
            _, new_id = self.run_container("early")
            early = yield self.report_listing(master, new_id, timeout=10)
            if early is not None:
                break
        self.assertIsNotNone(
            early,
            "creating containers on podman brought no early report:\n"
            + output_tail(agent.read_log(log_offset), 4000),
        )
        self.assertEqual(early.code, 200)

        # podman calls a removal `remove` (dockerd: `destroy`) and matches
        # an `event` filter on its own names: removing the container must
        # still bring a report without it.
        before = len(master.received)
        status, _ = self.podman.api_request("DELETE", f"/containers/{new_id}?force=1")
        self.assertIn(status, (200, 204))
        gone = yield self.report_listing(
            master, new_id, timeout=10, listed=False, after=before
        )
        self.assertIsNotNone(
            gone,
            "removing a container on podman brought no early report:\n"
            + output_tail(agent.read_log(log_offset), 4000),
        )
        problems = AGENT_LOG_PROBLEMS.search(agent.read_log())
        self.assertIsNone(problems, output_tail(agent.read_log(), 4000))
