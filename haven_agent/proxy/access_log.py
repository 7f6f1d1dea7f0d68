# -*- test-case-name: tests.proxy.test_gate -*-
"""
The access log: one event per request, when its answer is complete.

Each event says who asked (peer, user, how authenticated, certificate),
what (method, target), what came of it (dockerd's status code, or the
agent's refusal), the bytes each way, the time to the first byte of
dockerd's answer and the whole duration. Streams (attach, exec, upgrades)
get one event when they open and one when they close, saying which side
closed first.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable

from attrs import define
from twisted.logger import Logger, LogLevel

from haven_agent.proxy.http_head import RequestHead
from haven_agent.proxy.log_safe import printable, printable_bytes

log = Logger(namespace="haven_agent.requests")

#: An attach ticket in a query (see `terminal`): a credential, not logged.
_TICKET = re.compile(rb"([?&])ticket=[^&]*")
#: Targets longer than this are cut in the log.
MAX_LOGGED_TARGET = 256


@define(eq=False, slots=True)
class RequestRecord:
    """
    What the access log says about one request, gathered while it runs.

    @ivar status: what the client was answered: dockerd's status code, or
        the agent's own refusal; None while unknown.
    @ivar firstByte: when the first byte of dockerd's answer arrived.
    @ivar sent: has the whole request (head and body) gone to dockerd?
    @ivar answered: has dockerd's whole answer come back?
    @ivar route: the metrics' route label; C{stream}: the kind of stream
        its answer is, if any, and C{streamOpen} whether it is counted open.
    """

    method: str
    path: str
    user: str | None
    started: float
    auth: str = "-"
    certificate: str | None = None
    bytesIn: int = 0
    bytesOut: int = 0
    hijacked: bool = False
    status: int | None = None
    firstByte: float | None = None
    sent: bool = False
    answered: bool = False
    route: str = "other"
    stream: str | None = None
    streamOpen: bool = False
    websocket: bool = False

    @classmethod
    def of(cls, head: RequestHead | None, user: str | None, now: float):
        if head is None:
            return cls("-", "-", user, now)
        target = head.target
        if b"ticket=" in target:
            target = _TICKET.sub(rb"\1ticket=REDACTED", target)
        if len(target) > MAX_LOGGED_TARGET:
            target = target[:MAX_LOGGED_TARGET] + b"..."
        return cls(
            printable_bytes(head.method),
            printable_bytes(target),
            printable(user) if user is not None else None,
            now,
        )


def log_request(
    peer: str,
    record: RequestRecord,
    outcome: str,
    now: float,
    emit: Callable[..., None] | None = None,
) -> None:
    """
    Log C{record}'s event.

    The message is formatted here with one f-string and handed over as the
    private field C{_text} (which the JSON log leaves out, as it does every
    C{_} field): twisted.logger's own formatting of a format string with a
    dozen fields, which each observer would do again, cost more than the
    rest of the request. dockerd's status and the time to its first byte
    are in the text only when dockerd answered (the agent's refusals say
    theirs in the outcome: "refused 401: ...").

    The event goes to the logger's observer directly, as `Logger.emit`
    would send it: emit first checks the level against every level
    there is, a tenth of what logging a request cost.
    """
    user = record.user or "-"
    duration = now - record.started
    firstByte = None if record.firstByte is None else record.firstByte - record.started
    # The agent's refusals say their status in the outcome ("refused 401").
    status = "" if record.firstByte is None else f"{record.status or '-'} "
    waited = "" if firstByte is None else f"{firstByte:.3f} s to first byte, "
    text = (
        f"{peer} {user} {record.method} {record.path}: {status}{outcome}; "
        f"{record.bytesIn} bytes in, {record.bytesOut} bytes out, "
        f"{waited}{duration:.3f} s"
    )
    fields = {
        "_text": text,
        "peer": peer,
        "user": user,
        "auth": record.auth,
        "certificate": record.certificate,
        "method": record.method,
        "path": record.path,
        "outcome": outcome,
        "status": record.status,
        "bytesIn": record.bytesIn,
        "bytesOut": record.bytesOut,
        "firstByte": firstByte,
        "duration": duration,
        "hijacked": record.hijacked,
    }
    if emit is not None:
        emit("{_text}", **fields)
        return
    fields["log_logger"] = log
    fields["log_level"] = LogLevel.info
    fields["log_namespace"] = log.namespace
    fields["log_source"] = log.source
    fields["log_format"] = "{_text}"
    fields["log_time"] = time.time()
    log.observer(fields)


def log_stream_opened(peer: str, record: RequestRecord) -> None:
    log.info(
        "{peer} {user} {method} {path}: stream opened ({auth})",
        peer=peer,
        user=record.user or "-",
        method=record.method,
        path=record.path,
        auth=record.auth,
        status=record.status,
        event="stream opened",
    )
