"""Start and stop the real agent (`twistd haven-agent`) for end-to-end tests.

`AgentProcess` runs the agent the way users do, as a separate twistd process
found through the dropin in `twisted/plugins/` of this checkout, serving TLS
on a free port of 127.0.0.1 with a throwaway test CA, and proxying to a
dockerd socket.  It also builds the client configurations the tests use:
the docker CLI (config dir with the Authorization header, TLS flags and a
cert dir holding only the CA), docker-py, and curl.

The clients are all configured so that this machine's CA-bundle environment
variables (REQUESTS_CA_BUNDLE, CURL_CA_BUNDLE, SSL_CERT_FILE) cannot replace
the test CA.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import secrets
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import time
import unittest

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import ExtendedKeyUsageOID

from haven_agent.logs.flush_soon import FLUSH_DELAY
from tests import pki
from tests.realdockerd import clean_docker_env

__all__ = [
    "AgentProcess",
    "AgentStartError",
    "CHECKOUT_ROOT",
    "make_test_pki",
    "popen_until_cleanup",
    "read_until_closed",
]

#: The organisation of the test CAs' names.
ORGANIZATION = "haven-agent tests"

#: The directory holding `haven_agent/` and `twisted/plugins/`.
CHECKOUT_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

START_TIMEOUT = 30.0
STOP_TIMEOUT = 15.0

_TWISTD_BOOTSTRAP = (
    "import sys; from twisted.scripts.twistd import run; " "sys.argv[0]='twistd'; run()"
)


class AgentStartError(Exception):
    """The agent process did not come up; the message has its log."""


def twistd_argv(*args: str) -> list[str]:
    """argv running twistd with this interpreter."""
    return [sys.executable, "-c", _TWISTD_BOOTSTRAP, *args]


def agent_env(checkout: str = CHECKOUT_ROOT) -> dict[str, str]:
    """Environment for a twistd that finds C{checkout}'s dropin."""
    env = dict(os.environ)
    old = env.get("PYTHONPATH")
    env["PYTHONPATH"] = checkout + (os.pathsep + old if old else "")
    return env


def make_test_pki(directory: str) -> tuple[str, str, str]:
    """Write a throwaway CA and a server certificate for 127.0.0.1/localhost.

    EC P-256 keys.  Returns (ca_path, cert_path, key_path).
    """
    ca_key, ca_cert = pki.make_ca(
        "haven-agent test CA",
        organization=ORGANIZATION,
        path_length=0,
        key_usage=True,
    )
    key, cert = pki.issue(
        (ca_key, ca_cert),
        ["localhost"],
        ExtendedKeyUsageOID.SERVER_AUTH,
        dns_names=["localhost"],
        ip_addresses=["127.0.0.1"],
        key_usage=True,
    )

    ca_path = os.path.join(directory, "ca.pem")
    cert_path = os.path.join(directory, "server-cert.pem")
    key_path = os.path.join(directory, "server-key.pem")
    pki.write(ca_path, pki.cert_pem(ca_cert))
    _write_cert_and_key(cert, key, cert_path, key_path)
    return ca_path, cert_path, key_path


def stop_process(proc: subprocess.Popen | None, timeout: float) -> None:
    """SIGTERM, then SIGKILL if it is still there after C{timeout} seconds."""
    if proc is None or proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(10)


def kill_process(proc: subprocess.Popen) -> None:
    """Kill a client process still running and close its pipes."""
    if proc.poll() is None:
        proc.kill()
    proc.wait(30)
    for pipe in (proc.stdout, proc.stderr):
        if pipe is not None:
            pipe.close()


def popen_until_cleanup(
    test: unittest.TestCase, argv: list[str], env: dict[str, str]
) -> subprocess.Popen:
    """
    Start a client such as `docker events` with its output piped for the
    test to read; it is killed when the test cleans up, since a stream does
    not end by itself.
    """
    proc = subprocess.Popen(
        argv,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
    )
    test.addCleanup(kill_process, proc)
    return proc


def read_until_closed(sock: socket.socket) -> bytes:
    """
    All a raw connection receives until the agent closes it; a reset or a
    TLS error ends it like a close (the agent resets after what it refuses),
    a timeout (a hang) propagates.
    """
    data = b""
    while True:
        try:
            chunk = sock.recv(65536)
        except (ConnectionResetError, ssl.SSLError):
            return data
        if not chunk:
            return data
        data += chunk


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def basic_auth(user: str, password: str) -> str:
    token = base64.b64encode(f"{user}:{password}".encode()).decode("ascii")
    return f"Basic {token}"


def _size_or_zero(path: str) -> int:
    """The size of an output file, 0 while the agent has not written it."""
    try:
        return os.path.getsize(path)
    except OSError:
        return 0


