# -*- test-case-name: tests.proxy.test_auth -*-
"""
Who may pass the gate: HTTP Basic credentials against the configured ones.

The configured password may be plain text or a bcrypt hash (`$2a$`, `$2b$`,
`$2y$`), which is what users of Haven's Java agent already have in their
start strings. bcrypt at cost 12 takes a quarter of a second of CPU, and the
docker CLI sends its credentials on every request, so each distinct presented
credential is verified once, in a thread, and its verdict remembered (keyed
by a SHA-256 of the header, never the password itself). Plain passwords are
compared in constant time with `hmac.compare_digest`.
"""

from __future__ import annotations

import binascii
import hashlib
import hmac
from collections import OrderedDict
from collections.abc import Callable, Mapping
from typing import Any

import bcrypt
from attrs import field, frozen
from twisted.internet.defer import Deferred, succeed

BCRYPT_PREFIXES = ("$2a$", "$2b$", "$2y$")


def parse_basic(authorization: bytes | None) -> tuple[bytes, bytes] | None:
    """
    The (user, password) of a C{Basic} Authorization value, or None.
    """
    if not authorization:
        return None
    scheme, _, encoded = authorization.strip().partition(b" ")
    if scheme.lower() != b"basic":
        return None
    try:
        decoded = binascii.a2b_base64(encoded.strip(), strict_mode=True)
    except (binascii.Error, ValueError):
        return None
    user, colon, password = decoded.partition(b":")
    if not colon:
        return None
    return user, password


def is_bcrypt_hash(secret: str) -> bool:
    return secret.startswith(BCRYPT_PREFIXES) and len(secret) == 60


@frozen
class Account:
    """
    One user name and its secret (plain, or a bcrypt hash).
    """

    user: bytes
    secret: bytes = field(repr=False)
    hashed: bool
    readOnly: bool = False

    @classmethod
    def of(cls, user: str, secret: str, readOnly: bool = False) -> Account:
        return cls(
            user.encode("utf-8"),
            secret.encode("utf-8"),
            is_bcrypt_hash(secret),
            readOnly,
        )


class NotKnownYet:
    """
    The type of L{NOT_KNOWN_YET}.
    """

    def __repr__(self) -> str:
        return "NOT_KNOWN_YET"


#: What L{BasicAuthChecker.checkNow} answers when bcrypt must run first.
NOT_KNOWN_YET = NotKnownYet()


class BasicAuthChecker:
    """
    Decides whether an Authorization header carries an account's credentials.

    There is the agent's account and, optionally, a read-only one, which the
    gate allows only GET and HEAD requests.

    @param runInThread: runs a blocking call off the reactor thread and
        returns a Deferred of its result (C{deferToThread}, or a synchronous
        stand-in in tests).
    @param readOnly: the read-only account's (user, secret), if any.
    """

    def __init__(
        self,
        user: str,
        secret: str,
        runInThread: Callable[..., Deferred[Any]],
        cacheSize: int = 1024,
        readOnly: tuple[str, str] | None = None,
        extra: Mapping[str, str] | None = None,
    ) -> None:
        self._own = [Account.of(user, secret)]
        if readOnly is not None:
            readOnlyUser, readOnlySecret = readOnly
            if readOnlyUser == user:
                raise ValueError("the read-only user must differ from the user")
            self._own.append(Account.of(readOnlyUser, readOnlySecret, True))
        self._accounts = list(self._own)
        self._runInThread = runInThread
        self._verdicts: OrderedDict[bytes, bool] = OrderedDict()
        self.replaceExtra(extra or {})
        self._pending: dict[bytes, list[Deferred[str | None]]] = {}
        self._cacheSize = cacheSize
        self.bcryptRuns = 0

    def replaceExtra(self, extra: Mapping[str, str]) -> None:
        """
        Use C{extra} (name -> secret: the policy file's users) besides the
        options' accounts, from now on; remembered bcrypt verdicts go, so a
        removed user's cached credential no longer counts.

        @raise ValueError: an extra user has the name of an options' one.
        """
        taken = {account.user.decode("utf-8") for account in self._own}
        clash = sorted(taken & set(extra))
        if clash:
            raise ValueError(f"user {clash[0]!r} is already given by the options")
        self._accounts = self._own + [Account.of(n, s) for n, s in extra.items()]
        self._verdicts.clear()

    def isReadOnly(self, name: str) -> bool:
        """
        Is C{name} (as returned by L{check}) the read-only account?
        """
        return any(
            account.readOnly and account.user == name.encode("utf-8")
            for account in self._accounts
        )

    def _account(self, user: bytes) -> Account | None:
        found = None
        for account in self._accounts:
            if hmac.compare_digest(user, account.user):
                found = account
        return found

    def checkNow(self, authorization: bytes | None) -> str | None | NotKnownYet:
        """
        The verdict of L{check} when it is known at once, without a
        Deferred: the user name when the credentials are right, None when
        they are not, or L{NOT_KNOWN_YET} when a bcrypt hash must be
        verified first (then call L{check}).

        The docker CLI sends its credentials on every request and nearly
        every verdict is known at once (plain password, or a remembered
        bcrypt verdict): the gate answers those without the cost of a
        Deferred and its callbacks.
        """
        credentials = parse_basic(authorization)
        if credentials is None:
            return None
        user, password = credentials
        account = self._account(user)
        if account is None:
            return None
        if not account.hashed:
            return self._name(account, hmac.compare_digest(password, account.secret))
        key = hashlib.sha256(user + b"\0" + password).digest()
        verdict = self._verdicts.get(key)
        if verdict is None:
            return NOT_KNOWN_YET
        self._verdicts.move_to_end(key)
        return self._name(account, verdict)

    def check(self, authorization: bytes | None) -> Deferred[str | None]:
        """
        Fire with the user name when the credentials are right, else None.
        """
        known = self.checkNow(authorization)
        if known is not NOT_KNOWN_YET:
            return succeed(known)
        # checkNow found a well-formed credential of a hashed account whose
        # verdict is not remembered.
        user, password = parse_basic(authorization)  # type: ignore[misc]
        account = self._account(user)
        key = hashlib.sha256(user + b"\0" + password).digest()
        waiting: Deferred[str | None] = Deferred()
        if key in self._pending:
            self._pending[key].append(waiting)
            return waiting
        self._pending[key] = [waiting]
        self.bcryptRuns += 1
        verifying = self._runInThread(self._verify, account, password)
        verifying.addErrback(lambda failure: False)
        verifying.addCallback(self._remember, key, account)
        return waiting

    @staticmethod
    def _verify(account: Account, password: bytes) -> bool:
        try:
            # bcrypt reads at most 72 bytes; bcrypt >= 5 refuses longer input
            # instead of truncating it as the hash's creator did.
            return bcrypt.checkpw(password[:72], account.secret)
        except ValueError:
            return False

    def _remember(self, verdict: bool, key: bytes, account: Account) -> None:
        # An account replaced while its check ran (a reload rotated the
        # password) no longer counts, and its verdict is not kept.
        current = account in self._accounts
        if current:
            self._verdicts[key] = verdict
            while len(self._verdicts) > self._cacheSize:
                self._verdicts.popitem(last=False)
        for waiting in self._pending.pop(key):
            waiting.callback(self._name(account, verdict and current))

    @staticmethod
    def _name(account: Account, ok: bool) -> str | None:
        return account.user.decode("utf-8") if ok else None
