# -*- test-case-name: tests.tls.test_reload -*-
"""
The TLS material's life after start-up: reloading it, watching it expire,
and telling who a client certificate belongs to.

Certificates expire and get rotated, and restarting the agent to pick up a
new one would cut every open `docker attach`, `logs -f` and `exec` stream.
So the listener does not hold one fixed set of TLS options but a
L{ReloadableServerOptions}, which builds each new connection from whatever
certificate, key and client CA it loaded last.  On C{SIGHUP}
(L{install_reload_signal}) it reads them again with the same loader used at
start-up; established connections keep the OpenSSL connection, and so the
certificate, they were made with.  A reload that fails (a missing file, a
key that does not match yet because the operator is half-way through
copying) keeps serving the old material and says which file is wrong.

L{CertificateWatch} warns well before the certificate expires, because an
expired agent certificate locks the Haven master and every docker client
out of the node at once.  L{client_identity} names the holder of a verified
client certificate for the audit log when mutual TLS is on.

Nothing here touches the reactor at import time: the reactor and clock are
passed in.
"""

from __future__ import annotations

import datetime
import signal
import ssl
from collections.abc import Callable
from typing import Any

from attrs import define, field, frozen
from cryptography import x509
from cryptography.x509.oid import NameOID
from twisted.application.service import Service
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

from haven_agent.tls.certificates import (
    CertificateError,
    ServerCertificate,
    server_context,
)

__all__ = [
    "CHECK_INTERVAL",
    "WARN_DAYS",
    "CertificateWatch",
    "Loader",
    "ReloadableServerOptions",
    "client_identity",
    "expiry_warning",
    "install_reload_signal",
]

log = Logger()

# Loads the server certificate and, when mutual TLS is on, the PEM bundle of
# client CAs; raises CertificateError naming the file at fault.
Loader = Callable[[], tuple[ServerCertificate, bytes | None]]

WARN_DAYS = 30
CHECK_INTERVAL = 24 * 60 * 60.0


@frozen
class _Material:
    """
    One consistent set of TLS material: the certificate, the client CA
    bundle it was loaded with, and the TLS context built from both.
    """

    certificate: ServerCertificate
    client_ca_pem: bytes | None = field(repr=False)
    context: ssl.SSLContext = field(repr=False)


def _build(load: Loader) -> _Material:
    """
    Load and build the TLS context now: a problem must surface here, not in
    the handshake of the next client.
    """
    certificate, client_ca_pem = load()
    try:
        context = server_context(certificate, client_ca_pem)
    except (ssl.SSLError, OSError) as e:
        raise CertificateError(
            f"TLS certificate {certificate.cert_path} and key "
            f"{certificate.key_path} are not usable by OpenSSL: {e}"
        ) from e
    return _Material(certificate, client_ca_pem, context)


@define(eq=False)
class ReloadableServerOptions:
    """
    TLS server options whose certificate, key and client CA can be replaced
    while serving; give its L{current_context} to
    L{haven_agent.tls.transport.serve_tls}.

    Construction loads the material once and raises L{CertificateError} if it
    cannot, so a bad file still stops start-up.  After that, L{reload} never
    raises.  It runs on the reactor thread, as does every new connection's
    L{current_context}, and swaps one reference to a consistent set of
    material, so a new connection gets either all of the old material or
    all of the new.

    @ivar _load: reads the certificate and the optional client CA bundle from
        disk, the same way at start-up and on every reload.
    """

    _load: Loader
    _current: _Material = field(init=False)

    def __attrs_post_init__(self) -> None:
        self._current = _build(self._load)

    @property
    def current_certificate(self) -> ServerCertificate:
        """The certificate new connections are served with."""
        return self._current.certificate

    def current_context(self) -> ssl.SSLContext:
        """
        The TLS context of a new connection; the connection keeps it, so a
        later reload leaves established connections alone.
        """
        return self._current.context

    @property
    def client_ca_pem(self) -> bytes | None:
        """The client CA bundle new connections are verified with, if any."""
        return self._current.client_ca_pem

    def reload(self) -> bool:
        """
        Load the material again and use it for new connections.

        @return: C{True} when the new material is in use; C{False} when it
            could not be loaded, in which case the old material stays in use
            and the reason, naming the file, is logged.
        """
        old = self._current.certificate
        try:
            material = _build(self._load)
        except CertificateError as e:
            log.error(
                "TLS reload failed, still serving certificate {path} "
                "(SHA-256 fingerprint {fingerprint}): {error}",
                path=old.cert_path,
                fingerprint=old.fingerprint,
                error=str(e),
            )
            return False
        except Exception:
            log.failure(
                "TLS reload failed unexpectedly, still serving certificate {path} "
                "(SHA-256 fingerprint {fingerprint})",
                path=old.cert_path,
                fingerprint=old.fingerprint,
            )
            return False
        self._current = material
        new = material.certificate
        log.info(
            "reloaded TLS certificate {path} ({change}), SHA-256 fingerprint "
            "{fingerprint}, valid until {not_after}{client_ca}",
            path=new.cert_path,
            change="unchanged" if new.fingerprint == old.fingerprint else "new",
            fingerprint=new.fingerprint,
            not_after=_date(new.not_after),
            client_ca=(
                "; client certificates verified against the reloaded client CA"
                if material.client_ca_pem is not None
                else ""
            ),
        )
        return True


