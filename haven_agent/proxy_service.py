# -*- test-case-name: tests.test_proxy_service -*-
"""
Assembling the Docker API proxy: certificate, TLS, gate, listeners.

Certificates are loaded (or generated) while the service is built, so a bad
key stops `twistd` before it daemonises; each listener is a strports service
so a port that cannot be bound fails start-up instead of being logged and
forgotten.
"""

from __future__ import annotations

from twisted.application import strports
from twisted.application.service import MultiService
from twisted.internet.endpoints import clientFromString
from twisted.internet.protocol import Factory
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger

from haven_agent.auth import BasicAuthChecker, is_bcrypt_hash
from haven_agent.certificates import (
    ServerCertificate,
    certificate_options,
    load_certificate_files,
    load_or_create_self_signed,
)
from haven_agent.config import ProxyConfig
from haven_agent.gate import GateFactory
from haven_agent.halfclose_tls import wrapWithHalfCloseableTLS

log = Logger()


class ProxyService(MultiService):
    """
    The TLS listeners of the proxy; says at start-up how to reach and trust it.
    """

    def __init__(self, config: ProxyConfig, certificate: ServerCertificate) -> None:
        super().__init__()
        self._config = config
        self._certificate = certificate

    def startService(self) -> None:
        config, certificate = self._config, self._certificate
        log.info(
            "haven-agent serving Docker API from {docker} on {listen} (TLS)",
            docker=config.docker,
            listen=", ".join(config.listen),
        )
        log.info(
            "TLS certificate {path} ({origin}), SHA-256 fingerprint {fingerprint}",
            path=certificate.cert_path,
            origin="generated now" if certificate.generated else "loaded",
            fingerprint=certificate.fingerprint,
        )
        if config.passwordIsDefault:
            log.warn(
                "No password configured: the Haven default 'password' applies. "
                "Set --password, --password-file or dm_auth_adminPassword."
            )
        super().startService()


class _ForOne(Factory):
    """
    Connects one given protocol, without a log line per connection.
    """

    noisy = False

    def __init__(self, protocol) -> None:
        self._protocol = protocol

    def buildProtocol(self, addr):
        return self._protocol


def load_certificate(config: ProxyConfig) -> ServerCertificate:
    if config.tlsCert is not None and config.tlsKey is not None:
        return load_certificate_files(config.tlsCert, config.tlsKey)
    return load_or_create_self_signed(config.stateDir, config.serverNames)


def build_proxy_service(config: ProxyConfig, reactor) -> ProxyService:
    certificate = load_certificate(config)
    endpoint = clientFromString(reactor, config.docker)
    checker = BasicAuthChecker(
        config.user,
        config.password,
        lambda f, *args: deferToThreadPool(reactor, reactor.getThreadPool(), f, *args),
    )
    gate = GateFactory(
        checker=checker,
        connectDocker=lambda protocol: endpoint.connect(_ForOne(protocol)),
        dockerDescription=config.docker,
        clock=reactor,
        firstHeadTimeout=config.firstHeadTimeout,
        nextHeadTimeout=config.nextHeadTimeout,
    )
    tls = wrapWithHalfCloseableTLS(
        certificate_options(certificate), gate, clock=reactor
    )
    service = ProxyService(config, certificate)
    for description in config.listen:
        strports.service(description, tls, reactor=reactor).setServiceParent(service)
    if is_bcrypt_hash(config.password):
        log.info("password is a bcrypt hash; each distinct credential is checked once")
    return service
