"""
Tests for L{haven_agent.proxy.engine_routes}: which route of the Docker
engine's API a request reaches, named by its template, on the path as the
request head gives it (versioned, percent-encoded, with dot segments).

The table itself is checked too: every template is reached by a path built
from it, also when its placeholders hold the table's own keywords, so no
template hides another.
"""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from haven_agent.proxy.engine_routes import (
    ENGINE_ROUTES,
    _build,
    is_known_template,
    route_of,
)
from haven_agent.proxy.http_head import parse_head


def route(request_line: bytes) -> str | None:
    head = parse_head(request_line + b"\r\n\r\n")
    return route_of(head.method, head.apiPath)


DIGEST = "sha256:" + "0123456789abcdef" * 4

#: (request line, the template it reaches), a few for every router.
ROUTED: list[tuple[bytes, str]] = [
    # system
    (b"GET /_ping HTTP/1.1", "/_ping"),
    (b"HEAD /_ping HTTP/1.1", "/_ping"),
    (b"GET /v1.41/_ping HTTP/1.1", "/_ping"),
    (b"GET /version HTTP/1.1", "/version"),
    (b"GET /info HTTP/1.1", "/info"),
    (b"GET /events?since=1&filters=%7B%7D HTTP/1.1", "/events"),
    (b"GET /system/df HTTP/1.1", "/system/df"),
    (b"POST /auth HTTP/1.1", "/auth"),
    (b"OPTIONS /containers/json HTTP/1.1", "/*"),
    (b"OPTIONS / HTTP/1.1", "/*"),
    (b"OPTIONS * HTTP/1.1", "/*"),
    # checkpoint
    (b"GET /containers/abc/checkpoints HTTP/1.1", "/containers/{id}/checkpoints"),
    (b"POST /containers/abc/checkpoints HTTP/1.1", "/containers/{id}/checkpoints"),
    (
        b"DELETE /containers/abc/checkpoints/cp1 HTTP/1.1",
        "/containers/{id}/checkpoints/{id}",
    ),
    # container
    (b"GET /containers/json?all=1 HTTP/1.1", "/containers/json"),
    (b"GET /v1.41/containers/abc/json HTTP/1.1", "/containers/{id}/json"),
    (b"GET /containers/abc/logs?follow=1 HTTP/1.1", "/containers/{id}/logs"),
    (b"GET /containers/abc/attach/ws?stream=1 HTTP/1.1", "/containers/{id}/attach/ws"),
    (b"GET /containers/abc/archive?path=/ HTTP/1.1", "/containers/{id}/archive"),
    (b"HEAD /containers/abc/archive?path=/ HTTP/1.1", "/containers/{id}/archive"),
    (b"PUT /containers/abc/archive?path=/ HTTP/1.1", "/containers/{id}/archive"),
    (b"POST /containers/create?name=web HTTP/1.1", "/containers/create"),
    (b"POST /containers/abc/attach?stream=1 HTTP/1.1", "/containers/{id}/attach"),
    (b"POST /containers/abc/exec HTTP/1.1", "/containers/{id}/exec"),
    (b"POST /containers/abc/wait HTTP/1.1", "/containers/{id}/wait"),
    (b"POST /containers/prune HTTP/1.1", "/containers/prune"),
    (b"POST /commit?container=abc HTTP/1.1", "/commit"),
    (b"DELETE /containers/abc?force=1 HTTP/1.1", "/containers/{id}"),
    # exec, in the container router
    (b"GET /exec/e1/json HTTP/1.1", "/exec/{id}/json"),
    (b"POST /exec/e1/start HTTP/1.1", "/exec/{id}/start"),
    (b"POST /exec/e1/resize?h=24&w=80 HTTP/1.1", "/exec/{id}/resize"),
    # image
    (b"GET /images/json HTTP/1.1", "/images/json"),
    (b"GET /images/search?term=x HTTP/1.1", "/images/search"),
    (b"GET /images/get?names=busybox HTTP/1.1", "/images/get"),
    (b"GET /images/busybox/get HTTP/1.1", "/images/{name}/get"),
    (b"GET /images/busybox/history HTTP/1.1", "/images/{name}/history"),
    (b"GET /images/busybox/attestations HTTP/1.1", "/images/{name}/attestations"),
    (b"POST /images/load HTTP/1.1", "/images/load"),
    (b"POST /images/create?fromImage=busybox HTTP/1.1", "/images/create"),
    (b"POST /images/team/app/push?tag=1 HTTP/1.1", "/images/{name}/push"),
    (b"POST /images/team/app:1/tag?repo=x HTTP/1.1", "/images/{name}/tag"),
    (b"POST /images/prune HTTP/1.1", "/images/prune"),
    (b"DELETE /images/registry.example:5000/team/app:1.2 HTTP/1.1", "/images/{name}"),
    # volume
    (b"GET /volumes HTTP/1.1", "/volumes"),
    (b"GET /volumes/data HTTP/1.1", "/volumes/{name}"),
    (b"GET /volumes/nfshost/export/data HTTP/1.1", "/volumes/{name}"),
    (b"POST /volumes/create HTTP/1.1", "/volumes/create"),
    (b"POST /volumes/prune HTTP/1.1", "/volumes/prune"),
    (b"PUT /volumes/data?version=3 HTTP/1.1", "/volumes/{name}"),
    (b"DELETE /volumes/data HTTP/1.1", "/volumes/{name}"),
    # build and the hijacked BuildKit routes
    (b"POST /build?t=app HTTP/1.1", "/build"),
    (b"POST /build/prune HTTP/1.1", "/build/prune"),
    (b"POST /build/cancel?id=1 HTTP/1.1", "/build/cancel"),
    (b"POST /session HTTP/1.1", "/session"),
    (b"POST /grpc HTTP/1.1", "/grpc"),
    # swarm
    (b"GET /swarm HTTP/1.1", "/swarm"),
    (b"POST /swarm/init HTTP/1.1", "/swarm/init"),
    (b"GET /swarm/unlockkey HTTP/1.1", "/swarm/unlockkey"),
    (b"GET /services HTTP/1.1", "/services"),
    (b"GET /services/web HTTP/1.1", "/services/{id}"),
    (b"POST /services/create HTTP/1.1", "/services/create"),
    (b"POST /services/web/update?version=3 HTTP/1.1", "/services/{id}/update"),
    (b"GET /services/web/logs HTTP/1.1", "/services/{id}/logs"),
    (b"DELETE /services/web HTTP/1.1", "/services/{id}"),
    (b"GET /nodes/n1 HTTP/1.1", "/nodes/{id}"),
    (b"POST /nodes/n1/update HTTP/1.1", "/nodes/{id}/update"),
    (b"GET /tasks/t1/logs HTTP/1.1", "/tasks/{id}/logs"),
    (b"GET /secrets HTTP/1.1", "/secrets"),
    (b"DELETE /secrets/s1 HTTP/1.1", "/secrets/{id}"),
    (b"POST /configs/create HTTP/1.1", "/configs/create"),
    (b"POST /configs/c1/update HTTP/1.1", "/configs/{id}/update"),
    # plugin
    (b"GET /plugins HTTP/1.1", "/plugins"),
    (b"GET /plugins/privileges?remote=x HTTP/1.1", "/plugins/privileges"),
    (b"GET /plugins/vieux/sshfs:latest/json HTTP/1.1", "/plugins/{name}/json"),
    (b"POST /plugins/pull?remote=vieux/sshfs HTTP/1.1", "/plugins/pull"),
    (b"POST /plugins/vieux/sshfs/enable HTTP/1.1", "/plugins/{name}/enable"),
    (b"POST /plugins/vieux/sshfs/set HTTP/1.1", "/plugins/{name}/set"),
    (b"POST /plugins/create?name=x HTTP/1.1", "/plugins/create"),
    (b"DELETE /plugins/vieux/sshfs:latest HTTP/1.1", "/plugins/{name}"),
    # distribution
    (
        b"GET /v1.41/distribution/registry.example/app/json HTTP/1.1",
        "/distribution/{name}/json",
    ),
    # network
    (b"GET /networks HTTP/1.1", "/networks"),
    (b"GET /networks/ HTTP/1.1", "/networks"),
    (b"GET /networks/bridge HTTP/1.1", "/networks/{name}"),
    (b"GET /networks/tenant/net HTTP/1.1", "/networks/{name}"),
    (b"POST /networks/create HTTP/1.1", "/networks/create"),
    (b"POST /networks/n1/connect HTTP/1.1", "/networks/{name}/connect"),
    (b"POST /networks/n1/disconnect HTTP/1.1", "/networks/{name}/disconnect"),
    (b"POST /networks/prune HTTP/1.1", "/networks/prune"),
    (b"DELETE /networks/n1 HTTP/1.1", "/networks/{name}"),
    # debug
    (b"GET /debug/vars HTTP/1.1", "/debug/vars"),
    (b"GET /debug/pprof/ HTTP/1.1", "/debug/pprof/"),
    (b"GET /debug/pprof/cmdline HTTP/1.1", "/debug/pprof/cmdline"),
    (b"GET /debug/pprof/heap HTTP/1.1", "/debug/pprof/{id}"),
    # podman
    (b"GET /libpod/containers/json HTTP/1.1", "/libpod/*"),
    (b"GET /v4.0.0/libpod/info HTTP/1.1", "/libpod/*"),
    (b"POST /v4.0.0/libpod/images/pull HTTP/1.1", "/libpod/*"),
    (b"OPTIONS /libpod/_ping HTTP/1.1", "/libpod/*"),
    (b"DELETE /libpod/ HTTP/1.1", "/libpod/*"),
]

