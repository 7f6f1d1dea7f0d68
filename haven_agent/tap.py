# -*- test-case-name: tests.test_tap -*-
"""
`twistd haven-agent`: command-line options and the service they build.

Each option falls back to an environment variable, then to a default, so the
agent can be configured entirely from `docker run -e ...`. Haven's own
setting names are accepted as they are (see `ENVIRONMENT`).
"""

from __future__ import annotations

import os
from collections.abc import Mapping

from twisted.application.service import MultiService
from twisted.python import usage

from haven_agent.config import (
    DEFAULT_DOCKER,
    DEFAULT_PASSWORD,
    DEFAULT_PORT,
    DEFAULT_STATE_DIR,
    ProxyConfig,
    docker_endpoint,
    listen_endpoint,
)

# Option name -> environment variables read when the option is not given,
# in order of preference.
ENVIRONMENT: dict[str, tuple[str, ...]] = {
    "listen": ("HAVEN_AGENT_LISTEN",),
    "docker": ("HAVEN_AGENT_DOCKER",),
    "user": ("HAVEN_AGENT_USER",),
    "password": ("HAVEN_AGENT_PASSWORD", "dm_auth_adminPassword"),
    "password-file": ("HAVEN_AGENT_PASSWORD_FILE",),
    "tls-cert": ("HAVEN_AGENT_TLS_CERT",),
    "tls-key": ("HAVEN_AGENT_TLS_KEY",),
    "state-dir": ("HAVEN_AGENT_STATE_DIR",),
    "server-names": ("HAVEN_AGENT_SERVER_NAMES", "dm_agent_server_names"),
    "head-timeout": ("HAVEN_AGENT_HEAD_TIMEOUT",),
}


def _positive(value: str) -> float:
    number = float(value)
    if not number > 0:
        raise ValueError("must be a positive number of seconds")
    return number


_positive.coerceDoc = "Seconds, > 0."  # type: ignore[attr-defined]


