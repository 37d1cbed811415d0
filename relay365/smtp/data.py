"""The DATA phase as bytes in, message content out: line ends, dot-stuffing, the end marker.

Theory of operation. After `354` the client sends the message as lines, dot-stuffed (RFC 5321
s.4.5.2), ended by `<CRLF>.<CRLF>`. `DataReader.feed(bytes)` takes the bytes as they arrive, in
any chunking, and returns the content decoded so far, ready to hand on: every line ends in CRLF,
one leading dot is removed from each line. It stops at the end marker and keeps what came after
it (pipelined commands) in `rest`.

Line ends, as Postfix does by default (`smtpd_forbid_bare_newline = normalize`): a bare LF ends a
line like CRLF does, so a device that writes LF-only lines (embedded firmware, scripts piping into
a socket) and dot-stuffs them gets its message delivered as it meant it, with CRLF line ends. But
the end of DATA is only `<CRLF>.<CRLF>`: a `.` line after or before a bare LF is content, not the
end. That is what closes the SMTP-smuggling class (CVE-2023-51764, CVE-2023-51766): no spelling
of line ends makes one DATA end early here and the rest read as commands or as a second message,
and what goes upstream is re-encoded by the SMTP client (aiosmtplib), so a dot line in the
content reaches Office 365 dot-stuffed again.

Limits: `max_size` bytes of raw DATA (RFC 1870 SIZE; over it, the rest is read and dropped and
the reply is 552) and `max_line` bytes per line including its end (RFC 5321 s.4.5.3.1.6: 1000;
over it: 500). Either way the whole DATA is still read to its end, so the session stays in step.
"""

from __future__ import annotations

import enum
import re

# RFC 5321 s.4.5.3.1.6: 1000 octets including CRLF; aiosmtpd's default allows one more
MAX_LINE = 1001


_UNSTUFF = re.compile(rb"(?m)^\.")


class DataError(enum.Enum):
    TOO_BIG = "too_big"
    LINE_TOO_LONG = "line_too_long"


class DataReader:
    def __init__(self, max_size: int | None, max_line: int = MAX_LINE) -> None:
        self.max_size = max_size
        self.max_line = max_line
        self.size = 0  # raw bytes of DATA seen so far (without the end marker)
        self.done = False
        self.error: DataError | None = None
        self.rest = b""  # bytes after the end marker, once done
        self._partial = bytearray()  # the start of a line whose end has not arrived
        self._line_start_after_crlf = True  # the previous line ended in CRLF (or there was none)
        self._skipping = False  # inside an over-long line whose start was dropped
        self._dropped_cr = False  # the dropped part of that line ended in CR

    def feed(self, data: bytes) -> bytes:
        """Content decoded from `data` (and what was pending); b"" when nothing completed."""
        if self.done:
            self.rest += data
            return b""
        buf = bytes(self._partial) + data if self._partial else data
        fast = self._fast(buf)
        if fast is not None:
            return fast
        return self._slow(buf)

    def _fast(self, buf: bytes) -> bytes | None:
        """The common case at C speed: whole lines, all CRLF, none too long, within the size.
        None when anything needs the line-by-line rules (then nothing has changed)."""
        if self.error is not None or self._skipping:
            return None
        last = buf.rfind(b"\n")
        if last < 0:
            return None
        if self._line_start_after_crlf and buf.startswith(b".\r\n"):
            cut = 0  # the end marker first
        else:
            marker = buf.find(b"\r\n.\r\n", 0, last + 1)
            cut = marker + 2 if marker >= 0 else last + 1
        lines = buf[:cut]
        if not self._line_start_after_crlf and lines.startswith(b".\r\n"):
            return None  # a "." line after a bare LF is content, kept as it is
        partial = b"" if cut <= last else buf[cut:]
        crlf = lines.count(b"\r\n")
        if (lines.count(b"\n") != crlf or len(partial) > self.max_line
                or (self.max_size is not None and self.size + len(lines) > self.max_size)
                or max(map(len, lines.split(b"\n"))) >= self.max_line):  # with its LF: over
            return None
        self.size += len(lines)
        if cut <= last:  # the end marker is at `cut`
            self.done, self.rest = True, buf[cut + 3:]
        else:
            self._partial = bytearray(partial)
        if lines:
            self._line_start_after_crlf = True
        return _UNSTUFF.sub(b"", lines) if b"\n." in lines or lines[:1] == b"." else lines

    def _slow(self, data: bytes) -> bytes:
        out = bytearray()
        buf = bytearray(data)
        self._partial = bytearray()
        start = 0
        while True:
            nl = buf.find(b"\n", start)
            if nl < 0:
                self._partial = buf[start:]
                if len(self._partial) > self.max_line:
                    self._oversized(len(self._partial))
                    self._dropped_cr = self._partial.endswith(b"\r")  # half of a CRLF, maybe
                    self._partial = bytearray()
                break
            line = bytes(buf[start:nl + 1])
            start = nl + 1
            if self._line(line, out):
                self.rest = bytes(buf[start:])
                break
        return bytes(out) if self.error is None else b""

    def _line(self, line: bytes, out: bytearray) -> bool:
        """One complete line (with its LF); True when it was the end marker."""
        crlf = line.endswith(b"\r\n")
        text = line[:-2] if crlf else line[:-1]
        if self._skipping:  # the tail of an over-long line: never a line of its own
            crlf = crlf or (line == b"\n" and self._dropped_cr)  # its CR went with the dropped part
            self._skipping, self._line_start_after_crlf = False, crlf
            self.size += len(line)
            if self.max_size is not None and self.size > self.max_size:
                self.error = DataError.TOO_BIG
            return False
        if crlf and text == b"." and self._line_start_after_crlf:
            self.done = True
            return True
        after_crlf, self._line_start_after_crlf = self._line_start_after_crlf, crlf
        self.size += len(line)
        if self.max_size is not None and self.size > self.max_size:
            self.error = DataError.TOO_BIG  # over SIZE wins over a long line, however it arrived
        if len(line) > self.max_line and self.error is None:
            self.error = DataError.LINE_TOO_LONG
        if self.error is not None:
            return False
        if text.startswith(b".") and (text != b"." or (crlf and after_crlf)):
            text = text[1:]  # RFC 5321 s.4.5.2; a lone "." beside a bare LF is content, kept
        out += text
        out += b"\r\n"
        return False

    def _oversized(self, length: int) -> None:
        """A line longer than the limit with no end yet: count it, drop it, remember the error."""
        self.size += length
        self._skipping = True
        if self.max_size is not None and self.size > self.max_size:
            self.error = DataError.TOO_BIG
        elif self.error is None:
            self.error = DataError.LINE_TOO_LONG