def _utc(moment: datetime.datetime) -> datetime.datetime:
    """C{moment} as an aware UTC time; a naive one is taken to be UTC."""
    if moment.tzinfo is None:
        return moment.replace(tzinfo=datetime.UTC)
    return moment.astimezone(datetime.UTC)


def _date(moment: datetime.datetime) -> str:
    return _utc(moment).strftime("%Y-%m-%d %H:%M:%S UTC")


def _renewal_advice(certificate: ServerCertificate) -> str:
    if certificate.generated:
        return (
            f"delete it and {certificate.key_path}, then send SIGHUP to have a "
            "new self-signed certificate generated (clients pinning the old "
            "fingerprint must be given the new one)"
        )
    return (
        f"install the renewed certificate and key as {certificate.cert_path} "
        f"and {certificate.key_path}, then send SIGHUP"
    )


def expiry_warning(
    certificate: ServerCertificate, now: datetime.datetime, days: int = WARN_DAYS
) -> str | None:
    """
    The operator's warning when C{certificate} expires within C{days} of
    C{now} or has expired, naming its file, the date and its fingerprint, and
    how to renew it; C{None} while it has longer to live.

    @param now: the current time; a naive value is taken to be UTC.
    """
    remaining = _utc(certificate.not_after) - _utc(now)
    if remaining > datetime.timedelta(days=days):
        return None
    when = _date(certificate.not_after)
    if remaining <= datetime.timedelta(0):
        status = f"expired on {when}: clients refuse it"
    elif remaining < datetime.timedelta(days=1):
        status = f"expires on {when}, in less than a day"
    else:
        count = remaining.days
        status = f"expires on {when}, in {count} day{'' if count == 1 else 's'}"
    return (
        f"TLS certificate {certificate.cert_path} {status} "
        f"(SHA-256 fingerprint {certificate.fingerprint}); "
        f"{_renewal_advice(certificate)}"
    )


def _now(clock: IReactorTime) -> datetime.datetime:
    return datetime.datetime.fromtimestamp(clock.seconds(), datetime.UTC)


def _warn_if_expiring(
    certificate: ServerCertificate, clock: IReactorTime, days: int
) -> str | None:
    warning = expiry_warning(certificate, _now(clock), days)
    if warning is not None:
        # Not a field called "warning" (nor "message"): Twisted's legacy log
        # bridge gives those keys a meaning of their own.
        log.warn(
            "{expiry}",
            expiry=warning,
            path=certificate.cert_path,
            not_after=_date(certificate.not_after),
            fingerprint=certificate.fingerprint,
        )
    return warning


