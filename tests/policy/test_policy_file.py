"""
Tests for L{haven_agent.policy.policy_file}: the documented shape read,
and every mistake an error that names the file and line instead of a
rule that silently matches nothing.
"""

from __future__ import annotations

import os

from twisted.trial.unittest import SynchronousTestCase

from haven_agent.policy.policy_file import PolicyError, load_policy, read_policy
from tests.policy.test_enforcement import HASH, POLICY


class ReadTests(SynchronousTestCase):
    def test_example(self) -> None:
        policy = read_policy(POLICY, "p.toml")
        self.assertEqual(policy.identities["traefik"], "discovery")
        self.assertEqual(policy.certificates, (("ci-*", "ci"),))
        self.assertEqual(set(policy.users), {"traefik", "learner", "nobody"})
        ci = policy.profiles["ci"]
        self.assertEqual(len(ci.allow), 5)
        self.assertEqual([r.text for r in ci.deny], ["* /libpod/*"])
        self.assertEqual(ci.query[0].name, "signal")
        self.assertEqual(policy.profiles["learning"].mode, "log")
        self.assertEqual(
            policy.describe(),
            [
                "admin: full (built-in)",
                "traefik: discovery (enforce; 5 allow, 0 deny, 0 query rules)",
                "learner: learning (log; 1 allow, 0 deny, 0 query rules)",
                "prom: metrics (built-in)",
                "cert:ci-*: ci (enforce; 5 allow, 1 deny, 1 query rules)",
            ],
        )

    def test_mistakes(self) -> None:
        """
        Each mistake names the line it is on.
        """
        for text, line, words in [
            ("version = 2\n", 1, "version = 1"),
            ("version = 1\nextra = 1\n", 2, "unknown key 'extra'"),
            ('version = 1\n[users]\nbob = "plain"\n', 3, "bcrypt hash"),
            ('version = 1\n[identities]\nbob = "nope"\n', 3, "no profile 'nope'"),
            (
                'version = 1\n[profiles.full]\nallow = ["GET *"]\n',
                2,
                "'full' is built in",
            ),
            (
                'version = 1\n[profiles.p]\nallow = ["GET /containers/.*"]\n',
                3,
                "no route of the engine",
            ),
            (
                'version = 1\n[profiles.p]\nallow = ["GET /versions"]\n',
                3,
                "not a route of the engine",
            ),
            ('version = 1\n[profiles.p]\nallow = "GET *"\n', 3, "list of routes"),
            ('version = 1\n[profiles.p]\nmode = "audit"\n', 3, "mode must be"),
            ('version = 1\n[profiles.p]\nalow = ["GET *"]\n', 3, "unknown key 'alow'"),
            ("version = 1\n[profiles.p]\nmax_connections = 0\n", 3, "at least 1"),
            ("version = 1\n[profiles.p]\nmax_connections = 1.5\n", 3, "whole number"),
            ('version = 1\n[profiles.p]\nidle_timeout = "1m"\n', 3, "seconds above 0"),
            (
                'version = 1\n[profiles.p]\nscope = { label = "owner" }\n',
                3,
                'the label must be "key=value"',
            ),
            (
                "version = 1\n[profiles.p]\ncreate = { privileged = true }\n",
                3,
                "privileged = true allows nothing more",
            ),
            (
                'version = 1\n[profiles.p]\ncreate = { bind_sources = ["srv"] }\n',
                3,
                "must be absolute",
            ),
            (
                'version = 1\n[profiles.p]\nquery."GET /info".x = [1]\n',
                3,
                "list of strings",
            ),
        ]:
            with self.assertRaises(PolicyError, msg=text) as caught:
                read_policy(text, "p.toml")
            self.assertIn(f"p.toml:{line}: ", str(caught.exception), text)
            self.assertIn(words, str(caught.exception), text)

    def test_not_toml(self) -> None:
        with self.assertRaises(PolicyError) as caught:
            read_policy("version = \n", "p.toml")
        self.assertIn("p.toml: not TOML", str(caught.exception))
        self.assertIn("line 1", str(caught.exception))

    def test_files(self) -> None:
        path = self.mktemp()
        with self.assertRaises(PolicyError) as caught:
            load_policy(path)
        self.assertIn("cannot read the policy", str(caught.exception))
        with open(path, "wb") as f:
            f.write(b"version = 1\n# \xff\n")
        with self.assertRaises(PolicyError) as caught:
            load_policy(path)
        self.assertIn("not UTF-8", str(caught.exception))
        with open(path, "w") as f:
            f.write(f'version = 1\n[users]\nx = "{HASH}"\n')
        self.assertEqual(list(load_policy(path).users), ["x"])
        os.remove(path)


class TermsTests(SynchronousTestCase):
    def test_terms(self) -> None:
        from haven_agent.policy.enforcement import PolicyRule
        from haven_agent.proxy.decision import Allow

        policy = read_policy(
            'version = 1\n[identities]\nadmin = "full"\nviewer = "read-only"\n'
            'ci = "p"\n[profiles.p]\nallow = ["GET *"]\nmax_connections = 3\n'
            "idle_timeout = 10\n"
        )
        rule = PolicyRule(policy, readOnlyIdle=60.0)
        self.assertEqual(rule.terms(Allow("admin", "password")), (None, None))
        self.assertEqual(rule.terms(Allow("viewer", "password")), (None, 60.0))
        self.assertEqual(rule.terms(Allow("ci", "password")), (3, 10.0))
        self.assertEqual(rule.terms(Allow("ghost", "password")), (None, None))
