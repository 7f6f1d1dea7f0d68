"""The container image, built and run for real on a private dockerd.

The image is built once per test run from this checkout's Dockerfile, offline
(tests/image_build.py: a debootstrap-made Debian base imported with `docker
import`, a wheelhouse built on the host, `docker build --network none`), on
the shared private dockerd of tests/realdockerd.py.  The agent container then
runs the way Haven's start string runs it, adapted to this machine
(containers have no bridge network, so `--network host`; the master is a fake
one on 127.0.0.1):

    docker run -d --name N --restart=unless-stopped --hostname=$(hostname)
        --network host -e dm_agent_notifier_server=http://127.0.0.1:MPORT
        -e dm_agent_notifier_secret=S -e dm_auth_adminPassword=P
        -e server_port=PORT -e dm_agent_notifier_rootPath=/host
        -v SOCK:/run/docker.sock -v /:/host:ro -v VOLUME:/var/lib/haven-agent
        IMAGE

and the docker CLI, curl-like HTTPS requests and the fake master check it.

Skips only when the machine cannot do it (no dockerd, no debootstrap, no
package index for the wheelhouse), naming what is missing; with
HAVEN_AGENT_REQUIRE_DOCKERD=1 (as in .ci/run) that is a failure instead.
Every subprocess has a timeout.  The measurements (image size, build and
start times) go to the test log and to CACHE_DIR/last-image-measurements.json.
"""

from __future__ import annotations

import atexit
import base64
import hashlib
import http.client
import http.server
import json
import os
import re
import secrets
import shutil
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
import time
import unittest

from twisted.python import log
from twisted.trial.unittest import SynchronousTestCase

from tests.image_build import CACHE_DIR, ImageBuild, ImageUnavailable, build_image
from tests.realdockerd import IMAGE as BUSYBOX
from tests.realdockerd import (
    DockerdUnavailable,
    clean_docker_env,
    output_tail,
    shared_dockerd,
)

TAG = "hvtest/haven-agent:test"
STATE_DIR = "/var/lib/haven-agent"
START_TIMEOUT = 60.0
COMMAND_TIMEOUT = 120.0
ENTRYPOINT = ["twistd", "--nodaemon", "--pidfile=", "--logfile=-", "haven-agent"]
FINGERPRINT = re.compile(
    r"TLS certificate \S+ \((generated now|loaded)\), SHA-256 fingerprint "
    r"([0-9A-F]{2}(?::[0-9A-F]{2}){31})"
)
#: What the agent must never log while these tests run.
LOG_PROBLEMS = re.compile(
    r"Unhandled Error|Unhandled error in Deferred|Traceback \(most recent call "
    r"last\)|Another twistd server is running"
)

#: Measurements, reported in the test log and in a JSON file at exit.
MEASURED: dict[str, object] = {}


