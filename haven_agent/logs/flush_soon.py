"""
The request log's lines written together a moment later, not one by one.

twistd's text observer and the JSON-lines observer flush their file after
every line, and twistd's --logfile is an unbuffered file, so every proxied
request cost a `write()` system call of its own for its access line: 9% of
the agent's CPU under keep-alive load. While `LogFlushing` runs, the
request lines (namespace `haven_agent.requests`, info and below) and the
lines the workers' relays copy in are held and written together, then
flushed, at most `delay` seconds (0.1) after the first of them, or once
64 KiB are held. Any other line (start-up, reloads, warnings, errors) goes
out at once, after the lines held before it, so lines keep their order
and what an operator waits for is never late. A line logged from a thread
other than the reactor's goes out at once too (before the held ones), and
stopping the service writes everything. What a crash that kills the
process outright (SIGKILL, the OOM killer) can lose is the last 0.1 s of
request lines.
"""

from __future__ import annotations

import threading
from typing import IO, Any

from twisted.application.service import Service
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import FileLogObserver, LogLevel, globalLogPublisher

from haven_agent._twisted.log_observers import observers_of, output_of
from haven_agent.logs.json_lines import JSONLinesObserver

#: Seconds a request line may wait for its flush.
FLUSH_DELAY = 0.1

#: The namespace of the per-request lines (proxy.access_log, proxy.gate).
REQUESTS_NAMESPACE = "haven_agent.requests"


class FlushSoon:
    """
    A text file that keeps what is written to it and writes it to the
    wrapped file in one piece, then flushes that, `delay` seconds after the
    first line, or as soon as it holds `MAX_HELD` characters; everything
    else is the wrapped file's. Made on the reactor's thread: what another
    thread writes goes to the wrapped file at once, before what is held.
    """

    MAX_HELD = 65536

    def __init__(self, out: IO[str], clock: IReactorTime, delay: float) -> None:
        self.wrapped = out
        self._clock = clock
        self._delay = delay
        self.reactorThread = threading.get_ident()
        self._held: list[str] = []
        self._heldSize = 0
        self._pending: IDelayedCall | None = None
        #: Once the service stops: written and flushed at once again.
        self.immediate = False

    def write(self, text: str) -> None:
        if self.immediate:
            self.flushNow()
            self.wrapped.write(text)
            return
        if threading.get_ident() != self.reactorThread:
            # The timer and what is held are the reactor thread's.
            self.wrapped.write(text)
            return
        self._held.append(text)
        self._heldSize += len(text)
        if self._heldSize >= self.MAX_HELD:
            self.flushNow()
        elif self._pending is None:
            self._pending = self._clock.callLater(self._delay, self.flushNow)

    def flush(self) -> None:
        if self.immediate or threading.get_ident() != self.reactorThread:
            self.wrapped.flush()
        # Otherwise what is held goes out, flushed, when its time comes.

    def flushNow(self) -> None:
        if self._pending is not None:
            if self._pending.active():
                self._pending.cancel()
            self._pending = None
        held, self._held, self._heldSize = self._held, [], 0
        try:
            if held:
                self.wrapped.write("".join(held))
            self.wrapped.flush()
        except Exception:
            # As the observers do: logging must not take the agent down.
            pass

    def __getattr__(self, name: str) -> Any:
        return getattr(self.wrapped, name)


class LogFlushing(Service):
    """
    While running, the request lines for the log files of `publisher`'s
    observers (twistd's text observer, the JSON-lines observer) are held and
    written `delay` after the first of them; any other event writes what is
    held, itself included, at once.
    """

    name = "log-flushing"

    def __init__(
        self,
        clock: IReactorTime,
        publisher: Any = globalLogPublisher,
        delay: float = FLUSH_DELAY,
    ) -> None:
        self._clock = clock
        self._publisher = publisher
        self._delay = delay
        self._files: list[FlushSoon] = []
        self._swapped: list[tuple[Any, Any]] = []

    def startService(self) -> None:
        super().startService()
        for observer in observers_of(self._publisher):
            if isinstance(observer, JSONLinesObserver):
                observer.out = self._soon(observer.out)
                self._swapped.append((observer, observer))
                continue
            out = output_of(observer)
            if out is None:
                continue
            batched = FileLogObserver(self._soon(out), observer.formatEvent)
            self._publisher.addObserver(batched)
            self._publisher.removeObserver(observer)
            self._swapped.append((observer, batched))
        if self._files:
            # After the file observers: the event is written when it runs.
            self._publisher.addObserver(self._writeUnlessRequest)

    def _writeUnlessRequest(self, event: dict[str, Any]) -> None:
        if (
            event.get("log_namespace") == REQUESTS_NAMESPACE
            and event.get("log_level", LogLevel.info) <= LogLevel.info
        ):
            return
        for soon in self._files:
            if threading.get_ident() == soon.reactorThread:
                soon.flushNow()

    def _soon(self, out: IO[str]) -> IO[str]:
        soon = FlushSoon(out, self._clock, self._delay)
        self._files.append(soon)
        return soon  # type: ignore[return-value]

    def stopService(self) -> None:
        super().stopService()
        if self._files:
            self._publisher.removeObserver(self._writeUnlessRequest)
        for soon in self._files:
            # The workers' relays keep writing through it until they end.
            soon.immediate = True
            soon.flushNow()
        for original, batched in self._swapped:
            if isinstance(original, JSONLinesObserver):
                original.out = original.out.wrapped  # type: ignore[attr-defined]
                continue
            # Any change made to the batched observer's format since (the
            # faster formatter, the log level) goes back with it.
            original.formatEvent = batched.formatEvent
            self._publisher.addObserver(original)
            self._publisher.removeObserver(batched)
        self._files.clear()
        self._swapped.clear()
