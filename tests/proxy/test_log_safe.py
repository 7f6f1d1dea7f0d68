"""
Tests for L{haven_agent.proxy.log_safe}: request data cannot start a log line of
its own.
"""

from twisted.trial.unittest import SynchronousTestCase

from haven_agent.proxy.log_safe import printable, printable_bytes


class PrintableTests(SynchronousTestCase):
    def test_plain_ascii_unchanged(self) -> None:
        text = "/v1.41/containers/json?all=1&filters=%7B%7D"
        self.assertIs(printable(text), text)

    def test_line_breaks_escaped(self) -> None:
        self.assertEqual(printable_bytes(b"/a\r\nb"), "/a\\x0d\\x0ab")
        # 0x85 is NEXT LINE (U+0085) once decoded as Latin-1.
        self.assertEqual(printable_bytes(b"/x\x85y"), "/x\\x85y")
        self.assertEqual(printable("a\u2028b\u2029c"), "a\\u2028b\\u2029c")

    def test_c1_and_other_controls(self) -> None:
        for code in [*range(0x00, 0x20), 0x7F, *range(0x80, 0xA0)]:
            escaped = printable(chr(code))
            self.assertEqual(escaped, f"\\x{code:02x}")

    def test_non_ascii(self) -> None:
        self.assertEqual(printable("é€😀"), "\\xe9\\u20ac\\U0001f600")

    def test_backslash_escaped_so_escapes_are_unambiguous(self) -> None:
        self.assertEqual(printable("\\x85"), "\\\\x85")
        self.assertNotEqual(printable("\\x85"), printable("\x85"))

    def test_result_is_printable_ascii(self) -> None:
        everything = "".join(chr(c) for c in range(0x300)) + "\u2028\U0010ffff"
        result = printable(everything)
        self.assertTrue(result.isascii() and result.isprintable())