#: Image references in every form a client sends, which all reach the
#: routes taking an image.
IMAGES = [
    "busybox",
    "busybox:1.36",
    "library/busybox",
    "registry.example:5000/team/app:1.2",
    "registry.example:5000/team/sub/app",
    DIGEST,
    "busybox@" + DIGEST,
    "registry:5000/a/b@" + DIGEST,
    "registry:5000/a/b:1.2@" + DIGEST,
    # Image names that are also words of the routes.
    "json",
    "get",
    "team/json",
    "json/get",
]

#: Versions, encodings and dot segments, as dockerd's router sees them.
SPELLINGS: list[tuple[bytes, str]] = [
    (b"GET /v1.41/containers/abc/json HTTP/1.1", "/containers/{id}/json"),
    (b"GET /v1.41./containers/json HTTP/1.1", "/containers/json"),
    (b"GET /v1.41.0/containers/json HTTP/1.1", "/containers/json"),
    (b"GET /v1.24/images/team/app/json HTTP/1.1", "/images/{name}/json"),
    (b"GET http://docker/v1.41/version HTTP/1.1", "/version"),
    (b"GET //containers//abc/./json HTTP/1.1", "/containers/{id}/json"),
    (b"GET /containers/abc/json/../top HTTP/1.1", "/containers/{id}/top"),
    (b"GET /containers/abc/%61rchive HTTP/1.1", "/containers/{id}/archive"),
    (b"GET /v1.41/containers/abc/attach%2Fws HTTP/1.1", "/containers/{id}/attach/ws"),
    (
        b"GET /images/registry.example%3A5000%2Fteam%2Fapp/json HTTP/1.1",
        "/images/{name}/json",
    ),
    (b"GET /containers/json/ HTTP/1.1", "/containers/json"),
    (b"GET /containers/abc/json/ HTTP/1.1", "/containers/{id}/json"),
]

