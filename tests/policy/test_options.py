"""
Tests for the policy's options in L{haven_agent.tap}: `--policy` checked
when the options are read, `--check-policy` printing each identity's
profile.
"""

from __future__ import annotations

import io
from contextlib import redirect_stderr, redirect_stdout

from twisted.python import usage
from twisted.trial.unittest import SynchronousTestCase

from haven_agent.tap import Options
from tests.policy.test_enforcement import HASH, POLICY
from tests.test_tap import parse


class PolicyOptionTests(SynchronousTestCase):
    def write(self, text: str) -> str:
        path = self.mktemp()
        with open(path, "w") as f:
            f.write(text)
        return path

    def test_policy(self) -> None:
        path = self.write(POLICY)
        self.assertEqual(parse(["--policy", path]).config.policy, path)
        self.assertEqual(
            parse(environ={"HAVEN_AGENT_POLICY": path}).config.policy, path
        )
        self.assertIsNone(parse().config.policy)

    def test_bad_policy(self) -> None:
        path = self.write('version = 1\n[profiles.p]\nallow = ["GET /nope"]\n')
        with self.assertRaises(usage.UsageError) as caught:
            parse(["--policy", path])
        self.assertIn(f"--policy {path}:3: ", str(caught.exception))

    def test_user_given_twice(self) -> None:
        path = self.write(f'version = 1\n[users]\nadmin = "{HASH}"\n')
        with self.assertRaises(usage.UsageError) as caught:
            parse(["--policy", path])
        self.assertIn("user 'admin' is given by the options", str(caught.exception))

    def check(self, path: str) -> tuple[int, str, str]:
        out, err = io.StringIO(), io.StringIO()
        with redirect_stdout(out), redirect_stderr(err):
            with self.assertRaises(SystemExit) as caught:
                Options(environ={}).parseOptions(["--check-policy", path])
        return caught.exception.code, out.getvalue(), err.getvalue()

    def test_check_policy(self) -> None:
        code, out, err = self.check(self.write(POLICY))
        self.assertEqual((code, err), (0, ""))
        self.assertIn("a valid policy", out)
        self.assertIn("  traefik: discovery (enforce; 5 allow", out)
        self.assertIn("  cert:ci-*: ci", out)

    def test_check_bad_policy(self) -> None:
        path = self.write("version = 1\n[identities]\nbob = 'ghost'\n")
        code, out, err = self.check(path)
        self.assertEqual((code, out), (1, ""))
        self.assertIn(f"{path}:3: identity 'bob': no profile 'ghost'", err)
        self.assertNotIn("Traceback", err)
