# -*- test-case-name: tests.test_healthcheck -*-
"""
`python -m haven_agent.healthcheck`: the container image's HEALTHCHECK.

It asks the running agent's `GET /_agent/health` over TLS, on the first
endpoint the agent itself would listen on, found by parsing the same
environment the agent reads (so `server_port` or `HAVEN_AGENT_LISTEN` move
it too). Healthy means the agent answered 200 and dockerd's socket accepts
connections: a container started without the socket mounted shows as
unhealthy. The agent's certificate is not checked: this is the agent asking
itself over loopback.
"""

from __future__ import annotations

import socket
import ssl
import sys

from haven_agent.config import endpoint_parts, listen_port
from haven_agent.proxy.health import HEALTH_PATH

_LOOPBACK = {"": "127.0.0.1", "0.0.0.0": "127.0.0.1", "::": "::1"}


def target(listen: str) -> tuple[str, int]:
    """
    Where to reach an agent listening on endpoint description C{listen}.
    """
    _, _, options = endpoint_parts(listen)
    host = options.get("interface", "")
    return _LOOPBACK.get(host, host), listen_port(listen)


def ask(host: str, port: int, timeout: float = 5.0) -> tuple[bool, str]:
    """
    Is the agent at C{host}:C{port} healthy, and what did it say?
    """
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    context.set_alpn_protocols(["http/1.1"])
    answer = b""
    with socket.create_connection((host, port), timeout) as raw:
        with context.wrap_socket(raw) as connection:
            connection.sendall(
                b"GET " + HEALTH_PATH + b" HTTP/1.1\r\nHost: localhost\r\n"
                b"Connection: close\r\n\r\n"
            )
            try:
                while chunk := connection.recv(4096):
                    answer += chunk
            except ssl.SSLError:
                pass
    head, _, body = answer.partition(b"\r\n\r\n")
    healthy = head.startswith(b"HTTP/1.1 200 ") and b'"docker": "up"' in body
    return healthy, (body or head).decode("utf-8", "replace").strip()


def main() -> int:
    from haven_agent.tap import Options

    options = Options()
    options.parseOptions([])
    host, port = target(options.config.listen[0])
    try:
        healthy, said = ask(host, port)
    except OSError as e:
        healthy, said = False, f"cannot reach the agent at {host}:{port}: {e}"
    print(said)
    return 0 if healthy else 1


if __name__ == "__main__":
    sys.exit(main())
