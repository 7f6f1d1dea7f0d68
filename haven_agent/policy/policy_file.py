# -*- test-case-name: tests.policy.test_policy_file -*-
"""
The policy file (`--policy FILE`): TOML, read with the standard library's
`tomllib`, in exactly the shape docs/policy.md shows.

Everything is checked when the file is read, at start-up, by
`--check-policy` and on SIGHUP: an unknown key, a route that is not the
engine's, a profile nobody defined. A mistake is a `PolicyError` naming
the file and, where it can be found, the line, and the policy in force
stays as it was; it never becomes a rule that matches nothing.

Without a file the policy is what the options say: the `--user` is `full`,
the read-only account `read-only`, and with client certificates every
certificate the client CA signed is `full`.
"""

from __future__ import annotations

import tomllib
from collections.abc import Mapping
from fnmatch import fnmatchcase
from typing import Any

from attrs import frozen

from haven_agent.policy.body_rules import create_rules
from haven_agent.policy.profiles import BUILT_IN, FULL, MODES, Profile, QueryRule
from haven_agent.policy.route_rules import RouteRule, RuleError
from haven_agent.policy.scope import Scope
from haven_agent.proxy.auth import is_bcrypt_hash

CERTIFICATE_PREFIX = "cert:"
PROFILE_KEYS = frozenset(
    (
        "allow",
        "deny",
        "mode",
        "query",
        "create",
        "scope",
        "max_connections",
        "idle_timeout",
    )
)


class PolicyError(ValueError):
    """
    What is wrong with a policy file, as "FILE:LINE: problem".
    """


@frozen
class Policy:
    """
    Who gets which profile.

    @ivar identities: Basic user name -> profile name.
    @ivar certificates: (glob on the client certificate's name, profile
        name), in the file's order: the first match wins.
    @ivar users: Basic users the file adds: name -> bcrypt hash.
    """

    profiles: Mapping[str, Profile]
    identities: Mapping[str, str]
    certificates: tuple[tuple[str, str], ...] = ()
    users: Mapping[str, str] = {}
    source: str | None = None

    def profile_of(self, user: str, byCertificate: bool) -> Profile | None:
        """
        The profile of C{user} (a certificate's name when
        C{byCertificate}), or None when the policy gives it none.
        """
        if byCertificate:
            for glob, name in self.certificates:
                if fnmatchcase(user, glob):
                    return self.profiles[name]
            return None
        name = self.identities.get(user)
        return None if name is None else self.profiles[name]

    def describe(self) -> list[str]:
        """
        One line per identity: who gets which profile, for --check-policy.
        """
        lines = []
        entries = list(self.identities.items()) + [
            (CERTIFICATE_PREFIX + glob, name) for glob, name in self.certificates
        ]
        for who, name in entries:
            profile = self.profiles[name]
            if name in BUILT_IN:
                detail = "built-in"
            else:
                detail = (
                    f"{profile.mode}; {len(profile.allow)} allow, "
                    f"{len(profile.deny)} deny, {len(profile.query)} query rules"
                )
            lines.append(f"{who}: {name} ({detail})")
        return lines


def default_policy(user: str, readOnlyUser: str | None, certificates: bool) -> Policy:
    """
    The policy when there is no file: what the options have always meant.
    """
    identities = {user: "full"}
    if readOnlyUser is not None:
        identities[readOnlyUser] = "read-only"
    return Policy(
        dict(BUILT_IN),
        identities,
        (("*", "full"),) if certificates else (),
    )


def load_policy(path: str) -> Policy:
    """
    @raise PolicyError: the file cannot be read or is not a valid policy.
    """
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        raise PolicyError(f"{path}: cannot read the policy: {e.strerror}") from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise PolicyError(f"{path}: the policy is not UTF-8 text") from None
    return read_policy(text, path)


def read_policy(text: str, path: str = "<policy>") -> Policy:
    try:
        document = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise PolicyError(f"{path}: not TOML: {e}") from None
    return _Reader(text, path).policy(document)


