"""
Tests for L{haven_agent.logs.text}: the same lines as twisted.logger's classic
text format, whatever the event.
"""

import io
import time

from twisted.logger import (
    FileLogObserver,
    Logger,
    LogLevel,
    LogPublisher,
    jsonFileLogObserver,
    textFileLogObserver,
)
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from haven_agent.logs.text import ClassicTextFormat, speed_up_text_logs


def reference(event):
    return textFileLogObserver(io.StringIO()).formatEvent(event)


def failure():
    try:
        raise ZeroDivisionError("for the test")
    except ZeroDivisionError:
        return Failure()


class ClassicTextFormatTests(SynchronousTestCase):
    def events(self):
        now = time.time()
        access = {
            "log_format": "{_text}",
            "_text": "127.0.0.1:5 admin GET /_ping: done; 95 bytes in, 200 bytes out",
            "log_namespace": "haven_agent.requests",
            "log_level": LogLevel.info,
            "log_time": now,
        }
        return [
            access,
            dict(access, log_time=now + 0.999),
            dict(access, log_time=now + 1.0),
            dict(access, log_time=now + 3600.25),
            dict(access, log_time=0.0),
            dict(access, _text="first\nsecond\nthird"),
            dict(access, _text="braces {stay} as {{they}} are"),
            dict(access, _text=""),
            dict(access, _text=42),
            dict(access, log_level=None),
            {k: v for k, v in access.items() if k != "log_namespace"},
            {k: v for k, v in access.items() if k != "log_time"},
            dict(access, log_system="HalfCloseableTLSFactory,3,127.0.0.1"),
            dict(access, log_failure=failure()),
            {
                "log_format": "{peer}: no request within {seconds} s; closing",
                "peer": "127.0.0.1:9",
                "seconds": 30.0,
                "log_namespace": "haven_agent.requests",
                "log_level": LogLevel.info,
                "log_time": now,
            },
            {"log_format": "{missing} field", "log_time": now},
            {"log_time": now, "message": ("legacy",), "log_system": "-"},
            {},
        ]

    def test_sameLines(self):
        fast = ClassicTextFormat()
        for event in self.events():
            self.assertEqual(fast(event), reference(event), event)

    def test_sameLinesThroughALogger(self):
        """
        Events as a Logger emits them, failures included.
        """
        fastOut, slowOut = io.StringIO(), io.StringIO()
        publisher = LogPublisher(
            FileLogObserver(fastOut, ClassicTextFormat()),
            textFileLogObserver(slowOut),
        )
        log = Logger(namespace="haven_agent.requests", observer=publisher)
        for i in range(50):
            log.info("{_text}", _text=f"request {i}", peer="127.0.0.1:1")
        log.warn("{problem} ({limit})", problem="too many", limit=5)
        log.failure("unexpected", failure())
        self.assertEqual(fastOut.getvalue(), slowOut.getvalue())
        self.assertIn("request 49", fastOut.getvalue())


class SpeedUpTests(SynchronousTestCase):
    def test_textObserverChanged(self):
        out = io.StringIO()
        observer = textFileLogObserver(out)
        publisher = LogPublisher(observer)
        self.assertEqual(speed_up_text_logs(publisher), 1)
        self.assertIsInstance(observer.formatEvent, ClassicTextFormat)

    def test_otherFormatsLeftAlone(self):
        json = jsonFileLogObserver(io.StringIO())
        custom = FileLogObserver(io.StringIO(), lambda event: "custom\n")
        before = (json.formatEvent, custom.formatEvent)
        publisher = LogPublisher(json, custom, lambda event: None)
        self.assertEqual(speed_up_text_logs(publisher), 0)
        self.assertEqual((json.formatEvent, custom.formatEvent), before)

    def test_otherTimeFormatLeftAlone(self):
        observer = textFileLogObserver(io.StringIO(), timeFormat="%H:%M")
        before = observer.formatEvent
        self.assertEqual(speed_up_text_logs(LogPublisher(observer)), 0)
        self.assertIs(observer.formatEvent, before)
