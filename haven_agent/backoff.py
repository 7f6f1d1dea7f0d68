# -*- test-case-name: tests.test_backoff -*-
"""
How long to wait before retrying something that failed.

Both the reporter (the master unreachable) and the Docker event watcher
(dockerd down) retry with the same policy: exponential growth so a long
outage costs little, a cap so recovery is noticed in bounded time, and
jitter so a fleet of nodes losing the same master does not retry in step.
"""

from __future__ import annotations

from collections.abc import Callable


def backoff_delay(
    attempt: int, cap: float, random: Callable[[], float], base: float = 1.0
) -> float:
    """
    Seconds before retry number C{attempt} (0 for the first): C{base}
    doubling per attempt up to C{cap}, then shortened by up to half of
    itself at random (C{random()} in [0, 1)).
    """
    ceiling = min(cap, base * 2.0 ** min(max(attempt, 0), 60))
    return ceiling * (1.0 - random() / 2)
