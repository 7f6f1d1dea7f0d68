"""
The read-only account against the real dockerd: what "GET and HEAD only" let
through, checked on dockerd's side.

- `GET /containers/{id}/attach/ws` without an Upgrade header made dockerd
  register output pipes on the container and then leave them unread: the
  container blocked writing after about 1 MB, and inspect and rm hung until
  dockerd restarted. Here a container writes without pause, the viewer
  tries, and the container's log must keep growing while inspect answers.
- An unread `GET /containers/{id}/archive` held the container's lock: the
  admin's inspect and stop must answer while the viewer's request is open.
- `/distribution/{name}/json` made dockerd connect to a registry the caller
  named: a listener stands for that registry, and must see no connection
  from the viewer's request (and one from the admin's, so the check can
  fail).
- `/debug/` showed dockerd's internals: the viewer gets 403, the admin
  dockerd's answer.
"""

from __future__ import annotations

import base64
import os
import socket
import ssl
import threading
import time

from tests.e2e.test_hardening import TIMEOUT, HardeningCase, _http_body
from tests.realdockerd import IMAGE

VIEWER, VIEWER_PASSWORD = "viewer", "look"


class RegistryStandIn:
    """A TCP listener that counts the connections it is offered."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.port = self.sock.getsockname()[1]
        self.accepted = 0
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.accepted += 1
            conn.close()

    def close(self) -> None:
        self.sock.close()


class ReadOnlyRoutesTests(HardeningCase):
    def setUp(self) -> None:
        super().setUp()
        self.agent = self.start_agent(
            "--readonly-user", VIEWER, "--readonly-password", VIEWER_PASSWORD
        )

    def container(self, *command: str) -> str:
        name = self.unique("ro")
        self.addCleanup(self.dockerd.docker, "rm", "-f", name, check=False)
        self.dockerd.docker(
            "run", "-d", "--name", name, "--network", "none", IMAGE, *command
        )
        return name

    def viewer_curl(self, path: str, *extra: str):
        return self.curl(
            self.agent, path, *extra, user=VIEWER, password=VIEWER_PASSWORD
        )

    def viewer_socket(self) -> ssl.SSLSocket:
        sock = self.agent.tls_socket(["http/1.1"])
        self.addCleanup(sock.close)
        return sock

    def viewer_request(self, method: str, path: str) -> bytes:
        credentials = base64.b64encode(f"{VIEWER}:{VIEWER_PASSWORD}".encode())
        return (
            f"{method} {path} HTTP/1.1\r\nHost: docker\r\n"
            f"Authorization: Basic {credentials.decode()}\r\n\r\n"
        ).encode()

    def log_size(self, name: str) -> int:
        path = self.dockerd.docker("inspect", "-f", "{{.LogPath}}", name, timeout=10)
        return os.path.getsize(path.stdout.decode().strip())

    def test_attach_ws_without_upgrade_refused(self) -> None:
        """The viewer's attach/ws gets 403, and the container keeps writing."""
        name = self.container("sh", "-c", "while true; do echo 0123456789abcdef; done")
        sock = self.viewer_socket()
        sock.sendall(
            self.viewer_request(
                "GET", f"/containers/{name}/attach/ws?stream=1&stdout=1&stderr=1"
            )
        )
        answer = sock.recv(65536)
        self.assertTrue(answer.startswith(b"HTTP/1.1 403 "), answer)
        self.assertJSONMessage(_http_body(answer), "read-only")
        # Unfixed, the container blocked after about 1 MB of output.
        time.sleep(2)
        before = self.log_size(name)
        time.sleep(2)
        after = self.log_size(name)
        self.assertGreater(after - before, 1 << 20, "the container stopped writing")
        inspect = self.dockerd.docker(
            "inspect", "-f", "{{.State.Running}}", name, timeout=10
        )
        self.assertEqual(inspect.stdout.strip(), b"true")

    def test_archive_refused_and_container_not_locked(self) -> None:
        """While the viewer's archive request is open and unread, the admin
        inspects and stops the container at once."""
        name = self.container("sleep", "600")
        for method in ("GET", "HEAD"):
            status, body, _ = self.viewer_curl(
                f"/containers/{name}/archive?path=/bin", "-X", method
            )
            self.assertEqual(status, 403, (method, body[:200]))
        sock = self.viewer_socket()
        sock.sendall(self.viewer_request("GET", f"/containers/{name}/archive?path=/"))
        # The answer is left unread, as the attack did.
        inspect = self.docker(
            self.agent,
            "inspect",
            "-f",
            "{{.State.Running}}",
            name,
            password=self.agent.password,
            timeout=15,
        )
        self.assertEqual(self.assertDockerWorked(inspect).strip(), "true")
        stop = self.docker(
            self.agent,
            "stop",
            "-t",
            "1",
            name,
            password=self.agent.password,
            timeout=30,
        )
        self.assertDockerWorked(stop)
        running = self.dockerd.docker("inspect", "-f", "{{.State.Running}}", name)
        self.assertEqual(running.stdout.strip(), b"false")

    def test_export_and_image_save_refused(self) -> None:
        name = self.container("sleep", "600")
        for path in (
            f"/containers/{name}/export",
            f"/images/{IMAGE}/get",
            f"/images/get?names={IMAGE}",
        ):
            status, body, _ = self.viewer_curl(path)
            self.assertEqual(status, 403, (path, body[:200]))
            self.assertJSONMessage(body, "read-only")

    def test_distribution_never_reaches_dockerd(self) -> None:
        registry = RegistryStandIn()
        self.addCleanup(registry.close)
        path = f"/distribution/127.0.0.1:{registry.port}/probe/json"
        for target in (path, f"/v{self.dockerd.api_version}{path}"):
            status, body, _ = self.viewer_curl(target)
            self.assertEqual(status, 403, body)
        time.sleep(1)
        self.assertEqual(registry.accepted, 0, "dockerd connected for the viewer")
        # The admin's request does reach dockerd, which connects.
        self.curl(self.agent, path, password=self.agent.password)
        deadline = time.monotonic() + TIMEOUT
        while registry.accepted == 0 and time.monotonic() < deadline:
            time.sleep(0.2)
        self.assertGreater(registry.accepted, 0, "the check cannot see dockerd connect")

    def test_debug_refused(self) -> None:
        for path in ("/debug/vars", "/debug/pprof/cmdline", "/debug/pprof/"):
            status, body, _ = self.viewer_curl(path)
            self.assertEqual(status, 403, (path, body[:200]))
            self.assertNotIn(b"memstats", body)
        status, body, _ = self.curl(
            self.agent, "/debug/vars", password=self.agent.password
        )
        self.assertEqual(status, 200, body[:200])
        self.assertIn(b"memstats", body)

    def test_read_routes_answer(self) -> None:
        """Every listed read route reaches dockerd for the viewer (dockerd
        may answer 503 for swarm routes without a swarm, never the agent's
        403); a version with a trailing dot is a version."""
        name = self.container("sleep", "600")
        api = f"/v{self.dockerd.api_version}"
        paths = [
            "/_ping",
            "/version",
            "/info",
            "/system/df",
            "/events?since=1&until=2",
            "/containers/json",
            f"/containers/{name}/json",
            f"/containers/{name}/logs?stdout=1",
            f"/containers/{name}/stats?stream=0",
            f"/containers/{name}/top",
            f"/containers/{name}/changes",
            "/images/json",
            f"/images/{IMAGE}/json",
            "/networks",
            "/networks/none",
            "/volumes",
            "/services",
            "/tasks",
            "/nodes",
            f"{api}/containers/json",
            f"{api}./containers/json",
        ]
        for path in paths:
            status, body, _ = self.viewer_curl(path)
            self.assertNotEqual(status, 403, (path, body[:200]))
            self.assertIn(status, (200, 503), (path, body[:200]))
        status, body, _ = self.viewer_curl(f"{api}./containers/{name}/archive?path=/")
        self.assertEqual(status, 403, body)
