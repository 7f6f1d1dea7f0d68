# -*- test-case-name: tests.reporting.test_node_identity -*-
"""
Who this node is to the Haven master: its name and the address it advertises.

The master files reports under the name in the URL path and refuses (400)
any name outside C{[A-Za-z0-9-]+}, so a fully qualified host name such as
C{node1.example.com} never works. A bad name must stop the agent at start-up
with a message saying which characters are wrong, not surface as a 400 every
minute. The advertised address is how the master connects back to this
agent's proxy; it keeps only a non-loopback IP literal, so the natural
default is the local IP the kernel would use to reach the master.
"""

from __future__ import annotations

import ipaddress
import re
import socket

NODE_NAME = re.compile(r"[A-Za-z0-9-]+\Z")

_ALLOWED = "A-Z a-z 0-9 -"
_ALLOWED_CHARACTER = re.compile(r"[A-Za-z0-9-]")
_HOST_NAME = re.compile(r"[A-Za-z0-9]([A-Za-z0-9.-]*[A-Za-z0-9])?\Z")


def validate_node_name(name: str) -> str:
    """
    Return C{name} when the Haven master accepts it as a node name.

    @raise ValueError: naming the characters the master refuses.
    """
    if NODE_NAME.match(name):
        return name
    if not name:
        raise ValueError(f"node name is empty; allowed: {_ALLOWED}")
    bad: list[str] = []
    for character in name:
        if not _ALLOWED_CHARACTER.match(character) and character not in bad:
            bad.append(character)
    listed = ", ".join(repr(character) for character in bad)
    raise ValueError(
        f"node name {name!r} has characters the Haven master refuses: "
        f"{listed}; allowed: {_ALLOWED}"
    )


def _short(name: str) -> str:
    return name.strip().split(".", 1)[0]


def default_node_name(docker_name: str | None, hostname: str) -> str:
    """
    The node name to use when none is configured: Docker's C{info.Name}, else
    the host name, in both cases the short form (before the first C{.}).

    Docker's C{info.Name} is the daemon host's name, which may be fully
    qualified; shortening it gives the name a user would pick rather than a
    start-up failure for a default nobody chose.

    @raise ValueError: when the result is empty or has refused characters.
    """
    chosen = _short(docker_name or "") or _short(hostname)
    return validate_node_name(chosen)


#: Where the IPv4 default route leads; nothing is ever sent there.
_DEFAULT_ROUTE_PROBE = ("192.0.2.1", 9)


def _route_source(family: int, kind: int, proto: int, sockaddr) -> str:
    with socket.socket(family, kind, proto) as probe:
        probe.connect(sockaddr)
        # An IPv6 link-local address carries "%scope", meaningless to the master.
        return str(probe.getsockname()[0]).split("%", 1)[0]


def local_address_towards(host: str, port: int) -> str:
    """
    The IP literal of the local interface the kernel would use to reach
    C{host}:C{port}, an IPv4 one where there is any: the stock Haven master
    cannot connect to an IPv6 address (it does not parse a bracketed host and
    stores an address Java cannot use). When C{host} is reached over IPv6
    only, the address of the IPv4 default route is taken instead, and the
    IPv6 one only when the host has no IPv4 route at all.

    BLOCKING (name resolution): call it from a thread or at start-up. A UDP
    socket is "connected" to pick the route; no packet is sent.

    @raise OSError: when the host cannot be resolved or no route exists.
    """
    last_error: OSError | None = None
    ipv6: str | None = None
    found = socket.getaddrinfo(host, port, 0, socket.SOCK_DGRAM)
    for family, kind, proto, _, sockaddr in sorted(
        found, key=lambda info: info[0] != socket.AF_INET
    ):
        try:
            local = _route_source(family, kind, proto, sockaddr)
        except OSError as error:
            last_error = error
            continue
        if family == socket.AF_INET:
            return local
        ipv6 = ipv6 or local
    if ipv6 is not None:
        try:
            return _route_source(
                socket.AF_INET, socket.SOCK_DGRAM, 0, _DEFAULT_ROUTE_PROBE
            )
        except OSError:
            return ipv6
    raise last_error or OSError(f"no address found for {host!r}")


def advertised_address(ip: str, port: int) -> str:
    """
    C{https://IP:PORT}, the form the master stores; IPv6 literals in brackets.
    A host name is passed through (the master replaces it by the report's
    source IP).

    @raise ValueError: for a port outside 1-65535, or a host that is neither
        an IP literal nor a host name.
    """
    if not 0 < port < 65536:
        raise ValueError(f"port {port} is outside 1-65535")
    host = ip.strip()
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if not host:
        raise ValueError("the advertised host is empty")
    try:
        parsed = ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        if not _HOST_NAME.match(host):
            raise ValueError(
                f"{host!r} is neither an IP literal nor a host name"
            ) from None
        return f"https://{host}:{port}"
    if parsed.version == 6:
        return f"https://[{parsed.compressed}]:{port}"
    return f"https://{parsed.compressed}:{port}"
