# -*- test-case-name: tests.logs.test_level -*-
"""
`--log-level`: the least important events the log keeps.

The default is info, so the debug lines (a health check every 30 s, one
line per collected report) stay out of the log unless asked for. The filter
sits in the observers' formatting (a formatter that gives no line for a
less important event), not in a wrapper around them: the observers stay
the plain file observers that the worker relay looks for.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.logger import LogLevel

LOG_LEVELS = {
    "debug": LogLevel.debug,
    "info": LogLevel.info,
    "warn": LogLevel.warn,
    "warning": LogLevel.warn,
    "error": LogLevel.error,
}
#: The names --help and error messages offer.
LOG_LEVEL_NAMES = ("debug", "info", "warn", "error")

_RANK = {
    level: rank
    for rank, level in enumerate(
        (LogLevel.debug, LogLevel.info, LogLevel.warn, LogLevel.error)
    )
}
_RANK[LogLevel.critical] = len(_RANK)


def wanted(event: dict[str, Any], level: LogLevel) -> bool:
    """
    Does C{event} matter at C{level}? An event without a level is kept.
    """
    own = event.get("log_level")
    return own is None or _RANK.get(own, 0) >= _RANK[level]


Formatter = Callable[[dict[str, Any]], "str | None"]


def at_level(formatEvent: Formatter, level: LogLevel) -> Formatter:
    """
    C{formatEvent}, giving no line for events less important than C{level}.
    """
    if level == LogLevel.debug:
        return formatEvent

    def format_wanted(event: dict[str, Any]) -> str | None:
        if not wanted(event, level):
            return None
        return formatEvent(event)

    return format_wanted
