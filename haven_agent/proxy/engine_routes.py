# -*- test-case-name: tests.proxy.test_engine_routes -*-
"""
Which of the Docker engine's API routes a request reaches, named by the
route's template (`/containers/{id}/json`).

Two users need the same names. Metrics label every request with its route,
and the label must be bounded: a label per container ID or image name would
grow without end, a label per template cannot. A per-credential policy names
the routes it allows by template, so templates are exact, stable strings and
`is_known_template` tells a policy's author whether a name is one of them.

The table is moby's router: the `router.New*Route` registrations under
`daemon/server/router/` of moby/moby at commit
b985e2313a8676e18072b442911fc8f64f17d440, in the order `buildRouters`
(`daemon/command/daemon.go`) registers them, plus one entry for podman's
own API. A route a newer engine adds matches nothing here (`route_of` gives
None) until it is added.

Templates keep moby's literal path parts and write its variables one of two
ways:

- `{id}` is exactly one path segment: an ID or a name that cannot hold a
  slash (containers, exec instances, checkpoints, swarm objects).
- `{name}` is one or more segments: references that may hold slashes, such
  as the image `registry.example:5000/team/app:1.2`.

A template ending in `*` names a prefix: every path under it, with the
method `*` meaning any method. Podman serves its own API under `/libpod/`
(`/v4.0.0/libpod/...` once the version is removed), which is one route
here, `/libpod/*`, whatever the method: `OPTIONS /libpod/info` is podman's,
not moby's `OPTIONS /*`.

Matching follows what dockerd's gorilla/mux router does with a request, on
the path `http_head.RequestHead.apiPath` gives (percent-decoded, dot and
empty segments removed, no `/vX.Y` prefix), with two choices of our own:

- A trailing slash is optional. gorilla/mux does not strip one (moby
  registers both `/networks` and `/networks/`, and answers 404 to
  `/containers/json/`), but the normalised path has already lost it, as it
  has for `read_only`, whose templates end in `/?` too. So `/networks/` is
  the same route as `/networks` here, and `/debug/pprof/` keeps the slash
  moby spells it with yet matches `/debug/pprof`.
- HEAD reaches the GET route when the path has no HEAD route of its own.
  dockerd answers such a HEAD with 404 (gorilla/mux compares methods
  exactly), so its label is the route the client was asking about and its
  status says it failed; a policy compares the method as well as the route.

A path that fits no template, such as `/containers/a/b/json`, is None even
where moby's `{name:.*}` would take it to a handler, which then fails to
find the object `a/b`.

The matcher never tries every route: a literal path is one dict lookup on
(method, path), and a path with variables is one compiled regular
expression, the alternation of the routes sharing its method and first path
segment, tried in table order, so the first registered match wins as in
gorilla/mux. The tests check that the table is unambiguous, so that order
only decides between a literal route and a variable one that also fits it
(`/debug/pprof/cmdline`), where the literal one is registered first.
"""

from __future__ import annotations

import re

