# -*- test-case-name: tests.proxy.test_proxy_fake_dockerd -*-
"""
Assembling the Docker API proxy: certificate, TLS, gate, listeners.

Certificates are loaded (or generated) while the service is built, so a bad
key stops `twistd` before it daemonises; each listener is a strports service
so a port that cannot be bound fails start-up instead of being logged and
forgotten. SIGHUP reloads the certificate, key and client CA for new
connections. On stop, listening ends first, then open connections get a
grace period to finish before they are closed.

The proxy's metrics live in the registry it is given (the agent's, shared
with the reporter): the gate counts into them, and the gauges of the
present are read from the gate, the throttle, the TLS material and the
dockerd probe just before each scrape.
"""

from __future__ import annotations

import calendar
import resource
from collections.abc import Callable
from typing import Any

from cryptography import x509
from prometheus_client import CollectorRegistry
from twisted.application import strports
from twisted.application.service import IService, MultiService
from twisted.internet.defer import Deferred
from twisted.internet.error import CannotListenError
from twisted.logger import Logger

from haven_agent._twisted.docker_socket import docker_connector
from haven_agent.config import ProxyConfig
from haven_agent.metrics.proxy_metrics import ProxyMetrics
from haven_agent.metrics.registry import new_registry
from haven_agent.metrics.scrape import MetricsPage
from haven_agent.policy.enforcement import PolicyRule
from haven_agent.policy.policy_file import PolicyError, load_policy
from haven_agent.proxy.auth import BasicAuthChecker, is_bcrypt_hash
from haven_agent.proxy.connection_limits import ConnectionLimits
from haven_agent.proxy.gate import GateFactory
from haven_agent.proxy.reuse_port import ListenAddress, ReusePortListener
from haven_agent.proxy.terminal import AttachTickets, TerminalAccess, parse_networks
from haven_agent.proxy.throttle import FailureThrottle
from haven_agent.startup_errors import StartupError
from haven_agent.thread_pools import ThreadPools
from haven_agent.tls.certificates import (
    ServerCertificate,
    load_certificate_files,
    load_client_ca,
    load_or_create_self_signed,
)
from haven_agent.tls.reload import (
    CertificateWatch,
    ReloadableServerOptions,
    install_reload_signal,
)
from haven_agent.tls.transport import serve_tls

log = Logger()


class ProxyService(MultiService):
    """
    The TLS listeners of the proxy; says at start-up how to reach and trust it.
    """

    def __init__(
        self,
        config: ProxyConfig,
        tls: ReloadableServerOptions,
        gate: GateFactory,
        reactor: Any,
        metrics: ProxyMetrics,
        metricsPage: MetricsPage,
    ) -> None:
        super().__init__()
        self._config = config
        self._tls = tls
        self._gate = gate
        self._reactor = reactor
        self._restoreSignal = None
        self.metrics = metrics
        #: What `GET /_agent/metrics` answers (see `metrics.scrape`).
        self.metricsPage = metricsPage
        #: Called after each SIGHUP reload (the worker pool's forwarding).
        self.onReload: list[Callable[[], None]] = []
        #: Reloads the policy file on SIGHUP, when there is one.
        self.policyReload: PolicyReload | None = None
        #: The SO_REUSEPORT listeners, when the proxy runs in several
        #: processes.
        self.reusePortListeners: list[ReusePortListener] = []
        #: Say how to reach and trust the proxy at start-up: the agent
        #: process does, its workers need not repeat it.
        self.announce = True

    def useMetricsPage(self, render: Callable[[], Deferred[bytes]]) -> None:
        """
        Answer C{GET /_agent/metrics} with what C{render} gives (a worker
        serves the page the agent composes).
        """
        self._gate.metricsPage = render

    def startService(self) -> None:
        if self.announce:
            self._announce()
        raise_file_limit()
        super().startService()
        self._restoreSignal = install_reload_signal(
            self._reactor, self._tls, also=self._reloaded
        )

    def _reloaded(self, ok: bool) -> None:
        if self.policyReload is not None:
            ok = self.policyReload() and ok
        self.metrics.reloads.labels("ok" if ok else "failed").inc()
        if ok:
            self.metrics.lastReload.set(self._reactor.seconds())
        for hook in self.onReload:
            hook()

    def _announce(self) -> None:
        config, certificate = self._config, self._tls.current_certificate
        log.info(
            "haven-agent serving Docker API from {docker} on {listen} (TLS, "
            "auth: {auth})",
            docker=config.docker,
            listen=", ".join(config.listen),
            auth=config.authMode,
        )
        log.info(
            "TLS certificate {path} ({origin}), SHA-256 fingerprint {fingerprint}",
            path=certificate.cert_path,
            origin="generated now" if certificate.generated else "loaded",
            fingerprint=certificate.fingerprint,
        )
        if config.passwordIsDefault and config.authMode != "cert":
            log.warn(
                "No password configured: the Haven default 'password' applies. "
                "Set --password, --password-file or dm_auth_adminPassword."
            )

    def stopService(self) -> Deferred[None]:
        if self._restoreSignal is not None:
            self._restoreSignal()
            self._restoreSignal = None
        stopping = super().stopService()
        stopping.addCallback(lambda _: self._gate.closeAll(self._config.shutdownGrace))
        return stopping


