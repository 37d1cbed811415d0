"""Find a MIME message's parts by their byte offsets, and decode one part as a stream. Pure code.

Theory of operation. A message too large for one `sendMail` (a 20 MB scan) is sent as a Graph
draft: its body text goes into the draft's JSON and each attachment is uploaded on its own. None
of that needs the message in memory. `scan(chunks)` reads the message once, line by line (a line
is cut at `MAX_LINE`, as no header or boundary line is that long), and keeps only each leaf
part's header block and the offsets `[start, end)` of its encoded body in the message. The CRLF
before a boundary line belongs to the boundary (RFC 2046 s.5.1.1), so it is not part of `end`.
`decoded(chunks)` then turns the encoded bytes of one part (read again from the message, from
`start` to `end`, see `byte_range`) into its content, chunk by chunk: base64 four characters at a
time, quoted-printable a whole line at a time, anything else as it is. A `message/rfc822` part is
a leaf (an attached e-mail is sent as an attachment, not opened). Multiparts nest to `MAX_DEPTH`;
deeper ones are read as leaves.
"""

from __future__ import annotations

import binascii
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from email import policy
from email.message import EmailMessage
from email.parser import BytesParser

MAX_LINE = 64 * 1024  # longer "lines" (binary bodies) are cut; boundaries are <= 70 + 4 chars
MAX_HEAD = 256 * 1024  # a part's header block kept for parsing; the rest of a longer one is dropped
MAX_DEPTH = 16  # nested multiparts followed; deeper ones are leaves
_WHITESPACE = b" \t\r\n"


@dataclass(frozen=True)
class Leaf:
    head: bytes  # the part's header block (for the top-level part: the message's header)
    start: int  # the encoded body: message bytes [start, end)
    end: int
    parents: tuple[str, ...]  # enclosing multipart subtypes, outermost first ("mixed", ...)

    @property
    def headers(self) -> EmailMessage:
        return parse_head(self.head)

    @property
    def encoded_size(self) -> int:
        return self.end - self.start


def parse_head(head: bytes) -> EmailMessage:
    message = BytesParser(policy=policy.default).parsebytes(head + b"\r\n", headersonly=True)
    assert isinstance(message, EmailMessage)
    return message


@dataclass(frozen=True)
class Scan:
    head: bytes  # the message's own header block
    leaves: tuple[Leaf, ...]
    size: int


def lines(chunks: Iterable[bytes]) -> Iterator[tuple[int, bytes]]:
    """(offset, line with its line end) for every line of the content, long ones cut."""
    buf, offset = b"", 0
    for chunk in chunks:
        buf = buf + chunk if buf else chunk
        start = 0
        while (nl := buf.find(b"\n", start)) >= 0:
            yield offset + start, buf[start:nl + 1]
            start = nl + 1
        while len(buf) - start >= MAX_LINE:
            yield offset + start, buf[start:start + MAX_LINE]
            start += MAX_LINE
        offset += start
        buf = buf[start:]
    if buf:
        yield offset, buf


