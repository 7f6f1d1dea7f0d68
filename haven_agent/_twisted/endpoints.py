# -*- test-case-name: tests._twisted.test_canary -*-
"""
What a parsed TCP server endpoint will bind: its interface, port and
backlog, which Twisted's endpoints keep in private attributes.

`--workers` binds the listening sockets itself (with SO_REUSEPORT), from
the same descriptions Twisted parses for one process.
"""

from __future__ import annotations

from twisted.internet.endpoints import TCP4ServerEndpoint


def tcp_bind_address(endpoint: TCP4ServerEndpoint) -> tuple[str, int, int]:
    """
    (interface, port, backlog) of a C{TCP4ServerEndpoint} or
    C{TCP6ServerEndpoint}; the interface is C{""} for any address.
    """
    return endpoint._interface, endpoint._port, endpoint._backlog
