# -*- test-case-name: tests.test_tap -*-
"""
`twistd haven-agent`: command-line options and the service they build.

Each option falls back to an environment variable, then to a default, so the
agent can be configured entirely from `docker run -e ...`. Haven's own
setting names are accepted as they are (see `ENVIRONMENT`).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Mapping
from urllib.parse import urlsplit

from OpenSSL import crypto
from twisted.application.service import IService, MultiService
from twisted.internet.endpoints import serverFromString
from twisted.internet.ssl import Certificate
from twisted.logger import LogLevel
from twisted.python import usage

from haven_agent.config import (
    DEFAULT_DOCKER,
    DEFAULT_INTERVAL,
    DEFAULT_PASSWORD,
    DEFAULT_PORT,
    DEFAULT_STATE_DIR,
    ProxyConfig,
    ReporterConfig,
    Sources,
    default_listen,
    docker_endpoint,
    endpoint_port,
    is_local_endpoint,
    listen_endpoint,
    listen_port,
    probe_ipv6,
)
from haven_agent.logs.level import LOG_LEVEL_NAMES, LOG_LEVELS
from haven_agent.proxy.gate import AUTH_MODES
from haven_agent.proxy.reuse_port import listen_addresses
from haven_agent.reporting.node_identity import validate_node_name
from haven_agent.thread_pools import ThreadPools
from haven_agent.tls.certificates import CertificateError, load_client_ca

#: More processes than this would only compete for the same cores.
MAX_WORKERS = 64

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
    "tls-client-ca": ("HAVEN_AGENT_TLS_CLIENT_CA",),
    "auth": ("HAVEN_AGENT_AUTH",),
    "readonly-user": ("HAVEN_AGENT_READONLY_USER",),
    "readonly-password": ("HAVEN_AGENT_READONLY_PASSWORD",),
    "max-connections": ("HAVEN_AGENT_MAX_CONNECTIONS",),
    "max-unauthenticated": ("HAVEN_AGENT_MAX_UNAUTHENTICATED",),
    "max-unauthenticated-per-source": ("HAVEN_AGENT_MAX_UNAUTHENTICATED_PER_SOURCE",),
    "max-connections-per-user": ("HAVEN_AGENT_MAX_CONNECTIONS_PER_USER",),
    "hello-timeout": ("HAVEN_AGENT_HELLO_TIMEOUT",),
    "idle-timeout": ("HAVEN_AGENT_IDLE_TIMEOUT",),
    "shutdown-grace": ("HAVEN_AGENT_SHUTDOWN_GRACE",),
    "workers": ("HAVEN_AGENT_WORKERS",),
    "metrics-listen": ("HAVEN_AGENT_METRICS_LISTEN",),
    "policy": ("HAVEN_AGENT_POLICY",),
    "terminal-from": ("HAVEN_AGENT_TERMINAL_FROM",),
    "terminal-origins": ("HAVEN_AGENT_TERMINAL_ORIGINS",),
    "log-format": ("HAVEN_AGENT_LOG_FORMAT",),
    "log-level": ("HAVEN_AGENT_LOG_LEVEL",),
    "master": ("HAVEN_AGENT_MASTER", "dm_agent_notifier_server"),
    "secret": ("HAVEN_AGENT_SECRET", "dm_agent_notifier_secret"),
    "interval": ("HAVEN_AGENT_INTERVAL",),
    "node-name": ("HAVEN_AGENT_NODE_NAME",),
    "address": ("HAVEN_AGENT_ADDRESS", "dm_agent_notifier_address"),
    "host-root": ("HAVEN_AGENT_HOST_ROOT", "dm_agent_notifier_rootPath"),
    "master-ca": ("HAVEN_AGENT_MASTER_CA",),
}


def version_line() -> str:
    """
    C{haven-agent X (Twisted Y, Python Z, OpenSSL W)}: what a bug report
    needs to know, from the same versions the metrics' build info gives.
    """
    from haven_agent.metrics.registry import build_labels

    versions = build_labels()
    return (
        f"haven-agent {versions['version']} (Twisted {versions['twisted']}, "
        f"Python {versions['python']}, {versions['openssl']})"
    )


def master_url_problem(url: str) -> str | None:
    """
    What keeps C{url} from being a master's base URL the reporter can POST
    to, or None when nothing does.
    """
    if url != url.strip() or any(c.isspace() for c in url):
        return "it contains white space"
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https"):
        return "the scheme must be http or https"
    if not parts.hostname:
        return "it names no host"
    try:
        port = parts.port
    except ValueError:
        return "its port is not a number from 1 to 65535"
    if port == 0:
        return "its port is not a number from 1 to 65535"
    return None


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
        [
            "tls-client-ca",
            None,
            None,
            "PEM CA whose client certificates are accepted; with it clients must "
            "present one [env HAVEN_AGENT_TLS_CLIENT_CA]",
        ],
        [
            "auth",
            None,
            None,
            "How clients authenticate: password, cert or both "
            "[env HAVEN_AGENT_AUTH; default password, or both with --tls-client-ca]",
        ],
        [
            "readonly-user",
            None,
            None,
            "User name of the read-only account (a list of read routes only) "
            "[env HAVEN_AGENT_READONLY_USER; default readonly]",
        ],
        [
            "readonly-password",
            None,
            None,
            "Password (or bcrypt hash) of the read-only account; without it "
            "there is none [env HAVEN_AGENT_READONLY_PASSWORD]",
        ],
        [
            "workers",
            None,
            None,
            "Processes serving the proxy, this one included; more than one "
            "shares each TCP port with SO_REUSEPORT (limits apply per process) "
            "[env HAVEN_AGENT_WORKERS; default 1]",
        ],
        [
            "policy",
            None,
            None,
            "Per-credential API policy: a TOML file of users, identities and "
            "profiles (see docs/policy.md); checked at start and on SIGHUP "
            "[env HAVEN_AGENT_POLICY; default: the admin full, the read-only "
            "account read-only]",
        ],
        [
            "terminal-from",
            None,
            None,
            "Let the Haven web terminal's GET /containers/{id}/attach/ws "
            "WebSocket upgrade in without credentials from these addresses or "
            "networks (the master's), comma separated; nothing else from them "
            "[env HAVEN_AGENT_TERMINAL_FROM; default: none]",
        ],
        [
            "terminal-origins",
            None,
            None,
            "Origins a WebSocket upgrade may come from when it names one, comma "
            "separated, e.g. https://haven.example:8761 [env "
            "HAVEN_AGENT_TERMINAL_ORIGINS; default: any]",
        ],
        [
            "metrics-listen",
            None,
            None,
            "Also serve the metrics (GET /metrics) in plain HTTP without "
            "credentials on this local endpoint, e.g. "
            "unix:/run/haven-agent/metrics.sock or tcp:9771:interface=127.0.0.1; "
            "the TLS port serves them at /_agent/metrics either way "
            "[env HAVEN_AGENT_METRICS_LISTEN]",
        ],
        [
            "max-connections",
            None,
            None,
            "Most client connections at once; more get 503 "
            "[env HAVEN_AGENT_MAX_CONNECTIONS; default 10000]",
        ],
        [
            "max-unauthenticated",
            None,
            None,
            "Most connections at once that have not authenticated yet; more get "
            "503 [env HAVEN_AGENT_MAX_UNAUTHENTICATED; default 512]",
        ],
        [
            "max-unauthenticated-per-source",
            None,
            None,
            "The same, from one source address (an IPv6 source by its /64) "
            "[env HAVEN_AGENT_MAX_UNAUTHENTICATED_PER_SOURCE; default 64]",
        ],
        [
            "max-connections-per-user",
            None,
            None,
            "Most authenticated connections of one user at once; more get 503 "
            "[env HAVEN_AGENT_MAX_CONNECTIONS_PER_USER; default half of "
            "--max-connections]",
        ],
        [
            "hello-timeout",
            None,
            None,
            "Seconds a new connection gets to begin its TLS handshake "
            "[env HAVEN_AGENT_HELLO_TIMEOUT; default 5]",
        ],
        [
            "idle-timeout",
            None,
            None,
            "Seconds an idle keep-alive connection of the read-only user is "
            "kept; streams are never closed [env HAVEN_AGENT_IDLE_TIMEOUT; "
            "default 60]",
        ],
        [
            "shutdown-grace",
            None,
            None,
            "Seconds open requests get to finish after SIGTERM before they are "
            "closed [env HAVEN_AGENT_SHUTDOWN_GRACE; default 5]",
        ],
        [
            "log-format",
            None,
            None,
            "text, or json for one JSON object per line on standard output "
            "[env HAVEN_AGENT_LOG_FORMAT; default text]",
        ],
        [
            "log-level",
            None,
            None,
            "Least important events logged: debug, info, warn or error "
            "[env HAVEN_AGENT_LOG_LEVEL; default info]",
        ],
        [
            "master",
            None,
            None,
            "Haven master base URL to report to, e.g. http://10.0.0.1:8761; "
            "without it each report is written to the log "
            "[env HAVEN_AGENT_MASTER or dm_agent_notifier_server]",
        ],
        [
            "secret",
            None,
            None,
            "Node secret sent as X-Auth-Node "
            "[env HAVEN_AGENT_SECRET or dm_agent_notifier_secret]",
        ],
        [
            "interval",
            None,
            None,
            "Seconds between reports [env HAVEN_AGENT_INTERVAL; default 60]",
        ],
        [
            "node-name",
            None,
            None,
            "Node name reported (letters, digits, '-') [env HAVEN_AGENT_NODE_NAME; "
            "default Docker's info.Name, else the short host name]",
        ],
        [
            "address",
            None,
            None,
            "Address the master connects back to, https://IP:PORT "
            "[env HAVEN_AGENT_ADDRESS or dm_agent_notifier_address; default "
            "https://<local IP towards the master>:<listen port>]",
        ],
        [
            "host-root",
            None,
            None,
            "Where the host's / is mounted when running in a container, e.g. "
            "/host with -v /:/host:ro; metrics are then the host's "
            "[env HAVEN_AGENT_HOST_ROOT or dm_agent_notifier_rootPath; default /]",
        ],
        [
            "master-ca",
            None,
            None,
            "PEM CA file to trust for an https:// master "
            "[env HAVEN_AGENT_MASTER_CA; default the system's trust store]",
        ],
    ]

    optFlags = [
        [
            "network-filesystems",
            None,
            "Also report disk usage of network file systems (NFS, CIFS, ...) "
            "[env HAVEN_AGENT_NETWORK_FILESYSTEMS=1 (or true, yes, on)]",
        ],
        [
            "metrics-listen-anywhere",
            None,
            "Allow --metrics-listen on an address other than loopback, which "
            "serves the metrics to the network without authentication "
            "[env HAVEN_AGENT_METRICS_LISTEN_ANYWHERE=1]",
        ],
        [
            "attach-tickets",
            None,
            "Serve POST /_agent/attach-tickets?container=ID: a 60-second, "
            "single-use ticket a browser or script presents as its WebSocket "
            "subprotocol to attach without credentials "
            "[env HAVEN_AGENT_ATTACH_TICKETS=1]",
        ],
        [
            "no-node-metrics",
            None,
            "Leave the node's metrics (node_exporter's names) out of the "
            "metrics page, where node_exporter already runs "
            "[env HAVEN_AGENT_NO_NODE_METRICS=1]",
        ],
    ]

    def __init__(
        self,
        environ: Mapping[str, str] | None = None,
        probeIPv6: Callable[[], tuple[bool, bool]] = probe_ipv6,
    ) -> None:
        super().__init__()
        self._environ = os.environ if environ is None else environ
        self._probeIPv6 = probeIPv6
        self._sources: dict[str, str] = {}
        self["listen"] = []

    def parseOptions(self, options: list[str] | None = None) -> None:
        """
        Parse, and under twistd turn a usage error into its one line and a
        hint on standard error, instead of the whole help before the line.
        """
        try:
            super().parseOptions(options)
        except usage.UsageError as e:
            if getattr(self, "parent", None) is None:
                raise
            sys.stderr.write(
                f"twistd haven-agent: {e}\nsee twistd haven-agent --help\n"
            )
            raise SystemExit(1) from None

    def opt_version(self) -> None:
        """
        Print the agent's version and those of what it runs on, and exit.
        """
        print(version_line())
        raise SystemExit(0)

    def opt_check_policy(self, path: str) -> None:
        """
        Check a policy file and print each identity's profile, then exit
        (status 1 when the file is not a valid policy).
        """
        from haven_agent.policy.policy_file import PolicyError, load_policy

        try:
            policy = load_policy(path)
        except PolicyError as e:
            print(f"haven-agent: {e}", file=sys.stderr)
            raise SystemExit(1) from None
        print(f"{path}: a valid policy")
        for line in policy.describe():
            print(f"  {line}")
        if not policy.identities and not policy.certificates:
            print("  (no identities: every request but /_ping will be refused)")
        raise SystemExit(0)

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
            self._sources[name] = f"--{name}"
            return self[name]
        for variable in ENVIRONMENT[name]:
            value = self._environ.get(variable)
            if value:
                self._sources[name] = variable
                return value
        return None

    def _source(self, name: str) -> str:
        """The flag or environment variable the value of C{name} came from."""
        return self._sources.get(name, f"--{name}")

    def _count(self, name: str, default: int) -> int:
        value = self._fromEnvironment(name)
        if value is None:
            return default
        if not value.isdigit() or int(value) < 1:
            raise usage.UsageError(
                f"{self._source(name)} must be a whole number >= 1, not {value!r}"
            )
        return int(value)

    def _optionalCount(self, name: str) -> int | None:
        if self._fromEnvironment(name) is None:
            return None
        return self._count(name, 1)

    def _workers(self, listen: tuple[str, ...]) -> int:
        workers = self._count("workers", 1)
        if workers > MAX_WORKERS:
            raise usage.UsageError(
                f"{self._source('workers')} must be at most {MAX_WORKERS}"
            )
        if workers > 1:
            try:
                listen_addresses(listen)
            except ValueError as e:
                raise usage.UsageError(
                    f"{self._source('workers')} {workers}: {e}"
                ) from None
        return workers

    def _seconds(self, name: str, default: float, allowZero: bool = False) -> float:
        value = self._fromEnvironment(name)
        if value is None:
            return default
        try:
            seconds = float(value)
        except ValueError:
            seconds = -1.0
        if seconds < 0 or (seconds == 0 and not allowZero) or seconds != seconds:
            raise usage.UsageError(
                f"{self._source(name)} must be a number of seconds, not {value!r}"
            )
        return seconds

    def _listen(self) -> tuple[str, ...]:
        listen = tuple(self["listen"])
        if listen:
            self._sources["listen"] = "--listen"
        else:
            fromEnv = self._environ.get("HAVEN_AGENT_LISTEN", "").split()
            listen = tuple(listen_endpoint(item) for item in fromEnv)
            if listen:
                self._sources["listen"] = "HAVEN_AGENT_LISTEN"
        if not listen:
            port = self._environ.get("server_port")
            if port is not None:
                self._sources["listen"] = "server_port"
                if not (port.isdigit() and 0 < int(port) < 65536):
                    raise usage.UsageError(
                        f"server_port must be a port number (1-65535), not {port!r}"
                    )
            else:
                self._sources["listen"] = "the default --listen"
            ipv6, ipv6Only = self._probeIPv6()
            listen = default_listen(int(port or DEFAULT_PORT), ipv6, ipv6Only)
        for endpoint in listen:
            self._checkListen(endpoint)
        return listen

    def _checkListen(self, endpoint: str) -> None:
        source = self._source("listen")
        if endpoint.split(":", 1)[0] in ("ssl", "tls"):
            raise usage.UsageError(
                f"{source} {endpoint}: TLS is always added; give a plain "
                "endpoint such as tcp:8771"
            )
        try:
            # Parsing only: nothing listens until the service starts.
            serverFromString(None, endpoint)
        except (ValueError, TypeError, KeyError, IndexError) as e:
            raise usage.UsageError(
                f"{source} {endpoint}: not a server endpoint ({e}); "
                "give one such as tcp:8771 or tcp:8771:interface=10.0.0.5"
            ) from None
        port = endpoint_port(endpoint)
        if port is not None and not (port.isdigit() and int(port) < 65536):
            raise usage.UsageError(
                f"{source} {endpoint}: the port must be a number from 0 to 65535"
            )

    def postOptions(self) -> None:
        listen = self._listen()

        password = self._fromEnvironment("password")
        passwordFile = self._fromEnvironment("password-file")
        if passwordFile is not None:
            source = self._source("password-file")
            if self["password"] is not None:
                raise usage.UsageError(f"give --password or {source}, not both")
            try:
                with open(passwordFile, encoding="utf-8") as f:
                    password = f.read().rstrip("\r\n")
            except OSError as e:
                raise usage.UsageError(
                    f"cannot read {source} {passwordFile}: {e.strerror}"
                ) from None
            if not password:
                raise usage.UsageError(f"{source} {passwordFile} is empty")

        tlsCert = self._fromEnvironment("tls-cert")
        tlsKey = self._fromEnvironment("tls-key")
        if (tlsCert is None) != (tlsKey is None):
            given, missing = (
                ("tls-cert", "tls-key") if tlsKey is None else ("tls-key", "tls-cert")
            )
            raise usage.UsageError(
                f"{self._source(given)} needs --{missing} too "
                f"(env {ENVIRONMENT[missing][0]})"
            )

        headTimeout = self._seconds("head-timeout", 30.0)

        clientCA = self._fromEnvironment("tls-client-ca")
        if clientCA is not None:
            try:
                load_client_ca(clientCA)
            except CertificateError as e:
                raise usage.UsageError(
                    f"{self._source('tls-client-ca')}: {e}"
                ) from None
        authMode = self._fromEnvironment("auth") or (
            "both" if clientCA is not None else "password"
        )
        if authMode not in AUTH_MODES:
            raise usage.UsageError(
                f"{self._source('auth')} must be one of {', '.join(AUTH_MODES)}, "
                f"not {authMode!r}"
            )
        if authMode != "password" and clientCA is None:
            raise usage.UsageError(
                f"{self._source('auth')} {authMode} needs --tls-client-ca"
            )
        readOnlyUser = self._fromEnvironment("readonly-user") or "readonly"
        readOnlyPassword = self._fromEnvironment("readonly-password")
        user = self._fromEnvironment("user") or "admin"
        if readOnlyPassword is not None and readOnlyUser == user:
            raise usage.UsageError(
                f"{self._source('readonly-user')} must differ from "
                f"{self._source('user')}"
            )
        logFormat = self._fromEnvironment("log-format") or "text"
        if logFormat not in ("text", "json"):
            raise usage.UsageError(
                f"{self._source('log-format')} must be text or json, "
                f"not {logFormat!r}"
            )
        self.logFormat = logFormat
        self.logLevel = self._logLevel()
        names = self._fromEnvironment("server-names") or ""
        try:
            docker = docker_endpoint(self._fromEnvironment("docker") or DEFAULT_DOCKER)
        except ValueError as e:
            raise usage.UsageError(f"{self._source('docker')}: {e}") from None
        self.config = ProxyConfig(
            listen=listen,
            docker=docker,
            user=user,
            password=password or DEFAULT_PASSWORD,
            passwordIsDefault=not password,
            tlsCert=tlsCert,
            tlsKey=tlsKey,
            stateDir=self._fromEnvironment("state-dir") or DEFAULT_STATE_DIR,
            serverNames=tuple(names.replace(",", " ").split()),
            firstHeadTimeout=headTimeout,
            nextHeadTimeout=headTimeout,
            tlsClientCA=clientCA,
            authMode=authMode,
            readOnlyUser=readOnlyUser,
            readOnlyPassword=readOnlyPassword,
            policy=self._policy(readOnlyUser if readOnlyPassword else None),
            terminalFrom=self._terminalFrom(),
            terminalOrigins=self._terminalOrigins(),
            attachTickets=self._flag("attach-tickets", "HAVEN_AGENT_ATTACH_TICKETS"),
            # Shared by the worker processes, so a ticket any one issues is
            # accepted by all.
            ticketKey=os.urandom(32).hex(),
            maxConnections=self._count("max-connections", 10_000),
            maxUnauthenticated=self._count("max-unauthenticated", 512),
            maxUnauthenticatedPerSource=self._count(
                "max-unauthenticated-per-source", 64
            ),
            maxConnectionsPerUser=self._optionalCount("max-connections-per-user"),
            helloTimeout=self._seconds("hello-timeout", 5.0),
            idleTimeout=self._seconds("idle-timeout", 60.0),
            shutdownGrace=self._seconds("shutdown-grace", 5.0, allowZero=True),
            workers=self._workers(listen),
            metricsListen=self._metricsListen(),
            nodeMetrics=not self._flag(
                "no-node-metrics", "HAVEN_AGENT_NO_NODE_METRICS"
            ),
            sources=Sources(dict(self._sources)),
        )
        self.reporterConfig = self._reporterConfig(listen[0], docker)

    def _terminalFrom(self) -> tuple[str, ...]:
        text = self._fromEnvironment("terminal-from")
        if text is None:
            return ()
        from haven_agent.proxy.terminal import parse_networks

        try:
            networks = parse_networks(text)
        except ValueError as e:
            raise usage.UsageError(
                f"{self._source('terminal-from')}: {e}; give addresses or networks "
                f"such as 10.0.0.5 or 10.0.0.0/24"
            ) from None
        return tuple(str(network) for network in networks)

    def _terminalOrigins(self) -> tuple[str, ...]:
        text = self._fromEnvironment("terminal-origins")
        if text is None:
            return ()
        origins = tuple(o.rstrip("/") for o in text.replace(",", " ").split())
        for origin in origins:
            parts = urlsplit(origin)
            if parts.scheme not in ("http", "https") or not parts.netloc or parts.path:
                raise usage.UsageError(
                    f"{self._source('terminal-origins')}: {origin!r} is not an "
                    f"origin such as https://haven.example:8761"
                )
        return origins

    def _policy(self, readOnlyUser: str | None) -> str | None:
        path = self._fromEnvironment("policy")
        if path is None:
            return None
        from haven_agent.policy.policy_file import PolicyError, load_policy

        source = self._source("policy")
        try:
            policy = load_policy(path)
        except PolicyError as e:
            raise usage.UsageError(f"{source} {e}") from None
        taken = {self._fromEnvironment("user") or "admin", readOnlyUser}
        clash = sorted(taken & set(policy.users))
        if clash:
            raise usage.UsageError(
                f"{source} {path}: user {clash[0]!r} is given by the options "
                f"already; give it a profile in [identities] instead"
            )
        return path

    def _metricsListen(self) -> str | None:
        endpoint = self._fromEnvironment("metrics-listen")
        if endpoint is None:
            return None
        source = self._source("metrics-listen")
        try:
            # Parsing only: nothing listens until the service starts.
            serverFromString(None, endpoint)
        except (ValueError, TypeError, KeyError, IndexError) as e:
            raise usage.UsageError(
                f"{source} {endpoint!r} is not an endpoint description such as "
                f"tcp:9771:interface=127.0.0.1 or unix:/run/haven-agent/metrics.sock "
                f"({e})"
            ) from None
        anywhere = self._flag(
            "metrics-listen-anywhere", "HAVEN_AGENT_METRICS_LISTEN_ANYWHERE"
        )
        if not is_local_endpoint(endpoint) and not anywhere:
            raise usage.UsageError(
                f"{source} {endpoint!r} would serve the metrics without "
                f"authentication beyond this host: give a UNIX socket or a "
                f"loopback interface (tcp:9771:interface=127.0.0.1), or add "
                f"--metrics-listen-anywhere"
            )
        return endpoint

    def _logLevel(self) -> LogLevel:
        name = (self._fromEnvironment("log-level") or "info").lower()
        level = LOG_LEVELS.get(name)
        if level is None:
            raise usage.UsageError(
                f"{self._source('log-level')} must be one of "
                f"{', '.join(LOG_LEVEL_NAMES)}, not {name!r}"
            )
        return level

    def _flag(self, name: str, variable: str) -> bool:
        if self[name]:
            return True
        value = self._environ.get(variable, "").strip().lower()
        if value in ("1", "true", "yes", "on"):
            return True
        if value in ("", "0", "false", "no", "off"):
            return False
        raise usage.UsageError(
            f"{variable} must be 1, true, yes or on (or 0, false, no, off), "
            f"not {value!r}"
        )

    def _reporterConfig(self, listen: str, docker: str) -> ReporterConfig:
        master = self._fromEnvironment("master")
        if master is not None:
            problem = master_url_problem(master)
            if problem is not None:
                raise usage.UsageError(
                    f"{self._source('master')} must be an http:// or https:// "
                    f"URL such as http://10.0.0.1:8761, not {master!r}: {problem}"
                )
        seconds = self._seconds("interval", DEFAULT_INTERVAL)
        nodeName = self._fromEnvironment("node-name")
        if nodeName is not None:
            try:
                validate_node_name(nodeName)
            except ValueError as e:
                raise usage.UsageError(f"{self._source('node-name')}: {e}") from None
        address = self._fromEnvironment("address")
        if address is not None and not address.startswith(("http://", "https://")):
            raise usage.UsageError(
                f"{self._source('address')} must be a URL such as "
                f"https://10.0.0.5:8771, not {address!r}"
            )
        hostRoot = self._fromEnvironment("host-root") or "/"
        if not os.path.isabs(hostRoot):
            raise usage.UsageError(
                f"{self._source('host-root')} must be an absolute path, "
                f"not {hostRoot!r}"
            )
        networkFilesystems = self._flag(
            "network-filesystems", "HAVEN_AGENT_NETWORK_FILESYSTEMS"
        )
        masterCA = self._fromEnvironment("master-ca")
        if masterCA is not None:
            try:
                with open(masterCA, "rb") as f:
                    Certificate.loadPEM(f.read())
            except (OSError, ValueError, crypto.Error) as e:
                raise usage.UsageError(
                    f"{self._source('master-ca')} {masterCA}: not a readable PEM "
                    f"certificate ({e})"
                ) from None
        return ReporterConfig(
            master=master,
            secret=self._fromEnvironment("secret"),
            interval=seconds,
            nodeName=nodeName,
            address=address,
            hostRoot=hostRoot,
            masterCA=masterCA,
            networkFilesystems=networkFilesystems,
            listenPort=listen_port(listen),
            docker=docker,
        )


def makeService(options: Options) -> MultiService:
    """
    The agent: the TLS listener(s) of the Docker API proxy and the reporter.

    A start-up failure it can explain (a certificate, a port) ends the
    process with one line naming the setting at fault, not a traceback.
    """
    from twisted.internet import reactor

    from haven_agent.startup_errors import StartupError, explain_startup_errors

    explain_startup_errors()
    agent = MultiService()
    from haven_agent._twisted.plain_dispatch import PlainDispatch
    from haven_agent.logs.flush_soon import LogFlushing

    PlainDispatch(reactor).setServiceParent(agent)
    # Stopped last, so that what the others log as they stop is flushed.
    LogFlushing(reactor).setServiceParent(agent)
    config = options.config
    if options.logFormat == "text":
        from haven_agent.logs.text import TextLogSettings

        TextLogSettings(options.logLevel).setServiceParent(agent)
    # The pools hold the services that use them, so they stop after them.
    threads = ThreadPools(reactor)
    threads.setServiceParent(agent)
    from haven_agent.metrics.registry import new_registry
    from haven_agent.metrics.reporter_metrics import ReporterMetrics

    # One registry for the proxy and the reporter of this process.
    registry = new_registry()
    try:
        for service in _proxy(config, options, reactor, threads, registry):
            service.setServiceParent(threads)
    except CertificateError as e:
        raise StartupError(f"{_certificateSource(config)}: {e}") from None
    from haven_agent.reporting.service import NodeReporting

    NodeReporting(
        options.reporterConfig, reactor, threads, ReporterMetrics(registry)
    ).setServiceParent(threads)
    if options.logFormat == "json":
        from haven_agent.logs.json_lines import use_json_logging

        return use_json_logging(agent, level=options.logLevel)
    return agent


def _proxy(
    config: ProxyConfig, options: Options, reactor, threads: ThreadPools, registry
) -> list[IService]:
    from haven_agent.proxy.service import build_proxy_service

    reusePort = None if config.workers == 1 else listen_addresses(config.listen)
    proxy = build_proxy_service(config, reactor, threads, reusePort, registry)
    services: list[IService] = [proxy]
    page = proxy.metricsPage
    if config.nodeMetrics:
        from haven_agent.metrics.node import NodeMetrics
        from haven_agent.reporting.host_metrics import HostRoot

        reporting = options.reporterConfig
        page.node = NodeMetrics(
            HostRoot(reporting.hostRoot),
            threads.defer_to_host,
            reactor,
            includeNetworkFilesystems=reporting.networkFilesystems,
        ).gather
    if config.metricsListen is not None:
        services.append(_metricsListener(config, page.render, reactor))
    if config.workers == 1:
        return services
    from haven_agent.workers.pool import WorkerPool

    # The pool is a sibling of the proxy, not its child: the workers'
    # graceful stop runs alongside this process's own.
    pool = WorkerPool(
        config,
        proxy.reusePortListeners,
        options.logFormat,
        config.workers - 1,
        reactor,
        logLevel=options.logLevel,
        renderMetrics=page.render,
    )
    page.others = pool.snapshots.gather
    proxy.onReload.append(lambda: pool.signalAll("HUP"))
    return services + [pool]


def _metricsListener(config: ProxyConfig, render, reactor) -> IService:
    """
    The plain local metrics endpoint of C{--metrics-listen}.
    """
    from twisted.application import strports

    from haven_agent.metrics.local_listener import metrics_site
    from haven_agent.proxy.service import Listening

    listener = strports.service(
        config.metricsListen, metrics_site(render), reactor=reactor
    )
    return Listening(
        listener, config.metricsListen, config.sources.of("metrics-listen")
    )


def _certificateSource(config: ProxyConfig) -> str:
    """The settings a certificate problem comes from."""
    if config.tlsCert is not None:
        return f"{config.sources.of('tls-cert')} / {config.sources.of('tls-key')}"
    return config.sources.of("state-dir")
