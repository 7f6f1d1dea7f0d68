"""
LogFlushing: request lines are held and written together a moment later;
any other line writes them and itself at once; stopping writes what is
held and gives the publisher its observers back.
"""

from __future__ import annotations

import io
import threading

from twisted.internet.task import Clock
from twisted.logger import (
    FileLogObserver,
    LogLevel,
    LogPublisher,
    formatEventAsClassicLogText,
)
from twisted.trial.unittest import SynchronousTestCase

from haven_agent.logs.flush_soon import FLUSH_DELAY, REQUESTS_NAMESPACE, LogFlushing
from haven_agent.logs.json_lines import JSONLinesObserver


class CountingFile(io.StringIO):
    """A text file that counts its flushes and what they made visible."""

    def __init__(self) -> None:
        super().__init__()
        self.flushes = 0
        self.writes = 0
        self.visible = ""

    def write(self, text: str) -> int:
        self.writes += 1
        return super().write(text)

    def flush(self) -> None:
        self.flushes += 1
        self.visible = self.getvalue()


def event(
    text: str, namespace: str = REQUESTS_NAMESPACE, level: LogLevel = LogLevel.info
) -> dict:
    return {
        "log_format": text,
        "log_level": level,
        "log_namespace": namespace,
        "log_time": 0.0,
    }


class LogFlushingTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.publisher = LogPublisher()
        self.text = CountingFile()
        self.json = CountingFile()
        self.textObserver = FileLogObserver(self.text, formatEventAsClassicLogText)
        self.jsonObserver = JSONLinesObserver(self.json)
        self.publisher.addObserver(self.textObserver)
        self.publisher.addObserver(self.jsonObserver)
        self.service = LogFlushing(self.clock, self.publisher)
        self.service.startService()

    def test_lines_flushed_together_later(self) -> None:
        """Held, then written in order in one write and one flush per file."""
        for n in range(3):
            self.publisher(event(f"line {n}"))
        for out in (self.text, self.json):
            self.assertEqual((out.writes, out.flushes, out.getvalue()), (0, 0, ""))
        self.clock.advance(FLUSH_DELAY)
        for out in (self.text, self.json):
            self.assertEqual((out.writes, out.flushes), (1, 1))
            self.assertEqual(out.visible.count("line"), 3)
        self.assertLess(
            self.text.getvalue().index("line 0"), self.text.getvalue().index("line 2")
        )
        self.publisher(event("line 3"))
        self.clock.advance(FLUSH_DELAY)
        self.assertEqual((self.text.flushes, self.json.flushes), (2, 2))

    def test_other_lines_go_out_at_once(self) -> None:
        """
        A line of another namespace, or a request warning, writes the held
        request lines and itself, in order, at once.
        """
        for other in (
            event("serving", namespace="haven_agent.proxy.service"),
            event("refusing", level=LogLevel.warn),
        ):
            self.publisher(event("request"))
            self.publisher(other)
            for out in (self.text, self.json):
                text = out.visible
                self.assertIn(other["log_format"], text)
                self.assertLess(text.rindex("request"), text.index(other["log_format"]))
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_many_lines_go_out_early(self) -> None:
        """No more than 64 KiB wait for the timer."""
        for n in range(2000):
            self.publisher(event(f"line {n:04} " + "x" * 40))
        self.assertGreater(self.text.writes, 0)
        self.assertIn("line 0000", self.text.visible)
        self.clock.advance(FLUSH_DELAY)
        self.assertEqual(self.text.visible.count("line"), 2000)

    def test_other_thread_writes_at_once(self) -> None:
        """A line from another thread goes out at once; the held ones wait."""
        self.publisher(event("held"))
        thread = threading.Thread(target=self.publisher, args=(event("threaded"),))
        thread.start()
        thread.join()
        for out in (self.text, self.json):
            self.assertIn("threaded", out.visible)
            self.assertNotIn("held", out.visible)
        self.clock.advance(FLUSH_DELAY)
        for out in (self.text, self.json):
            self.assertIn("held", out.visible)

    def test_stop_flushes_and_restores(self) -> None:
        """Nothing waits after stop; the original observers are back, unbatched."""
        self.publisher(event("last"))
        self.service.stopService()
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.assertIn("last", self.text.visible)
        self.assertIn("last", self.json.visible)
        self.assertIs(self.jsonObserver.out, self.json)
        self.publisher(event("after"))
        self.assertIn("after", self.text.visible)
        self.assertIn("after", self.json.visible)
        self.assertEqual(self.text.getvalue().count("after"), 1)