def _free_port() -> int:
    """A TCP port free on every interface (the agent listens on all)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("", 0))
        return s.getsockname()[1]


def _measure(name: str, value: object) -> None:
    MEASURED[name] = value
    log.msg(f"tests.e2e.test_image measured {name} = {value}")


# -- shared state: the dockerd, the image, the fake master, one agent -----


_lock = threading.Lock()
_build: ImageBuild | None = None
_build_problem: tuple[str, str] | None = None  # ("skip" | "fail", message)
_master: FakeMaster | None = None
_main: AgentContainer | None = None
_main_error: str | None = None
_cleanups: list = []
_atexit_registered = False


def _unavailable(testcase: SynchronousTestCase, reason: str):
    if os.environ.get("HAVEN_AGENT_REQUIRE_DOCKERD"):
        testcase.fail(f"the image test is required here but cannot run: {reason}")
    raise unittest.SkipTest(reason)


def _at_exit() -> None:
    while _cleanups:
        fn = _cleanups.pop()
        try:
            fn()
        except Exception:
            pass
    if MEASURED:
        try:
            os.makedirs(CACHE_DIR, exist_ok=True)
            with open(
                os.path.join(CACHE_DIR, "last-image-measurements.json"), "w"
            ) as f:
                json.dump(MEASURED, f, indent=2, sort_keys=True)
                f.write("\n")
        except OSError:
            pass
        summary = ", ".join(f"{k}={v}" for k, v in sorted(MEASURED.items()))
        print(f"tests.e2e.test_image measured: {summary}", file=sys.stderr)


def _register_cleanup(fn=None) -> None:
    """Run fn at exit, before the shared dockerd's own atexit hook stops it.

    Call it (with or without fn) only after shared_dockerd() has returned:
    atexit runs hooks last-in first-out.
    """
    global _atexit_registered
    if not _atexit_registered:
        atexit.register(_at_exit)
        _atexit_registered = True
    if fn is not None:
        _cleanups.append(fn)


def shared_image(testcase: SynchronousTestCase):
    """(dockerd, ImageBuild): the image built once per run."""
    global _build, _build_problem
    try:
        dockerd = shared_dockerd()
    except DockerdUnavailable as e:
        _unavailable(testcase, f"no real dockerd: {e}")
    with _lock:
        _register_cleanup()
        if _build is None and _build_problem is None:
            try:
                _build = build_image(dockerd, TAG)
            except ImageUnavailable as e:
                _build_problem = ("skip", f"the image cannot be built here: {e}")
            except AssertionError as e:
                _build_problem = ("fail", str(e))
            else:
                for key, value in _build.as_dict().items():
                    if key not in ("tag", "base"):
                        _measure(key, value)
        problem = _build_problem
    if problem is not None:
        kind, message = problem
        if kind == "skip":
            _unavailable(testcase, message)
        testcase.fail(message)
    return dockerd, _build


# -- a fake Haven master -----------------------------------------------------


class FakeMaster:
    """A stdlib HTTP server on 127.0.0.1 recording the agent's reports."""

    def __init__(self) -> None:
        self.reports: list[dict] = []
        self._cond = threading.Condition()
        master = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 (http.server's name)
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length)
                with master._cond:
                    master.reports.append(
                        {
                            "path": self.path,
                            "headers": {k.lower(): v for k, v in self.headers.items()},
                            "body": body,
                            "peer": self.client_address[0],
                        }
                    )
                    master._cond.notify_all()
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format, *args) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self._thread.start()

    def wait_for(self, predicate, timeout: float) -> dict | None:
        """The first report for which predicate(report) is true, or None."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                for report in self.reports:
                    if predicate(report):
                        return report
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return None
                self._cond.wait(remaining)

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def shared_master() -> FakeMaster:
    global _master
    with _lock:
        if _master is None:
            _master = FakeMaster()
            _register_cleanup(_master.stop)
        return _master


# -- an agent container ------------------------------------------------------


class AgentContainer:
    """One haven-agent container on the test dockerd, and clients for it."""

    user = "admin"

    def __init__(
        self,
        dockerd,
        image: str,
        *,
        master: FakeMaster | None = None,
        secret: str | None = None,
        volume: str | None = None,
        host_root: bool = True,
        run_args: tuple[str, ...] = (),
    ) -> None:
        self.dockerd = dockerd
        self.image = image
        self.name = f"hvimg-{secrets.token_hex(4)}"
        self.password = secrets.token_urlsafe(18)
        self.port = _free_port()
        self.master = master
        self.secret = secret
        self.volume = volume
        self.host_root = host_root
        self.extra_run_args = tuple(run_args)
        self.tmpdir = tempfile.mkdtemp(prefix="hvimgc-", dir="/tmp")
        self.cert_dir = os.path.join(self.tmpdir, "certs")
        os.mkdir(self.cert_dir)
        self.ca_path = os.path.join(self.cert_dir, "ca.pem")
        self._configs: dict[str, str] = {}

    # -- lifecycle --------------------------------------------------------

    def run_argv(self) -> list[str]:
        """`docker run` arguments: Haven's start string, adapted."""
        argv = [
            "run",
            "-d",
            "--name",
            self.name,
            "--restart=unless-stopped",
            f"--hostname={socket.gethostname()}",
            "--network",
            "host",
            "-e",
            f"dm_auth_adminPassword={self.password}",
            "-e",
            f"server_port={self.port}",
            "-v",
            f"{self.dockerd.socket_path}:/run/docker.sock",
        ]
        if self.master is not None:
            argv += ["-e", f"dm_agent_notifier_server={self.master.url}"]
        if self.secret is not None:
            argv += ["-e", f"dm_agent_notifier_secret={self.secret}"]
        if self.host_root:
            argv += ["-e", "dm_agent_notifier_rootPath=/host", "-v", "/:/host:ro"]
        if self.volume is not None:
            argv += ["-v", f"{self.volume}:{STATE_DIR}"]
        return [*argv, *self.extra_run_args, self.image]

    def start(self) -> float:
        """Run the container and wait until it serves TLS; returns seconds."""
        started = time.monotonic()
        self.dockerd.docker(*self.run_argv(), timeout=COMMAND_TIMEOUT)
        self.wait_ready(started)
        return time.monotonic() - started

    def wait_ready(self, started: float, starts: int = 1) -> None:
        """Until the `starts`-th start of twistd completes a TLS handshake."""
        deadline = started + START_TIMEOUT
        last: Exception | str = "no attempt"
        while time.monotonic() < deadline:
            state = self.state()
            if state.get("Status") in ("exited", "dead"):
                raise AssertionError(
                    f"the agent container {self.name} stopped ({state}):\n{self.logs()}"
                )
            if self.logs().count("starting up.") >= starts:
                try:
                    self.handshake(verify=False)
                    return
                except (OSError, ssl.SSLError) as e:
                    last = e
            time.sleep(0.2)
        raise AssertionError(
            f"the agent container {self.name} did not accept TLS on port "
            f"{self.port} within {START_TIMEOUT:.0f} s (last: {last!r}):\n{self.logs()}"
        )

    def remove(self) -> None:
        self.dockerd.docker("rm", "-f", self.name, check=False, timeout=COMMAND_TIMEOUT)

    def cleanup(self) -> None:
        self.remove()
        if self.volume is not None:
            self.dockerd.docker("volume", "rm", "-f", self.volume, check=False)
        shutil.rmtree(self.tmpdir, ignore_errors=True)

    # -- inspection -------------------------------------------------------

    def state(self) -> dict:
        proc = self.dockerd.docker(
            "inspect", "--format", "{{json .State}}", self.name, check=False
        )
        if proc.returncode != 0:
            return {"Status": "missing"}
        return json.loads(proc.stdout)

    def logs(self) -> str:
        proc = self.dockerd.docker("logs", self.name, check=False)
        return (proc.stdout + proc.stderr).decode(errors="replace")

    def fingerprints(self) -> list[tuple[str, str]]:
        """(how, fingerprint) of every start logged so far."""
        return FINGERPRINT.findall(self.logs())

    def wait_healthy(self, checks: int = 1, timeout: float = 60.0) -> dict:
        """Until the image's HEALTHCHECK says healthy after `checks` checks.

        Run the container with a short --health-interval: the image checks
        every 30 s, the command is the same.
        """
        deadline = time.monotonic() + timeout
        health: dict = {}
        while time.monotonic() < deadline:
            health = self.state().get("Health") or {}
            log_ = health.get("Log") or []
            if health.get("Status") == "healthy" and len(log_) >= checks:
                if log_[-1].get("ExitCode") == 0:
                    return health
            time.sleep(0.3)
        raise AssertionError(
            f"{self.name} did not turn healthy within {timeout:.0f} s: {health}\n"
            f"{output_tail(self.logs())}"
        )

    def fetch_certificate(self) -> bytes:
        """Copy the generated certificate out; it is also the client's CA."""
        self.dockerd.docker(
            "cp", f"{self.name}:{STATE_DIR}/tls/agent-cert.pem", self.ca_path
        )
        with open(self.ca_path, "rb") as f:
            return f.read()

    # -- clients ----------------------------------------------------------

    def ssl_context(self, verify: bool = True) -> ssl.SSLContext:
        if verify:
            return ssl.create_default_context(cafile=self.ca_path)
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        return ctx

    def handshake(self, verify: bool = True) -> bytes:
        """A TLS handshake; returns the server's certificate (DER)."""
        with socket.create_connection(("127.0.0.1", self.port), timeout=5) as s:
            with self.ssl_context(verify).wrap_socket(
                s, server_hostname="127.0.0.1"
            ) as t:
                return t.getpeercert(binary_form=True)

    def https(
        self, method: str, path: str, password: str | None = None, auth: bool = True
    ) -> tuple[int, dict[str, str], bytes]:
        """One request with the pinned certificate; (status, headers, body)."""
        conn = http.client.HTTPSConnection(
            "127.0.0.1", self.port, timeout=30, context=self.ssl_context()
        )
        headers = {}
        if auth:
            token = f"{self.user}:{self.password if password is None else password}"
            headers["Authorization"] = "Basic " + base64.b64encode(
                token.encode()
            ).decode("ascii")
        try:
            conn.request(method, path, headers=headers)
            resp = conn.getresponse()
            return resp.status, dict(resp.getheaders()), resp.read()
        finally:
            conn.close()

    def cli_argv_env(self, password: str | None = None) -> tuple[list[str], dict]:
        """argv prefix and env for the docker CLI through the agent."""
        password = self.password if password is None else password
        if password not in self._configs:
            path = tempfile.mkdtemp(prefix="cli-", dir=self.tmpdir)
            token = base64.b64encode(f"{self.user}:{password}".encode()).decode()
            with open(os.path.join(path, "config.json"), "w") as f:
                json.dump({"HttpHeaders": {"Authorization": f"Basic {token}"}}, f)
            self._configs[password] = path
        env = clean_docker_env()
        # A directory holding only ca.pem: no client certificate is picked up.
        env["DOCKER_CERT_PATH"] = self.cert_dir
        argv = [
            "docker",
            "--config",
            self._configs[password],
            "-H",
            f"tcp://127.0.0.1:{self.port}",
            "--tlsverify",
            "--tlscacert",
            self.ca_path,
        ]
        return argv, env

    def cli(
        self,
        *args: str,
        input: bytes | None = None,
        timeout: float = COMMAND_TIMEOUT,
        password: str | None = None,
    ) -> subprocess.CompletedProcess:
        """The docker CLI through the agent (not checked)."""
        argv, env = self.cli_argv_env(password)
        kwargs = (
            {"input": input} if input is not None else {"stdin": subprocess.DEVNULL}
        )
        try:
            return subprocess.run(
                [*argv, *args],
                capture_output=True,
                env=env,
                timeout=timeout,
                check=False,
                **kwargs,
            )
        except subprocess.TimeoutExpired as e:
            raise AssertionError(
                f"docker {' '.join(args)} through the agent did not finish within "
                f"{timeout:.0f} s; stdout {output_tail(e.stdout or b'')!r}, stderr "
                f"{output_tail(e.stderr or b'')!r}\n{output_tail(self.logs())}"
            ) from None


