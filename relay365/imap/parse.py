"""The client's side of IMAP before login: framing the byte stream, reading arguments and PLAIN.

Theory of operation
-------------------
An IMAP command is one line, unless it carries literals. A line may end in ``{n}`` (a synchronizing
literal: the client waits for our ``+`` continuation) or ``{n+}`` (LITERAL+, RFC 7888: it does not
wait); then ``n`` raw bytes follow, then the rest of the command on a new line::

    a1 LOGIN {3}CRLF   bob   {2+}CRLF   pw   CRLF
    \\_ line 0 __/     lit 0  \\ line 1/   lit 1 line 2 (empty)

`Framer` cuts the stream into such commands without understanding them and returns a `Frame`
(lines and literals). When a line announces a *synchronizing* literal it stops and returns
`LiteralAnnounced`, so the state machine can decide, before a byte of the literal is read, whether
to send the continuation (`accept_literal`) or refuse the command (`abandon`). `Args` then reads a
frame with the few productions of RFC 9051 s.9 the pre-auth commands need.

Every limit is checked as bytes arrive, never after: a line can't grow past MAX_LINE_LENGTH and a
command past MAX_COMMAND_SIZE, so the framer holds at most MAX_COMMAND_SIZE bytes. Lines end in
CRLF; a bare LF is accepted too (robustness; the CR is dropped with it).

Errors carry the reply: `CommandError` fails one command (the state machine adds the tag, or
answers untagged when there is none), `FatalError` ends the session with its `* BYE`.
"""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass

from ..errors import ClientError

# RFC 2683 s.3.2.1.5 asks servers to take lines of at least 8000 octets and RFC 7162 s.4 raised the
# client guidance to 8192 (RFC 9051 s.4 sets no maximum); counted with the CRLF. Pre-auth commands
# are tiny, so a longer line is abuse and ends the session.
MAX_LINE_LENGTH = 8192
# RFC 7888 s.4 (LITERAL-) sets 4096 as the largest non-synchronizing literal; a user name or
# password is far shorter. Before login nothing bigger is read.
MAX_LITERAL_SIZE = 4096
# One whole command (lines, literals and their CRLFs): LOGIN with two full literals, or an ID list
# at RFC 2971's limits with room to spare.
MAX_COMMAND_SIZE = 16 * 1024
# RFC 2971 s.3.3: at most 30 field-value pairs, fields of 30 octets, values of 1024 octets.
MAX_ID_PAIRS = 30
MAX_ID_FIELD = 30
MAX_ID_VALUE = 1024

_MAX_NUMBER_DIGITS = 19  # number64 (RFC 9051 s.9) is < 2**63; more digits can't be a size we take

# RFC 9051 s.9: ATOM-CHAR is any CHAR except atom-specials ( ) { SP CTL % * " \ ]
_ATOM = frozenset(range(0x21, 0x7F)) - frozenset(b'(){%*"\\]')
_ASTRING = _ATOM | {ord("]")}  # ASTRING-CHAR adds resp-specials
_TAG = _ASTRING - {ord("+")}  # tag = 1*<any ASTRING-CHAR except "+">


@dataclass(frozen=True)
class Reply:
    """A status response: ``<tag> <status> [<code>] <text>``; no tag means untagged (``*``)."""

    status: str  # OK, NO, BAD, BYE
    text: str
    code: str | None = None

    def render(self, tag: str | None = None) -> bytes:
        code = f"[{self.code}] " if self.code else ""
        return f"{tag or '*'} {self.status} {code}{self.text}\r\n".encode("ascii")


class ImapProtocolError(ClientError):
    """The IMAP client broke the protocol; `reply` is what it is told."""

    def __init__(self, reply: Reply) -> None:
        super().__init__(reply.text)
        self.reply = reply


class CommandError(ImapProtocolError):
    """This command fails with a tagged BAD or NO; the session goes on."""


class FatalError(ImapProtocolError):
    """The session can't go on: send the `* BYE` reply, then close."""

    def __init__(self, text: str, code: str | None = None) -> None:
        super().__init__(Reply("BYE", text, code))


def bad(text: str, code: str | None = None) -> CommandError:
    return CommandError(Reply("BAD", text, code))


def no(text: str, code: str | None = None) -> CommandError:
    return CommandError(Reply("NO", text, code))


@dataclass(frozen=True)
class Frame:
    """One whole command: every line but the last ends with a literal marker, whose bytes follow."""

    lines: tuple[bytes, ...]
    literals: tuple[bytes, ...]


@dataclass(frozen=True)
class LiteralAnnounced:
    """A line ended in ``{size}``; the framer waits for `accept_literal` or `abandon`."""

    first_line: bytes  # the command's first line, for its tag and name
    size: int
    too_big: bool