#: Names that look like the routes' own words still name an object.
KEYWORD_NAMES: list[tuple[bytes, str]] = [
    (b"GET /containers/json/json HTTP/1.1", "/containers/{id}/json"),
    (b"DELETE /containers/json HTTP/1.1", "/containers/{id}"),
    (b"DELETE /containers/create HTTP/1.1", "/containers/{id}"),
    (b"GET /containers/create/json HTTP/1.1", "/containers/{id}/json"),
    (b"POST /containers/prune/start HTTP/1.1", "/containers/{id}/start"),
    (b"GET /containers/attach/attach/ws HTTP/1.1", "/containers/{id}/attach/ws"),
    (b"GET /exec/json/json HTTP/1.1", "/exec/{id}/json"),
    (b"POST /exec/start/start HTTP/1.1", "/exec/{id}/start"),
    (b"GET /images/json/json HTTP/1.1", "/images/{name}/json"),
    (b"GET /images/get/get HTTP/1.1", "/images/{name}/get"),
    (b"DELETE /images/json HTTP/1.1", "/images/{name}"),
    (b"POST /images/push/tag HTTP/1.1", "/images/{name}/tag"),
    (b"GET /plugins/privileges/json HTTP/1.1", "/plugins/{name}/json"),
    (b"GET /volumes/create HTTP/1.1", "/volumes/{name}"),
    (b"GET /networks/create HTTP/1.1", "/networks/{name}"),
    (b"GET /services/create HTTP/1.1", "/services/{id}"),
    (b"GET /distribution/json/json HTTP/1.1", "/distribution/{name}/json"),
]

