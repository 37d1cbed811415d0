"""Message content to the bytes of an SMTP DATA phase, chunk by chunk, in bounded memory.

`WireEncoder` takes a message's content in any chunking and returns what goes on the wire after
`354`: every line end CRLF (a lone CR or LF becomes CRLF, as aiosmtplib and Python's smtplib do), a
line that starts with `.` gets one more (RFC 5321 s.4.5.2), and `end()` closes the last line and
adds the `.` line that ends DATA. Each call copies only the chunk it is given; nothing is kept
between calls but whether the next byte starts a line and a CR that may be half of a CRLF.
"""

from __future__ import annotations

import re

_LINE_ENDS = re.compile(rb"\r\n|\r(?!\n)|\n")
_DOT_AFTER_LF = re.compile(rb"(?<=\n)\.")


class WireEncoder:
    def __init__(self) -> None:
        self._line_start = True
        self._cr = False  # the previous chunk ended in CR: it may be half of a CRLF
        self.size = 0  # content bytes taken

    def feed(self, chunk: bytes) -> bytes:
        self.size += len(chunk)
        if self._cr:
            chunk = b"\r" + chunk
            self._cr = False
        if chunk.endswith(b"\r"):
            chunk, self._cr = chunk[:-1], True
        if not chunk:
            return b""
        crlf = chunk.count(b"\r\n")
        if chunk.count(b"\n") != crlf or chunk.count(b"\r") != crlf:  # a lone CR or LF
            chunk = _LINE_ENDS.sub(b"\r\n", chunk)
        if b"\n." in chunk:
            chunk = _DOT_AFTER_LF.sub(b"..", chunk)
        if self._line_start and chunk.startswith(b"."):
            chunk = b"." + chunk
        self._line_start = chunk.endswith(b"\n")
        return chunk

    def end(self) -> bytes:
        """The rest of the last line, its CRLF if it had none, and the `.` line."""
        if self._cr:
            self._cr, self._line_start = False, True
            return b"\r\n.\r\n"
        return b".\r\n" if self._line_start and self.size else b"\r\n.\r\n"
