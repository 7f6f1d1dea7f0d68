"""
Tests for L{haven_agent.proxy.auth}: Basic parsing, plain and bcrypt checking and
the bcrypt verdict cache.
"""

from base64 import b64encode

import bcrypt
from twisted.internet.defer import Deferred, succeed
from twisted.trial.unittest import SynchronousTestCase

from haven_agent.proxy.auth import BasicAuthChecker, parse_basic


def basic(user: bytes, password: bytes) -> bytes:
    return b"Basic " + b64encode(user + b":" + password)


class ParseTests(SynchronousTestCase):
    def test_valid(self) -> None:
        self.assertEqual(parse_basic(basic(b"admin", b"p:w")), (b"admin", b"p:w"))
        self.assertEqual(parse_basic(b"basic  " + b64encode(b"a:b")), (b"a", b"b"))

    def test_invalid(self) -> None:
        for value in [
            None,
            b"",
            b"Bearer abc",
            b"Basic !!!",
            b"Basic " + b64encode(b"nocolon"),
            b"Basic",
        ]:
            self.assertIsNone(parse_basic(value), value)


class PlainCheckerTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.checker = BasicAuthChecker("admin", "s3cret", self.fail)

    def test_right(self) -> None:
        self.assertEqual(
            self.successResultOf(self.checker.check(basic(b"admin", b"s3cret"))),
            "admin",
        )

    def test_wrong(self) -> None:
        for header in [
            basic(b"admin", b"s3cre"),
            basic(b"admin", b"s3cret "),
            basic(b"root", b"s3cret"),
            None,
        ]:
            self.assertIsNone(self.successResultOf(self.checker.check(header)))


class BcryptCheckerTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.calls: list[Deferred] = []
        # The Java agent's default: "password" hashed with $2a$ at a low cost.
        hashed = bcrypt.hashpw(b"password", bcrypt.gensalt(4, prefix=b"2a")).decode()
        self.checker = BasicAuthChecker("admin", hashed, self.runLater)

    def runLater(self, f, *args):
        d = Deferred()
        self.calls.append((d, f, args))
        return d

    def runAll(self) -> None:
        while self.calls:
            d, f, args = self.calls.pop(0)
            d.callback(f(*args))

    def test_verifiedOnceThenCached(self) -> None:
        right = basic(b"admin", b"password")
        first = self.checker.check(right)
        second = self.checker.check(right)
        self.assertNoResult(first)
        self.assertEqual(len(self.calls), 1, "one bcrypt run for identical checks")
        self.runAll()
        self.assertEqual(self.successResultOf(first), "admin")
        self.assertEqual(self.successResultOf(second), "admin")
        third = self.checker.check(right)
        self.assertEqual(self.successResultOf(third), "admin")
        self.assertEqual(self.checker.bcryptRuns, 1)

    def test_wrongCachedToo(self) -> None:
        wrong = basic(b"admin", b"guess")
        d = self.checker.check(wrong)
        self.runAll()
        self.assertIsNone(self.successResultOf(d))
        self.assertIsNone(self.successResultOf(self.checker.check(wrong)))
        self.assertEqual(self.checker.bcryptRuns, 1)

    def test_wrongUserRightPassword(self) -> None:
        d = self.checker.check(basic(b"root", b"password"))
        self.runAll()
        self.assertIsNone(self.successResultOf(d))

    def test_cacheBounded(self) -> None:
        checker = BasicAuthChecker(
            "admin",
            bcrypt.hashpw(b"pw", bcrypt.gensalt(4)).decode(),
            lambda f, *a: succeed(f(*a)),
            cacheSize=3,
        )
        for i in range(10):
            checker.check(basic(b"admin", b"x%d" % i))
        self.assertEqual(len(checker._verdicts), 3)
        checker.check(basic(b"admin", b"x0"))
        self.assertEqual(checker.bcryptRuns, 11, "evicted verdicts are re-verified")

    def test_longPasswordTruncatedLikeBcrypt(self) -> None:
        long = b"p" * 100
        checker = BasicAuthChecker(
            "admin",
            bcrypt.hashpw(long[:72], bcrypt.gensalt(4)).decode(),
            lambda f, *a: succeed(f(*a)),
        )
        self.assertEqual(
            self.successResultOf(checker.check(basic(b"admin", long))), "admin"
        )

    def test_threadFailureIsRefusal(self) -> None:
        checker = BasicAuthChecker(
            "admin",
            bcrypt.hashpw(b"pw", bcrypt.gensalt(4)).decode(),
            lambda f, *a: __import__("twisted.internet.defer").internet.defer.fail(
                RuntimeError("pool gone")
            ),
        )
        self.assertIsNone(self.successResultOf(checker.check(basic(b"admin", b"pw"))))


class ReadOnlyAccountTests(SynchronousTestCase):
    def setUp(self) -> None:
        hashed = bcrypt.hashpw(b"look", bcrypt.gensalt(4)).decode()
        self.checker = BasicAuthChecker(
            "admin", "pw", lambda f, *a: succeed(f(*a)), readOnly=("viewer", hashed)
        )

    def test_bothAccounts(self) -> None:
        admin = self.successResultOf(self.checker.check(basic(b"admin", b"pw")))
        viewer = self.successResultOf(self.checker.check(basic(b"viewer", b"look")))
        self.assertEqual((admin, viewer), ("admin", "viewer"))
        self.assertFalse(self.checker.isReadOnly(admin))
        self.assertTrue(self.checker.isReadOnly(viewer))

    def test_passwordsDoNotCross(self) -> None:
        for header in [basic(b"viewer", b"pw"), basic(b"admin", b"look")]:
            self.assertIsNone(self.successResultOf(self.checker.check(header)))

    def test_sameUserRefused(self) -> None:
        with self.assertRaises(ValueError):
            BasicAuthChecker("admin", "a", self.fail, readOnly=("admin", "b"))