#: Paths that are no route of the engine's, whatever the method.
UNKNOWN = [
    b"GET / HTTP/1.1",
    b"GET /v1.41 HTTP/1.1",
    b"GET /no/such/route HTTP/1.1",
    b"GET /containers HTTP/1.1",
    b"GET /containers/abc HTTP/1.1",
    b"GET /containers/abc/json/extra HTTP/1.1",
    # A container name cannot hold a slash, so this names no container.
    b"GET /containers/a/b/json HTTP/1.1",
    b"GET /exec/e1 HTTP/1.1",
    b"GET /images HTTP/1.1",
    b"GET /images/busybox HTTP/1.1",
    b"GET /services/web/tasks HTTP/1.1",
    b"GET /services/a/b HTTP/1.1",
    b"GET /debug/pprof/a/b HTTP/1.1",
    b"GET /debug HTTP/1.1",
    b"GET /libpodx/info HTTP/1.1",
    b"GET /_ping/extra HTTP/1.1",
]

#: Routes asked for with a method they do not have.
WRONG_METHOD = [
    b"POST /_ping HTTP/1.1",
    b"POST /containers/json HTTP/1.1",
    b"GET /containers/create HTTP/1.1",
    b"PUT /containers/abc/json HTTP/1.1",
    b"GET /containers/abc/start HTTP/1.1",
    b"POST /images/busybox/json HTTP/1.1",
    b"GET /exec/e1/start HTTP/1.1",
    b"DELETE /networks HTTP/1.1",
    b"PATCH /containers/abc/update HTTP/1.1",
    b"get /_ping HTTP/1.1",
    b"HEAD /containers/create HTTP/1.1",
]


def sample_path(template: str, values: dict[str, str]) -> str:
    """
    C{template} with each placeholder (and a trailing C{*}) replaced.
    """
    path = template.replace("{id}", values["{id}"])
    path = path.replace("{name}", values["{name}"])
    if path.endswith("*"):
        path = path[:-1] + values["*"]
    return path


SAMPLES = [
    {"{id}": "abc123", "{name}": "registry.example:5000/team/app:1.2", "*": "x"},
    {"{id}": "f" * 64, "{name}": "busybox", "*": "containers/json"},
    {"{id}": "my_web-1.0", "{name}": "a/b@" + DIGEST, "*": "v4/info/"},
]

