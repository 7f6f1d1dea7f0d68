"""
Tests for L{haven_agent.logs.json_lines}: one JSON object per event and line, and
twistd picking the observer up from the application.
"""

from __future__ import annotations

import io
import json
import re
from types import SimpleNamespace

import twisted.logger
from twisted.application import app, service
from twisted.logger import (
    ILogObserver,
    LegacyLogObserverWrapper,
    LogBeginner,
    Logger,
    LogLevel,
    LogPublisher,
)
from twisted.python import log as legacy
from twisted.python.failure import Failure
from twisted.scripts._twistd_unix import UnixAppLogger
from twisted.trial.unittest import SynchronousTestCase

from haven_agent.logs.json_lines import json_lines_observer, use_json_logging

RFC3339_MS = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z\Z")


def strict_loads(line: str):
    """
    C{json.loads} refusing the NaN and Infinity that JSON does not have.
    """

    def refuse(constant):
        raise ValueError(f"not JSON: {constant}")

    return json.loads(line, parse_constant=refuse)


class FlushCountingIO(io.StringIO):
    flushes = 0

    def flush(self) -> None:
        self.flushes += 1
        super().flush()


class Broken:
    """
    Neither C{str} nor C{repr} works.
    """

    def __str__(self) -> str:
        raise RuntimeError("no str")

    def __repr__(self) -> str:
        raise RuntimeError("no repr")


class OnlyRepr:
    def __str__(self) -> str:
        raise RuntimeError("no str")

    def __repr__(self) -> str:
        return "<OnlyRepr>"


class Capture:
    """
    A JSON observer over a StringIO, and a logger publishing to it.
    """

    def __init__(self, namespace: str = "haven_agent.requests") -> None:
        self.out = FlushCountingIO()
        self.observer = json_lines_observer(self.out)
        self.publisher = LogPublisher(self.observer)
        self.log = Logger(namespace=namespace, observer=self.publisher)

    def lines(self) -> list[dict]:
        text = self.out.getvalue()
        assert text.endswith("\n") or not text, text
        return [strict_loads(line) for line in text.splitlines()]