#: (method, template) of every route of the Docker engine's API.
ENGINE_ROUTES: tuple[tuple[str, str], ...] = (
    # checkpoint/checkpoint.go (experimental), registered before the
    # container router so that its DELETE is not taken by
    # DELETE /containers/{name:.*}. Checkpoint IDs are restricted names, as
    # container names are (no slash).
    ("GET", "/containers/{id}/checkpoints"),
    ("POST", "/containers/{id}/checkpoints"),
    ("DELETE", "/containers/{id}/checkpoints/{id}"),
    # container/container.go. moby writes {name:.*}, but a container is
    # named by its ID or by a name matching [a-zA-Z0-9][a-zA-Z0-9_.-]+, so
    # one segment.
    ("HEAD", "/containers/{id}/archive"),
    ("GET", "/containers/json"),
    ("GET", "/containers/{id}/export"),
    ("GET", "/containers/{id}/changes"),
    ("GET", "/containers/{id}/json"),
    ("GET", "/containers/{id}/top"),
    ("GET", "/containers/{id}/logs"),
    ("GET", "/containers/{id}/stats"),
    ("GET", "/containers/{id}/attach/ws"),
    ("GET", "/exec/{id}/json"),
    ("GET", "/containers/{id}/archive"),
    ("POST", "/containers/create"),
    ("POST", "/containers/{id}/kill"),
    ("POST", "/containers/{id}/pause"),
    ("POST", "/containers/{id}/unpause"),
    ("POST", "/containers/{id}/restart"),
    ("POST", "/containers/{id}/start"),
    ("POST", "/containers/{id}/stop"),
    ("POST", "/containers/{id}/wait"),
    ("POST", "/containers/{id}/resize"),
    ("POST", "/containers/{id}/attach"),
    ("POST", "/containers/{id}/exec"),
    # Exec instances, in the container router: their IDs are generated hex.
    ("POST", "/exec/{id}/start"),
    ("POST", "/exec/{id}/resize"),
    ("POST", "/containers/{id}/rename"),
    ("POST", "/containers/{id}/update"),
    ("POST", "/containers/prune"),
    ("POST", "/commit"),
    ("PUT", "/containers/{id}/archive"),
    ("DELETE", "/containers/{id}"),
    # image/image.go. Image references hold slashes (repository paths) as
    # well as ports, tags and digests: {name}.
    ("GET", "/images/json"),
    ("GET", "/images/search"),
    ("GET", "/images/get"),
    ("GET", "/images/{name}/get"),
    ("GET", "/images/{name}/history"),
    ("GET", "/images/{name}/json"),
    ("GET", "/images/{name}/attestations"),
    ("POST", "/images/load"),
    ("POST", "/images/create"),
    ("POST", "/images/{name}/push"),
    ("POST", "/images/{name}/tag"),
    ("POST", "/images/prune"),
    ("DELETE", "/images/{name}"),
    # system/system.go. The OPTIONS route is moby's /{anyroute:.*}: every
    # path, which the prefix form writes /*.
    ("OPTIONS", "/*"),
    ("GET", "/_ping"),
    ("HEAD", "/_ping"),
    ("GET", "/events"),
    ("GET", "/info"),
    ("GET", "/version"),
    ("GET", "/system/df"),
    ("POST", "/auth"),
    # volume/volume.go. Only the local driver restricts volume names; the
    # volume store takes any name on Linux and hands it to the driver, and
    # plugin drivers take names with slashes: {name}.
    ("GET", "/volumes"),
    ("GET", "/volumes/{name}"),
    ("POST", "/volumes/create"),
    ("POST", "/volumes/prune"),
    ("PUT", "/volumes/{name}"),
    ("DELETE", "/volumes/{name}"),
    # build/build.go.
    ("POST", "/build"),
    ("POST", "/build/prune"),
    ("POST", "/build/cancel"),
    # session/session.go: hijacked (h2c) for BuildKit sessions.
    ("POST", "/session"),
    # swarm/cluster.go. moby writes {id} here already, which gorilla/mux
    # takes as one segment.
    ("POST", "/swarm/init"),
    ("POST", "/swarm/join"),
    ("POST", "/swarm/leave"),
    ("GET", "/swarm"),
    ("GET", "/swarm/unlockkey"),
    ("POST", "/swarm/update"),
    ("POST", "/swarm/unlock"),
    ("GET", "/services"),
    ("GET", "/services/{id}"),
    ("POST", "/services/create"),
    ("POST", "/services/{id}/update"),
    ("DELETE", "/services/{id}"),
    ("GET", "/services/{id}/logs"),
    ("GET", "/nodes"),
    ("GET", "/nodes/{id}"),
    ("DELETE", "/nodes/{id}"),
    ("POST", "/nodes/{id}/update"),
    ("GET", "/tasks"),
    ("GET", "/tasks/{id}"),
    ("GET", "/tasks/{id}/logs"),
    ("GET", "/secrets"),
    ("POST", "/secrets/create"),
    ("DELETE", "/secrets/{id}"),
    ("GET", "/secrets/{id}"),
    ("POST", "/secrets/{id}/update"),
    ("GET", "/configs"),
    ("POST", "/configs/create"),
    ("DELETE", "/configs/{id}"),
    ("GET", "/configs/{id}"),
    ("POST", "/configs/{id}/update"),
    # plugin/plugin.go. Plugin references are image references
    # (vieux/sshfs:latest): {name}.
    ("GET", "/plugins"),
    ("GET", "/plugins/{name}/json"),
    ("GET", "/plugins/privileges"),
    ("DELETE", "/plugins/{name}"),
    ("POST", "/plugins/{name}/enable"),
    ("POST", "/plugins/{name}/disable"),
    ("POST", "/plugins/pull"),
    ("POST", "/plugins/{name}/push"),
    ("POST", "/plugins/{name}/upgrade"),
    ("POST", "/plugins/{name}/set"),
    ("POST", "/plugins/create"),
    # distribution/distribution.go: an image reference, {name}.
    ("GET", "/distribution/{name}/json"),
    # network/network.go. moby also registers GET /networks/, the same
    # route once a trailing slash is optional. Docker does not restrict
    # network names beyond being non-empty (the strict check of 1.13 was
    # reverted, moby/libnetwork#1631), and moby takes GET /networks/{id:.+},
    # so a name may hold slashes: {name}.
    ("GET", "/networks"),
    ("GET", "/networks/{name}"),
    ("POST", "/networks/create"),
    ("POST", "/networks/{name}/connect"),
    ("POST", "/networks/{name}/disconnect"),
    ("POST", "/networks/prune"),
    ("DELETE", "/networks/{name}"),
    # debug/debug.go. moby's bare {name} is one segment (a profile name).
    ("GET", "/debug/vars"),
    ("GET", "/debug/pprof/"),
    ("GET", "/debug/pprof/cmdline"),
    ("GET", "/debug/pprof/profile"),
    ("GET", "/debug/pprof/symbol"),
    ("GET", "/debug/pprof/trace"),
    ("GET", "/debug/pprof/{id}"),
    # grpc/grpc.go: hijacked (h2c), registered when BuildKit is the builder.
    ("POST", "/grpc"),
    # Podman's own API, not moby's: one route for all of it.
    ("*", "/libpod/*"),
)

