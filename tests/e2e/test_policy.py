"""
The per-credential policy (`--policy FILE`) against the real dockerd, with
the real docker CLI and raw requests over TLS; what was refused is checked
on dockerd's own socket (no container, volume or exec instance appeared,
the container is still running, dockerd logged no kill), not only by the
agent's status code.

One policy file: the admin `full`; `traefik` (a bcrypt user of the file)
`discovery`, the read routes a reverse proxy needs; `ci` a profile that
may create, start and delete containers and send them USR1 or HUP only;
`learner` a profile in log mode; `nobody` a user of the file without an
identity.

- discovery: `docker ps` and `docker inspect` work; `docker run`,
  `docker volume create`, `docker exec` and `docker kill` fail with the
  agent's message printed by the CLI, and dockerd did none of them.
- ci: `docker run -d` works; a kill is forwarded only when the first
  `signal` parameter, read as dockerd's Go server reads it (first of
  repeated, keys case-sensitive and percent-decoded), is USR1 or HUP, and
  without a body, which dockerd would let override the query (shown by the
  admin's request, which kills); a refused kill on a keep-alive connection
  after an allowed request is refused too. dockerd's kill events and the
  container's own trap output say which signals arrived. deny beats allow
  (`GET *` and `* /libpod/*`); paths not in canonical form are 400 for ci
  and dockerd's business for the admin.
- log mode: learner's denied request is forwarded (the volume exists) and
  logged once as what would be refused.
- nobody: 403 for everything but `GET`/`HEAD /_ping`, which every client
  sends first.
- A denied request pipelined after an allowed one with a chunked body is
  judged on its own.
- SIGHUP: a changed file takes effect (a profile, a rotated password); an
  invalid one is logged with its file:line and the policy in force stays;
  with `--workers 3` in each process, checked over many new connections.
- An invalid file stops start-up with one error line naming file:line
  (then twistd's hint), no traceback; `--check-policy` prints one line per
  identity, or exits 1 with one line naming the line the mistake is on.
"""

from __future__ import annotations

import http.client
import json
import os
import re
import secrets
import shutil
import signal
import ssl
import subprocess
import tempfile
import time
from urllib.parse import quote

import bcrypt

from tests.e2e.test_hardening import AGENT_LOG_PROBLEMS, TIMEOUT, HardeningCase
from tests.e2e_agent import (
    AgentProcess,
    AgentStartError,
    basic_auth,
    twistd_argv,
)
from tests.realdockerd import IMAGE
from tests.test_startup_errors import HINT, clean_agent_env

#: A container that reports the signals it gets (a shell as PID 1 gets
#: only signals it has a handler for) and otherwise runs until removed.
TRAPPING = (
    "trap 'echo got-USR1' USR1; trap 'echo got-HUP' HUP; "
    "while true; do sleep 1; done"
)

#: Signal numbers as dockerd's kill events give them.
SIGNAL_NUMBERS = {"USR1": str(int(signal.SIGUSR1)), "HUP": str(int(signal.SIGHUP))}

POLICY = """\
version = 1

[users]
traefik = "{traefik_hash}"
ci = "{ci_hash}"
learner = "{learner_hash}"
nobody = "{nobody_hash}"

[identities]
admin = "full"
traefik = "{traefik_profile}"
ci = "ci"
learner = "learner"

[profiles.discovery]
allow = [
  "GET,HEAD /_ping",
  "GET /version",
  "GET /events",
  "GET /containers/json",
  "GET /containers/{{id}}/json",
]

[profiles.ci]
mode = "enforce"
allow = [
  "GET *",
  "POST /containers/create",
  "POST /containers/{{id}}/start",
  "POST /containers/{{id}}/kill",
  "DELETE /containers/{{id}}",
]
deny = ["* /libpod/*"]
query."POST /containers/{{id}}/kill".signal = ["USR1", "HUP"]

[profiles.learner]
mode = "log"
allow = ["GET *"]
"""