class LineTests(SynchronousTestCase):
    def test_fieldsOfAnAccessLogEvent(self) -> None:
        c = Capture()
        c.log.info(
            "{peer} {user} {method} {path}: {outcome}",
            peer="10.0.0.1:4711",
            user="admin",
            method="GET",
            path="/info",
            outcome="done",
            bytesIn=120,
            duration=0.25,
            hijacked=False,
        )
        [line] = c.lines()
        self.assertEqual(
            list(line),
            ["time", "level", "namespace", "text"]
            + sorted(
                [
                    "peer",
                    "user",
                    "method",
                    "path",
                    "outcome",
                    "bytesIn",
                    "duration",
                    "hijacked",
                ]
            ),
        )
        self.assertRegex(line["time"], RFC3339_MS)
        self.assertEqual(line["level"], "info")
        self.assertEqual(line["namespace"], "haven_agent.requests")
        self.assertEqual(line["text"], "10.0.0.1:4711 admin GET /info: done")
        self.assertEqual(line["bytesIn"], 120)
        self.assertEqual(line["duration"], 0.25)
        self.assertIs(line["hijacked"], False)

    def test_time(self) -> None:
        c = Capture()
        c.observer({"log_time": 1714564800.1239, "log_format": "x"})
        c.observer({"log_time": 0.5, "log_format": "x"})
        self.assertEqual(
            [line["time"] for line in c.lines()],
            ["2024-05-01T12:00:00.123Z", "1970-01-01T00:00:00.500Z"],
        )

    def test_missingOrBadTimeIsNow(self) -> None:
        c = Capture()
        c.observer({"log_format": "no time"})
        c.observer({"log_format": "bad time", "log_time": "yesterday"})
        c.observer({"log_format": "far time", "log_time": 1e300})
        for line in c.lines():
            self.assertRegex(line["time"], RFC3339_MS)
            self.assertGreaterEqual(line["time"], "2024")

    def test_levels(self) -> None:
        c = Capture()
        c.log.debug("d")
        c.log.info("i")
        c.log.warn("w")
        c.log.error("e")
        c.log.critical("c")
        self.assertEqual(
            [line["level"] for line in c.lines()],
            ["debug", "info", "warn", "error", "critical"],
        )

    def test_failure(self) -> None:
        c = Capture()
        try:
            raise ZeroDivisionError("division by zero")
        except ZeroDivisionError:
            c.log.failure("unexpected error in the gate for {peer}", peer="p:1")
        [line] = c.lines()
        self.assertEqual(line["level"], "critical")
        self.assertEqual(line["text"], "unexpected error in the gate for p:1")
        self.assertIn("Traceback", line["failure"])
        self.assertIn("ZeroDivisionError", line["failure"])
        self.assertEqual(c.out.getvalue().count("\n"), 1, "one line, escaped")

    def test_unserialisableValues(self) -> None:
        c = Capture()
        c.log.info(
            "odd",
            raw=b"\xff\x00GET",
            thing=object(),
            nested={1: [b"a", {"x": object()}], "set": {3}},
            nan=float("nan"),
            infinity=float("inf"),
            onlyRepr=OnlyRepr(),
            broken=Broken(),
            severity=LogLevel.warn,
            big=10**30,
        )
        [line] = c.lines()
        self.assertEqual(line["raw"], "\xff\x00GET")
        self.assertTrue(line["thing"].startswith("<object object at "))
        self.assertEqual(line["nested"]["1"][0], "a")
        self.assertTrue(line["nested"]["1"][1]["x"].startswith("<object"))
        self.assertEqual(line["nested"]["set"], [3])
        self.assertEqual((line["nan"], line["infinity"]), ("nan", "inf"))
        self.assertEqual(line["onlyRepr"], "<OnlyRepr>")
        self.assertEqual(line["broken"], "<unrepresentable Broken>")
        self.assertEqual(line["severity"], "<LogLevel=warn>")
        self.assertEqual(line["big"], 10**30)

    def test_deepNestingCut(self) -> None:
        c = Capture()
        deep: list = []
        deep.append(deep)
        c.log.info("loop", deep=deep)
        [line] = c.lines()
        self.assertIn("deep", line)

    def test_unformattableMessage(self) -> None:
        c = Capture()
        c.log.info("{missing} {0}", present=1)
        [line] = c.lines()
        self.assertIn("Unable to format event", line["text"])
        self.assertEqual(line["present"], 1)

    def test_privateAndLogKeysLeftOut(self) -> None:
        c = Capture()
        c.observer(
            {
                "log_format": "x",
                "log_time": 1.0,
                "log_level": LogLevel.info,
                "log_namespace": "n",
                "log_source": object(),
                "log_logger": object(),
                "_private": "secret",
                1: "not a name",
                "kept": "yes",
            }
        )
        [line] = c.lines()
        self.assertEqual(list(line), ["time", "level", "namespace", "text", "kept"])

    def test_collidingFieldsRenamed(self) -> None:
        c = Capture()
        c.observer(
            {
                "log_format": "{time} {text}",
                "log_time": 5.0,
                "log_level": LogLevel.info,
                "log_namespace": "haven_agent.requests",
                "time": "noon",
                "level": "high",
                "namespace": "ns",
                "text": "t",
                "failure": "none",
            }
        )
        [line] = c.lines()
        self.assertRegex(line["time"], RFC3339_MS)
        self.assertEqual(line["level"], "info")
        self.assertEqual(line["namespace"], "haven_agent.requests")
        self.assertEqual(line["text"], "noon t")
        self.assertNotIn("failure", line)
        self.assertEqual(
            {key: value for key, value in line.items() if key.startswith("field_")},
            {
                "field_time": "noon",
                "field_level": "high",
                "field_namespace": "ns",
                "field_text": "t",
                "field_failure": "none",
            },
        )

    def test_oneLinePerEvent(self) -> None:
        c = Capture()
        for n in range(5):
            c.log.info("line {n}\nwith a newline\r\u2028", n=n)
        self.assertEqual(len(c.out.getvalue().splitlines()), 5)
        self.assertEqual(c.out.flushes, 5, "flushed after each line")
        self.assertEqual([line["n"] for line in c.lines()], list(range(5)))


