"""
Property tests of the policy's readings: a path or a JSON body that dockerd
reads as X is judged as X, however it is spelled. Hypothesis generates the
spellings dockerd's router and Go's encoding/json treat alike.
"""

from __future__ import annotations

import json

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from haven_agent.policy.body_rules import create_rules
from haven_agent.policy.route_rules import canonical_problem, request_route
from haven_agent.proxy.engine_routes import ENGINE_ROUTES
from haven_agent.proxy.http_head import parse_head

RULES = create_rules({"privileged": False, "host_namespaces": False, "devices": False})

#: Runes Go's folding takes to each ASCII letter besides its two cases.
GO_FOLDS = {"s": "\u017f", "k": "\u212a", "i": "\u0131\u0130"}

TEMPLATES = sorted({t for _, t in ENGINE_ROUTES if not t.endswith(("*", "/"))})
segment = st.text(
    "abcdefghijklmnopqrstuvwxyz0123456789_.-", min_size=1, max_size=12
).filter(lambda s: s not in (".", ".."))


def head(target: bytes, method: bytes = b"GET"):
    return parse_head(method + b" " + target + b" HTTP/1.1\r\nHost: d\r\n\r\n")


@st.composite
def go_spelling(draw, name: str) -> str:
    """
    A spelling of the field C{name} that Go's decoder matches to it.
    """
    out = []
    for character in name:
        lower = character.lower()
        choices = [lower, lower.upper()] + list(GO_FOLDS.get(lower, ""))
        out.append(draw(st.sampled_from(choices)))
    return "".join(out)


@st.composite
def escaped(draw, text: str) -> str:
    """
    C{text} as a JSON string body with some characters \\u-escaped.
    """
    return "".join(f"\\u{ord(c):04x}" if draw(st.booleans()) else c for c in text)


class PathProperties(SynchronousTestCase):
    @settings(max_examples=300, deadline=None)
    @given(
        st.sampled_from(TEMPLATES), st.lists(segment, min_size=3, max_size=3), st.data()
    )
    def test_dot_segments_and_slashes_found(self, template, values, data):
        """
        A canonical path is canonical and reaches its template; the same
        path with a dot segment, an empty segment, an encoded slash or a
        trailing slash is found, whatever dockerd would make of it.
        """
        path = template
        for value in values:
            path = path.replace("{id}", value, 1).replace("{name}", value, 1)
        canonical = head(path.encode())
        self.assertIsNone(canonical_problem(canonical), path)
        parts = path.split("/")
        at = data.draw(st.integers(1, len(parts) - 1))
        spoilt = data.draw(
            st.sampled_from(
                [
                    "/".join(parts[:at] + ["."] + parts[at:]),
                    "/".join(parts[:at] + ["x", ".."] + parts[at:]),
                    "/".join(parts[:at] + [""] + parts[at:]),
                    "/".join(parts[:at] + ["%2e%2E"] + parts[at:]).replace(
                        "%2e%2E", "x/%2e%2E", 1
                    ),
                    path + "/",
                    "/".join(parts[:at]) + "/a%2Fb/" + "/".join(parts[at:]),
                ]
            )
        )
        self.assertIsNotNone(canonical_problem(head(spoilt.encode())), spoilt)

    @settings(max_examples=200, deadline=None)
    @given(
        st.sampled_from(TEMPLATES),
        segment,
        st.sampled_from(["", "/v1.41", "/v1.41.", "/v1.41.0", "/v1"]),
    )
    def test_version_prefix_does_not_move_a_route(self, template, value, version):
        path = template.replace("{id}", value).replace("{name}", value)
        for method, registered in ENGINE_ROUTES:
            if registered == template and method != "*":
                plain = request_route(head(path.encode(), method.encode()))
                versioned = request_route(
                    head((version + path).encode(), method.encode())
                )
                self.assertEqual(plain, versioned, (version, path))


class BodyProperties(SynchronousTestCase):
    @settings(max_examples=300, deadline=None)
    @given(go_spelling("HostConfig"), go_spelling("Privileged"), st.data())
    def test_privileged_in_any_spelling(self, hostConfig, privileged, data):
        """
        Every spelling Go's decoder takes for HostConfig.Privileged, and
        any of its characters escaped, is refused.
        """
        key = data.draw(escaped(privileged))
        body = '{"Image": "x", "' + hostConfig + '": {"' + key + '": true}}'
        self.assertIsNotNone(RULES.problem("/containers/create", body.encode()), body)

    @settings(max_examples=200, deadline=None)
    @given(go_spelling("PidMode"), go_spelling("HostConfig"))
    def test_namespaces_in_any_spelling(self, pidMode, hostConfig):
        body = json.dumps({"Image": "x", hostConfig: {pidMode: "host"}})
        self.assertIsNotNone(RULES.problem("/containers/create", body.encode()), body)

    @settings(max_examples=200, deadline=None)
    @given(go_spelling("HostConfig"), go_spelling("HostConfig"), st.booleans())
    def test_repeated_objects_refused(self, first, second, privilegedFirst):
        """
        Go merges repeated objects; the agent refuses them, whichever
        carries the privilege.
        """
        privileged = '{"Privileged": true}'
        harmless = '{"Memory": 0}'
        a, b = (privileged, harmless) if privilegedFirst else (harmless, privileged)
        body = f'{{"Image": "x", "{first}": {a}, "{second}": {b}}}'
        self.assertIsNotNone(RULES.problem("/containers/create", body.encode()), body)

    @settings(max_examples=100, deadline=None)
    @given(
        st.dictionaries(
            st.sampled_from(["Memory", "CpuShares", "Binds", "Dns"]),
            st.integers(0, 9),
            max_size=3,
        )
    )
    def test_harmless_passes(self, host):
        body = json.dumps({"Image": "x", "HostConfig": host})
        self.assertIsNone(RULES.problem("/containers/create", body.encode()), body)