#: A rule naming a route the engine does not have.
BAD_RULE = '  "GET /containers/{id}/nope",'


def policy_text(hashes: dict[str, str], traefik_profile: str = "discovery") -> str:
    """The module's policy, with the users' C{hashes} (C{ci_hash}, ...)."""
    return POLICY.format(traefik_profile=traefik_profile, **hashes)


def bcrypt_hash(password: str) -> str:
    """A bcrypt hash as `htpasswd -nbB` makes one (cost 4: tests only)."""
    return bcrypt.hashpw(password.encode(), bcrypt.gensalt(4)).decode()


def read_answers(sock: ssl.SSLSocket) -> bytes:
    """
    What the agent answers on C{sock} until it closes the connection, as it
    does after a refusal, or until 5 s pass without a byte, as they do on a
    connection kept alive.
    """
    sock.settimeout(5)
    data = b""
    while True:
        try:
            chunk = sock.recv(65536)
        except TimeoutError:
            return data
        except (ConnectionResetError, ssl.SSLError):
            return data
        if not chunk:
            return data
        data += chunk


def run_detached(name: str, *command: str) -> tuple[str, ...]:
    """`docker run` arguments: C{command} in a new container C{name}."""
    return ("run", "-d", "--name", name, "--network", "none", IMAGE, *command)


def line_of(text: str, needle: str) -> int:
    """The number of the first line of C{text} holding C{needle}."""
    for number, line in enumerate(text.splitlines(), 1):
        if needle in line:
            return number
    raise AssertionError(f"{needle!r} is not in the text")


def with_bad_rule(text: str) -> str:
    """C{text} with an unknown route added to the discovery profile."""
    marker = '  "GET /version",\n'
    assert marker in text
    return text.replace(marker, marker + BAD_RULE + "\n", 1)