def shared_agent(testcase: SynchronousTestCase) -> AgentContainer:
    """The module's main agent container: master, secret, host root, volume."""
    global _main, _main_error
    dockerd, build = shared_image(testcase)
    master = shared_master()
    with _lock:
        if _main is None and _main_error is None:
            agent = AgentContainer(
                dockerd,
                build.tag,
                master=master,
                secret=secrets.token_hex(8),
                volume=f"hvimg-state-{secrets.token_hex(4)}",
            )
            _register_cleanup(agent.cleanup)
            try:
                _measure("main_container_start_seconds", round(agent.start(), 2))
                agent.fetch_certificate()
            except AssertionError as e:
                _main_error = str(e)
            else:
                _main = agent
        if _main_error is not None:
            testcase.fail(f"the main agent container did not start:\n{_main_error}")
        return _main


def _run_in_image(
    dockerd, image: str, *args: str, entrypoint: str | None = None, user=None
) -> subprocess.CompletedProcess:
    argv = ["run", "--rm", "--network", "none"]
    if entrypoint is not None:
        argv += ["--entrypoint", entrypoint]
    if user is not None:
        argv += ["--user", user]
    return dockerd.docker(*argv, image, *args, check=False, timeout=COMMAND_TIMEOUT)


# -- host facts, read by the test process on the host ------------------------