_WORDS = sorted(
    {
        word
        for _, template in ENGINE_ROUTES
        for word in template.split("/")
        if word and "{" not in word and "*" not in word
    }
)


class RouteOfTests(SynchronousTestCase):
    def test_routed(self) -> None:
        """
        A request reaches its route's template, for every router.
        """
        for line, template in ROUTED:
            self.assertEqual(route(line), template, line)

    def test_images(self) -> None:
        """
        Image references with registries, ports, tags and digests are one
        C{{name}}, on every route taking one.
        """
        for image in IMAGES:
            for method, suffix, template in [
                ("GET", "/json", "/images/{name}/json"),
                ("GET", "/history", "/images/{name}/history"),
                ("GET", "/get", "/images/{name}/get"),
                ("POST", "/push", "/images/{name}/push"),
                ("POST", "/tag", "/images/{name}/tag"),
                ("DELETE", "", "/images/{name}"),
            ]:
                line = f"{method} /v1.41/images/{image}{suffix} HTTP/1.1".encode()
                self.assertEqual(route(line), template, line)
            line = f"GET /distribution/{image}/json HTTP/1.1".encode()
            self.assertEqual(route(line), "/distribution/{name}/json", line)

    def test_spellings(self) -> None:
        """
        Versions, percent-encoding, dot and empty segments and a trailing
        slash do not change the route.
        """
        for line, template in SPELLINGS:
            self.assertEqual(route(line), template, line)

    def test_keyword_names(self) -> None:
        """
        A container, image or volume named like a route's word is still a
        name: C{/containers/json/json} is the container "json".
        """
        for line, template in KEYWORD_NAMES:
            self.assertEqual(route(line), template, line)

    def test_unknown(self) -> None:
        for line in UNKNOWN:
            self.assertIsNone(route(line), line)

    def test_wrong_method(self) -> None:
        for line in WRONG_METHOD:
            self.assertIsNone(route(line), line)

    def test_head_reaches_get(self) -> None:
        """
        HEAD gets the GET route's template where the path has no HEAD route
        of its own, and its own where it has.
        """
        self.assertEqual(route(b"HEAD /version HTTP/1.1"), "/version")
        self.assertEqual(
            route(b"HEAD /containers/abc/json HTTP/1.1"), "/containers/{id}/json"
        )
        self.assertEqual(
            route(b"HEAD /images/team/app/json HTTP/1.1"), "/images/{name}/json"
        )
        self.assertEqual(route(b"HEAD /_ping HTTP/1.1"), "/_ping")
        self.assertEqual(
            route(b"HEAD /containers/abc/archive HTTP/1.1"), "/containers/{id}/archive"
        )

    def test_trailing_slash_without_normalising(self) -> None:
        """
        A path not normalised by the request head may end in a slash.
        """
        self.assertEqual(route_of(b"GET", b"/containers/json/"), "/containers/json")
        self.assertEqual(
            route_of(b"GET", b"/containers/abc/json/"), "/containers/{id}/json"
        )
        self.assertEqual(route_of(b"GET", b"/debug/pprof/"), "/debug/pprof/")
        self.assertEqual(route_of(b"GET", b"/debug/pprof"), "/debug/pprof/")
        self.assertIsNone(route_of(b"GET", b"/"))
        self.assertIsNone(route_of(b"GET", b""))