@define(eq=False)
class CertificateWatch(Service):
    """
    Warns at start-up, and again every C{interval} seconds, while the served
    certificate expires within C{days}.  It reads the certificate from the
    options on every check, so a reloaded certificate is the one judged.

    @ivar _clock: schedules the checks and tells the time (the reactor, or a
        C{Clock} in tests).
    """

    _options: ReloadableServerOptions
    _clock: IReactorTime
    days: int = WARN_DAYS
    interval: float = CHECK_INTERVAL
    _loop: LoopingCall | None = field(init=False, default=None)

    def startService(self) -> None:
        Service.startService(self)
        loop = self._loop = LoopingCall(self.check)
        loop.clock = self._clock
        loop.start(self.interval, now=True).addErrback(
            lambda failure: log.failure("the certificate expiry check died", failure)
        )

    def stopService(self) -> None:
        Service.stopService(self)
        loop, self._loop = self._loop, None
        if loop is not None and loop.running:
            loop.stop()

    def check(self) -> str | None:
        """
        Log the expiry warning, if any, and return it.  Never raises: the
        C{LoopingCall} would stop for good.
        """
        try:
            return _warn_if_expiring(
                self._options.current_certificate, self._clock, self.days
            )
        except Exception:
            log.failure("checking the TLS certificate's expiry failed")
            return None


def install_reload_signal(
    reactor: Any,
    options: ReloadableServerOptions,
    signal_module: Any = signal,
    also: Callable[[bool], None] | None = None,
) -> Callable[[], None]:
    """
    Reload C{options} on C{SIGHUP}.

    The handler only asks the reactor to reload (C{callFromThread}, which is
    what Twisted's own C{SIGINT} handler does): a signal handler interrupts
    arbitrary code, even the reactor in the middle of building a connection,
    so neither the reload nor its logging may run inside it.  After a
    successful reload the new certificate's expiry is checked at once.

    Must be called from the main thread (Python installs signal handlers
    only there), for instance in C{startService}.

    @param reactor: provides C{callFromThread} and C{seconds}.
    @param signal_module: the L{signal} module, or a stand-in for tests.
    @param also: called after each reload with whether it succeeded (the
        agent counts it, and passes the signal on to its worker processes).
    @return: a function restoring the previous C{SIGHUP} handler; calling it
        more than once is harmless.
    """
    sighup = getattr(signal_module, "SIGHUP", None)
    if sighup is None:
        log.info(
            "no SIGHUP on this platform: "
            "restart the agent to load a new TLS certificate"
        )
        return lambda: None

    def reload_now() -> None:
        log.info("SIGHUP: reloading the TLS certificate, key and client CA")
        reloaded = False
        try:
            reloaded = options.reload()
            if reloaded:
                _warn_if_expiring(options.current_certificate, reactor, WARN_DAYS)
        except Exception:
            log.failure("reloading the TLS certificate on SIGHUP failed")
        if also is not None:
            also(reloaded)

    def on_sighup(signum: int, frame: object) -> None:
        reactor.callFromThread(reload_now)

    previous = signal_module.signal(sighup, on_sighup)
    restored = False

    def restore() -> None:
        nonlocal restored
        if restored:
            return
        restored = True
        # None: the previous handler was not installed from Python.
        signal_module.signal(
            sighup, signal_module.SIG_DFL if previous is None else previous
        )

    return restore


def client_identity(transport: Any) -> str | None:
    """
    Who the client's verified certificate names, for the audit log: its
    subject's common name, or its first DNS subject alternative name when the
    subject has no common name; C{None} without a client certificate.

    When the subject holds several common names the last one counts, as for
    Go's C{Subject.CommonName}, which is what dockerd's authorization plugins
    see as the user of a C{--tlsverify} connection.

    The server only asks for a client certificate when a client CA is
    configured, and OpenSSL then fails any handshake whose certificate does
    not verify, so a certificate present after the handshake is a verified
    one.

    @param transport: the TLS transport
        (L{haven_agent.tls.transport.TLSServerConnection}), after its
        handshake.
    """
    get_peer_certificate = getattr(transport, "getPeerCertificate", None)
    if get_peer_certificate is None:
        return None
    certificate = get_peer_certificate()
    if certificate is None:
        return None
    try:
        common_names = [
            attribute.value
            for attribute in certificate.subject.get_attributes_for_oid(
                NameOID.COMMON_NAME
            )
            if isinstance(attribute.value, str) and attribute.value
        ]
        if common_names:
            return common_names[-1]
        names = certificate.extensions.get_extension_for_class(
            x509.SubjectAlternativeName
        ).value.get_values_for_type(x509.DNSName)
    except (x509.ExtensionNotFound, ValueError):
        return None
    return names[0] if names else None