def _host_mount_points() -> set[str]:
    with open("/proc/1/mounts") as f:
        return {
            line.split()[1].replace("\\040", " ") for line in f if len(line.split()) > 2
        }


def _host_interfaces() -> set[str]:
    with open("/proc/1/net/dev") as f:
        lines = f.read().splitlines()[2:]
    return {line.split(":", 1)[0].strip() for line in lines} - {"lo"}


def _default_route_interface() -> str | None:
    try:
        with open("/proc/1/net/route") as f:
            for line in f.read().splitlines()[1:]:
                fields = line.split()
                if len(fields) > 2 and fields[1] == "00000000":
                    return fields[0]
    except OSError:
        pass
    return None


def _host_mem_total() -> int:
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no MemTotal in /proc/meminfo")


# -- the tests ---------------------------------------------------------------


class ImageTests(SynchronousTestCase):
    """The image itself: configuration, contents, size."""

    def setUp(self) -> None:
        self.dockerd, self.build = shared_image(self)

    def inspect_image(self) -> dict:
        out = self.dockerd.docker("image", "inspect", self.build.tag).stdout
        return json.loads(out)[0]

    def test_configuration(self) -> None:
        """Entrypoint, port, health check, root user and env defaults."""
        config = self.inspect_image()["Config"]
        self.assertEqual(config["Entrypoint"], ENTRYPOINT)
        self.assertIn("8771/tcp", config["ExposedPorts"])
        health = config.get("Healthcheck") or {}
        self.assertEqual(health.get("Test", [None])[0], "CMD", health)
        self.assertEqual(health.get("Interval"), 30 * 10**9)
        self.assertIn(config.get("User") or "", ("", "root", "0"))
        env = dict(item.split("=", 1) for item in config["Env"])
        self.assertEqual(env.get("HAVEN_AGENT_DOCKER"), "unix:/run/docker.sock")
        self.assertTrue(env["PATH"].startswith("/opt/haven-agent/bin:"), env["PATH"])

    def test_contents(self) -> None:
        """A non-editable install, a fresh dropin.cache, no compiler, no build tree."""
        script = (
            "import json, os, shutil, haven_agent, twisted.plugins as p\n"
            "cache = os.path.join(os.path.dirname(p.__file__), 'dropin.cache')\n"
            "print(json.dumps({'module': haven_agent.__file__,"
            " 'cache': os.path.exists(cache) and os.path.getmtime(cache),"
            " 'cache_has_agent': os.path.exists(cache) and"
            " b'haven_agent_plugin' in open(cache, 'rb').read(),"
            " 'compilers': [c for c in ('gcc', 'cc', 'c++', 'g++', 'clang', 'make')"
            " if shutil.which(c)],"
            " 'src': os.path.exists('/src'),"
            " 'venv_pip': os.path.exists('/opt/haven-agent/bin/pip')}))\n"
        )
        proc = _run_in_image(
            self.dockerd, self.build.tag, "-c", script, entrypoint="python"
        )
        self.assertEqual(proc.returncode, 0, output_tail(proc.stderr))
        facts = json.loads(proc.stdout)
        self.assertTrue(
            facts["module"].startswith(
                "/opt/haven-agent/lib/python3.11/site-packages/haven_agent/"
            ),
            facts,
        )
        self.assertTrue(facts["cache"], "no twisted/plugins/dropin.cache in the image")
        self.assertTrue(facts["cache_has_agent"], facts)
        self.assertEqual(facts["compilers"], [])
        self.assertFalse(facts["src"], "the source tree was left in the image")
        self.assertFalse(facts["venv_pip"], "pip was left in the agent's venv")
        # The shell agrees (what the issue asks literally).
        sh = _run_in_image(
            self.dockerd,
            self.build.tag,
            "-c",
            "command -v gcc || command -v cc || echo none",
            entrypoint="sh",
        )
        self.assertEqual(sh.stdout, b"none\n")
        # Running as the unprivileged user does not try to rewrite the cache
        # (it would log a warning and fail): it was fresh.
        helped = _run_in_image(
            self.dockerd,
            self.build.tag,
            "-c",
            "import os, twisted.plugins as p, subprocess as s; "
            "c = os.path.join(os.path.dirname(p.__file__), 'dropin.cache'); "
            "m = os.path.getmtime(c); "
            "r = s.run(['twistd', 'haven-agent', '--help'], capture_output=True); "
            "print(r.returncode, os.path.getmtime(c) == m, r.stderr.decode())",
            entrypoint="python",
            user="haven-agent",
        )
        self.assertEqual(helped.stdout.split(b" ", 2)[:2], [b"0", b"True"], helped)

    def test_help(self) -> None:
        """`twistd haven-agent --help` runs in the image (arguments after the image)."""
        proc = _run_in_image(self.dockerd, self.build.tag, "--help")
        out = proc.stdout.decode()
        self.assertEqual(proc.returncode, 0, output_tail(proc.stderr))
        self.assertIn("haven-agent", out)
        for needle in (
            "--master",
            "dm_auth_adminPassword",
            "dm_agent_notifier_rootPath",
        ):
            self.assertIn(needle, out)

    def test_size(self) -> None:
        """The agent adds less than 120 MB to its base (measured, reported)."""
        size, base = self.build.size_bytes, self.build.base_size_bytes
        _measure("image_size_mb", round(size / 1e6, 1))
        _measure("agent_layers_mb", round((size - base) / 1e6, 1))
        self.assertLess(size - base, 120e6, f"image {size} bytes, base {base} bytes")


