# -*- test-case-name: tests.metrics.test_local_listener -*-
"""
`--metrics-listen`: the metrics page for a scraper on this host, in plain
HTTP without credentials.

node_exporter's and dockerd's own metrics ports are open to whoever can
reach them; this one is refused at start-up unless it is a UNIX socket or a
loopback address (or the operator says otherwise), so that the page is
never served to the network without the TLS port's authentication. It
answers `GET /metrics` (Prometheus's default path) and `/_agent/metrics`,
from the same page as the TLS port: a scrape of either is the sum over all
processes.
"""

from __future__ import annotations

from collections.abc import Callable

from twisted.internet.defer import Deferred
from twisted.logger import Logger
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Site

from haven_agent.metrics.exposition import CONTENT_TYPE

log = Logger()

PATHS = (b"/metrics", b"/_agent/metrics")


class MetricsResource(Resource):
    """
    The metrics page at every path in L{PATHS}; 404 elsewhere.
    """

    isLeaf = True

    def __init__(self, render: Callable[[], Deferred[bytes]]) -> None:
        super().__init__()
        self._render = render

    def render_GET(self, request):
        if request.path not in PATHS:
            request.setResponseCode(404)
            request.setHeader(b"content-type", b"text/plain; charset=utf-8")
            return b"not found: the metrics are at /metrics\n"
        gone: list[bool] = []
        request.notifyFinish().addErrback(lambda _: gone.append(True))
        rendering = self._render()
        rendering.addCallbacks(
            self._rendered,
            self._failed,
            callbackArgs=(request, gone),
            errbackArgs=(request, gone),
        )
        return NOT_DONE_YET

    def _rendered(self, body: bytes, request, gone: list[bool]) -> None:
        if gone:
            return
        request.setHeader(b"content-type", CONTENT_TYPE.encode("ascii"))
        request.setHeader(b"content-length", b"%d" % len(body))
        request.write(body)
        request.finish()

    def _failed(self, failure, request, gone: list[bool]) -> None:
        log.failure("rendering the metrics failed", failure)
        if gone:
            return
        request.setResponseCode(500)
        request.write(b"the metrics could not be rendered\n")
        request.finish()


def metrics_site(render: Callable[[], Deferred[bytes]]) -> Site:
    site = Site(MetricsResource(render))
    site.displayTracebacks = False
    # Scrapes come every few seconds: the access log would be all of them.
    site.log = lambda request: None
    return site