class LegacyTests(SynchronousTestCase):
    """
    Events from C{twisted.python.log}, and new-style events that a legacy
    observer's bridge has edited in place before this observer saw them.
    """

    def setUp(self) -> None:
        self.c = Capture()
        self.legacy = legacy.LogPublisher(
            observerPublisher=self.c.publisher, publishPublisher=self.c.publisher
        )

    def test_legacyMessage(self) -> None:
        self.legacy.msg("hello", "world", system="HTTPChannel,0,10.0.0.1")
        [line] = self.c.lines()
        self.assertEqual(
            line,
            {
                "time": line["time"],
                "level": "info",
                "namespace": "log_legacy",
                "text": "hello world",
                "system": "HTTPChannel,0,10.0.0.1",
            },
        )
        self.assertRegex(line["time"], RFC3339_MS)

    def test_legacyErr(self) -> None:
        try:
            raise ZeroDivisionError("division by zero")
        except ZeroDivisionError:
            self.legacy.msg(failure=Failure(), why="while dividing", isError=1)
        [line] = self.c.lines()
        self.assertEqual(list(line), ["time", "level", "namespace", "text", "failure"])
        self.assertEqual(line["level"], "critical")
        self.assertEqual(line["text"], "while dividing")
        self.assertIn("ZeroDivisionError", line["failure"])

    def test_bridgeEditedEvent(self) -> None:
        """
        A legacy observer ahead of this one adds C{message}, C{format},
        C{time}, C{system}, C{isError}, C{log_legacy}, C{why} and
        C{failure} to the shared event; none of it is repeated.
        """
        seen = []
        publisher = LogPublisher(LegacyLogObserverWrapper(seen.append), self.c.observer)
        log = Logger(namespace="haven_agent.proxy.gate", observer=publisher)
        log.info("plain {n}", n=1)
        try:
            raise ZeroDivisionError("division by zero")
        except ZeroDivisionError:
            log.failure("unexpected in {peer}", peer="p:1")
        self.assertIn("log_legacy", seen[0], "the bridge did edit the event")
        plain, failed = self.c.lines()
        self.assertEqual(list(plain), ["time", "level", "namespace", "text", "n"])
        self.assertEqual(plain["text"], "plain 1")
        self.assertEqual(
            list(failed), ["time", "level", "namespace", "text", "failure", "peer"]
        )
        self.assertEqual(failed["text"], "unexpected in p:1")
        self.assertIn("ZeroDivisionError", failed["failure"])

    def test_legacyFormat(self) -> None:
        self.legacy.msg(format="%(count)d connections", count=3)
        [line] = self.c.lines()
        self.assertEqual(line["text"], "3 connections")
        self.assertEqual(line["count"], 3)
        self.assertNotIn("format", line)


class NeverRaisesTests(SynchronousTestCase):
    def test_brokenOutput(self) -> None:
        class Closed(io.StringIO):
            def write(self, text):
                raise ValueError("I/O operation on closed file")

        json_lines_observer(Closed())({"log_format": "x"})

    def test_brokenEvent(self) -> None:
        """
        Even an event that breaks every rule gives a line, never an
        exception.
        """

        class Angry(dict):
            def get(self, *args):
                raise RuntimeError("no get")

        c = Capture()
        c.observer(Angry(log_format="x"))
        c.observer({"log_format": "x", "time": Broken(), "system": Broken()})
        first, second = c.lines()
        self.assertEqual(first["level"], "error")
        self.assertIn("unloggable event", first["text"])
        self.assertEqual(second["field_time"], "<unrepresentable Broken>")

    def test_brokenFailure(self) -> None:
        class BadFailure:
            def getTraceback(self):
                raise RuntimeError("no traceback")

            def __str__(self) -> str:
                return "bad failure"

        c = Capture()
        c.observer({"log_format": "x", "log_failure": BadFailure()})
        [line] = c.lines()
        self.assertEqual(line["failure"], "bad failure")