class Listening(MultiService):
    """
    One listener, whose failure to bind stops start-up with one line naming
    the address and the setting it came from, instead of a traceback.
    """

    def __init__(self, listener: IService, description: str, source: str) -> None:
        super().__init__()
        self._description = description
        self._source = source
        listener.setServiceParent(self)

    def privilegedStartService(self) -> None:
        try:
            super().privilegedStartService()
        except (CannotListenError, OSError, OverflowError) as e:
            # CannotListenError keeps the socket's error as socketError.
            cause = getattr(e, "socketError", e)
            reason = getattr(cause, "strerror", None) or str(cause)
            raise StartupError(
                f"{self._source}: cannot listen on {self._description}: {reason}"
            ) from None


def load_certificate(config: ProxyConfig) -> ServerCertificate:
    if config.tlsCert is not None and config.tlsKey is not None:
        return load_certificate_files(config.tlsCert, config.tlsKey)
    return load_or_create_self_signed(config.stateDir, config.serverNames)


def load_tls_material(config: ProxyConfig) -> tuple[ServerCertificate, bytes | None]:
    """
    The certificate and client CA as they are on disk now: read at start-up
    and again on every SIGHUP.
    """
    clientCA = config.tlsClientCA
    return load_certificate(config), (
        load_client_ca(clientCA) if clientCA is not None else None
    )


class PolicyReload:
    """
    Reads the policy file again on SIGHUP: checked whole first, then its
    users and rules swapped in; a file that does not check keeps the
    policy in force, and its problem (file:line) is logged.
    """

    def __init__(self, path: str, checker: BasicAuthChecker, rule: PolicyRule) -> None:
        self._path = path
        self._checker = checker
        self._rule = rule

    def __call__(self) -> bool:
        try:
            policy = load_policy(self._path)
            self._checker.replaceExtra(policy.users)
        except (PolicyError, ValueError) as e:
            log.error(
                "policy reload failed, the policy in force stays: {problem}",
                problem=str(e),
            )
            return False
        self._rule.replace(policy)
        log.info("reloaded the policy {path}", path=self._path)
        return True


def _timestamp(moment) -> float:
    return float(calendar.timegm(moment.utctimetuple()))


def earliest_expiry(pem: bytes) -> float | None:
    """
    When the first of the certificates in C{pem} expires, as a Unix time.
    """
    try:
        certificates = x509.load_pem_x509_certificates(pem)
    except ValueError:
        return None
    return min(_timestamp(c.not_valid_after_utc) for c in certificates)


def present_gauges(
    gate: GateFactory, tls: ReloadableServerOptions, throttle: FailureThrottle
) -> Callable[[ProxyMetrics], Deferred[None]]:
    """
    What sets the proxy's gauges of the present before a scrape.
    """

    def refresh(metrics: ProxyMetrics) -> Deferred[None]:
        states = dict.fromkeys(("unauthenticated", "http", "stream"), 0)
        for connection in gate.connections:
            states[connection.state] += 1
        for state, count in states.items():
            metrics.openConnections.labels(state).set(count)
        metrics.throttledSources.set(throttle.throttled())
        metrics.certificateExpiry.labels("server").set(
            _timestamp(tls.current_certificate.not_after)
        )
        clientCA = tls.client_ca_pem
        expiry = earliest_expiry(clientCA) if clientCA is not None else None
        if expiry is not None:
            metrics.certificateExpiry.labels("client_ca").set(expiry)
        asking = gate.probe.isUp()
        asking.addCallback(lambda up: metrics.dockerUp.set(1 if up else 0))
        return asking

    return refresh