class PolicyCase(HardeningCase):
    """An agent with the module's policy file, and its users' clients."""

    timeout = 300
    #: More options of the agent.
    agent_args: tuple[str, ...] = ()

    def setUp(self) -> None:
        super().setUp()
        self.passwords = {
            name: secrets.token_urlsafe(12)
            for name in ("traefik", "ci", "learner", "nobody")
        }
        self.hashes = {
            f"{name}_hash": bcrypt_hash(password)
            for name, password in self.passwords.items()
        }
        self.policy_dir = tempfile.mkdtemp(prefix="hvp-", dir="/tmp")
        self.addCleanup(shutil.rmtree, self.policy_dir, True)
        self.policy_path = os.path.join(self.policy_dir, "policy.toml")
        self.write_policy(self.policy_text())
        self.agent = self.start_agent("--policy", self.policy_path, *self.agent_args)

    def policy_text(self, traefik_profile: str = "discovery") -> str:
        return policy_text(self.hashes, traefik_profile)

    def write_policy(self, text: str) -> None:
        with open(self.policy_path, "w") as f:
            f.write(text)

    # -- clients ------------------------------------------------------------

    def password_of(self, user: str) -> str:
        return self.agent.password if user == "admin" else self.passwords[user]

    def docker_as(self, user: str, *args: str):
        """The docker CLI through the agent as C{user}."""
        return self.docker(
            self.agent, *args, user=user, password=self.password_of(user)
        )

    def request(
        self,
        user: str,
        method: str,
        target: str,
        body: bytes | None = None,
        headers: dict[str, str] | None = None,
        password: str | None = None,
        source: str | None = None,
    ) -> tuple[int, bytes]:
        """
        One request on a new TLS connection as C{user} (with its password
        unless C{password}, from the loopback address C{source} if given);
        the target is sent as written.
        """
        if password is None:
            password = self.password_of(user)
        context = ssl.create_default_context(cafile=self.agent.ca_path)
        conn = http.client.HTTPSConnection(
            "127.0.0.1",
            self.agent.port,
            timeout=TIMEOUT,
            context=context,
            source_address=(source, 0) if source is not None else None,
        )
        try:
            conn.putrequest(method, target, skip_host=True, skip_accept_encoding=True)
            conn.putheader("Host", "docker")
            conn.putheader("Authorization", basic_auth(user, password))
            for name, value in (headers or {}).items():
                conn.putheader(name, value)
            if body is not None:
                conn.putheader("Content-Length", str(len(body)))
            conn.endheaders(body)
            response = conn.getresponse()
            return response.status, response.read()
        finally:
            conn.close()

    def assertRefused(
        self, answer: tuple[int, bytes], status: int, *needles: str
    ) -> str:
        code, body = answer
        self.assertEqual(code, status, body[:300])
        return self.assertJSONMessage(body, *needles)

    # -- dockerd's side -------------------------------------------------------

    def dockerd_json(self, path: str):
        """(status, parsed JSON or None) of a GET on dockerd's own socket."""
        status, body = self.dockerd.api_request("GET", path)
        try:
            return status, json.loads(body)
        except ValueError:
            return status, None

    def container_state(self, name: str) -> dict | None:
        status, info = self.dockerd_json(f"/containers/{name}/json")
        if status == 404:
            return None
        self.assertEqual(status, 200, info)
        return info["State"]

    def assertRunning(self, name: str) -> None:
        state = self.container_state(name)
        self.assertIsNotNone(state, f"{name} is gone on dockerd")
        self.assertTrue(state["Running"], state)

    def assertNoContainer(self, name: str) -> None:
        self.assertIsNone(self.container_state(name), f"{name} exists on dockerd")

    def volume_exists(self, name: str) -> bool:
        status, body = self.dockerd.api_request("GET", f"/volumes/{name}")
        self.assertIn(status, (200, 404), body)
        return status == 200

    def dockerd_events(self, name: str, since: float, action: str) -> list[dict]:
        """The events C{action} dockerd logged for container C{name}."""
        filters = quote(json.dumps({"container": [name], "event": [action]}))
        until = f"{time.time():.9f}"
        status, body = self.dockerd.api_request(
            "GET", f"/events?since={since:.9f}&until={until}&filters={filters}"
        )
        self.assertEqual(status, 200, body)
        return [json.loads(line) for line in body.splitlines() if line.strip()]

    def kill_signals(self, name: str, since: float) -> list[str]:
        """The signals of the kill events dockerd logged for C{name}."""
        return [
            event["Actor"]["Attributes"].get("signal")
            for event in self.dockerd_events(name, since, "kill")
        ]

    def container_logs(self, name: str) -> str:
        logs = self.dockerd.docker("logs", name, timeout=30)
        return (logs.stdout + logs.stderr).decode(errors="replace")

    def wait_for_container_output(self, name: str, text: str) -> None:
        deadline = time.monotonic() + 15
        while text not in self.container_logs(name):
            if time.monotonic() > deadline:
                self.fail(f"{name} did not print {text!r}: {self.container_logs(name)}")
            time.sleep(0.2)

    def remove_container_later(self, name: str) -> None:
        self.addCleanup(self.dockerd.docker, "rm", "-f", name, check=False)

    def remove_volume_later(self, name: str) -> None:
        self.addCleanup(self.dockerd.docker, "volume", "rm", "-f", name, check=False)

    def policy_lines(self, offset: int = 0) -> list[str]:
        return [
            line
            for line in self.agent.read_log(offset).splitlines()
            if "would be refused" in line
        ]


