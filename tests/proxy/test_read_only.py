"""
Tests for L{haven_agent.proxy.read_only}: the read-only account's explicit list of
read routes, matched on the path as dockerd's router sees it.
"""

from twisted.trial.unittest import SynchronousTestCase

from haven_agent.proxy.http_head import parse_head
from haven_agent.proxy.read_only import READ_ONLY_ROUTES, read_only_refusal


def refusal(request_line: bytes, *headers: bytes) -> str | None:
    raw = request_line + b"\r\n" + b"".join(h + b"\r\n" for h in headers) + b"\r\n"
    return read_only_refusal(parse_head(raw))


ALLOWED = [
    b"GET /_ping HTTP/1.1",
    b"HEAD /_ping HTTP/1.1",
    b"GET /v1.41/_ping HTTP/1.1",
    b"GET /version HTTP/1.1",
    b"GET /info HTTP/1.1",
    b"GET /system/df HTTP/1.1",
    b"GET /events?since=1&filters=%7B%7D HTTP/1.1",
    b"GET /v1.41/containers/json?all=1 HTTP/1.1",
    b"GET /containers/abc/json HTTP/1.1",
    b"GET /containers/abc/logs?follow=1&stdout=1 HTTP/1.1",
    b"GET /containers/abc/stats?stream=0 HTTP/1.1",
    b"GET /containers/abc/top HTTP/1.1",
    b"GET /containers/abc/changes HTTP/1.1",
    b"GET /images/json HTTP/1.1",
    b"GET /images/busybox/json HTTP/1.1",
    b"GET /images/registry.example:5000/team/app:1.2/json HTTP/1.1",
    b"GET /networks HTTP/1.1",
    b"GET /networks/ HTTP/1.1",
    b"GET /networks/bridge HTTP/1.1",
    b"GET /volumes HTTP/1.1",
    b"GET /volumes/data HTTP/1.1",
    b"GET /services HTTP/1.1",
    b"GET /services/web HTTP/1.1",
    b"GET /tasks HTTP/1.1",
    b"GET /tasks/t1 HTTP/1.1",
    b"GET /nodes HTTP/1.1",
    b"GET /nodes/n1 HTTP/1.1",
    # dockerd takes /v[0-9.]+ as the version.
    b"GET /v1.41./containers/json HTTP/1.1",
    b"GET /v1.41.0/containers/json HTTP/1.1",
    b"GET /v./info HTTP/1.1",
    # Dot segments and empty segments are cleaned as dockerd's router does.
    b"GET //containers//abc/./json HTTP/1.1",
    b"GET http://docker/v1.41/version HTTP/1.1",
]

REFUSED = [
    # Attach in every form: it registers output pipes on the container.
    b"GET /containers/abc/attach/ws?stream=1&stdout=1 HTTP/1.1",
    b"GET /v1.41/containers/abc/attach/ws HTTP/1.1",
    b"POST /containers/abc/attach?stream=1 HTTP/1.1",
    b"GET /containers/abc/attach HTTP/1.1",
    # Archive and export read any file; archive holds the container's lock.
    b"GET /containers/abc/archive?path=/etc HTTP/1.1",
    b"HEAD /containers/abc/archive?path=/etc HTTP/1.1",
    b"GET /containers/abc/export HTTP/1.1",
    b"GET /images/get?names=busybox HTTP/1.1",
    b"GET /images/busybox/get HTTP/1.1",
    b"GET /debug/pprof/ HTTP/1.1",
    b"GET /debug/pprof/cmdline HTTP/1.1",
    b"GET /debug/vars HTTP/1.1",
    b"GET /v1.41/distribution/registry.example/app/json HTTP/1.1",
    b"GET /libpod/info HTTP/1.1",
    b"GET /v4.0.0/libpod/containers/json HTTP/1.1",
    # Writes.
    b"POST /containers/create HTTP/1.1",
    b"POST /containers/abc/stop HTTP/1.1",
    b"DELETE /containers/abc HTTP/1.1",
    b"POST /volumes/create HTTP/1.1",
    b"PUT /containers/abc/archive?path=/ HTTP/1.1",
    # Not on the list, whatever the method.
    b"GET /exec/abc/json HTTP/1.1",
    b"GET /images/busybox/history HTTP/1.1",
    b"GET /containers/abc/json/extra HTTP/1.1",
    b"GET /containers/a/b/json HTTP/1.1",
    b"HEAD /version HTTP/1.1",
    b"GET /swarm HTTP/1.1",
    b"GET /plugins HTTP/1.1",
    b"GET / HTTP/1.1",
    # Encodings and dot segments do not hide a route.
    b"GET /containers/abc/%61rchive?path=/ HTTP/1.1",
    b"GET /containers/abc/json/../archive?path=/ HTTP/1.1",
    b"GET /v1.41/containers/abc/attach%2Fws HTTP/1.1",
    b"GET /info/../debug/vars HTTP/1.1",
]


class ReadOnlyRoutesTests(SynchronousTestCase):
    def test_allowed(self) -> None:
        for line in ALLOWED:
            self.assertIsNone(refusal(line), line)

    def test_refused(self) -> None:
        for line in REFUSED:
            self.assertEqual(
                refusal(line), "this route is not on its list of read routes", line
            )

    def test_upgrade_refused_on_allowed_routes(self) -> None:
        self.assertEqual(
            refusal(b"GET /containers/abc/logs HTTP/1.1", b"Upgrade: tcp"),
            "no upgraded (hijacked) connections",
        )

    def test_every_route_is_a_read(self) -> None:
        """Only GET and HEAD are ever allowed, and HEAD only for _ping."""
        for methods, template in READ_ONLY_ROUTES:
            self.assertIn(methods, ("GET", "GET,HEAD"), template)
            if "HEAD" in methods:
                self.assertEqual(template, "/_ping")