class TableTests(SynchronousTestCase):
    def test_methods_and_placeholders(self) -> None:
        """
        Every route has an HTTP method moby registers (or C{*} for a
        prefix), and its template only C{{id}}, C{{name}} and literal
        segments, or a trailing C{*}.
        """
        for method, template in ENGINE_ROUTES:
            self.assertIn(
                method, ("GET", "HEAD", "POST", "PUT", "DELETE", "OPTIONS", "*")
            )
            self.assertTrue(template.startswith("/"), template)
            body = template.removesuffix("*")
            for segment in body.split("/"):
                if "{" in segment or "}" in segment:
                    self.assertIn(segment, ("{id}", "{name}"), template)
                self.assertNotIn("*", segment, template)
            self.assertEqual(method == "*", template == "/libpod/*", template)

    def test_no_duplicates(self) -> None:
        self.assertEqual(len(set(ENGINE_ROUTES)), len(ENGINE_ROUTES))

    def test_every_template_reached(self) -> None:
        """
        A path built from each template reaches that template, and HEAD
        reaches every GET route: no route is hidden by another.
        """
        for values in SAMPLES:
            for method, template in ENGINE_ROUTES:
                path = sample_path(template, values).encode()
                methods = (
                    [b"GET", b"POST", b"DELETE", b"OPTIONS", b"HEAD"]
                    if method == "*"
                    else [method.encode()]
                )
                if method == "GET":
                    methods.append(b"HEAD")
                for m in methods:
                    self.assertEqual(route_of(m, path), template, (m, path))
                    head = parse_head(b"%s /v1.41%s HTTP/1.1\r\n\r\n" % (m, path))
                    self.assertEqual(
                        route_of(head.method, head.apiPath), template, (m, path)
                    )

    def test_keywords_in_placeholders(self) -> None:
        """
        A placeholder holding any literal word of the table still reaches
        its template, unless the path is itself a literal route (as with
        C{/debug/pprof/cmdline}), which moby registers first.
        """
        literal = {
            (method, template)
            for method, template in ENGINE_ROUTES
            if "{" not in template and "*" not in template
        }
        for method, template in ENGINE_ROUTES:
            if "{" not in template:
                continue
            for word in _WORDS:
                for name in (word, "team/" + word, word + "/app"):
                    path = sample_path(template, {"{id}": word, "{name}": name})
                    if (method, path) in literal:
                        continue
                    self.assertEqual(
                        route_of(method.encode(), path.encode()),
                        template,
                        (method, path),
                    )

    def test_id_is_one_segment(self) -> None:
        """
        C{{id}} never takes a slash, C{{name}} does.
        """
        for method, template in ENGINE_ROUTES:
            if "{id}" in template:
                path = template.replace("{id}", "a/b").replace("{name}", "c")
                self.assertIsNone(route_of(method.encode(), path.encode()), path)
            if "{name}" in template and "{id}" not in template:
                path = template.replace("{name}", "a/b")
                self.assertEqual(route_of(method.encode(), path.encode()), template)

    def test_bad_tables_refused(self) -> None:
        """
        A table the matcher could not read unambiguously is refused when
        the module is imported, not answered wrongly at run time.
        """
        for routes in [
            (("GET", "/a"), ("GET", "/a")),
            (("GET", "/a"), ("GET", "/a/")),
            (("GET", "/{id}/json"),),
            (("GET", "/a/{ref}"),),
            (("GET", "/a/x*"),),
            (("GET", "/a/*"),),
            (("*", "/a"),),
            (("*", "/*"),),
            (("*", "/{id}/*"),),
            (("*", "/a/b/*"),),
            (("*", "/a/*"), ("GET", "/a/b")),
            (("*", "/a/*"), ("GET", "/a/{id}")),
            (("GET", "a"),),
        ]:
            self.assertRaises(ValueError, _build, routes)


class KnownTemplateTests(SynchronousTestCase):
    def test_every_template_known(self) -> None:
        for _, template in ENGINE_ROUTES:
            self.assertTrue(is_known_template(template), template)

    def test_unknown_templates(self) -> None:
        """
        Only the exact strings of the table: no paths, no other spelling of
        a placeholder, no read-only account's C{{image}}.
        """
        for template in [
            "/containers/abc/json",
            "/containers/{name}/json",
            "/containers/{id}/json/",
            "/images/{image}/json",
            "/images/{id}/json",
            "/libpod",
            "/libpod/",
            "/debug/pprof",
            "/networks/",
            "containers/json",
            "",
        ]:
            self.assertFalse(is_known_template(template), template)