class _Scanner:
    def __init__(self) -> None:
        self.boundaries: list[tuple[bytes, str]] = []  # open multiparts: (b"--" + boundary, subtype)
        self.leaves: list[Leaf] = []
        self.top: bytes | None = None
        self.head: list[bytes] | None = []  # collecting a header block, else None
        self.head_size = 0
        self.body: tuple[bytes, int] | None = None  # in a leaf: (its head, where its body starts)
        self.last_eol = 0  # length of the previous line's line end

    def line(self, offset: int, line: bytes) -> None:
        if self.boundaries and line.startswith(b"--") and self._boundary(offset, line):
            return
        if self.head is not None:
            self._head_line(offset, line)
        self.last_eol = 2 if line.endswith(b"\r\n") else 1 if line.endswith(b"\n") else 0

    def _boundary(self, offset: int, line: bytes) -> bool:
        text = line.rstrip(b"\r\n").rstrip(b" \t")
        for depth in range(len(self.boundaries) - 1, -1, -1):
            delimiter = self.boundaries[depth][0]
            if text not in (delimiter, delimiter + b"--"):
                continue
            self._end_leaf(max(offset - self.last_eol, self.body[1]) if self.body else offset)
            del self.boundaries[depth + 1:]
            if text == delimiter:
                self.head, self.head_size = [], 0
            else:
                self.boundaries.pop()  # closed: the epilogue until the outer boundary is skipped
                self.head = None
            self.last_eol = 0
            return True
        return False

    def _head_line(self, offset: int, line: bytes) -> None:
        assert self.head is not None
        if line not in (b"\r\n", b"\n"):
            if self.head_size < MAX_HEAD:
                self.head.append(line)
                self.head_size += len(line)
            return
        head, self.head = b"".join(self.head), None
        if self.top is None:
            self.top = head
        parsed = parse_head(head)
        boundary = parsed.get_param("boundary")
        if (parsed.get_content_maintype() == "multipart" and isinstance(boundary, str) and boundary
                and len(self.boundaries) < MAX_DEPTH):
            self.boundaries.append((b"--" + boundary.encode("ascii", "replace"),
                                    parsed.get_content_subtype()))
        else:
            self.body = (head, offset + len(line))

    def _end_leaf(self, end: int) -> None:
        if self.body is not None:
            parents = tuple(subtype for _, subtype in self.boundaries)
            self.leaves.append(Leaf(self.body[0], self.body[1], end, parents))
            self.body = None

    def finish(self, size: int) -> Scan:
        if self.head is not None:  # a header block with no blank line after it: no body
            self._head_line(size - 2, b"\r\n")  # (as if the blank line ended at `size`)
        self._end_leaf(size)
        return Scan(self.top or b"", tuple(self.leaves), size)


def scan(chunks: Iterable[bytes]) -> Scan:
    """The message's header and its leaf parts, reading `chunks` once."""
    scanner = _Scanner()
    size = 0
    for offset, line in lines(chunks):
        scanner.line(offset, line)
        size = offset + len(line)
    return scanner.finish(size)


def byte_range(chunks: Iterable[bytes], start: int, end: int) -> Iterator[bytes]:
    """The bytes [start, end) of the content that `chunks` yields in order."""
    offset = 0
    for chunk in chunks:
        stop = offset + len(chunk)
        if stop > start:
            yield chunk[max(start - offset, 0):min(end, stop) - offset]
        offset = stop
        if offset >= end:
            return


def decoded(chunks: Iterable[bytes], encoding: str) -> Iterator[bytes]:
    """A part's content from its encoded body, by Content-Transfer-Encoding."""
    encoding = encoding.strip().lower()
    if encoding == "base64":
        return _base64(chunks)
    if encoding == "quoted-printable":
        return _quoted_printable(chunks)
    return (c for c in chunks if c)


def _base64(chunks: Iterable[bytes]) -> Iterator[bytes]:
    carry = b""
    for chunk in chunks:
        data = carry + chunk.translate(None, _WHITESPACE)
        cut = len(data) - len(data) % 4
        carry = data[cut:]
        if cut:
            yield _a2b(data[:cut])
    left = carry.rstrip(b"=")
    if len(left) % 4 > 1:  # a truncated last quantum: what it holds (one character holds nothing)
        yield _a2b(left + b"=" * (-len(left) % 4))


def _a2b(data: bytes) -> bytes:
    try:
        return binascii.a2b_base64(data)
    except binascii.Error:  # padding in the middle, say: the part is damaged; keep what decodes
        return b""


def _quoted_printable(chunks: Iterable[bytes]) -> Iterator[bytes]:
    carry = b""
    for chunk in chunks:
        data = carry + chunk
        cut = data.rfind(b"\n") + 1
        carry = data[cut:]
        if cut:
            yield binascii.a2b_qp(data[:cut])
    if carry:
        yield binascii.a2b_qp(carry)