def literal_marker(line: bytes) -> tuple[int, bool] | None:
    """``(size, synchronizing)`` if `line` ends with ``{n}`` or ``{n+}`` (a huge n: a huge size)."""
    start = line.rfind(b"{")
    if start < 0 or not line.endswith(b"}"):
        return None
    digits = line[start + 1:-1]
    sync = not digits.endswith(b"+")
    digits = digits if sync else digits[:-1]
    if not digits.isdigit():  # bytes.isdigit() is ASCII-only, and False for b""
        return None
    size = int(digits) if len(digits) <= _MAX_NUMBER_DIGITS else 1 << 64
    return size, sync


class Framer:
    """Cuts the client's bytes into `Frame`s (or single lines), within the limits above."""

    def __init__(self) -> None:
        self._buf = bytearray()
        self._scan = 0  # where the search for LF resumes, so byte-by-byte input stays linear
        self._lines: list[bytes] = []
        self._literals: list[bytes] = []
        self._held = 0  # bytes the command in progress has used of MAX_COMMAND_SIZE
        self._literal: int | None = None  # size of the literal being read
        self._deciding: int | None = None  # size of a synchronizing literal awaiting a decision

    @property
    def raw_size(self) -> int:
        """Bytes received and not yet cut into lines or literals."""
        return len(self._buf)

    @property
    def buffered_size(self) -> int:
        """Bytes held in memory: unframed input plus the command in progress."""
        return len(self._buf) + sum(map(len, self._lines)) + sum(map(len, self._literals))

    def feed(self, data: bytes) -> None:
        self._buf += data

    def take_raw(self) -> bytes:
        """Everything not yet framed, for the adapter to forward; the framer is left empty."""
        raw = bytes(self._buf)
        self.clear()
        return raw

    def clear(self) -> None:
        self._buf.clear()
        self._scan = 0
        self.abandon()

    def abandon(self) -> None:
        """Drop the command in progress (after refusing its synchronizing literal)."""
        self._lines.clear()
        self._literals.clear()
        self._held = 0
        self._literal = self._deciding = None

    def accept_literal(self) -> None:
        assert self._deciding is not None
        self._held += self._deciding
        self._literal, self._deciding = self._deciding, None

    def next_line(self) -> bytes | None:
        """One plain line (an AUTHENTICATE response), or None until it is complete."""
        taken = self._take_line()
        return None if taken is None else taken[0]

    def next_command(self) -> Frame | LiteralAnnounced | None:
        """The next whole command, a synchronizing literal to decide on, or None for more input."""
        assert self._deciding is None, "accept_literal() or abandon() first"
        while True:
            if self._literal is not None:
                if len(self._buf) < self._literal:
                    return None
                self._literals.append(bytes(self._buf[:self._literal]))
                del self._buf[:self._literal]
                self._literal = None
                continue
            taken = self._take_line()
            if taken is None:
                return None
            line, used = taken
            self._held += used
            self._lines.append(line)
            marker = literal_marker(line)
            if marker is None:
                frame = Frame(tuple(self._lines), tuple(self._literals))
                self.abandon()
                return frame
            size, sync = marker
            # `<`: the line after the literal needs at least its LF
            fits = size <= MAX_LITERAL_SIZE and self._held + size < MAX_COMMAND_SIZE
            if sync:
                self._deciding = size
                return LiteralAnnounced(self._lines[0], size, too_big=not fits)
            if not fits:  # its bytes are already on their way: there is no refusing it politely
                raise FatalError("Literal too large", "TOOBIG")
            self._held += size
            self._literal = size

    def _take_line(self) -> tuple[bytes, int] | None:
        """The next line without its CRLF, and the bytes it used; None until its LF arrives."""
        end = self._buf.find(b"\n", self._scan)
        room = min(MAX_LINE_LENGTH, MAX_COMMAND_SIZE - self._held)
        if end < 0:
            # even if the next byte were the LF, the line would be longer than `room`
            if len(self._buf) >= room:
                raise FatalError("Command line too long")
            self._scan = len(self._buf)
            return None
        if end + 1 > room:
            raise FatalError("Command line too long")
        line = bytes(self._buf[:end])
        del self._buf[:end + 1]
        self._scan = 0
        return (line[:-1] if line.endswith(b"\r") else line), end + 1


