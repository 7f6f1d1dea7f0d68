# -*- test-case-name: tests.test_tap -*-
"""
The agent's settings, resolved once from the command line and environment.

Every option can also come from an environment variable (the command line
wins), and the names Haven's own start strings already use
(`dm_auth_adminPassword`, `server_port`, `dm_agent_server_names`, ...) are
read as they are, so an existing start string needs no edit.
"""

from __future__ import annotations

import ipaddress
import re
import socket
from collections.abc import Mapping

from attrs import field, frozen

DEFAULT_PORT = 8771
DEFAULT_PASSWORD = "password"
DEFAULT_DOCKER = "unix:/var/run/docker.sock"
DEFAULT_STATE_DIR = "/var/lib/haven-agent"


@frozen
class Sources:
    """
    Where each setting came from, so that a message about a bad value names
    what the user actually set: the flag (C{--master}) or the environment
    variable (C{dm_agent_notifier_server}).
    """

    names: Mapping[str, str] = field(factory=dict)

    def of(self, option: str) -> str:
        return self.names.get(option, f"--{option}")


@frozen
class ProxyConfig:
    """
    How the Docker API proxy listens, whom it lets in, and where dockerd is.

    @ivar passwordIsDefault: no password was configured, so Haven's
        documented default applies; start-up warns about it.
    """

    listen: tuple[str, ...]
    docker: str
    user: str
    password: str = field(repr=False)
    passwordIsDefault: bool
    tlsCert: str | None
    tlsKey: str | None
    stateDir: str
    serverNames: tuple[str, ...]
    firstHeadTimeout: float = 30.0
    nextHeadTimeout: float = 30.0
    tlsClientCA: str | None = None
    authMode: str = "password"
    readOnlyUser: str = "readonly"
    readOnlyPassword: str | None = field(default=None, repr=False)
    maxConnections: int = 10_000
    maxUnauthenticated: int = 512
    maxUnauthenticatedPerSource: int = 64
    #: None: half of maxConnections, which leaves the other half to others.
    maxConnectionsPerUser: int | None = None
    #: Seconds a new connection gets to send its first byte (the TLS
    #: ClientHello).
    helloTimeout: float = 5.0
    #: Seconds an idle keep-alive connection of a non-admin user is kept.
    idleTimeout: float = 60.0
    # Below docker stop's 10 s, so the agent closes its streams (the
    # master's /events never ends) before it would be killed.
    shutdownGrace: float = 5.0
    #: Processes serving the proxy (see haven_agent.workers.pool).
    workers: int = 1
    #: A local endpoint serving the metrics without authentication.
    metricsListen: str | None = None
    #: Whether the metrics include the node's (node_exporter's names).
    nodeMetrics: bool = True
    #: The policy file (see haven_agent.policy), if any.
    policy: str | None = None
    #: The Haven web terminal (haven_agent.proxy.terminal): source networks
    #: exempt from credentials for its route, allowed WebSocket Origins,
    #: and attach tickets with the key every process signs them with.
    terminalFrom: tuple[str, ...] = ()
    terminalOrigins: tuple[str, ...] = ()
    attachTickets: bool = False
    ticketKey: str = field(default="", repr=False, eq=False)
    sources: Sources = field(factory=Sources, eq=False, repr=False)


UNIX_PATH_MAX = 107


def docker_endpoint(value: str) -> str:
    """
    A client endpoint description for dockerd: C{unix:...} and C{tcp:...}
    as given; a bare path means a UNIX socket, with the characters that mean
    something in a description (backslash, C{:} and C{=}) escaped.

    @raise ValueError: for a UNIX socket path longer than the kernel accepts,
        which would otherwise fail every connection attempt.
    """
    if value.startswith("/"):
        escaped = value.replace("\\", "\\\\").replace(":", "\\:").replace("=", "\\=")
        value = "unix:" + escaped
    if value.startswith("unix:"):
        path = re.split(r"(?<!\\):", value[len("unix:") :])[0]
        path = path.removeprefix("path=")
        path = path.replace("\\:", ":").replace("\\=", "=").replace("\\\\", "\\")
        if len(path.encode("utf-8")) > UNIX_PATH_MAX:
            raise ValueError(
                f"the Docker socket path {path} is {len(path.encode())} bytes long; "
                f"UNIX socket paths can have at most {UNIX_PATH_MAX}"
            )
    return value


