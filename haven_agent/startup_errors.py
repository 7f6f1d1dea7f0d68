# -*- test-case-name: tests.test_startup_errors -*-
"""
Start-up failures as one line on standard error, not a traceback.

A port in use, an unreadable certificate or a state directory that cannot be
written stops `twistd` while it builds or starts the service, and twistd lets
the exception end the process: 40 lines of traceback, the useful one last.
Code that knows what went wrong raises L{StartupError} with a message naming
the option or environment variable at fault; L{explain_startup_errors} makes
such an exception, when nothing catches it, print as that message alone
(the process still exits with status 1). Any other exception keeps its
traceback: it is a bug, and the traceback is what a report needs.

The line goes to the process's original standard error: once twistd has
begun logging, C{sys.stderr} is a file that writes into the log.
Daemonised (without C{-n}), twistd passes the message to the parent, which
prints it.
"""

from __future__ import annotations

import sys
from types import TracebackType


class StartupError(Exception):
    """
    The agent cannot start, for the reason its message gives in full.
    """


def explain_startup_errors() -> None:
    """
    Print an uncaught L{StartupError} as one line; leave every other
    uncaught exception to the hook in place before.
    """
    previous = sys.excepthook
    if getattr(previous, "explainsStartupErrors", False):
        return

    def hook(
        kind: type[BaseException],
        error: BaseException,
        traceback: TracebackType | None,
    ) -> None:
        if isinstance(error, StartupError):
            stderr = sys.__stderr__ or sys.stderr
            stderr.write(f"haven-agent: {error}\n")
            stderr.flush()
        else:
            previous(kind, error, traceback)

    hook.explainsStartupErrors = True  # type: ignore[attr-defined]
    sys.excepthook = hook
