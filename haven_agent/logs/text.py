# -*- test-case-name: tests.logs.test_text -*-
"""
twistd's text log lines, written with less work per line.

The access log has one line per request, and twisted.logger's classic text
format cost more than a third of the gate's own work on a keep-alive
`GET /_ping`: each line formats its timestamp from scratch (two
`fromtimestamp` calls and a `strftime`) and runs its message through
`string.Formatter`. `ClassicTextFormat` gives the same lines, byte for byte,
with the timestamp formatted once per second and the access log's
ready-made message (the `_text` field, see `GateProtocol._logRequest`) used
as it is; every other event goes through twisted.logger's own formatter.

twistd builds its text file observer itself (for `--logfile`, standard
output, rotation); `speed_up_text_logs` changes only that observer's
`formatEvent`, and only after checking that the new formatter writes the
very lines the old one did, so a different format (`--logger`, a changed
Twisted) is left alone. `TextLogSettings` then puts `--log-level`'s filter in
front of the observers it finds.
"""

from __future__ import annotations

import math
import time
from typing import Any

from twisted.application.service import Service
from twisted.logger import (
    FileLogObserver,
    LogLevel,
    formatEventAsClassicLogText,
    formatTime,
    globalLogPublisher,
    timeFormatRFC3339,
)

from haven_agent._twisted.log_observers import observers_of
from haven_agent.logs.level import at_level

#: The format of events whose message is ready-made in `_text`.
READY_MADE = "{_text}"


class ClassicTextFormat:
    """
    `formatEventAsClassicLogText` with a timestamp cache and a fast path
    for ready-made messages.
    """

    def __init__(self, timeFormat: str | None = timeFormatRFC3339) -> None:
        self._timeFormat = timeFormat
        self._second: float | None = None
        self._stamp = ""

    def formatTime(self, when: float | None) -> str:
        if when is None or self._timeFormat is None:
            return formatTime(when, self._timeFormat)
        # The format has whole seconds: one string serves a whole second.
        second = math.floor(when)
        if second != self._second:
            self._stamp = formatTime(when, self._timeFormat)
            self._second = second
        return self._stamp

    def __call__(self, event: dict[str, Any]) -> str | None:
        text = event.get("_text")
        if (
            type(text) is str
            and text
            and event.get("log_format") == READY_MADE
            and "log_failure" not in event
            and "log_system" not in event
        ):
            level = event.get("log_level")
            levelName = level.name if level is not None else "-"
            namespace = event.get("log_namespace", "-")
            stamp = self.formatTime(event.get("log_time"))
            if "\n" in text:
                text = text.replace("\n", "\n\t")
            return f"{stamp} [{namespace}#{levelName}] {text}\n"
        return formatEventAsClassicLogText(event, formatTime=self.formatTime)


def _samples() -> list[dict[str, Any]]:
    now = time.time()
    return [
        {
            "log_format": READY_MADE,
            "_text": "127.0.0.1:1 admin GET /_ping: done; 1 bytes in, 2 bytes out",
            "log_time": now,
            "log_namespace": "haven_agent.requests",
            "log_level": LogLevel.info,
            "peer": "127.0.0.1:1",
        },
        {
            "log_format": READY_MADE,
            "_text": "two\nlines",
            "log_time": now,
            "log_namespace": "haven_agent.proxy.gate",
            "log_level": LogLevel.warn,
        },
        {
            "log_format": "{count} workers {{ok}}",
            "count": 2,
            "log_time": now + 0.5,
            "log_namespace": "haven_agent.workers.pool",
            "log_level": LogLevel.info,
        },
    ]


def speed_up_text_logs(publisher: Any = globalLogPublisher) -> int:
    """
    Give the text file observers of C{publisher} a L{ClassicTextFormat}
    where it writes exactly what they write now.

    @return: how many observers were changed.
    """
    changed = 0
    for observer in observers_of(publisher):
        if not isinstance(observer, FileLogObserver):
            continue
        fast = ClassicTextFormat()
        try:
            same = all(
                fast(event) == observer.formatEvent(event) for event in _samples()
            )
        except Exception:
            same = False
        if same:
            observer.formatEvent = fast
            changed += 1
    return changed


def filter_text_logs(level: LogLevel, publisher: Any = globalLogPublisher) -> int:
    """
    Make the text file observers of C{publisher} write only events of
    C{level} or above.

    @return: how many observers are filtered.
    """
    filtered = 0
    for observer in observers_of(publisher):
        if isinstance(observer, FileLogObserver):
            observer.formatEvent = at_level(observer.formatEvent, level)
            filtered += 1
    return filtered


class TextLogSettings(Service):
    """
    Applies L{speed_up_text_logs} and the log level once logging has begun,
    which under twistd is before any service starts.
    """

    def __init__(self, level: LogLevel = LogLevel.info) -> None:
        self._level = level

    def startService(self) -> None:
        super().startService()
        speed_up_text_logs()
        filter_text_logs(self._level)