def endpoint_parts(description: str) -> tuple[str, list[str], dict[str, str]]:
    """
    An endpoint description split as Twisted splits it: its type, its
    positional arguments and its keyword arguments, with C{\\} escaping the
    next character (C{tcp6:8771:interface=\\:\\:} is port 8771 on C{::}).
    """
    fields: list[str] = []
    current: list[str] = []
    escaped = False
    for character in description:
        if escaped:
            current.append(character)
            escaped = False
        elif character == "\\":
            escaped = True
        elif character == ":":
            fields.append("".join(current))
            current = []
        else:
            current.append(character)
    fields.append("".join(current))
    kind, args, kwargs = fields[0], [], {}
    for item in fields[1:]:
        key, equals, value = item.partition("=")
        if equals:
            kwargs[key] = value
        else:
            args.append(item)
    return kind, args, kwargs


#: Endpoint types whose first argument is a TCP port.
TCP_TYPES = ("tcp", "tcp6")


def is_local_endpoint(description: str) -> bool:
    """
    Does the server endpoint C{description} accept only this host's
    clients: a UNIX socket, or TCP on a loopback interface?
    """
    kind, args, kwargs = endpoint_parts(description)
    if kind == "unix":
        return True
    if kind not in TCP_TYPES:
        return False
    try:
        return ipaddress.ip_address(kwargs.get("interface", "")).is_loopback
    except ValueError:
        return False


def endpoint_port(description: str) -> str | None:
    """
    The port of a TCP server endpoint description as written (C{tcp:8771},
    C{tcp:port=8771:interface=x}), or None for other kinds of endpoint.
    """
    kind, args, kwargs = endpoint_parts(description)
    if kind not in TCP_TYPES:
        return None
    return kwargs.get("port", args[0] if args else None)


def listen_port(description: str) -> int:
    """
    The port of a server endpoint description such as tcp:8771:interface=x
    or tcp:port=8771, for the address advertised to the master.
    """
    port = endpoint_port(description)
    if port is not None and port.isdigit():
        return int(port)
    return DEFAULT_PORT


def listen_endpoint(value: str) -> str:
    """
    A server endpoint description; a bare port number means TCP.
    """
    if value.isdigit():
        return f"tcp:{value}"
    return value


#: Every address of both families, as a description (IPv4 clients arrive
#: as IPv4-mapped addresses when the socket is dual stack).
ANY_IPV6 = "interface=\\:\\:"


def default_listen(port: int, ipv6: bool, ipv6Only: bool) -> tuple[str, ...]:
    """
    Where to listen without --listen: every IPv6 and IPv4 address of the
    host when it has IPv6, with one dual-stack socket unless the kernel makes
    IPv6 sockets IPv6-only (then one socket per family); IPv4 alone when
    the host has no IPv6.
    """
    if not ipv6:
        return (f"tcp:{port}",)
    if ipv6Only:
        return (f"tcp:{port}", f"tcp6:{port}:{ANY_IPV6}")
    return (f"tcp6:{port}:{ANY_IPV6}",)


def probe_ipv6(bindv6only: str = "/proc/sys/net/ipv6/bindv6only") -> tuple[bool, bool]:
    """
    Does this host have IPv6 (can a socket bind C{::1})? And are IPv6
    sockets IPv6-only by default (C{net.ipv6.bindv6only})?
    """
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as probe:
            probe.bind(("::1", 0))
    except OSError:
        return False, False
    try:
        with open(bindv6only, encoding="ascii") as f:
            ipv6Only = f.read().strip() == "1"
    except OSError:
        ipv6Only = False
    return True, ipv6Only


DEFAULT_INTERVAL = 60.0


@frozen
class ReporterConfig:
    """
    Where and how often the node reports to the Haven master.

    @ivar master: the master's base URL; None logs each report instead.
    @ivar nodeName: None means Docker's info.Name, else the short host name.
    @ivar address: None means https://<the IP that routes to the master>:<port>.
    @ivar hostRoot: where the host's / is mounted ("/" outside a container).
    @ivar listenPort: the proxy's port, for the advertised address.
    """

    master: str | None
    secret: str | None = field(repr=False)
    interval: float
    nodeName: str | None
    address: str | None
    hostRoot: str
    masterCA: str | None
    networkFilesystems: bool
    listenPort: int
    docker: str
