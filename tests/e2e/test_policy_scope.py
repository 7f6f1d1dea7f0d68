"""
A profile's scope by label, end to end: the agent in front of the real
dockerd with `--policy`, the docker CLI through it, and dockerd's own socket
to check what happened. A scoped identity sees and touches only the
containers carrying its label; what it may not do leaves dockerd as it was.
"""

from __future__ import annotations

import json
import os
import subprocess
import uuid

from twisted.internet.defer import inlineCallbacks
from twisted.internet.threads import deferToThread
from twisted.trial.unittest import TestCase

from tests.e2e_agent import AgentProcess
from tests.realdockerd import IMAGE, output_tail, require, shared_dockerd

LABEL = "com.example.owner=ci"
POLICY = """
version = 1
[identities]
admin = "ci"
[profiles.ci]
allow = ["GET *", "HEAD /_ping", "POST /containers/create",
         "POST /containers/{id}/start", "POST /containers/{id}/stop",
         "POST /containers/{id}/kill", "DELETE /containers/{id}",
         "POST /containers/{id}/wait", "POST /containers/{id}/attach"]
scope = { label = "com.example.owner=ci" }
"""


class ScopeTests(TestCase):
    timeout = 180

    @inlineCallbacks
    def setUp(self):
        self.dockerd = yield deferToThread(require, shared_dockerd)
        suffix = uuid.uuid4().hex[:8]
        self.mine = f"scope-mine-{suffix}"
        self.theirs = f"scope-theirs-{suffix}"
        for name, labels in ((self.mine, ["--label", LABEL]), (self.theirs, [])):
            yield deferToThread(
                self.dockerd.docker,
                "run",
                "-d",
                "--name",
                name,
                *labels,
                IMAGE,
                "sleep",
                "300",
            )
            self.addCleanup(
                deferToThread, self.dockerd.docker, "rm", "-f", name, check=False
            )
        policy = os.path.abspath(self.mktemp())
        with open(policy, "w") as f:
            f.write(POLICY)
        self.agent = AgentProcess(
            self.dockerd.socket_path, extra_args=("--policy", policy)
        )
        self.addCleanup(self.agent.cleanup)
        self.addCleanup(self.agent.stop)
        yield deferToThread(self.agent.start)

    def cli(self, *args: str) -> subprocess.CompletedProcess:
        env, base = self.agent.docker_cli_env_and_args()
        return subprocess.run(
            ["docker", *base, *args],
            capture_output=True,
            env=env,
            timeout=60,
            stdin=subprocess.DEVNULL,
            check=False,
        )

    def running(self, name: str) -> bool:
        status, body = self.dockerd.api_request("GET", f"/containers/{name}/json")
        return status == 200 and json.loads(body)["State"]["Running"]

    @inlineCallbacks
    def test_scope(self):
        listed = yield deferToThread(self.cli, "ps", "-a", "--format", "{{.Names}}")
        self.assertEqual(listed.returncode, 0, listed.stderr)
        names = listed.stdout.decode().split()
        self.assertIn(self.mine, names)
        self.assertNotIn(self.theirs, names)

        # Their container: inspect, stop and rm refused; still running.
        for args in (
            ("inspect", self.theirs),
            ("stop", self.theirs),
            ("rm", "-f", self.theirs),
        ):
            refused = yield deferToThread(self.cli, *args)
            self.assertNotEqual(refused.returncode, 0, args)
            self.assertIn(b"is not labelled " + LABEL.encode(), refused.stderr, args)
        self.assertTrue((yield deferToThread(self.running, self.theirs)))

        # Mine: inspect and stop work.
        inspected = yield deferToThread(self.cli, "inspect", self.mine)
        self.assertEqual(inspected.returncode, 0, inspected.stderr)
        stopped = yield deferToThread(self.cli, "stop", "-t", "0", self.mine)
        self.assertEqual(stopped.returncode, 0, stopped.stderr)
        self.assertFalse((yield deferToThread(self.running, self.mine)))

        # A create without the label is refused and creates nothing.
        name = f"scope-new-{uuid.uuid4().hex[:8]}"
        made = yield deferToThread(self.cli, "create", "--name", name, IMAGE, "true")
        self.assertNotEqual(made.returncode, 0)
        self.assertIn(b"must carry the label", made.stderr)
        status, _ = yield deferToThread(
            self.dockerd.api_request, "GET", f"/containers/{name}/json"
        )
        self.assertEqual(status, 404, output_tail(self.agent.logs(), 2000))
        # With the label it is created, and in scope.
        made = yield deferToThread(
            self.cli, "create", "--name", name, "--label", LABEL, IMAGE, "true"
        )
        self.addCleanup(
            deferToThread, self.dockerd.docker, "rm", "-f", name, check=False
        )
        self.assertEqual(made.returncode, 0, made.stderr)
        status, _ = yield deferToThread(
            self.dockerd.api_request, "GET", f"/containers/{name}/json"
        )
        self.assertEqual(status, 200)
