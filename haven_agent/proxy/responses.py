# -*- test-case-name: tests.proxy.test_gate -*-
"""
The few answers the agent gives itself: errors shaped like dockerd's own,
and the metrics page.

Clients such as the docker CLI and docker-py print the `message` field of a
JSON error body, so a refusal by the agent reads like any other Docker error.
"""

from __future__ import annotations

import json
from http import HTTPStatus


def error_response(
    status: int, message: str, headers: tuple[tuple[str, str], ...] = ()
) -> bytes:
    """
    A complete HTTP/1.1 response carrying C{{"message": message}}; the agent
    closes the connection after it, and says so.
    """
    body = json.dumps({"message": message}).encode("utf-8") + b"\n"
    lines = [
        f"HTTP/1.1 {status} {HTTPStatus(status).phrase}",
        "Content-Type: application/json",
        f"Content-Length: {len(body)}",
        "Connection: close",
    ]
    lines.extend(f"{name}: {value}" for name, value in headers)
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


def json_response(status: int, value: object) -> bytes:
    """
    A complete answer of C{value} as JSON, and a close.
    """
    body = json.dumps(value).encode("utf-8") + b"\n"
    return (
        f"HTTP/1.1 {status} {HTTPStatus(status).phrase}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
        f"Connection: close\r\n\r\n"
    ).encode("latin-1") + body


def metrics_response(body: bytes) -> bytes:
    """
    The metrics page in the Prometheus text format, and a close: scrapes
    come seconds apart, a connection is not worth keeping between them.
    """
    return (
        b"HTTP/1.1 200 OK\r\nContent-Type: text/plain; version=0.0.4; "
        b"charset=utf-8\r\nContent-Length: %d\r\nConnection: close\r\n\r\n" % len(body)
    ) + body