class AgentContainerTests(SynchronousTestCase):
    """The agent container run like Haven's start string, on the real dockerd."""

    def setUp(self) -> None:
        self.agent = shared_agent(self)
        self.dockerd = self.agent.dockerd
        self.addCleanup(self._check_alive)

    def _check_alive(self) -> None:
        state = self.agent.state()
        logs = self.agent.logs()
        if not state.get("Running"):
            self.fail(
                f"the agent container is not running ({state}):\n{output_tail(logs)}"
            )
        match = LOG_PROBLEMS.search(logs)
        if match:
            start = max(0, match.start() - 1500)
            self.fail(f"the agent logged a problem:\n{logs[start:start + 4000]}")

    def test_docker_version(self) -> None:
        """`docker version` through the agent, TLS pinned to its own certificate."""
        proc = self.agent.cli("version", "--format", "{{json .Server}}")
        self.assertEqual(proc.returncode, 0, output_tail(proc.stderr))
        server = json.loads(proc.stdout)
        self.assertEqual(server["ApiVersion"], self.dockerd.api_version)
        self.assertEqual(server["Version"], self.dockerd.server_version)
        plain = self.agent.cli("version")
        self.assertEqual(plain.returncode, 0, output_tail(plain.stderr))
        self.assertIn(b"Server:", plain.stdout)

    def test_certificate(self) -> None:
        """The served certificate is the file, and its logged fingerprint."""
        der = self.agent.handshake(verify=True)
        fingerprint = ":".join(f"{b:02X}" for b in hashlib.sha256(der).digest())
        self.assertEqual(self.agent.fingerprints()[-1][1], fingerprint)
        pem = ssl.DER_cert_to_PEM_cert(der).encode()
        self.assertEqual(pem.strip(), self.agent.fetch_certificate().strip())

    def test_wrong_password(self) -> None:
        """A wrong password and no credentials both get 401 with a challenge."""
        for kwargs in ({"password": "wrong" + self.agent.password}, {"auth": False}):
            status, headers, body = self.agent.https("GET", "/version", **kwargs)
            self.assertEqual(status, 401, (kwargs, body))
            self.assertEqual(
                headers.get("WWW-Authenticate"), 'Basic realm="haven-agent"'
            )
            self.assertIn("message", json.loads(body))
        status, _, body = self.agent.https("GET", "/_ping")
        self.assertEqual((status, body), (200, b"OK"))

    def test_run_stdin(self) -> None:
        """`echo data | docker run -i ... sh -c 'cat; echo done'` through the agent."""
        name = f"hvimg-run-{secrets.token_hex(4)}"
        self.addCleanup(self.dockerd.docker, "rm", "-f", name, check=False)
        proc = self.agent.cli(
            "run",
            "-i",
            "--rm",
            "--name",
            name,
            "--network",
            "none",
            BUSYBOX,
            "sh",
            "-c",
            "cat; echo done",
            input=b"data\n",
            timeout=60,
        )
        self.assertEqual(
            (proc.returncode, proc.stdout),
            (0, b"data\ndone\n"),
            output_tail(proc.stderr),
        )

    def test_logs_follow(self) -> None:
        """`docker logs -f` through the agent follows until the container ends."""
        name = f"hvimg-logs-{secrets.token_hex(4)}"
        self.addCleanup(self.dockerd.docker, "rm", "-f", name, check=False)
        script = "for i in $(seq 1 8); do echo line$i; sleep 0.25; done"
        self.dockerd.docker(
            "run",
            "-d",
            "--name",
            name,
            "--network",
            "none",
            BUSYBOX,
            "sh",
            "-c",
            script,
        )
        proc = self.agent.cli("logs", "-f", name, timeout=60)
        self.assertEqual(proc.returncode, 0, output_tail(proc.stderr))
        self.assertEqual(
            proc.stdout.decode().split(), [f"line{i}" for i in range(1, 9)]
        )

    def test_request_log(self) -> None:
        """`docker logs` shows one structured line per request, refusals included."""
        token = secrets.token_hex(4)
        self.assertEqual(self.agent.https("GET", f"/_ping?ok={token}")[0], 200)
        self.assertEqual(
            self.agent.https("GET", f"/version?bad={token}", password="nope")[0], 401
        )
        done = re.compile(
            r"\[haven_agent\.requests#info\] \S+ admin GET /_ping\?ok="
            + token
            + r": 200 done; \d+ bytes in, \d+ bytes out, "
            + r"[\d.]+ s to first byte, [\d.]+ s"
        )
        refused = re.compile(
            r"\[haven_agent\.requests#info\] \S+ - GET /version\?bad="
            + token
            + r": refused 401: [^;]+; \d+ bytes in, \d+ bytes out, [\d.]+ s"
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            logs = self.agent.logs()
            if done.search(logs) and refused.search(logs):
                break
            time.sleep(0.2)
        self.assertRegex(logs, done)
        self.assertRegex(logs, refused)
        self.assertNotIn(self.agent.password, logs)

    def test_report(self) -> None:
        """The fake master gets a contract-conforming report with the HOST's metrics."""
        agent = self.agent
        report = agent.master.wait_for(
            lambda r: agent.name.encode() in r["body"], timeout=30
        )
        self.assertIsNotNone(
            report,
            f"no report naming {agent.name} within 30 s; got "
            f"{[r['path'] for r in agent.master.reports]}\n{output_tail(agent.logs())}",
        )
        body = json.loads(report["body"])
        name = body["name"]
        self.assertRegex(name, r"^[A-Za-z0-9-]+$")
        self.assertEqual(report["path"], f"/discovery/nodes/{name}?ttl=120")
        self.assertEqual(report["headers"].get("content-type"), "application/json")
        self.assertEqual(report["headers"].get("x-auth-node"), agent.secret)
        self.assertRegex(body["time"], r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")
        self.assertRegex(body["address"], rf"^https://\d+\.\d+\.\d+\.\d+:{agent.port}$")
        system = body["system"]
        self.assertGreaterEqual(system["cpuLoad"], 0.0)
        self.assertLessEqual(system["cpuLoad"], 100.0)
        self.assertEqual(system["memory"]["total"], _host_mem_total())
        # Containers: the agent's own is listed, with the contract's fields.
        own = [c for c in system["containers"] if c["name"] == agent.name]
        self.assertEqual(len(own), 1, system["containers"])
        self.assertEqual(set(own[0]), {"id", "name", "image", "labels"})
        self.assertEqual(own[0]["image"], agent.image)
        self.assertIsInstance(system["labels"], dict)
        # Disks: the HOST's mount table (through /host/proc/1/mounts), not the
        # container's: "/" with the host's size, no /host/... or bind-mounted
        # files of the container.
        disks = system["disks"]
        self.assertIn("/", disks)
        st = os.statvfs("/")
        self.assertEqual(disks["/"]["total"], st.f_blocks * st.f_frsize)
        host_used = (st.f_blocks - st.f_bfree) * st.f_frsize
        self.assertLess(abs(disks["/"]["used"] - host_used), 0.05 * disks["/"]["total"])
        self.assertLessEqual(set(disks), _host_mount_points(), disks)
        for point in disks:
            self.assertFalse(point.startswith("/host"), disks)
            self.assertNotIn(point, ("/etc/hosts", "/etc/hostname", "/run/docker.sock"))
        # Network: the host's interfaces, lo left out, no null counter.
        net = system["net"]
        self.assertNotIn("lo", net)
        self.assertLessEqual(set(net), _host_interfaces(), net)
        route = _default_route_interface()
        if route is not None:
            self.assertIn(route, net)
        for counters in net.values():
            self.assertIsInstance(counters["bytesIn"], int)
            self.assertIsInstance(counters["bytesOut"], int)


class LifecycleTests(SynchronousTestCase):
    """Containers of their own: restart, re-create, non-root."""

    def setUp(self) -> None:
        self.dockerd, self.build = shared_image(self)

    def container(self, **kwargs) -> AgentContainer:
        agent = AgentContainer(self.dockerd, self.build.tag, **kwargs)
        self.addCleanup(agent.cleanup)
        return agent

    def test_restart_keeps_certificate(self) -> None:
        """The HEALTHCHECK turns the container healthy; `docker restart` stops it
        cleanly (twistd is PID 1 and handles SIGTERM) and it comes back (no
        stale pidfile) healthy with the same certificate; so does a re-created
        container on the same state volume."""
        agent = self.container(
            volume=f"hvimg-state-{secrets.token_hex(4)}",
            run_args=("--health-interval=1s",),
        )
        agent.start()
        started = time.monotonic()
        agent.wait_healthy()
        _measure("healthy_after_start_seconds", round(time.monotonic() - started, 2))
        first = agent.fingerprints()
        self.assertEqual([how for how, _ in first], ["generated now"], agent.logs())
        fingerprint = first[0][1]
        agent.fetch_certificate()
        before = agent.state()["StartedAt"]

        started = time.monotonic()
        self.dockerd.docker("restart", agent.name, timeout=COMMAND_TIMEOUT)
        agent.wait_ready(started, starts=2)
        restart_seconds = time.monotonic() - started
        _measure("restart_seconds", round(restart_seconds, 2))
        # Not killed after docker's 10 s grace period: a clean twistd stop.
        self.assertIn("Main loop terminated.", agent.logs())
        agent.wait_healthy()
        state = agent.state()
        self.assertTrue(state["Running"], state)
        self.assertNotEqual(state["StartedAt"], before)
        self.assertEqual(
            agent.fingerprints(),
            [("generated now", fingerprint), ("loaded", fingerprint)],
        )
        # The certificate pinned before the restart still verifies.
        proc = agent.cli("version", "--format", "{{.Server.APIVersion}}")
        self.assertEqual(proc.returncode, 0, output_tail(proc.stderr))
        self.assertNotRegex(agent.logs(), LOG_PROBLEMS)

        # A new container on the same volume (an image upgrade) keeps it too.
        agent.remove()
        started = time.monotonic()
        self.dockerd.docker(*agent.run_argv(), timeout=COMMAND_TIMEOUT)
        agent.wait_ready(started)
        self.assertEqual(agent.fingerprints(), [("loaded", fingerprint)])
        proc = agent.cli("version", "--format", "{{.Server.APIVersion}}")
        self.assertEqual(proc.returncode, 0, output_tail(proc.stderr))

    def test_non_root_with_docker_group(self) -> None:
        """--user haven-agent --group-add <socket's group> works, as documented;
        the health check asks GET /_agent/health and, at log level debug, the
        agent logs one line per check."""
        gid = os.stat(self.dockerd.socket_path).st_gid
        agent = self.container(
            volume=f"hvimg-state-{secrets.token_hex(4)}",
            run_args=(
                "--user",
                "haven-agent",
                "--group-add",
                str(gid),
                "--health-interval=1s",
                "-e",
                "HAVEN_AGENT_LOG_LEVEL=debug",
            ),
        )
        agent.start()
        health = agent.wait_healthy(checks=3)
        for check in health["Log"]:
            self.assertEqual(check["ExitCode"], 0, check)
            self.assertEqual(
                json.loads(check["Output"]), {"status": "ok", "docker": "up"}
            )
        logs = agent.logs()
        # Health checks are logged at debug level, out of the access log.
        self.assertNotRegex(logs, r"requests#info\] .*/_agent/health")
        requests = re.findall(r"(?m)\[haven_agent\.requests#debug\] (.*)$", logs)
        self.assertGreaterEqual(len(requests), 3, logs)
        for line in requests:
            self.assertRegex(
                line, r"^(127\.0\.0\.1|\[::1\]):\d+ - GET /_agent/health: health"
            )
        self.assertNotRegex(logs, LOG_PROBLEMS)
        pid = agent.state()["Pid"]
        with open(f"/proc/{pid}/status") as f:
            uids = re.search(r"(?m)^Uid:\s+(\d+)", f.read()).group(1)
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            cmdline = f.read().split(b"\0")
        self.assertEqual(uids, "10001")
        self.assertIn(b"haven-agent", cmdline)
        agent.fetch_certificate()
        proc = agent.cli("version", "--format", "{{.Server.APIVersion}}")
        self.assertEqual(proc.returncode, 0, output_tail(proc.stderr))
        self.assertEqual(proc.stdout.strip().decode(), self.dockerd.api_version)

    def test_unhealthy_without_docker(self) -> None:
        """Without the Docker socket mounted the container turns unhealthy."""
        agent = self.container(
            host_root=False,
            # The image's start period (failures not counted) is 10 s.
            run_args=("--health-interval=1s", "--health-start-period=1ms"),
        )
        argv = agent.run_argv()
        # Haven's start string without its -v SOCK:/run/docker.sock.
        at = argv.index(f"{self.dockerd.socket_path}:/run/docker.sock")
        del argv[at - 1 : at + 1]
        started = time.monotonic()
        self.dockerd.docker(*argv, timeout=COMMAND_TIMEOUT)
        agent.wait_ready(started)
        deadline = time.monotonic() + 60
        health: dict = {}
        while time.monotonic() < deadline:
            health = agent.state().get("Health") or {}
            if health.get("Status") == "unhealthy":
                break
            time.sleep(0.3)
        self.assertEqual(health.get("Status"), "unhealthy", health)
        last = health["Log"][-1]
        self.assertEqual(last["ExitCode"], 1, last)
        self.assertEqual(json.loads(last["Output"])["docker"], "down", last)
        self.assertTrue(agent.state()["Running"])

    def test_stop_with_open_stream(self) -> None:
        """`docker stop` with a stream open through the agent (the master keeps
        /events open for hours) ends in a clean exit, before Docker's 10 s
        SIGKILL."""
        agent = self.container(host_root=False)
        agent.start()
        agent.fetch_certificate()
        argv, env = agent.cli_argv_env()
        events = subprocess.Popen(
            [*argv, "events"],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            env=env,
        )
        self.addCleanup(events.wait, 30)
        self.addCleanup(events.kill)
        # A request is logged when it ends: the CLI's HEAD /_ping comes just
        # before its GET /events.
        deadline = time.monotonic() + 30
        while "HEAD /_ping" not in agent.logs() and time.monotonic() < deadline:
            time.sleep(0.2)
        time.sleep(1.0)
        self.assertIsNone(events.poll(), "`docker events` ended early")
        started = time.monotonic()
        self.dockerd.docker("stop", agent.name, timeout=COMMAND_TIMEOUT)
        stop_seconds = time.monotonic() - started
        _measure("stop_with_open_stream_seconds", round(stop_seconds, 2))
        state = agent.state()
        # Exit code 0, not 137: stopped by twistd, not killed after 10 s.
        self.assertEqual(state["ExitCode"], 0, f"{state}\n{output_tail(agent.logs())}")
        logs = agent.logs()
        self.assertRegex(logs, r"admin GET /v[\d.]+/events: ")
        self.assertIn("Main loop terminated.", logs)