def _text_from(path: str, offset: int) -> str:
    """An output file's text from byte C{offset} on, "" while it is missing."""
    try:
        with open(path, "rb") as f:
            f.seek(offset)
            return f.read().decode(errors="replace")
    except OSError:
        return ""


@contextlib.contextmanager
def _without_env(names):
    saved = {n: os.environ.pop(n) for n in names if n in os.environ}
    try:
        yield
    finally:
        os.environ.update(saved)


class AgentProcess:
    """A running `twistd -n haven-agent` in front of a dockerd socket."""

    user = "admin"

    def __init__(
        self,
        docker_socket: str,
        password: str | None = None,
        extra_args: tuple[str, ...] = (),
        checkout: str = CHECKOUT_ROOT,
    ) -> None:
        self.docker_socket = docker_socket
        self.password = password or secrets.token_urlsafe(18)
        self.extra_args = tuple(extra_args)
        #: The checkout whose agent runs (bench/ab.py compares two).
        self.checkout = checkout
        self.tmpdir = tempfile.mkdtemp(prefix="hva-", dir="/tmp")
        self.state_dir = os.path.join(self.tmpdir, "state")
        os.mkdir(self.state_dir)
        pki = os.path.join(self.tmpdir, "pki")
        os.mkdir(pki)
        self.ca_path, self.cert_path, self.key_path = make_test_pki(pki)
        # The docker CLI loads a client certificate from DOCKER_CERT_PATH (or
        # else ~/.docker or $DOCKER_CONFIG, never from --config) when cert.pem
        # and key.pem exist there, and fails on a broken pair.  Point it at a
        # directory holding only the CA.
        self.cli_cert_dir = os.path.join(self.tmpdir, "cli-certs")
        os.mkdir(self.cli_cert_dir)
        shutil.copy(self.ca_path, os.path.join(self.cli_cert_dir, "ca.pem"))
        self.log_path = os.path.join(self.tmpdir, "agent.log")
        self.stdio_path = os.path.join(self.tmpdir, "agent-stdio.log")
        self.port: int | None = None
        self.process: subprocess.Popen | None = None
        self._cli_configs: dict[str, str] = {}
        self._cli_configs_as: dict[str | None, str] = {}
        #: seconds from spawn to the first successful TLS handshake
        self.start_seconds: float | None = None

    # -- addresses --------------------------------------------------------

    @property
    def host_url(self) -> str:
        return f"tcp://127.0.0.1:{self.port}"

    @property
    def https_url(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    # -- lifecycle --------------------------------------------------------

    def argv(self) -> list[str]:
        return twistd_argv(
            "-n",
            "--pidfile=",
            "--logfile",
            self.log_path,
            "haven-agent",
            "--listen",
            f"tcp:{self.port}:interface=127.0.0.1",
            "--docker",
            f"unix:{self.docker_socket}",
            "--user",
            self.user,
            "--password",
            self.password,
            "--state-dir",
            self.state_dir,
            "--tls-cert",
            self.cert_path,
            "--tls-key",
            self.key_path,
            *self.extra_args,
        )

    def start(self) -> AgentProcess:
        self.port = free_port()
        started = time.monotonic()
        with open(self.stdio_path, "wb") as stdio:
            self.process = subprocess.Popen(
                self.argv(),
                stdin=subprocess.DEVNULL,
                stdout=stdio,
                stderr=subprocess.STDOUT,
                env=agent_env(self.checkout),
                cwd=self.tmpdir,
            )
        deadline = started + START_TIMEOUT
        last_error: Exception | None = None
        while time.monotonic() < deadline:
            rc = self.process.poll()
            if rc is not None:
                raise AgentStartError(
                    f"agent exited with status {rc} before accepting TLS "
                    f"connections\n{self.logs()}"
                )
            try:
                self.tls_handshake(timeout=2.0)
            except (OSError, ssl.SSLError) as e:
                last_error = e
                time.sleep(0.1)
                continue
            self.start_seconds = time.monotonic() - started
            return self
        self.stop()
        raise AgentStartError(
            f"agent did not accept a TLS connection on 127.0.0.1:{self.port} "
            f"within {START_TIMEOUT:.0f} s (last error: {last_error!r})\n{self.logs()}"
        )

    def tcp_socket(
        self, source: str | None = None, timeout: float = 10.0
    ) -> socket.socket:
        """
        A plain TCP connection to the agent's TLS port, for tests of what
        arrives there that is not TLS: from the local address C{source}
        (another loopback address is another client). The caller closes it.
        """
        return socket.create_connection(
            ("127.0.0.1", self.port),
            timeout=timeout,
            source_address=(source, 0) if source is not None else None,
        )

    def tls_socket(
        self,
        alpn: list[str] | None = None,
        source: str | None = None,
        timeout: float = 10.0,
    ) -> ssl.SSLSocket:
        """
        A raw TLS connection to the agent that verifies the test CA, for
        tests that write their own bytes: offering C{alpn}, from the local
        address C{source}. The caller closes it.
        """
        ctx = ssl.create_default_context(cafile=self.ca_path)
        if alpn:
            ctx.set_alpn_protocols(alpn)
        raw = self.tcp_socket(source, timeout)
        try:
            return ctx.wrap_socket(raw, server_hostname="127.0.0.1")
        except BaseException:
            raw.close()
            raise

    def tls_handshake(self, timeout: float = 5.0) -> None:
        """Connect and complete a TLS handshake that verifies the test CA."""
        with self.tls_socket(timeout=timeout):
            pass

    def stop(self) -> None:
        proc, self.process = self.process, None
        stop_process(proc, STOP_TIMEOUT)

    def cleanup(self) -> None:
        """stop() and remove the temporary directory."""
        self.stop()
        shutil.rmtree(self.tmpdir, ignore_errors=True)

    def is_running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def wait_for_log_lines(self) -> None:
        """
        A running agent writes its log lines up to FLUSH_DELAY after making
        them (haven_agent.logs.flush_soon): wait that long before reading
        the log or measuring it, so that it holds every line made so far.
        """
        if self.is_running():
            time.sleep(FLUSH_DELAY + 0.05)

    def log_size(self) -> int:
        self.wait_for_log_lines()
        return _size_or_zero(self.log_path)

    def read_log(self, offset: int = 0) -> str:
        """The agent's twistd log from byte `offset` on."""
        self.wait_for_log_lines()
        return _text_from(self.log_path, offset)

    def logs(self) -> str:
        self.wait_for_log_lines()
        parts = []
        for title, path in (
            ("agent log", self.log_path),
            ("agent stdout/stderr", self.stdio_path),
        ):
            try:
                with open(path, "rb") as f:
                    text = f.read().decode(errors="replace")
            except OSError:
                text = "(missing)"
            if len(text) > 20000:
                text = "...\n" + text[-20000:]
            parts.append(f"----- {title} ({path}) -----\n{text}")
        return "\n".join(parts)

    # -- clients ------------------------------------------------------------

    def authorization(self, password: str | None = None) -> str:
        return basic_auth(self.user, self.password if password is None else password)

    def _cli_config_dir(self, password: str) -> str:
        if password not in self._cli_configs:
            path = tempfile.mkdtemp(prefix="cli-", dir=self.tmpdir)
            with open(os.path.join(path, "config.json"), "w") as f:
                json.dump(
                    {"HttpHeaders": {"Authorization": self.authorization(password)}}, f
                )
            self._cli_configs[password] = path
        return self._cli_configs[password]

    def docker_cli_env_and_args(
        self, password: str | None = None
    ) -> tuple[dict[str, str], list[str]]:
        """(env, args) for `docker *args ...` to talk through the agent.

        args = ["--config", DIR, "-H", "tcp://127.0.0.1:PORT", "--tlsverify",
        "--tlscacert", CA]; DIR/config.json carries the Authorization header
        (the CLI drops credentials written into DOCKER_HOST); env has no
        DOCKER_*/CA-bundle overrides and DOCKER_CERT_PATH names a directory
        with only ca.pem, so no client certificate is picked up.
        """
        password = self.password if password is None else password
        env = clean_docker_env()
        env["DOCKER_CERT_PATH"] = self.cli_cert_dir
        args = [
            "--config",
            self._cli_config_dir(password),
            "-H",
            self.host_url,
            "--tlsverify",
            "--tlscacert",
            os.path.join(self.cli_cert_dir, "ca.pem"),
        ]
        return env, args

    def curl_env(self) -> dict[str, str]:
        return clean_docker_env()

    def curl_args(self, password: str | None = None, auth: bool = True) -> list[str]:
        """`curl` argv prefix (add the URL and options) using the test CA."""
        args = ["curl", "-sS", "--max-time", "60", "--cacert", self.ca_path]
        if auth:
            password = self.password if password is None else password
            args += ["-u", f"{self.user}:{password}"]
        return args

    def docker_client(self, api_version: str, password: str | None = None):
        """A docker-py DockerClient talking through the agent.

        `api_version` is passed explicitly: automatic detection would send a
        request before the Authorization header can be set.
        """
        import docker
        import docker.tls

        with _without_env(
            (
                "REQUESTS_CA_BUNDLE",
                "CURL_CA_BUNDLE",
                "SSL_CERT_FILE",
                "DOCKER_HOST",
                "DOCKER_TLS_VERIFY",
                "DOCKER_CERT_PATH",
            )
        ):
            client = docker.DockerClient(
                base_url=self.https_url,
                version=api_version,
                tls=docker.tls.TLSConfig(ca_cert=self.ca_path, verify=True),
                timeout=120,
            )
        # requests prefers REQUESTS_CA_BUNDLE & co. over session.verify
        # unless the session ignores the environment.
        client.api.trust_env = False
        client.api.headers["Authorization"] = self.authorization(password)
        return client

    # -- additions: logs on stdout, client certificates ------------------

    def read_stdio(self, offset: int = 0) -> str:
        """The agent's stdout/stderr from byte `offset` on (JSON log lines go
        there with --log-format json)."""
        self.wait_for_log_lines()
        return _text_from(self.stdio_path, offset)

    def stdio_size(self) -> int:
        self.wait_for_log_lines()
        return _size_or_zero(self.stdio_path)

    def cli_env_and_args_as(
        self,
        user: str | None = None,
        password: str | None = None,
        cert_path: str | None = None,
        key_path: str | None = None,
    ) -> tuple[dict[str, str], list[str]]:
        """(env, args) for `docker *args ...` as any user, with or without a
        client certificate.

        Like `docker_cli_env_and_args`, but the config directory carries the
        Authorization header of `user` (default `self.user`) and `password`,
        or, with `password=None`, no credentials at all (`{}`); and
        `--tlscert`/`--tlskey` are added when `cert_path`/`key_path` are
        given.
        """
        env = clean_docker_env()
        env["DOCKER_CERT_PATH"] = self.cli_cert_dir
        if password is None:
            authorization = None
        else:
            authorization = basic_auth(user or self.user, password)
        configs = self._cli_configs_as
        if authorization not in configs:
            path = tempfile.mkdtemp(prefix="cli-as-", dir=self.tmpdir)
            content = (
                {"HttpHeaders": {"Authorization": authorization}}
                if authorization is not None
                else {}
            )
            with open(os.path.join(path, "config.json"), "w") as f:
                json.dump(content, f)
            configs[authorization] = path
        args = [
            "--config",
            configs[authorization],
            "-H",
            self.host_url,
            "--tlsverify",
            "--tlscacert",
            os.path.join(self.cli_cert_dir, "ca.pem"),
        ]
        if cert_path is not None:
            args += ["--tlscert", cert_path]
        if key_path is not None:
            args += ["--tlskey", key_path]
        return env, args


# -- additions for the hardening tests (mutual TLS, logs on stdout) ---------


def make_ca(
    directory: str, name: str = "haven-agent test client CA"
) -> tuple[str, str]:
    """Write a throwaway CA (EC P-256) into `directory`.

    Returns (ca_cert_path, ca_key_path); file names are derived from `name`
    so several CAs can share a directory.
    """
    key, cert = pki.make_ca(
        name, organization=ORGANIZATION, path_length=0, key_usage=True
    )
    stem = "".join(c if c.isalnum() else "-" for c in name)
    cert_path = os.path.join(directory, f"{stem}-ca.pem")
    key_path = os.path.join(directory, f"{stem}-ca-key.pem")
    _write_cert_and_key(cert, key, cert_path, key_path)
    return cert_path, key_path


def make_client_certificate(
    directory: str, ca_cert_path: str, ca_key_path: str, common_name: str
) -> tuple[str, str]:
    """A client certificate (EC P-256, clientAuth) for `common_name`.

    Signed by the CA in `ca_cert_path`/`ca_key_path`.  Returns
    (cert_path, key_path), written into `directory` as
    `<common_name>-cert.pem` / `<common_name>-key.pem` (a suffix is added if
    those names are taken).
    """
    with open(ca_cert_path, "rb") as f:
        ca_cert = x509.load_pem_x509_certificate(f.read())
    with open(ca_key_path, "rb") as f:
        ca_key = serialization.load_pem_private_key(f.read(), password=None)
    key, cert = pki.issue(
        (ca_key, ca_cert),
        [common_name],
        ExtendedKeyUsageOID.CLIENT_AUTH,
        key_usage=True,
    )
    stem = "".join(c if c.isalnum() else "-" for c in common_name)
    cert_path = os.path.join(directory, f"{stem}-cert.pem")
    n = 1
    while os.path.exists(cert_path):
        n += 1
        cert_path = os.path.join(directory, f"{stem}-{n}-cert.pem")
    key_path = cert_path[: -len("-cert.pem")] + "-key.pem"
    _write_cert_and_key(cert, key, cert_path, key_path)
    return cert_path, key_path


def _write_cert_and_key(cert, key, cert_path: str, key_path: str) -> None:
    pki.write(cert_path, pki.cert_pem(cert))
    fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(pki.key_pem(key))


__all__ += ["make_ca", "make_client_certificate"]