def raise_file_limit() -> None:
    """
    Lift the soft limit on open files to the hard one: each proxied
    connection holds two descriptors, and the usual soft limit of 1024 would
    cap the agent near 500 connections, below its own limits.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft < hard:
        target = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 20)
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        except (ValueError, OSError):
            pass


def build_proxy_service(
    config: ProxyConfig,
    reactor,
    threads: ThreadPools,
    reusePort: list[ListenAddress] | None = None,
    registry: CollectorRegistry | None = None,
) -> ProxyService:
    """
    The proxy, listening as C{config.listen} says, or, with C{reusePort},
    on those addresses through SO_REUSEPORT sockets that other processes
    of the agent share. Passwords are checked in C{threads}' CPU pool; the
    caller makes the proxy a child of C{threads}, so that they outlive it.
    Its metrics go into C{registry} (a new one when not given).
    """
    tls = ReloadableServerOptions(lambda: load_tls_material(config))
    policy = None
    if config.policy is not None:
        try:
            policy = load_policy(config.policy)
        except PolicyError as e:
            raise StartupError(f"{config.sources.of('policy')} {e}") from None
    try:
        checker = BasicAuthChecker(
            config.user,
            config.password,
            threads.defer_to_cpu,
            readOnly=(
                (config.readOnlyUser, config.readOnlyPassword)
                if config.readOnlyPassword is not None
                else None
            ),
            extra=policy.users if policy is not None else None,
        )
    except ValueError as e:
        if policy is None:
            raise
        raise StartupError(
            f"{config.sources.of('policy')} {config.policy}: {e}"
        ) from None
    policyRule = None
    if policy is not None:
        inspect = None
        if any(p.scope is not None for p in policy.profiles.values()):
            from haven_agent.reporting.docker_api import DockerAPI

            inspect = DockerAPI(reactor, config.docker, 5.0).inspect
        policyRule = PolicyRule(policy, config.idleTimeout, inspect)
    if registry is None:
        registry = new_registry()
    users = [config.user]
    if config.readOnlyPassword is not None:
        users.append(config.readOnlyUser)
    if policy is not None:
        users.extend(policy.identities)
    metrics = ProxyMetrics(registry, users)
    throttle = FailureThrottle(reactor)
    terminal = TerminalAccess(
        parse_networks(" ".join(config.terminalFrom)),
        frozenset(config.terminalOrigins),
        (
            AttachTickets(bytes.fromhex(config.ticketKey))
            if config.attachTickets
            else None
        ),
        clock=reactor,
    )
    gate = GateFactory(
        checker=checker,
        connectDocker=docker_connector(reactor, config.docker),
        dockerDescription=config.docker,
        clock=reactor,
        firstHeadTimeout=config.firstHeadTimeout,
        nextHeadTimeout=config.nextHeadTimeout,
        authMode=config.authMode,
        throttle=throttle,
        idleTimeout=config.idleTimeout,
        metrics=metrics,
        rules=None if policyRule is None else (policyRule,),
        terms=None if policyRule is None else policyRule.terms,
        terminal=terminal,
        limits=ConnectionLimits(
            maxConnections=config.maxConnections,
            maxUnauthenticated=config.maxUnauthenticated,
            maxUnauthenticatedPerSource=config.maxUnauthenticatedPerSource,
            maxPerUser=(
                config.maxConnectionsPerUser
                if config.maxConnectionsPerUser is not None
                else max(1, config.maxConnections // 2)
            ),
        ),
    )
    metrics.refreshers.append(present_gauges(gate, tls, throttle))
    page = MetricsPage(registry, threads.defer_to_cpu, metrics.refresh)
    gate.metricsPage = page.render
    service = ProxyService(config, tls, gate, reactor, metrics, page)
    if policyRule is not None:
        service.policyReload = PolicyReload(config.policy, checker, policyRule)
    CertificateWatch(tls, reactor).setServiceParent(service)
    wrapped = serve_tls(
        tls.current_context, gate, clock=reactor, helloTimeout=config.helloTimeout
    )
    source = config.sources.of("listen")
    if reusePort is None:
        for description in config.listen:
            listener = strports.service(description, wrapped, reactor=reactor)
            Listening(listener, description, source).setServiceParent(service)
    else:
        for description, address in zip(config.listen, reusePort, strict=True):
            shared = ReusePortListener(address, wrapped, reactor)
            Listening(shared, description, source).setServiceParent(service)
            service.reusePortListeners.append(shared)
    if is_bcrypt_hash(config.password):
        log.info("password is a bcrypt hash; each distinct credential is checked once")
    return service
