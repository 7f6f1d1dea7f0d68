# -*- test-case-name: tests.logs.test_json_lines -*-
"""
`--log-format json`: one JSON object per line, for log shippers.

Each `twisted.logger` event becomes one line with, in this order, `time`
(RFC 3339, UTC, milliseconds), `level`, `namespace`, `text` (the event's
formatted message), then the event's own fields sorted by name, so that
`peer`, `user`, `method`, `path` of the access log are queryable as they are.
A logged failure adds `failure` with its traceback. Values that JSON cannot
carry are written as their `str()`, bytes as Latin-1 text.

twistd picks its log observer up from the application: a `twisted.logger`
`ILogObserver` component set on it *replaces* the one `--logfile` would
build (only `--logger` on twistd's own command line takes precedence).
`use_json_logging` arranges that for the service `makeService` returns.
"""

from __future__ import annotations

import json
import math
import sys
import time
from datetime import UTC, datetime
from typing import IO, Any

from twisted.application.service import IService, MultiService
from twisted.logger import ILogObserver, LogLevel, formatEvent
from twisted.python.components import Componentized
from twisted.python.failure import Failure
from zope.interface import implementer

from haven_agent.logs.level import wanted

# What the line itself says; event fields of these names are renamed.
RESERVED = ("time", "level", "namespace", "text", "system", "failure")
RENAMED_PREFIX = "field_"

# Keys twisted.python.log and the legacy observer bridge add to an event;
# what they carry is already in `time`, `level` and `text`.
_LEGACY_KEYS = ("message", "format", "isError", "why")

_MAX_DEPTH = 8

_LEVEL_NAMES = {level: level.name for level in LogLevel.iterconstants()}


@implementer(ILogObserver)
class JSONLinesObserver:
    """
    Writes each event to C{out} as one line of JSON, and flushes.

    It never raises: a field that cannot be converted is written as its
    C{repr()}, an event that cannot be converted at all still gives a line
    saying so, and a line that cannot be written is dropped. Events less
    important than C{level} give no line.
    """

    def __init__(self, out: IO[str], level: LogLevel = LogLevel.debug) -> None:
        self.out = out
        self._level = level

    def __call__(self, event: dict[str, Any]) -> None:
        try:
            if not wanted(event, self._level):
                return
            line = event_line(event)
        except Exception as error:
            line = _unloggable(event, error)
        try:
            self.out.write(line + "\n")
            self.out.flush()
        except Exception:
            # Nowhere left to say so: logging must not take the agent down.
            pass


def json_lines_observer(out: IO[str], level: LogLevel = LogLevel.debug) -> ILogObserver:
    """
    A log observer writing one JSON object per line to C{out}, for events
    of C{level} or above.
    """
    return JSONLinesObserver(out, level)


def event_line(event: dict[str, Any]) -> str:
    """
    The JSON line (without its newline) for one event.
    """
    record: dict[str, Any] = {
        "time": _timestamp(event.get("log_time")),
        "level": _level(event.get("log_level")),
        "namespace": _safe(event.get("log_namespace", "-")),
        "text": _text(event),
    }
    system = _safe(event.get("log_system", event.get("system")))
    if system is not None and system != "-":
        record["system"] = system
    failure = _failure(event)
    if failure is not None:
        record["failure"] = failure
    for key in sorted(_fields(event)):
        name = RENAMED_PREFIX + key if key in RESERVED else key
        record[name] = _safe(event[key])
    return json.dumps(record, separators=(",", ":"), allow_nan=False)


def _fields(event: dict[str, Any]) -> list[str]:
    """
    The event's own fields: neither twisted.logger's C{log_*} keys, nor
    private ones, nor what the legacy bridge added.
    """
    legacy = isinstance(event.get("message"), tuple)
    fields = []
    for key in event:
        if not isinstance(key, str) or key.startswith(("log_", "_")):
            continue
        try:
            added = _addedByLogging(event, key, legacy)
        except Exception:
            added = False
        if not added:
            fields.append(key)
    return fields


def _addedByLogging(event: dict[str, Any], key: str, legacy: bool) -> bool:
    if legacy and key in _LEGACY_KEYS:
        return True
    value = event[key]
    if key == "time":
        return bool(value == event.get("log_time"))
    if key == "system":
        # Written as `system` already, or the legacy "no system" mark.
        return bool(value == "-" or value == event.get("log_system", value))
    if key == "failure":
        return _isLegacyFailure(event)
    return False