class DiscoveryTests(PolicyCase):
    """traefik's discovery profile: the read routes, nothing more."""

    def test_ps_and_inspect_work(self) -> None:
        """
        The CLI's pings and `GET /containers/json`, then an inspect, are
        served to traefik; the access log names traefik on each.
        """
        name = self.unique("seen")
        self.remove_container_later(name)
        self.dockerd.docker(*run_detached(name, "sleep", "300"))
        out = self.assertDockerWorked(self.docker_as("traefik", "ps"))
        self.assertIn(name, out)
        out = self.assertDockerWorked(
            self.docker_as("traefik", "inspect", "-f", "{{.State.Running}}", name)
        )
        self.assertEqual(out.strip(), "true")
        served = {
            (e["method"], re.sub(r"^/v[0-9.]+", "", e["path"]))
            for e in self.request_events(self.agent)
            if e["user"] == "traefik"
        }
        self.assertTrue(
            {("HEAD", "/_ping"), ("GET", "/_ping")} & served, sorted(served)
        )
        self.assertIn(("GET", "/containers/json"), served)
        self.assertIn(("GET", f"/containers/{name}/json"), served)

    def test_run_refused(self) -> None:
        """`docker run` prints the agent's refusal; dockerd created nothing."""
        before = self.dockerd_json("/containers/json?all=1")[1]
        name = self.unique("run")
        self.remove_container_later(name)
        proc = self.docker_as(
            "traefik", "run", "--name", name, "--network", "none", IMAGE, "true"
        )
        self.assertDockerFailed(proc)
        self.assertIn(
            'haven-agent: profile "discovery" denies POST /containers/create',
            proc.stderr.decode(errors="replace"),
        )
        self.assertNoContainer(name)
        after = self.dockerd_json("/containers/json?all=1")[1]
        self.assertEqual(
            sorted(c["Id"] for c in after), sorted(c["Id"] for c in before)
        )

    def test_volume_create_refused(self) -> None:
        """`docker volume create` prints the refusal; no volume on dockerd."""
        name = self.unique("vol")
        self.remove_volume_later(name)
        proc = self.docker_as("traefik", "volume", "create", name)
        self.assertDockerFailed(
            proc, r'haven-agent: profile "discovery" denies POST /volumes/create'
        )
        self.assertFalse(self.volume_exists(name), "the volume was created")

    def test_exec_and_kill_refused(self) -> None:
        """dockerd created no exec instance and sent no signal: it logged
        neither, and the container is still running."""
        name = self.unique("target")
        self.remove_container_later(name)
        self.dockerd.docker(*run_detached(name, "sleep", "300"))
        since = time.time() - 1
        proc = self.docker_as("traefik", "exec", name, "true")
        self.assertDockerFailed(
            proc, rf'profile "discovery" denies POST /containers/{name}/exec'
        )
        proc = self.docker_as("traefik", "kill", name)
        self.assertDockerFailed(
            proc, rf'profile "discovery" denies POST /containers/{name}/kill'
        )
        self.assertEqual(self.dockerd_events(name, since, "exec_create"), [])
        self.assertEqual(self.kill_signals(name, since), [])
        self.assertRunning(name)