class _Reader:
    def __init__(self, text: str, path: str) -> None:
        self._lines = text.splitlines()
        self._path = path

    def fail(self, problem: str, *near: str, table: str | None = None) -> PolicyError:
        """
        The error, placed on the first line that holds all of C{near},
        looked for from the header of C{table} on when it is given.
        """
        start = 0
        if table is not None:
            header = f"[{table}]"
            for index, line in enumerate(self._lines):
                if line.split("#", 1)[0].strip() == header:
                    start = index + 1
                    break
        for number, line in enumerate(self._lines[start:], start + 1):
            code = line.split("#", 1)[0]
            if near and all(word in code for word in near):
                return PolicyError(f"{self._path}:{number}: {problem}")
        if start:
            return self.fail(problem, *near)
        return PolicyError(f"{self._path}: {problem}")

    def policy(self, document: dict[str, Any]) -> Policy:
        unknown = set(document) - {"version", "users", "identities", "profiles"}
        if unknown:
            key = sorted(unknown)[0]
            raise self.fail(f"unknown key {key!r}", key)
        if document.get("version") != 1:
            raise self.fail("the policy must say version = 1", "version")
        users = self.users(document.get("users", {}))
        profiles = dict(BUILT_IN)
        defined = document.get("profiles", {})
        if not isinstance(defined, dict):
            raise self.fail("[profiles] must be a table", "profiles")
        for name, body in defined.items():
            if name in BUILT_IN:
                raise self.fail(f"profile {name!r} is built in", name)
            profiles[name] = self.profile(name, body)
        identities, certificates = self.identities(
            document.get("identities", {}), profiles
        )
        return Policy(profiles, identities, certificates, users, self._path)

    def users(self, users: Any) -> dict[str, str]:
        if not isinstance(users, dict):
            raise self.fail("[users] must be a table", "users", table="users")
        for name, secret in users.items():
            if not isinstance(secret, str) or not is_bcrypt_hash(secret):
                raise self.fail(
                    f"user {name!r}: give a bcrypt hash as `htpasswd -nbB` "
                    f"prints it ($2y$...), not a password",
                    name,
                    table="users",
                )
        return dict(users)

    def identities(
        self, identities: Any, profiles: Mapping[str, Profile]
    ) -> tuple[dict[str, str], tuple[tuple[str, str], ...]]:
        if not isinstance(identities, dict):
            raise self.fail(
                "[identities] must be a table", "identities", table="identities"
            )
        names: dict[str, str] = {}
        certificates = []
        for who, profile in identities.items():
            if not isinstance(profile, str) or profile not in profiles:
                raise self.fail(
                    f"identity {who!r}: no profile {profile!r} (built in: "
                    f"{', '.join(BUILT_IN)})",
                    who,
                    table="identities",
                )
            if who.startswith(CERTIFICATE_PREFIX):
                certificates.append((who[len(CERTIFICATE_PREFIX) :], profile))
            else:
                names[who] = profile
        return names, tuple(certificates)

    def profile(self, name: str, body: Any) -> Profile:
        if not isinstance(body, dict):
            raise self.fail(
                f"profile {name!r} must be a table", name, table=f"profiles.{name}"
            )
        for key in body:
            if key not in PROFILE_KEYS:
                raise self.fail(
                    f"profile {name!r}: unknown key {key!r}",
                    key,
                    table=f"profiles.{name}",
                )
        mode = body.get("mode", "enforce")
        if mode not in MODES:
            raise self.fail(
                f"profile {name!r}: mode must be one of {', '.join(MODES)}",
                "mode",
                table=f"profiles.{name}",
            )
        create = None
        if "create" in body:
            if not isinstance(body["create"], dict):
                raise self.fail(
                    f"profile {name!r}: create must be a table",
                    "create",
                    table=f"profiles.{name}",
                )
            try:
                create = create_rules(body["create"])
            except ValueError as e:
                raise self.fail(
                    f"profile {name!r}: {e}", "create", table=f"profiles.{name}"
                ) from None
        most = body.get("max_connections")
        if most is not None and (
            not isinstance(most, int) or isinstance(most, bool) or most < 1
        ):
            raise self.fail(
                f"profile {name!r}: max_connections must be a whole number of at "
                f"least 1",
                "max_connections",
                table=f"profiles.{name}",
            )
        idle = body.get("idle_timeout")
        if idle is not None and (
            not isinstance(idle, (int, float)) or isinstance(idle, bool) or idle <= 0
        ):
            raise self.fail(
                f"profile {name!r}: idle_timeout must be a number of seconds above 0",
                "idle_timeout",
                table=f"profiles.{name}",
            )
        scope = None
        if "scope" in body:
            try:
                scope = Scope.parse(body["scope"])
            except ValueError as e:
                raise self.fail(
                    f"profile {name!r}: {e}", "scope", table=f"profiles.{name}"
                ) from None
        return Profile(
            name,
            scope=scope,
            maxConnections=most,
            idleTimeout=None if idle is None else float(idle),
            allow=self.rules(name, body.get("allow", []), "allow"),
            deny=self.rules(name, body.get("deny", []), "deny"),
            query=self.queries(name, body.get("query", {})),
            mode=mode,
            create=create,
        )

    def rules(self, name: str, rules: Any, key: str) -> tuple[RouteRule, ...]:
        if not isinstance(rules, list):
            raise self.fail(
                f"profile {name!r}: {key} must be a list of routes",
                key,
                table=f"profiles.{name}",
            )
        parsed = []
        for text in rules:
            try:
                parsed.append(RouteRule.parse(text))
            except RuleError as e:
                raise self.fail(
                    f"profile {name!r}: {e}", str(text), table=f"profiles.{name}"
                ) from None
        return tuple(parsed)

    def queries(self, name: str, queries: Any) -> tuple[QueryRule, ...]:
        if not isinstance(queries, dict):
            raise self.fail(
                f"profile {name!r}: query must be a table",
                "query",
                table=f"profiles.{name}",
            )
        parsed = []
        for text, parameters in queries.items():
            try:
                route = RouteRule.parse(text)
            except RuleError as e:
                raise self.fail(
                    f"profile {name!r}: {e}", text, table=f"profiles.{name}"
                ) from None
            if not isinstance(parameters, dict) or not parameters:
                raise self.fail(
                    f"profile {name!r}: query.{text!r} must name parameters",
                    text,
                    table=f"profiles.{name}",
                )
            for parameter, values in parameters.items():
                if not isinstance(values, list) or not all(
                    isinstance(v, str) for v in values
                ):
                    raise self.fail(
                        f"profile {name!r}: query.{text!r}.{parameter} must be a "
                        f"list of strings",
                        parameter,
                        table=f"profiles.{name}",
                    )
                parsed.append(QueryRule(route, parameter, frozenset(values)))
        return tuple(parsed)


__all__ = ["FULL", "Policy", "PolicyError", "default_policy", "load_policy"]
