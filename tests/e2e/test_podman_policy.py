"""
A policy in front of podman: podman's own API under `/libpod/` denied to a
profile, its Docker-compatible API still served. What was refused is
checked on podman's own socket: the container the refused libpod create
named does not exist.
"""

from __future__ import annotations

import json
import os
import uuid

from twisted.internet.defer import inlineCallbacks
from twisted.internet.threads import deferToThread
from twisted.trial.unittest import TestCase

from tests.e2e_agent import AgentProcess, read_until_closed
from tests.realdockerd import require
from tests.realpodman import IMAGE, shared_podman

POLICY = """
version = 1
[identities]
admin = "compat"
[profiles.compat]
allow = ["GET *", "HEAD /_ping", "POST /containers/create", "DELETE /containers/{id}"]
deny = ["* /libpod/*"]
"""


def ask(
    agent: AgentProcess, method: str, target: str, body: bytes = b""
) -> tuple[int, bytes]:
    """One request over a new TLS connection: the status and the body."""
    with agent.tls_socket() as tls:
        head = (
            f"{method} {target} HTTP/1.1\r\nHost: node\r\nConnection: close\r\n"
            f"Authorization: {agent.authorization()}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
        )
        tls.sendall(head.encode() + body)
        answer = read_until_closed(tls)
    head, _, rest = answer.partition(b"\r\n\r\n")
    return int(head.split(b" ", 2)[1]), rest


class LibpodDeniedTests(TestCase):
    timeout = 120

    @inlineCallbacks
    def setUp(self):
        self.podman = yield deferToThread(require, shared_podman)
        policy = os.path.abspath(self.mktemp())
        with open(policy, "w") as f:
            f.write(POLICY)
        self.agent = AgentProcess(
            self.podman.socket_path, extra_args=("--policy", policy)
        )
        self.addCleanup(self.agent.cleanup)
        self.addCleanup(self.agent.stop)
        yield deferToThread(self.agent.start)

    @inlineCallbacks
    def test_libpod_denied_compat_served(self):
        name = f"libpod-{uuid.uuid4().hex[:8]}"
        spec = json.dumps({"image": IMAGE, "name": name, "command": ["true"]}).encode()
        for method, target, body in [
            ("GET", "/v4.0.0/libpod/info", b""),
            ("GET", "/libpod/containers/json", b""),
            ("POST", "/v4.0.0/libpod/containers/create", spec),
            ("POST", "/v4.0.0/libpod/../libpod/containers/create", spec),
        ]:
            status, answer = yield deferToThread(ask, self.agent, method, target, body)
            self.assertIn(status, (400, 403), (target, answer))
            self.assertIn(b"haven-agent: ", answer, target)
        status, _ = yield deferToThread(
            self.podman.api_request, "GET", f"/containers/{name}/json"
        )
        self.assertEqual(status, 404)

        # The Docker-compatible API is still podman's.
        status, answer = yield deferToThread(
            ask, self.agent, "GET", "/v1.41/containers/json"
        )
        self.assertEqual(status, 200, answer)
        create = json.dumps({"Image": IMAGE, "Cmd": ["true"]}).encode()
        status, answer = yield deferToThread(
            ask, self.agent, "POST", f"/v1.41/containers/create?name={name}", create
        )
        self.assertEqual(status, 201, answer)
        self.addCleanup(
            deferToThread,
            self.podman.api_request,
            "DELETE",
            f"/containers/{name}?force=1",
        )
        status, _ = yield deferToThread(
            self.podman.api_request, "GET", f"/containers/{name}/json"
        )
        self.assertEqual(status, 200)
