# -*- test-case-name: tests.test_tap -*-
"""
The agent's settings, resolved once from the command line and environment.

Every option can also come from an environment variable (the command line
wins), and the names Haven's own start strings already use
(`dm_auth_adminPassword`, `server_port`, `dm_agent_server_names`, ...) are
read as they are, so an existing start string needs no edit.
"""

from __future__ import annotations

import re

from attrs import field, frozen

DEFAULT_PORT = 8771
DEFAULT_PASSWORD = "password"
DEFAULT_DOCKER = "unix:/var/run/docker.sock"
DEFAULT_STATE_DIR = "/var/lib/haven-agent"


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
    # Below docker stop's 10 s, so the agent closes its streams (the
    # master's /events never ends) before it would be killed.
    shutdownGrace: float = 5.0
    #: Processes serving the proxy (see haven_agent.workers).
    workers: int = 1


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


def listen_port(description: str) -> int:
    """
    The port of a server endpoint description such as tcp:8771:interface=x
    or tcp:port=8771, for the address advertised to the master.
    """
    for part in description.split(":")[1:]:
        value = part.removeprefix("port=")
        if value.isdigit():
            return int(value)
    return DEFAULT_PORT


def listen_endpoint(value: str) -> str:
    """
    A server endpoint description; a bare port number means TCP.
    """
    if value.isdigit():
        return f"tcp:{value}"
    return value


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
