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

from OpenSSL import crypto
from twisted.application.service import MultiService
from twisted.internet.ssl import Certificate
from twisted.python import usage

from haven_agent.certificates import CertificateError, load_client_ca
from haven_agent.config import (
    DEFAULT_DOCKER,
    DEFAULT_INTERVAL,
    DEFAULT_PASSWORD,
    DEFAULT_PORT,
    DEFAULT_STATE_DIR,
    ProxyConfig,
    ReporterConfig,
    docker_endpoint,
    listen_endpoint,
    listen_port,
)
from haven_agent.gate import AUTH_MODES
from haven_agent.node_identity import validate_node_name
from haven_agent.reuse_port import listen_addresses

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
    "shutdown-grace": ("HAVEN_AGENT_SHUTDOWN_GRACE",),
    "workers": ("HAVEN_AGENT_WORKERS",),
    "log-format": ("HAVEN_AGENT_LOG_FORMAT",),
    "master": ("HAVEN_AGENT_MASTER", "dm_agent_notifier_server"),
    "secret": ("HAVEN_AGENT_SECRET", "dm_agent_notifier_secret"),
    "interval": ("HAVEN_AGENT_INTERVAL",),
    "node-name": ("HAVEN_AGENT_NODE_NAME",),
    "address": ("HAVEN_AGENT_ADDRESS", "dm_agent_notifier_address"),
    "host-root": ("HAVEN_AGENT_HOST_ROOT", "dm_agent_notifier_rootPath"),
    "master-ca": ("HAVEN_AGENT_MASTER_CA",),
}


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
            "User name of the read-only account (GET and HEAD only) "
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
            "[env HAVEN_AGENT_NETWORK_FILESYSTEMS=1]",
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

    def _count(self, name: str, default: int) -> int:
        value = self._fromEnvironment(name)
        if value is None:
            return default
        if not value.isdigit() or int(value) < 1:
            raise usage.UsageError(
                f"--{name} must be a whole number >= 1, not {value!r}"
            )
        return int(value)

    def _workers(self, listen: tuple[str, ...]) -> int:
        workers = self._count("workers", 1)
        if workers > MAX_WORKERS:
            raise usage.UsageError(f"--workers must be at most {MAX_WORKERS}")
        if workers > 1:
            try:
                listen_addresses(listen)
            except ValueError as e:
                raise usage.UsageError(f"--workers {workers}: {e}") from None
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
                f"--{name} must be a number of seconds, not {value!r}"
            )
        return seconds

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

        headTimeout = self._seconds("head-timeout", 30.0)

        clientCA = self._fromEnvironment("tls-client-ca")
        if clientCA is not None:
            try:
                load_client_ca(clientCA)
            except CertificateError as e:
                raise usage.UsageError(f"--tls-client-ca: {e}") from None
        authMode = self._fromEnvironment("auth") or (
            "both" if clientCA is not None else "password"
        )
        if authMode not in AUTH_MODES:
            raise usage.UsageError(
                f"--auth must be one of {', '.join(AUTH_MODES)}, not {authMode!r}"
            )
        if authMode != "password" and clientCA is None:
            raise usage.UsageError(f"--auth {authMode} needs --tls-client-ca")
        readOnlyUser = self._fromEnvironment("readonly-user") or "readonly"
        readOnlyPassword = self._fromEnvironment("readonly-password")
        user = self._fromEnvironment("user") or "admin"
        if readOnlyPassword is not None and readOnlyUser == user:
            raise usage.UsageError("--readonly-user must differ from --user")
        logFormat = self._fromEnvironment("log-format") or "text"
        if logFormat not in ("text", "json"):
            raise usage.UsageError(
                f"--log-format must be text or json, not {logFormat!r}"
            )
        self.logFormat = logFormat
        names = self._fromEnvironment("server-names") or ""
        try:
            docker = docker_endpoint(self._fromEnvironment("docker") or DEFAULT_DOCKER)
        except ValueError as e:
            raise usage.UsageError(f"--docker: {e}") from None
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
            maxConnections=self._count("max-connections", 10_000),
            maxUnauthenticated=self._count("max-unauthenticated", 512),
            shutdownGrace=self._seconds("shutdown-grace", 5.0, allowZero=True),
            workers=self._workers(listen),
        )
        self.reporterConfig = self._reporterConfig(listen[0], docker)

    def _reporterConfig(self, listen: str, docker: str) -> ReporterConfig:
        master = self._fromEnvironment("master")
        if master is not None and not master.startswith(("http://", "https://")):
            raise usage.UsageError(
                f"--master must be an http:// or https:// URL, not {master!r}"
            )
        seconds = self._seconds("interval", DEFAULT_INTERVAL)
        nodeName = self._fromEnvironment("node-name")
        if nodeName is not None:
            try:
                validate_node_name(nodeName)
            except ValueError as e:
                raise usage.UsageError(str(e)) from None
        address = self._fromEnvironment("address")
        if address is not None and not address.startswith(("http://", "https://")):
            raise usage.UsageError(
                "--address must be a URL such as https://10.0.0.5:8771, "
                f"not {address!r}"
            )
        hostRoot = self._fromEnvironment("host-root") or "/"
        if not os.path.isabs(hostRoot):
            raise usage.UsageError(
                f"--host-root must be an absolute path, not {hostRoot!r}"
            )
        networkFilesystems = bool(self["network-filesystems"]) or self._environ.get(
            "HAVEN_AGENT_NETWORK_FILESYSTEMS", ""
        ).lower() in ("1", "true", "yes")
        masterCA = self._fromEnvironment("master-ca")
        if masterCA is not None:
            try:
                with open(masterCA, "rb") as f:
                    Certificate.loadPEM(f.read())
            except (OSError, ValueError, crypto.Error) as e:
                raise usage.UsageError(
                    f"--master-ca {masterCA}: not a readable PEM certificate ({e})"
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
    """
    from twisted.internet import reactor

    from haven_agent.proxy_service import build_proxy_service
    from haven_agent.reporting import NodeReporting

    agent = MultiService()
    config = options.config
    if options.logFormat == "text":
        from haven_agent.text_log import FasterTextLogs

        FasterTextLogs().setServiceParent(agent)
    if config.workers == 1:
        build_proxy_service(config, reactor).setServiceParent(agent)
    else:
        from haven_agent.workers import WorkerPool

        proxy = build_proxy_service(
            config, reactor, reusePort=listen_addresses(config.listen)
        )
        proxy.setServiceParent(agent)
        # A sibling of the proxy, not its child: the workers' graceful stop
        # runs alongside this process's own.
        pool = WorkerPool(
            config,
            proxy.reusePortListeners,
            options.logFormat,
            config.workers - 1,
            reactor,
        )
        pool.setServiceParent(agent)
        proxy.onReload.append(lambda: pool.signalAll("HUP"))
    NodeReporting(options.reporterConfig, reactor).setServiceParent(agent)
    if options.logFormat == "json":
        from haven_agent.json_log import use_json_logging

        return use_json_logging(agent)
    return agent