class Options(usage.Options):
    """
    Options of `twistd haven-agent`; see `--help`.
    """

    synopsis = "[options]"
    longdesc = (
        "Serves the local Docker Engine API on a TLS port with HTTP Basic "
        "authentication, byte for byte (attach, exec, logs -f, events, build, "
        "load and cp work as on the local socket). Every option can also be "
        "set by the environment variable named in its help; the command line "
        "wins."
    )

    optParameters = [
        [
            "docker",
            None,
            None,
            f"dockerd endpoint: unix:/path, a bare socket path, or tcp:host:port "
            f"[env HAVEN_AGENT_DOCKER; default {DEFAULT_DOCKER}]",
        ],
        [
            "user",
            None,
            None,
            "User name clients must send [env HAVEN_AGENT_USER; default admin]",
        ],
        [
            "password",
            None,
            None,
            "Password clients must send, plain or a bcrypt hash ($2a$/$2b$/$2y$) "
            "[env HAVEN_AGENT_PASSWORD or dm_auth_adminPassword; default "
            f"'{DEFAULT_PASSWORD}', with a warning]",
        ],
        [
            "password-file",
            None,
            None,
            "Read the password (or bcrypt hash) from this file "
            "[env HAVEN_AGENT_PASSWORD_FILE]",
        ],
        [
            "tls-cert",
            None,
            None,
            "PEM certificate (and chain) to serve [env HAVEN_AGENT_TLS_CERT; "
            "default: a self-signed one generated once in --state-dir]",
        ],
        [
            "tls-key",
            None,
            None,
            "PEM private key of --tls-cert [env HAVEN_AGENT_TLS_KEY]",
        ],
        [
            "state-dir",
            None,
            None,
            "Directory for generated state such as the self-signed certificate "
            f"[env HAVEN_AGENT_STATE_DIR; default {DEFAULT_STATE_DIR}]",
        ],
        [
            "server-names",
            None,
            None,
            "Extra host names or IPs for the generated certificate, comma or "
            "space separated [env HAVEN_AGENT_SERVER_NAMES or "
            "dm_agent_server_names]",
        ],
        [
            "head-timeout",
            None,
            None,
            "Seconds allowed for a complete request head (and the TLS handshake "
            "before the first one); streams never time out "
            "[env HAVEN_AGENT_HEAD_TIMEOUT; default 30]",
        ],
    ]

    def __init__(self, environ: Mapping[str, str] | None = None) -> None:
        super().__init__()
        self._environ = os.environ if environ is None else environ
        self["listen"] = []

    def opt_listen(self, endpoint: str) -> None:
        self["listen"].append(listen_endpoint(endpoint))

    # usage.Options prints a method's docstring as its help, spaces and all.
    opt_listen.__doc__ = (
        "Endpoint to serve TLS on, e.g. tcp:8771 or tcp:8771:interface=10.0.0.5; "
        "repeatable [env HAVEN_AGENT_LISTEN, space separated; env server_port "
        "changes the default port; default tcp:8771]"
    )

    def _fromEnvironment(self, name: str) -> str | None:
        if self[name] is not None:
            return self[name]
        for variable in ENVIRONMENT[name]:
            value = self._environ.get(variable)
            if value:
                return value
        return None

    def postOptions(self) -> None:
        listen = tuple(self["listen"])
        if not listen:
            fromEnv = self._environ.get("HAVEN_AGENT_LISTEN", "").split()
            port = self._environ.get("server_port") or str(DEFAULT_PORT)
            if not port.isdigit():
                raise usage.UsageError(
                    f"server_port must be a port number, not {port!r}"
                )
            listen = tuple(listen_endpoint(item) for item in fromEnv) or (
                f"tcp:{port}",
            )
        for endpoint in listen:
            if endpoint.split(":", 1)[0] in ("ssl", "tls"):
                raise usage.UsageError(
                    f"--listen {endpoint}: TLS is always added; give a plain "
                    "endpoint such as tcp:8771"
                )

        password = self._fromEnvironment("password")
        passwordFile = self._fromEnvironment("password-file")
        if passwordFile is not None:
            if self["password"] is not None:
                raise usage.UsageError("give --password or --password-file, not both")
            try:
                with open(passwordFile, encoding="utf-8") as f:
                    password = f.read().rstrip("\r\n")
            except OSError as e:
                raise usage.UsageError(
                    f"cannot read --password-file {passwordFile}: {e.strerror}"
                ) from None
            if not password:
                raise usage.UsageError(f"--password-file {passwordFile} is empty")

        tlsCert = self._fromEnvironment("tls-cert")
        tlsKey = self._fromEnvironment("tls-key")
        if (tlsCert is None) != (tlsKey is None):
            raise usage.UsageError("--tls-cert and --tls-key go together")

        timeout = self._fromEnvironment("head-timeout")
        try:
            headTimeout = _positive(timeout) if timeout is not None else 30.0
        except ValueError:
            raise usage.UsageError(
                f"--head-timeout must be a positive number of seconds, not {timeout!r}"
            ) from None

        names = self._fromEnvironment("server-names") or ""
        self.config = ProxyConfig(
            listen=listen,
            docker=docker_endpoint(self._fromEnvironment("docker") or DEFAULT_DOCKER),
            user=self._fromEnvironment("user") or "admin",
            password=password or DEFAULT_PASSWORD,
            passwordIsDefault=not password,
            tlsCert=tlsCert,
            tlsKey=tlsKey,
            stateDir=self._fromEnvironment("state-dir") or DEFAULT_STATE_DIR,
            serverNames=tuple(names.replace(",", " ").split()),
            firstHeadTimeout=headTimeout,
            nextHeadTimeout=headTimeout,
        )


def makeService(options: Options) -> MultiService:
    """
    The agent: the TLS listener(s) of the Docker API proxy.
    """
    from twisted.internet import reactor

    from haven_agent.proxy_service import build_proxy_service

    agent = MultiService()
    build_proxy_service(options.config, reactor).setServiceParent(agent)
    return agent