class Args:
    """A cursor over a `Frame`, reading RFC 9051 s.9 productions; each raises BAD on a mismatch."""

    def __init__(self, frame: Frame) -> None:
        self._lines = frame.lines
        self._literals = frame.literals
        self._seg = 0
        self._pos = 0

    @property
    def _line(self) -> bytes:
        return self._lines[self._seg]

    def peek(self) -> bytes:
        """The next byte (b"" at the end of a line)."""
        return self._line[self._pos:self._pos + 1]

    def at_end(self) -> bool:
        return self._seg == len(self._lines) - 1 and self._pos == len(self._line)

    def end(self) -> None:
        if not self.at_end():
            raise bad("Unexpected extra arguments")

    def expect(self, char: bytes) -> None:
        if self.peek() != char:
            raise bad(f"Expected {char.decode()!r}" if char != b" " else "Expected a space")
        self._pos += 1

    def sp(self) -> None:
        self.expect(b" ")

    def _run(self, allowed: frozenset[int]) -> bytes:
        line, start = self._line, self._pos
        pos = start
        while pos < len(line) and line[pos] in allowed:
            pos += 1
        self._pos = pos
        return line[start:pos]

    def tag(self) -> str | None:
        """The tag, or None when the line doesn't start with one followed by a space or its end."""
        tag = self._run(_TAG)
        if not tag or self.peek() not in (b" ", b""):
            return None
        return tag.decode("ascii")

    def atom(self, what: str = "atom") -> bytes:
        value = self._run(_ATOM)
        if not value:
            raise bad(f"Expected {what}")
        return value

    def astring(self) -> bytes:
        if self.peek() in (b'"', b"{"):
            return self.string()
        value = self._run(_ASTRING)
        if not value:
            raise bad("Expected a string")
        return value

    def nstring(self) -> bytes | None:
        if self.peek() in (b'"', b"{"):
            return self.string()
        if self._run(_ATOM).upper() != b"NIL":
            raise bad("Expected a string or NIL")
        return None

    def string(self) -> bytes:
        if self.peek() == b'"':
            return self._quoted()
        if self.peek() == b"{":
            return self._literal()
        raise bad("Expected a string")

    def _quoted(self) -> bytes:
        line, pos, out = self._line, self._pos + 1, bytearray()
        while pos < len(line):
            char = line[pos]
            if char == 0x22:  # closing DQUOTE
                self._pos = pos + 1
                return bytes(out)
            if char == 0x5C:  # backslash: only \" and \\ are quoted-specials (RFC 9051 s.9)
                pos += 1
                if line[pos:pos + 1] not in (b'"', b"\\"):
                    raise bad("Invalid escape in quoted string")
                char = line[pos]
            elif char in (0x00, 0x0D):  # QUOTED-CHAR is TEXT-CHAR: no NUL, no CR (LF ends lines)
                raise bad("Invalid character in quoted string")
            out.append(char)
            pos += 1
        raise bad("Unterminated quoted string")

    def _literal(self) -> bytes:
        # the framer only splits after a marker that ends a line: the rest must be just that marker
        rest = self._line[self._pos:]
        if self._seg == len(self._lines) - 1 or rest.rfind(b"{") != 0 or not literal_marker(rest):
            raise bad("Invalid literal")
        value = self._literals[self._seg]
        self._seg += 1
        self._pos = 0
        if b"\0" in value:  # literal is *CHAR8, and CHAR8 excludes NUL (RFC 9051 s.9)
            raise bad("NUL in literal")
        return value


def read_id_params(args: Args) -> None:
    """``"(" [string SP nstring *(SP string SP nstring)] ")" / NIL`` (RFC 2971 s.4), checked."""
    if args.peek() != b"(":
        if args.atom("ID parameter list").upper() != b"NIL":
            raise bad("Expected an ID parameter list or NIL")
        return
    args.expect(b"(")
    pairs = 0
    while args.peek() != b")":
        if pairs:
            args.sp()
        field = args.string()
        args.sp()
        value = args.nstring()
        pairs += 1
        if pairs > MAX_ID_PAIRS or len(field) > MAX_ID_FIELD or len(value or b"") > MAX_ID_VALUE:
            raise bad("ID parameters exceed RFC 2971 limits")
    args.expect(b")")


def decode_plain(response: bytes) -> tuple[bytes, bytes]:
    """``(user, password)`` from a PLAIN response: base64 of ``[authzid] NUL authcid NUL passwd``.

    RFC 4959 makes "=" the empty response; RFC 4616 s.2 requires a user and a password. An
    authzid other than the user would be a proxy login, which we don't offer.
    """
    try:
        message = b"" if response == b"=" else base64.b64decode(response, validate=True)
    except (binascii.Error, ValueError):
        raise bad("Invalid base64") from None
    parts = message.split(b"\0")
    if len(parts) != 3 or not parts[1] or not parts[2]:
        raise bad("Malformed PLAIN response")
    authzid, user, password = parts
    if authzid and authzid != user:
        raise no("Acting as another user is not supported", "AUTHORIZATIONFAILED")
    return user, password