_PLACEHOLDERS = {"{id}": rb"[^/]++", "{name}": rb".+"}

_TEMPLATES = frozenset(template for _, template in ENGINE_ROUTES)


def is_known_template(template: str) -> bool:
    """
    Is C{template} exactly the template of a route in L{ENGINE_ROUTES}, for
    any method? A policy naming a route that is not would never match.
    """
    return template in _TEMPLATES


def _segment_pattern(segment: str) -> bytes:
    part = _PLACEHOLDERS.get(segment)
    if part is not None:
        return part
    if "{" in segment or "}" in segment or "*" in segment:
        raise ValueError(f"malformed template segment {segment!r}")
    return re.escape(segment.encode("ascii"))


def _build(
    routes: tuple[tuple[str, str], ...],
) -> tuple[
    dict[tuple[bytes, bytes], str],
    dict[tuple[bytes, bytes], tuple[re.Pattern[bytes], tuple[str | None, ...]]],
    dict[bytes, str],
    dict[bytes, str],
]:
    """
    The lookup structures of L{route_of}: literal routes by (method, path),
    variable routes as one alternation per (method, first segment), prefix
    routes by first segment (any method) and the all-paths route by method.

    @raise ValueError: for a table L{route_of} could not match
        unambiguously: a route listed twice, a malformed template, a route
        under a prefix route.
    """
    static: dict[tuple[bytes, bytes], str] = {}
    variable: dict[tuple[bytes, bytes], list[tuple[bytes, str]]] = {}
    segmentPrefixes: dict[bytes, str] = {}
    allPaths: dict[bytes, str] = {}
    if len(set(routes)) != len(routes):
        raise ValueError("a route is listed twice")
    for method, template in routes:
        methodBytes = method.encode("ascii")
        if not template.startswith("/"):
            raise ValueError(f"template {template!r} is not a path")
        if template.endswith("*"):
            # Two kinds of prefix route: all paths of one method, and all
            # methods under one first segment.
            segment = template[1:-2]
            if template == "/*" and method != "*":
                allPaths[methodBytes] = template
            elif (
                method == "*"
                and template.endswith("/*")
                and re.fullmatch(r"[^/{}*]+", segment)
            ):
                segmentPrefixes[segment.encode("ascii")] = template
            else:
                raise ValueError(f"unsupported prefix route {method} {template}")
            continue
        if method == "*":
            raise ValueError(f"method * needs a prefix template, not {template!r}")
        bare = template.rstrip("/") or "/"
        segments = bare[1:].split("/")
        patterns = [_segment_pattern(segment) for segment in segments]
        if segments[0] in _PLACEHOLDERS:
            raise ValueError(f"template {template!r} has no literal first segment")
        if not any(segment in _PLACEHOLDERS for segment in segments):
            key = (methodBytes, bare.encode("ascii"))
            if key in static:
                raise ValueError(f"two routes for {method} {bare}")
            static[key] = template
            continue
        # The alternation is matched after the first segment, which the
        # group's key already holds.
        key = (methodBytes, segments[0].encode("ascii"))
        variable.setdefault(key, []).append((b"/".join(patterns[1:]), template))

    # HEAD reaches the GET route where no HEAD route matches: HEAD's own
    # routes come first in its alternations, the GET ones after.
    for (staticMethod, path), template in list(static.items()):
        if staticMethod == b"GET":
            static.setdefault((b"HEAD", path), template)
    for (groupMethod, first), alternatives in list(variable.items()):
        if groupMethod == b"GET":
            variable.setdefault((b"HEAD", first), []).extend(alternatives)

    for (_, path), template in static.items():
        if path.split(b"/")[1] in segmentPrefixes:
            raise ValueError(f"{template!r} is under a prefix route")
    for (_, first), alternatives in variable.items():
        if first in segmentPrefixes:
            raise ValueError(f"{alternatives[0][1]!r} is under a prefix route")

    # One capturing group per alternative and none inside them, so a
    # match's lastindex is its route's index in (None, *templates).
    compiled = {
        key: (
            re.compile(
                b"|".join(b"(" + pattern + rb"\Z)" for pattern, _ in alternatives),
                re.S,
            ),
            (None, *(template for _, template in alternatives)),
        )
        for key, alternatives in variable.items()
    }
    return static, compiled, segmentPrefixes, allPaths


_STATIC, _VARIABLE, _SEGMENT_PREFIXES, _ALL_PATHS = _build(ENGINE_ROUTES)


def route_of(method: bytes, apiPath: bytes) -> str | None:
    """
    The template of the route that (C{method}, C{apiPath}) reaches, or None.

    @param apiPath: the normalised path without its API version, as
        L{haven_agent.proxy.http_head.RequestHead.apiPath} gives it.
    """
    template = _STATIC.get((method, apiPath))
    if template is not None:
        return template
    if len(apiPath) > 1 and apiPath.endswith(b"/"):
        apiPath = apiPath[:-1]
        template = _STATIC.get((method, apiPath))
        if template is not None:
            return template
    slash = apiPath.find(b"/", 1)
    segment = apiPath[1:slash] if slash > 0 else apiPath[1:]
    template = _SEGMENT_PREFIXES.get(segment)
    if template is not None:
        return template
    group = _VARIABLE.get((method, segment))
    if group is not None and slash > 0:
        match = group[0].match(apiPath, slash + 1)
        if match is not None:
            return group[1][match.lastindex or 0]
    return _ALL_PATHS.get(method)
