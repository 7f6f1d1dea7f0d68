# -*- test-case-name: tests.proxy.test_log_safe -*-
"""
Request data made safe to write into a log line.

A request target, a user name or a certificate's name is the client's to
choose. Written as it came, a control character starts a new line in the
text log (a CR or LF; NEL U+0085, which a byte 0x85 becomes when decoded as
Latin-1; U+2028 and U+2029 for Unicode-aware readers), so a client could
append a line of its own invention. Everything outside printable ASCII is
written as a Python-style escape instead (C{\\x85}, C{\\u2028}), and a
backslash as C{\\\\}, so an escape in the log always means the client sent
that character.
"""

from __future__ import annotations


def _escape(character: str) -> str:
    code = ord(character)
    if character == "\\":
        return "\\\\"
    if 0x20 <= code < 0x7F:
        return character
    if code < 0x100:
        return f"\\x{code:02x}"
    if code < 0x10000:
        return f"\\u{code:04x}"
    return f"\\U{code:08x}"


def printable(value: str) -> str:
    """
    C{value} with every character outside printable ASCII escaped.
    """
    if value.isascii() and value.isprintable() and "\\" not in value:
        return value
    return "".join(_escape(character) for character in value)


def printable_bytes(value: bytes) -> str:
    """
    C{value}, bytes from the wire, as printable ASCII text: each byte
    outside printable ASCII as C{\\xNN}.
    """
    return printable(value.decode("latin-1"))
