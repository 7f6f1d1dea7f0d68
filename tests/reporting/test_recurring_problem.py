"""
Tests for L{haven_agent.reporting.recurring_problem}: a problem met on every retry is
logged when it starts and changes, and once, with a count, when it clears.
"""

from twisted.logger import Logger, LogLevel, formatEvent
from twisted.trial.unittest import SynchronousTestCase

from haven_agent.reporting.recurring_problem import RecurringProblem


class RecurringProblemTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.events: list[dict] = []
        self.problem = RecurringProblem(Logger(observer=self.events.append))

    def lines(self) -> list[tuple[LogLevel, str]]:
        return [(e["log_level"], formatEvent(e)) for e in self.events]

    def test_first_occurrence_logged_repeats_not(self) -> None:
        for _ in range(6):
            self.problem.occurred(
                "no route", "cannot reach {host}: {problem}", host="m"
            )
        self.assertEqual(self.lines(), [(LogLevel.warn, "cannot reach m: no route")])
        self.assertTrue(self.problem.present)
        self.assertEqual(self.problem.occurrences, 6)

    def test_change_logged(self) -> None:
        self.problem.occurred("no route", "{problem}")
        self.problem.occurred("no route", "{problem}")
        self.problem.occurred("refused", "{problem}")
        self.assertEqual(
            self.lines(), [(LogLevel.warn, "no route"), (LogLevel.warn, "refused")]
        )

    def test_clear_counts_and_resets(self) -> None:
        for _ in range(3):
            self.problem.occurred("down", "{problem}")
        self.problem.cleared("back after {occurrences} attempts")
        self.problem.cleared("back after {occurrences} attempts")
        self.assertEqual(
            self.lines(),
            [(LogLevel.warn, "down"), (LogLevel.info, "back after 3 attempts")],
        )
        self.assertFalse(self.problem.present)
        self.problem.occurred("down", "{problem}")
        self.assertEqual(self.lines()[-1], (LogLevel.warn, "down"))

    def test_clear_without_problem_is_silent(self) -> None:
        self.problem.cleared("back")
        self.assertEqual(self.events, [])
