# -*- test-case-name: tests.proxy.test_throttle -*-
"""
Slowing down password guessing, per source address.

Each failed authentication from an address makes the next refusal to that
address wait longer (doubling from C{base}, capped), so guessing gets slow
while a right credential is never delayed: the delay is only ever put
before a 401. Delays are timers, never blocking, so other connections are
not held up. An address is forgotten once it has been quiet for
C{forgetAfter} seconds, and at most C{maxSources} addresses are tracked (the
least recently failing are dropped first), so the table cannot be grown
without bound by an attacker with many addresses.
"""

from __future__ import annotations

from collections import OrderedDict

from attrs import define, field
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

log = Logger()


@define(eq=False)
class FailureThrottle:
    _clock: IReactorTime
    base: float = 0.25
    cap: float = 8.0
    forgetAfter: float = 900.0
    maxSources: int = 10_000
    warnEvery: int = 10
    _failures: OrderedDict[str, tuple[int, float]] = field(
        init=False, factory=OrderedDict
    )

    def failures(self, source: str) -> int:
        """
        Failures from C{source} that still count.
        """
        count, last = self._failures.get(source, (0, 0.0))
        if count and self._clock.seconds() - last > self.forgetAfter:
            del self._failures[source]
            return 0
        return count

    def failed(self, source: str) -> float:
        """
        Count a failure from C{source}; return how long to wait before
        answering it.
        """
        count = self.failures(source) + 1
        self._failures[source] = (count, self._clock.seconds())
        self._failures.move_to_end(source)
        while len(self._failures) > self.maxSources:
            self._failures.popitem(last=False)
        if count % self.warnEvery == 0:
            log.warn(
                "{count} failed authentications from {source}; refusals to it "
                "are delayed {delay:.1f} s",
                count=count,
                source=source,
                delay=self.delay(count),
            )
        return self.delay(count)

    def throttled(self) -> int:
        """
        How many sources would have their next refusal delayed now.
        """
        now = self._clock.seconds()
        return sum(
            1
            for count, last in self._failures.values()
            if count >= 1 and now - last <= self.forgetAfter
        )

    def delay(self, count: int) -> float:
        """
        The wait before the refusal of failure number C{count} (1 is free).
        """
        if count <= 1:
            return 0.0
        return min(self.cap, self.base * 2.0 ** min(count - 2, 30))