class CITests(PolicyCase):
    """ci's profile: create and start, kill with USR1 or HUP only."""

    def test_kill_signals(self) -> None:
        """
        Only kills whose first `signal` is USR1 or HUP, without a body,
        reach dockerd: its kill events and the container's trap output
        list exactly those.
        """
        name = self.unique("ci")
        self.remove_container_later(name)
        run = self.docker_as("ci", *run_detached(name, "sh", "-c", TRAPPING))
        self.assertDockerWorked(run)
        self.assertRunning(name)
        since = time.time() - 1
        api = f"/v{self.dockerd.api_version}"
        kill = f"/containers/{name}/kill"
        form = {"Content-Type": "application/x-www-form-urlencoded"}
        refused = [
            (f"{kill}?signal=KILL", None, "query parameter signal=KILL"),
            (f"{api}{kill}?signal=KILL", None, "query parameter signal=KILL"),
            (f"{kill}?signal=KILL&signal=USR1", None, "signal=KILL"),
            (f"{kill}?sig%6Eal=KILL&signal=USR1", None, "signal=KILL"),
            # dockerd reads all three as SIGKILL.
            (f"{kill}?signal=SIGKILL", None, "signal=SIGKILL"),
            (f"{kill}?signal=sigkill", None, "signal=sigkill"),
            (f"{kill}?signal=9", None, "signal=9"),
            # dockerd kills with SIGKILL when `signal` is missing; Go's keys
            # are case-sensitive, so `Signal` is missing.
            (kill, None, "query parameter signal is required"),
            (f"{kill}?Signal=USR1", None, "query parameter signal is required"),
            (f"{kill}?signal=USR1", b"signal=KILL", "a body beside"),
        ]
        for target, body, why in refused:
            answer = self.request(
                "ci", "POST", target, body, form if body is not None else None
            )
            self.assertRefused(answer, 403, f'profile "ci" denies POST {kill}', why)
            self.assertRunning(name)
        # The agent's route ends at a `#` (POST /containers/{id}/start),
        # dockerd's does not: its kill handler gets this one, for a
        # container named "NAME/start#", which cannot exist.
        self.request("ci", "POST", f"/containers/{name}/start#/kill?signal=KILL")
        self.assertRunning(name)
        self.assertEqual(self.kill_signals(name, since), [])

        # A refused kill after an allowed request on one connection.
        sock = self.agent.tls_socket()
        self.addCleanup(sock.close)
        authorization = basic_auth("ci", self.passwords["ci"])
        sock.sendall(
            (
                f"GET /containers/{name}/json HTTP/1.1\r\nHost: docker\r\n"
                f"Authorization: {authorization}\r\n\r\n"
                f"POST {kill}?signal=KILL HTTP/1.1\r\nHost: docker\r\n"
                f"Authorization: {authorization}\r\n\r\n"
            ).encode()
        )
        answers = read_answers(sock)
        self.assertTrue(answers.startswith(b"HTTP/1.1 200 "), answers[:300])
        self.assertIn(b"HTTP/1.1 403 ", answers)
        self.assertIn(f'profile \\"ci\\" denies POST {kill}'.encode(), answers)
        self.assertRunning(name)
        self.assertEqual(self.kill_signals(name, since), [])

        # The first of repeated parameters counts, as in Go.
        status, body = self.request("ci", "POST", f"{kill}?signal=USR1&signal=KILL")
        self.assertEqual(status, 204, body)
        self.wait_for_container_output(name, "got-USR1")
        status, body = self.request("ci", "POST", f"{kill}?signal=HUP")
        self.assertEqual(status, 204, body)
        self.wait_for_container_output(name, "got-HUP")
        self.assertRunning(name)
        self.assertEqual(
            self.kill_signals(name, since),
            [SIGNAL_NUMBERS["USR1"], SIGNAL_NUMBERS["HUP"]],
        )

        # Why a body is refused: dockerd takes the form body's signal over
        # the query's, and the admin's request kills.
        status, body = self.request(
            "admin", "POST", f"{kill}?signal=USR1", b"signal=KILL", form
        )
        self.assertEqual(status, 204, body)
        deadline = time.monotonic() + 15
        while self.container_state(name)["Running"]:
            self.assertLess(time.monotonic(), deadline, "the admin's kill did nothing")
            time.sleep(0.2)
        self.assertEqual(self.kill_signals(name, since)[-1], str(int(signal.SIGKILL)))

        rm = self.docker_as("ci", "rm", name)
        self.assertDockerWorked(rm)
        self.assertNoContainer(name)

    def test_pipelined_after_chunked_body(self) -> None:
        """
        After an allowed create with a chunked body, the next request on
        the connection is judged on its own: the container exists on
        dockerd, the volume the second request asks for does not.
        """
        name, volume = self.unique("chunked"), self.unique("smuggled")
        self.remove_container_later(name)
        self.remove_volume_later(volume)
        authorization = basic_auth("ci", self.passwords["ci"])
        create = json.dumps({"Image": IMAGE, "Cmd": ["true"]}).encode()
        second = json.dumps({"Name": volume}).encode()
        sock = self.agent.tls_socket()
        self.addCleanup(sock.close)
        sock.sendall(
            f"POST /containers/create?name={name} HTTP/1.1\r\nHost: docker\r\n"
            f"Authorization: {authorization}\r\n"
            "Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
            f"{len(create):x}\r\n".encode()
            + create
            + b"\r\n0\r\n\r\n"
            + f"POST /volumes/create HTTP/1.1\r\nHost: docker\r\n"
            f"Authorization: {authorization}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(second)}\r\n"
            "\r\n".encode() + second
        )
        answers = read_answers(sock)
        self.assertTrue(answers.startswith(b"HTTP/1.1 201 "), answers[:300])
        self.assertIn(b"HTTP/1.1 403 ", answers)
        self.assertIn(b"denies POST /volumes/create: no rule allows it", answers)
        self.assertIsNotNone(self.container_state(name), "the create did nothing")
        self.assertFalse(self.volume_exists(volume), "the second request passed")

    def test_deny_beats_allow(self) -> None:
        """`GET *` allows, `* /libpod/*` denies, whatever the version."""
        for target in (
            "/libpod/info",
            "/v4.0.0/libpod/info",
            f"/v{self.dockerd.api_version}./libpod/containers/json",
        ):
            self.assertRefused(
                self.request("ci", "GET", target),
                403,
                'profile "ci" denies GET /libpod/',
                'denied by "* /libpod/*"',
            )
        status, body = self.request("ci", "GET", "/info")
        self.assertEqual(status, 200, body[:300])

    def test_non_canonical_paths(self) -> None:
        """400 for ci; forwarded for the admin, whatever dockerd answers."""
        targets = (
            "/containers/../containers/json",
            "/containers/./json",
            "//containers/json",
            "/containers%2Fjson",
            "/containers%2fjson",
            "/containers/json/",
            f"/v{self.dockerd.api_version}/../libpod/info",
        )
        for target in targets:
            self.assertRefused(
                self.request("ci", "GET", target),
                400,
                "haven-agent: ",
                "profile 'ci' takes paths in canonical form only",
            )
            status, body = self.request("admin", "GET", target)
            self.assertNotEqual(status, 400, (target, body[:300]))
            # Not the agent's refusal (dockerd's own answer may list a
            # container of another test named after the agent).
            self.assertNotIn(b'"message": "haven-agent: ', body, target)