class TwistdTests(SynchronousTestCase):
    """
    twistd parents C{makeService}'s service to an C{Application}, then its
    C{AppLogger.start} begins logging to the application's C{ILogObserver}
    component, if any, instead of the C{--logfile} observer.
    """

    def beginner(self) -> tuple[LogBeginner, LogPublisher]:
        """
        A private log beginner in place of the global one that
        C{AppLogger.start} begins logging with.
        """
        publisher = LogPublisher()
        beginner = LogBeginner(
            publisher,
            io.StringIO(),
            SimpleNamespace(stdout=io.StringIO(), stderr=io.StringIO()),
            SimpleNamespace(showwarning=None),
        )
        self.patch(twisted.logger, "globalLogBeginner", beginner)
        return beginner, publisher

    def application(self, out: io.StringIO) -> tuple[service.Application, object]:
        inner = service.MultiService()
        top = use_json_logging(inner, out)
        application = service.Application("haven-agent")
        top.setServiceParent(application)
        return application, inner

    def test_componentSetWhenParented(self) -> None:
        out = io.StringIO()
        application, inner = self.application(out)
        observer = application.getComponent(ILogObserver)
        self.assertTrue(ILogObserver.providedBy(observer))
        observer({"log_format": "hi", "log_time": 0})
        self.assertEqual(strict_loads(out.getvalue())["text"], "hi")
        self.assertIsNone(application.getComponent(legacy.ILogObserver))

    def test_wrapperRunsTheService(self) -> None:
        application, inner = self.application(io.StringIO())
        collection = service.IServiceCollection(application)
        self.assertEqual(len(list(collection)), 1)
        service.IService(application).startService()
        self.assertTrue(inner.running)
        service.IService(application).stopService()
        self.assertFalse(inner.running)

    def test_appLoggerReplacesTheDefaultObserver(self) -> None:
        out = io.StringIO()
        application, _ = self.application(out)
        _, publisher = self.beginner()
        logger = app.AppLogger({"logfile": "-"})
        logger.start(application)
        self.addCleanup(logger.stop)
        Logger(namespace="haven_agent.test", observer=publisher).info(
            "through {what}", what="twistd"
        )
        [line] = [strict_loads(text) for text in out.getvalue().splitlines()]
        self.assertEqual(line["text"], "through twistd")
        self.assertEqual(line["what"], "twistd")
        self.assertIs(logger._observer, application.getComponent(ILogObserver))
        self.assertEqual(self.flushWarnings(), [], "a new-style observer")

    def test_unixAppLoggerWithLogfileDash(self) -> None:
        """
        C{twistd --nodaemon --logfile=- haven-agent}, as the image runs it.
        """
        out = io.StringIO()
        application, _ = self.application(out)
        _, publisher = self.beginner()
        logger = UnixAppLogger({"logfile": "-", "nodaemon": True})
        logger.start(application)
        self.addCleanup(logger.stop)
        Logger(observer=publisher).warn("disk {path} slow", path="/")
        [line] = [strict_loads(text) for text in out.getvalue().splitlines()]
        self.assertEqual((line["level"], line["path"]), ("warn", "/"))

    def test_loggerOptionStillWins(self) -> None:
        """
        twistd's own C{--logger} is taken before any component.
        """
        application, _ = self.application(io.StringIO())
        self.beginner()
        chosen = []

        def mine(event):
            chosen.append(event)

        from zope.interface import directlyProvides

        directlyProvides(mine, ILogObserver)
        logger = app.AppLogger({"logger": lambda: mine})
        logger.start(application)
        self.addCleanup(logger.stop)
        self.assertIs(logger._observer, mine)
