# -*- test-case-name: tests._twisted.test_canary -*-
"""
The observers a log publisher has, and the file a file observer writes to.

twistd builds the text log's observer itself; the agent finds it in the
global publisher to give it a faster formatter and the log level, and the
worker relay finds the file it writes to, so that workers' lines land in
the same file. Twisted keeps both in private attributes.
"""

from __future__ import annotations

from typing import IO, Any

from twisted.logger import FileLogObserver


def observers_of(publisher: Any) -> list[Any]:
    """The observers C{publisher} (a C{LogPublisher}) delivers events to."""
    return list(getattr(publisher, "_observers", ()))


def output_of(observer: Any) -> IO[str] | None:
    """The file a C{FileLogObserver} writes to, or None for another kind."""
    if isinstance(observer, FileLogObserver):
        return getattr(observer, "_outFile", None)
    return None