class LogModeTests(PolicyCase):
    """learner's profile is in log mode: it learns, and refuses nothing."""

    def test_denied_request_forwarded_and_logged(self) -> None:
        """A volume create is forwarded (dockerd made the volume) and one
        line says it would have been refused; the allowed list logs none."""
        name = self.unique("learnt")
        self.remove_volume_later(name)
        offset = self.agent.log_size()
        self.assertDockerWorked(self.docker_as("learner", "volume", "ls"))
        self.assertDockerWorked(self.docker_as("learner", "volume", "create", name))
        self.assertTrue(self.volume_exists(name), "the volume was not created")
        lines = self.policy_lines(offset)
        self.assertEqual(len(lines), 1, lines)
        (line,) = lines
        self.assertIn("user learner POST /volumes/create", line)
        self.assertIn('profile "learner" denies POST /volumes/create', line)
        self.assertIn("profile learner is in log mode", line)


class NoIdentityTests(PolicyCase):
    """nobody is a user of the file that [identities] does not list."""

    def test_only_ping(self) -> None:
        """nobody's password is right, but no profile gives it anything."""
        self.assertRefused(
            self.request("nobody", "GET", "/containers/json"),
            403,
            "user nobody has no profile in the policy",
        )
        name = self.unique("nobody")
        self.remove_volume_later(name)
        self.assertRefused(
            self.request(
                "nobody",
                "POST",
                "/volumes/create",
                json.dumps({"Name": name}).encode(),
                {"Content-Type": "application/json"},
            ),
            403,
            "has no profile",
        )
        self.assertFalse(self.volume_exists(name), "the volume was created")
        status, body = self.request("nobody", "GET", "/_ping")
        self.assertEqual((status, body), (200, b"OK"))
        status, _ = self.request("nobody", "HEAD", "/_ping")
        self.assertEqual(status, 200)
        # A wrong password is still a 401, not the policy's 403.
        status, _ = self.request("nobody", "GET", "/_ping", password="wrong")
        self.assertEqual(status, 401)


