# -*- test-case-name: tests.reporting.test_service -*-
"""
HTTP connection pools for the agent's own clients (dockerd, the master).

Twisted's pool logs "Starting factory" and "Stopping factory" for every
connection it opens; a report a minute would fill the log with them.
"""

from __future__ import annotations

from typing import Any

from twisted.web.client import HTTPConnectionPool, _HTTP11ClientFactory


class _QuietHTTP11ClientFactory(_HTTP11ClientFactory):
    noisy = False


def quiet_pool(reactor: Any, maxPerHost: int = 2) -> HTTPConnectionPool:
    """
    A persistent pool that keeps up to C{maxPerHost} idle connections and
    does not log each one.
    """
    pool = HTTPConnectionPool(reactor, persistent=True)
    pool.maxPersistentPerHost = maxPerHost
    pool._factory = _QuietHTTP11ClientFactory
    return pool
