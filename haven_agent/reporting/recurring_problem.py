# -*- test-case-name: tests.reporting.test_recurring_problem -*-
"""
A problem met again on every retry, logged without filling the log.

The reporter retries every few seconds while dockerd is down or the master
cannot be resolved; a warning per attempt says nothing new after the first.
L{RecurringProblem} logs a warning when the problem first occurs and each
time what is wrong changes, and one line when it clears, saying how many
attempts it lasted.
"""

from __future__ import annotations

from typing import Any

from attrs import define, field
from twisted.logger import Logger


@define(eq=False)
class RecurringProblem:
    """
    One kind of problem (a master that cannot be resolved, say), as the log
    hears of it.

    @ivar occurrences: attempts that met the problem since it last cleared.
    """

    _log: Logger
    _current: str | None = field(init=False, default=None)
    occurrences: int = field(init=False, default=0)

    @property
    def present(self) -> bool:
        return self._current is not None

    def occurred(self, problem: str, format: str, **fields: Any) -> None:
        """
        Another attempt met C{problem}; C{format} (with C{{problem}} and
        C{fields}) is logged as a warning unless it is the problem the last
        attempt met.
        """
        self.occurrences += 1
        if problem != self._current:
            self._current = problem
            self._log.warn(format, problem=problem, **fields)

    def cleared(self, format: str, **fields: Any) -> None:
        """
        The problem is gone; C{format} is logged, with the count of attempts
        that met it as C{{occurrences}}, if it was present.
        """
        if self._current is not None:
            self._log.info(format, occurrences=self.occurrences, **fields)
        self._current = None
        self.occurrences = 0