class ReloadTests(PolicyCase):
    """SIGHUP reloads the file in every process that serves connections."""

    #: The processes that must each log a reload.
    processes = 1
    #: New connections per check: with several processes, each is all but
    #: certain to serve some of them.
    connections = 1

    def reload(self, wanted: str) -> list[str]:
        """SIGHUP, then every process's log line matching C{wanted}."""
        offset = self.agent.log_size()
        self.agent.process.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + TIMEOUT
        while True:
            found = re.findall(wanted, self.agent.read_log(offset))
            if len(found) >= self.processes:
                return found
            self.assertLess(
                time.monotonic(), deadline, f"{found}: not all logged {wanted!r}"
            )
            time.sleep(0.1)

    def assertAnswered(
        self, status: int, user: str, target: str, password: str | None = None
    ) -> None:
        """
        C{GET target} as C{user} gets C{status} on every new connection,
        each from a loopback address of its own (so that the agent's
        throttle does not delay a series of 401s).
        """
        statuses = [
            self.request(
                user, "GET", target, password=password, source=f"127.0.1.{n + 1}"
            )[0]
            for n in range(self.connections)
        ]
        self.assertEqual(statuses, [status] * self.connections)

    def test_sighup(self) -> None:
        """
        traefik becomes full with a new password (the old one is refused),
        then an invalid file changes nothing but the log.
        """
        before = self.unique("before")
        self.remove_container_later(before)
        proc = self.docker_as("traefik", *run_detached(before, "true"))
        self.assertDockerFailed(proc, 'profile "discovery" denies')
        self.assertNoContainer(before)
        self.assertAnswered(403, "traefik", "/info")

        # traefik becomes full, with a new password.
        old_password = self.passwords["traefik"]
        self.passwords["traefik"] = secrets.token_urlsafe(12)
        self.hashes["traefik_hash"] = bcrypt_hash(self.passwords["traefik"])
        self.write_policy(self.policy_text("full"))
        self.reload(r"reloaded the policy " + re.escape(self.policy_path))
        self.assertAnswered(200, "traefik", "/info")
        self.assertAnswered(401, "traefik", "/info", password=old_password)
        name = self.unique("after")
        self.remove_container_later(name)
        run = self.docker_as("traefik", *run_detached(name, "sleep", "300"))
        self.assertDockerWorked(run)
        self.assertRunning(name)

        # An invalid file: logged with file:line, the policy in force stays.
        bad = with_bad_rule(self.policy_text("discovery"))
        self.write_policy(bad)
        where = f"{self.policy_path}:{line_of(bad, BAD_RULE.strip())}: "
        for line in self.reload(r"policy reload failed[^\n]*"):
            self.assertIn(where, line)
            self.assertIn("is not a route of the engine", line)
        self.assertAnswered(200, "traefik", "/info")
        volume = self.unique("vol")
        self.remove_volume_later(volume)
        self.assertDockerWorked(self.docker_as("traefik", "volume", "create", volume))
        self.assertTrue(self.volume_exists(volume), "traefik is no longer full")
        self.assertTrue(self.agent.is_running())


class WorkerReloadTests(ReloadTests):
    """The same with `--workers 3`: the agent passes SIGHUP on to its two
    workers, and no process keeps serving the old policy."""

    agent_args = ("--workers", "3")
    processes = 3
    connections = 24

    def setUp(self) -> None:
        super().setUp()
        # A worker still starting reads the file as it is then, and would
        # log no reload.
        deadline = time.monotonic() + TIMEOUT
        while (
            len(re.findall(r"worker \d \(pid \d+\) serving", self.agent.read_log())) < 2
        ):
            self.assertLess(time.monotonic(), deadline, self.agent.logs())
            time.sleep(0.1)