def _isLegacyFailure(event: dict[str, Any]) -> bool:
    """
    Is C{event["failure"]} the failure of C{log.err} or the legacy bridge's
    copy of C{log_failure}, rather than a field of that name?
    """
    failure = event.get("failure")
    return isinstance(failure, Failure) and (
        event.get("log_failure") in (None, failure) or "isError" in event
    )


def _failure(event: dict[str, Any]) -> str | None:
    failure = event.get("log_failure")
    if failure is None and _isLegacyFailure(event):
        failure = event["failure"]
    if failure is None:
        return None
    try:
        return str(failure.getTraceback())
    except Exception:
        return _safe(failure)


def _timestamp(when: Any) -> str:
    """
    RFC 3339 in UTC with milliseconds: C{2024-05-01T12:00:00.123Z}.
    """
    try:
        milliseconds = int(math.floor(float(when) * 1000))
    except Exception:
        milliseconds = int(time.time() * 1000)
    try:
        moment = datetime.fromtimestamp(milliseconds // 1000, UTC)
    except (ValueError, OverflowError, OSError):
        milliseconds = int(time.time() * 1000)
        moment = datetime.fromtimestamp(milliseconds // 1000, UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S") + f".{milliseconds % 1000:03d}Z"


def _level(level: Any) -> str:
    try:
        return _LEVEL_NAMES[level]
    except (KeyError, TypeError):
        return "info" if level is None else str(_safe(level))


def _text(event: dict[str, Any]) -> str:
    if isinstance(event.get("message"), tuple) and _isLegacyFailure(event):
        # log.err's text repeats the traceback, which has its own key.
        return _safe(event.get("why") or "Unhandled Error")
    try:
        text = formatEvent(event)
    except Exception:
        text = None
    if not isinstance(text, str):
        return _safe(event.get("log_format"))
    return text


def _safe(value: Any, depth: int = 0) -> Any:
    """
    C{value} as something C{json.dumps} writes without complaint.
    """
    try:
        if value is None or isinstance(value, (bool, int, str)):
            return value
        if isinstance(value, float):
            return value if math.isfinite(value) else str(value)
        if isinstance(value, (bytes, bytearray, memoryview)):
            return bytes(value).decode("latin-1")
        if depth < _MAX_DEPTH:
            if isinstance(value, dict):
                return {
                    _key(key): _safe(item, depth + 1) for key, item in value.items()
                }
            if isinstance(value, (list, tuple, set, frozenset)):
                return [_safe(item, depth + 1) for item in value]
        return str(value)
    except Exception:
        return _repr(value)


def _key(key: Any) -> str:
    if isinstance(key, str):
        return key
    converted = _safe(key)
    return converted if isinstance(converted, str) else _repr(key)


def _repr(value: Any) -> str:
    try:
        return repr(value)
    except Exception:
        return f"<unrepresentable {type(value).__name__}>"


def _unloggable(event: Any, error: Exception) -> str:
    """
    A line for an event that could not be converted (which should not
    happen): say so with what can still be said about it.
    """
    return json.dumps(
        {
            "time": _timestamp(None),
            "level": "error",
            "namespace": "haven_agent.logs.json_lines",
            "text": f"unloggable event ({_repr(error)}): {_repr(event)}",
        },
        separators=(",", ":"),
    )


class LogObserverService(MultiService):
    """
    A service that, once parented to a twistd application, makes twistd log
    to C{observer} instead of the observer C{--logfile} would build.

    twistd parents the service from C{makeService} to its C{Application}
    before its C{AppLogger.start} looks for an C{ILogObserver} component
    there, and C{setServiceParent} is the one hook that sees the application
    itself rather than its C{IServiceCollection} adapter.
    """

    def __init__(self, observer: ILogObserver) -> None:
        super().__init__()
        self.observer = observer

    def setServiceParent(self, parent) -> None:
        if isinstance(parent, Componentized):
            parent.setComponent(ILogObserver, self.observer)
        super().setServiceParent(parent)


def use_json_logging(
    service: IService, out: IO[str] | None = None, level: LogLevel = LogLevel.info
) -> MultiService:
    """
    Wrap C{service} so that, run by twistd, the agent logs JSON lines of
    events of C{level} or above to C{out} (the standard output by default,
    as it is when this is called: twistd later replaces C{sys.stdout} with a
    file that logs).
    """
    wrapper = LogObserverService(json_lines_observer(out or sys.stdout, level))
    service.setServiceParent(wrapper)
    return wrapper
