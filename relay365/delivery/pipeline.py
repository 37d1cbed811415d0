"""A message's envelope as one RFC 2920 command group, and the bookkeeping of its replies. No I/O.

Theory of operation. When the server's EHLO offers PIPELINING, MAIL FROM and the RCPT TOs need not
wait for each other's replies (RFC 2920 s.3.1: they may be sent as one group; DATA is not pipelined
here - its 354 is awaited). `group()` builds the bytes of the group, one write; `ReplyReader`
turns what comes back, in any chunking, into replies in order; `settle()` pairs them with the
commands and says what the envelope came to:

    MAIL 250, some RCPT 250/251  -> accepted recipients; the caller goes on to DATA
    MAIL 250, no RCPT accepted    -> nothing to send: the caller says RSET (the session stays usable)
    MAIL refused                  -> every RCPT reply was still read (the server answers each one,
                                     503 or so: they are consumed, not reported); nothing is sent
    a 421 anywhere                -> the server is closing: no more replies will come; the session
                                     is lost, not the recipients

Reply text is kept the way aiosmtplib gives it (the lines of a multi-line reply joined by "\\n",
each without its code and separator), so a client hears the same words with or without
pipelining; as there, a reply ends at the first line whose fourth byte is not `-`, and the code
is that line's. Which codes accept follows aiosmtplib's `mail()` (250) and `rcpt()` (250, 251).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from ..addrspec import is_plain

# aiosmtplib's limits (protocol.MAX_LINE_LENGTH, MAX_RESPONSE_LENGTH): RFC 5321 s.4.5.3.1.5 allows
# 512 octets per reply line, and servers write longer ones; a reply of 32 KiB is no reply.
MAX_REPLY_LINE = 8192
MAX_REPLY = 4 * MAX_REPLY_LINE
MAIL_OK = frozenset({250})
RCPT_OK = frozenset({250, 251})
CLOSING = 421  # RFC 5321 s.3.8: the server is shutting the session down
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")  # no CR, LF or other control byte inside a command


class ReplyError(ValueError):
    """What the server sent is not an SMTP reply (or is too long to be one)."""


@dataclass(frozen=True, slots=True)
class Reply:
    code: int
    text: str

    def __str__(self) -> str:
        return f"{self.code} {self.text}"

    @property
    def transient(self) -> bool:
        """Anything but a 5xx may go better later (RFC 5321 s.4.2.1)."""
        return not 500 <= self.code < 600


def plain_path(address: str) -> str | None:
    """`<address>` for an everyday address (dot-atom @ LDH domain), which is what aiosmtplib's
    `quote_address` makes of it without running the email parser; None for any other."""
    return f"<{address}>" if is_plain(address) else None


def group(mail_from: str, options: Sequence[str], rcpts: Sequence[str]) -> bytes:
    """`MAIL FROM:<path> [options]` and one `RCPT TO:<path>` per recipient, CRLF each, as one
    write. Paths come quoted (`<a@b>`, as aiosmtplib's `quote_address` makes them); a control
    character anywhere raises ValueError (what aiosmtplib does), so nothing can add a command."""
    lines = [" ".join(("MAIL", "FROM:" + mail_from, *options))]
    lines += ["RCPT TO:" + r for r in rcpts]
    for line in lines:
        if _CONTROL.search(line):
            raise ValueError("command contains a prohibited control character")
    return "".join(line + "\r\n" for line in lines).encode("ascii")


class ReplyReader:
    """Bytes in, complete replies out, in order; a partial reply waits for the rest."""

    def __init__(self) -> None:
        self._rest = b""  # the start of a line whose end has not come
        self._lines: list[bytes] = []  # the lines of a multi-line reply in progress
        self._size = 0

    def feed(self, data: bytes) -> list[Reply]:
        lines = (self._rest + data if self._rest else data).split(b"\n")
        self._rest = lines.pop()
        if len(self._rest) > MAX_REPLY_LINE:
            raise ReplyError("reply line too long")
        out: list[Reply] = []
        for line in lines:
            if len(line) >= MAX_REPLY_LINE:  # with its LF: aiosmtplib's limit
                raise ReplyError("reply line too long")
            code = line[:3]
            if not code.isdigit():
                raise ReplyError(f"malformed reply line: {line[:40]!r}")
            if line[3:4] == b"-" or self._lines:
                reply = self._multi(line)
                if reply is not None:
                    out.append(reply)
            else:  # the everyday case: a reply of one line
                out.append(Reply(int(code), line[4:].strip(b" \t\r").decode("utf-8", "surrogateescape")))
        return out

    def _multi(self, line: bytes) -> Reply | None:
        self._size += len(line) + 1
        if self._size > MAX_REPLY:
            raise ReplyError("reply too long")
        self._lines.append(line)
        if line[3:4] == b"-":
            return None
        text = bytearray()
        for ln in self._lines:
            if text:  # aiosmtplib's join: an empty line adds no separator before the next
                text += b"\n"
            text += ln[4:].strip(b" \t\r")
        self._lines, self._size = [], 0
        return Reply(int(line[:3]), text.decode("utf-8", "surrogateescape"))


@dataclass(frozen=True, slots=True)
class Envelope:
    """What MAIL and the RCPTs came to. `rcpts` has the reply to each recipient in order (empty
    when MAIL was refused one at a time, so no RCPT was sent)."""

    mail: Reply
    rcpts: tuple[Reply, ...]

    @property
    def mail_ok(self) -> bool:
        return self.mail.code in MAIL_OK

    @property
    def accepted(self) -> tuple[int, ...]:
        """Indexes of the recipients the server took (none when it refused MAIL)."""
        if not self.mail_ok:
            return ()
        return tuple(i for i, r in enumerate(self.rcpts) if r.code in RCPT_OK)

    @property
    def closing(self) -> Reply | None:
        """The server's 421, if it is ending the session."""
        return next((r for r in (self.mail, *self.rcpts) if r.code == CLOSING), None)

    @property
    def needs_rset(self) -> bool:
        """MAIL opened a transaction that no recipient will use: end it, keep the session."""
        return self.mail_ok and not self.accepted and self.closing is None


def expected(rcpts: int) -> int:
    """How many replies the group of MAIL and `rcpts` RCPTs gets."""
    return 1 + rcpts


def settle(replies: Sequence[Reply], rcpts: int) -> Envelope:
    """Pair the replies read with MAIL and the `rcpts` RCPTs. Reading stops at a 421 (the server
    closes; nothing follows it), so fewer replies than commands end with one: the commands it
    left unanswered get that 421 too. Any other shortfall is the caller's bug."""
    if not replies or (len(replies) < expected(rcpts) and replies[-1].code != CLOSING):
        raise ValueError(f"{len(replies)} replies for {expected(rcpts)} commands")
    padded = list(replies[:expected(rcpts)])
    padded += [padded[-1]] * (expected(rcpts) - len(padded))
    return Envelope(padded[0], tuple(padded[1:]))