class StartupTests(HardeningCase):
    """An invalid file stops the agent; `--check-policy` checks one."""

    def setUp(self) -> None:
        super().setUp()
        self.hashes = {
            f"{name}_hash": bcrypt_hash(secrets.token_urlsafe(12))
            for name in ("traefik", "ci", "learner", "nobody")
        }
        self.policy_dir = tempfile.mkdtemp(prefix="hvp-", dir="/tmp")
        self.addCleanup(shutil.rmtree, self.policy_dir, True)

    def write(self, name: str, text: str) -> str:
        path = os.path.join(self.policy_dir, name)
        with open(path, "w") as f:
            f.write(text)
        return path

    def test_invalid_file_at_start(self) -> None:
        """The agent exits with the usage error naming file:line, and the
        hint; no traceback."""
        bad = with_bad_rule(policy_text(self.hashes))
        path = self.write("bad.toml", bad)
        agent = AgentProcess(self.dockerd.socket_path, extra_args=("--policy", path))
        self.addCleanup(agent.cleanup)
        with self.assertRaises(AgentStartError):
            agent.start()
        self.assertNotEqual(agent.process.wait(10), 0)
        output = agent.read_stdio()
        self.assertIsNone(AGENT_LOG_PROBLEMS.search(output), output)
        lines = output.splitlines()
        self.assertEqual(len(lines), 2, output)
        self.assertEqual(lines[1], HINT)
        self.assertIn(f"--policy {path}:{line_of(bad, BAD_RULE.strip())}: ", lines[0])

    def check_policy(self, path: str) -> subprocess.CompletedProcess:
        return self.run_cmd(
            twistd_argv("haven-agent", "--check-policy", path),
            env=clean_agent_env(),
        )

    def test_check_policy(self) -> None:
        """A good file: exit 0, and who gets which profile."""
        path = self.write("good.toml", policy_text(self.hashes))
        result = self.check_policy(path)
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertEqual(result.stderr, b"")
        self.assertEqual(
            result.stdout.decode().splitlines(),
            [
                f"{path}: a valid policy",
                "  admin: full (built-in)",
                "  traefik: discovery (enforce; 5 allow, 0 deny, 0 query rules)",
                "  ci: ci (enforce; 5 allow, 1 deny, 1 query rules)",
                "  learner: learner (log; 1 allow, 0 deny, 0 query rules)",
            ],
        )

    def test_check_policy_refuses(self) -> None:
        """Each mistake: exit 1 and one line naming the line it is on."""
        good = policy_text(self.hashes)
        cases = {
            "unknown route": (with_bad_rule(good), BAD_RULE.strip()),
            "unknown key": (
                good.replace('mode = "enforce"', 'mode = "enforce"\nalow = []'),
                "alow = []",
            ),
            "plain password": (
                good.replace(self.hashes["ci_hash"], "hunter2"),
                'ci = "hunter2"',
            ),
            "mode of the second profile": (
                good.replace('mode = "log"', 'mode = "logs"'),
                'mode = "logs"',
            ),
            "unknown profile": (
                good.replace('learner = "learner"', 'learner = "learnr"'),
                'learner = "learnr"',
            ),
        }
        wrong = []
        for case, (text, needle) in cases.items():
            path = self.write(case.replace(" ", "-") + ".toml", text)
            result = self.check_policy(path)
            self.assertEqual(result.returncode, 1, (case, result.stdout))
            stderr = result.stderr.decode()
            self.assertNotIn("Traceback", stderr, case)
            lines = stderr.splitlines()
            self.assertEqual(len(lines), 1, (case, stderr))
            where = f"{path}:{line_of(text, needle)}: "
            if where not in lines[0]:
                wrong.append(f"{case}: {lines[0]!r} does not name {where!r}")
        self.assertEqual(wrong, [], "\n".join(wrong))
