"""
The canary of `haven_agent._twisted`: every private name of Twisted the
agent uses still exists in the installed Twisted.

A Twisted release that removes or renames one fails here, naming it, rather
than somewhere inside a TLS connection in production.
"""

import inspect
import pathlib
import re

from twisted.python.reflect import namedAny
from twisted.trial.unittest import SynchronousTestCase

import haven_agent
from haven_agent._twisted import PRIVATE_NAMES

PACKAGE = pathlib.Path(haven_agent.__file__).parent


def _defines(owner: object, name: str) -> bool:
    if hasattr(owner, name):
        return True
    if not inspect.isclass(owner):
        return False
    # Set on instances only: look for the assignment in the classes' code.
    assignment = re.compile(rf"\bself\.{re.escape(name)}\s*(:[^=]*)?=")
    for cls in inspect.getmro(owner):
        try:
            source = inspect.getsource(cls)
        except (OSError, TypeError):
            continue
        if assignment.search(source):
            return True
    return False


class CanaryTests(SynchronousTestCase):
    def test_every_private_name_exists(self) -> None:
        missing = [
            f"{path}.{name}"
            for path, name in PRIVATE_NAMES
            if not _defines(namedAny(path), name)
        ]
        self.assertEqual(
            missing,
            [],
            "this Twisted lacks private names haven_agent._twisted relies on: "
            + ", ".join(missing),
        )

    def test_no_private_names_outside_the_quarantine(self) -> None:
        """
        Modules outside haven_agent/_twisted/ import no underscore name from
        Twisted.
        """
        private_import = re.compile(
            r"^\s*from twisted[\w.]* import [^#\n]*\b_[A-Za-z]", re.M
        )
        offenders = [
            str(path.relative_to(PACKAGE))
            for path in PACKAGE.rglob("*.py")
            if "_twisted" not in path.parts
            and private_import.search(path.read_text(encoding="utf-8"))
        ]
        self.assertEqual(offenders, [])

    def test_listed_names_are_used(self) -> None:
        """Each listed name appears in the quarantine's code: the list is
        what the code uses, not a list of wishes."""
        code = "\n".join(
            path.read_text(encoding="utf-8")
            for path in (PACKAGE / "_twisted").glob("*.py")
            if path.name != "__init__.py"
        )
        unused = [name for _, name in PRIVATE_NAMES if name not in code]
        self.assertEqual(unused, [])

    def test_canary_can_fail(self) -> None:
        self.assertFalse(
            _defines(namedAny("twisted.protocols.tls.TLSMemoryBIOProtocol"), "_nope")
        )
